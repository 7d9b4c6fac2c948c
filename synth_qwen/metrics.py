"""Crafter's metrics, one function each: success rates, the Crafter score, progression."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

from synth_qwen.crafter_env import ACHIEVEMENTS


def success_counts(episodes_achievements: Sequence[Iterable[str]]) -> dict[str, int]:
    """How many episodes unlocked each of the 22 achievements at least once."""
    episodes = [set(a) for a in episodes_achievements]
    return {name: sum(name in e for e in episodes) for name in ACHIEVEMENTS}


def success_rates(episodes_achievements: Sequence[Iterable[str]]) -> dict[str, float]:
    """% of episodes that unlocked each of the 22 achievements at least once."""
    n = len(episodes_achievements)
    return {name: 100.0 * count / n if n else 0.0 for name, count in success_counts(episodes_achievements).items()}


def crafter_score(rates_percent: Iterable[float]) -> float:
    """S = exp(mean_i ln(1 + s_i)) - 1, s_i in percent (Hafner 2021)."""
    rates = list(rates_percent)
    return math.exp(sum(math.log(1.0 + r) for r in rates) / len(rates)) - 1.0


def progression(achievements: Iterable[str]) -> float:
    """BALROG progression: distinct achievements unlocked / 22."""
    return len(set(achievements)) / len(ACHIEVEMENTS)
