"""Settings: one way to read them (CLI > env > .env > TOML > defaults), env.example documents every
variable, and DESIGN §3's resolution rules. The layers are checked through the real modules."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from synth_qwen import balrog, settings
from synth_qwen.settings import SettingsError

REPO = Path(__file__).resolve().parents[1]
ENV_EXAMPLE = REPO / "env.example"
MODULES_DOC = REPO / "docs" / "modules.md"  # every module's variables and flags
STAGES = [model for model in vars(settings).values()  # every stage's model, none forgotten
          if isinstance(model, type) and issubclass(model, settings.Settings) and model is not settings.Settings]
CLI_ONLY = {"SESSION_ID"}  # replay's positional argument
ENDPOINT_VARIABLES = {"OPENAI_BASE_URL", "OPENAI_API_KEY", "SYNTH_BASE_URL", "SYNTH_API_KEY", "LEARNING_V2_BASE_URL"}
VARIABLES = {name.upper() for stage in STAGES for name in stage.model_fields} | ENDPOINT_VARIABLES


def test_env_example_lists_every_variable():
    documented = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    declared = {name.upper() for stage in STAGES for name in stage.model_fields} - CLI_ONLY
    assert declared - documented == set()
    assert documented - declared <= ENDPOINT_VARIABLES


@pytest.fixture
def clean(tmp_path, monkeypatch):
    """An empty working directory and an environment without any of our variables."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_env_example_as_dotenv_gives_the_defaults(clean):
    """env.example copied to .env (as the README says) loads in every stage and changes nothing."""
    shutil.copy(ENV_EXAMPLE, clean / ".env")
    for stage in STAGES:
        argv = ["sess_1"] if stage is settings.ReplaySettings else None
        required = {"session_id": "sess_1"} if argv else {}
        assert settings.load(stage, argv=argv) == stage(**required), stage.__name__


def test_constructing_a_model_reads_no_environment(clean, monkeypatch):
    (clean / ".env").write_text("CRAFTER_SEED=9\n")
    monkeypatch.setenv("CRAFTER_EPISODES", "7")
    explicit = settings.RolloutSettings(crafter_difficulty="hard")
    assert (explicit.crafter_episodes, explicit.crafter_seed, explicit.crafter_difficulty) == (10, 1, "hard")
    assert settings.load(settings.RolloutSettings).crafter_episodes == 7  # load() is what reads it


def test_dotenv_is_read_and_real_environment_wins(clean, monkeypatch):
    (clean / ".env").write_text("CRAFTER_EPISODES=7\nCRAFTER_DIFFICULTY=hard\nSERVE_PORT=1\n")
    monkeypatch.setenv("CRAFTER_DIFFICULTY", "peaceful")
    loaded = settings.load(settings.RolloutSettings)  # SERVE_PORT belongs to another stage: not an error
    assert loaded.crafter_episodes == 7 and loaded.crafter_difficulty == "peaceful"


def test_lists_are_words_in_every_layer(clean):
    (clean / "f.toml").write_text('[filter]\nstatuses = ["died", "max_steps completed"]\n')
    loaded = settings.load(settings.FilterSettings, argv=["-c", "f.toml", "--models", "a b,c", "--models", "d"])
    assert loaded.models == ["a", "b", "c", "d"] and loaded.filter_statuses == ["died", "max_steps", "completed"]


def test_endpoint_helpers_read_dotenv_under_the_environment(clean, monkeypatch):
    (clean / ".env").write_text("SYNTH_BASE_URL=https://from-dotenv/api\nSYNTH_API_KEY=sk-dotenv\n")
    assert settings.inference_base_url() == "https://from-dotenv/api/v1"
    assert settings.learning_api_key() == "sk-dotenv"
    monkeypatch.setenv("SYNTH_BASE_URL", "http://from-env/api")
    monkeypatch.setenv("SYNTH_API_KEY", " ")  # blank: not set here, .env applies
    assert settings.learning_base_url() == "http://from-env/api" and settings.learning_api_key() == "sk-dotenv"


def test_endpoint_resolution_order():
    assert settings.inference_base_url({}) == "http://localhost:8000/api/v1"
    assert settings.inference_base_url({"SYNTH_BASE_URL": "https://h/api"}) == "https://h/api/v1"
    assert settings.inference_base_url({"OPENAI_BASE_URL": "http://v:8000/v1/", "SYNTH_BASE_URL": "https://h"}) == "http://v:8000/v1"
    assert settings.learning_base_url({"SYNTH_BASE_URL": "https://h/api"}) == "https://h/api"
    assert settings.learning_base_url({"LEARNING_V2_BASE_URL": "http://l/api", "SYNTH_BASE_URL": "https://h"}) == "http://l/api"
    assert settings.inference_api_key({"SYNTH_API_KEY": "s", "OPENAI_API_KEY": "o"}) == "o"
    assert settings.learning_api_key({"SYNTH_API_KEY": "s", "OPENAI_API_KEY": "o"}) == "s"
    with pytest.raises(SettingsError, match="OPENAI_BASE_URL='localhost:1' is invalid"):
        settings.inference_base_url({"OPENAI_BASE_URL": "localhost:1"})


