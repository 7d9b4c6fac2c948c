"""The v3 trace database: schema, one writer, readers. SQLite by default, PostgreSQL by URL.

One row per episode in `session_traces`; per env step in `session_timesteps`; per LM call in
`events`; the conversation in `messages` (each message stored once, per turn); `outcome_rewards`
per episode. The system prompt, tools schema and request parameters are stored once per
session, and each LM call records which earlier turns its prompt included, so the exact
request of every call can be rebuilt (`request_messages`).

An episode is written in one transaction when it ends. It is registered (status `incomplete`)
when it starts, so a crash leaves either nothing or an `incomplete` row — never a half episode.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy import JSON, Boolean, Column, Float, ForeignKey, Integer, String, Table, Text

SCHEMA_VERSION = 1
STATUSES = ("completed", "died", "max_steps", "agent_error", "incomplete")

metadata = sa.MetaData()

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", String(40)),
)

experiments = Table(  # one per run id
    "experiments", metadata,
    Column("id", String(200), primary_key=True),
    Column("purpose", String(20)),
    Column("created_at", String(40)),
    Column("config", JSON),
)

session_traces = Table(  # one per episode
    "session_traces", metadata,
    Column("session_id", String(64), primary_key=True),
    Column("experiment_id", String(200), ForeignKey("experiments.id"), index=True),
    Column("run_id", String(200), nullable=False),
    Column("seed", Integer, nullable=False),
    Column("difficulty", String(20)),
    Column("policy", String(40)),
    Column("model", String(300), index=True),
    Column("purpose", String(20), index=True),
    Column("status", String(20), index=True),
    Column("status_reason", Text),
    Column("total_reward", Float),
    Column("achievements", JSON),
    Column("num_achievements", Integer),
    Column("env_steps", Integer),
    Column("turns", Integer),
    Column("invalid_turns", Integer),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("cost_usd", Float),  # NULL when unknown (endpoint reported none and no prices set)
    Column("system_prompt", Text),
    Column("tools", JSON),
    Column("request_params", JSON),  # model, temperature, max_tokens, tool_choice, history, …
    Column("started_at", String(40)),
    Column("ended_at", String(40)),
    Column("metadata", JSON),
    sa.UniqueConstraint("run_id", "seed", name="uq_session_run_seed"),
)

session_timesteps = Table(  # one per env step
    "session_timesteps", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), ForeignKey("session_traces.session_id"), index=True),
    Column("turn", Integer, nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("action", String(40), nullable=False),
    Column("reward", Float, nullable=False),
    Column("new_achievements", JSON),
    Column("done_reason", String(20)),
)

events = Table(  # one per LM call (or builtin policy decision)
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), ForeignKey("session_traces.session_id"), index=True),
    Column("turn", Integer, nullable=False),
    Column("event_type", String(20), nullable=False),
    Column("model", String(300)),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("cost_usd", Float),
    Column("latency_s", Float),
    Column("finish_reason", String(40)),
    Column("valid", Boolean),
    Column("invalid_reason", Text),
    Column("error", Text),
    Column("attempts", Integer),
    Column("history_turns", JSON),  # earlier turns whose messages were in this call's prompt
    Column("created_at", String(40)),
)

messages = Table(  # the conversation, each message once
    "messages", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), ForeignKey("session_traces.session_id"), index=True),
    Column("turn", Integer, nullable=False),
    Column("position", Integer, nullable=False),  # 0 = user observation, 1 = assistant, 2.. = results
    Column("role", String(20), nullable=False),
    Column("content", Text),
    Column("tool_calls", JSON),
    Column("tool_call_id", String(80)),
)

outcome_rewards = Table(
    "outcome_rewards", metadata,
    Column("session_id", String(64), ForeignKey("session_traces.session_id"), primary_key=True),
    Column("total_reward", Float),
    Column("num_achievements", Integer),
    Column("achievements", JSON),
)

CHILD_TABLES = (outcome_rewards, messages, events, session_timesteps)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------------------
# Connecting

class MissingDatabase(Exception):
    pass


def sqlalchemy_url(db_url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if db_url.startswith(prefix):
            return "postgresql+psycopg://" + db_url[len(prefix):]
    return db_url


def sqlite_path(db_url: str) -> Path | None:
    return Path(db_url[len("sqlite:///"):]) if db_url.startswith("sqlite:///") else None


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # first: other processes (a reader, a second run) wait,
    cursor.execute("PRAGMA journal_mode=WAL")    # also while one of them switches a new file to WAL
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def open_db(db_url: str, create: bool = True) -> sa.Engine:
    """An engine with the schema in place. create=False: a missing DB is an error, not a new file."""
    path = sqlite_path(db_url)
    if path is not None:
        if not path.exists():
            if not create:
                raise MissingDatabase(f"trace database {path} does not exist (CRAFTER_DB_URL={db_url})")
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(sqlalchemy_url(db_url))
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = sa.create_engine(sqlalchemy_url(db_url), pool_pre_ping=True)
    if create:
        ensure_schema(engine)
    else:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("session_traces"):
                raise MissingDatabase(f"{db_url} has no trace tables (was it written by run_crafter?)")
    return engine


def ensure_schema(engine: sa.Engine) -> None:
    for attempt in range(1, 6):  # a second process creating the same new DB makes a step fail: redo
        try:
            return create_schema(engine)
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError) as error:
            if attempt == 5 or "locked" in str(error):  # a lock outlived busy_timeout: not a racing creator
                raise


def create_schema(engine: sa.Engine) -> None:
    metadata.create_all(engine)
    with engine.begin() as conn:
        found = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
        if found is None:
            conn.execute(schema_version.insert().values(version=SCHEMA_VERSION, applied_at=utc_now()))
        elif found > SCHEMA_VERSION:
            raise RuntimeError(f"trace DB schema v{found} is newer than this code (v{SCHEMA_VERSION})")


# ---------------------------------------------------------------------------------------
# Writing (one writer: the runner calls these from a single thread)

def ensure_experiment(engine: sa.Engine, run_id: str, purpose: str, config: dict) -> None:
    with engine.begin() as conn:
        exists = conn.execute(sa.select(experiments.c.id).where(experiments.c.id == run_id)).first()
        if not exists:
            conn.execute(experiments.insert().values(
                id=run_id, purpose=purpose, created_at=utc_now(), config=config))


def finished_seeds(engine: sa.Engine, run_id: str) -> set[int]:
    """Seeds of this run whose episodes ended (any status but incomplete)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(session_traces.c.seed).where(
            session_traces.c.run_id == run_id, session_traces.c.status != "incomplete"))
        return {row.seed for row in rows}


