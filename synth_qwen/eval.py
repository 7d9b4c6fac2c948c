"""Step 4: held-out, paired evaluation of one or more models, with honest uncertainty.

    EVAL_MODELS="Qwen/Qwen3-4B-Instruct-2507 ft:Qwen/Qwen3-4B-Instruct-2507:ftjob-abc123" EVAL_EPISODES=50 \\
    CRAFTER_DIFFICULTY=easy CRAFTER_MAX_STEPS=30 python -m synth_qwen.eval

Settings → every model plays the same held-out seeds through run_crafter's runner (sessions
stored with purpose `eval`, one run `<eval run id>-m<i>` per model, resumable) → per-model
statistics with 95 % CIs → paired differences to the first model → a terminal table,
report.json, report.md, achievements.png and GIF replays of each model's best and worst
episode. `EVAL_RUN_IDS` reports on finished runs without playing.
Exit 0 ok, 1 nothing could be evaluated (or the trace DB's PostgreSQL server cannot be reached),
2 bad settings (an unwritable EVAL_REPORT_DIR or a CRAFTER_DB_URL that is no trace DB included), 130 on Ctrl-C.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from rich.console import Console
from rich.table import Table

from synth_qwen import preflight, run_stats, stats, tracing
from synth_qwen.atomic_file import atomic_path, write_text_atomic
from synth_qwen.crafter_env import ACHIEVEMENTS
from synth_qwen.progress import console, play, play_until_stopped
from synth_qwen.replay import replay_to_file
from synth_qwen.rollout import new_run_id
from synth_qwen.settings import (BUILTIN_POLICIES, EvalSettings, SettingsError, exit_usage, inference_base_url,
                                 load, redact)
from synth_qwen.tracing import Session
from synth_qwen.view import browse_line
from synth_qwen.write_errors import write_failure

PLOT_HINT = "pip install 'synth_qwen[plot]'"


@dataclass
class ModelRun:
    """One model's finished evaluation episodes (one run id), ordered by seed."""

    run_id: str
    model: str
    sessions: list[Session]

    @property
    def by_seed(self) -> dict[int, list[str]]:
        return {s.seed: s.achievements for s in self.sessions}


# ---------------------------------------------------------------------------------------
# Getting the sessions: play them, or read finished runs

def finished(sessions: list[Session]) -> list[Session]:
    return sorted((s for s in sessions if s.finished), key=lambda s: s.seed)


def play_models(settings: EvalSettings, eval_run_id: str) -> list[ModelRun]:
    engine = tracing.open_db(settings.crafter_db_url)
    runs = []
    for index, model in enumerate(settings.models):
        run_id = f"{eval_run_id}-m{index}"
        others = {s.model for s in tracing.sessions(engine, tracing.session_traces.c.run_id == run_id)} - {model}
        if others:
            exit_usage(f"EVAL_RUN_ID={eval_run_id!r} already holds {sorted(others)[0]} as model {index}; "
                       f"keep the same EVAL_MODELS order to resume, or start a new EVAL_RUN_ID")
        console.print(f"model {index + 1}/{len(settings.models)}: {model} (run {run_id})", highlight=False)
        model_settings = settings.model_copy(update={
            "crafter_model": model, "crafter_episodes": settings.eval_episodes,
            "crafter_seed": settings.eval_seed, "crafter_run_id": run_id})
        result = asyncio.run(play(model_settings, run_id, "eval", model))
        runs.append(ModelRun(run_id, model, finished(result.sessions)))
    engine.dispose()
    return runs


def stored_runs(settings: EvalSettings) -> list[ModelRun]:
    """EVAL_RUN_IDS: each id is a run, or an eval run whose models ran as <id>-m0, <id>-m1, …"""
    try:
        engine = tracing.open_db(settings.crafter_db_url, create=False)
    except tracing.MissingDatabase as error:
        exit_usage(str(error))
    column = tracing.session_traces.c.run_id
    runs = []
    for wanted in settings.eval_run_ids:
        sessions = tracing.sessions(engine, (column == wanted) | column.startswith(f"{wanted}-m", autoescape=True))
        if not sessions:
            exit_usage(f"EVAL_RUN_IDS: no sessions with run id {wanted!r} (or {wanted}-m0, -m1…) "
                       f"in {redact(settings.crafter_db_url)}")
        by_run: dict[str, list[Session]] = {}
        for session in sessions:  # oldest first, so model 0 comes first
            by_run.setdefault(session.run_id, []).append(session)
        runs += [ModelRun(run_id, rows[0].model, finished(rows)) for run_id, rows in by_run.items()]
    engine.dispose()
    return runs


