"""The v3 trace database: schema, one writer, readers. SQLite by default, PostgreSQL by URL.

One row per episode in `session_traces`; per env step in `session_timesteps`; per LM call in
`events`; the conversation in `messages` (each message stored once, per turn); `outcome_rewards`
per episode. The system prompt, tools schema and request parameters are stored once per
session, and each LM call records which earlier turns its prompt included, so the exact
request of every call can be rebuilt (`request_messages`).

An episode is written in one transaction when it ends. It is registered (status `incomplete`)
when it starts, so a crash leaves either nothing or an `incomplete` row — never a half episode.

Many processes can play one run (a fleet): the incomplete row is the claim on its seed. It names
its `owner` and carries a `heartbeat_at` the owner refreshes; the unique (run_id, seed) key and
`INSERT … ON CONFLICT DO NOTHING` decide who plays a seed, and a row whose heartbeat stopped (its
process was killed) or was released (interrupted) is taken over with `FOR UPDATE SKIP LOCKED`.
"""
from __future__ import annotations

import functools
import hashlib
import os
import socket
import sqlite3
import time
import uuid
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy import JSON, Boolean, Column, Float, ForeignKey, Integer, String, Table, Text

SCHEMA_VERSION = 4  # v2: session_traces.failure; v3: owner + heartbeat_at; v4: end_cause (older DBs are upgraded when opened)
STATUSES = ("completed", "died", "max_steps", "agent_error", "incomplete")
# Why an agent_error episode ended: its policy could not be called, or it kept answering invalidly.
CALL_FAILED, INVALID_TURNS = "call_failed", "invalid_turns"
FAILURES = (CALL_FAILED, INVALID_TURNS)
# Why a finished episode ended: what killed the player (crafter_env.DEATH_CAUSES), else its status
# says it: the turn budget ran out (max_steps), Crafter's own length cap (length), or agent_error.
END_CAUSE_OF_STATUS = {"max_steps": "max_steps", "completed": "length", "agent_error": "agent_error"}

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
    Column("failure", String(20)),  # one of FAILURES for agent_error episodes, else NULL
    Column("end_cause", String(20)),  # what killed the player, or END_CAUSE_OF_STATUS; NULL: unknown (v3 deaths)
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
    Column("owner", String(120)),  # the process playing an incomplete episode (host:pid:tag)
    Column("heartbeat_at", Float),  # its owner's last sign of life (epoch s); NULL: nobody holds it
    sa.UniqueConstraint("run_id", "seed", name="uq_session_run_seed"),  # one episode per seed: the claim
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


# ---------------------------------------------------------------------------------------
# Records: one typed row each, converted to and from the tables above

class Record:
    @classmethod
    def from_row(cls, row):
        """A row mapping -> record; a NULL where the field has a default (0, [], {}) reads as it."""
        values = {}
        for name, default in cls.null_defaults():
            value = row[name]
            values[name] = default() if value is None and default is not None else value
        return cls(**values)

    @classmethod
    @functools.cache
    def null_defaults(cls) -> tuple:
        """(field name, what a NULL reads as, or None to keep it None) per field; worked out once per
        class, since fields() costs more than reading the row (a 300-turn episode has ~2,000 rows)."""
        out = []
        for spec in fields(cls):
            if spec.default is MISSING and spec.default_factory is MISSING or spec.default is None:
                out.append((spec.name, None))
            elif spec.default is not MISSING:
                out.append((spec.name, lambda value=spec.default: value))  # immutable: dataclass defaults are
            else:
                out.append((spec.name, spec.default_factory))
        return tuple(out)

    def row(self) -> dict:
        return {spec.name: getattr(self, spec.name) for spec in fields(self)}


@dataclass(frozen=True)
class Message(Record):
    """One message of the conversation, stored once (position 0: the user observation, 1: the reply)."""
    turn: int
    position: int
    role: str
    content: str | None
    tool_calls: list | None = None
    tool_call_id: str | None = None

    def api(self) -> dict:
        """The exact dict sent to the endpoint (and written to SFT JSONL)."""
        message = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


