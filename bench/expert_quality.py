"""How well does `builtin:expert` play? Episodes straight on CrafterEnv, no runner, no tracing.

    python bench/expert_quality.py [--episodes 50] [--difficulty normal] [--turns 300]
                                   [--actions-per-turn 5] [--workers 2]

Episode i uses seed i (1..N). Prints per-achievement success %, mean progression (distinct
achievements / 22), the Crafter score S = exp(mean_i ln(1 + s_i)) - 1 over success rates s_i in
percent, mean episode length in env steps and turns, the death rate and why episodes ended
(what killed the player, or the turn budget: `max_steps`). Under BALROG's Crafter protocol:

    python bench/expert_quality.py --difficulty normal --turns 2000 --actions-per-turn 1 --episodes 30
"""
import argparse
import time
from collections import Counter
from multiprocessing import Pool

from synth_qwen.crafter_env import ACHIEVEMENTS, DEATH_CAUSES, CrafterEnv
from synth_qwen.observation import observe
from synth_qwen.expert import ExpertAgent
from synth_qwen.metrics import crafter_score


def play_episode(seed: int, difficulty: str, turns: int, actions_per_turn: int) -> dict:
    env = CrafterEnv(seed=seed, difficulty=difficulty)
    env.start()
    obs = observe(env)
    agent = ExpertAgent(max_actions=actions_per_turn, seed=seed)
    end_cause = "max_steps"  # the turn budget ran out (the trace's name for it)
    for turn in range(turns):
        actions, _ = agent.act(obs)
        for action in actions:
            result = env.act(action)
            if result.done:
                end_cause = result.death_cause or result.end_reason
                break
        if result.done:
            break
        obs = observe(env)
    return dict(seed=seed, achievements=env.achievements, steps=env.steps, turns=turn + 1,
                died=end_cause in DEATH_CAUSES, end_cause=end_cause)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--difficulty", default="normal")
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--actions-per-turn", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    start = time.perf_counter()
    jobs = [(seed, args.difficulty, args.turns, args.actions_per_turn) for seed in range(1, args.episodes + 1)]
    with Pool(args.workers) as pool:
        episodes = pool.starmap(play_episode, jobs)
    wall = time.perf_counter() - start

    n = len(episodes)
    success = {name: 100.0 * sum(name in ep["achievements"] for ep in episodes) / n for name in ACHIEVEMENTS}
    print(f"builtin:expert on {args.difficulty}, {n} episodes (seeds 1..{n}), {args.turns} turns x "
          f"<= {args.actions_per_turn} actions, {wall:.0f} s wall")
    print("| achievement | success % |\n|---|---|")
    for name in ACHIEVEMENTS:
        print(f"| {name} | {success[name]:.0f} |")
    distinct = sum(len(ep["achievements"]) for ep in episodes) / n
    print(f"mean distinct achievements {distinct:.2f} / {len(ACHIEVEMENTS)} "
          f"(progression {100 * distinct / len(ACHIEVEMENTS):.1f} %)")
    print(f"Crafter score {crafter_score(list(success.values())):.1f} %")
    print(f"mean episode length {sum(ep['steps'] for ep in episodes) / n:.0f} env steps, "
          f"{sum(ep['turns'] for ep in episodes) / n:.0f} turns; "
          f"death rate {100 * sum(ep['died'] for ep in episodes) / n:.0f} %")
    causes = Counter(ep["end_cause"] for ep in episodes)
    print("episode ends: " + ", ".join(f"{cause} {count}" for cause, count in causes.most_common()))


if __name__ == "__main__":
    main()
