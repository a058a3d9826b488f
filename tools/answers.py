"""Final answers out of free text, normalized so that votes compare meanings, not strings.

A projection maps a completion to a canonical key (equal keys mean equivalent answers)
or to None when the text holds no answer of that kind (such a sample gets no vote).
Built-in projections:

- "number": `\\boxed{..}` first, then the number after the last "answer is" (or "####"),
  else the last number in the text. Thousands separators, currency signs, units and
  trailing zeros are dropped; fractions and decimals compare exactly ("0.5" == "1/2").
- "choice": a multiple-choice letter A-J ("(B)", "answer is C", "Answer: d").
- "date": the last MM/DD/YYYY in the text, zero-padded.
- "text": the span after the last "answer is" (else the last line), lowercased, with
  punctuation, articles and extra spaces removed.

Users add their own with `register_projection(name, fn)` and name it in a graph's
`answer` parameter.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Annotated

from pydantic import AfterValidator

Projection = Callable[[str], str | None]

_NUMBER = r"[-+−]?\s?[$€£]?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+(?:\.\d+)?)?"
_NUMBER_RE = re.compile(_NUMBER)
_ANSWER_IS = re.compile(r"(?:answer\s*(?:is|:|=)|####)", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")


def normalize_number(raw: str) -> str | None:
    """The canonical form of one written number: "1,000.50" -> "2001/2", "$18.00" -> "18"."""
    text = raw.replace("−", "-").replace(",", "").replace("$", "").replace("€", "").replace("£", "")
    text = re.sub(r"\s+", "", text)
    text = text.rstrip(".")
    try:
        if "/" in text:
            top, bottom = text.split("/", 1)
            value = Fraction(top) / Fraction(bottom)
        else:
            value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return str(value)


def _numbers(text: str) -> list[str]:
    return [m.group(0) for m in _NUMBER_RE.finditer(text)]


def extract_number(text: str) -> str | None:
    """The final numeric answer of a completion, canonical (see the module docstring)."""
    text = _LATEX_FRACTION.sub(r"\1/\2", text)
    boxed = _BOXED.findall(text)
    if boxed:
        found = _numbers(boxed[-1])
        if found:
            return normalize_number(found[0])
    marks = list(_ANSWER_IS.finditer(text))
    if marks:
        found = _numbers(text[marks[-1].end():])
        if found:
            return normalize_number(found[0])
    found = _numbers(text)
    return normalize_number(found[-1]) if found else None


_CHOICE_AFTER = re.compile(r"(?:answer\s*(?:is|:)|option|choice)\s*:?\s*\(?([A-Ja-j])\b\)?", re.IGNORECASE)
_CHOICE_PAREN = re.compile(r"\(([A-J])\)")
_CHOICE_ALONE = re.compile(r"(?:^|\s)([A-J])(?:[.):]|\s*$)", re.MULTILINE)


def extract_choice(text: str) -> str | None:
    """A multiple-choice letter, upper case."""
    for pattern in (_CHOICE_AFTER, _CHOICE_PAREN, _CHOICE_ALONE):
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    return None


_DATE = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b")


def extract_date(text: str) -> str | None:
    """The last MM/DD/YYYY date of the text, zero-padded."""
    found = _DATE.findall(text)
    if not found:
        return None
    month, day, year = found[-1]
    return f"{int(month):02d}/{int(day):02d}/{year}"


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """Lowercase, no punctuation, no articles, single spaces (as SQuAD scores answers)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def extract_text(text: str) -> str | None:
    """A short text answer: after the last "answer is", else the last non-empty line."""
    marks = list(_ANSWER_IS.finditer(text))
    span = text[marks[-1].end():] if marks else next((ln for ln in reversed(text.splitlines()) if ln.strip()), "")
    span = span.strip().split("\n", 1)[0]
    normalized = normalize_text(span)
    return normalized or None


_projections: dict[str, Projection] = {
    "number": extract_number,
    "choice": extract_choice,
    "date": extract_date,
    "text": extract_text,
}


def register_projection(name: str, projection: Projection) -> None:
    """Make `projection` available to graphs as `params={"answer": name}`."""
    _projections[name] = projection


def get_projection(name: str) -> Projection:
    if name not in _projections:
        raise KeyError(f"unknown answer type {name!r}; known: {', '.join(sorted(_projections))}")
    return _projections[name]


def projection_names() -> list[str]:
    return sorted(_projections)


def project(text: str, kind: str = "number") -> str | None:
    """The canonical answer key of `text` under the projection named `kind`."""
    return get_projection(kind)(text)


def equivalent(a: str, b: str, kind: str = "number") -> bool:
    """Whether two texts give the same answer (an answerless text equals nothing)."""
    key = project(a, kind)
    return key is not None and key == project(b, kind)


def display(key: str | None, kind: str = "number") -> str | None:
    """A key as users write it: "5/2" -> "2.5"; a fraction without a finite decimal stays."""
    if key is None or kind != "number":
        return key
    value = Fraction(key)
    denominator = value.denominator
    for factor in (2, 5):
        while denominator % factor == 0:
            denominator //= factor
    if denominator != 1:
        return key
    return str(Decimal(value.numerator) / Decimal(value.denominator))


def _known_kind(kind: str) -> str:
    if kind not in _projections:
        raise ValueError(f"unknown answer type {kind!r}; known: {', '.join(sorted(_projections))}")
    return kind


AnswerKind = Annotated[str, AfterValidator(_known_kind)]
"""A graph parameter naming a projection, checked when the graph is built."""


def validate_kind(kind: str) -> str:
    """`kind` if it names a projection (for pydantic validators), else a clear error."""
    get_projection(kind)
    return kind


__all__ = ["AnswerKind", "Projection", "display", "equivalent", "extract_choice", "extract_date", "extract_number",
           "extract_text", "get_projection", "normalize_number", "normalize_text", "project",
           "projection_names", "register_projection", "validate_kind"]
