"""BALROG's Crafter protocol and its published leaderboard, as data: `EVAL_PROTOCOL=balrog` (and
`CRAFTER_PROTOCOL=balrog` for run_crafter) plays by these rules so our numbers sit beside theirs.

Read from balrog-ai/BALROG at COMMIT (facts only, no code): `balrog/config/config.yaml`
(crafter_kwargs, eval.num_episodes, agent.max_text_history, client.generate_kwargs.temperature),
`balrog/environments/crafter/` (stock `crafter.Env`, progression = distinct achievements / 22) and
`balrog/utils.py` (mean ± population standard deviation / √n over episodes: `run_stats.balrog_progression`).
No crafter import here: settings reads SETTINGS.
"""
from __future__ import annotations

from typing import Sequence

REPOSITORY = "balrog-ai/BALROG"
COMMIT = "af7d1f17e0deec3a7a0e334beae5f11b7a21371b"  # main on 2026-03-16, read 2026-12-03

# Rollout settings the protocol fixes: field -> (value, where BALROG says so). Any other value of
# one of these, set by the user, contradicts the protocol (one line, exit 2).
SETTINGS = {
    "crafter_difficulty": ("normal", "crafter_kwargs: stock crafter.Env, area 64x64, view 9x9"),
    "crafter_actions_per_turn": (1, "one env step per agent call"),
    "crafter_max_steps": (2000, "crafter_kwargs.max_episode_steps: 2000"),
    # agent.max_text_history: 16 observations (with their actions) in each prompt: this turn's and
    # the 15 before it.
    "crafter_history": (15, "agent.max_text_history: 16 observations, this turn's and 15 earlier"),
    "crafter_temperature": (1.0, "client.generate_kwargs.temperature: 1.0 (since 2025-03-10)"),
}
MIN_EPISODES = 10  # eval.num_episodes.crafter: "minimum number of episodes"; EVAL_EPISODES may say more

# The published Crafter leaderboard (progression %, mean ± SE over 10 episodes).
LEADERBOARD_SOURCE = ("BALROG leaderboard, balrog-ai/experiments (crafter_summary.json per submission; "
                      "SEs of GPT-4o and Claude-3.5-Sonnet from its data.json at 5e80b3c)")
LEADERBOARD_DATE = "2025-07"
LEADERBOARD = (  # (model, progression %, SE)
    ("Grok-4", 57.3, 3.9),
    ("Gemini-2.5-Pro", 55.0, 6.0),
    ("Gemini-2.5-Flash", 40.0, 4.8),
    ("DeepSeek-R1", 36.4, 3.8),
    ("GPT-4o", 33.1, 2.3),
    ("Claude-3.5-Sonnet", 32.7, 3.2),
    ("Llama-3.1-8B-Instruct", 25.5, 3.2),
    ("Llama-3.2-3B-Instruct", 17.3, 2.8),
    ("Qwen2.5-7B-Instruct", 16.4, 3.0),
    ("Llama-3.2-1B-Instruct", 12.7, 1.9),
)
CAVEATS = ("published numbers, not re-run here: zero-shot agents (none fine-tuned), prompted with "
           "BALROG's own observation text and instructions (ours differ), 10 random seeds each")


def leaderboard_rows(ours: Sequence[tuple[str, float, float]]) -> list[tuple[str, float, float, str]]:
    """The leaderboard with this run's models in it, best first: (model, progression %, SE, source)
    where source is 'published' or 'this run'."""
    rows = [(name, mean, se, "published") for name, mean, se in LEADERBOARD]
    rows += [(name, mean, se, "this run") for name, mean, se in ours]
    return sorted(rows, key=lambda row: -row[1])
