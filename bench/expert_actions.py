"""Fixed-seed `builtin:expert` play, every turn's actions and reasoning, to a file: run it before and
after a refactor of the teacher and diff the two (a pure refactor shows no difference).

    python bench/expert_actions.py before.txt   # ... refactor ...
    python bench/expert_actions.py after.txt && cmp before.txt after.txt

Seeds 1-6 on easy and normal, with 1 and 5 actions per turn (400 and 250 turns), ~40 s.
"""
import sys

from synth_qwen.crafter_env import CrafterEnv
from synth_qwen.expert import ExpertAgent
from synth_qwen.observation import observe

CASES = [(difficulty, max_actions, 400 if max_actions == 1 else 250, seed)
         for difficulty in ("easy", "normal") for max_actions in (1, 5) for seed in range(1, 7)]


def play(out, difficulty: str, max_actions: int, turns: int, seed: int) -> None:
    env = CrafterEnv(seed=seed, difficulty=difficulty)
    env.start()
    agent = ExpertAgent(max_actions=max_actions, seed=seed)
    end = "none"
    for turn in range(turns):
        actions, reason = agent.act(observe(env))
        out.write(f"{difficulty} a{max_actions} s{seed} t{turn} {' '.join(actions)} | {reason}\n")
        for action in actions:
            result = env.act(action)
            if result.done:
                end = result.end_reason
                break
        if end != "none":
            break
    out.write(f"end {end} step {env.steps} {env.achievements}\n")


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    with open(sys.argv[1], "w") as out:
        for case in CASES:
            play(out, *case)


if __name__ == "__main__":
    main()
