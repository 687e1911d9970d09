"""Score probes by batched greedy generation (exact match, token F1) or likelihood ranking; perplexity."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from retain.stream import Probe
from retain.text import first_statement, normalize_answer

SENTENCE_TOKENS = 12  # generation budget beyond the longest answer: room to answer with a short sentence


def exact_match(prediction: str, answers: Sequence[str], other_values: Sequence[str] = ()) -> bool:
    """Whether the prediction's first statement names an answer, and names no other value of the same fact.

    The answer may stand alone ("17 vessels") or inside a sentence ("The fleet size of X is 17 vessels"):
    a question asked in another wording than the training text is often answered with a sentence, and
    that is not wrong. Compared word by word on normalised text, so "250 ships" does not match "25 ships".
    A statement that also names one of `other_values` (what the fact was or will be at another time) is
    wrong: hedging between versions ("17 vessels, later 20 vessels") is not knowing which one holds.
    """
    words = normalize_answer(first_statement(prediction)).split()

    def names(value: str) -> bool:
        gold = normalize_answer(value).split()
        return bool(gold) and any(words[i : i + len(gold)] == gold for i in range(len(words) - len(gold) + 1))

    return any(names(a) for a in answers) and not any(names(v) for v in other_values)


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """SQuAD token F1 of the prediction's first statement against the best-matching answer."""
    words = normalize_answer(first_statement(prediction)).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        common = sum((Counter(words) & Counter(gold)).values())
        if common:
            precision, recall = common / len(words), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
        elif not words and not gold:
            best = 1.0
    return best


Encode = Callable[[Sequence[str]], dict[str, torch.Tensor]]  # texts → a batch of model inputs on the model's device


@dataclass
class Routing:
    """What a method decided for a batch of inference prompts: the text the model reads for each, per prompt the
    name of the task or memory version it was routed to (None: the method does not name one) and, for a method that
    reads facts, the fact it took the prompt to ask about (None: none)."""

    texts: list[str]
    names: list[str] | None = None
    facts: list[str] | None = None  # the fact ("subject | relation") each prompt was read as asking about ("": none)


Route = Callable[[nn.Module, Sequence[str], Encode], "Routing | None"]


@dataclass
class ProbeScore:
    prediction: str
    em: float
    f1: float
    route: str | None = None
    fact: str | None = None  # the fact the router read the probe as asking about ("": none; None: no fact router)