@dataclass
class LMEvent(Record):
    """One LM call (or builtin decision); validity is filled in once the reply is checked."""
    turn: int
    event_type: str
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    latency_s: float | None
    finish_reason: str | None
    attempts: int | None
    history_turns: list | None
    created_at: str | None
    error: str | None = None
    valid: bool | None = None
    invalid_reason: str | None = None


@dataclass(frozen=True)
class Step(Record):
    """One env step."""
    turn: int
    step_index: int
    action: str
    reward: float
    new_achievements: list | None
    done_reason: str | None


@dataclass(frozen=True)
class Session(Record):
    """One episode (a session_traces row). Counts of an unfinished episode read as 0."""
    session_id: str
    experiment_id: str | None
    run_id: str
    seed: int
    difficulty: str | None
    policy: str | None
    model: str | None
    purpose: str | None
    status: str
    status_reason: str | None = None
    failure: str | None = None
    end_cause: str | None = None
    total_reward: float = 0.0
    achievements: list = field(default_factory=list)
    num_achievements: int = 0
    env_steps: int = 0
    turns: int = 0
    invalid_turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # unknown when the endpoint reported none and no prices were set
    system_prompt: str | None = None
    tools: list | None = None
    request_params: dict = field(default_factory=dict)
    started_at: str | None = None
    ended_at: str | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status != "incomplete"

    @property
    def never_reached_policy(self) -> bool:
        """Ended because its policy could not be called (not because it played badly)."""
        return self.failure == CALL_FAILED


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
    switch_to_wal(cursor)                        # also while one of them switches a new file to WAL
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def switch_to_wal(cursor, wait_s: float = 30.0) -> None:
    """SQLite can answer this pragma "database is locked" at once, without its busy handler (seen when
    a fleet process restarts beside writers after another was killed): retry it for as long as busy_timeout."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def open_db(db_url: str, create: bool = True) -> sa.Engine:
    """An engine with the schema in place. create=False: a missing DB is an error, not a new file."""
    path = sqlite_path(db_url)
    if path is not None:
        if not path.exists():
            if not create:
                raise no_file(path, db_url)
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(sqlalchemy_url(db_url))
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = sa.create_engine(sqlalchemy_url(db_url), pool_pre_ping=True)
    if not create:
        with engine.connect() as conn:
            require_trace_tables(conn, db_url)
    ensure_schema(engine, create)
    return engine


def no_file(path: Path, db_url: str) -> MissingDatabase:
    return MissingDatabase(f"trace database {path} does not exist (CRAFTER_DB_URL={db_url})")


def require_trace_tables(conn, db_url: str) -> None:
    if not sa.inspect(conn).has_table(session_traces.name):
        raise MissingDatabase(f"{db_url} has no trace tables (was it written by run_crafter?)")


def open_readonly(db_url: str) -> sa.Engine:
    """An engine that cannot write, for readers that must leave the DB as they found it (the view).
    SQLite: the file opened with mode=ro and query_only; PostgreSQL: every transaction read-only.
    Nothing is created or upgraded, so the schema must already be this code's version."""
    path = sqlite_path(db_url)
    if path is not None:
        if not path.exists():
            raise no_file(path, db_url)
        engine = sa.create_engine(f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro&uri=true")
        sa.event.listen(engine, "connect", _sqlite_readonly_pragmas)
    else:
        engine = sa.create_engine(sqlalchemy_url(db_url), pool_pre_ping=True,
                                  connect_args={"options": "-c default_transaction_read_only=on"})
    with engine.connect() as conn:
        require_trace_tables(conn, db_url)
        found = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
    if found != SCHEMA_VERSION:
        raise MissingDatabase(f"{db_url} has trace schema v{found}, this code reads v{SCHEMA_VERSION}: run a "
                              f"module that writes it once (e.g. python -m synth_qwen.filter_traces --dry-run) "
                              f"to upgrade it")
    return engine


def _sqlite_readonly_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # a writer may be busy: wait, as the writers do
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def ensure_schema(engine: sa.Engine, create: bool = True) -> None:
    for attempt in range(1, 6):  # a second process creating (or upgrading) the same DB makes a step fail: redo
        try:
            return create_schema(engine, create)
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError) as error:
            if attempt == 5 or "locked" in str(error):  # a lock outlived busy_timeout: not a racing creator
                raise