def evaluable(run: ModelRun) -> bool:
    """False when no episode ever reached its policy (e.g. the endpoint was unreachable). A model that
    answered but only with invalid turns is evaluable: scoring nothing is its result."""
    return any(not s.never_reached_policy for s in run.sessions)


# ---------------------------------------------------------------------------------------
# The report

def model_report(run: ModelRun) -> dict:
    episodes = [s.achievements for s in run.sessions]
    summary = run_stats.summarize(run.sessions)
    ranked = sorted(run.sessions, key=lambda s: (s.num_achievements, s.total_reward, -s.seed))
    return {
        "model": run.model, "run_id": run.run_id, "episodes": len(episodes), "seeds": [s.seed for s in run.sessions],
        "crafter_score": run_stats.estimate(episodes, run_stats.crafter_score),
        "progression_pct": run_stats.estimate(episodes, run_stats.progression_pct),
        "success_rates": run_stats.success_rates_with_ci(episodes),
        **{key: summary[key] for key in ("mean_achievements", "mean_reward", "mean_turns", "mean_env_steps",
                                         "invalid_turn_pct", "tokens_per_turn", "prompt_tokens",
                                         "completion_tokens", "cost_usd", "status_counts")},
        "best_episode": episode_ref(ranked[-1]), "worst_episode": episode_ref(ranked[0]),
    }


def episode_ref(session: Session) -> dict:
    return {key: getattr(session, key) for key in ("session_id", "seed", "num_achievements", "total_reward", "status")}


def comparison(baseline: ModelRun, other: ModelRun) -> dict:
    """The paired difference other − baseline on the seeds both played."""
    seeds = sorted(baseline.by_seed.keys() & other.by_seed.keys())
    first = [baseline.by_seed[seed] for seed in seeds]
    second = [other.by_seed[seed] for seed in seeds]
    result = {"model": other.model, "baseline": baseline.model, "paired_seeds": len(seeds)}
    if not seeds:
        return dict(result, sentence=f"{other.model} and {baseline.model} share no seeds: no paired comparison.")
    for key, statistic in (("progression_pct", run_stats.progression_pct), ("crafter_score", run_stats.crafter_score)):
        low, high = stats.paired_difference_ci(first, second, statistic)
        result[f"{key}_diff"] = {"value": round(statistic(second) - statistic(first), 3),
                                 "ci95": [round(low, 3), round(high, 3)]}
    return dict(result, sentence=verdict(result))


def verdict(result: dict) -> str:
    """One plain sentence: how big the difference is, and whether it stands out from the noise."""
    model, baseline = result["model"], result["baseline"]
    progression, score = result["progression_pct_diff"], result["crafter_score_diff"]
    said = (f"{model} vs {baseline} over {result['paired_seeds']} paired seeds: progression "
            f"{progression['value']:+.1f} points ({ci_text(progression)}), "
            f"Crafter score {score['value']:+.1f} ({ci_text(score)})")
    clear = [name for name, diff in (("progression", progression), ("Crafter score", score))
             if stats.excludes_zero(diff["ci95"])]
    direction = "better" if progression["value"] > 0 else "worse"
    if len(clear) == 2:
        return f"{said}; both differences are distinguishable from noise: {model} is {direction} than {baseline}."
    if clear:
        return (f"{said}; only the {clear[0]} difference is distinguishable from noise "
                f"(the other 95 % interval includes zero).")
    return (f"{said}; the difference is not distinguishable from noise at this sample size "
            f"(both 95 % intervals include zero; more episodes would narrow them).")


def ci_text(difference: dict) -> str:
    low, high = difference["ci95"]
    return f"95 % CI {low:+.1f} to {high:+.1f}"


def seed_text(seeds: list[int]) -> str:
    seeds = sorted(set(seeds))
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ", ".join(map(str, seeds))


