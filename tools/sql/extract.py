"""Reading the SQL out of a model's reply (code fences, prose around it)."""

from __future__ import annotations

import re

_FENCE = re.compile(r"```(?:sql|sqlite|postgresql|postgres)?\s*\n?(.*?)```", re.IGNORECASE | re.DOTALL)
_START = re.compile(r"\b(SELECT|WITH)\b", re.IGNORECASE)
# A statement that starts before its SELECT (INSERT ... SELECT, CREATE ... AS SELECT) is
# kept whole, so the guard sees and rejects what the model really wrote.
_STATEMENT = re.compile(
    r"\b(INSERT\s+(OR\s+\w+\s+)?INTO|REPLACE\s+INTO|UPDATE\s+\S+\s+SET|DELETE\s+FROM|"
    r"CREATE\s+(TEMP\w*\s+)?(TABLE|VIEW|INDEX|TRIGGER|UNIQUE)|DROP\s+(TABLE|VIEW|INDEX|TRIGGER)|ALTER\s+TABLE|"
    r"EXPLAIN|ATTACH\s+DATABASE|PRAGMA|VACUUM|TRUNCATE\s+TABLE)\b", re.IGNORECASE)


def extract_sql(reply: str) -> str:
    """The first fenced block if any, else the text from the first SELECT/WITH (or from a
    statement keyword before it); one statement (cut at the first top-level semicolon),
    without the semicolon. What follows a semicolon is never run."""
    fenced = _FENCE.search(reply)
    text = fenced.group(1) if fenced else reply
    start = _START.search(text)
    if start:
        earlier = _STATEMENT.search(text, 0, start.start())
        text = text[(earlier or start).start():]
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
