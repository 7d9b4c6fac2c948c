"""Rounds: play → data → fine-tune → evaluate, several times, in one command.

    QWEN_BASE_MODEL=local/tiny-qwen3 ROUNDS=3 ROUNDS_DIR=runs/rounds CRAFTER_DIFFICULTY=easy \\
    CRAFTER_MAX_STEPS=30 EVAL_EPISODES=20 python -m synth_qwen.rounds

Round 0 fine-tunes the base model on the teacher's own episodes. Each later round lets the newest
model play fresh *training* seeds with sampling, turns those traces into data — every turn
relabelled by the teacher (DAgger), and/or the student's own best episodes (rejection sampling) —
and fine-tunes again: the base model on all data so far (ROUNDS_INIT=base) or the newest model on
the new data (previous). ROUNDS_DATA=dpo makes each later round preference tuning instead, as ETO
does: the student's turns where the teacher would act otherwise become pairs (the teacher's reply
over the student's own, filter_traces FILTER_FORMAT=dpo) and a DPO job trains the previous
round's model on them (whatever ROUNDS_INIT says). Every round is evaluated on the held-out seeds against builtin:random
(paired) at the first of ROUNDS_EVAL_TEMPERATURES, the last round at each of them; the teacher is
evaluated once as the ceiling.

Every stage is the real module (run_crafter, filter_traces, sft_kickoff, eval) run with env vars;
each resumes on its own (run ids, the kickoff state file), so a rerun continues where the last one
stopped. Prints and writes ROUNDS_DIR/rounds.md, rounds.json and rounds.png.
Exit 0 done, 1 a stage failed (its own message says why), 2 bad settings, 130 interrupted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from synth_qwen import preflight, stats
from synth_qwen.atomic_file import write_text_atomic
from synth_qwen.settings import RoundsSettings, exit_usage, install_sigterm_as_interrupt, load, redact

RANDOM = "builtin:random"


class StageFailed(Exception):
    """A stage module exited non-zero; it has already said why."""


@dataclass
class RoundResult:
    round: int
    model: str
    examples: int
    trained_tokens: int | None
    minutes: float
    evals: dict  # temperature (str) -> {progression, ci95, score, score_ci95, vs_random, vs_random_ci95, invalid_pct}


# ---------------------------------------------------------------------------------------
# Seeds: the teacher's block, then one block per later round; never the held-out eval seeds

def training_seeds(s: RoundsSettings, round_index: int) -> tuple[int, int]:
    """(first seed, episodes) played for training in this round."""
    if round_index == 0:
        return s.crafter_seed, s.rounds_teacher_episodes
    first = s.crafter_seed + s.rounds_teacher_episodes + (round_index - 1) * s.rounds_student_episodes
    return first, s.rounds_student_episodes


def check_seeds(s: RoundsSettings) -> None:
    """Exit 2 when any training seed of any round would be one of the held-out eval seeds."""
    first = s.crafter_seed
    last_first, last_count = training_seeds(s, s.rounds - 1)
    end = last_first + last_count  # training seeds are first .. end-1, contiguous
    if first < s.eval_seed + s.eval_episodes and s.eval_seed < end:
        exit_usage(f"training seeds {first}..{end - 1} overlap the eval seeds {s.eval_seed}.."
                   f"{s.eval_seed + s.eval_episodes - 1}; move CRAFTER_SEED or EVAL_SEED")


# ---------------------------------------------------------------------------------------
# Stages: the real modules, as a user would run them

def run_module(module: str, **env: str | int | float) -> None:
    shown = " ".join(f"{k}={redact(str(v))}" for k, v in env.items())  # a DB URL may hold a password
    print(f"\n-- python -m synth_qwen.{module}  {shown}", flush=True)
    result = subprocess.run([sys.executable, "-m", f"synth_qwen.{module}"],
                            env={**os.environ, **{k: str(v) for k, v in env.items()}})
    if result.returncode == 130:
        raise KeyboardInterrupt
    if result.returncode != 0:
        raise StageFailed(f"python -m synth_qwen.{module} exited with status {result.returncode}")


class Rounds:
    def __init__(self, s: RoundsSettings):
        self.s = s
        self.dir = s.rounds_dir

    def run_id(self, round_index: int, stage: str) -> str:
        return f"{self.s.rounds_run_prefix}-r{round_index}-{stage}"

    def play(self, round_index: int, model: str) -> str:
        first, count = training_seeds(self.s, round_index)
        run_id = self.run_id(round_index, "play")
        extra = {} if model.startswith("builtin:") else {"CRAFTER_TEMPERATURE": self.s.rounds_student_temperature}
        if round_index == 0 and self.s.rounds_teacher_noise:
            extra["CRAFTER_EXPERT_NOISE"] = self.s.rounds_teacher_noise
        run_module("run_crafter", CRAFTER_MODEL=model, CRAFTER_SEED=first, CRAFTER_EPISODES=count,
                   CRAFTER_RUN_ID=run_id, CRAFTER_DB_URL=self.s.crafter_db_url, **extra)
        return run_id

    def data(self, round_index: int, run_id: str, model: str) -> list[Path]:
        """This round's training files: the teacher's episodes (round 0), else the student's turns
        relabelled by the teacher and/or the student's own episodes that earned enough reward."""
        common = dict(CRAFTER_DB_URL=self.s.crafter_db_url, FILTER_RUN_IDS=run_id, MODELS=model,
                      FILTER_VALIDATION_FRACTION=0)
        # Round 0: the teacher's episodes as played, or with DART noise, every state relabelled clean
        kinds = (["relabel"] if self.s.rounds_teacher_noise else ["teacher"]) if round_index == 0 else \
            {"relabel": ["relabel"], "rejection": ["rejection"], "both": ["relabel", "rejection"],
             "dpo": ["dpo"]}[self.s.rounds_data]
        files = []
        for kind in kinds:
            path = self.dir / f"round{round_index}-{kind}.jsonl"
            if kind in ("relabel", "dpo"):  # every state the student reached, whatever it earned (DAgger)
                run_module("filter_traces", OUTPUT_JSONL=path, FILTER_RELABEL=self.s.rounds_teacher,
                           FILTER_FORMAT="dpo" if kind == "dpo" else "sft", MIN_TOTAL_REWARD=-1e9, MIN_ACHIEVEMENTS=0,
                           FILTER_STATUSES="completed died max_steps agent_error", **common)
            elif kind == "rejection":
                try:
                    run_module("filter_traces", OUTPUT_JSONL=path, MIN_TOTAL_REWARD=self.s.rounds_min_reward, **common)
                except StageFailed:
                    if kinds == ["rejection"]:
                        raise
                    print(f"no episode of the student earned ROUNDS_MIN_REWARD={self.s.rounds_min_reward:g}: "
                          "this round learns from the relabelled turns only", flush=True)
                    continue
            else:
                run_module("filter_traces", OUTPUT_JSONL=path, **common)
            files.append(path)
        return files

    def train(self, round_index: int, files: list[Path], previous: str | None) -> tuple[str, int, int | None]:
        """Concatenate the round's training set, fine-tune, return (model id, examples, trained tokens)."""
        path = self.dir / f"round{round_index}-train.jsonl"
        lines = [line for file in files for line in file.read_text().splitlines() if line.strip()]
        write_text_atomic(path, "\n".join(lines) + "\n")
        dpo = self.dpo_round(round_index)
        base = previous if ((self.s.rounds_init == "previous" or dpo) and previous) else self.s.qwen_base_model
        state = self.dir / f"round{round_index}.sft_state.json"
        run_module("sft_kickoff", QWEN_BASE_MODEL=base, QWEN_TRAINING_JSONL=path, SFT_STATE_FILE=state,
                   SFT_SUFFIX=f"r{round_index}", SFT_METHOD="dpo" if dpo else "supervised")
        job = json.loads(state.read_text())
        return job["fine_tuned_model"], len(lines), job.get("trained_tokens")

    def dpo_round(self, round_index: int) -> bool:
        """Preference pairs and a DPO job from the previous model (round 0 is always SFT)."""
        return self.s.rounds_data == "dpo" and round_index > 0

    def evaluate(self, round_index: int | str, models: list[str], temperatures: list[float]) -> dict:
        """report.json per temperature, every model paired with builtin:random on the same seeds."""
        reports = {}
        for temperature in temperatures:
            tag = f"t{temperature:g}"
            report_dir = self.dir / "eval" / f"round{round_index}-{tag}"
            run_module("eval", EVAL_MODELS=" ".join([RANDOM, *models]), CRAFTER_TEMPERATURE=temperature,
                       EVAL_RUN_ID=self.run_id(round_index, f"eval-{tag}"), EVAL_REPORT_DIR=report_dir,
                       CRAFTER_DB_URL=self.s.crafter_db_url, EVAL_SEED=self.s.eval_seed,
                       EVAL_EPISODES=self.s.eval_episodes, EVAL_REPLAYS="false")
            reports[f"{temperature:g}"] = json.loads((report_dir / "report.json").read_text())
        return reports


