"""Models named in a TOML config, and which model plays which role.

Looked up in this order: `--config FILE`, `$REFINEGRAPH_HOME/config.toml`, none. With no
config at all every role uses the embedded `local` model. Example:

    [models.local]
    backend = "local"

    [models.gpt]
    backend = "openai"
    base_url = "https://api.example.com/v1"
    model = "gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"
    price_input_per_mtok = 0.15
    price_output_per_mtok = 0.60

    [models.recorded]
    backend = "pool"              # what strong models said, from a pool file
    pool_file = "data/pools/gsm8k_faithfulcot.jsonl"
    pool_sources = ["gpt-4/cot"]

    [roles]
    default = "local"
    critic = "gpt"
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


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
    """One named model: its backend, endpoint, id, limits and price."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "openai", "vllm", "pool", "reward"] = "local"
    """reward: a reward model behind vLLM's /pooling endpoint (base_url, model), for scorers."""
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    max_n: int | None = Field(None, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    supports_json_schema: bool = True
    count_tokens: Literal["usage", "tokenize"] = "usage"
    n_parallel: int = Field(8, ge=1, le=256)
    ctx_per_slot: int = Field(4096, ge=256)
    threads: int | None = None
    price_input_per_mtok: float | None = None
    price_output_per_mtok: float | None = None
    extra_body: dict[str, Any] = Field(default_factory=dict)
    pool_file: str | None = None
    """backend "pool": a file of recorded outputs (see refinegraph.models.pool)."""
    pool_sources: list[str] | None = None
    """backend "pool": which recorded models to serve, in order (default: all, sorted)."""
    pool_order: Literal["recorded", "shuffle"] = "recorded"
    """backend "pool": serve completions as recorded, or in a permutation seeded by pool_seed."""
    pool_seed: int = 0
    retry: RetryPolicy = Field(default_factory=RetryPolicy)


class Config(BaseModel):
    """The models a run may call and the role each one plays."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelSpec] = Field(default_factory=lambda: {"local": ModelSpec()})
    roles: dict[str, str] = Field(default_factory=lambda: {"default": "local"})
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
    return config
