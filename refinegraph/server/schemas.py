"""The request body of /v1/chat/completions, as far as refinegraph reads it.

OpenAI's `max_tokens` (or `max_completion_tokens`) caps every generation of the run, as
optillm passes it to each call (the critic's and the refiner's too). The other sampling
fields (temperature, top_p, seed, ...) are accepted and ignored: the method decides how
its models sample. What is read is validated strictly,
as JSON types (`"n": "1"`, `"stream": 1`, `"tokens": "500"` are refused, not coerced). Per-request graph parameters come
in the `refinegraph` object (the openai client's `extra_body={"refinegraph": {...}}`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from refinegraph.config import BudgetSpec


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[TextPart] | None = None

    def text(self) -> str:
        """The message's text (text parts joined; other parts, e.g. images, are refused)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        kinds = {part.type for part in self.content} - {"text"}
        if kinds:
            raise ValueError(f"only text content is supported, got parts of type {', '.join(sorted(kinds))}")
        return "".join(part.text or "" for part in self.content)


class RequestBudget(BudgetSpec):
    """A request's budget: JSON numbers only ("500" is refused, not read as 500)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class RefinegraphExtra(BaseModel):
    """What a request may set for its run; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    params: dict[str, Any] = Field(default_factory=dict)
    budget: RequestBudget = Field(default_factory=RequestBudget)
    db: StrictStr | None = None
    """SQL pipelines: a database name from the config's [server] databases (allow_request_db)."""
    evidence: StrictStr | None = None
    progress: StrictBool = False
    """stream=true: also stream the run's trace events as they are written (see streaming.py)."""


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(BaseModel):
    """One offered tool, as OpenAI's `tools` items (function tools only)."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["function"]
    function: FunctionSpec


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["function"]
    function: dict[str, StrictStr]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: StrictStr
    messages: list[Message]
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    max_tokens: int | None = Field(None, ge=1)
    """The longest generation any call of the run may make (Budget.max_tokens_per_call)."""
    max_completion_tokens: int | None = Field(None, ge=1)
    """OpenAI's newer name for max_tokens; both may be sent only with the same value."""
    tools: list[ToolSpec] | None = Field(None, min_length=1, max_length=128)
    """Passed to the upstream model with the conversation (graphs that take tools only)."""
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    refinegraph: RefinegraphExtra = Field(default_factory=RefinegraphExtra)
