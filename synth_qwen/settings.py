"""Every setting of every stage, validated in one place and read one way (pydantic-settings).

Each stage declares a model whose field names are the lower-cased env var names
(`crafter_episodes` <- `CRAFTER_EPISODES`). `load(Model)` reads it from these layers, highest first:

    CLI flags  >  environment  >  .env (working directory)  >  TOML table (-c FILE.toml)  >  defaults

Only filter_traces, replay and world_stats take flags (`load(Model, argv=...)`): every setting is a flag named
after its variable in kebab case (`--min-total-reward`), plus the short forms of `cli_shortcuts`
(`-d/--db`); a model with a `toml_table` also takes `-c FILE.toml`. A blank value in any layer
means "not set here". On a user error `load` prints one line naming the variable and exits 2 — no
traceback. Constructing a model directly (`RolloutSettings(crafter_episodes=3)`) reads nothing:
tests and callers get exactly the values they pass.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tomllib
from pathlib import Path
from typing import Annotated, ClassVar, Literal, TypeVar

from dotenv import dotenv_values
from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (BaseSettings, CliPositionalArg, CliSettingsSource, DotEnvSettingsSource,
                               EnvSettingsSource, SettingsConfigDict)

from synth_qwen import balrog
from synth_qwen.sft_format import MIN_EXAMPLES

DEFAULT_DB_URL = "sqlite:///traces/v3/lm_synth/traces.db"
DEFAULT_MODEL = "Qwen/Qwen3-4B-Instruct-2507"
DEFAULT_ACTIONS_PER_TURN = 5  # CRAFTER_ACTIONS_PER_TURN's default; also the length of a route hint
DEFAULT_SFT_JSONL = Path("ft_data/qwen4b_crafter_sft.jsonl")  # filter_traces writes it, sft_kickoff reads it
LARGEST_SEED = 2**31 - 1  # session_traces.seed is a 32-bit integer (PostgreSQL's `integer`)
LOCAL_SERVICE_URL = "http://localhost:8000/api"
LOOPBACK_PLACEHOLDER_KEY = "sk-local-placeholder"
DOTENV = ".env"  # read from the working directory

Model = TypeVar("Model", bound=BaseSettings)


class SettingsError(Exception):
    """A user error in configuration; the message is one line that names the fix."""


class Settings(BaseSettings):
    """Base: unknown fields forbidden; values are read only by `load`."""

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True,
        enable_decoding=False,  # lists are "a b,c" and caps "none", not JSON: the field validators parse them
        cli_kebab_case=True,  # --min-total-reward for MIN_TOTAL_REWARD
        cli_implicit_flags=True,  # booleans are switches: --dedup / --no-dedup
        cli_hide_none_type=True,  # --help shows `float`, not `{float,null}`
    )
    toml_table: ClassVar[str | None] = None  # a stage with a table takes -c FILE.toml

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,)  # constructing a model reads no environment; load() reads the layers


def load(model: type[Model], overrides: dict | None = None, argv: list[str] | None = None) -> Model:
    """Read `model` from its layers (CLI > env > .env > TOML > defaults; `overrides` above all).
    `argv` (the arguments after the program name) only for modules that take flags. On a user
    error: one line on stderr, exit 2."""
    try:
        cli, toml_file = read_cli(model, argv) if argv is not None else ({}, None)
        layers = [  # lowest precedence first, each with the words that say where a bad value came from
            (f"from {toml_file}", read_toml(model, toml_file) if toml_file else {}),
            (f"from {DOTENV}", own_fields(model, read_dotenv(
                lambda: DotEnvSettingsSource(model, env_file=Path.cwd() / DOTENV)()))),
            ("", EnvSettingsSource(model)()),
            ("from the command line", cli),
            ("", overrides or {}),
        ]
        values, origins = {}, {}
        for origin, layer in layers:
            for name, value in without_blanks(layer).items():
                values[name], origins[name] = value, origin
        return parse(model, values, origins)
    except SettingsError as error:
        exit_usage(str(error))


def read_dotenv(read):
    """`read()` of the .env file, or one line when the file is not UTF-8 text."""
    try:
        return read()
    except UnicodeDecodeError as error:
        raise SettingsError(f"{DOTENV} is not UTF-8 text ({error.reason} at byte {error.start}): "
                            f"save it as UTF-8") from None


def own_fields(model: type[BaseSettings], layer: dict) -> dict:
    """A shared .env also holds other stages' variables: keep only this model's."""
    return {name: value for name, value in layer.items() if name in model.model_fields}


def without_blanks(layer) -> dict:
    """Strip string values and drop blank ones: blank means "not set in this layer"."""
    stripped = {name: value.strip() if isinstance(value, str) else value for name, value in layer.items()}
    return {name: value for name, value in stripped.items() if value != ""}


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + error and exits; a user error is one line here
        raise SettingsError(f"{message} (see --help)")


def read_cli(model: type[Settings], argv: list[str]) -> tuple[dict, Path | None]:
    """The flags in `argv` as field values, and the -c TOML file if one was given."""
    toml = " > TOML (-c)" if model.toml_table else ""
    parser = OneLineParser(prog=model.model_config.get("cli_prog_name"), description=model.__doc__,
                           epilog=f"Precedence: CLI flags > environment > .env{toml} > defaults.")
    if model.toml_table:
        parser.add_argument("-c", "--config", type=Path, help=f"TOML file with a [{model.toml_table}] table (keys "
                            f"= variable names in lower case, the {model.toml_table.upper()}_ prefix optional)")
    cli = CliSettingsSource(model, root_parser=parser)
    args = parser.parse_args(argv)
    return cli(parsed_args=args)(), getattr(args, "config", None)


def read_toml(model: type[Settings], path: Path) -> dict:
    """The model's table of a TOML file; a key may leave out the table's prefix (`mode` = `filter_mode`)."""
    table = model.toml_table
    try:
        values = tomllib.loads(path.read_text()).get(table, {})
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except OSError as error:  # a folder, no permission
        raise SettingsError(f"config file {path} cannot be read ({error.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SettingsError(f"config file {path} is not valid TOML: {error}") from None
    if not isinstance(values, dict):
        raise SettingsError(f"config file {path}: [{table}] must be a table")
    fields = {}
    for key, value in values.items():
        name = key if key in model.model_fields else f"{table}_{key}"
        if name not in model.model_fields:
            raise SettingsError(f"config file {path}: unknown key {key!r} in [{table}]")
        fields[name] = value
    return fields


def describe_error(model: type[BaseSettings], error: ValidationError, values: dict, origins: dict) -> str:
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    message = first["msg"].removeprefix("Value error, ")
    if field in model.model_fields:
        origin = f" ({origins[field]})" if origins.get(field) else ""
        return f"{field.upper()}={values.get(field, '')!r} is invalid: {message}{origin}"
    return message


def parse(model: type[Model], values: dict, origins: dict | None = None) -> Model:
    """Validate `values` (strings from env/CLI/TOML); raise SettingsError with one line.
    `origins` says where each value came from ("from .env"), for that line."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise SettingsError(describe_error(model, error, values, origins or {})) from None


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

