"""Which relation a query's words mean, read off the model's own states.

The fact router's fallback (`retain.knowledge.FactRegistry.find`) when a query names a fact's subject but not its
relation verbatim: "the workforce of the Dorin Institute" asks about its staff. Each run of one to three content
words left in the query is embedded as the model embeds it (the mean of its tokens' input embeddings, which no
method here trains, less what every token shares: the vocabulary's mean and its top principal directions, which
otherwise make any two rare words look alike, "motto" like "mayor"), as is each candidate relation; a relation's
similarity is that of its closest run. A "none of these" option with a fixed similarity competes with them, and a
softmax at a fixed temperature turns the similarities into a confidence: the router reads a relation only when it
is more likely than every other option, none included.

Words that name no relation ("who ran it", "who commanded it") are far from every relation's name, so "none" wins
on them. So with `ask` the model itself is asked too, reading no memory: after a few questions of our own with the
attribute each asks for (`ASK_SHOTS`), the words, and each candidate relation scored as its answer (the mean
log-probability of its tokens), beside a "none of these" score. A relation is as likely as the surer of the two
readings says. The model need not name "director" for "who ran it": among a port's, a town's or a company's few
relations it only has to find it the likeliest, and likely enough.

The layer (input embeddings, against the states after each of the first six decoder layers), the directions taken
out, temperature and "none" similarity were chosen on `DEV_PAIRS` and `DEV_UNRELATED` (relations, paraphrases and
other attributes of our own, none of them a probe's or a locality question's wording:
`benchmarks/relations.py` refits them and scores the router). Like `knowledge.py`, this module imports nothing else
of retain: `retain export` ships it beside an exported model, which routes as CASM does.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from typing import ContextManager

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

Embed = Callable[[Sequence[str]], torch.Tensor]  # texts → one unit vector each

# Words that ask, point or link rather than name a relation.
FUNCTION_WORDS = frozenset(
    "a an the of in on at as for to by from with and or was were is are be been has had have do does did who whom whose "
    "what which when where how could would will can you me tell know i id like please its their his her it this that "
    "these those now today currently present right back during year years ago last then there here s q".split())

# (relation, the same relation in other words): what the matcher's settings were chosen on.
DEV_PAIRS: tuple[tuple[str, str], ...] = (
    ("spouse", "wife"), ("employer", "company they work for"), ("birthplace", "place of birth"),
    ("capital", "seat of government"), ("head coach", "manager"), ("chairperson", "chair"), ("owner", "proprietor"),
    ("author", "writer"), ("founder", "creator"), ("member count", "number of members"), ("league", "division"),
    ("headmaster", "school principal"), ("currency", "money used"), ("religion", "faith"), ("occupation", "job"),
    ("team", "club"), ("president", "head of state"), ("prime minister", "premier"), ("price", "cost"),
    ("salary", "pay"), ("publisher", "publishing house"), ("architect", "building designer"), ("goalkeeper", "keeper"),
    ("composer", "songwriter"), ("treasurer", "finance officer"), ("sponsor", "backer"), ("doctor", "physician"),
    ("lawyer", "attorney"), ("venue", "event location"), ("genre", "style"), ("speed", "velocity"), ("weight", "mass"),
    ("ambassador", "envoy"), ("tenant", "occupant"), ("rival", "competitor"), ("supplier", "vendor"),
    ("nationality", "citizenship"), ("vice president", "deputy"),
)
# Attributes none of DEV_PAIRS' relations means: asked against them, the answer is "none of these".
DEV_UNRELATED: tuple[str, ...] = (
    "nickname", "anthem", "mascot", "climate", "area", "elevation", "postcode", "website", "patron saint", "twin town",
    "age", "height", "favourite food", "shoe size", "blood type", "time zone", "dialling code", "official bird",
    "hair colour", "star sign",
)
TEMPERATURE, NONE_SIMILARITY, COMMON_DIRECTIONS = 0.05, 0.2, 15

# The model's prompt for `ask`: questions of our own and the attribute each asks for, none of them a relation of the
# temporal-facts stream or of `DEV_QUESTIONS`, then the query's words (its subject replaced by "it").
ASK_SHOTS: tuple[tuple[str, str], ...] = (
    ("who started it", "founder"), ("how much land does it cover", "area"),
    ("what was its tallest tower", "tallest tower"), ("where does it play at home", "stadium"))
ASK_PROMPT = "".join(f"Q: {q}?\nAsks for: {a}\n\n" for q, a in ASK_SHOTS) + "Q: {words}?\nAsks for:"
# How a relation's score as the model's answer becomes a confidence: a softmax at `ASK_TEMPERATURE` beside "none of
# these" scoring `ASK_NONE` (a mean log-probability per token), chosen with the surer-of-two join on `DEV_QUESTIONS` and
# `DEV_PAIRS` (`benchmarks/relations.py`, `fit_ask`).
ASK_TEMPERATURE, ASK_NONE = 0.5, -3.0

# Relations of our own asked with verbs and other nouns, for choosing how the matcher asks the model: (kind of
# subject, question about {s} at {t}, the relation it asks for or None: none of the kind's). None of their relations
# is a relation of the stream, a probe's or a locality question's; some everyday words are also in the person
# wordings of `benchmarks/relations.py` ("how many people", "sell", "work", "abroad"), written apart from them.
DEV_KINDS: dict[str, tuple[str, ...]] = {
    "club": ("head coach", "owner", "league", "goalkeeper", "sponsor", "member count"),
    "book": ("author", "publisher", "genre", "price"),
    "country": ("capital", "currency", "president", "prime minister", "religion", "ambassador"),
    "person": ("spouse", "employer", "birthplace", "occupation", "nationality", "salary", "doctor", "lawyer"),
    "building": ("architect", "owner", "tenant", "venue"),
    "band": ("composer", "genre", "rival", "sponsor"),
    "car": ("speed", "weight", "price", "supplier"),
}
DEV_QUESTIONS: tuple[tuple[str, str, str | None], ...] = (
    ("club", "Who coached {s} in {t}?", "head coach"), ("club", "Who did {s} belong to in {t}?", "owner"),
    ("club", "Which division did {s} play in during {t}?", "league"),
    ("club", "Who kept goal for {s} in {t}?", "goalkeeper"), ("club", "Who paid for the shirts of {s} in {t}?", "sponsor"),
    ("club", "How many people had joined {s} by {t}?", "member count"), ("book", "Who wrote {s}?", "author"),
    ("book", "Who brought out {s}?", "publisher"), ("book", "What kind of book is {s}?", "genre"),
    ("book", "How much did {s} sell for in {t}?", "price"), ("country", "Which city is {s} governed from?", "capital"),
    ("country", "What do people pay with in {s}?", "currency"), ("country", "Who presided over {s} in {t}?", "president"),
    ("country", "Which god do most people in {s} worship?", "religion"),
    ("country", "Who represented {s} abroad in {t}?", "ambassador"), ("person", "Who was {s} married to in {t}?", "spouse"),
    ("person", "Which firm did {s} go to work for in {t}?", "employer"), ("person", "Where was {s} born?", "birthplace"),
    ("person", "What does {s} do for a living?", "occupation"), ("person", "Which passport does {s} hold?", "nationality"),
    ("person", "How much did {s} earn in {t}?", "salary"), ("person", "Who treated {s} when ill in {t}?", "doctor"),
    ("person", "Who defended {s} in court in {t}?", "lawyer"), ("building", "Who designed {s}?", "architect"),
    ("building", "Who rented {s} in {t}?", "tenant"), ("building", "Who bought {s} in {t}?", "owner"),
    ("band", "Who writes the music {s} plays?", "composer"), ("band", "What sort of music did {s} play in {t}?", "genre"),
    ("band", "Who did {s} compete against for the charts in {t}?", "rival"),
    ("car", "How fast could {s} go in {t}?", "speed"), ("car", "How heavy was {s} in {t}?", "weight"),
    ("car", "How much did {s} cost in {t}?", "price"), ("car", "Who made the parts for {s} in {t}?", "supplier"),
    ("club", "What did fans call {s} in {t}?", None), ("club", "What song do {s} supporters sing?", None),
    ("club", "When was {s} founded?", None), ("club", "What colour are the shirts of {s}?", None),
    ("book", "How many pages does {s} have?", None), ("book", "When did {s} first appear?", None),
    ("country", "How hot does {s} get in summer?", None), ("country", "What colours are on the flag of {s}?", None),
    ("country", "How many people speak the language of {s}?", None), ("person", "How old was {s} in {t}?", None),
    ("person", "How tall is {s}?", None), ("person", "Who painted a portrait of {s}?", None),
    ("person", "What is the star sign of {s}?", None), ("building", "Who cleaned {s} in {t}?", None),
    ("building", "How tall is {s}?", None), ("building", "When did {s} open?", None),
    ("band", "When did {s} break up?", None), ("band", "What is the motto of {s}?", None),
    ("car", "What colour was {s} painted in {t}?", None), ("car", "Who insured {s} in {t}?", None),
)


def spans(words: str, longest: int = 3) -> list[str]:
    """Every run of one to `longest` consecutive content words (not `FUNCTION_WORDS`) of normalised `words`."""
    runs = [list(group) for is_content, group in itertools.groupby(words.split(), lambda w: w not in FUNCTION_WORDS)
            if is_content]
    return list(dict.fromkeys(" ".join(run[i : i + n]) for run in runs for n in range(1, longest + 1)
                              for i in range(len(run) - n + 1)))


def input_embedder(weight: torch.Tensor, tokenize: Callable[[str], list[int]],
                   common: int | None = COMMON_DIRECTIONS) -> Embed:
    """Texts → the unit mean of their tokens' rows of `weight` (a model's input embeddings), each text tokenized as
    words inside a sentence are (after a space); with `common`, less the rows' mean and their `common` top principal
    directions ("all but the top", Mu & Viswanath 2018)."""

    return lambda texts: token_means(weight, [tokenize(f" {text}") for text in texts], common)


@torch.no_grad()
def token_means(weight: torch.Tensor, texts: Sequence[Sequence[int]], common: int | None = COMMON_DIRECTIONS
                ) -> torch.Tensor:
    """Each of `texts` (token ids) as the unit mean of its rows of `weight`, with `common` as `input_embedder`'s."""
    means = torch.stack([weight[torch.tensor(list(ids), device=weight.device)].float().mean(0) for ids in texts])
    if common is not None:
        mean, top = shared_directions(weight, common)
        means = means - mean
        means = means - (means @ top) @ top.T
    return nn.functional.normalize(means, dim=-1).cpu()


