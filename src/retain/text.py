"""Text conventions shared by scoring, the fact registry and importers: answer normalisation and time labels.

Times are period labels such as "2018", "2021-03" or "March 2021", ordered as (year, month) with a
bare year meaning its start (month 0). A query names its time however a person writes it: a "[2020] "
tag, "in 2020", "as of March 2021", "2019-05-03", "the year 2018", "'18", "twenty eighteen", "mid-2019", "before
2020", or relative to a clock ("last year", "two years back", "the year before last", "now", "as things stand").
"""

from __future__ import annotations

import datetime
import functools
import re
import string
from typing import NamedTuple

from dateparser.search import search_dates

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)

MONTHS = {m: i for i, m in enumerate(
    ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november",
     "december"], start=1)}
_MONTH_NAMES = "|".join(MONTHS)
_TAG = re.compile(r"^\s*\[(?P<label>[^\]]+)\]")
_PRESENT = re.compile(r"\b(?:right now|now|today|currently|at present|presently|nowadays|these days|at the moment|"
                      r"at this time|at the present time|this year|as things stand|as it stands|as we speak)\b",
                      re.IGNORECASE)
_THE_YEAR = re.compile(r"\bthe year (?=\d{4}\b)", re.IGNORECASE)
# Ways to write a time that dateparser does not read, each rewritten in words it does.
_IDIOMS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(early|mid|late)-(?=[12]\d{3}\b)", re.IGNORECASE), r"\1 "),  # "mid-2019"
    (re.compile(r"\b([12]\d{3})\s*[-–—]\s*([12]\d{3})\b"), r"\1 to \2"),  # "2019-2021", a range
    (re.compile(r"\bthe year before last\b", re.IGNORECASE), "two years ago"),
    (re.compile(r"\b(?:a )?couple of years\b", re.IGNORECASE), "two years"),
    (re.compile(r"\b(\w+ (?:years?|months?)) back\b", re.IGNORECASE), r"\1 ago"),  # "three years back"
    (re.compile(r"\b(?:the )?previous (year|month)\b", re.IGNORECASE), r"last \1"),
)
_SHORT_YEAR = re.compile(r"(?<![\w'’])['’](\d{2})\b")
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_BELOW_100 = rf"(?:(?:{'|'.join(_TENS)})(?:[- ](?:{'|'.join(_ONES[1:10])}))?|{'|'.join(_ONES[1:])})"
_SPOKEN_YEAR = re.compile(rf"\b(?:(?P<century>nineteen|twenty)[- ](?:(?:oh|o)[- ])?(?P<rest>{_BELOW_100}|hundred)"
                          rf"|two thousand(?: and)?(?: (?P<after>{_BELOW_100}))?)\b", re.IGNORECASE)
# Words a date parser takes into a time's span that belong to the sentence around it.
_AROUND = {"in", "of", "on", "at", "from", "and", "the", "since", "by", "during", "to", "until", "as", "for", "back",
           "around", "early", "late", "mid", "before", "after"}
_BEFORE, _AFTER = re.compile(r"\bbefore\s*$", re.IGNORECASE), re.compile(r"\bafter\s*$", re.IGNORECASE)
_RELATIVE = re.compile(r"\b(?:ago|last|next|previous|past|yesterday|tomorrow)\b", re.IGNORECASE)
_BEFORE_YEAR = re.compile(r"(?:^|[\[(,:;–-]|\b(?:in|of|since|during|by|from|to|until|around|before|after|early|late|mid|"
                          r"and|spring|summer|autumn|fall|winter))\s*$", re.IGNORECASE)
_DATED = re.compile(r"\b[12]\d{3}\b(?!s)|\b\d{4}[-/.]\d{1,2}\b|\b\d{1,2}[-/.]\d{4}\b")