PASSWORD_IN_URL = re.compile(r"://([^:/@\s]+):[^@\s]+@")


def redact(text: str) -> str:
    """Any URL's password as *** (postgresql://me:***@host/db): every line, report and stored config
    that shows a URL passes through here."""
    return PASSWORD_IN_URL.sub(r"://\1:***@", text)


def check_http_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return url


def environment() -> dict[str, str]:
    """The environment over the .env file, for the endpoint variables that no model holds."""
    from_file = {name: value or "" for name, value in  # NAME alone: None
                 read_dotenv(lambda: dotenv_values(Path.cwd() / DOTENV)).items()}
    return {**without_blanks(from_file), **without_blanks(os.environ)}


def inference_base_url(environ: dict[str, str] | None = None) -> str:
    """OPENAI_BASE_URL, else SYNTH_BASE_URL + /v1, else the local service."""
    environ = environment() if environ is None else environ
    if environ.get("OPENAI_BASE_URL", "").strip():
        return check_named_url("OPENAI_BASE_URL", environ["OPENAI_BASE_URL"])
    if environ.get("SYNTH_BASE_URL", "").strip():
        return check_named_url("SYNTH_BASE_URL", environ["SYNTH_BASE_URL"]) + "/v1"
    return LOCAL_SERVICE_URL + "/v1"


