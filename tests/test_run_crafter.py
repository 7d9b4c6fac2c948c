"""run_crafter end to end through the real openai client against a scripted endpoint."""
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from synth_qwen import action_schema, relabel, tracing
from synth_qwen.scripted_endpoint import ScriptedEndpoint
from rollout_helpers import count_rows, db_sessions, rollout_env, run_module, run_module_capped, wait_until_finished


def run(tmp_path, endpoint=None, **values):
    settings = dict(crafter_model="test-model", crafter_episodes=2, crafter_max_steps=6,
                    crafter_run_id="r1", crafter_request_timeout_s=1.0)
    if endpoint:
        settings["openai_base_url"] = endpoint.base_url
        settings.setdefault("openai_api_key", "sk-test-key")
    settings.update(values)
    return run_module("synth_qwen.run_crafter", rollout_env(tmp_path, **settings), tmp_path)


def test_every_request_can_be_rebuilt_exactly_from_the_db(tmp_path):
    with ScriptedEndpoint() as endpoint:
        done = run(tmp_path, endpoint, crafter_episodes=3, crafter_max_steps=8, crafter_history=2)
    assert done.returncode == 0, done.stderr
    engine = tracing.open_db(f"sqlite:///{tmp_path / 'traces.db'}", create=False)
    rebuilt = [body for s in tracing.sessions(engine) for _, body in tracing.rebuild_requests(engine, s.session_id)]
    received = endpoint.requests
    assert len(rebuilt) == len(received) == 3 * 8
    canonical = lambda bodies: sorted(json.dumps(b, sort_keys=True) for b in bodies)
    assert canonical(rebuilt) == canonical(received)
    # history really was included: later calls carry earlier turns with their tool answers
    longest = max(received, key=lambda b: len(b["messages"]))
    roles = [m["role"] for m in longest["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user", "assistant", "tool", "user"]


def test_sessions_record_model_tokens_cost_and_outcome(tmp_path):
    with ScriptedEndpoint(cost_per_call=0.00025) as endpoint:
        done = run(tmp_path, endpoint, crafter_episodes=2, crafter_max_steps=5, crafter_difficulty="hard",
                   crafter_seed=40)
    assert done.returncode == 0, done.stderr
    sessions = db_sessions(tmp_path / "traces.db")
    assert sorted(s.seed for s in sessions) == [40, 41]
    for s in sessions:
        assert s.model == "test-model" and s.difficulty == "hard" and s.purpose == "rollout"
        assert s.status in ("max_steps", "died")
        assert s.turns == 5 or s.status == "died"
        assert s.prompt_tokens > 0 and s.completion_tokens > 0
        assert s.cost_usd == pytest.approx(0.00025 * s.turns)
        assert s.env_steps == count_rows(tmp_path / "traces.db", tracing.session_timesteps, s.session_id)
    assert "Crafter score" in done.stdout and "progression" in done.stdout


def test_invalid_turns_do_not_step_the_env_and_are_explained(tmp_path):
    with ScriptedEndpoint(faults=["no_tool_call", "unknown_action"]) as endpoint:
        done = run(tmp_path, endpoint, crafter_episodes=1, crafter_max_steps=5)
    assert done.returncode == 0, done.stderr
    [session] = db_sessions(tmp_path / "traces.db")
    assert session.invalid_turns == 2 and session.status == "max_steps"
    engine = tracing.open_db(f"sqlite:///{tmp_path / 'traces.db'}", create=False)
    with engine.connect() as conn:
        by_turn = tracing.session_turn_messages(conn, session.session_id)
        events = tracing.session_events(conn, session.session_id)
        steps = conn.execute(tracing.session_timesteps.select()).fetchall()
    assert [e.valid for e in events] == [False, False, True, True, True]
    assert "unknown action 'eat_cow'" in events[1].invalid_reason
    assert by_turn[1][0].content.startswith("Your previous reply was invalid (no interact tool call")
    assert by_turn[2][0].content.startswith("Your previous reply was invalid (unknown action 'eat_cow'")
    assert {row.turn for row in steps} == {2, 3, 4}  # the env only moved on valid turns


def test_consecutive_invalid_turns_end_the_episode_as_agent_error(tmp_path):
    with ScriptedEndpoint(always="no_tool_call") as endpoint:
        done = run(tmp_path, endpoint, crafter_episodes=2, crafter_max_steps=10, crafter_max_invalid=3)
    assert done.returncode == 0, done.stderr  # the endpoint answered: the run itself worked
    for s in db_sessions(tmp_path / "traces.db"):
        assert s.status == "agent_error" and s.failure == tracing.INVALID_TURNS and s.turns == 3 and s.env_steps == 0
        assert "3 invalid turns in a row" in s.status_reason


def test_transient_failures_are_retried(tmp_path):
    with ScriptedEndpoint(faults=["429", "500", "timeout", "malformed", "empty_choices"]) as endpoint:
        done = run(tmp_path, endpoint, crafter_episodes=1, crafter_max_steps=3, crafter_max_retries=6)
    assert done.returncode == 0, done.stderr
    [session] = db_sessions(tmp_path / "traces.db")
    assert session.status == "max_steps" and session.invalid_turns == 0
    engine = tracing.open_db(f"sqlite:///{tmp_path / 'traces.db'}", create=False)
    with engine.connect() as conn:
        events = tracing.session_events(conn, session.session_id)
    assert events[0].attempts == 6 and events[0].error is None


def test_a_call_that_keeps_failing_ends_the_episode_and_an_unreachable_run_exits_1(tmp_path):
    with ScriptedEndpoint(always="500") as endpoint:
        done = run(tmp_path, endpoint, crafter_episodes=2, crafter_max_retries=1)
    assert done.returncode == 1
    assert "no episode could reach the policy endpoint" in done.stderr and "HTTP 500" in done.stderr
    for s in db_sessions(tmp_path / "traces.db"):
        assert s.status == "agent_error" and "HTTP 500" in s.status_reason and s.failure == tracing.CALL_FAILED


def test_nothing_listening_exits_1_with_what_to_do_before_any_episode(tmp_path):
    done = run(tmp_path, None, openai_base_url="http://127.0.0.1:9/v1", crafter_max_retries=0)
    assert done.returncode == 1 and "APIConnectionError" in done.stderr
    assert "python -m synth_qwen.serve" in done.stderr and "CRAFTER_MODEL=builtin:expert" in done.stderr
    assert not (tmp_path / "traces.db").exists()  # nothing was played, so nothing was written


# ---------------------------------------------------------------------------------------
# One SQLite file, several processes (DESIGN §4.1, §7: WAL, one writer per process, no "locked")

def test_two_processes_of_16_concurrent_episodes_share_one_new_sqlite_file(tmp_path):
    db = tmp_path / "traces.db"
    runs = ("left", "right")
    with ScriptedEndpoint(latency_s=0.05) as endpoint:
        processes = [subprocess.Popen(
            [sys.executable, "-m", "synth_qwen.run_crafter"], cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            env=rollout_env(tmp_path, crafter_model="test-model", crafter_episodes=16, crafter_max_steps=8,
                            crafter_concurrency=16, crafter_run_id=run_id, openai_base_url=endpoint.base_url,
                            openai_api_key="sk-test")) for run_id in runs]  # both start on a file not yet there
        errors = [process.communicate(timeout=120)[1] for process in processes]
    for process, stderr in zip(processes, errors):
        assert process.returncode == 0, stderr
        assert "locked" not in stderr
    sessions = db_sessions(db)
    for run_id in runs:
        mine = [s for s in sessions if s.run_id == run_id]
        assert sorted(s.seed for s in mine) == list(range(1, 17))
        for s in mine:  # every episode stored whole
            assert s.status in ("max_steps", "died") and s.turns > 0
            assert count_rows(db, tracing.events, s.session_id) == s.turns
    left, right = ([s for s in sessions if s.run_id == run_id] for run_id in runs)
    span = lambda run: (min(s.started_at for s in run), max(s.ended_at for s in run))
    assert span(left)[0] < span(right)[1] and span(right)[0] < span(left)[1]  # they really wrote at once


OPEN_AT_ONCE = """
import sys
from synth_qwen import tracing
print("ready", flush=True)
sys.stdin.readline()  # the start gate: every process is imported and waiting, then all go at once
tracing.open_db(sys.argv[1]).dispose()
"""


def test_processes_creating_a_new_db_at_the_same_moment_all_succeed(tmp_path):
    """The schema of a new file is created by whichever process comes first; the others wait
    (busy_timeout before WAL is switched on) and find it there (no 'table already exists')."""
    url = f"sqlite:///{tmp_path / 'traces.db'}"
    processes = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, url], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                  env=rollout_env(tmp_path)) for _ in range(4)]
    for process in processes:
        assert process.stdout.readline() == "ready\n"
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
    with sqlite3.connect(tmp_path / "traces.db") as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(tracing.SCHEMA_VERSION,)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_opening_waits_for_a_lock_held_by_another_process(tmp_path):
    """busy_timeout (30 s) comes before journal_mode=WAL: switching a locked file to WAL waits for the
    lock instead of failing with 'database is locked' once Python's default 5 s timeout has passed."""
    path = tmp_path / "traces.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE unrelated (x)")  # an existing file, still in SQLite's rollback mode
    opener = subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, f"sqlite:///{path}"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                              env=rollout_env(tmp_path))
    assert opener.stdout.readline() == "ready\n"
    holder.execute("BEGIN EXCLUSIVE")
    opener.stdin.write("go\n")
    opener.stdin.flush()
    time.sleep(6.0)  # longer than sqlite3's default timeout; the opener meets the lock meanwhile
    holder.execute("COMMIT")
    holder.close()
    _, stderr = opener.communicate(timeout=60)
    assert opener.returncode == 0, stderr
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_switching_to_wal_retries_a_lock_reported_without_waiting(tmp_path):
    """busy_timeout=0 stands in for SQLite's cases that answer "locked" without waiting: the switch
    retries until the holder lets go instead of failing the run."""
    path = tmp_path / "traces.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE unrelated (x)")
    holder.execute("BEGIN EXCLUSIVE")
    opener = sqlite3.connect(path, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        opener.execute("PRAGMA journal_mode=WAL")
    threading.Timer(0.5, lambda: holder.execute("COMMIT")).start()
    tracing.switch_to_wal(opener.cursor())
    assert opener.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_killed_run_loses_no_finished_episode_and_resumes_without_duplicates(tmp_path):
    db = tmp_path / "traces.db"
    with ScriptedEndpoint(latency_s=0.1) as endpoint:
        env = rollout_env(tmp_path, crafter_model="test-model", crafter_episodes=12, crafter_max_steps=8,
                          crafter_concurrency=3, crafter_run_id="resume-me", openai_base_url=endpoint.base_url,
                          openai_api_key="sk-test")
        process = subprocess.Popen([sys.executable, "-m", "synth_qwen.run_crafter"], env=env, cwd=tmp_path,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_finished(db, 3)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        before = db_sessions(db)
        finished = {s.session_id: s for s in before if s.status != "incomplete"}
        assert 3 <= len(finished) < 12
        for session_id, s in finished.items():  # finished episodes are whole
            assert count_rows(db, tracing.events, session_id) == s.turns
        for s in before:
            if s.status == "incomplete":
                assert count_rows(db, tracing.events, s.session_id) == 0  # never half-written
        again = run_module("synth_qwen.run_crafter", env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming run resume-me" in again.stderr
    after = db_sessions(db)
    assert sorted(s.seed for s in after) == list(range(1, 13))
    assert all(s.status != "incomplete" for s in after)
    assert set(finished) <= {s.session_id for s in after}  # kept, not replayed


def test_ctrl_c_keeps_finished_episodes_and_prints_how_to_resume(tmp_path):
    db = tmp_path / "traces.db"
    with ScriptedEndpoint(latency_s=0.1) as endpoint:
        env = rollout_env(tmp_path, crafter_model="test-model", crafter_episodes=10, crafter_max_steps=6,
                          crafter_concurrency=2, crafter_run_id="stop-me", openai_base_url=endpoint.base_url)
        process = subprocess.Popen([sys.executable, "-m", "synth_qwen.run_crafter"], env=env, cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until_finished(db, 2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    hint = "resume with: CRAFTER_RUN_ID=stop-me python -m synth_qwen.run_crafter   (same settings; finished episodes are kept)"
    assert hint in stderr.splitlines()  # one whole line, not wrapped at 80 columns
    statuses = [s.status for s in db_sessions(db)]
    assert statuses.count("incomplete") >= 1 and len(statuses) - statuses.count("incomplete") >= 2


def test_a_full_disk_is_one_line_with_the_resume_command_and_the_resume_finishes_the_run(tmp_path):
    """No file may grow past 1 MB (RLIMIT_FSIZE): the trace DB's next write fails a few episodes in,
    as on a full disk. One line says so and how to go on; that command, with room, plays the rest."""
    db = tmp_path / "traces.db"
    env = rollout_env(tmp_path, crafter_model="builtin:random", crafter_episodes=12, crafter_max_steps=30,
                      crafter_run_id="full-disk", crafter_lease_s=1)
    full = run_module_capped("synth_qwen.run_crafter", 1 << 20, env, tmp_path)
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
    [line] = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: the trace DB could not be written (disk I/O error): finished episodes are safe; "
                           "free space, then resume with: CRAFTER_RUN_ID=full-disk python -m synth_qwen.run_crafter")
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finished = {s.session_id for s in db_sessions(db) if s.status != "incomplete"}
    assert 1 <= len(finished) < 12

    again = run_module("synth_qwen.run_crafter", env, tmp_path)  # the printed command, with room to write
    assert again.returncode == 0, again.stderr
    after = db_sessions(db)
    assert sorted(s.seed for s in after) == list(range(1, 13)) and all(s.status != "incomplete" for s in after)
    assert finished <= {s.session_id for s in after}  # kept, not replayed


@pytest.mark.parametrize("name,value,expected", [
    ("crafter_episodes", "abc", "CRAFTER_EPISODES='abc' is invalid"),
    ("crafter_difficulty", "insane", "CRAFTER_DIFFICULTY='insane' is invalid: Input should be 'peaceful', 'easy', 'normal' or 'hard'"),
    ("openai_base_url", "localhost:8000/v1", "OPENAI_BASE_URL='localhost:8000/v1' is invalid: must start with http"),
    ("crafter_db_url", "mysql://x/y", "CRAFTER_DB_URL='mysql://x/y' is invalid"),
    ("crafter_model", "builtin:genius", "builtin policies are builtin:expert, builtin:random"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, name, value, expected):
    done = run(tmp_path, None, **{name: value})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and expected in done.stderr
    assert not (tmp_path / "traces.db").exists()


def test_api_key_never_reaches_the_db(tmp_path):
    secret = "sk-live-SUPERSECRET-123456"
    with ScriptedEndpoint() as endpoint:
        done = run(tmp_path, endpoint, openai_api_key=secret, crafter_episodes=2, crafter_max_steps=3)
    assert done.returncode == 0, done.stderr
    assert endpoint.headers[0]["Authorization"] == f"Bearer {secret}"  # it was really used
    for path in tmp_path.glob("traces.db*"):
        assert secret.encode() not in path.read_bytes()
    assert secret not in done.stdout + done.stderr


def test_text_mode_parses_action_names(tmp_path):
    with ScriptedEndpoint() as endpoint:
        done = run(tmp_path, endpoint, crafter_tool_mode="text", crafter_episodes=1, crafter_max_steps=4)
    assert done.returncode == 0, done.stderr
    [session] = db_sessions(tmp_path / "traces.db")
    assert session.invalid_turns == 0 and session.env_steps > 0 and session.tools is None
    assert "tools" not in endpoint.requests[0]


@pytest.mark.parametrize("tool_mode, prompt", [("tools", "full"), ("text", "compact")])
def test_requests_carry_the_system_prompt_and_interact_tool(tmp_path, tool_mode, prompt):
    with ScriptedEndpoint() as endpoint:
        done = run(tmp_path, endpoint, crafter_episodes=1, crafter_max_steps=2, crafter_actions_per_turn=3,
                   crafter_tool_mode=tool_mode, crafter_prompt=prompt)
    assert done.returncode == 0, done.stderr
    assert len(endpoint.requests) == 2
    for body in endpoint.requests:
        assert body["messages"][0] == {"role": "system", "content": action_schema.system_prompt(3, tool_mode, prompt)}
        assert body.get("tools") == ([action_schema.interact_tool(3)] if tool_mode == "tools" else None)


def test_builtin_random_is_traced_like_an_llm(tmp_path):
    done = run(tmp_path, None, crafter_model="builtin:random", crafter_episodes=2, crafter_max_steps=5)
    assert done.returncode == 0, done.stderr
    engine = tracing.open_db(f"sqlite:///{tmp_path / 'traces.db'}", create=False)
    session = tracing.sessions(engine)[0]
    assert session.policy == "builtin:random" and session.cost_usd == 0.0
    with engine.connect() as conn:
        assistant = tracing.session_turn_messages(conn, session.session_id)[0][1]
    call = assistant.tool_calls[0]
    assert call["type"] == "function" and call["function"]["name"] == "interact"
    assert json.loads(call["function"]["arguments"])["actions"]


def test_a_sampled_run_repeats_exactly_and_the_seed_is_part_of_the_rebuilt_request(tmp_path, server):
    """Sampled calls send seed = tracing.sampling_seed(CRAFTER_SAMPLING_SEED, episode seed, turn) and
    serve honours it: two runs of the same seeds (different run ids) reply alike, turn by turn."""
    def replies(run_id: str, **values) -> list:
        done = run(tmp_path, crafter_model="local/tiny-qwen3", openai_base_url=server.url + "/v1",
                   openai_api_key="x", crafter_run_id=run_id, crafter_temperature=1.0, crafter_max_steps=4,
                   crafter_tool_mode="text", crafter_prompt="compact", crafter_history=0, crafter_max_tokens=12,
                   crafter_request_timeout_s=60, crafter_max_invalid=100, **values)
        assert done.returncode == 0, done.stderr
        engine = tracing.open_db(f"sqlite:///{tmp_path / 'traces.db'}", create=False)
        with engine.connect() as conn:
            found = [(s.seed, turn, messages[1].content)
                     for s in tracing.sessions(engine) if s.run_id == run_id
                     for turn, messages in sorted(tracing.session_turn_messages(conn, s.session_id).items())]
            bodies = [body for s in tracing.sessions(engine) if s.run_id == run_id
                      for _, body in tracing.rebuild_requests(engine, s.session_id)]
        engine.dispose()
        return sorted(found), bodies

    first, bodies = replies("a")
    again, _ = replies("b")
    other, _ = replies("c", crafter_sampling_seed=7)
    assert len(first) == 2 * 4 and first == again
    assert other != first  # another seed base draws other replies
    assert {body["seed"] for body in bodies} == {tracing.sampling_seed(0, seed, turn) for seed, turn, _ in first}


def test_the_last_actions_line_shows_what_ran_last_and_the_teacher_can_still_relabel_the_episode(tmp_path):
    with ScriptedEndpoint() as endpoint:
        done = run(tmp_path, endpoint, crafter_tool_mode="text", crafter_prompt="compact", crafter_history=0,
                   crafter_episodes=1, crafter_max_steps=4, crafter_last_actions=True)
    assert done.returncode == 0, done.stderr
    engine = tracing.open_db(f"sqlite:///{tmp_path / 'traces.db'}", create=False)
    [session] = tracing.sessions(engine)
    with engine.connect() as conn:
        steps = tracing.session_steps(conn, session.session_id)
        events = tracing.session_events(conn, session.session_id)
        by_turn = tracing.session_turn_messages(conn, session.session_id)
    sent = [body["messages"][-1]["content"] for body in endpoint.requests]
    assert len(sent) == 4 and "Your last actions" not in sent[0]
    for turn in range(1, 4):
        ran = ", ".join(step.action for step in steps if step.turn == turn - 1)
        assert sent[turn].startswith(f"Your last actions: {ran}.\n")
    replies, divergence = relabel.teacher_replies(session, events, by_turn, steps)
    assert divergence is None and len(replies) == 4