def create_schema(engine: sa.Engine, create: bool) -> None:
    """The tables (when `create`), then the version: stamp a new DB, bring an older one up to date."""
    if create:
        metadata.create_all(engine)
    with engine.begin() as conn:
        found = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
        if found is None:
            conn.execute(schema_version.insert().values(version=SCHEMA_VERSION, applied_at=utc_now()))
        elif found > SCHEMA_VERSION:
            raise RuntimeError(f"trace DB schema v{found} is newer than this code (v{SCHEMA_VERSION})")
        else:
            for version in range(found, SCHEMA_VERSION):  # each step stamps the version it reaches
                UPGRADES[version](conn)


def upgrade_v1_to_v2(conn) -> None:
    """v2 adds session_traces.failure, filled in from v1's reason texts (the only place they are read)."""
    conn.execute(sa.text("ALTER TABLE session_traces ADD COLUMN failure VARCHAR(20)"))
    agent_error = session_traces.c.status == "agent_error"
    conn.execute(session_traces.update().where(agent_error, session_traces.c.status_reason.startswith("LM call failed"))
                 .values(failure=CALL_FAILED))
    conn.execute(session_traces.update().where(agent_error, session_traces.c.failure.is_(None))
                 .values(failure=INVALID_TURNS))
    conn.execute(schema_version.insert().values(version=2, applied_at=utc_now()))


def upgrade_v2_to_v3(conn) -> None:
    """v3 adds the fleet lease: owner and heartbeat_at (NULL on old rows: any process may redo them)."""
    conn.execute(sa.text("ALTER TABLE session_traces ADD COLUMN owner VARCHAR(120)"))
    conn.execute(sa.text("ALTER TABLE session_traces ADD COLUMN heartbeat_at FLOAT"))
    conn.execute(schema_version.insert().values(version=3, applied_at=utc_now()))


def upgrade_v3_to_v4(conn) -> None:
    """v4 adds session_traces.end_cause. An old episode's status says why it ended unless it died:
    what killed the player was not recorded, so those stay NULL (unknown)."""
    conn.execute(sa.text("ALTER TABLE session_traces ADD COLUMN end_cause VARCHAR(20)"))
    for status, cause in END_CAUSE_OF_STATUS.items():
        conn.execute(session_traces.update().where(session_traces.c.status == status).values(end_cause=cause))
    conn.execute(schema_version.insert().values(version=4, applied_at=utc_now()))


UPGRADES = {1: upgrade_v1_to_v2, 2: upgrade_v2_to_v3, 3: upgrade_v3_to_v4}  # from version -> the step to the next


# ---------------------------------------------------------------------------------------
# Writing (one writer: the runner calls these from a single thread)

def insert_unless_present(engine_or_conn, table: Table):
    """INSERT … ON CONFLICT DO NOTHING in the database's own dialect: of many processes inserting the
    same key at once, exactly one row lands and nobody gets an error."""
    dialect = postgresql if engine_or_conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def ensure_experiment(engine: sa.Engine, run_id: str, purpose: str, config: dict) -> None:
    """The run's row; the first of many processes starting the same run writes it."""
    with engine.begin() as conn:
        conn.execute(insert_unless_present(conn, experiments).values(
            id=run_id, purpose=purpose, created_at=utc_now(), config=config))


def new_owner() -> str:
    """This process, as the owner of the episodes it plays (the tag tells a restarted pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:4]}"


@dataclass(frozen=True)
class SeedStates:
    """Where a run's seeds in [first, last] stand, seen by `owner` at one moment."""
    finished: set[int]
    stale: set[int]  # incomplete, and nobody heartbeats them: whoever claims them redoes them
    held: dict[int, str]  # incomplete and alive in another process: seed -> owner
    mine: set[int]


