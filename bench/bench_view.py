"""The trace browser on a 10,000-episode DB: page timings measured over HTTP against the real server.

Builds the DB from real play: run_crafter plays a few 30-turn episodes (builtin:random and
builtin:expert, easy) and one 300-turn builtin:expert episode (peaceful, so it lives to the end);
the 30-turn episodes are then cloned, every row of them (session, steps, LM events, messages,
outcome), with new session ids and seeds, into two runs of 5,000 episodes on the same seeds
(`big-random`, `big-expert`). A clone keeps its source's actions, so its frames do not replay
(only the played episodes' frames are timed).

Then `python -m synth_qwen.view` serves it and each page is fetched with aiohttp: the first fetch
(cold) and the median of the next five.

    python bench/bench_view.py [--clones 5000] [--keep DIR]
"""
import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from synth_qwen import tracing  # noqa: E402
from synth_qwen.tracing import session_traces as st  # noqa: E402
from browser import Browser, chromium_path  # noqa: E402
from view_helpers import ViewServer, play  # noqa: E402

POOL = 4  # played episodes per policy, cloned round-robin
CHILDREN = (tracing.session_timesteps, tracing.events, tracing.messages)
BATCH = 250  # cloned sessions per transaction


def clone_runs(engine: sa.Engine, clones: int) -> None:
    """big-random and big-expert: `clones` episodes each on seeds 1..clones, rows copied from the pool."""
    with engine.connect() as conn:
        pools = {}
        for run_id in ("pool-random", "pool-expert"):
            sources = [dict(row._mapping) for row in conn.execute(sa.select(st).where(st.c.run_id == run_id))]
            pools[run_id] = [(s, {t.name: [dict(r._mapping) for r in conn.execute(
                sa.select(t).where(t.c.session_id == s["session_id"]))] for t in CHILDREN},
                dict(conn.execute(sa.select(tracing.outcome_rewards).where(
                    tracing.outcome_rewards.c.session_id == s["session_id"])).one()._mapping)) for s in sources]
    for pool, run_id in (("pool-random", "big-random"), ("pool-expert", "big-expert")):
        tracing.ensure_experiment(engine, run_id, "rollout", {"cloned_from": pool})
        for start in range(1, clones + 1, BATCH):
            sessions, outcomes, children = [], [], {t.name: [] for t in CHILDREN}
            for seed in range(start, min(start + BATCH, clones + 1)):
                source, rows, outcome = pools[pool][seed % len(pools[pool])]
                session_id = "sess_" + uuid.uuid4().hex[:20]
                sessions.append(dict(source, session_id=session_id, run_id=run_id, experiment_id=run_id, seed=seed))
                outcomes.append(dict(outcome, session_id=session_id))
                for table in CHILDREN:
                    children[table.name] += [{**{k: v for k, v in r.items() if k != "id"}, "session_id": session_id}
                                             for r in rows[table.name]]
            with engine.begin() as conn:
                conn.execute(st.insert(), sessions)
                conn.execute(tracing.outcome_rewards.insert(), outcomes)
                for table in CHILDREN:
                    conn.execute(table.insert(), children[table.name])


async def timings(base: str, pages: list[tuple[str, str]], repeats: int = 5) -> list[tuple[str, float, float, int]]:
    out = []
    async with aiohttp.ClientSession() as http:
        for label, path in pages:
            seconds = []
            for _ in range(repeats + 1):
                start = time.perf_counter()
                async with http.get(base + path) as response:
                    body = await response.read()
                    assert response.status == 200, (path, response.status, body[:200])
                seconds.append(time.perf_counter() - start)
            out.append((label, seconds[0], statistics.median(seconds[1:]), len(body)))
    return out


async def browser_load(page_url: str, repeats: int = 5) -> float:
    """Seconds from navigation to the load event (which waits for the player's first frame)."""
    seconds = []
    async with Browser() as browser:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            await browser.goto(page_url)
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clones", type=int, default=5000, help="episodes per cloned run (two runs)")
    parser.add_argument("--keep", type=Path, help="build the DB here and keep it")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return measure(args.keep, args.clones)
    with tempfile.TemporaryDirectory(prefix="bench_view-") as folder:  # 0.5 GB: not left behind
        measure(Path(folder), args.clones)


