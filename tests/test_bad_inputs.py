"""Every stage meets a bad input with one line and an exit status, never a traceback, before any work.

Each case runs the real module (`python -m synth_qwen.X`) in an empty folder with the bad value,
and checks: the exit status (2: the value is wrong; 1: its PostgreSQL server does not answer),
exactly one stderr line that names the variable, no traceback, no password, and the folder exactly
as it was (nothing created, nothing half-written). The checks live in synth_qwen/preflight.py.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from synth_qwen import tracing

REPO = Path(__file__).resolve().parents[1]
UNWRITABLE = "/sys/synth_qwen_test/out"  # /sys refuses new names, even to root
CANARY = "CanaryPw77"
NO_POSTGRES = f"postgresql://someone:{CANARY}@127.0.0.1:9/traces"  # nothing listens on port 9
PLAY = {"CRAFTER_MODEL": "builtin:random", "CRAFTER_EPISODES": "1", "CRAFTER_MAX_STEPS": "1"}
EVAL = {**PLAY, "EVAL_EPISODES": "1", "EVAL_REPLAYS": "0"}
KICKOFF = {"QWEN_TRAINING_JSONL": "train.jsonl", "LEARNING_V2_BASE_URL": "http://127.0.0.1:9/api"}


# What a case finds in its folder before it runs: name -> how to make it
def trace_db(folder: Path) -> Path:
    engine = tracing.open_db(f"sqlite:///{folder / 'traces.db'}")
    engine.dispose()
    return folder / "traces.db"


def truncated_db(folder: Path) -> None:
    data = trace_db(folder).read_bytes()
    (folder / "traces.db").write_bytes(data[:len(data) // 2])


FIXTURES = {
    "dir": lambda folder: (folder / "adir").mkdir(),
    "text": lambda folder: (folder / "notes.db").write_text("not a database\n" * 20),
    "truncated": truncated_db,
    "db": trace_db,
    "latin1 .env": lambda folder: (folder / ".env").write_bytes(b"CRAFTER_EPISODES=1\n# caf\xe9\n"),
    "latin1 state": lambda folder: (folder / "state.json").write_bytes(b'{"job_id": "caf\xe9"}'),
    "train": lambda folder: (folder / "train.jsonl").write_text("{}\n"),
}

CASES = [  # (module, arguments, environment, fixtures, exit status, words the line holds)
    # run_crafter
    ("run_crafter", [], {**PLAY, "CRAFTER_DB_URL": "adir"}, ["dir"], 2, "CRAFTER_DB_URL='sqlite:///adir' is invalid: adir is a folder"),
    ("run_crafter", [], {**PLAY, "CRAFTER_DB_URL": "notes.db"}, ["text"], 2, "notes.db is not a SQLite database"),
    ("run_crafter", [], {**PLAY, "CRAFTER_DB_URL": "traces.db"}, ["truncated"], 2, "CRAFTER_DB_URL='sqlite:///traces.db' is invalid: traces.db is truncated"),
    ("run_crafter", [], {**PLAY, "CRAFTER_DB_URL": UNWRITABLE + ".db"}, [], 2, "CRAFTER_DB_URL='sqlite:////sys/synth_qwen_test/out.db' is invalid: cannot write in /sys"),
    ("run_crafter", [], {**PLAY, "CRAFTER_DB_URL": "notes.db/t.db"}, ["text"], 2, "notes.db is a file, not a folder"),
    ("run_crafter", [], {**PLAY, "CRAFTER_DB_URL": NO_POSTGRES}, [], 1, "cannot connect to the trace DB CRAFTER_DB_URL=postgresql://someone:***@127.0.0.1:9/traces"),
    ("run_crafter", [], {**PLAY, "CRAFTER_SEED": "2147483640", "CRAFTER_EPISODES": "20"}, [], 2, "CRAFTER_SEED=2147483640 with CRAFTER_EPISODES=20 plays seeds up to 2147483659, beyond 2147483647"),
    ("run_crafter", [], {**PLAY, "CRAFTER_SUMMARY_JSON": UNWRITABLE}, [], 2, "CRAFTER_SUMMARY_JSON='/sys/synth_qwen_test/out' is invalid: cannot write in /sys"),
    ("run_crafter", [], {**PLAY, "CRAFTER_SUMMARY_JSON": "adir"}, ["dir"], 2, "CRAFTER_SUMMARY_JSON='adir' is invalid: it is a folder"),
    ("run_crafter", [], PLAY, ["latin1 .env"], 2, ".env is not UTF-8 text"),
    # eval
    ("eval", [], {**EVAL, "EVAL_REPORT_DIR": UNWRITABLE}, [], 2, "EVAL_REPORT_DIR='/sys/synth_qwen_test/out' is invalid: cannot write in /sys"),
    ("eval", [], {**EVAL, "EVAL_REPORT_DIR": "notes.db"}, ["text"], 2, "EVAL_REPORT_DIR='notes.db' is invalid: it is a file"),
    ("eval", [], {**EVAL, "CRAFTER_DB_URL": "notes.db"}, ["text"], 2, "CRAFTER_DB_URL='sqlite:///notes.db' is invalid"),
    ("eval", [], {"EVAL_RUN_IDS": "r1", "CRAFTER_DB_URL": "traces.db"}, ["truncated"], 2, "traces.db is truncated"),
    ("eval", [], {**EVAL, "CRAFTER_DB_URL": NO_POSTGRES}, [], 1, "cannot connect to the trace DB CRAFTER_DB_URL=postgresql://someone:***@"),
    ("eval", [], {**EVAL, "EVAL_SEED": "2147483000", "EVAL_EPISODES": "1000"}, [], 2, "EVAL_SEED=2147483000 with EVAL_EPISODES=1000"),
    # filter_traces
    ("filter_traces", ["-d", "adir"], {}, ["dir"], 2, "CRAFTER_DB_URL='sqlite:///adir' is invalid: adir is a folder"),
    ("filter_traces", ["-d", "traces.db"], {}, ["truncated"], 2, "traces.db is truncated"),
    ("filter_traces", ["-d", NO_POSTGRES], {}, [], 1, "cannot connect to the trace DB CRAFTER_DB_URL=postgresql://someone:***@"),
    ("filter_traces", ["-d", "traces.db", "-o", UNWRITABLE], {}, ["db"], 2, "OUTPUT_JSONL='/sys/synth_qwen_test/out' is invalid: cannot write in /sys"),
    ("filter_traces", ["-d", "traces.db", "-o", "adir"], {}, ["db", "dir"], 2, "OUTPUT_JSONL='adir' is invalid: it is a folder"),
    ("filter_traces", ["-d", "traces.db", "--validation-fraction", "0.5", "--validation-output", UNWRITABLE], {}, ["db"], 2, "FILTER_VALIDATION_JSONL="),
    ("filter_traces", ["-c", "adir"], {}, ["dir"], 2, "config file adir cannot be read"),
    ("filter_traces", [], {}, ["latin1 .env"], 2, ".env is not UTF-8 text"),
    # sft_kickoff: every check comes before the upload, whose file id the state file keeps
    ("sft_kickoff", [], {**KICKOFF, "SFT_STATE_FILE": UNWRITABLE}, ["train"], 2, "SFT_STATE_FILE='/sys/synth_qwen_test/out' is invalid: cannot write in /sys"),
    ("sft_kickoff", [], {**KICKOFF, "SFT_STATE_FILE": "adir"}, ["train", "dir"], 2, "SFT_STATE_FILE='adir' is invalid: it is a folder"),
    ("sft_kickoff", [], {**KICKOFF, "SFT_STATE_FILE": "state.json"}, ["train", "latin1 state"], 2, "SFT_STATE_FILE='state.json' is invalid: not UTF-8 text"),
    ("sft_kickoff", [], {**KICKOFF, "SFT_N_EPOCHS": "-1"}, ["train"], 2, "SFT_N_EPOCHS='-1' is invalid"),
    ("sft_kickoff", [], KICKOFF, ["train", "latin1 .env"], 2, ".env is not UTF-8 text"),
    # replay: a bad value never leaves a half-written GIF
    ("replay", ["sess_1", "--fps", "-3"], {}, [], 2, "REPLAY_FPS='-3' is invalid"),
    ("replay", ["sess_1", "--size", "0"], {}, [], 2, "REPLAY_SIZE='0' is invalid"),
    ("replay", ["sess_1", "--size", "100000"], {}, [], 2, "REPLAY_SIZE='100000' is invalid"),
    ("replay", ["sess_1", "--out", "x.png"], {}, [], 2, "REPLAY_OUT='x.png' is invalid: name a .gif or .mp4 file"),
    ("replay", ["sess_1", "--out", UNWRITABLE + ".gif"], {"CRAFTER_DB_URL": "traces.db"}, ["db"], 2, "REPLAY_OUT='/sys/synth_qwen_test/out.gif' is invalid"),
    ("replay", ["sess_1", "--db", "notes.db"], {}, ["text"], 2, "notes.db is not a SQLite database"),
    ("replay", ["sess_1", "--db", NO_POSTGRES], {}, [], 1, "cannot connect to the trace DB"),
    # serve: checked before the data dir is made
    ("serve", [], {"SERVE_PORT": "BUSY"}, [], 2, "cannot listen on 127.0.0.1:"),
    ("serve", [], {"SERVE_MAX_UPLOAD_MB": "inf"}, [], 2, "SERVE_MAX_UPLOAD_MB='inf' is invalid"),
    ("serve", [], {"SERVE_DATA_DIR": "notes.db"}, ["text"], 2, "SERVE_DATA_DIR='notes.db' is invalid: it is a file"),
    ("serve", [], {"SERVE_DATA_DIR": UNWRITABLE}, [], 2, "SERVE_DATA_DIR='/sys/synth_qwen_test/out' is invalid: cannot write in /sys"),
    ("serve", [], {"SERVE_HOST": "no-such-host.invalid", "SERVE_PORT": "0"}, [], 2, "SERVE_HOST='no-such-host.invalid' is invalid: the name does not resolve"),
    ("serve", [], {"SERVE_MODELS_DIR": "models"}, [], 2, "SERVE_MODELS_DIR='models' is invalid: no such folder"),
    ("serve", [], {"SERVE_HOST": "0.0.0.0", "SERVE_PORT": "0"}, [], 2, "SERVE_HOST='0.0.0.0' is reachable from other machines and SERVE_API_KEY is not set"),
    # view
    ("view", [], {"VIEW_HOST": "0.0.0.0", "VIEW_PORT": "0", "CRAFTER_DB_URL": "traces.db"}, ["db"], 2, "VIEW_HOST='0.0.0.0' is reachable from other machines and VIEW_API_KEY is not set"),
    # world_stats, rounds
    ("world_stats", [], {}, ["latin1 .env"], 2, ".env is not UTF-8 text"),
    ("rounds", [], {"ROUNDS_DIR": "notes.db"}, ["text"], 2, "ROUNDS_DIR='notes.db' is invalid: it is a file"),
    ("rounds", [], {"ROUNDS_DIR": "out", "CRAFTER_DB_URL": "adir"}, ["dir"], 2, "CRAFTER_DB_URL='sqlite:///adir' is invalid"),
    ("rounds", [], {"ROUNDS_DIR": "out", "ROUNDS_TEACHER_EPISODES": "100000", "CRAFTER_SEED": "2147400000"}, [], 2, "CRAFTER_SEED=2147400000"),
]

OURS = ("CRAFTER_", "EVAL_", "SFT_", "QWEN_", "SERVE_", "REPLAY_", "FILTER_", "ROUNDS", "OPENAI_", "SYNTH_",
        "LEARNING_", "OUTPUT_JSONL", "MIN_", "MAX_", "MODELS", "REQUIRED_", "WORLD_STATS", "VIEW_")


def folder_state(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size if p.is_file() else None for p in folder.rglob("*")}


@pytest.mark.parametrize("module,args,env,fixtures,status,words", CASES,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(CASES)])
def test_a_bad_input_is_one_line_before_any_work(tmp_path, module, args, env, fixtures, status, words):
    for name in fixtures:
        FIXTURES[name](tmp_path)
    before = folder_state(tmp_path)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(OURS)}
    environ.update(env, PYTHONPATH=str(REPO))
    with socket.socket() as busy:
        if environ.get("SERVE_PORT") == "BUSY":
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            environ["SERVE_PORT"] = str(busy.getsockname()[1])
        done = subprocess.run([sys.executable, "-m", f"synth_qwen.{module}", *args], env=environ, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == status, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert words in done.stderr and "Traceback" not in done.stdout + done.stderr
    assert CANARY not in done.stdout + done.stderr
    assert folder_state(tmp_path) == before  # nothing created, nothing changed