def seed_states(conn, run_id: str, first: int, last: int, owner: str = "", lease_s: float = 0.0) -> SeedStates:
    cutoff = time.time() - lease_s
    states = SeedStates(set(), set(), {}, set())
    rows = conn.execute(sa.select(session_traces.c.seed, session_traces.c.status, session_traces.c.owner,
                                  session_traces.c.heartbeat_at)
                        .where(session_traces.c.run_id == run_id, session_traces.c.seed.between(first, last)))
    for row in rows:
        if row.status != "incomplete":
            states.finished.add(row.seed)
        elif row.owner == owner:
            states.mine.add(row.seed)
        elif row.heartbeat_at is None or row.heartbeat_at < cutoff:
            states.stale.add(row.seed)
        else:
            states.held[row.seed] = row.owner
    return states


def claim_seed(engine: sa.Engine, row: dict) -> bool:
    """Register this episode as ours, unless its seed already has an episode in the run (finished,
    or claimed by a process that was faster): INSERT … ON CONFLICT DO NOTHING on the unique
    (run_id, seed) key picks exactly one winner among any number of processes."""
    with engine.begin() as conn:
        return register_session(conn, row)


def take_over_stale(engine: sa.Engine, run_id: str, first: int, last: int, owner: str, lease_s: float,
                    row_for) -> tuple[dict | None, SeedStates]:
    """Claim the first seed in [first, last] whose incomplete episode nobody heartbeats (its process was
    killed, or released it on an interrupt): (the row registered for it, row_for(seed), or None; the
    states seen before). The row is
    locked with FOR UPDATE SKIP LOCKED on PostgreSQL, so claimers pass each other by; it is deleted
    only while still stale (an incomplete episode has no child rows yet) and registered anew."""
    with engine.begin() as conn:
        states = seed_states(conn, run_id, first, last, owner, lease_s)
        if not states.stale:
            return None, states
        incomplete = session_traces.c.status == "incomplete"
        not_alive = sa.or_(session_traces.c.heartbeat_at.is_(None),
                           session_traces.c.heartbeat_at < time.time() - lease_s)
        stale = conn.execute(sa.select(session_traces.c.session_id, session_traces.c.seed).where(
            session_traces.c.run_id == run_id, session_traces.c.seed.between(first, last), incomplete, not_alive,
            session_traces.c.owner.is_distinct_from(owner))
            .order_by(session_traces.c.seed).limit(1).with_for_update(skip_locked=True)).first()
        if stale and conn.execute(session_traces.delete().where(
                session_traces.c.session_id == stale.session_id, incomplete, not_alive)).rowcount == 1:
            row = row_for(stale.seed)
            if register_session(conn, row):
                return row, states
        return None, states


def heartbeat(engine: sa.Engine, session_ids: Iterable[str]) -> None:
    """This process is still playing these episodes."""
    ids = list(session_ids)
    if ids:
        with engine.begin() as conn:
            conn.execute(session_traces.update().where(session_traces.c.session_id.in_(ids),
                                                       session_traces.c.status == "incomplete")
                         .values(heartbeat_at=time.time()))


def register_session(conn, row: dict) -> bool:
    """The episode exists from its first moment, as `incomplete`, with a fresh heartbeat. False when
    its seed already has an episode in this run (another process was faster)."""
    inserted = conn.execute(insert_unless_present(conn, session_traces).values(
        status="incomplete", started_at=utc_now(), heartbeat_at=time.time(), **row)
        .returning(session_traces.c.session_id)).first()  # (rowcount reads -1 here on PostgreSQL)
    return inserted is not None