class TimeSpan(NamedTuple):
    """A time a query names: its label ("2018", "2021-03"), the query as read (a spoken or shortened year written
    out in digits) and where in that text the time is."""

    label: str
    text: str
    start: int
    end: int


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


def query_time(text: str, clock: str | None = None) -> str | None:
    """The time a query asks about, as a label ("2018", "2021-03"); None if it names none. See `find_time`."""
    found = find_time(text, clock)
    return None if found is None else found.label


def at_time(text: str, label: str, clock: str | None = None) -> str:
    """`text` with the time `find_time` reads from it replaced by `label`, or, if it names none, with
    "[label] " in front (the form the temporal-facts stream trains on)."""
    found = find_time(text, clock)
    if found is None:
        return f"[{label}] {text}"
    return found.text[: found.start] + label + found.text[found.end :]


def dated(text: str, clock: str) -> str:
    """`text` naming an absolute time: as it is if it names one ("in 2018"), else with "[label] " in front, the label
    its relative time ("last year") has against `clock`, or the clock itself when it names no time."""
    if query_time(text) is not None:
        return text
    return f"[{query_time(text, clock) or clock}] {text}"


def find_time(text: str, clock: str | None = None) -> TimeSpan | None:
    """The time `text` names, as a person would write it, or None.

    A "[label]" tag in front wins. Otherwise spoken years ("twenty eighteen"), shortened ones ("'18", in the
    century that puts them at or before the clock) and "the year 2018" are written in digits, and dateparser finds
    the times: years, months, ISO and numeric dates, and, against `clock` (a period label: what "now" means),
    relative times ("last year", "two years ago", "last month") and the present ("now", "today", "currently").
    Without a clock, relative times name nothing. A year is read as a year ("2019" → "2019"), anything finer as its
    month; "before 2020" as 2019 and "after 2019" as 2020. Several times (a range, "from 2015 to 2017", "2015-2017")
    are read at the latest of them: the version that held at the range's end. A decade ("the late 2010s") names
    no time. Spans a date parser takes for a time that a question uses otherwise are not times: a month name in
    lower case ("who may lead"), one not after a preposition or before a capitalised word ("the March Hare
    Society"), a weekday ("FC Sun City"), a decade ("the 1990s Club").
    """
    return max(_times(text, clock), key=lambda t: (time_key(t.label), t.start), default=None)


def wording(text: str) -> str:
    """How `text` is worded, whatever time it names: its words normalised (case, punctuation, articles, spacing) with
    every time and the preposition before it left out: "[2019] The mayor of Nozer is", "The mayor of Nozer, in
    2021, is" and "the mayor of  nozer is" word alike."""
    times = _times(text, clock="2000")  # any clock: relative times are left out too
    text = times[0].text if times else text
    for time in sorted(times, key=lambda t: -t.start):
        before = re.sub(r"\b(?:in|as of|on|since|during|by|at)\s+$", "", text[: time.start], flags=re.IGNORECASE)
        text = before + " " + text[time.end :]
    return normalize_answer(text)


