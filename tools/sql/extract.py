"""Reading the SQL out of a model's reply (code fences, prose around it)."""

from __future__ import annotations

import re

_FENCE = re.compile(r"```(?:sql|sqlite|postgresql|postgres)?\s*\n?(.*?)```", re.IGNORECASE | re.DOTALL)
_START = re.compile(r"\b(SELECT|WITH)\b", re.IGNORECASE)


def extract_sql(reply: str) -> str:
    """The first fenced block if any, else the text from the first SELECT/WITH; one
    statement (cut at the first top-level semicolon), without the semicolon."""
    fenced = _FENCE.search(reply)
    text = fenced.group(1) if fenced else reply
    start = _START.search(text)
    if start:
        text = text[start.start():]
    return _first_statement(text).strip()


def _first_statement(text: str) -> str:
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in ("'", '"', "`"):
            quote = ch
        elif ch == ";":
            return text[:i]
    return text
