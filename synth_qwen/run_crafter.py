"""Step 1: an agent plays Crafter episodes concurrently; every call, step and outcome is traced.

    CRAFTER_MODEL="Qwen/Qwen3-4B-Instruct-2507" CRAFTER_EPISODES=10 CRAFTER_MAX_STEPS=30 \\
    CRAFTER_DIFFICULTY=easy python -m synth_qwen.run_crafter

Settings → seeds → episodes (concurrently) → trace → summary. Rerunning with the same
CRAFTER_RUN_ID skips finished episodes and redoes incomplete ones. Exit 0 when the run
finished, 1 when no episode could reach its policy, 2 on bad settings, 130 on Ctrl-C.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from synth_qwen import metrics, tracing
from synth_qwen.crafter_env import ACHIEVEMENTS, INTERACT_TOOL_NAME, CrafterEnv, interact_tool, system_prompt
from synth_qwen.policy import BUILTIN_DECIDERS, BuiltinAgent, EndpointPolicy, Reply, actions_from_reply
from synth_qwen.settings import (BUILTIN_POLICIES, RolloutSettings, SettingsError, exit_usage, inference_api_key,
                                 inference_base_url, install_sigterm_as_interrupt, load)

console = Console(stderr=True)
INTERRUPTED = "interrupted before the episode ended"
CALL_FAILED = "LM call failed"


def never_reached_policy(session: dict) -> bool:
    """An episode that ended because its policy could not be called (not because it played badly)."""
    return session["status"] == "agent_error" and (session["status_reason"] or "").startswith(CALL_FAILED)


@dataclass
class RunResult:
    run_id: str
    played: int  # episodes finished in this invocation
    unreachable: int  # of those, episodes whose policy call never succeeded
    sessions: list[dict] = field(default_factory=list)  # every finished session of the run
    wall_s: float = 0.0


# ---------------------------------------------------------------------------------------
# One episode

class Episode:
    """Plays one seed to the end and returns the rows to trace."""

    def __init__(self, settings: RolloutSettings, seed: int, agent, system: str, tool_mode: str,
                 on_turn=lambda: None):
        self.s = settings
        self.on_turn = on_turn
        self.seed = seed
        self.agent = agent
        self.system = system
        self.tool_mode = tool_mode
        self.timesteps: list[dict] = []
        self.events: list[dict] = []
        self.messages: list[dict] = []
        self.by_turn: dict[int, list[dict]] = {}
        self.history: list[int] = []  # valid turns, oldest first
        self.env: CrafterEnv | None = None
        self.total_reward = 0.0
        self.invalid_turns = 0
        self.status, self.status_reason = "max_steps", None

    def feedback_line(self, reason: str) -> str:
        how = (f"call interact with 1 to {self.s.crafter_actions_per_turn} valid action names"
               if self.tool_mode == "tools" else "answer 'Actions: name, name'")
        return f"Your previous reply was invalid ({reason}); the game did not advance. Please {how}."

    def add_message(self, turn: int, role: str, content: str | None, tool_calls=None, tool_call_id=None):
        row = {"turn": turn, "position": len(self.by_turn.get(turn, [])), "role": role, "content": content,
               "tool_calls": tool_calls or None, "tool_call_id": tool_call_id}
        self.by_turn.setdefault(turn, []).append(row)
        self.messages.append(row)

    async def play(self) -> None:
        env = CrafterEnv(seed=self.seed, difficulty=self.s.crafter_difficulty)
        observation = await asyncio.to_thread(env.reset)
        self.env = env
        feedback, consecutive_invalid = None, 0
        for turn in range(self.s.crafter_max_steps):
            text = observation.text if feedback is None else f"{feedback}\n{observation.text}"
            self.add_message(turn, "user", text)
            history = self.history[-self.s.crafter_history:] if self.s.crafter_history else []
            request = tracing.request_messages(self.system, self.by_turn, turn, history)
            reply: Reply = await self.agent.act(request, observation, turn)
            self.on_turn()
            event = {"turn": turn, "event_type": "lm_call", "model": self.s.crafter_model,
                     "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                     "cost_usd": reply.cost_usd, "latency_s": round(reply.latency_s, 6),
                     "finish_reason": reply.finish_reason, "attempts": reply.attempts,
                     "history_turns": history, "created_at": tracing.utc_now(), "error": reply.error}
            self.events.append(event)
            if reply.error:
                event.update(valid=False, invalid_reason="call failed")
                self.status, self.status_reason = "agent_error", f"{CALL_FAILED} on turn {turn}: {reply.error}"
                return
            message = reply.assistant_message()
            self.add_message(turn, "assistant", message["content"], message.get("tool_calls"))
            actions, reason = actions_from_reply(reply, self.tool_mode, self.s.crafter_actions_per_turn)
            event.update(valid=actions is not None, invalid_reason=reason)
            if actions is None:
                self.invalid_turns += 1
                consecutive_invalid += 1
                if consecutive_invalid >= self.s.crafter_max_invalid:
                    self.status = "agent_error"
                    self.status_reason = f"{consecutive_invalid} invalid turns in a row; last: {reason}"
                    return
                feedback = self.feedback_line(reason)
                continue
            feedback, consecutive_invalid = None, 0
            end_reason = self.execute(turn, env, actions, reply)
            self.history.append(turn)
            if end_reason:
                self.status = "died" if end_reason == "died" else "completed"
                return
            observation = env.observe()

    def execute(self, turn: int, env: CrafterEnv, actions: list[str], reply: Reply) -> str | None:
        executed, gained, reward, end_reason = [], [], 0.0, None
        for action in actions:
            result = env.step(action)
            executed.append(action)
            reward += result.reward
            gained.extend(result.new_achievements)
            self.timesteps.append({"turn": turn, "step_index": env.steps, "action": action,
                                   "reward": result.reward, "new_achievements": list(result.new_achievements),
                                   "done_reason": result.end_reason})
            if result.done:
                end_reason = result.end_reason
                break
        self.total_reward += reward
        outcome = (f"Executed: {', '.join(executed)}. Reward: {reward:+.1f}. "
                   f"New achievements: {', '.join(gained) or 'none'}.")
        if len(executed) < len(actions):
            outcome += f" Not executed (episode over): {', '.join(actions[len(executed):])}."
        if end_reason:
            outcome += f" Episode over: {'you died' if end_reason == 'died' else 'time is up'}."
        if self.tool_mode == "tools":
            executed_call = next(c for c in reply.tool_calls if c["function"]["name"] == INTERACT_TOOL_NAME)
            for call in reply.tool_calls:  # every call id gets its answer, or the history is invalid
                answer = outcome if call is executed_call else "Ignored: only the first interact call of a turn is executed."
                self.add_message(turn, "tool", answer, tool_call_id=call["id"])
        else:
            self.add_message(turn, "user", f"Result: {outcome}")
        return end_reason

    def summary(self) -> dict:
        prompt = sum(e["prompt_tokens"] or 0 for e in self.events)
        completion = sum(e["completion_tokens"] or 0 for e in self.events)
        answered = [e for e in self.events if not e["error"]]
        cost = None if any(e["cost_usd"] is None for e in answered) else sum(e["cost_usd"] or 0.0 for e in answered)
        achievements = list(self.env.achievements) if self.env else []
        return {"status": self.status, "status_reason": self.status_reason,
                "total_reward": round(self.total_reward, 6), "achievements": achievements,
                "num_achievements": len(achievements), "env_steps": len(self.timesteps),
                "turns": len(self.events), "invalid_turns": self.invalid_turns,
                "prompt_tokens": prompt, "completion_tokens": completion, "cost_usd": cost}


# ---------------------------------------------------------------------------------------
# The run

class Runner:
    def __init__(self, settings: RolloutSettings, run_id: str, purpose: str = "rollout"):
        self.s = settings
        self.run_id = run_id
        self.purpose = purpose
        self.tool_mode = settings.crafter_tool_mode
        self.system = system_prompt(settings.crafter_actions_per_turn, self.tool_mode, settings.crafter_prompt)
        self.tools = [interact_tool(settings.crafter_actions_per_turn)] if self.tool_mode == "tools" else None
        self.builtin = settings.crafter_model in BUILTIN_POLICIES
        self.endpoint = None if self.builtin else EndpointPolicy(
            settings, inference_base_url(), inference_api_key(), self.tools)
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace-writer")  # one writer
        self.engine = tracing.open_db(settings.crafter_db_url)
        self.in_flight: set[str] = set()

    def request_params(self) -> dict:
        if self.endpoint:
            return self.endpoint.request_params()
        return {"model": self.s.crafter_model}

    async def write(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)

    def agent_for(self, seed: int, session_id: str):
        if self.endpoint:
            return self.endpoint
        decide = BUILTIN_DECIDERS[self.s.crafter_model](seed, self.s.crafter_actions_per_turn)
        return BuiltinAgent(decide, self.tool_mode, session_id)

    async def episode(self, index: int, seed: int, progress: "RunProgress") -> tuple[dict, bool]:
        session_id = "sess_" + uuid.uuid4().hex[:20]
        await self.write(tracing.register_session, self.engine, {
            "session_id": session_id, "experiment_id": self.run_id, "run_id": self.run_id, "seed": seed,
            "difficulty": self.s.crafter_difficulty, "model": self.s.crafter_model, "purpose": self.purpose,
            "policy": self.s.crafter_model if self.builtin else "openai",
            "system_prompt": self.system, "tools": self.tools, "request_params": self.request_params(),
            "metadata": {"episode_index": index, "max_turns": self.s.crafter_max_steps,
                         "actions_per_turn": self.s.crafter_actions_per_turn, "history": self.s.crafter_history,
                         "tool_mode": self.tool_mode}})
        self.in_flight.add(session_id)
        episode = Episode(self.s, seed, self.agent_for(seed, session_id), self.system, self.tool_mode,
                          progress.turn_done)
        await episode.play()
        summary = episode.summary()
        await self.write(tracing.finish_session, self.engine, session_id, summary,
                         episode.timesteps, episode.events, episode.messages)
        self.in_flight.discard(session_id)
        unreachable = all(e["error"] for e in episode.events)
        return dict(summary, session_id=session_id, seed=seed), unreachable

    async def run(self, seeds: list[int], progress: "RunProgress") -> RunResult:
        start = time.perf_counter()
        limit = asyncio.Semaphore(self.s.crafter_concurrency)
        result = RunResult(self.run_id, played=0, unreachable=0)

        async def bounded(index, seed):
            async with limit:
                summary, unreachable = await self.episode(index, seed, progress)
            result.played += 1
            result.unreachable += unreachable
            progress.episode_done(summary)

        first_seed = self.s.crafter_seed
        try:
            await asyncio.gather(*(bounded(seed - first_seed, seed) for seed in seeds))
        finally:
            if self.in_flight:
                await self.write(tracing.mark_incomplete, self.engine, list(self.in_flight), INTERRUPTED)
            if self.endpoint:
                await self.endpoint.close()
        result.wall_s = time.perf_counter() - start
        result.sessions = tracing.sessions(self.engine, tracing.session_traces.c.run_id == self.run_id)
        return result


def new_run_id(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def pending_seeds(runner: Runner) -> tuple[list[int], int, int]:
    """Seeds still to play in this run: (seeds, finished before, incomplete dropped)."""
    s = runner.s
    tracing.ensure_experiment(runner.engine, runner.run_id, runner.purpose, s.model_dump(mode="json"))
    dropped = tracing.drop_incomplete(runner.engine, runner.run_id)
    done = tracing.finished_seeds(runner.engine, runner.run_id)
    wanted = [s.crafter_seed + i for i in range(s.crafter_episodes)]
    return [seed for seed in wanted if seed not in done], len(done & set(wanted)), dropped


# ---------------------------------------------------------------------------------------
# Progress and summary

class RunProgress:
    """A rich bar on a terminal; one plain line per episode elsewhere (CI logs)."""

    HEARTBEAT_S = 20  # in plain mode, a line at least this often while turns are being played

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done = total, label, []
        self.turns, self.started, self.last_line = 0, time.monotonic(), time.monotonic()
        self.bar = None
        if console.is_terminal and total:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("{task.fields[means]}"), console=console)
            self.task = self.bar.add_task(label, total=total, means="")

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def means(self) -> str:
        n = len(self.done)
        turns = sum(d["turns"] for d in self.done) or 1
        tokens = sum(d["prompt_tokens"] + d["completion_tokens"] for d in self.done)
        return (f"ach {sum(d['num_achievements'] for d in self.done) / n:.2f} | "
                f"reward {sum(d['total_reward'] for d in self.done) / n:.2f} | "
                f"invalid {100 * sum(d['invalid_turns'] for d in self.done) / turns:.1f}% | "
                f"tok/turn {tokens / turns:.0f}")

    def turn_done(self) -> None:
        self.turns += 1
        now = time.monotonic()
        if not self.bar and now - self.last_line >= self.HEARTBEAT_S:
            self.last_line = now
            print(f"[{self.label}] {len(self.done)}/{self.total} episodes done, {self.turns} turns played, "
                  f"{now - self.started:.0f}s", file=sys.stderr, flush=True)

    def episode_done(self, summary: dict) -> None:
        self.last_line = time.monotonic()
        self.done.append(summary)
        if self.bar:
            self.bar.update(self.task, advance=1, means=self.means())
        else:
            print(f"[{self.label} {len(self.done)}/{self.total}] seed={summary['seed']} "
                  f"status={summary['status']} achievements={summary['num_achievements']} "
                  f"reward={summary['total_reward']:.1f} turns={summary['turns']} | means: {self.means()}",
                  file=sys.stderr, flush=True)


def run_summary(sessions: list[dict], wall_s: float) -> dict:
    finished = [s for s in sessions if s["status"] != "incomplete"]
    n = len(finished) or 1
    rates = metrics.success_rates([s["achievements"] or [] for s in finished])
    turns = sum(s["turns"] or 0 for s in finished)
    costs = [s["cost_usd"] for s in finished]
    statuses = {}
    for s in finished:
        statuses[s["status"]] = statuses.get(s["status"], 0) + 1
    return {
        "episodes": len(finished), "status_counts": statuses,
        "crafter_score": round(metrics.crafter_score(rates.values()), 3) if finished else None,
        "progression_pct": round(100 * sum(metrics.progression(s["achievements"] or []) for s in finished) / n, 2),
        "mean_achievements": round(sum(s["num_achievements"] or 0 for s in finished) / n, 3),
        "mean_reward": round(sum(s["total_reward"] or 0 for s in finished) / n, 3),
        "mean_turns": round(turns / n, 2),
        "mean_env_steps": round(sum(s["env_steps"] or 0 for s in finished) / n, 2),
        "invalid_turn_pct": round(100 * sum(s["invalid_turns"] or 0 for s in finished) / (turns or 1), 2),
        "prompt_tokens": sum(s["prompt_tokens"] or 0 for s in finished),
        "completion_tokens": sum(s["completion_tokens"] or 0 for s in finished),
        "tokens_per_turn": round(sum((s["prompt_tokens"] or 0) + (s["completion_tokens"] or 0)
                                     for s in finished) / (turns or 1), 1),
        "cost_usd": None if any(c is None for c in costs) else round(sum(costs), 6),
        "success_rates_pct": {k: round(v, 1) for k, v in rates.items()},
        "wall_s": round(wall_s, 2),
    }


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


async def play(settings: RolloutSettings, run_id: str, purpose: str, label: str) -> RunResult:
    """Play every pending seed of the run; the shared entry point of run_crafter and eval."""
    runner = Runner(settings, run_id, purpose)
    seeds, kept, dropped = pending_seeds(runner)
    if kept or dropped:
        console.print(f"resuming run {run_id}: {kept} episodes already finished, "
                      f"{dropped} incomplete ones will be replayed", highlight=False)
    with RunProgress(len(seeds), label) as progress:
        return await runner.run(seeds, progress)


def main() -> int:
    settings = load(RolloutSettings)
    try:
        if settings.crafter_model not in BUILTIN_POLICIES:
            inference_base_url()
    except SettingsError as error:
        exit_usage(str(error))
    run_id = settings.crafter_run_id or new_run_id()
    where = settings.crafter_db_url
    console.print(f"run {run_id}: {settings.crafter_episodes} episodes of {settings.crafter_model} on "
                  f"{settings.crafter_difficulty}, seeds {settings.crafter_seed}..{settings.crafter_seed + settings.crafter_episodes - 1}, "
                  f"{settings.crafter_max_steps} turns each" +
                  ("" if settings.crafter_model in BUILTIN_POLICIES else f", endpoint {inference_base_url()}") +
                  f" -> {where}", highlight=False)
    install_sigterm_as_interrupt()
    try:
        result = asyncio.run(play(settings, run_id, "rollout", "episodes"))
    except KeyboardInterrupt:
        console.print(f"\ninterrupted: finished episodes are saved; in-flight ones are marked incomplete.\n"
                      f"resume with: {resume_hint(run_id)}", highlight=False)
        return 130
    summary = run_summary(result.sessions, result.wall_s)
    print_summary(summary, run_id, settings)
    if settings.crafter_summary_json:
        settings.crafter_summary_json.parent.mkdir(parents=True, exist_ok=True)
        settings.crafter_summary_json.write_text(json.dumps(dict(summary, run_id=run_id), indent=2))
    if result.played and result.unreachable == result.played:
        errors = {s["status_reason"] for s in result.sessions if s["status"] == "agent_error"}
        console.print(f"error: no episode could reach the policy endpoint {inference_base_url()}: "
                      f"{sorted(errors)[0] if errors else 'unknown'}", highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
