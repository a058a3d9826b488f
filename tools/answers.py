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
- "letters": a string of letters (Last Letter Concatenation): the word after the last
  "answer is" (else the last line's last word), letters only, lowercased.
- "sql": the last SQL query of the text (a ```sql block, else from the last SELECT/WITH),
  in sqlglot's canonical spelling.
- "tool_call": a reply that calls tools, keyed by its calls normalised as (name, arguments
  as canonical JSON), ids and order left out; a reply in words by its whitespace-collapsed
  text (refinegraph.tool_calls). The answer type of a run whose client offered tools.

Each task names its answer type (`TASK_ANSWERS`, `answer_type_for_task`): a pool record's
`task` field picks the projection, so a Last Letters pool is never read as numbers.
Users add their own with `register_projection(name, fn)` (and `register_task`) and name it
in a graph's `answer` parameter.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Any

from pydantic import AfterValidator

from refinegraph.tool_calls import tool_call_answer

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


def gsm8k_gold(answer: str) -> str:
    """The number after "####" of a GSM8K answer, canonical (normalize_number)."""
    _, mark, tail = answer.rpartition("####")
    gold = normalize_number(tail.strip()) if mark else None
    if gold is None:
        raise ValueError(f"GSM8K answer without a number after '####': {answer[-80:]!r}")
    return gold


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


_LETTERS = re.compile(r"[A-Za-z]+")


def extract_letters(text: str) -> str | None:
    """A concatenation of letters: the first word after the last "answer is", else the
    last word of the last non-empty line; quotes and punctuation dropped, lowercased."""
    marks = list(_ANSWER_IS.finditer(text))
    if marks:
        words = _LETTERS.findall(text[marks[-1].end():].split("\n", 1)[0])
        return words[0].lower() if words else None
    line = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "")
    words = _LETTERS.findall(line)
    return words[-1].lower() if words else None


_SQL_BLOCK = re.compile(r"```(?:sql)?\s*(.*?)```", re.IGNORECASE | re.DOTALL)
_SQL_START = re.compile(r"\b(SELECT|WITH)\b", re.IGNORECASE)


def extract_sql(text: str) -> str | None:
    """The last SQL query of the text in sqlglot's canonical spelling; None when none parses."""
    import sqlglot
    from sqlglot.errors import ParseError, TokenError

    blocks = _SQL_BLOCK.findall(text)
    if blocks:
        candidate = blocks[-1]
    else:
        starts = [m.start() for m in _SQL_START.finditer(text)]
        if not starts:
            return None
        candidate = text[starts[0]:]
    candidate = candidate.strip().split(";", 1)[0]
    try:
        tree = sqlglot.parse_one(candidate, read="sqlite")
    except (ParseError, TokenError):
        return None
    return tree.sql(dialect="sqlite", normalize=True) if tree is not None else None


_projections: dict[str, Projection] = {
    "number": extract_number,
    "choice": extract_choice,
    "date": extract_date,
    "text": extract_text,
    "letters": extract_letters,
    "sql": extract_sql,
    "tool_call": tool_call_answer,
}

TASK_ANSWERS: dict[str, str] = {
    "gsm8k": "number", "svamp": "number", "asdiv": "number", "multiarith": "number", "math": "number",
    "date": "date", "last_letters": "letters", "coin_flip": "text", "strategyqa": "text",
    "aqua": "choice", "commonsenseqa": "choice", "mmlu": "choice", "gpqa": "choice", "arc": "choice",
    "spider": "sql", "bird": "sql",
}
"""The answer type of each known task (a pool record's `task` field)."""


def register_task(task: str, kind: str) -> None:
    """Name the answer type of a task, so that pools of that task read their answers by it."""
    get_projection(kind)
    TASK_ANSWERS[task.lower()] = kind


def answer_type_for_task(task: str) -> str:
    """The answer type a task's answers are read by; an unknown task is an error naming the
    known tasks and the answer types (never a silent guess)."""
    key = task.strip().lower()
    if key in TASK_ANSWERS:
        return TASK_ANSWERS[key]
    raise ValueError(f"no answer type is known for task {task!r}; known tasks: "
                     f"{', '.join(f'{t} ({k})' for t, k in sorted(TASK_ANSWERS.items()))}. Name one of the "
                     f"answer types ({', '.join(sorted(_projections))}) explicitly, or register_task() it")


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


class _KnownKinds:
    """AnswerKind's JSON schema: the projections registered when the schema is made (the
    server's OpenAPI document lists what it takes)."""

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        schema["enum"] = sorted(_projections)
        return schema


AnswerKind = Annotated[str, AfterValidator(_known_kind), _KnownKinds]
"""A graph parameter naming a projection, checked when the graph is built."""


def validate_kind(kind: str) -> str:
    """`kind` if it names a projection (for pydantic validators), else a clear error."""
    get_projection(kind)
    return kind


__all__ = ["AnswerKind", "Projection", "TASK_ANSWERS", "answer_type_for_task", "display", "equivalent",
           "extract_choice", "extract_date", "extract_letters", "extract_number", "extract_sql", "extract_text",
           "get_projection", "normalize_number", "normalize_text", "project", "projection_names",
           "register_projection", "register_task", "validate_kind"]
