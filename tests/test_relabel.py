"""Teacher relabelling (FILTER_RELABEL, DAgger) on trace DBs written by the real runner."""
import asyncio
import json
import re
import sqlite3
from pathlib import Path

import pytest

from synth_qwen import filter_traces, tracing
from synth_qwen.crafter_env import CrafterEnv
from synth_qwen.observation import observe
from synth_qwen.expert import ExpertAgent
from synth_qwen.progress import play
from synth_qwen.scripted_endpoint import ScriptedEndpoint
from synth_qwen.settings import FilterSettings, RolloutSettings
from rollout_helpers import db_sessions, rollout_env, run_module
from test_filter_traces import cli, without_weights

OPEN = ["--min-total-reward", "-1000", "--max-cost", "none", "--max-tokens", "none", "--no-dedup"]
TEACHER = ["--relabel", "builtin:expert"]
EXPERT_RUNS = {  # run id -> how the teacher played its own episodes
    "compact-h0": dict(crafter_prompt="compact", crafter_history=0),
    "compact-h2": dict(crafter_prompt="compact", crafter_history=2),
    "text-h2": dict(crafter_history=2, crafter_tool_mode="text"),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in FilterSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def teacher_db(tmp_path_factory) -> Path:
    """The expert's own episodes, played in other processes (relabelling must not depend on one)."""
    db = tmp_path_factory.mktemp("teacher") / "traces.db"
    for run_id, values in EXPERT_RUNS.items():
        env = rollout_env(db.parent, crafter_db_url=f"sqlite:///{db}", crafter_model="builtin:expert",
                          crafter_episodes=2, crafter_max_steps=10, crafter_run_id=run_id, **values)
        done = run_module("synth_qwen.run_crafter", env, db.parent)
        assert done.returncode == 0, done.stderr
    return db


@pytest.fixture(scope="module")
def student_db(tmp_path_factory) -> Path:
    """Students the teacher disagrees with: random play, and an endpoint whose second reply is
    invalid (the next observation follows a feedback line) and whose fourth call fails."""
    db = tmp_path_factory.mktemp("student") / "traces.db"
    common = dict(crafter_db_url=f"sqlite:///{db}", crafter_max_steps=30, crafter_history=2)
    # 30 turns: long enough that the teacher's answers depend on remembering the student's moves
    random_play = RolloutSettings(crafter_model="builtin:random", crafter_episodes=3, **common)
    asyncio.run(play(random_play, "random", "rollout", "random"))
    with ScriptedEndpoint(faults=[None, "no_tool_call", None, "500"]) as endpoint, pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_BASE_URL", endpoint.base_url)
        scripted = RolloutSettings(crafter_model="scripted", crafter_episodes=1, crafter_seed=40,
                                   crafter_max_retries=0, **common)
        asyncio.run(play(scripted, "scripted", "rollout", "scripted"))
    return db


def run_filter(capsys, db: Path, out: Path, *args) -> tuple[int, dict, list[str], str]:
    """filter_traces.main in-process with --json: (exit code, report, JSONL lines written, funnel text)."""
    code = filter_traces.main(["-d", str(db), "-o", str(out), "--json", *args])
    printed = capsys.readouterr()
    report = json.loads(printed.out.strip().splitlines()[-1])
    return code, report, out.read_text().splitlines() if out.exists() else [], printed.err


def teacher_answers(session: tracing.Session, steps: list[tracing.Step], turns: list[int]) -> dict[int, dict]:
    """turn -> the interact arguments a fresh expert gives when led along the recorded actions."""
    env = CrafterEnv(seed=session.seed, difficulty=session.difficulty)
    env.start()
    start = env._player.pos.copy()
    expert = ExpertAgent(max_actions=session.metadata["actions_per_turn"], seed=session.seed)
    answers = {}
    for turn in turns:
        actions, reasoning = expert.act(observe(env))
        answers[turn] = {"reasoning": reasoning, "actions": actions}
        done = [row.action for row in steps if row.turn == turn]
        for action in done:
            env.act(action)
        expert.executed(done, tuple(int(v) for v in env._player.pos - start))
    return answers


# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("run_id", EXPERT_RUNS)
def test_relabelling_the_teachers_own_episodes_gives_back_its_examples(teacher_db, tmp_path, capsys, run_id):
    code, _, plain, _ = run_filter(capsys, teacher_db, tmp_path / "plain.jsonl", *OPEN, "--run-ids", run_id)
    code_r, report, relabelled, funnel = run_filter(capsys, teacher_db, tmp_path / "rel.jsonl", *OPEN, *TEACHER,
                                                    "--run-ids", run_id)
    assert code == code_r == 0 and len(relabelled) == len(plain) > 0
    for line, original in zip(relabelled, plain):
        example = json.loads(line)
        assert example["metadata"].pop("relabelled_by") == "builtin:expert"
        assert json.dumps(example, separators=(",", ":")) == original  # byte for byte, metadata included
    assert (report["relabelled_turns"], report["relabelled_differently"], report["relabel_diverged"]) == (len(plain), 0, 0)
    assert f"relabelled by builtin:expert: {len(plain)} turns, 0 answered differently from the student" in funnel


def test_relabelled_examples_are_the_students_requests_with_the_teachers_replies(student_db, tmp_path, capsys):
    code, report, lines, _ = run_filter(capsys, student_db, tmp_path / "rel.jsonl", *OPEN, *TEACHER,
                                        "--statuses", "max_steps,died,agent_error")
    examples = [json.loads(line) for line in lines]
    engine = tracing.open_db(f"sqlite:///{student_db}", create=False)
    sessions = db_sessions(student_db)
    assert code == 0 and {e["metadata"]["session_id"] for e in examples} == {s.session_id for s in sessions}
    for session in sessions:
        sid = session.session_id
        requests = dict(tracing.rebuild_requests(engine, sid))  # every call the student made: turn -> body
        mine = {e["metadata"]["turn"]: e for e in examples if e["metadata"]["session_id"] == sid}
        assert sorted(mine) == sorted(requests)  # invalid turns and the failed call included
        with engine.connect() as conn:
            answers = teacher_answers(session, tracing.session_steps(conn, sid), sorted(requests))
        for turn, example in mine.items():
            *request, reply = example["messages"]
            assert without_weights(request) == requests[turn]["messages"]  # exactly what the student was sent
            call, = reply["tool_calls"]
            assert call["id"] == f"call_{sid[-8:]}_{turn}" and json.loads(call["function"]["arguments"]) == answers[turn]
            assert example["metadata"]["relabelled_by"] == "builtin:expert" and example["metadata"]["model"] == session.model
    scripted = next(s for s in sessions if s.model == "scripted")
    assert (scripted.status, scripted.turns, scripted.invalid_turns) == ("agent_error", 4, 1)
    engine.dispose()
    after_invalid = next(e for e in examples if (e["metadata"]["session_id"], e["metadata"]["turn"]) ==
                         (scripted.session_id, 2))
    assert after_invalid["messages"][-2]["content"].startswith("Your previous reply was invalid")
    assert report["relabelled_turns"] == len(examples) and report["relabel_diverged"] == 0
    assert 2 <= report["relabelled_differently"] <= len(examples)  # at least the invalid turn and the failed call


def test_a_corrupted_trace_diverges_and_gives_no_example(student_db, tmp_path, capsys):
    db = tmp_path / "corrupted.db"
    with sqlite3.connect(student_db) as source, sqlite3.connect(db) as copy:
        source.backup(copy)
    opposite = {"move_left": "move_right", "move_right": "move_left", "move_up": "move_down", "move_down": "move_up"}
    with sqlite3.connect(db) as conn:  # flip a turn's last move: the next observation faces the other way
        session_id, step_id, action = conn.execute(
            "SELECT t.session_id, t.id, t.action FROM session_timesteps t JOIN session_traces s USING (session_id) "
            "WHERE s.run_id = 'random' AND t.action LIKE 'move_%' AND t.turn < s.turns - 1 AND t.step_index = "
            "(SELECT max(step_index) FROM session_timesteps u WHERE u.session_id = t.session_id AND u.turn = t.turn) "
            "ORDER BY t.id LIMIT 1").fetchone()
        conn.execute("UPDATE session_timesteps SET action = ? WHERE id = ?", (opposite[action], step_id))
    code, report, lines, funnel = run_filter(capsys, db, tmp_path / "rel.jsonl", *OPEN, *TEACHER, "--run-ids", "random")
    assert code == 0 and report["relabel_diverged"] == 1 and report["first_divergence"].startswith(session_id)
    assert session_id not in {json.loads(line)["metadata"]["session_id"] for line in lines}
    assert len({json.loads(line)["metadata"]["session_id"] for line in lines}) == 2  # the others still count
    assert f"sessions skipped, replay diverged from the trace: 1 (first: {session_id} turn " in funnel


@pytest.mark.parametrize("env,expected", [
    ({"FILTER_RELABEL": "bogus"}, "FILTER_RELABEL='bogus' is invalid: teachers are builtin:expert"),
    ({"FILTER_RELABEL": "builtin:expert", "FILTER_MODE": "episode"}, "FILTER_RELABEL relabels single turns"),
])
def test_bad_relabel_settings_exit_2_with_one_line(tmp_path, env, expected):
    done = cli(tmp_path, **env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and expected in done.stderr


@pytest.mark.parametrize("run_id", ["compact-h0", "text-h2"])
def test_reasoning_styles_reshape_only_the_trained_reply(teacher_db, tmp_path, capsys, run_id):
    """FILTER_REASONING: the teacher's 'subgoal: what, where' becomes 'what' (subgoal) or nothing
    (drop); prompts, actions and everything else stay exactly as plain filtering writes them."""
    _, _, plain, _ = run_filter(capsys, teacher_db, tmp_path / "plain.jsonl", *OPEN, "--run-ids", run_id)
    for style in ("subgoal", "drop"):
        _, _, shaped, _ = run_filter(capsys, teacher_db, tmp_path / f"{style}.jsonl", *OPEN, "--run-ids", run_id,
                                     "--reasoning", style)
        assert len(shaped) == len(plain) > 0
        for line, original in zip(shaped, plain):
            example, original = json.loads(line), json.loads(original)
            assert example["messages"][:-1] == original["messages"][:-1]
            reply, before = example["messages"][-1], original["messages"][-1]
            if before.get("tool_calls"):
                arguments = json.loads(reply["tool_calls"][0]["function"]["arguments"])
                old = json.loads(before["tool_calls"][0]["function"]["arguments"])
                assert arguments["actions"] == old["actions"]
                reasoning, old_reasoning = arguments.get("reasoning"), old["reasoning"]
            else:
                (reasoning, actions), (old_reasoning, old_actions) = [
                    ((text.split("\n")[0] if "\n" in text else None), text.split("\n")[-1])
                    for text in (reply["content"], before["content"])]
                assert actions == old_actions and actions.startswith("Actions: ")
            expected = old_reasoning.removeprefix("subgoal: ").split(",")[0] if style == "subgoal" else None
            assert old_reasoning.startswith("subgoal: ") and reasoning == expected


def test_dart_the_noisy_teacher_is_relabelled_with_its_clean_choices(tmp_path, capsys):
    """CRAFTER_EXPERT_NOISE: the teacher's executed actions are partly random (recovery states a
    clean teacher never visits); relabelling puts the teacher's own choice back on every such turn."""
    def played(noise: float) -> dict:
        env = rollout_env(tmp_path, crafter_model="builtin:expert", crafter_episodes=3, crafter_max_steps=20,
                          crafter_run_id=f"dart-{noise}", crafter_expert_noise=noise, crafter_tool_mode="text",
                          crafter_prompt="compact", crafter_history=0)
        done = run_module("synth_qwen.run_crafter", env, tmp_path)
        assert done.returncode == 0, done.stderr
        engine = tracing.open_db(f"sqlite:///{tmp_path / 'traces.db'}", create=False)
        with engine.connect() as conn:
            found = {(s.seed, turn): [row.action for row in tracing.session_steps(conn, s.session_id) if row.turn == turn]
                     for s in tracing.sessions(engine) if s.run_id == f"dart-{noise}" for turn in range(20)}
        engine.dispose()
        return found

    clean, noisy = played(0.0), played(0.3)
    assert clean == played(0.0)  # noise 0 is the teacher as before
    assert noisy != clean and noisy == played(0.3)  # seeded: the same noise every time
    code, _, lines, _ = run_filter(capsys, tmp_path / "traces.db", tmp_path / "dart.jsonl", *OPEN, *TEACHER,
                                   "--run-ids", "dart-0.3")
    assert code == 0
    examples = [json.loads(line) for line in lines]
    targets = {(e["metadata"]["seed"], e["metadata"]["turn"]): e["messages"][-1]["content"] for e in examples}
    executed = {key: actions for key, actions in noisy.items() if key in targets}
    relabelled = [key for key, text in targets.items() if "Actions: " + ", ".join(executed[key]) not in text]
    assert len(targets) > 20 and relabelled  # the noisy turns train the teacher's choice, not what ran

# ---------------------------------------------------------------------------------------
# FILTER_FORMAT=dpo: the teacher's reply preferred over the student's, in the student's state

DPO = [*TEACHER, "--format", "dpo"]


def executed_actions(steps: list[tracing.Step], turn: int) -> list[str]:
    return [row.action for row in steps if row.turn == turn]


def test_preference_pairs_are_the_students_requests_with_the_teachers_reply_over_its_own(student_db, tmp_path, capsys):
    statuses = ["--statuses", "max_steps,died,agent_error"]
    code, report, lines, funnel = run_filter(capsys, student_db, tmp_path / "pairs.jsonl", *OPEN, *DPO, *statuses)
    pairs = [json.loads(line) for line in lines]
    assert code == 0 and pairs
    engine = tracing.open_db(f"sqlite:///{student_db}", create=False)
    agreements = sleeps = 0
    for session in db_sessions(student_db):
        sid = session.session_id
        requests = dict(tracing.rebuild_requests(engine, sid))
        with engine.connect() as conn:
            steps = tracing.session_steps(conn, sid)
            by_turn = tracing.session_turn_messages(conn, sid)
        answers = teacher_answers(session, steps, sorted(requests))
        mine = {p["metadata"]["turn"]: p for p in pairs if p["metadata"]["session_id"] == sid}
        for turn in requests:
            differ = executed_actions(steps, turn) != answers[turn]["actions"]
            failed = len(by_turn[turn]) < 2 or by_turn[turn][1].role != "assistant"  # no reply to prefer against
            asleep = "You are asleep." in requests[turn]["messages"][-1]["content"]
            assert (turn in mine) == (differ and not failed and not asleep), (sid, turn)
            agreements += not differ
            sleeps += differ and asleep
        for turn, pair in mine.items():
            assert pair["input"]["messages"] == requests[turn]["messages"]  # exactly what the student was sent
            assert pair["input"]["tools"] == requests[turn]["tools"] and pair["input"]["parallel_tool_calls"] is False
            [preferred], [student] = pair["preferred_output"], pair["non_preferred_output"]
            assert json.loads(preferred["tool_calls"][0]["function"]["arguments"]) == answers[turn]
            assert student == by_turn[turn][1].api()  # the student's own reply, as recorded
            assert pair["metadata"]["relabelled_by"] == "builtin:expert" and "messages" not in pair
    engine.dispose()
    assert (report["pair_agreements"], report["pairs_built"]) == (agreements, len(pairs))
    assert report["pair_asleep"] == sleeps
    assert report["relabelled_turns"] == agreements + sleeps + len(pairs) + report["turns_skipped"]["failed call"]
    assert agreements > 0  # random play sometimes does what the teacher would
    assert (f"preference pairs: {report['relabelled_turns']} turns, {agreements} where the student did what the "
            f"teacher would (no pair), {sleeps} asleep (no pair), {len(pairs)} pairs (teacher preferred)") in funnel
    assert "(turn mode, dpo)" in funnel and "pairs written" in funnel
    from synth_qwen.sft_format import validate_jsonl
    assert validate_jsonl(tmp_path / "pairs.jsonl", min_examples=1, method="dpo").ok


def test_the_teachers_own_episodes_give_no_pair(teacher_db, tmp_path, capsys):
    code, report, lines, _ = run_filter(capsys, teacher_db, tmp_path / "pairs.jsonl", *OPEN, *DPO)
    assert code == 1 and lines == [] and report["pairs_built"] == 0
    assert report["pair_agreements"] == report["relabelled_turns"] > 0


def test_pairs_keep_eval_seeds_out_and_split_by_seed(student_db, tmp_path, capsys):
    """The same selection, split and dedup as SFT data: eval episodes are held out unless asked for."""
    db = tmp_path / "with-eval.db"
    with sqlite3.connect(student_db) as source, sqlite3.connect(db) as copy:
        source.backup(copy)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE session_traces SET purpose = 'eval' WHERE run_id = 'scripted'")
    statuses = ["--statuses", "max_steps,died,agent_error"]
    code, report, lines, _ = run_filter(capsys, db, tmp_path / "pairs.jsonl", *OPEN, *DPO, *statuses,
                                        "--validation-fraction", "0.5")
    train = [json.loads(line) for line in lines]
    validation = [json.loads(line) for line in (tmp_path / "pairs_val.jsonl").read_text().splitlines()]
    assert code == 0 and report["removed"]["eval episodes (FILTER_INCLUDE_EVAL off)"] == 1
    assert "scripted" not in {p["metadata"]["model"] for p in train + validation}
    assert train and validation
    assert not {p["metadata"]["seed"] for p in train} & {p["metadata"]["seed"] for p in validation}
    for pair in train + validation:
        assert filter_traces.in_validation(pair["metadata"]["seed"], 0.5) == (pair in validation)


def test_turns_that_began_asleep_give_no_pair(tmp_path, capsys):
    """Asleep, Crafter turns every action into sleep: the student's reply and the teacher's do the
    same, so no pair may prefer one (a DPO job on such pairs learned to say "sleep" everywhere)."""
    db = tmp_path / "traces.db"

    def stay_up_then_sleep(body):  # awake until energy has dropped (~31 steps), then sleep
        step = int(re.search(r"Step (\d+)", body["messages"][-1]["content"]).group(1))
        return ScriptedEndpoint.interact(["noop"] * 5 if step < 45 else ["sleep"], "rest")

    with ScriptedEndpoint(script=stay_up_then_sleep) as endpoint, pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_BASE_URL", endpoint.base_url)
        student = RolloutSettings(crafter_model="scripted", crafter_episodes=1, crafter_max_steps=16,
                                  crafter_db_url=f"sqlite:///{db}")
        asyncio.run(play(student, "sleeper", "rollout", "sleeper"))
    code, report, lines, funnel = run_filter(capsys, db, tmp_path / "pairs.jsonl", *OPEN, *DPO)
    pairs = [json.loads(line) for line in lines]
    assert code == 0 and pairs and report["pair_asleep"] >= 2
    assert not [p for p in pairs if "You are asleep." in p["input"]["messages"][-1]["content"]]
    assert report["relabelled_turns"] == report["pair_agreements"] + report["pair_asleep"] + len(pairs)
    assert f"{report['pair_asleep']} asleep (no pair)" in funnel


def test_dpo_without_a_teacher_exits_2_with_one_line(tmp_path):
    done = cli(tmp_path, FILTER_FORMAT="dpo")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "FILTER_FORMAT=dpo pairs the teacher's reply with the student's: set FILTER_RELABEL" in done.stderr