def learning_base_url(environ: dict[str, str] | None = None) -> str:
    """LEARNING_V2_BASE_URL, else SYNTH_BASE_URL, else the local service."""
    environ = environment() if environ is None else environ
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
    environ = environment() if environ is None else environ
    return (environ.get("OPENAI_API_KEY", "").strip() or environ.get("SYNTH_API_KEY", "").strip()
            or LOOPBACK_PLACEHOLDER_KEY)


def learning_api_key(environ: dict[str, str] | None = None) -> str:
    environ = environment() if environ is None else environ
    return (environ.get("SYNTH_API_KEY", "").strip() or environ.get("OPENAI_API_KEY", "").strip()
            or LOOPBACK_PLACEHOLDER_KEY)


def split_words(value: str | list | None) -> list:
    """'a b,c' -> ['a', 'b', 'c'] (space- or comma-separated lists in env vars and flags);
    a TOML list passes through, its strings split the same way."""
    if value is None:
        return []
    if isinstance(value, list):
        return [word for item in value for word in (split_words(item) if isinstance(item, str) else [item])]
    return [word for word in value.replace(",", " ").split() if word]


# ---------------------------------------------------------------------------------------
# Stage settings

Difficulty = Literal["peaceful", "easy", "normal", "hard"]
Protocol = Literal["default", "balrog"]  # default: this project's own settings; balrog: balrog.SETTINGS


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
    # A line 'Your last actions: a, b.' before each observation (after the first valid turn): what
    # the model did last, for a prompt without history, at a few tokens instead of a whole turn.
    crafter_last_actions: bool = False
    crafter_temperature: float = Field(0.7, ge=0.0, le=2.0)
    # Each sampled call sends seed = hash(this, episode seed, turn): a sampled run repeats exactly,
    # and two models on the same episode seeds draw the same random numbers. off: no seed sent.
    crafter_sampling_seed: Annotated[int, Field(ge=0, lt=2**31 - 1)] | Literal["off"] = 0
    # DART (noise-injected teacher data): builtin:expert executes a random action instead of each of
    # its own with this probability; relabel its episodes (FILTER_RELABEL) to train on its clean choices.
    crafter_expert_noise: float = Field(0.0, ge=0.0, le=1.0)
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
    # Fleets: an episode whose process has not heartbeaten for this long is taken over by another.
    crafter_lease_s: float = Field(60.0, ge=1, le=86_400)
    crafter_protocol: Protocol = "default"  # balrog: BALROG's Crafter rules (synth_qwen/balrog.py)

    @property
    def protocol(self) -> str:
        return self.crafter_protocol

    @model_validator(mode="before")
    @classmethod
    def _protocol_settings(cls, data):
        """Under a protocol, the settings it fixes default to its values (a value the user set is
        checked against them below)."""
        if isinstance(data, dict) and protocol_named(data)[1] == "balrog":
            data = {**{name: value for name, (value, _) in balrog.SETTINGS.items()}, **data}
            if "eval_episodes" in cls.model_fields:
                data.setdefault("eval_episodes", balrog.MIN_EPISODES)
        return data

    @model_validator(mode="after")
    def _protocol_followed(self):
        variable, protocol = protocol_named(self.model_dump(include={"crafter_protocol", "eval_protocol"}))
        if protocol != "balrog":
            return self
        for name, (value, why) in balrog.SETTINGS.items():
            if getattr(self, name) != value:
                raise ValueError(f"{name.upper()}={getattr(self, name)!r} contradicts {variable}=balrog, which plays "
                                 f"{name.upper()}={value} ({why}): unset it, or leave out {variable}")
        episodes = getattr(self, "eval_episodes", balrog.MIN_EPISODES)
        if episodes < balrog.MIN_EPISODES:
            raise ValueError(f"EVAL_EPISODES={episodes} contradicts {variable}=balrog, which plays at least "
                             f"{balrog.MIN_EPISODES} episodes (eval.num_episodes.crafter): unset it or raise it")
        return self

    @field_validator("crafter_model")
    @classmethod
    def _model(cls, value: str) -> str:
        if value.startswith("builtin:") and value not in BUILTIN_POLICIES:
            raise ValueError(f"builtin policies are {', '.join(BUILTIN_POLICIES)}")
        return value

    @model_validator(mode="after")
    def _last_seed(self):
        check_last_seed("CRAFTER_SEED", self.crafter_seed, "CRAFTER_EPISODES", self.crafter_episodes)
        return self


