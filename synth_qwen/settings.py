"""Every env var of every stage, validated in one place.

Each stage declares a pydantic model whose field names are the lower-cased env var names
(`crafter_episodes` <- `CRAFTER_EPISODES`). `load(Model)` reads a `.env` file from the
working directory (existing environment variables win), validates, and on a user error
prints one line naming the variable and exits 2 — no traceback.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_DB_URL = "sqlite:///traces/v3/lm_synth/traces.db"
DEFAULT_MODEL = "Qwen/Qwen3-4B-Instruct-2507"
LOCAL_SERVICE_URL = "http://localhost:8000/api"
LOOPBACK_PLACEHOLDER_KEY = "sk-local-placeholder"

Model = TypeVar("Model", bound=BaseModel)


class SettingsError(Exception):
    """A user error in configuration; the message is one line that names the fix."""


class Settings(BaseModel):
    """Base: unknown fields forbidden, blank env values mean 'use the default'."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def load_dotenv_once() -> None:
    try:
        from dotenv import load_dotenv
    except ImportError:  # python-dotenv is a core dependency; tolerate its absence in odd envs
        return
    load_dotenv(Path.cwd() / ".env", override=False)


def env_values(model: type[BaseModel], environ: dict[str, str] | None = None) -> dict[str, str]:
    """The env vars that belong to `model`, blank values dropped (blank = default)."""
    environ = os.environ if environ is None else environ
    values = {}
    for name in model.model_fields:
        raw = environ.get(name.upper())
        if raw is not None and raw.strip() != "":
            values[name] = raw.strip()
    return values


def describe_error(model: type[BaseModel], error: ValidationError, values: dict) -> str:
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    message = first["msg"].removeprefix("Value error, ")
    if field in model.model_fields:
        return f"{field.upper()}={values.get(field, '')!r} is invalid: {message}"
    return message


def parse(model: type[Model], values: dict) -> Model:
    """Validate `values` (strings from env/CLI/TOML); raise SettingsError with one line."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise SettingsError(describe_error(model, error, values)) from None


def load(model: type[Model], overrides: dict | None = None) -> Model:
    """Read `model` from .env + environment (+ overrides); exit 2 with one line on error."""
    load_dotenv_once()
    values = {**env_values(model), **(overrides or {})}
    try:
        return parse(model, values)
    except SettingsError as error:
        exit_usage(str(error))


def exit_usage(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------------------------------
# Shared resolution rules (DESIGN §3)

def normalize_db_url(url: str) -> str:
    """Accept sqlite:///x, sqlite+aiosqlite:///x, a plain path, or postgresql://…"""
    url = url.strip()
    if url.startswith("sqlite+aiosqlite://"):
        url = "sqlite://" + url.removeprefix("sqlite+aiosqlite://")
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        return url
    if url.startswith("sqlite://"):
        if not url.startswith("sqlite:///"):
            raise ValueError("sqlite URLs look like sqlite:///relative/path.db or sqlite:////abs/path.db")
        return url
    if "://" in url:
        raise ValueError("use sqlite:///path.db, a plain file path, or postgresql://user@host/db")
    return "sqlite:///" + url


def check_http_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return url


def inference_base_url(environ: dict[str, str] | None = None) -> str:
    """OPENAI_BASE_URL, else SYNTH_BASE_URL + /v1, else the local service."""
    environ = os.environ if environ is None else environ
    if environ.get("OPENAI_BASE_URL", "").strip():
        return check_named_url("OPENAI_BASE_URL", environ["OPENAI_BASE_URL"])
    if environ.get("SYNTH_BASE_URL", "").strip():
        return check_named_url("SYNTH_BASE_URL", environ["SYNTH_BASE_URL"]) + "/v1"
    return LOCAL_SERVICE_URL + "/v1"


def learning_base_url(environ: dict[str, str] | None = None) -> str:
    """LEARNING_V2_BASE_URL, else SYNTH_BASE_URL, else the local service."""
    environ = os.environ if environ is None else environ
    for name in ("LEARNING_V2_BASE_URL", "SYNTH_BASE_URL"):
        if environ.get(name, "").strip():
            return check_named_url(name, environ[name])
    return LOCAL_SERVICE_URL