_SHARED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # weight → (its version, k, mean, top directions)


@torch.no_grad()
def shared_directions(weight: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of `weight`'s rows and their top `k` principal directions (columns), computed once per tensor and
    version: a matcher is built for every batch read."""
    cached = _SHARED.get(weight)
    if cached is None or cached[:2] != (weight._version, k):
        mean = weight.float().mean(0)
        scatter = sum((chunk.float() - mean).T @ (chunk.float() - mean) for chunk in weight.split(8192))
        _, vectors = torch.linalg.eigh(scatter)  # ascending eigenvalues: the top directions come last
        cached = _SHARED[weight] = (weight._version, k, mean, vectors[:, max(vectors.shape[1] - k, 0):])
    return cached[2], cached[3]


Ask = Callable[[str, Sequence[str]], torch.Tensor]  # (a query's words, relations) → each one's score as the answer
Answers = dict[tuple[str, tuple[str, ...]], torch.Tensor]  # what an `Ask` of one pretrained model has answered


def model_asker(model: nn.Module, encode: Callable[[Sequence[str]], dict[str, torch.Tensor]],
                pretrained: Callable[[], ContextManager] = contextlib.nullcontext,
                answers: Answers | None = None) -> Ask:
    """(words, relations) → for each relation, the mean log-probability of its tokens (and the new line that ends
    it) as the model's answer to `ASK_PROMPT` about the words. `pretrained` makes the model read none of what a
    method taught it while it answers: the question is what words mean, not what a memory says. So the answers
    depend on the pretrained model alone, and `answers` may keep them for every asker of it (a method's, batch
    after batch)."""
    answers = {} if answers is None else answers

    @torch.no_grad()
    def ask(words: str, relations: Sequence[str]) -> torch.Tensor:
        key = (words, tuple(relations))
        if key not in answers:
            prompt = ASK_PROMPT.format(words=words)
            start = encode([prompt])["input_ids"].shape[1]
            scores = []
            with pretrained():  # one text a forward: a memory's routing may read one example at a time
                for relation in relations:
                    ids = encode([f"{prompt} {relation}\n"])["input_ids"][:1]
                    logprobs = model(input_ids=ids).logits[0, start - 1 : -1].float().log_softmax(-1)
                    scores.append(logprobs.gather(1, ids[0, start:, None].to(logprobs.device)).mean())
            answers[key] = torch.stack(scores).cpu()
        return answers[key]

    return ask


def model_matcher(model: nn.Module, encode: Callable[[Sequence[str]], dict[str, torch.Tensor]],
                  pretrained: Callable[[], ContextManager] | None = None,
                  answers: Answers | None = None) -> RelationMatcher:
    """A matcher over `model`'s input embeddings, tokenizing as `encode` (a batch of one text has no padding); with
    `pretrained` (how the model reads no memory), one that also asks the model which relation the words ask for,
    keeping its answers in `answers` (`model_asker`)."""
    tokenize = lambda text: encode([text])["input_ids"][0].tolist()  # noqa: E731
    ask = None if pretrained is None else model_asker(model, encode, pretrained, answers)
    return RelationMatcher(input_embedder(model.get_input_embeddings().weight, tokenize), ask=ask)


class RelationMatcher:
    """A `knowledge.RelationScorer`: how sure it is that a query's words ask about each relation, from `embed`; with
    `ask`, the surer of that and the model's own reading of which relation the words ask for."""

    def __init__(self, embed: Embed, temperature: float = TEMPERATURE, none_similarity: float = NONE_SIMILARITY,
                 ask: Ask | None = None) -> None:
        self.embed, self.temperature, self.none_similarity, self.ask = embed, temperature, none_similarity, ask

    def similarities(self, words: str, relations: Sequence[str]) -> torch.Tensor:
        """Each relation's cosine similarity to its closest run of `words` (-1 when `words` has none)."""
        runs = spans(words)
        if not runs:
            return torch.full((len(relations),), -1.0)
        return (self.embed(runs) @ self.embed(list(relations)).T).max(0).values

    def __call__(self, words: str, relations: Sequence[str]) -> list[float]:
        sure = self.confidences(self.similarities(words, relations))
        # Words with no content word ("and it", from "And now?") ask about nothing for the model to name.
        if self.ask is None or not spans(words):
            return sure
        # Each reading finds what the other misses: the words a paraphrase ("workforce"), the model a verb ("who ran
        # it"); a relation is as likely as the surer of the two says.
        asked = beside_none(self.ask(words, relations), ASK_NONE, ASK_TEMPERATURE)
        return [max(a, b) for a, b in zip(sure, asked)]

    def confidences(self, similarities: torch.Tensor) -> list[float]:
        """Each relation's softmax share beside "none of these" at `none_similarity`."""
        return beside_none(similarities, self.none_similarity, self.temperature)


def beside_none(scores: torch.Tensor, none: float, temperature: float) -> list[float]:
    """Each score's softmax share at `temperature` beside a "none of these" option scoring `none`."""
    return (torch.cat([scores, torch.tensor([none])]) / temperature).softmax(0)[:-1].tolist()
