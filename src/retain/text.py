"""Text conventions shared by scoring, the fact registry and importers: answer normalisation and time labels.

Times are period labels such as "2018", "2021-03" or "March 2021", ordered as (year, month) with a
bare year meaning its start (month 0). A query names its time as a "[2020] " tag or a phrase
("in 2020", "as of March 2021").
"""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)

MONTHS = {m: i for i, m in enumerate(
    ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november",
     "december"], start=1)}
_MONTH_NAMES = "|".join(MONTHS)
_QUERY_TIME = re.compile(
    rf"^\s*\[(?P<bracket>[^\]]+)\]|\b(?:as of|in)\s+(?P<phrase>(?:(?:{_MONTH_NAMES})\s+)?\d{{4}}(?:-\d{{2}})?)\b",
    re.IGNORECASE,
)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def first_statement(generation: str) -> str:
    """The generated answer up to the first line break or sentence end: the rest is the model rambling on."""
    return re.split(r"\n|\.(?:\s|$)", generation.strip(), maxsplit=1)[0]


def spoken_time(period: str) -> str:
    """A period label as a sentence names it: "2018" → "2018", "2021-10" → "October 2021"."""
    year, _, month = period.partition("-")
    return f"{list(MONTHS)[int(month) - 1].capitalize()} {year}" if month else year


def time_key(label: str) -> tuple[int, int]:
    """Order a time label: "2018" → (2018, 0), "2021-03" and "March 2021" → (2021, 3)."""
    text = label.strip().lower()
    if match := re.fullmatch(r"(\d{4})(?:-(\d{1,2}))?", text):
        return int(match[1]), int(match[2] or 0)
    if match := re.fullmatch(rf"({_MONTH_NAMES})\s+(\d{{4}})", text):
        return int(match[2]), MONTHS[match[1]]
    raise ValueError(f"cannot read a time from {label!r} (expected e.g. 2018, 2021-03 or March 2021)")


def _time_match(text: str) -> re.Match[str] | None:
    for match in _QUERY_TIME.finditer(text):
        try:
            time_key(match["bracket"] or match["phrase"])
        except ValueError:
            continue
        return match
    return None


def query_time(text: str) -> str | None:
    """The time a query asks about: "[2020] …", "… in 2020 …", "as of 2020", "as of March 2021"; None if it names none."""
    match = _time_match(text)
    return None if match is None else match["bracket"] or match["phrase"]


def at_time(text: str, label: str) -> str:
    """`text` with the time `query_time` reads from it replaced by `label`, or, if it names none, with
    "[label] " in front (the form the temporal-facts stream trains on)."""
    match = _time_match(text)
    if match is None:
        return f"[{label}] {text}"
    group = "bracket" if match["bracket"] else "phrase"
    return text[: match.start(group)] + label + text[match.end(group) :]