# ---------------------------------------------------------------------------------------
# The table

def eval_row(report: dict, model: str) -> dict:
    entry = next(m for m in report["models"] if m["model"] == model)
    row = {"progression": entry["progression_pct"]["value"], "ci95": entry["progression_pct"]["ci95"],
           "score": entry["crafter_score"]["value"], "score_ci95": entry["crafter_score"]["ci95"],
           "invalid_pct": entry["invalid_turn_pct"], "achievements": entry["mean_achievements"]}
    paired = next((c for c in report["comparisons"] if c["model"] == model), None)
    if paired and "progression_pct_diff" in paired:
        row.update(vs_random=paired["progression_pct_diff"]["value"], vs_random_ci95=paired["progression_pct_diff"]["ci95"])
    return row


def ci(low_high: list[float]) -> str:
    return f"{low_high[0]:.1f}–{low_high[1]:.1f}"


def table_markdown(results: list[RoundResult], references: dict, temperatures: list[str]) -> str:
    head = ["round", "model", "examples", "tokens", "minutes"]
    for t in temperatures:
        head += [f"progression % (T={t})", f"vs random (T={t})", f"score (T={t})", f"invalid % (T={t})"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in results:
        cells = [str(r.round), f"`{r.model}`", f"{r.examples:,}", f"{r.trained_tokens:,}" if r.trained_tokens else "–",
                 f"{r.minutes:.1f}"]
        for t in temperatures:
            e = r.evals.get(t)
            if e is None:
                cells += ["–"] * 4
                continue
            cells += [f"{e['progression']:.1f} ({ci(e['ci95'])})",
                      f"{e['vs_random']:+.1f} ({e['vs_random_ci95'][0]:+.1f} to {e['vs_random_ci95'][1]:+.1f})",
                      f"{e['score']:.1f} ({ci(e['score_ci95'])})", f"{e['invalid_pct']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    refs = [f"`{name}` {row['progression']:.1f} % ({ci(row['ci95'])}), score {row['score']:.1f}"
            for name, row in references.items()]
    return "\n".join(lines) + "\n\nReferences on the same seeds: " + "; ".join(refs) + ".\n"


def verdict(result: RoundResult, temperature: str) -> str:
    e = result.evals[temperature]
    low, high = e["vs_random_ci95"]
    if not stats.excludes_zero((low, high)):
        how = "is not distinguishable from builtin:random: the paired 95 % CI of the difference includes 0"
    elif low > 0:
        how = "beats builtin:random: the paired 95 % CI of the difference is above 0"
    else:
        how = "is worse than builtin:random: the paired 95 % CI of the difference is below 0"
    return (f"Round {result.round}'s model {how} (progression {e['progression']:.1f} %, "
            f"{e['vs_random']:+.1f} points vs random, 95 % CI {low:+.1f} to {high:+.1f}; T={temperature}).")


def chart(results: list[RoundResult], references: dict, temperatures: list[str], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(6.5, 4))
    rounds = [r.round for r in results]
    for t in temperatures:
        shown = [r for r in results if t in r.evals]
        values = [r.evals[t]["progression"] for r in shown]
        errors = [[v - r.evals[t]["ci95"][0] for v, r in zip(values, shown)],
                  [r.evals[t]["ci95"][1] - v for v, r in zip(values, shown)]]
        axes.errorbar([r.round for r in shown], values, yerr=errors, marker="o", capsize=4, label=f"fine-tuned, T={t}")
    for (name, row), style in zip(references.items(), ("--", ":")):
        axes.axhline(row["progression"], linestyle=style, color="grey", label=f"{name} ({row['progression']:.1f} %)")
    axes.set_xlabel("round")
    axes.set_ylabel("progression % (95 % CI)")
    axes.set_xticks(rounds)
    axes.set_ylim(bottom=0)
    axes.set_title("Progression per round on the held-out seeds")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# ---------------------------------------------------------------------------------------

def main() -> int:
    s = load(RoundsSettings)
    install_sigterm_as_interrupt()
    check_seeds(s)
    preflight.ready_or_exit(db=(s.crafter_db_url, True), dirs={"ROUNDS_DIR": s.rounds_dir})
    s.rounds_dir.mkdir(parents=True, exist_ok=True)
    temperatures = [f"{t:g}" for t in s.rounds_eval_temperatures]
    rounds = Rounds(s)
    results: list[RoundResult] = []
    datasets: list[Path] = []
    model = None
    try:
        headline = s.rounds_eval_temperatures[:1]  # builtins ignore temperature; earlier rounds get the headline only
        reference = rounds.evaluate("ref", [s.rounds_teacher], headline)[temperatures[0]]
        references = {RANDOM: eval_row(reference, RANDOM), s.rounds_teacher: eval_row(reference, s.rounds_teacher)}
        for round_index in range(s.rounds):
            started = time.monotonic()
            print(f"\n== round {round_index} ==", flush=True)
            player = s.rounds_teacher if round_index == 0 else model
            run_id = rounds.play(round_index, player)
            new = rounds.data(round_index, run_id, player)
            datasets += new
            files = new if ((s.rounds_init == "previous" or rounds.dpo_round(round_index)) and model) else datasets
            model, examples, tokens = rounds.train(round_index, files, model)
            last = round_index == s.rounds - 1
            reports = rounds.evaluate(round_index, [model], s.rounds_eval_temperatures if last else headline)
            results.append(RoundResult(round_index, model, examples, tokens, (time.monotonic() - started) / 60,
                                       {t: eval_row(report, model) for t, report in reports.items()}))
    except StageFailed as error:
        print(f"error: {error}; rerun the same command to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    text = table_markdown(results, references, temperatures)
    sentence = verdict(results[-1], temperatures[0])
    drawn = chart(results, references, temperatures, s.rounds_dir / "rounds.png")
    (s.rounds_dir / "rounds.md").write_text(f"# Rounds\n\n{text}\n{sentence}\n" +
                                            ("\n![progression per round](rounds.png)\n" if drawn else ""))
    (s.rounds_dir / "rounds.json").write_text(json.dumps(
        {"settings": {**json.loads(s.model_dump_json()), "crafter_db_url": redact(s.crafter_db_url)}, "references": references,
         "rounds": [asdict(r) for r in results], "verdict": sentence}, indent=2))
    print(f"\n== rounds ==\n{text}\n{sentence}\ntable: {s.rounds_dir / 'rounds.md'}"
          + (f"   chart: {s.rounds_dir / 'rounds.png'}" if drawn else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
