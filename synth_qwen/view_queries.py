"""What the trace browser reads: the trace DB (every query names its columns; ORDER BY + LIMIT/OFFSET
keep pages small) and the filter_traces JSONL whose turns became training examples."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from synth_qwen import tracing
from synth_qwen.tracing import LMEvent, Message, Session, Step, session_traces as st

RUN_COLUMNS = (st.c.run_id, st.c.model, st.c.difficulty, st.c.purpose, st.c.status, st.c.achievements,
               st.c.started_at)
EPISODE_COLUMNS = (st.c.session_id, st.c.seed, st.c.status, st.c.failure, st.c.achievements,
                   st.c.num_achievements, st.c.total_reward, st.c.turns, st.c.invalid_turns, st.c.env_steps,
                   st.c.prompt_tokens, st.c.completion_tokens, st.c.cost_usd)
TOKENS = sa.func.coalesce(st.c.prompt_tokens, 0) + sa.func.coalesce(st.c.completion_tokens, 0)
SORTS = {"seed": st.c.seed, "status": st.c.status, "achievements": st.c.num_achievements,
         "reward": st.c.total_reward, "turns": st.c.turns, "invalid": st.c.invalid_turns, "tokens": TOKENS,
         "cost": st.c.cost_usd}
PAIR_FIELDS = ("session_id", "status", "num_achievements", "achievements", "total_reward", "turns")


@dataclass
class RunRow:
    run_id: str
    model: str
    difficulty: str
    purpose: str
    started_at: str
    statuses: dict
    episodes: list  # finished episodes' achievements

    @property
    def count(self) -> int:
        return sum(self.statuses.values())


def runs(engine: sa.Engine, model: str | None, purpose: str | None) -> list[RunRow]:
    """Every run (newest first) with its status counts and finished episodes' achievements."""
    query = sa.select(*RUN_COLUMNS)
    if model:
        query = query.where(st.c.model == model)
    if purpose:
        query = query.where(st.c.purpose == purpose)
    found: dict[str, RunRow] = {}
    with engine.connect() as conn:
        for row in conn.execute(query):
            run = found.setdefault(row.run_id, RunRow(row.run_id, row.model, row.difficulty, row.purpose,
                                                      row.started_at or "", {}, []))
            run.statuses[row.status] = run.statuses.get(row.status, 0) + 1
            run.started_at = min(run.started_at, row.started_at or run.started_at)
            if row.status != "incomplete":
                run.episodes.append(row.achievements or [])
    return sorted(found.values(), key=lambda run: run.started_at, reverse=True)


def distinct(engine: sa.Engine, column) -> list[str]:
    with engine.connect() as conn:
        return sorted(v for (v,) in conn.execute(sa.select(column).distinct()) if v is not None)


def run_exists(engine: sa.Engine, run_id: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.select(st.c.session_id).where(st.c.run_id == run_id).limit(1)).first() is not None


def run_episodes(engine: sa.Engine, run_id: str) -> list:
    """(status, achievements) of every episode of the run: what the summary and the chart need."""
    with engine.connect() as conn:
        return list(conn.execute(sa.select(st.c.status, st.c.achievements, st.c.total_reward, st.c.turns,
                                           st.c.invalid_turns).where(st.c.run_id == run_id)))


def episode_rows(engine: sa.Engine, run_id: str, sort: str, descending: bool, page: int, per: int) -> list:
    order = SORTS[sort].desc() if descending else SORTS[sort].asc()
    query = (sa.select(*EPISODE_COLUMNS).where(st.c.run_id == run_id).order_by(order, st.c.seed)
             .limit(per).offset((page - 1) * per))
    with engine.connect() as conn:
        return list(conn.execute(query))


@dataclass
class Episode:
    session: Session
    by_turn: dict[int, list[Message]]
    events: dict[int, LMEvent]
    steps: list[Step]


def load_session(engine: sa.Engine, session_id: str) -> Session | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(st).where(st.c.session_id == session_id)).first()
    return None if row is None else Session.from_row(row._mapping)


