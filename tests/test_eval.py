"""eval and replay end to end: real Crafter, real SQLite, the real runner, modules run as subprocesses."""
import json
import sqlite3
import subprocess
import sys

import imageio.v3 as iio
import pytest

from synth_qwen import replay, tracing
from synth_qwen.scripted_endpoint import ScriptedEndpoint
from rollout_helpers import db_sessions, rollout_env, run_module, run_module_capped

SEEDS = [100000, 100001, 100002]
# The three verdicts eval can give (eval.verdict), each identified by words only it uses.
BETTER = "both differences are distinguishable from noise: {model} is better than {baseline}."
WORSE = "both differences are distinguishable from noise: {model} is worse than {baseline}."
NOISE = "; the difference is not distinguishable from noise at this sample size"


def run_eval(tmp_path, **values):
    settings = dict(crafter_difficulty="easy", crafter_max_steps=8, eval_episodes=len(SEEDS))
    settings.update(values)
    return run_module("synth_qwen.eval", rollout_env(tmp_path, **settings), tmp_path)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One evaluation of random vs expert, shared by the tests that read its outputs."""
    tmp_path = tmp_path_factory.mktemp("eval")
    done = run_eval(tmp_path, eval_models="builtin:random builtin:expert", eval_run_id="ev1",
                    eval_report_dir=tmp_path / "report")
    assert done.returncode == 0, done.stderr
    return tmp_path, done


def test_every_model_plays_the_same_held_out_seeds_as_eval_sessions(evaluated):
    tmp_path, _ = evaluated
    sessions = db_sessions(tmp_path / "traces.db")
    by_run = {}
    for s in sessions:
        by_run.setdefault((s.run_id, s.model), []).append(s.seed)
        assert s.purpose == "eval" and s.difficulty == "easy"
    assert {run: sorted(seeds) for run, seeds in by_run.items()} == {
        ("ev1-m0", "builtin:random"): SEEDS, ("ev1-m1", "builtin:expert"): SEEDS}


def test_report_files_numbers_and_verdict(evaluated):
    tmp_path, done = evaluated
    report_dir = tmp_path / "report"
    report = json.loads((report_dir / "report.json").read_text())
    assert report["seeds"] == SEEDS and report["same_seeds_for_every_model"]
    random_, expert = report["models"]
    assert (random_["model"], expert["model"]) == ("builtin:random", "builtin:expert")
    for model in report["models"]:
        for key in ("crafter_score", "progression_pct"):
            low, high = model[key]["ci95"]
            assert low <= model[key]["value"] <= high
        wood = model["success_rates"]["collect_wood"]
        assert wood["ci95_pct"][0] <= wood["rate_pct"] <= wood["ci95_pct"][1]
        assert model["mean_turns"] > 0 and model["cost_usd"] == 0.0 and model["tokens_per_turn"] == 0
    assert expert["progression_pct"]["value"] > random_["progression_pct"]["value"]
    [comparison] = report["comparisons"]
    assert comparison["paired_seeds"] == len(SEEDS) and comparison["baseline"] == "builtin:random"
    diff = comparison["progression_pct_diff"]
    gap = expert["progression_pct"]["value"] - random_["progression_pct"]["value"]
    assert diff["value"] == pytest.approx(gap, abs=0.01)
    for key in ("progression_pct_diff", "crafter_score_diff"):
        low, high = comparison[key]["ci95"]
        assert low <= comparison[key]["value"] <= high
    assert diff["ci95"][0] > 0 and comparison["crafter_score_diff"]["ci95"][0] > 0  # the expert is clearly better
    assert comparison["sentence"].endswith(BETTER.format(model="builtin:expert", baseline="builtin:random"))
    markdown = (report_dir / "report.md").read_text()
    assert comparison["sentence"] in markdown and "100000–100002" in markdown
    assert "![success rate per achievement](achievements.png)" in markdown
    assert (report_dir / "achievements.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Crafter score (95 % CI)" in done.stdout
    assert "builtin:expert is better than" in " ".join(done.stdout.split())  # rich wraps the line


def test_report_links_reproduced_replays_of_best_and_worst_episodes(evaluated):
    tmp_path, _ = evaluated
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    markdown = (tmp_path / "report" / "report.md").read_text()
    steps = {s.session_id: s.env_steps for s in db_sessions(tmp_path / "traces.db")}
    for model in report["models"]:
        assert model["best_episode"]["num_achievements"] >= model["worst_episode"]["num_achievements"]
        for which in ("best", "worst"):
            path = model["replays"][which]["path"]
            assert path and f"]({path})" in markdown
            frames = iio.imread(tmp_path / "report" / path, index=None)
            assert len(frames) == steps[model[f"{which}_episode"]["session_id"]] + 1  # the start, then each step


def test_eval_run_ids_reports_without_playing_and_without_matplotlib(evaluated, tmp_path):
    first_dir, _ = evaluated
    before = db_sessions(first_dir / "traces.db")
    blocker = tmp_path / "no_matplotlib" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib blocked for this test')\n")
    env = rollout_env(first_dir, eval_run_ids="ev1", eval_report_dir=tmp_path / "again", eval_replays=0)
    env["PYTHONPATH"] = f"{blocker.parent}:{env['PYTHONPATH']}"
    done = run_module("synth_qwen.eval", env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert db_sessions(first_dir / "traces.db") == before  # nothing was played
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    original = json.loads((first_dir / "report" / "report.json").read_text())
    assert [m["crafter_score"] for m in again["models"]] == [m["crafter_score"] for m in original["models"]]
    assert again["comparisons"][0]["sentence"] == original["comparisons"][0]["sentence"]
    assert not (tmp_path / "again" / "achievements.png").exists()
    assert "pip install 'synth_qwen[plot]'" in (tmp_path / "again" / "report.md").read_text()


def test_a_report_the_disk_refuses_is_one_line_no_partial_file_and_a_rerun_writes_it(evaluated, tmp_path):
    """No file may grow past 48 KB (RLIMIT_FSIZE; the DB's 32 KB -shm fits): the 80 KB chart cannot be
    written, as on a full disk."""
    first_dir, _ = evaluated
    env = rollout_env(first_dir, eval_run_ids="ev1", eval_report_dir=tmp_path / "r", eval_replays=0)
    full = run_module_capped("synth_qwen.eval", 48 << 10, env, tmp_path)
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
    assert full.stderr.splitlines()[-1] == (
        f"error: cannot write the report in EVAL_REPORT_DIR={tmp_path / 'r'} (File too large): the episodes are safe "
        'in the trace DB; free space, then write it with: EVAL_RUN_IDS="ev1" python -m synth_qwen.eval   (same settings)')
    assert list((tmp_path / "r").iterdir()) == []  # no half chart, no half report
    again = run_module("synth_qwen.eval", env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "r" / "report.json").read_text())["models"]


def test_a_model_worse_than_its_baseline_is_called_worse(evaluated, tmp_path):
    """The stored runs in the other order: the expert is the baseline, random play is compared to it."""
    first_dir, _ = evaluated
    env = rollout_env(first_dir, eval_run_ids="ev1-m1 ev1-m0", eval_report_dir=tmp_path / "r", eval_replays=0)
    done = run_module("synth_qwen.eval", env, tmp_path)
    assert done.returncode == 0, done.stderr
    [comparison] = json.loads((tmp_path / "r" / "report.json").read_text())["comparisons"]
    assert (comparison["model"], comparison["baseline"]) == ("builtin:random", "builtin:expert")
    assert comparison["progression_pct_diff"]["ci95"][1] < 0
    assert comparison["sentence"].endswith(WORSE.format(model="builtin:random", baseline="builtin:expert"))


def test_rerunning_an_eval_run_id_plays_only_the_missing_seeds(evaluated, tmp_path):
    first_dir, _ = evaluated
    done = run_eval(first_dir, eval_models="builtin:random builtin:expert", eval_run_id="ev1",
                    eval_episodes=len(SEEDS) + 1, eval_report_dir=tmp_path / "more", eval_replays=0)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("resuming run ev1-m") == 2 and done.stderr.count("status=") == 2  # one new each
    report = json.loads((tmp_path / "more" / "report.json").read_text())
    assert report["seeds"] == SEEDS + [SEEDS[-1] + 1] and report["same_seeds_for_every_model"]


def test_a_model_against_itself_differs_by_exactly_zero(tmp_path):
    # Same seeds + a deterministic policy = the same episodes; pairing by seed cancels all noise.
    done = run_eval(tmp_path, eval_models="builtin:random builtin:random", eval_report_dir=tmp_path / "r",
                    eval_replays=0)
    assert done.returncode == 0, done.stderr
    [comparison] = json.loads((tmp_path / "r" / "report.json").read_text())["comparisons"]
    for key in ("progression_pct_diff", "crafter_score_diff"):
        assert comparison[key] == {"value": 0.0, "ci95": [0.0, 0.0]}
    assert NOISE in comparison["sentence"] and "better" not in comparison["sentence"]


def test_endpoint_models_report_tokens_and_cost(tmp_path):
    with ScriptedEndpoint(cost_per_call=0.001) as endpoint:
        done = run_eval(tmp_path, eval_models="model-a model-b", eval_episodes=2, crafter_max_steps=4,
                        eval_report_dir=tmp_path / "r", eval_replays=0, openai_base_url=endpoint.base_url,
                        openai_api_key="sk-test-key")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [m["model"] for m in report["models"]] == ["model-a", "model-b"]
    for model in report["models"]:
        assert model["tokens_per_turn"] > 0 and model["cost_usd"] == pytest.approx(0.001 * 2 * model["mean_turns"])
    assert {body["model"] for body in endpoint.requests} == {"model-a", "model-b"}
    # the scripted endpoint answers by the observation, not the model: both play the same episodes
    [comparison] = report["comparisons"]
    assert comparison["progression_pct_diff"] == comparison["crafter_score_diff"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    assert comparison["sentence"].startswith("model-b vs model-a over 2 paired seeds") and NOISE in comparison["sentence"]


def test_a_model_that_only_answers_invalid_turns_stays_the_baseline(tmp_path):
    """An untrained model answers garbage: it scores 0, and it is still the model to compare with."""
    with ScriptedEndpoint(always="no_tool_call") as endpoint:
        done = run_eval(tmp_path, eval_models="garbage-model builtin:random", eval_episodes=3, crafter_max_steps=4,
                        eval_report_dir=tmp_path / "r", eval_replays=0, openai_base_url=endpoint.base_url)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [m["model"] for m in report["models"]] == ["garbage-model", "builtin:random"]
    assert report["models"][0]["invalid_turn_pct"] == 100.0
    assert report["comparisons"][0]["baseline"] == "garbage-model"


def test_an_endpoint_that_is_not_there_stops_before_any_episode(tmp_path):
    done = run_eval(tmp_path, eval_models="model-a", eval_episodes=1, openai_base_url="http://127.0.0.1:9/v1",
                    crafter_max_retries=0, eval_report_dir=tmp_path / "r")
    assert done.returncode == 1
    assert "error: the policy endpoint http://127.0.0.1:9/v1 cannot be used: cannot connect" in done.stderr
    assert not (tmp_path / "r").exists() and db_sessions(tmp_path / "traces.db") == []


def test_a_model_that_never_answers_is_left_out_and_nothing_evaluable_exits_1(tmp_path):
    with ScriptedEndpoint(always="500") as endpoint:
        done = run_eval(tmp_path, eval_models="model-a", eval_episodes=1, openai_base_url=endpoint.base_url,
                        crafter_max_retries=0, eval_report_dir=tmp_path / "r")
    assert done.returncode == 1
    assert "left out of the report: it never answered" in done.stderr and "nothing could be evaluated" in done.stderr


@pytest.mark.parametrize("name, value, expected", [
    ("eval_episodes", "abc", "EVAL_EPISODES='abc' is invalid"),
    ("eval_models", "builtin:genius", "EVAL_MODELS='builtin:genius' is invalid"),
    ("eval_run_ids", "ev1", "traces.db does not exist"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, name, value, expected):
    done = run_eval(tmp_path, **{name: value})
    assert done.returncode == 2
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_an_unknown_eval_run_id_exits_2(evaluated):
    tmp_path, _ = evaluated
    done = run_eval(tmp_path, eval_run_ids="ev1 no-such-run")
    assert done.returncode == 2 and "no sessions with run id 'no-such-run'" in done.stderr


# ---------------------------------------------------------------------------------------
# replay

def expert_session(evaluated) -> tuple:
    tmp_path, _ = evaluated
    db = tmp_path / "traces.db"
    session = max((s for s in db_sessions(db) if s.model == "builtin:expert"), key=lambda s: s.num_achievements)
    assert session.num_achievements > 0  # something to reproduce
    return db, session


def test_replay_reproduces_the_recorded_rewards_and_achievements(evaluated):
    db, session = expert_session(evaluated)
    engine = tracing.open_db(f"sqlite:///{db}", create=False)
    trace = replay.load_trace(engine, session.session_id)
    assert [row.step_index for row in trace.steps] == list(range(1, session.env_steps + 1))
    frames, divergence = replay.replay(trace, size=64)
    assert divergence is None and len(frames) == session.env_steps + 1
    assert replay.replay(trace) == ([], None)  # without frames: the check alone


def test_replay_command_writes_a_gif(evaluated, tmp_path):
    db, session = expert_session(evaluated)
    out = tmp_path / "episode.gif"
    done = subprocess.run([sys.executable, "-m", "synth_qwen.replay", session.session_id, "--db", str(db),
                           "--out", str(out), "--size", "128"], capture_output=True, text=True, cwd=tmp_path,
                          env=rollout_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "reproduced exactly" in done.stdout
    frames = iio.imread(out, index=None)
    assert frames.shape[0] == session.env_steps + 1 and frames.shape[2] == 128


FIRST_STEP = "(SELECT MIN(id) FROM session_timesteps WHERE session_id = ?)"
FIRST_UNLOCK = "(SELECT MIN(id) FROM session_timesteps WHERE session_id = ? AND new_achievements != '[]')"


@pytest.mark.parametrize("tamper", [
    f"UPDATE session_timesteps SET reward = reward + 1.0 WHERE id = {FIRST_STEP}",
    f"UPDATE session_timesteps SET action = 'noop' WHERE id = {FIRST_UNLOCK}",
    "UPDATE session_traces SET seed = seed + 7 WHERE session_id = ?",  # a trace from another world
], ids=["reward", "action", "seed"])
def test_a_tampered_trace_is_detected(evaluated, tmp_path, tamper):
    db, session = expert_session(evaluated)
    copy = tmp_path / "tampered.db"
    with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
        source.backup(target)
        target.execute(tamper, (session.session_id,))
    done = subprocess.run([sys.executable, "-m", "synth_qwen.replay", session.session_id, "--db", str(copy),
                           "--out", str(tmp_path / "x.gif")], capture_output=True, text=True, cwd=tmp_path,
                          env=rollout_env(tmp_path))
    assert done.returncode == 1
    assert "does not reproduce the trace" in done.stderr and "corrupted" in done.stderr
    assert not (tmp_path / "x.gif").exists()


def test_replay_of_an_unknown_session_exits_2(evaluated, tmp_path):
    db, _ = expert_session(evaluated)
    done = subprocess.run([sys.executable, "-m", "synth_qwen.replay", "sess_nope", "--db", str(db)],
                          capture_output=True, text=True, cwd=tmp_path, env=rollout_env(tmp_path))
    assert done.returncode == 2 and "no session 'sess_nope'" in done.stderr