def build_report(runs: list[ModelRun], name: str, run_ids: str, db_url: str) -> dict:
    sessions = [s for run in runs for s in run.sessions]
    models = [model_report(run) for run in runs]
    seed_sets = {tuple(m["seeds"]) for m in models}
    return {
        "name": name, "run_ids": run_ids, "created_at": tracing.utc_now(), "db_url": redact(db_url),
        "difficulty": sorted({s.difficulty for s in sessions}),
        "max_turns": sorted({s.metadata.get("max_turns") for s in sessions} - {None}),
        "actions_per_turn": sorted({s.metadata.get("actions_per_turn") for s in sessions} - {None}),
        "purpose": sorted({s.purpose for s in sessions}),
        "seeds": sorted({s.seed for s in sessions}), "same_seeds_for_every_model": len(seed_sets) == 1,
        "models": models,
        "comparisons": [comparison(runs[0], run) for run in runs[1:]],
        "view": browse_line(db_url, view_path([run.run_id for run in runs])),
    }


def view_path(run_ids: list[str]) -> str:
    """The trace browser's page for these runs: the first two side by side, or the one run."""
    if len(run_ids) >= 2:
        return f"/compare?{urlencode({'a': run_ids[0], 'b': run_ids[1]})}"
    return f"/run/{quote(run_ids[0], safe='')}"


def interval(estimate_: dict, digits: int = 1) -> str:
    low, high = estimate_["ci95"]
    return f"{estimate_['value']:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def cost_text(cost: float | None) -> str:
    return "unknown" if cost is None else f"${cost:.4f}"


SUMMARY_ROWS = (  # (row label, how to show it from a model's report)
    ("episodes", lambda m: str(m["episodes"])),
    ("Crafter score (95 % CI)", lambda m: interval(m["crafter_score"])),
    ("progression % (95 % CI)", lambda m: interval(m["progression_pct"])),
    ("achievements / episode", lambda m: f"{m['mean_achievements']:.2f}"),
    ("mean reward", lambda m: f"{m['mean_reward']:.2f}"),
    ("episode length: turns / env steps", lambda m: f"{m['mean_turns']:.1f} / {m['mean_env_steps']:.1f}"),
    ("invalid turns %", lambda m: f"{m['invalid_turn_pct']:.1f}"),
    ("tokens per turn", lambda m: f"{m['tokens_per_turn']:.0f}"),
    ("cost", lambda m: cost_text(m["cost_usd"])),
    ("episode endings", lambda m: ", ".join(f"{k} {v}" for k, v in sorted(m["status_counts"].items()))),
)


def rate_text(entry: dict) -> str:
    low, high = entry["ci95_pct"]
    return f"{entry['rate_pct']:.0f} ({low:.0f}–{high:.0f})"


def header_lines(report: dict) -> list[str]:
    models = report["models"]
    paired = "the same seeds for every model (paired)" if report["same_seeds_for_every_model"] else \
        "seed sets differ between models; differences use the seeds both played"
    episodes = "/".join(sorted({str(m["episodes"]) for m in models}))
    return [
        f"{episodes} episodes per model on {'/'.join(report['difficulty'])}, up to "
        f"{'/'.join(map(str, report['max_turns']))} turns of up to {'/'.join(map(str, report['actions_per_turn']))} "
        f"actions; seeds {seed_text(report['seeds'])}: {paired}. Training rollouts start at CRAFTER_SEED=1.",
        "Runs: " + ", ".join(f"{m['model']} → {m['run_id']}" for m in models) + f" (trace DB {report['db_url']}).",
        f"Browse every episode turn by turn, with its frames: {report['view']}",
    ]