def load_episode(engine: sa.Engine, session: Session) -> Episode:
    """The rest of the episode whose row `session` is."""
    with engine.connect() as conn:
        return Episode(session, tracing.session_turn_messages(conn, session.session_id),
                       {e.turn: e for e in tracing.session_events(conn, session.session_id)},
                       tracing.session_steps(conn, session.session_id))


def same_seeds(run_b: str):
    """Episodes (a) joined to run B's episodes (b) on the seed: (a, b, the join); the caller picks a's run."""
    a, b = st.alias("a"), st.alias("b")
    return a, b, sa.join(a, b, sa.and_(a.c.seed == b.c.seed, b.c.run_id == run_b))


def pairs_page(engine: sa.Engine, run_a: str, run_b: str, sort: str, page: int, per: int) -> list:
    a, b, joined = same_seeds(run_b)
    difference = b.c.num_achievements - a.c.num_achievements
    order = {"seed": (a.c.seed,), "diff": (difference.desc(), a.c.seed), "-diff": (difference.asc(), a.c.seed)}[sort]
    query = (sa.select(a.c.seed, *(c.label(f"a_{c.name}") for c in a.c if c.name in PAIR_FIELDS),
                       *(c.label(f"b_{c.name}") for c in b.c if c.name in PAIR_FIELDS))
             .select_from(joined).where(a.c.run_id == run_a).order_by(*order).limit(per).offset((page - 1) * per))
    with engine.connect() as conn:
        return list(conn.execute(query))


def pair_count(engine: sa.Engine, run_a: str, run_b: str) -> int:
    a, _, joined = same_seeds(run_b)
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(joined).where(a.c.run_id == run_a)).scalar()


def paired_achievements(engine: sa.Engine, run_a: str, run_b: str) -> list[tuple[list, list]]:
    """(a's achievements, b's achievements) per seed both runs finished."""
    a, b, joined = same_seeds(run_b)
    query = (sa.select(a.c.achievements, b.c.achievements.label("b_achievements")).select_from(joined)
             .where(a.c.run_id == run_a, a.c.status != "incomplete", b.c.status != "incomplete"))
    with engine.connect() as conn:
        return [(row[0] or [], row[1] or []) for row in conn.execute(query)]


# ---------------------------------------------------------------------------------------
# Training examples: which turns of which episodes a filter_traces JSONL holds

class SftMarks:
    """(session_id, turn) -> how the turn became an example; read again when the file changes."""

    def __init__(self, path: Path | None):
        self.path, self.mtime, self.turns, self.whole = path, None, {}, set()

    def refresh(self) -> None:
        if self.path is None or not self.path.exists() or self.path.stat().st_mtime == self.mtime:
            return
        mtime = self.path.stat().st_mtime
        turns, whole = {}, set()
        with self.path.open() as lines:
            for line in lines:
                meta = example_metadata(line)
                if "session_id" not in meta:
                    continue
                if "turn" in meta:  # turn mode: one example per turn (relabelled ones say by whom)
                    turns[(meta["session_id"], meta["turn"])] = (
                        f"SFT example, relabelled by {meta['relabelled_by']}" if meta.get("relabelled_by")
                        else "SFT example")
                else:  # episode mode: the whole conversation is one example
                    whole.add(meta["session_id"])
        self.turns, self.whole = turns, whole
        self.mtime = mtime  # last: whoever sees the new mtime (view's cache key) sees the new marks

    def mark(self, session_id: str, turn: int) -> str | None:
        if session_id in self.whole:
            return "SFT example (whole episode)"
        return self.turns.get((session_id, turn))


def example_metadata(line: str) -> dict:
    """A JSONL line's metadata. filter_traces writes it last: parse only that, the messages are long."""
    key = ',"metadata":'
    start = line.rfind(key)
    if start >= 0:
        try:
            found = json.loads(line[start + len(key):].rstrip()[:-1])
            return found if isinstance(found, dict) else {}
        except json.JSONDecodeError:
            pass  # not the last key (another writer): read the whole line
    try:
        found = json.loads(line)
    except json.JSONDecodeError:
        return {}
    metadata = found.get("metadata") if isinstance(found, dict) else None
    return metadata if isinstance(metadata, dict) else {}
