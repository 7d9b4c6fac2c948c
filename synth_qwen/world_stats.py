"""What the difficulty presets do, measured: world statistics per preset, and a demo of random play.

    python -m synth_qwen.world_stats            one text observation, then random play on each preset
    python -m synth_qwen.world_stats --stats    per-preset means over 20 worlds (the table in docs/modules.md)
"""
from __future__ import annotations

import sys

import numpy as np

from crafter import objects

from synth_qwen.crafter_env import ACTIONS, DIFFICULTIES, CrafterEnv
from synth_qwen.grid import in_view
from synth_qwen.observation import observe
from synth_qwen.settings import WorldStatsSettings, load

STAT_COLUMNS = ("tree", "coal", "iron", "diamond", "water", "lava", "cow", "zombie", "skeleton",
                "zombies_seen_300")


def world_stats(seed: int, difficulty: str, walk_steps: int = 300) -> dict[str, float]:
    env = CrafterEnv(seed=seed, difficulty=difficulty)
    env.start()
    world = env._world
    stats = {name: int(world.count(name)) for name in ("tree", "coal", "iron", "diamond", "water", "lava")}
    for name, cls in (("cow", objects.Cow), ("zombie", objects.Zombie), ("skeleton", objects.Skeleton)):
        stats[name] = sum(type(obj) is cls for obj in world.objects)
    walk = np.random.RandomState(seed)
    seen = set()
    for _ in range(walk_steps):
        env.act(int(walk.randint(1, 5)))  # random walk: the four moves
        env._player.health = 9  # an invulnerable observer, so every preset is watched 300 steps
        px, py = env._player.pos
        for obj in world.objects:
            if type(obj) is objects.Zombie and in_view(obj.pos[0] - px, obj.pos[1] - py):
                seen.add(id(obj))
    stats["zombies_seen_300"] = len(seen)
    return stats


def preset_stats(worlds: int = 20, first_seed: int = 1000) -> dict[str, dict[str, float]]:
    table = {}
    for difficulty in DIFFICULTIES:
        rows = [world_stats(first_seed + i, difficulty) for i in range(worlds)]
        table[difficulty] = {col: float(np.mean([row[col] for row in rows])) for col in STAT_COLUMNS}
    return table


def format_stats(table: dict[str, dict[str, float]]) -> str:
    header = "| preset | " + " | ".join(STAT_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(STAT_COLUMNS) + 1)]
    for difficulty, row in table.items():
        lines.append(f"| {difficulty} | " + " | ".join(f"{row[c]:.1f}" for c in STAT_COLUMNS) + " |")
    return "\n".join(lines)


def demo(episodes: int, seed: int) -> None:
    """Random play on each preset: one observation, then per-difficulty outcomes."""
    env = CrafterEnv(seed=seed, difficulty="easy")
    env.start()
    print("One text observation (seed %d, easy):\n" % seed)
    print(observe(env).text, "\n")
    print(f"Random policy, {episodes} episodes per difficulty (until death or 10,000 steps):")
    for difficulty in DIFFICULTIES:
        lengths, unlocked = [], []
        for i in range(episodes):
            env = CrafterEnv(seed=seed + i, difficulty=difficulty)
            env.start()
            actions = np.random.RandomState(seed + i)
            result = None
            while result is None or not result.done:
                result = env.act(int(actions.randint(len(ACTIONS))))
            lengths.append(env.steps)
            unlocked.append(len(env.achievements))
        print(f"  {difficulty:9s} mean length {np.mean(lengths):6.1f} steps, "
              f"mean achievements {np.mean(unlocked):.2f}")


def main(argv: list[str] | None = None) -> int:
    s = load(WorldStatsSettings, argv=sys.argv[1:] if argv is None else argv)
    if s.world_stats_table:
        print(f"Per-preset means over {s.world_stats_worlds} worlds (counts at start; zombies seen in view "
              f"during a 300-step random walk):")
        print(format_stats(preset_stats(s.world_stats_worlds)))
    else:
        demo(s.world_stats_episodes, s.world_stats_seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