def finish_session(engine: sa.Engine, session_id: str, summary: dict, timesteps: list[Step],
                   lm_events: list[LMEvent], turn_messages: list[Message]) -> bool:
    """Everything the episode produced, and its final status, in one transaction. False (nothing
    written) when the episode is no longer ours: our heartbeat stopped long enough for another
    process to take the seed over, and its copy is the one that counts."""
    with engine.begin() as conn:
        ours = conn.execute(session_traces.update().where(session_traces.c.session_id == session_id,
                                                          session_traces.c.status == "incomplete")
                            .values(ended_at=utc_now(), heartbeat_at=None, **summary)).rowcount == 1
        if not ours:
            return False
        for table, records in ((session_timesteps, timesteps), (events, lm_events), (messages, turn_messages)):
            if records:
                conn.execute(table.insert(), [dict(record.row(), session_id=session_id) for record in records])
        conn.execute(outcome_rewards.insert().values(
            session_id=session_id, total_reward=summary["total_reward"],
            num_achievements=summary["num_achievements"], achievements=summary["achievements"]))
    return True


def mark_incomplete(engine: sa.Engine, session_ids: Iterable[str], reason: str) -> None:
    """Say why these episodes stopped, and release them (no heartbeat): a rerun, or another process
    of the fleet, redoes them at once. One whose final write landed while the run was being
    interrupted is finished, and stays so."""
    ids = list(session_ids)
    if ids:
        with engine.begin() as conn:
            conn.execute(session_traces.update().where(session_traces.c.session_id.in_(ids),
                                                       session_traces.c.status == "incomplete")
                         .values(status_reason=reason, ended_at=utc_now(), heartbeat_at=None))


# ---------------------------------------------------------------------------------------
# Reading

def request_messages(system_prompt: str, by_turn: dict[int, list[Message]], turn: int,
                     history_turns: list[int]) -> list[dict]:
    """The messages of the call made on `turn`: system, each history turn whole, the observation."""
    built = [{"role": "system", "content": system_prompt}]
    for earlier in history_turns:
        built.extend(message.api() for message in by_turn[earlier])
    built.append(by_turn[turn][0].api())
    return built


def sessions(engine: sa.Engine, where=None) -> list[Session]:
    """Sessions in the order they started."""
    query = sa.select(session_traces)
    if where is not None:
        query = query.where(where)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(session_traces.c.started_at))
        return [Session.from_row(row._mapping) for row in rows]


def session_turn_messages(conn, session_id: str) -> dict[int, list[Message]]:
    by_turn: dict[int, list[Message]] = {}
    rows = conn.execute(sa.select(messages).where(messages.c.session_id == session_id)
                        .order_by(messages.c.turn, messages.c.position))
    for row in rows:
        by_turn.setdefault(row.turn, []).append(Message.from_row(row._mapping))
    return by_turn


def session_events(conn, session_id: str) -> list[LMEvent]:
    rows = conn.execute(sa.select(events).where(events.c.session_id == session_id).order_by(events.c.turn))
    return [LMEvent.from_row(row._mapping) for row in rows]


def session_steps(conn, session_id: str) -> list[Step]:
    """The episode's env steps in step order."""
    rows = conn.execute(sa.select(session_timesteps).where(session_timesteps.c.session_id == session_id)
                        .order_by(session_timesteps.c.step_index))
    return [Step.from_row(row._mapping) for row in rows]


def sampling_seed(base: int, episode_seed: int, turn: int) -> int:
    """The `seed` a sampled LM call sends (CRAFTER_SAMPLING_SEED=base): fixed by the episode and turn."""
    digest = hashlib.sha256(f"{base}:{episode_seed}:{turn}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def rebuild_requests(engine: sa.Engine, session_id: str) -> Iterator[tuple[int, dict]]:
    """(turn, request body) for every LM call of the session, rebuilt from the DB alone."""
    with engine.connect() as conn:
        session = Session.from_row(conn.execute(sa.select(session_traces).where(
            session_traces.c.session_id == session_id)).one()._mapping)
        by_turn = session_turn_messages(conn, session_id)
        for event in session_events(conn, session_id):
            body = dict(session.request_params)
            body["messages"] = request_messages(session.system_prompt, by_turn, event.turn, event.history_turns or [])
            if session.tools:
                body["tools"] = session.tools
            if session.metadata.get("sampling_seed") is not None:
                body["seed"] = sampling_seed(session.metadata["sampling_seed"], session.seed, event.turn)
            yield event.turn, body