@pytest.mark.parametrize("url,expected", [
    ("sqlite:///traces/x.db", "sqlite:///traces/x.db"),
    ("sqlite+aiosqlite:///traces/x.db", "sqlite:///traces/x.db"),
    ("traces/x.db", "sqlite:///traces/x.db"),
    ("postgresql://u:p@h/db", "postgresql://u:p@h/db"),
])
def test_db_urls(url, expected):
    assert settings.normalize_db_url(url) == expected


# ---------------------------------------------------------------------------------------
# The real modules, as a user runs them

def run(module: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """python -m synth_qwen.<module> with only the given variables of ours set."""
    environ = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    environ.update(env, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", f"synth_qwen.{module}", *args], env=environ, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def db_in_use(done: subprocess.CompletedProcess) -> str:
    """Which trace DB the module tried to open: the layer that won CRAFTER_DB_URL (none of them exist)."""
    found = re.search(r"trace database (\S+) does not exist", done.stderr)
    assert found, done.stderr
    return found.group(1)


# Each layer names a different DB; dropping the winner shows the next one down.
LAYERS = ["cli", "env", "dotenv", "toml"]


@pytest.mark.parametrize("top", range(len(LAYERS) + 1), ids=LAYERS + ["default"])
def test_filter_traces_precedence_cli_env_dotenv_toml_default(tmp_path, top):
    present = LAYERS[top:]
    (tmp_path / "f.toml").write_text('[filter]\ncrafter_db_url = "toml.db"\n')
    (tmp_path / ".env").write_text("CRAFTER_DB_URL=dotenv.db\n" if "dotenv" in present else "CRAFTER_DB_URL=\n")
    args = (["-d", "cli.db"] if "cli" in present else []) + (["-c", "f.toml"] if "toml" in present else [])
    env = {"CRAFTER_DB_URL": "env.db" if "env" in present else ""}  # blank: not set here
    done = run("filter_traces", tmp_path, *args, **env)
    assert done.returncode == 1  # the settings were fine; the DB is missing
    assert db_in_use(done) == (f"{present[0]}.db" if present else "traces/v3/lm_synth/traces.db")


@pytest.mark.parametrize("top", range(4), ids=["cli", "env", "dotenv", "default"])
def test_replay_precedence_cli_env_dotenv_default(tmp_path, top):
    present = ["cli", "env", "dotenv"][top:]
    if "dotenv" in present:
        (tmp_path / ".env").write_text("CRAFTER_DB_URL=dotenv.db\n")
    args = ["--db", "cli.db"] if "cli" in present else []
    env = {"CRAFTER_DB_URL": "env.db"} if "env" in present else {}
    done = run("replay", tmp_path, "sess_1", *args, **env)
    assert done.returncode == 2
    assert db_in_use(done) == (f"{present[0]}.db" if present else "traces/v3/lm_synth/traces.db")


def test_documented_flags_are_accepted(tmp_path):
    """Every flag in the docs' filter_traces table and replay usage line is in the module's --help."""
    text = MODULES_DOC.read_text()
    table = text[text.index("| variable | flag | default | meaning |"):text.index("It prints the funnel")]
    filter_flags = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", " ".join(re.findall(r"^\| [^|]+ \| ([^|]+) \|",
                                                                                     table, re.MULTILINE))))
    replay_line = re.search(r"python -m synth_qwen\.replay SESSION_ID (.*)`", text).group(1)
    replay_flags = set(re.findall(r"--[a-z]+", replay_line))
    assert {"-d", "--db", "-o", "--no-dedup", "--json"} <= filter_flags and len(replay_flags) == 4
    for module, flags in (("filter_traces", filter_flags | {"-c", "--config"}), ("replay", replay_flags)):
        done = run(module, tmp_path, "--help")
        assert done.returncode == 0
        shown = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", done.stdout))
        assert flags - shown == set(), module


BAD_VALUES = [  # (module, arguments, environment, .env, the line's start)
    ("run_crafter", [], {"CRAFTER_EPISODES": "abc"}, "", "CRAFTER_EPISODES='abc' is invalid: Input should be a valid integer"),
    ("eval", [], {"CRAFTER_DIFFICULTY": "insane"}, "", "CRAFTER_DIFFICULTY='insane' is invalid: Input should be 'peaceful'"),
    ("sft_kickoff", [], {}, "SFT_BATCH_SIZE=many\n", "SFT_BATCH_SIZE='many' is invalid"),
    ("rounds", [], {"ROUNDS_DATA": "all"}, "", "ROUNDS_DATA='all' is invalid: Input should be 'relabel', 'rejection', 'both' or 'dpo'"),
    ("serve", [], {"SERVE_PORT": "70000"}, "", "SERVE_PORT='70000' is invalid: Input should be less than or equal to 65535"),
    ("filter_traces", [], {}, "MIN_ACHIEVEMENTS=x\n", "MIN_ACHIEVEMENTS='x' is invalid: Input should be a valid integer"),
    ("filter_traces", ["-c", "bad.toml"], {}, "", "FILTER_MODE='sessions' is invalid: Input should be 'turn' or 'episode'"),
    ("filter_traces", ["--max-cost", "lots"], {}, "", "MAX_COST='lots' is invalid"),
    ("filter_traces", ["--dedup", "yes"], {}, "", "unrecognized arguments: yes (see --help)"),
    ("replay", ["sess_1", "--fps", "0"], {}, "", "REPLAY_FPS='0' is invalid: Input should be greater than or equal to 1"),
    ("replay", ["sess_1", "--size", "big"], {}, "", "REPLAY_SIZE='big' is invalid: Input should be a valid integer"),
    ("replay", ["sess_1"], {"CRAFTER_DB_URL": "mysql://h/db"}, "", "CRAFTER_DB_URL='mysql://h/db' is invalid"),
    ("replay", [], {}, "", "the following arguments are required: SESSION-ID (see --help)"),
    ("replay", ["sess_1", "--bogus"], {}, "", "unrecognized arguments: --bogus (see --help)"),
]