def check_named_url(name: str, value: str) -> str:
    try:
        return check_http_url(value)
    except ValueError as error:
        raise SettingsError(f"{name}={value!r} is invalid: {error}") from None


def inference_api_key(environ: dict[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return (environ.get("OPENAI_API_KEY", "").strip() or environ.get("SYNTH_API_KEY", "").strip()
            or LOOPBACK_PLACEHOLDER_KEY)


def learning_api_key(environ: dict[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return (environ.get("SYNTH_API_KEY", "").strip() or environ.get("OPENAI_API_KEY", "").strip()
            or LOOPBACK_PLACEHOLDER_KEY)


def split_words(value: str | list[str] | None) -> list[str]:
    """'a b,c' -> ['a', 'b', 'c'] (space- or comma-separated lists in env vars)."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [word for word in value.replace(",", " ").split() if word]


# ---------------------------------------------------------------------------------------
# Stage settings

Difficulty = Literal["peaceful", "easy", "normal", "hard"]


class RolloutSettings(Settings):
    """run_crafter (and the rollout half of eval). CRAFTER_MAX_STEPS counts agent turns (LM calls)."""

    crafter_model: str = DEFAULT_MODEL  # an endpoint model id (ft:… too), builtin:expert or builtin:random
    crafter_episodes: int = Field(10, ge=1, le=100_000)
    crafter_max_steps: int = Field(30, ge=1, le=10_000)  # agent turns per episode
    crafter_actions_per_turn: int = Field(5, ge=1, le=50)
    crafter_difficulty: Difficulty = "easy"
    crafter_seed: int = Field(1, ge=0, lt=2**31 - 1)  # episode i plays seed + i
    crafter_concurrency: int = Field(8, ge=1, le=1024)
    crafter_history: int = Field(2, ge=0, le=64)  # earlier turns included in each prompt
    crafter_temperature: float = Field(0.7, ge=0.0, le=2.0)
    crafter_max_tokens: int = Field(512, ge=1, le=131_072)
    crafter_tool_mode: Literal["tools", "text"] = "tools"
    crafter_tool_choice: Literal["auto", "required", "none"] = "auto"
    crafter_think: bool | None = None  # sent as chat_template_kwargs.enable_thinking when set
    crafter_run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:@-]{1,200}$")
    crafter_db_url: str = DEFAULT_DB_URL
    crafter_request_timeout_s: float = Field(120.0, gt=0)
    crafter_max_retries: int = Field(5, ge=0, le=50)
    crafter_max_invalid: int = Field(3, ge=1)  # consecutive invalid turns before agent_error
    crafter_price_input_per_m: float | None = Field(None, ge=0)  # USD per 1M prompt tokens
    crafter_price_output_per_m: float | None = Field(None, ge=0)  # USD per 1M completion tokens
    crafter_summary_json: Path | None = None

    @field_validator("crafter_db_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        return normalize_db_url(value)

    @field_validator("crafter_model")
    @classmethod
    def _model(cls, value: str) -> str:
        if value.startswith("builtin:") and value not in BUILTIN_POLICIES:
            raise ValueError(f"builtin policies are {', '.join(BUILTIN_POLICIES)}")
        return value


BUILTIN_POLICIES = ("builtin:expert", "builtin:random")


class ServeSettings(Settings):
    """`python -m synth_qwen.serve`: the local OpenAI-compatible learning service."""

    serve_host: str = "127.0.0.1"
    serve_port: int = Field(8000, ge=0, le=65535)  # 0 = any free port (printed at start)
    serve_data_dir: Path = Path("serve_data")
    serve_api_key: str | None = None  # when set, requests need `Authorization: Bearer <key>`
    serve_max_upload_mb: float = Field(512.0, gt=0)
    serve_device: Literal["auto", "cpu", "cuda"] = "auto"
    serve_allow_download: bool = False  # may base models be fetched from the Hugging Face Hub?
    serve_tiny_size: Literal["micro", "small", "medium"] = "small"  # rows of tiny_model.SIZES
    serve_max_seq_len: int = Field(2048, ge=64)  # longer training examples are truncated
    serve_max_batch: int = Field(32, ge=1)  # concurrent chat requests decoded together
    serve_lora_rank: int = Field(16, ge=1)
    serve_max_loaded_models: int = Field(2, ge=1)  # models kept in the inference worker
