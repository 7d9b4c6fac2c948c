"""Every per-run statistic, computed in one place from finished sessions, on top of `metrics` (the
definitions) and `stats` (the intervals). run_crafter's summary, its progress line, eval's report and
the rounds table all read these."""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import mean
from typing import Sequence

from synth_qwen import metrics, stats
from synth_qwen.crafter_env import ACHIEVEMENTS
from synth_qwen.tracing import Session

Episodes = Sequence[Sequence[str]]  # each episode's unlocked achievements


def crafter_score(episodes: Episodes) -> float:
    return metrics.crafter_score(metrics.success_rates(episodes).values())


def progression_pct(episodes: Episodes) -> float:
    return 100 * mean(metrics.progression(achievements) for achievements in episodes)


def balrog_progression(episodes: Episodes) -> dict:
    """BALROG's summary of a run, in percent: mean progression ± its standard error, the population
    standard deviation / √n (0 for a single episode, as BALROG reports it)."""
    values = [100 * metrics.progression(achievements) for achievements in episodes]
    n = len(values)
    centre = mean(values)
    spread = math.sqrt(sum((v - centre) ** 2 for v in values) / n)
    return {"mean": round(centre, 2), "se": round(spread / math.sqrt(n), 2) if n > 1 else 0.0}


def estimate(episodes: Episodes, statistic) -> dict:
    """The statistic with its 95 % bootstrap interval over episodes."""
    low, high = stats.bootstrap_ci(episodes, statistic)
    return {"value": round(statistic(episodes), 3), "ci95": [round(low, 3), round(high, 3)]}


def success_rates_with_ci(episodes: Episodes) -> dict[str, dict]:
    """Per achievement: successes, the rate and its 95 % Wilson interval, in percent."""
    n = len(episodes)
    table = {}
    for name, successes in metrics.success_counts(episodes).items():
        low, high = stats.wilson_interval(successes, n)
        table[name] = {"successes": successes, "rate_pct": round(100 * successes / n, 1),
                       "ci95_pct": [round(100 * low, 1), round(100 * high, 1)]}
    return table


@dataclass
class RunningMeans:
    """Sums over finished episodes, updated in O(1) per episode: the progress line reads them as each
    episode ends (a full pass per episode would make a 100,000-episode run quadratic), `summarize` once."""
    episodes: int = 0
    achievements: int = 0
    reward: float = 0.0
    turns: int = 0
    invalid_turns: int = 0
    tokens: int = 0

    def add(self, session: Session) -> None:
        self.episodes += 1
        self.achievements += session.num_achievements
        self.reward += session.total_reward
        self.turns += session.turns
        self.invalid_turns += session.invalid_turns
        self.tokens += session.prompt_tokens + session.completion_tokens

    def line(self) -> str:
        n, turns = self.episodes or 1, self.turns or 1
        return (f"ach {self.achievements / n:.2f} | reward {self.reward / n:.2f} | "
                f"invalid {100 * self.invalid_turns / turns:.1f}% | tok/turn {self.tokens / turns:.0f}")


def summarize(sessions: Sequence[Session], wall_s: float = 0.0) -> dict:
    """The run's summary over its finished sessions (unfinished ones are left out)."""
    finished = [s for s in sessions if s.finished]
    n = len(finished) or 1
    sums = RunningMeans()
    for s in finished:
        sums.add(s)
    rates = metrics.success_rates([s.achievements for s in finished])
    costs = [s.cost_usd for s in finished]
    statuses: dict[str, int] = {}
    causes: dict[str, int] = {}
    for s in finished:
        statuses[s.status] = statuses.get(s.status, 0) + 1
        causes[s.end_cause or "unknown"] = causes.get(s.end_cause or "unknown", 0) + 1
    return {
        "episodes": len(finished), "status_counts": statuses, "end_cause_counts": causes,
        "death_pct": round(100 * statuses.get("died", 0) / n, 1),
        "crafter_score": round(metrics.crafter_score(rates.values()), 3) if finished else None,
        "progression_pct": round(100 * sum(metrics.progression(s.achievements) for s in finished) / n, 2),
        "mean_achievements": round(sums.achievements / n, 3),
        "mean_reward": round(sums.reward / n, 3),
        "mean_turns": round(sums.turns / n, 2),
        "mean_env_steps": round(sum(s.env_steps for s in finished) / n, 2),
        "invalid_turn_pct": round(100 * sums.invalid_turns / (sums.turns or 1), 2),
        "prompt_tokens": sum(s.prompt_tokens for s in finished),
        "completion_tokens": sum(s.completion_tokens for s in finished),
        "tokens_per_turn": round(sums.tokens / (sums.turns or 1), 1),
        "cost_usd": None if any(c is None for c in costs) else round(sum(costs), 6),
        "success_rates_pct": {name: round(rates[name], 1) for name in ACHIEVEMENTS},
        "wall_s": round(wall_s, 2),
    }