def protocol_named(values: dict) -> tuple[str, str]:
    """(the variable that sets the protocol, the protocol): EVAL_PROTOCOL takes the place of
    CRAFTER_PROTOCOL in eval."""
    if values.get("eval_protocol"):
        return "EVAL_PROTOCOL", values["eval_protocol"]
    return "CRAFTER_PROTOCOL", values.get("crafter_protocol") or "default"


def check_last_seed(seed_name: str, first: int, count_name: str, count: int) -> None:
    """Episode i plays seed first + i: the last one must fit the trace DB's seed column."""
    if first + count - 1 > LARGEST_SEED:
        raise ValueError(f"{seed_name}={first} with {count_name}={count} plays seeds up to {first + count - 1}, "
                         f"beyond {LARGEST_SEED} (the trace DB stores seeds as 32-bit integers): "
                         f"lower {seed_name} or {count_name}")


BUILTIN_POLICIES = ("builtin:expert", "builtin:random")
RELABEL_TEACHERS = ("builtin:expert",)  # who may relabel a student's turns (relabel.py)


class KickoffSettings(Settings):
    """sft_kickoff: upload the JSONL, start a fine-tuning job, follow it to its model id."""

    qwen_base_model: str = DEFAULT_MODEL
    qwen_training_jsonl: Path = DEFAULT_SFT_JSONL
    sft_method: Literal["supervised", "dpo"] = "supervised"  # dpo: the JSONL holds preference pairs
    sft_dpo_beta: float | Literal["auto"] = "auto"  # dpo only
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

    @field_validator("sft_n_epochs", "sft_batch_size", "sft_learning_rate_multiplier", "sft_dpo_beta")
    @classmethod
    def _hyperparameter(cls, value, info):
        from synth_qwen.fine_tuning_api import hyperparameter_problem  # the service's own rule, checked up front
        problem = hyperparameter_problem(info.field_name.removeprefix("sft_").removeprefix("dpo_"), value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("sft_seed")
    @classmethod
    def _seed(cls, value):
        from synth_qwen.fine_tuning_api import seed_problem
        if value is not None and seed_problem(value):
            raise ValueError(seed_problem(value))
        return value

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
    eval_protocol: Protocol | None = None  # balrog: BALROG's Crafter protocol; unset: CRAFTER_PROTOCOL

    @property
    def protocol(self) -> str:
        return protocol_named({"eval_protocol": self.eval_protocol, "crafter_protocol": self.crafter_protocol})[1]

    @field_validator("eval_models", "eval_run_ids", mode="before")
    @classmethod
    def _words(cls, value) -> list[str]:
        return split_words(value)

    @field_validator("eval_models")
    @classmethod
    def _models(cls, models: list[str]) -> list[str]:
        return [RolloutSettings._model(model) for model in models]

    @model_validator(mode="after")
    def _last_eval_seed(self):
        check_last_seed("EVAL_SEED", self.eval_seed, "EVAL_EPISODES", self.eval_episodes)
        return self

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
    # DART: round 0's teacher plays with this CRAFTER_EXPERT_NOISE and its turns are relabelled
    rounds_teacher_noise: float = Field(0.0, ge=0.0, le=1.0)
    rounds_student_episodes: int = Field(20, ge=1, le=100_000)  # training episodes the student plays per later round
    rounds_student_temperature: float = Field(1.0, ge=0.0, le=2.0)  # sampling while the student plays
    rounds_data: Literal["relabel", "rejection", "both", "dpo"] = "relabel"  # later rounds' data (DAgger / own best / pairs)
    rounds_init: Literal["base", "previous"] = "base"  # base: base model on all data so far; previous: last model on new data
    rounds_min_reward: float = 1.0  # rejection sampling: the student's own episodes with at least this reward
    rounds_eval_temperatures: list[float] = [0.7, 0.0]  # every round is evaluated at each; the first is the headline
    rounds_run_prefix: str = Field("rounds", pattern=r"^[A-Za-z0-9_.:@-]{1,100}$")  # run ids: <prefix>-r<k>-…
    qwen_base_model: str = DEFAULT_MODEL
    crafter_seed: int = Field(1, ge=0, lt=2**31 - 1)  # training seeds: the teacher's, then each round's block
    crafter_db_url: DbUrl = DEFAULT_DB_URL
    eval_seed: int = Field(100_000, ge=0, lt=2**31 - 1)
    eval_episodes: int = Field(20, ge=1, le=100_000)

    @model_validator(mode="after")
    def _last_seeds(self):
        training = self.rounds_teacher_episodes + (self.rounds - 1) * self.rounds_student_episodes
        check_last_seed("CRAFTER_SEED", self.crafter_seed, "the rounds' training episodes", training)
        check_last_seed("EVAL_SEED", self.eval_seed, "EVAL_EPISODES", self.eval_episodes)
        return self

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
    serve_models_dir: Path | None = None  # local model folders, served by their path below it; unset: none
    serve_api_key: str | None = None  # when set, requests need `Authorization: Bearer <key>`
    serve_allow_no_auth: bool = False  # a SERVE_HOST other machines reach may run without a key (warned)
    serve_max_upload_mb: float = Field(512.0, gt=0, le=1 << 20)  # at most 1 TiB (inf cannot size a buffer)
    serve_device: Literal["auto", "cpu", "cuda"] = "auto"
    serve_allow_download: bool = False  # may base models be fetched from the Hugging Face Hub?
    serve_tiny_size: Literal["micro", "small", "medium"] = "small"  # rows of tiny_model.SIZES
    serve_max_seq_len: int = Field(2048, ge=64)  # longer training examples are truncated
    serve_min_examples: int = Field(MIN_EXAMPLES, ge=1)  # a training file needs this many (OpenAI's rule: 10)
    serve_max_batch: int = Field(32, ge=1)  # concurrent chat requests decoded together
    serve_prefix_cache_mb: int = Field(1024, ge=0)  # recent prompts' key/values, reused; 0: the last one only
    serve_lora_rank: int = Field(16, ge=1)
    serve_train_precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast where the device has bf16
    serve_train_compile: Literal["auto", "on", "off"] = "auto"  # auto: torch.compile on top of bf16 only
    serve_max_loaded_models: int = Field(2, ge=1)  # models kept in the inference worker


class FilterSettings(Settings):
    """filter_traces: traces -> SFT JSONL. Lists are space- or comma-separated; caps take "none" (off).
    The original's names are kept (MIN_TOTAL_REWARD, MODELS, …); the newer knobs are FILTER_*."""

    model_config = SettingsConfigDict(
        cli_prog_name="python -m synth_qwen.filter_traces",
        cli_shortcuts={"crafter-db-url": ["d", "db"], "output-jsonl": ["o", "output"], "filter-run-ids": "run-ids",
                       "filter-difficulties": "difficulties", "filter-statuses": "statuses",
                       "filter-include-eval": "include-eval", "filter-mode": "mode",
                       "filter-max-example-tokens": "max-example-tokens", "filter-dedup": "dedup",
                       "filter-ready-repeats": "ready-repeats",
                       "filter-reasoning": "reasoning", "filter-validation-fraction": "validation-fraction",
                       "filter-validation-jsonl": "validation-output", "filter-dry-run": "dry-run",
                       "filter-json": "json", "filter-relabel": "relabel", "filter-format": "format"})
    toml_table = "filter"

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
    # each example whose reply takes an achievement the observation lists as ready, written this many times
    filter_ready_repeats: int = Field(1, ge=1)
    filter_reasoning: Literal["keep", "subgoal", "drop"] = "keep"  # the trained reply's reasoning text
    filter_validation_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # of seeds, not of examples
    filter_validation_jsonl: Path | None = None  # default: OUTPUT_JSONL with a _val suffix
    filter_dry_run: bool = Field(False, description="report the funnel, write nothing")
    filter_json: bool = Field(False, description="the funnel as JSON on stdout (the text goes to stderr)")
    filter_relabel: str | None = None  # a teacher re-answers every turn of the kept episodes (DAgger)
    filter_format: Literal["sft", "dpo"] = "sft"  # dpo: preference pairs, the teacher's reply over the student's

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
        if self.filter_format == "dpo" and not self.filter_relabel:
            raise ValueError(f"FILTER_FORMAT=dpo pairs the teacher's reply with the student's: set FILTER_RELABEL "
                             f"(e.g. {RELABEL_TEACHERS[0]})")
        return self

    @property
    def validation_jsonl(self) -> Path:
        path = self.output_jsonl
        return self.filter_validation_jsonl or path.with_name(f"{path.stem}_val{path.suffix}")


class ReplaySettings(Settings):
    """replay: re-play one traced episode, check that it reproduces, and write a GIF (or MP4)."""

    model_config = SettingsConfigDict(
        cli_prog_name="python -m synth_qwen.replay",
        cli_shortcuts={"crafter-db-url": "db", "replay-out": "out", "replay-size": "size", "replay-fps": "fps"})

    session_id: CliPositionalArg[str]  # given on the command line only
    crafter_db_url: DbUrl = Field(DEFAULT_DB_URL, description="trace DB URL")
    replay_out: Path | None = Field(None, description="output file, .gif or .mp4; unset: replays/SESSION_ID.gif")
    replay_size: int = Field(320, ge=32, le=4096, description="frame width in pixels")
    replay_fps: int = Field(8, ge=1, le=100, description="frames per second")

    @field_validator("replay_out")
    @classmethod
    def _video_file(cls, path: Path | None) -> Path | None:
        if path is not None and path.suffix.lower() not in (".gif", ".mp4"):
            raise ValueError("name a .gif or .mp4 file")
        return path


class WorldStatsSettings(Settings):
    """world_stats: what the difficulty presets do — a demo of random play, or (--stats) per-preset means."""

    model_config = SettingsConfigDict(
        cli_prog_name="python -m synth_qwen.world_stats",
        cli_shortcuts={"world-stats-table": "stats", "world-stats-worlds": "worlds",
                       "world-stats-episodes": "episodes", "world-stats-seed": "seed"})

    world_stats_table: bool = Field(False, description="print per-preset world statistics instead of the demo")
    world_stats_worlds: int = Field(20, ge=1, le=10_000, description="worlds per preset for --stats")
    world_stats_episodes: int = Field(3, ge=1, le=1_000, description="random episodes per preset for the demo")
    world_stats_seed: int = Field(1, ge=0, lt=2**31 - 1, description="the demo's first seed")


class ViewSettings(Settings):
    """view: the trace browser, a local web page over the trace DB (read-only)."""

    crafter_db_url: DbUrl = DEFAULT_DB_URL
    view_host: str = "127.0.0.1"  # bind address; 0.0.0.0 shows your traces to the network
    view_port: int = Field(8100, ge=0, le=65535)  # 0 = any free port (printed at start)
    view_sft_jsonl: Path | None = None  # a filter_traces JSONL: mark the turns that became training examples
    view_api_key: str | None = None  # when set, pages need it (?key= once, basic auth or a Bearer header)
    view_allow_no_auth: bool = False  # a VIEW_HOST other machines reach may run without a key (warned)