def drop_incomplete(engine: sa.Engine, run_id: str) -> int:
    """Remove this run's incomplete episodes (children first) so they can be redone."""
    with engine.begin() as conn:
        ids = [row.session_id for row in conn.execute(sa.select(session_traces.c.session_id).where(
            session_traces.c.run_id == run_id, session_traces.c.status == "incomplete"))]
        delete_sessions(conn, ids)
        return len(ids)


def delete_sessions(conn, session_ids: list[str]) -> None:
    if not session_ids:
        return
    for table in CHILD_TABLES:
        conn.execute(table.delete().where(table.c.session_id.in_(session_ids)))
    conn.execute(session_traces.delete().where(session_traces.c.session_id.in_(session_ids)))


def register_session(engine: sa.Engine, row: dict) -> None:
    """The episode exists from its first moment, as `incomplete`."""
    with engine.begin() as conn:
        conn.execute(session_traces.insert().values(status="incomplete", started_at=utc_now(), **row))


def finish_session(engine: sa.Engine, session_id: str, summary: dict, timesteps: list[dict],
                   lm_events: list[dict], turn_messages: list[dict]) -> None:
    """Everything the episode produced, and its final status, in one transaction."""
    with engine.begin() as conn:
        for table, rows in ((session_timesteps, timesteps), (events, lm_events), (messages, turn_messages)):
            if rows:
                conn.execute(table.insert(), [dict(row, session_id=session_id) for row in rows])
        conn.execute(outcome_rewards.insert().values(
            session_id=session_id, total_reward=summary["total_reward"],
            num_achievements=summary["num_achievements"], achievements=summary["achievements"]))
        conn.execute(session_traces.update().where(session_traces.c.session_id == session_id)
                     .values(ended_at=utc_now(), **summary))


def mark_incomplete(engine: sa.Engine, session_ids: Iterable[str], reason: str) -> None:
    ids = list(session_ids)
    if ids:
        with engine.begin() as conn:
            conn.execute(session_traces.update().where(session_traces.c.session_id.in_(ids))
                         .values(status="incomplete", status_reason=reason, ended_at=utc_now()))


# ---------------------------------------------------------------------------------------
# Reading

def message_dict(row) -> dict:
    """A stored message as the exact dict sent to the endpoint (and written to SFT JSONL)."""
    message = {"role": row["role"], "content": row["content"]}
    if row.get("tool_calls"):
        message["tool_calls"] = row["tool_calls"]
    if row.get("tool_call_id"):
        message["tool_call_id"] = row["tool_call_id"]
    return message


def request_messages(system_prompt: str, by_turn: dict[int, list[dict]], turn: int,
                     history_turns: list[int]) -> list[dict]:
    """The messages of the call made on `turn`: system, each history turn whole, the observation."""
    built = [{"role": "system", "content": system_prompt}]
    for earlier in history_turns:
        built.extend(message_dict(m) for m in by_turn[earlier])
    built.append(message_dict(by_turn[turn][0]))
    return built


def sessions(engine: sa.Engine, where=None) -> list[dict]:
    query = sa.select(session_traces)
    if where is not None:
        query = query.where(where)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query.order_by(session_traces.c.started_at))]


def session_turn_messages(conn, session_id: str) -> dict[int, list[dict]]:
    by_turn: dict[int, list[dict]] = {}
    rows = conn.execute(sa.select(messages).where(messages.c.session_id == session_id)
                        .order_by(messages.c.turn, messages.c.position))
    for row in rows:
        by_turn.setdefault(row.turn, []).append(dict(row._mapping))
    return by_turn


def session_events(conn, session_id: str) -> list[dict]:
    rows = conn.execute(sa.select(events).where(events.c.session_id == session_id).order_by(events.c.turn))
    return [dict(row._mapping) for row in rows]


def session_steps(conn, session_id: str) -> list[dict]:
    """The episode's env steps (session_timesteps rows) in step order."""
    rows = conn.execute(sa.select(session_timesteps).where(session_timesteps.c.session_id == session_id)
                        .order_by(session_timesteps.c.step_index))
    return [dict(row._mapping) for row in rows]


def rebuild_requests(engine: sa.Engine, session_id: str) -> Iterator[tuple[int, dict]]:
    """(turn, request body) for every LM call of the session, rebuilt from the DB alone."""
    with engine.connect() as conn:
        session = conn.execute(sa.select(session_traces).where(
            session_traces.c.session_id == session_id)).one()._mapping
        by_turn = session_turn_messages(conn, session_id)
        for event in session_events(conn, session_id):
            body = dict(session["request_params"] or {})
            body["messages"] = request_messages(session["system_prompt"], by_turn, event["turn"],
                                                event["history_turns"] or [])
            if session["tools"]:
                body["tools"] = session["tools"]
            yield event["turn"], body

