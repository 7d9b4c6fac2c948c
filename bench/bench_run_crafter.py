"""run_crafter benchmarks, each measured side by side in one run:

1. harness overhead: builtin:random through the full runner (tracing to SQLite) vs a bare loop
   over CrafterEnv with the same actions — env steps/s of each and the ratio (target >= 0.5);
2. concurrency: the scripted endpoint with 200 ms latency, 32 concurrent episodes — turns/s vs
   the ideal 32 / 0.2 s = 160 (target >= 0.9);
3. trace size: DB bytes per turn with CRAFTER_HISTORY=2 (target <= 4 KB).

    python bench/bench_run_crafter.py [--episodes 40] [--turns 100]
"""
import argparse
import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synth_qwen.crafter_env import CrafterEnv
from synth_qwen.observation import observe
from synth_qwen.policy import random_decider
from synth_qwen.progress import play
from synth_qwen.settings import RolloutSettings


def settings(db: Path, **values) -> RolloutSettings:
    return RolloutSettings(crafter_db_url=f"sqlite:///{db}", crafter_difficulty="normal", **values)


def bare_loop(episodes: int, turns: int, actions_per_turn: int) -> int:
    steps = 0
    for seed in range(1, episodes + 1):
        env, decide = CrafterEnv(seed=seed, difficulty="normal"), random_decider(seed, actions_per_turn)
        env.start()
        observation = observe(env)
        for _ in range(turns):
            actions, _ = decide(observation)
            done = False
            for action in actions:
                steps += 1
                if env.act(action).done:
                    done = True
                    break
            if done:
                break
            observation = observe(env)
    return steps


def harness_overhead(tmp: Path, episodes: int, turns: int) -> None:
    start = time.perf_counter()
    bare_steps = bare_loop(episodes, turns, 5)
    bare_s = time.perf_counter() - start
    config = settings(tmp / "random.db", crafter_model="builtin:random", crafter_episodes=episodes,
                      crafter_max_steps=turns, crafter_concurrency=8)
    start = time.perf_counter()
    result = asyncio.run(play(config, "bench-random", "rollout", "random"))
    runner_s = time.perf_counter() - start
    runner_steps = sum(s.env_steps for s in result.sessions)
    print(f"\n1. harness overhead ({episodes} episodes x {turns} turns of builtin:random, normal)")
    print("| loop | env steps | steps/s |\n|---|---|---|")
    print(f"| bare CrafterEnv loop | {bare_steps:,} | {bare_steps / bare_s:,.0f} |")
    print(f"| run_crafter + SQLite tracing | {runner_steps:,} | {runner_steps / runner_s:,.0f} |")
    print(f"ratio runner/bare: {(runner_steps / runner_s) / (bare_steps / bare_s):.2f} (target >= 0.5)"
          + ("" if runner_steps == bare_steps else "  [step counts differ!]"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def concurrency(tmp: Path, turns: int) -> Path:
    """The endpoint runs in its own process, as a real server would, so it does not share our GIL."""
    db = tmp / "endpoint.db"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "synth_qwen.scripted_endpoint", "--port", str(port),
                               "--latency", "0.2"], stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()  # "scripted endpoint at ..." once it listens
        os.environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{port}/v1"
        config = settings(db, crafter_model="bench-model", crafter_episodes=32, crafter_max_steps=turns,
                          crafter_concurrency=32, crafter_history=2)
        start = time.perf_counter()
        result = asyncio.run(play(config, "bench-concurrency", "rollout", "concurrency"))
        elapsed = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait()
    calls = sum(s.turns for s in result.sessions)
    ideal = 32 / 0.2
    print(f"\n2. concurrency (scripted endpoint, 200 ms latency, 32 episodes x {turns} turns, 32 at once)")
    print(f"achieved {calls / elapsed:.1f} turns/s vs ideal {ideal:.0f} -> efficiency {calls / elapsed / ideal:.2f} (target >= 0.9)")
    return db


def trace_size(db: Path) -> None:
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.execute("VACUUM")
    turns = connection.execute("SELECT SUM(turns) FROM session_traces").fetchone()[0]
    connection.close()
    size = db.stat().st_size
    print(f"\n3. trace size (CRAFTER_HISTORY=2): {size:,} bytes / {turns:,} turns = {size / turns:,.0f} bytes/turn (target <= 4096)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--endpoint-turns", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        harness_overhead(Path(tmp), args.episodes, args.turns)
        trace_size(concurrency(Path(tmp), args.endpoint_turns))


if __name__ == "__main__":
    main()