class Evaluator:
    """Scores probes with a model: greedy generation, or likelihood ranking when a probe has `choices`.

    `route(model, prompts, encode)`, when given, is called on every batch of prompts before the model sees it (a
    method choosing an adapter or memory version, or rewriting what the model reads); the texts it returns are
    what the model reads, and the names it returns are kept per probe.
    With `class_labels`, the model is a sequence classifier and its prediction is the label it scores highest.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, batch_size: int = 16, max_new_tokens: int = 24, progress: bool = False,
        route: Route | None = None, class_labels: Sequence[str] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.progress = progress
        self.route = route
        self.class_labels = list(class_labels) if class_labels is not None else None

    @torch.no_grad()
    def score(self, model: nn.Module, probes: Sequence[Probe]) -> list[ProbeScore]:
        was_training = model.training
        model.eval()
        try:
            if self.class_labels is not None:
                return self._classify(model, probes)
            scores: dict[int, ProbeScore] = {}
            generated = [i for i, p in enumerate(probes) if not p.choices]
            ranked = [i for i, p in enumerate(probes) if p.choices]
            # Sorting by prompt length keeps padding (and wasted compute) small in each batch.
            generated.sort(key=lambda i: len(probes[i].prompt))
            bar = tqdm(total=len(probes), desc="Evaluating probes", unit="probe", disable=not self.progress, leave=False)
            for start in range(0, len(generated), self.batch_size):
                batch = generated[start : start + self.batch_size]
                longest = max(len(self.tokenizer(a, add_special_tokens=False).input_ids)
                              for i in batch for a in (probes[i].answer, *probes[i].aliases))
                # Room for the answer inside a short sentence ("The mayor of X is …"); no paragraph afterwards.
                budget = min(self.max_new_tokens, longest + SENTENCE_TOKENS)
                texts, routes, facts = self._generate(model, [probes[i].prompt for i in batch], budget)
                for index, text, route, fact in zip(batch, texts, routes, facts):
                    answers = [probes[index].answer, *probes[index].aliases]
                    hit = float(exact_match(text, answers, probes[index].other_values))
                    scores[index] = ProbeScore(text, hit, token_f1(text, answers), route, fact)
                bar.update(len(batch))
            for index in ranked:
                choice, route = self._rank(model, probes[index])
                hit = float(choice == probes[index].answer)
                scores[index] = ProbeScore(choice, hit, hit, route)
                bar.update(1)
            bar.close()
            return [scores[i] for i in range(len(probes))]
        finally:
            model.train(was_training)

    @torch.no_grad()
    def complete(self, model: nn.Module, prompts: Sequence[str], max_new_tokens: int | None = None) -> list[str]:
        """Greedy continuations of `prompts`, batched with left padding."""
        was_training = model.training
        model.eval()
        try:
            return [text for start in range(0, len(prompts), self.batch_size)
                    for text in self._generate(model, prompts[start : start + self.batch_size], max_new_tokens or self.max_new_tokens)[0]]
        finally:
            model.train(was_training)

    def _classify(self, model: nn.Module, probes: Sequence[Probe]) -> list[ProbeScore]:
        scores = []
        device = next(model.parameters()).device
        for start in range(0, len(probes), self.batch_size):
            batch = probes[start : start + self.batch_size]
            texts, routes, _ = self._routed(model, [p.prompt for p in batch], self.encoder(device))
            inputs = self.encoder(device)(texts)
            predicted = model(**inputs).logits.argmax(-1).tolist()
            for probe, index, route in zip(batch, predicted, routes):
                label = self.class_labels[index]
                hit = float(normalize_answer(label) in {normalize_answer(a) for a in (probe.answer, *probe.aliases)})
                scores.append(ProbeScore(label, hit, hit, route))
        return scores

    def encoder(self, device: torch.device, side: str | None = None, **options: Any) -> Encode:
        """Texts → a padded batch on `device`, padded on `side` (left for generation; None: the tokenizer's own)."""

        def encode(texts: Sequence[str]) -> dict[str, torch.Tensor]:
            kept = self.tokenizer.padding_side
            self.tokenizer.padding_side = side or kept
            try:
                return self.tokenizer(list(texts), return_tensors="pt", padding=True, **options).to(device)
            finally:
                self.tokenizer.padding_side = kept

        return encode

    def _routed(self, model: nn.Module, prompts: Sequence[str], encode: Encode
                ) -> tuple[list[str], list[str | None], list[str | None]]:
        """What the model reads for each prompt, the route of each and the fact it was read as asking about."""
        routing = self.route(model, list(prompts), encode) if self.route is not None else None
        none = [None] * len(prompts)
        if routing is None:
            return list(prompts), none, none
        return routing.texts, list(routing.names or none), list(routing.facts or none)

    def _generate(self, model: nn.Module, prompts: Sequence[str], max_new_tokens: int
                  ) -> tuple[list[str], list[str | None], list[str | None]]:
        encode = self.encoder(next(model.parameters()).device, side="left")
        texts, routes, facts = self._routed(model, prompts, encode)
        batch = encode(texts)
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True), routes, facts

    def _rank(self, model: nn.Module, probe: Probe) -> tuple[str, str | None]:
        """The choice with the highest summed log-probability as a continuation of the prompt.

        A choice follows the prompt after one space unless the prompt ends in whitespace, as a
        completion does in training ("Verdict:" + " positive").
        """
        device = next(model.parameters()).device
        texts, routes, _ = self._routed(model, [probe.prompt] * len(probe.choices), self.encoder(device))
        text, route = texts[0], routes[0]
        prompt = self.tokenizer(text).input_ids  # as in training
        separator = "" if text[-1:].isspace() else " "
        sequences = [prompt + self.tokenizer(separator + c, add_special_tokens=False).input_ids for c in probe.choices]
        logprobs = _sequence_logprobs(model, sequences, len(prompt), self.tokenizer.pad_token_id)
        return probe.choices[int(torch.argmax(logprobs))], route

    @torch.no_grad()
    def perplexity(self, model: nn.Module, texts: Sequence[str], max_length: int = 512) -> float:
        """exp of the mean next-token loss over all tokens of `texts`."""
        return perplexity(*self.loss_sum(model, texts, max_length))

    @torch.no_grad()
    def loss_sum(self, model: nn.Module, texts: Sequence[str], max_length: int = 512) -> tuple[float, int]:
        """The summed next-token loss over all tokens of `texts`, and their number (sums add across processes)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total_loss, total_tokens = 0.0, 0
        try:
            encode = self.encoder(device, truncation=True, max_length=max_length)
            for start in range(0, len(texts), self.batch_size):
                chunk = texts[start : start + self.batch_size]
                self._routed(model, chunk, encode)  # the model set up for each text; the text is measured as it is
                batch = encode(chunk)
                logits = model(**batch).logits[:, :-1].float()
                targets = batch["input_ids"][:, 1:]
                mask = batch["attention_mask"][:, 1:].bool()
                # Only the real tokens' rows, flat: (tokens, vocab) is contiguous, 2.5× faster than (batch, vocab, T).
                total_loss += nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum").item()
                total_tokens += int(mask.sum())
        finally:
            model.train(was_training)
        return total_loss, total_tokens


def perplexity(loss_sum: float, tokens: int) -> float:
    mean_loss = loss_sum / max(tokens, 1)
    return math.exp(mean_loss) if mean_loss < 700 else math.inf  # a diverged model: infinite, not a crash


def _sequence_logprobs(model: nn.Module, sequences: list[list[int]], prefix: int, pad_id: int) -> torch.Tensor:
    """Summed log-probability of each sequence's tokens after its first `prefix` tokens."""
    device = next(model.parameters()).device
    width = max(map(len, sequences))
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
    logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
    token_logprobs = logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)
    counted = mask[:, 1:].clone()
    counted[:, : prefix - 1] = 0
    return (token_logprobs * counted).sum(-1)
