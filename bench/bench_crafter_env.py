"""Stock crafter.Env vs our CrafterEnv: the same random actions, measured side by side in one run.

    python bench/bench_crafter_env.py [--steps 20000] [--resets 21]
"""
import argparse
import platform
import statistics
import time

import numpy as np

import crafter
from synth_qwen.crafter_env import ACTIONS, CrafterEnv


def steps_per_second(start, step_done, actions) -> float:
    """Step time only: world generation after a death is timed by reset_ms, not here."""
    start()
    elapsed = 0.0
    for action in actions:
        begin = time.perf_counter()
        done = step_done(int(action))
        elapsed += time.perf_counter() - begin
        if done:
            start()
    return len(actions) / elapsed


def reset_ms(make_start, count: int) -> tuple[float, float]:
    """(first reset, median of the rest) in ms; the first includes numba's JIT compile."""
    times = []
    for seed in range(count):
        start_episode = make_start(seed)
        begin = time.perf_counter()
        start_episode()
        times.append((time.perf_counter() - begin) * 1000)
    return times[0], statistics.median(times[1:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--resets", type=int, default=21)
    args = parser.parse_args()
    actions = np.random.RandomState(0).randint(len(ACTIONS), size=args.steps)
    # stock plays through its gym API (an image every step); ours through start/act, as rollouts do
    ours_reset = reset_ms(lambda seed: CrafterEnv(seed=seed).start, args.resets)
    stock_reset = reset_ms(lambda seed: crafter.Env(seed=seed).reset, args.resets)
    stock_env, ours_env = crafter.Env(seed=1), CrafterEnv(seed=1)
    stock = steps_per_second(stock_env.reset, lambda action: stock_env.step(action)[2], actions)
    ours = steps_per_second(ours_env.start, lambda action: ours_env.act(action).done, actions)
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
          f"{args.steps} random steps, {args.resets} resets")
    print("| env | steps/s | reset ms (first) | reset ms (median of rest) |")
    print("|---|---|---|---|")
    print(f"| stock crafter.Env | {stock:,.0f} | {stock_reset[0]:.0f} | {stock_reset[1]:.1f} |")
    print(f"| synth_qwen CrafterEnv | {ours:,.0f} | {ours_reset[0]:.0f} | {ours_reset[1]:.1f} |")
    print(f"step speed-up: {ours / stock:.1f}x (target >= 3x); reset median {ours_reset[1]:.1f} ms (target <= 60 ms)")


if __name__ == "__main__":
    main()