@functools.lru_cache(maxsize=65536)
def _times(text: str, clock: str | None) -> tuple[TimeSpan, ...]:
    """Every time `text` names (see `find_time`), in the text with spoken and shortened years written in digits."""
    if match := _TAG.match(text):
        try:
            time_key(match["label"])
            return (TimeSpan(match["label"], text, match.start("label"), match.end("label")),)
        except ValueError:
            pass
    base = _clock_date(clock)
    text = _THE_YEAR.sub("", text)
    for idiom, words in _IDIOMS:
        text = idiom.sub(words, text)
    text = _SPOKEN_YEAR.sub(lambda m: str(_spoken_year(m)), text)
    text = _SHORT_YEAR.sub(lambda m: str(_full_year(int(m[1]), base)), text)
    found = [TimeSpan(clock, text, m.start(), m.end()) for m in _PRESENT.finditer(text)] if clock else []
    masked = _PRESENT.sub(lambda m: " " * len(m[0]), text)
    settings = {"PREFER_DAY_OF_MONTH": "first", "PREFER_DATES_FROM": "past", "RETURN_TIME_AS_PERIOD": True,
                "RELATIVE_BASE": base or datetime.datetime(3000, 1, 1)}
    position = 0
    for span, date in search_dates(masked, languages=["en"], settings=settings) or []:
        start = masked.index(span, position)
        position = start + len(span)
        # The parser's span may hold the words around the time ("in", "of", "the"): the time is what is left.
        words = span.split()
        while words and words[0].lower().strip(",") in _AROUND:
            words = words[1:]
        while words and words[-1].lower().strip(",.") in _AROUND:
            words = words[:-1]
        if not words:
            continue
        start = masked.index(words[0], start)
        core = masked[start : masked.index(words[-1], start) + len(words[-1])].rstrip(string.punctuation)
        if not _is_time(core, masked[:start], masked[start + len(core) :], clock is not None):
            continue
        yearly = re.fullmatch(r"[12]\d{3}", core) or re.search(r"\b(?:years?|decades?)\b", core, re.IGNORECASE)
        # "before 2020" asks about the year before it, "after 2019" about the year after (a month: the month); the
        # word is part of the time, so that a text dated anew does not say "before" the period it names.
        shift = _BEFORE.search(masked[:start]) or _AFTER.search(masked[:start])
        step = 0 if shift is None else -1 if shift[0].lower().startswith("before") else 1
        end, start = start + len(core), start if shift is None else shift.start()
        if yearly:
            label = str(date.year + step)
        else:
            year, month = divmod(date.year * 12 + date.month - 1 + step, 12)
            label = f"{year}-{month + 1:02d}"
        found.append(TimeSpan(label, text, start, end))
    return tuple(found)


def _is_time(core: str, before: str, after: str, clocked: bool) -> bool:
    """Whether a span a date parser found is a time the query names (see `find_time`)."""
    if re.fullmatch(r"[12]\d{3}", core):  # a bare year, unless it counts something: "can hold 2020 ships"
        return bool(_BEFORE_YEAR.search(before)) or not re.match(r"\s+[a-z]", after)
    if _DATED.search(core):
        return True
    if _RELATIVE.search(core):
        return clocked
    word = core.split()[0].lower().rstrip(".")
    month = len(word) >= 3 and any(m.startswith(word) for m in MONTHS)
    after_preposition = re.search(r"\b(?:in|of|since|during|until|by|from|to)\s*$", before, re.IGNORECASE)
    return month and clocked and core[0].isupper() and bool(after_preposition) and not re.match(r"\s+[A-Z]", after)


def _clock_date(clock: str | None) -> datetime.datetime | None:
    """The date a clock label stands for: a month's first day, a year's last (so "in May" against 2018 is May 2018)."""
    if clock is None:
        return None
    year, month = time_key(clock)
    return datetime.datetime(year, month, 1) if month else datetime.datetime(year, 12, 31)


def _full_year(two_digits: int, base: datetime.datetime | None) -> int:
    """'18 → 2018, '99 → 1999: the century that puts the year at or before the clock (this century without one)."""
    now = (base or datetime.datetime.now()).year
    year = now - now % 100 + two_digits
    return year if year <= now else year - 100


def _spoken_year(match: re.Match[str]) -> int:
    if match["century"] is None:
        return 2000 + (_number(match["after"]) if match["after"] else 0)
    century = 1900 if match["century"].lower() == "nineteen" else 2000
    rest = match["rest"].lower()
    return century + (0 if rest == "hundred" else _number(rest))


def _number(words: str) -> int:
    """A number below 100 in words: "eighteen" → 18, "ninety-nine" → 99."""
    total = 0
    for word in re.split(r"[- ]", words.lower()):
        total += _ONES.index(word) if word in _ONES else 10 * (_TENS.index(word) + 2)
    return total
