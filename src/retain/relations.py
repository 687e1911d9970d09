"""Which relation a query's words mean, read off the model's own states.

The fact router's fallback (`retain.knowledge.FactRegistry.find`) when a query names a fact's subject but not its
relation verbatim: "the workforce of the Dorin Institute" asks about its staff. Each run of one to three content
words left in the query is embedded as the model embeds it (the mean of its tokens' input embeddings, which no
method here trains, less what every token shares: the vocabulary's mean and its top principal directions, which
otherwise make any two rare words look alike, "motto" like "mayor"), as is each candidate relation; a relation's
similarity is that of its closest run. A "none of these" option with a fixed similarity competes with them, and a
softmax at a fixed temperature turns the similarities into a confidence: the router reads a relation only when it
is more likely than every other option, none included.

The layer (input embeddings, against the states after each of the first six decoder layers), the directions taken
out, temperature and "none" similarity were chosen on `DEV_PAIRS` and `DEV_UNRELATED` (relations, paraphrases and
other attributes of our own, none of them a probe's or a locality question's wording:
`benchmarks/relations.py` refits them and scores the router). Like `knowledge.py`, this module imports nothing else
of retain: `retain export` ships it beside an exported model, which routes as CASM does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

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

    @torch.no_grad()
    def embed(texts: Sequence[str]) -> torch.Tensor:
        means = torch.stack([weight[torch.tensor(tokenize(f" {text}"), device=weight.device)].float().mean(0)
                             for text in texts])
        if common is not None:
            mean, top = shared_directions(weight, common)
            means = means - mean
            means = means - (means @ top) @ top.T
        return nn.functional.normalize(means, dim=-1).cpu()

    return embed


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


def model_matcher(model: nn.Module, encode: Callable[[Sequence[str]], dict[str, torch.Tensor]]) -> RelationMatcher:
    """A matcher over `model`'s input embeddings, tokenizing as `encode` (a batch of one text has no padding)."""
    tokenize = lambda text: encode([text])["input_ids"][0].tolist()  # noqa: E731
    return RelationMatcher(input_embedder(model.get_input_embeddings().weight, tokenize))


class RelationMatcher:
    """A `knowledge.RelationScorer`: how sure it is that a query's words ask about each relation, from `embed`."""

    def __init__(self, embed: Embed, temperature: float = TEMPERATURE, none_similarity: float = NONE_SIMILARITY) -> None:
        self.embed, self.temperature, self.none_similarity = embed, temperature, none_similarity

    def similarities(self, words: str, relations: Sequence[str]) -> torch.Tensor:
        """Each relation's cosine similarity to its closest run of `words` (-1 when `words` has none)."""
        runs = spans(words)
        if not runs:
            return torch.full((len(relations),), -1.0)
        return (self.embed(runs) @ self.embed(list(relations)).T).max(0).values

    def __call__(self, words: str, relations: Sequence[str]) -> list[float]:
        logits = torch.cat([self.similarities(words, relations), torch.tensor([self.none_similarity])])
        return (logits / self.temperature).softmax(0)[:-1].tolist()