def measure(folder: Path, clones: int) -> None:
    db = folder / "traces.db"
    db_url = f"sqlite:///{db}"
    if not db.exists():
        start = time.perf_counter()
        play(folder, db_url, "pool-random", "builtin:random", POOL, 30)
        play(folder, db_url, "pool-expert", "builtin:expert", POOL, 30)
        play(folder, db_url, "long", "builtin:expert", 1, 300, crafter_difficulty="peaceful")
        played = time.perf_counter() - start
        engine = tracing.open_db(db_url)
        start = time.perf_counter()
        clone_runs(engine, clones)
        print(f"DB built: played {2 * POOL + 1} episodes in {played:.1f} s, cloned {2 * clones:,} in "
              f"{time.perf_counter() - start:.1f} s")
    engine = tracing.open_readonly(db_url)
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(st)).scalar()
        rows = {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() for t in CHILDREN}
        long = conn.execute(sa.select(st.c.session_id, st.c.turns, st.c.env_steps).where(st.c.run_id == "long")).one()
        pair = [conn.execute(sa.select(st.c.session_id).where(st.c.run_id == run, st.c.seed == 1)).scalar()
                for run in ("pool-random", "pool-expert")]
    print(f"{db}: {db.stat().st_size / 1e6:,.0f} MB, {count:,} episodes, "
          + ", ".join(f"{n:,} {name}" for name, n in rows.items()))
    last = -(-clones // 50)
    pages = [
        ("runs list", "/"),
        ("run page 1 (50 episodes, by seed)", "/run/big-expert"),
        (f"run page {last} (last, by seed)", f"/run/big-expert?page={last}"),
        (f"run page {last} (last, by reward desc)", f"/run/big-expert?sort=reward&dir=desc&page={last}"),
        (f"episode page, {long.turns} turns / {long.env_steps} env steps", f"/episode/{long.session_id}"),
        ("  its frame 0 (a fresh replay)", f"/episode/{long.session_id}/frame/0.png"),
        (f"  its frame {long.env_steps} (replays every step first)", f"/episode/{long.session_id}/frame/{long.env_steps}.png"),
        ("  frame 1 after frame 0 (cold: restarts the replay)", f"/episode/{long.session_id}/frame/1.png"),
        ("  frame 2 after frame 1 (one env step)", f"/episode/{long.session_id}/frame/2.png"),
        (f"compare page 1 ({clones:,} paired seeds, bootstrap CI)", "/compare?a=big-random&b=big-expert"),
        (f"compare page {last} (last)", f"/compare?a=big-random&b=big-expert&page={last}"),
        ("compare page 1, sorted by difference", "/compare?a=big-random&b=big-expert&sort=diff"),
        ("pair page (two 30-turn episodes)", f"/pair?a={pair[0]}&b={pair[1]}"),
    ]
    with ViewServer(db_url, folder / "view.log") as server:
        measured = asyncio.run(timings(server.url, pages))
        in_browser = asyncio.run(browser_load(server.url + f"/episode/{long.session_id}")) if chromium_path() else None
    print(f"\n{'page':<58} {'first (ms)':>11} {'median of next 5 (ms)':>22} {'bytes':>10}")
    for label, first, median, size in measured:
        print(f"{label:<58} {1000 * first:>11.0f} {1000 * median:>22.0f} {size:>10,}")
    print("\n(cached: a frame is rendered once, then served from memory; the next 5 of a frame are cache hits)")
    if in_browser:
        print(f"in headless Chromium, the {long.turns}-turn episode page from navigation to its load event (HTML "
              f"parsed, laid out, first frame shown; frames cached): median of 5 {1000 * in_browser:.0f} ms")
    else:
        print("(no chromium: the in-browser page load was not measured)")


if __name__ == "__main__":
    main()
