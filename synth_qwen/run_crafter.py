"""Step 1: an agent plays Crafter episodes concurrently; every call, step and outcome is traced.

    CRAFTER_MODEL="Qwen/Qwen3-4B-Instruct-2507" CRAFTER_EPISODES=10 CRAFTER_MAX_STEPS=30 \\
    CRAFTER_DIFFICULTY=easy python -m synth_qwen.run_crafter

Settings → seeds → episodes (concurrently) → trace → summary. Rerunning with the same
CRAFTER_RUN_ID skips finished episodes and redoes incomplete ones. Exit 0 when the run
finished, 1 when no episode could reach its policy (or the trace DB's PostgreSQL server cannot be
reached), 2 on bad settings (an unwritable output or a CRAFTER_DB_URL that is no trace DB included),
130 on Ctrl-C.
"""
from __future__ import annotations

import asyncio
import json

from rich.console import Console
from rich.table import Table

from synth_qwen import preflight, run_stats
from synth_qwen.atomic_file import write_text_atomic
from synth_qwen.crafter_env import ACHIEVEMENTS
from synth_qwen.progress import console, play, play_until_stopped
from synth_qwen.rollout import new_run_id
from synth_qwen.settings import (BUILTIN_POLICIES, RolloutSettings, SettingsError, exit_usage, inference_base_url,
                                 load, redact)
from synth_qwen.write_errors import write_failure


def print_summary(summary: dict, run_id: str, settings: RolloutSettings) -> None:
    out = Console()
    table = Table(title=f"run {run_id}: {settings.crafter_model} on {settings.crafter_difficulty}")
    table.add_column("achievement")
    table.add_column("success %", justify="right")
    for name in ACHIEVEMENTS:
        table.add_row(name, f"{summary['success_rates_pct'][name]:.1f}")
    out.print(table)
    cost = "unknown (set CRAFTER_PRICE_INPUT_PER_M / _OUTPUT_PER_M)" if summary["cost_usd"] is None \
        else f"${summary['cost_usd']:.4f}"
    out.print(
        f"episodes {summary['episodes']} {summary['status_counts']} | Crafter score {summary['crafter_score']} | "
        f"progression {summary['progression_pct']:.1f}% | achievements/episode {summary['mean_achievements']:.2f}\n"
        f"mean reward {summary['mean_reward']:.2f} | mean turns {summary['mean_turns']:.1f} | "
        f"mean env steps {summary['mean_env_steps']:.1f} | invalid turns {summary['invalid_turn_pct']:.1f}%\n"
        f"tokens: {summary['prompt_tokens']:,} prompt + {summary['completion_tokens']:,} completion "
        f"({summary['tokens_per_turn']:.0f}/turn) | cost {cost} | wall {summary['wall_s']:.1f}s")


def resume_hint(run_id: str) -> str:
    return f"CRAFTER_RUN_ID={run_id} python -m synth_qwen.run_crafter   (same settings; finished episodes are kept)"


def main() -> int:
    settings = load(RolloutSettings)
    try:
        if settings.crafter_model not in BUILTIN_POLICIES:
            inference_base_url()
    except SettingsError as error:
        exit_usage(str(error))
    preflight.ready_or_exit(db=(settings.crafter_db_url, True),
                            files={"CRAFTER_SUMMARY_JSON": settings.crafter_summary_json})
    run_id = settings.crafter_run_id or new_run_id()
    console.print(f"run {run_id}: {settings.crafter_episodes} episodes of {settings.crafter_model} on "
                  f"{settings.crafter_difficulty}, seeds {settings.crafter_seed}..{settings.crafter_seed + settings.crafter_episodes - 1}, "
                  f"{settings.crafter_max_steps} turns each" +
                  ("" if settings.crafter_model in BUILTIN_POLICIES else f", endpoint {redact(inference_base_url())}") +
                  f" -> {redact(settings.crafter_db_url)}", highlight=False)
    result, stopped = play_until_stopped(lambda: asyncio.run(play(settings, run_id, "rollout", "episodes")),
                                         resume_hint(run_id))
    if stopped:
        return stopped
    summary = run_stats.summarize(result.sessions, result.wall_s)
    print_summary(summary, run_id, settings)
    if settings.crafter_summary_json:
        try:
            write_text_atomic(settings.crafter_summary_json, json.dumps(dict(summary, run_id=run_id), indent=2))
        except OSError as error:
            console.print(f"error: cannot write CRAFTER_SUMMARY_JSON={settings.crafter_summary_json} "
                          f"({write_failure(error) or error.strerror}): the run is finished and safe in the trace "
                          f"DB; free space, then write it again with: {resume_hint(run_id)}", highlight=False)
            return 1
    if result.played and result.unreachable == result.played:
        errors = {s.status_reason for s in result.sessions if s.status == "agent_error"}
        console.print(f"error: no episode could reach the policy endpoint {redact(inference_base_url())}: "
                      f"{sorted(errors)[0] if errors else 'unknown'}", highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
