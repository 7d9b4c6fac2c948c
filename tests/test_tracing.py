"""The trace DB: typed records in and out, the schema version, and v1 databases upgraded on open."""
import sqlite3

import sqlalchemy as sa

from synth_qwen import tracing
from synth_qwen.tracing import LMEvent, Message, Session, Step


def register(engine, session_id="sess_a", seed=1, **values):
    tracing.ensure_experiment(engine, "run", "rollout", {"note": "test"})
    tracing.claim_seed(engine, dict({"session_id": session_id, "experiment_id": "run", "run_id": "run",
                                           "seed": seed, "model": "m", "purpose": "rollout",
                                           "system_prompt": "sys"}, **values))


def test_records_round_trip_through_the_tables(tmp_path):
    engine = tracing.open_db(f"sqlite:///{tmp_path / 't.db'}")
    register(engine, tools=[{"type": "function"}], request_params={"model": "m"})
    call = {"id": "c1", "type": "function", "function": {"name": "interact", "arguments": "{}"}}
    messages = [Message(0, 0, "user", "obs 0"), Message(0, 1, "assistant", None, [call]),
                Message(0, 2, "tool", "ok", tool_call_id="c1"), Message(1, 0, "user", "obs 1")]
    event = LMEvent(turn=0, event_type="lm_call", model="m", prompt_tokens=3, completion_tokens=None,
                    cost_usd=None, latency_s=0.5, finish_reason="tool_calls", attempts=1, history_turns=[],
                    created_at="t", valid=True)
    steps = [Step(0, 1, "do", 1.0, ["collect_wood"], None)]
    summary = {"status": "max_steps", "failure": None, "total_reward": 1.0, "achievements": ["collect_wood"],
               "num_achievements": 1, "env_steps": 1, "turns": 1, "invalid_turns": 0,
               "prompt_tokens": 3, "completion_tokens": 0, "cost_usd": None}
    tracing.finish_session(engine, "sess_a", summary, steps, [event], messages)
    with engine.connect() as conn:
        assert tracing.session_events(conn, "sess_a") == [event]
        assert tracing.session_steps(conn, "sess_a") == steps
        by_turn = tracing.session_turn_messages(conn, "sess_a")
    assert by_turn == {0: messages[:3], 1: messages[3:]}
    session, = tracing.sessions(engine)
    assert isinstance(session, Session) and session.achievements == ["collect_wood"] and session.cost_usd is None
    # the request of turn 1 with turn 0 as history: exactly what an endpoint was sent
    assert tracing.request_messages("sys", by_turn, 1, [0]) == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "obs 0"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "ok", "tool_call_id": "c1"}, {"role": "user", "content": "obs 1"}]


def test_an_unfinished_session_reads_with_zero_counts_not_none(tmp_path):
    engine = tracing.open_db(f"sqlite:///{tmp_path / 't.db'}")
    register(engine)
    session, = tracing.sessions(engine)
    assert session.status == "incomplete" and not session.finished
    assert (session.turns, session.total_reward, session.achievements, session.metadata) == (0, 0.0, [], {})
    assert session.cost_usd is None  # unknown stays unknown


def test_a_v1_database_is_upgraded_step_by_step_and_its_failures_classified(tmp_path):
    path = tmp_path / "old.db"
    engine = tracing.open_db(f"sqlite:///{path}")
    for index, reason in enumerate(["LM call failed on turn 0: HTTP 500", "3 invalid turns in a row; last: x"]):
        register(engine, f"sess_{index}", seed=index)
        with engine.begin() as conn:
            conn.execute(tracing.session_traces.update().where(tracing.session_traces.c.session_id == f"sess_{index}")
                         .values(status="agent_error", status_reason=reason))
    engine.dispose()
    with sqlite3.connect(path) as db:  # turn it into what v1 wrote: no failure, owner, heartbeat, end cause; version 1
        for column in ("failure", "owner", "heartbeat_at", "end_cause"):
            db.execute(f"ALTER TABLE session_traces DROP COLUMN {column}")
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version (version) VALUES (1)")
    engine = tracing.open_db(f"sqlite:///{path}", create=False)
    failures = {s.session_id: s.failure for s in tracing.sessions(engine)}
    assert failures == {"sess_0": tracing.CALL_FAILED, "sess_1": tracing.INVALID_TURNS}
    assert tracing.sessions(engine)[0].never_reached_policy and not tracing.sessions(engine)[1].never_reached_policy
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.max(tracing.schema_version.c.version))).scalar() == tracing.SCHEMA_VERSION


def test_a_v3_database_gets_the_end_causes_its_statuses_tell(tmp_path):
    """v4 adds end_cause: an old episode's status says why it ended, except what killed a player
    (v3 did not record it: unknown)."""
    path = tmp_path / "v3.db"
    engine = tracing.open_db(f"sqlite:///{path}")
    statuses = ["died", "max_steps", "completed", "agent_error", "incomplete"]
    for seed, status in enumerate(statuses):
        register(engine, f"sess_{status}", seed=seed)
        with engine.begin() as conn:
            conn.execute(tracing.session_traces.update().where(tracing.session_traces.c.seed == seed)
                         .values(status=status))
    engine.dispose()
    with sqlite3.connect(path) as db:  # what v3 wrote: no end_cause column; version 3
        db.execute("ALTER TABLE session_traces DROP COLUMN end_cause")
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version (version) VALUES (3)")
    engine = tracing.open_db(f"sqlite:///{path}", create=False)
    causes = {s.status: s.end_cause for s in tracing.sessions(engine)}
    assert causes == {"died": None, "max_steps": "max_steps", "completed": "length", "agent_error": "agent_error",
                      "incomplete": None}
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.max(tracing.schema_version.c.version))).scalar() == 4


def test_an_interrupt_never_turns_a_finished_episode_back_into_an_incomplete_one(tmp_path):
    """The final write of an episode can land while the run is being interrupted: it stays finished."""
    engine = tracing.open_db(f"sqlite:///{tmp_path / 't.db'}")
    register(engine, "sess_done", seed=1)
    register(engine, "sess_cut", seed=2)
    summary = {"status": "died", "total_reward": 0.0, "achievements": [], "num_achievements": 0, "env_steps": 0,
               "turns": 0, "invalid_turns": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
    tracing.finish_session(engine, "sess_done", summary, [], [], [])
    tracing.mark_incomplete(engine, ["sess_done", "sess_cut"], "interrupted")
    found = {s.session_id: (s.status, s.status_reason) for s in tracing.sessions(engine)}
    assert found == {"sess_done": ("died", None), "sess_cut": ("incomplete", "interrupted")}