def markdown(report: dict, chart: bool) -> str:
    models = report["models"]
    names = [m["model"] for m in models]
    out = [f"# Evaluation {report['name']}", "", *header_lines(report), "", "## Summary", "",
           "| | " + " | ".join(f"`{n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    out += [f"| {label} | " + " | ".join(show(m) for m in models) + " |" for label, show in SUMMARY_ROWS]
    out += ["", "CIs: percentile bootstrap over episodes. The score's interval leans low: a resample often "
            "loses a rare achievement, and the score's logarithm weighs rare achievements heavily."]
    if report["comparisons"]:
        out += ["", f"## Paired differences to `{names[0]}`", "",
                f"Percentile bootstrap over seeds ({stats.RESAMPLES} resamples; both models' episodes of a seed "
                f"are resampled together, so differences between worlds cancel out).", ""]
        out += [f"- {c['sentence']}" for c in report["comparisons"]]
    out += ["", "## Achievements: success % (95 % Wilson interval)", "",
            "| achievement | " + " | ".join(f"`{n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    out += [f"| {a} | " + " | ".join(rate_text(m["success_rates"][a]) for m in models) + " |" for a in ACHIEVEMENTS]
    out += ["", "![success rate per achievement](achievements.png)" if chart else
            f"(No chart: matplotlib is not installed. `{PLOT_HINT}`, then report again with "
            f"`EVAL_RUN_IDS=\"{report['run_ids']}\" python -m synth_qwen.eval`.)"]
    if any("replays" in m for m in models):
        out += ["", "## Replays (best and worst episode per model)", "", "| model | best | worst |", "|---|---|---|"]
        out += [f"| `{m['model']}` | {replay_link(m, 'best')} | {replay_link(m, 'worst')} |"
                for m in models if "replays" in m]
    return "\n".join(out) + "\n"


def replay_link(model: dict, which: str) -> str:
    episode, replay = model[f"{which}_episode"], model["replays"][which]
    text = f"seed {episode['seed']}: achievements {episode['num_achievements']}, reward {episode['total_reward']:.1f}"
    if replay["path"] is None:
        return f"{text} — replay failed: {replay['divergence']}"
    return f"[{text}]({replay['path']})"


def print_tables(report: dict) -> None:
    out = Console()
    models = report["models"]
    table = Table(title=f"evaluation {report['name']}")
    table.add_column("")
    for m in models:
        table.add_column(m["model"], justify="right")
    for label, show in SUMMARY_ROWS:
        table.add_row(label, *(show(m) for m in models))
    achievements = Table(title="success % (95 % Wilson interval)")
    achievements.add_column("achievement")
    for m in models:
        achievements.add_column(m["model"], justify="right")
    for name in ACHIEVEMENTS:
        achievements.add_row(name, *(rate_text(m["success_rates"][name]) for m in models))
    out.print(achievements)
    out.print(table)
    for line in header_lines(report):
        out.print(line, highlight=False, soft_wrap=True)  # never cut: the view command stays copyable
    for c in report["comparisons"]:
        out.print(c["sentence"], highlight=False)


def write_chart(report: dict, path: Path) -> bool:
    """Grouped bars: success rate per achievement per model, Wilson 95 % whiskers. False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = report["models"]
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(14, 5.5))
    for k, m in enumerate(models):
        rates = [m["success_rates"][a]["rate_pct"] for a in ACHIEVEMENTS]
        whiskers = [[r - m["success_rates"][a]["ci95_pct"][0] for r, a in zip(rates, ACHIEVEMENTS)],
                    [m["success_rates"][a]["ci95_pct"][1] - r for r, a in zip(rates, ACHIEVEMENTS)]]
        positions = [i + (k - (len(models) - 1) / 2) * width for i in range(len(ACHIEVEMENTS))]
        ax.bar(positions, rates, width, yerr=whiskers, capsize=2, error_kw={"elinewidth": 0.8},
               label=f"{m['model']} (score {m['crafter_score']['value']:.1f})")
    ax.set_xticks(range(len(ACHIEVEMENTS)), [a.replace("_", " ") for a in ACHIEVEMENTS], rotation=55, ha="right")
    ax.set_ylabel("episodes that unlocked it (%)")
    ax.set_ylim(0, 118)  # headroom for the legend above the 100 % bars
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(f"Success rate per achievement, 95 % Wilson intervals — {report['models'][0]['episodes']} "
                 f"episodes per model, seeds {seed_text(report['seeds'])}")
    ax.legend(loc="upper center", ncol=min(len(models), 4))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as temp:
            fig.savefig(temp, dpi=110)
    finally:
        plt.close(fig)
    return True


def write_replays(report: dict, db_url: str, report_dir: Path) -> None:
    engine = tracing.open_db(db_url, create=False)
    for index, model in enumerate(report["models"]):
        model["replays"] = {}
        for which in ("best", "worst"):
            episode = model[f"{which}_episode"]
            relative = f"replays/m{index}-{which}-seed{episode['seed']}.gif"
            divergence = replay_to_file(engine, episode["session_id"], report_dir / relative)
            if divergence:
                console.print(f"warning: replay of {episode['session_id']} does not reproduce the trace at "
                              f"{divergence}", highlight=False)
            model["replays"][which] = {"path": None if divergence else relative, "divergence": divergence}
    engine.dispose()


def write_report(report: dict, settings: EvalSettings, report_dir: Path) -> bool:
    """Replays, chart, report.json and report.md (each whole or not at all); True when the chart was drawn."""
    report_dir.mkdir(parents=True, exist_ok=True)
    if settings.eval_replays:
        console.print(f"writing replays of each model's best and worst episode to {report_dir / 'replays'}…",
                      highlight=False)
        write_replays(report, settings.crafter_db_url, report_dir)
    chart = write_chart(report, report_dir / "achievements.png")
    report["chart"] = "achievements.png" if chart else None
    write_text_atomic(report_dir / "report.json", json.dumps(report, indent=2))
    write_text_atomic(report_dir / "report.md", markdown(report, chart))
    return chart


# ---------------------------------------------------------------------------------------

def main() -> int:
    settings = load(EvalSettings)
    playing = not settings.eval_run_ids
    try:
        if playing and any(model not in BUILTIN_POLICIES for model in settings.models):
            console.print(f"endpoint {redact(inference_base_url())}", highlight=False)
    except SettingsError as error:
        exit_usage(str(error))
    name = settings.eval_run_ids[0] if not playing else settings.eval_run_id or new_run_id("eval")
    report_dir = settings.eval_report_dir or Path("reports") / name
    preflight.ready_or_exit(db=(settings.crafter_db_url, playing), dirs={"EVAL_REPORT_DIR": report_dir})
    rerun = (f"EVAL_RUN_ID={name} python -m synth_qwen.eval   (same settings)" if playing else
             f"EVAL_RUN_IDS=\"{' '.join(settings.eval_run_ids)}\" python -m synth_qwen.eval   (same settings)")
    if playing:
        last_seed = settings.eval_seed + settings.eval_episodes - 1
        console.print(f"evaluation {name}: {len(settings.models)} model(s) × {settings.eval_episodes} episodes on "
                      f"{settings.crafter_difficulty}, seeds {settings.eval_seed}..{last_seed}, "
                      f"{settings.crafter_max_steps} turns each -> {redact(settings.crafter_db_url)}", highlight=False)
        runs, stopped = play_until_stopped(lambda: play_models(settings, name), rerun)
        if stopped:
            return stopped
    else:
        if settings.eval_models:
            console.print("EVAL_RUN_IDS is set: EVAL_MODELS is ignored (the models come from the runs)",
                          highlight=False)
        runs = stored_runs(settings)
    for run in runs:
        if not evaluable(run):
            reason = run.sessions[0].status_reason if run.sessions else "no finished episode"
            console.print(f"warning: {run.model} (run {run.run_id}) left out of the report: it never answered "
                          f"({reason})", highlight=False)
    runs = [run for run in runs if run.sessions and evaluable(run)]
    if not runs:
        console.print("error: nothing could be evaluated: no model ever answered", highlight=False)
        return 1

    console.print("computing confidence intervals…", highlight=False)
    report = build_report(runs, name, " ".join(settings.eval_run_ids) or name, settings.crafter_db_url)
    try:
        chart = write_report(report, settings, report_dir)
    except OSError as error:
        console.print(f"error: cannot write the report in EVAL_REPORT_DIR={report_dir} "
                      f"({write_failure(error) or error.strerror}): the episodes are safe in the trace DB; free "
                      f"space, then write it with: {rerun}", highlight=False)
        return 1
    print_tables(report)
    console.print(f"report: {report_dir / 'report.md'} (also report.json"
                  f"{', achievements.png' if chart else ''}{', replays/' if settings.eval_replays else ''})"
                  + ("" if chart else f"; no chart: {PLOT_HINT}"), highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