@pytest.mark.parametrize("module,args,env,dotenv,expected", BAD_VALUES,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(BAD_VALUES)])
def test_a_bad_value_in_any_layer_is_one_line_and_exit_2(tmp_path, module, args, env, dotenv, expected):
    (tmp_path / ".env").write_text(dotenv)
    (tmp_path / "bad.toml").write_text('[filter]\nmode = "sessions"\n')
    done = run(module, tmp_path, *args, **env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: {expected}") and done.stderr.count("\n") == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env", "bad.toml"]  # stopped before any work


def test_the_line_says_which_layer_a_bad_value_came_from(tmp_path):
    (tmp_path / ".env").write_text("FILTER_MODE=sessions\n")
    assert run("filter_traces", tmp_path).stderr.endswith("(from .env)\n")
    (tmp_path / "f.toml").write_text('[filter]\nmode = "sessions"\n')
    assert run("filter_traces", tmp_path, "-c", "f.toml", FILTER_MODE="").stderr.endswith("(from .env)\n")
    (tmp_path / ".env").unlink()
    assert run("filter_traces", tmp_path, "-c", "f.toml").stderr.endswith("(from f.toml)\n")
    assert run("filter_traces", tmp_path, "--mode", "x").stderr.endswith("(from the command line)\n")
    from_env = run("filter_traces", tmp_path, FILTER_MODE="x").stderr
    assert from_env.endswith("Input should be 'turn' or 'episode'\n")  # the environment is the usual place


# BALROG's Crafter protocol: its settings are the defaults, and any other value the user sets stops the stage

CONTRADICTIONS = {"crafter_difficulty": "easy", "crafter_actions_per_turn": "5", "crafter_max_steps": "30",
                  "crafter_history": "2", "crafter_temperature": "0.7"}


def test_the_balrog_protocol_sets_its_settings_and_the_default_protocol_is_unchanged():
    assert set(CONTRADICTIONS) == set(balrog.SETTINGS)  # every setting the protocol fixes is tried below
    plain = settings.parse(settings.EvalSettings, {})
    assert (plain.protocol, plain.crafter_difficulty, plain.crafter_actions_per_turn, plain.eval_episodes) == \
        ("default", "easy", 5, 20)
    for stage, variable in ((settings.RolloutSettings, "crafter_protocol"), (settings.EvalSettings, "eval_protocol"),
                            (settings.EvalSettings, "crafter_protocol")):
        played = settings.parse(stage, {variable: "balrog"})
        assert played.protocol == "balrog"
        assert {name: getattr(played, name) for name in balrog.SETTINGS} == \
            {"crafter_difficulty": "normal", "crafter_actions_per_turn": 1, "crafter_max_steps": 2000,
             "crafter_history": 15, "crafter_temperature": 1.0}
    assert settings.parse(settings.EvalSettings, {"eval_protocol": "balrog"}).eval_episodes == 10
    # the protocol's own values, set explicitly, and more episodes are fine
    agreeing = {"eval_protocol": "balrog", "crafter_difficulty": "normal", "crafter_temperature": "1",
                "eval_episodes": "30"}
    assert settings.parse(settings.EvalSettings, agreeing).eval_episodes == 30


@pytest.mark.parametrize("name,value", sorted(CONTRADICTIONS.items()))
def test_a_setting_that_contradicts_the_balrog_protocol_is_named(name, value):
    for stage, variable in ((settings.RolloutSettings, "crafter_protocol"), (settings.EvalSettings, "eval_protocol")):
        with pytest.raises(SettingsError) as error:
            settings.parse(stage, {variable: "balrog", name: value})
        message = str(error.value)
        assert message.startswith(f"{name.upper()}=") and f"contradicts {variable.upper()}=balrog" in message
        assert "\n" not in message
        settings.parse(stage, {name: value})  # fine without the protocol


def test_balrog_plays_at_least_its_ten_episodes():
    with pytest.raises(SettingsError, match="EVAL_EPISODES=9 contradicts EVAL_PROTOCOL=balrog"):
        settings.parse(settings.EvalSettings, {"eval_protocol": "balrog", "eval_episodes": "9"})
