"""Every env var of every stage, validated in one place.

Each stage declares a pydantic model whose field names are the lower-cased env var names
(`crafter_episodes` <- `CRAFTER_EPISODES`). `load(Model)` reads a `.env` file from the
working directory (existing environment variables win), validates, and on a user error
prints one line naming the variable and exits 2 — no traceback.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_DB_URL = "sqlite:///traces/v3/lm_synth/traces.db"
DEFAULT_MODEL = "Qwen/Qwen3-4B-Instruct-2507"
DEFAULT_ACTIONS_PER_TURN = 5  # CRAFTER_ACTIONS_PER_TURN's default; also the length of a route hint
DEFAULT_SFT_JSONL = Path("ft_data/qwen4b_crafter_sft.jsonl")  # filter_traces writes it, sft_kickoff reads it
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


def install_sigterm_as_interrupt() -> None:
    """SIGTERM (a CI timeout, `kill`) stops a module like Ctrl-C does: cleanly, with a resume hint."""
    def interrupt(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


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


DbUrl = Annotated[str, AfterValidator(normalize_db_url)]  # every stage's CRAFTER_DB_URL


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
    crafter_actions_per_turn: int = Field(DEFAULT_ACTIONS_PER_TURN, ge=1, le=50)
    crafter_difficulty: Difficulty = "easy"
    crafter_seed: int = Field(1, ge=0, lt=2**31 - 1)  # episode i plays seed + i
    crafter_concurrency: int = Field(8, ge=1, le=1024)
    crafter_history: int = Field(2, ge=0, le=64)  # earlier turns included in each prompt
    crafter_temperature: float = Field(0.7, ge=0.0, le=2.0)
    crafter_max_tokens: int = Field(512, ge=1, le=131_072)
    crafter_tool_mode: Literal["tools", "text"] = "tools"
    crafter_tool_choice: Literal["auto", "required", "none"] = "auto"
    crafter_prompt: Literal["full", "compact"] = "full"  # compact: a one-line system prompt (tiny models)
    crafter_think: bool | None = None  # sent as chat_template_kwargs.enable_thinking when set
    crafter_run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:@-]{1,200}$")
    crafter_db_url: DbUrl = DEFAULT_DB_URL
    crafter_request_timeout_s: float = Field(120.0, gt=0)
    crafter_max_retries: int = Field(5, ge=0, le=50)
    crafter_max_invalid: int = Field(3, ge=1)  # consecutive invalid turns before agent_error
    crafter_price_input_per_m: float | None = Field(None, ge=0)  # USD per 1M prompt tokens
    crafter_price_output_per_m: float | None = Field(None, ge=0)  # USD per 1M completion tokens
    crafter_summary_json: Path | None = None

    @field_validator("crafter_model")
    @classmethod
    def _model(cls, value: str) -> str:
        if value.startswith("builtin:") and value not in BUILTIN_POLICIES:
            raise ValueError(f"builtin policies are {', '.join(BUILTIN_POLICIES)}")
        return value


BUILTIN_POLICIES = ("builtin:expert", "builtin:random")
RELABEL_TEACHERS = ("builtin:expert",)  # who may relabel a student's turns (relabel.py)


class KickoffSettings(Settings):
    """sft_kickoff: upload the JSONL, start a fine-tuning job, follow it to its model id."""

    qwen_base_model: str = DEFAULT_MODEL
    qwen_training_jsonl: Path = DEFAULT_SFT_JSONL
    sft_n_epochs: int | Literal["auto"] = 1
    sft_batch_size: int | Literal["auto"] = 4
    sft_learning_rate_multiplier: float | Literal["auto"] = "auto"
    sft_suffix: str | None = Field(None, max_length=64)
    sft_seed: int | None = None
    sft_validation_jsonl: Path | None = None
    sft_poll_interval_s: float = Field(5.0, gt=0)
    sft_timeout_s: float = Field(48 * 3600.0, gt=0)  # fine-tuning takes minutes to hours
    sft_job_id: str | None = None  # follow this job instead of creating one
    sft_extra_json: dict = Field(default_factory=dict)  # merged into the create-job body
    sft_state_file: Path | None = None  # default: next to the training JSONL
    sft_cancel_on_interrupt: bool = False
    sft_force_new: bool = False  # ignore a matching job in the state file and start a new one

    @field_validator("sft_extra_json", mode="before")
    @classmethod
    def _extra_json(cls, value):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"not valid JSON ({error.msg})") from None
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object, e.g. {\"upload_to_wasabi\": true}")
        return value

    @property
    def state_file(self) -> Path:
        return self.sft_state_file or self.qwen_training_jsonl.with_suffix(".sft_state.json")


class EvalSettings(RolloutSettings):
    """eval: every rollout setting (CRAFTER_*) plus these. EVAL_MODELS, EVAL_EPISODES, EVAL_SEED and
    EVAL_RUN_ID take the place of CRAFTER_MODEL, CRAFTER_EPISODES, CRAFTER_SEED and CRAFTER_RUN_ID."""

    eval_models: list[str] = []  # space-separated; empty = [CRAFTER_MODEL]; the first is the baseline
    eval_episodes: int = Field(20, ge=1, le=100_000)  # per model, on the same seeds
    eval_seed: int = Field(100_000, ge=0, lt=2**31 - 1)  # far from CRAFTER_SEED=1: held-out worlds
    eval_run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:@-]{1,190}$")  # resume; models run as <id>-m0, -m1…
    eval_run_ids: list[str] = []  # report on these finished eval runs (or <id>-mN runs) without playing
    eval_report_dir: Path | None = None  # default reports/<eval run id>
    eval_replays: bool = True  # GIF replays of each model's best and worst episode in the report

    @field_validator("eval_models", "eval_run_ids", mode="before")
    @classmethod
    def _words(cls, value) -> list[str]:
        return split_words(value)

    @field_validator("eval_models")
    @classmethod
    def _models(cls, models: list[str]) -> list[str]:
        return [RolloutSettings._model(model) for model in models]

    @property
    def models(self) -> list[str]:
        return self.eval_models or [self.crafter_model]


class RoundsSettings(Settings):
    """rounds: play -> data -> fine-tune -> eval, ROUNDS times. Each stage is the real module, called
    with the caller's environment (CRAFTER_*, SFT_*, EVAL_*, endpoints) plus the stage's own values."""

    rounds: int = Field(2, ge=1, le=100)  # round 0 learns from the teacher; later rounds from the student's play
    rounds_dir: Path = Path("runs/rounds")  # training files, state files, reports, the round table
    rounds_teacher: str = "builtin:expert"  # plays round 0 and relabels later rounds
    rounds_teacher_episodes: int = Field(40, ge=1, le=100_000)  # round 0's training episodes
    rounds_student_episodes: int = Field(20, ge=1, le=100_000)  # training episodes the student plays per later round
    rounds_student_temperature: float = Field(1.0, ge=0.0, le=2.0)  # sampling while the student plays
    rounds_data: Literal["relabel", "rejection", "both"] = "relabel"  # later rounds' data (DAgger / own best)
    rounds_init: Literal["base", "previous"] = "base"  # base: base model on all data so far; previous: last model on new data
    rounds_min_reward: float = 1.0  # rejection sampling: the student's own episodes with at least this reward
    rounds_eval_temperatures: list[float] = [0.7, 0.0]  # every round is evaluated at each; the first is the headline
    rounds_run_prefix: str = Field("rounds", pattern=r"^[A-Za-z0-9_.:@-]{1,100}$")  # run ids: <prefix>-r<k>-…
    qwen_base_model: str = DEFAULT_MODEL
    crafter_seed: int = Field(1, ge=0, lt=2**31 - 1)  # training seeds: the teacher's, then each round's block
    crafter_db_url: DbUrl = DEFAULT_DB_URL
    eval_seed: int = Field(100_000, ge=0, lt=2**31 - 1)
    eval_episodes: int = Field(20, ge=1, le=100_000)

    @field_validator("rounds_teacher")
    @classmethod
    def _rounds_teacher(cls, value: str) -> str:
        if value not in RELABEL_TEACHERS:
            raise ValueError(f"teachers are {', '.join(RELABEL_TEACHERS)}")
        return value

    @field_validator("rounds_eval_temperatures", mode="before")
    @classmethod
    def _temperatures(cls, value) -> list:
        words = split_words(value)
        if not words:
            raise ValueError("name at least one temperature, e.g. '0.7 0'")
        return words

    @field_validator("rounds_eval_temperatures")
    @classmethod
    def _temperature_range(cls, values: list[float]) -> list[float]:
        if any(not 0.0 <= t <= 2.0 for t in values):
            raise ValueError("temperatures are between 0 and 2")
        return values


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


class FilterSettings(Settings):
    """filter_traces: traces -> SFT JSONL. Lists are space- or comma-separated; caps take "none" (off).
    The original's names are kept (MIN_TOTAL_REWARD, MODELS, …); the newer knobs are FILTER_*."""

    crafter_db_url: DbUrl = DEFAULT_DB_URL
    output_jsonl: Path = DEFAULT_SFT_JSONL
    min_total_reward: float = 1.0  # sum of Crafter's per-step rewards in the episode
    min_achievements: int = Field(0, ge=0, le=22)  # distinct achievements unlocked in the episode
    required_achievements: list[str] = []  # all of these must be unlocked
    max_cost: float | None = Field(10.0, ge=0)  # USD per episode, summed over its LM calls
    max_tokens: int | None = Field(100_000, ge=0)  # per episode, prompt + completion over its LM calls
    models: list[str] = []  # empty = every model
    filter_run_ids: list[str] = []  # empty = every run
    filter_difficulties: list[Difficulty] = []  # empty = every difficulty
    filter_statuses: list[str] = ["completed", "died", "max_steps"]
    filter_include_eval: bool = False  # eval episodes are held out unless asked for
    filter_mode: Literal["turn", "episode"] = "turn"  # one example per valid turn, or per episode
    filter_max_example_tokens: int | None = Field(None, ge=1)  # drop longer examples; none = no cap
    filter_dedup: bool = True
    filter_reasoning: Literal["keep", "subgoal", "drop"] = "keep"  # the trained reply's reasoning text
    filter_validation_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # of seeds, not of examples
    filter_validation_jsonl: Path | None = None  # default: OUTPUT_JSONL with a _val suffix
    filter_dry_run: bool = False
    filter_json: bool = False  # the funnel as JSON on stdout
    filter_relabel: str | None = None  # a teacher re-answers every turn of the kept episodes (DAgger)

    @field_validator("max_cost", "max_tokens", "filter_max_example_tokens", mode="before")
    @classmethod
    def _cap(cls, value):
        return None if isinstance(value, str) and value.strip().lower() in ("none", "off") else value

    @field_validator("required_achievements", "models", "filter_run_ids", "filter_difficulties",
                     "filter_statuses", mode="before")
    @classmethod
    def _words(cls, value) -> list[str]:
        return split_words(value)

    @field_validator("required_achievements")
    @classmethod
    def _achievements(cls, names: list[str]) -> list[str]:
        if names:
            from synth_qwen.crafter_env import ACHIEVEMENTS  # imports crafter: only when needed
            unknown = [name for name in names if name not in ACHIEVEMENTS]
            if unknown:
                raise ValueError(f"unknown achievement {unknown[0]!r}; known: {', '.join(ACHIEVEMENTS)}")
        return names

    @field_validator("filter_statuses")
    @classmethod
    def _statuses(cls, statuses: list[str]) -> list[str]:
        from synth_qwen.tracing import STATUSES
        unknown = [status for status in statuses if status not in STATUSES]
        if unknown or not statuses:
            raise ValueError(f"statuses are {', '.join(STATUSES)}")
        return statuses

    @field_validator("filter_relabel", mode="before")
    @classmethod
    def _teacher(cls, value):
        value = value.strip() if isinstance(value, str) else value
        if value and value not in RELABEL_TEACHERS:
            raise ValueError(f"teachers are {', '.join(RELABEL_TEACHERS)} (empty = off)")
        return value or None

    @model_validator(mode="after")
    def _relabel_per_turn(self):
        if self.filter_relabel and self.filter_mode != "turn":
            raise ValueError(f"FILTER_RELABEL relabels single turns: it needs FILTER_MODE=turn, "
                             f"not {self.filter_mode} (or unset FILTER_RELABEL)")
        return self

    @property
    def validation_jsonl(self) -> Path:
        path = self.output_jsonl
        return self.filter_validation_jsonl or path.with_name(f"{path.stem}_val{path.suffix}")
