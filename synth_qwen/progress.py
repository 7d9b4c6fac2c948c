"""A run on the console, for run_crafter and eval: the endpoint preflight, then a rich bar on a terminal
or one plain line per episode (and a heartbeat) in CI logs, and one line on why a run stopped early.
Everything goes to stderr; stdout keeps the results."""
from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from synth_qwen import run_stats
from synth_qwen.policy import endpoint_problem
from synth_qwen.rollout import RunResult, Runner
from synth_qwen.settings import (BUILTIN_POLICIES, RolloutSettings, inference_api_key, inference_base_url,
                                 install_sigterm_as_interrupt, redact)
from synth_qwen.tracing import Session
from synth_qwen.write_errors import write_failure

console = Console(stderr=True, soft_wrap=True)  # a log line is never cut at 80 columns: commands stay copyable


class RunProgress:
    HEARTBEAT_S = 20  # in plain mode, a line at least this often while turns are being played

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done, self.means = total, label, 0, run_stats.RunningMeans()
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

    def turn_done(self) -> None:
        self.turns += 1
        now = time.monotonic()
        if not self.bar and now - self.last_line >= self.HEARTBEAT_S:
            self.last_line = now
            print(f"[{self.label}] {self.done}/{self.total} episodes done, {self.turns} turns played, "
                  f"{now - self.started:.0f}s", file=sys.stderr, flush=True)

    def episode_done(self, session: Session) -> None:
        self.last_line = time.monotonic()
        self.done += 1
        self.means.add(session)
        if self.bar:
            self.bar.update(self.task, advance=1, means=self.means.line())
        else:
            print(f"[{self.label} {self.done}/{self.total}] seed={session.seed} "
                  f"status={session.status} achievements={session.num_achievements} "
                  f"reward={session.total_reward:.1f} turns={session.turns} | means: {self.means.line()}",
                  file=sys.stderr, flush=True)


class EndpointUnreachable(Exception):
    """The policy endpoint failed the preflight call; the message says what to do."""


async def play(settings: RolloutSettings, run_id: str, purpose: str, label: str) -> RunResult:
    """Play every pending seed of the run with progress on the console (run_crafter and eval). An
    endpoint model is called once first, so an endpoint that is not there costs a second, not a run."""
    if settings.crafter_model not in BUILTIN_POLICIES:
        problem = await endpoint_problem(inference_base_url(), inference_api_key())
        if problem:
            raise EndpointUnreachable(
                f"the policy endpoint {redact(inference_base_url())} cannot be used: {problem}. Start one "
                f"(python -m synth_qwen.serve, or vllm serve …) and point OPENAI_BASE_URL at its /v1, "
                f"or play without one: CRAFTER_MODEL=builtin:expert")
    runner = Runner(settings, run_id, purpose)
    plan = runner.plan()
    if plan.finished or plan.stale or plan.held:
        in_flight = f", {len(plan.held)} in flight in other processes ({owners(plan.held)})" if plan.held else ""
        console.print(f"resuming run {run_id}: {plan.finished} episodes already finished, {plan.stale} incomplete "
                      f"ones will be replayed{in_flight}", highlight=False)
    runner.on_wait = WaitNotice(settings.crafter_lease_s)
    with RunProgress(len(plan.to_play) + plan.stale, label) as progress:
        result = await runner.run(plan.to_play, progress.turn_done, progress.episode_done)
    if result.lost:
        console.print(f"warning: {len(result.lost)} episodes (seeds {', '.join(map(str, result.lost))}) were taken "
                      f"over by another process while this one played them (no heartbeat for CRAFTER_LEASE_S="
                      f"{settings.crafter_lease_s:g}s); that process's copies count, these were dropped", highlight=False)
    return result


def owners(held: dict[int, str]) -> str:
    return ", ".join(sorted(set(held.values()))) or "none"


class WaitNotice:
    """One line when this process has nothing left to claim but others still play seeds of the run."""

    def __init__(self, lease_s: float):
        self.lease_s, self.said = lease_s, False

    def __call__(self, held: dict[int, str]) -> None:
        if not self.said:
            self.said = True
            console.print(f"waiting for {len(held)} episodes in flight in other processes ({owners(held)}); "
                          f"any whose process stops heartbeating for {self.lease_s:g}s is replayed here",
                          highlight=False)


def play_until_stopped(play_all, resume: str):
    """(what play_all() returns, None), or (None, exit code) after one line on why it stopped: 1 when
    the endpoint failed its preflight or the trace DB refused a write (a full disk), 130 on Ctrl-C or
    SIGTERM (with `resume`, the command that goes on)."""
    install_sigterm_as_interrupt()
    try:
        return play_all(), None
    except EndpointUnreachable as error:
        console.print(f"error: {error}", highlight=False)
        return None, 1
    except Exception as error:
        reason = write_failure(error)
        if reason is None:
            raise
        # each finished episode was committed on its own, so nothing before this write is lost
        console.print(f"error: the trace DB could not be written ({reason}): finished episodes are safe; free "
                      f"space, then resume with: {resume}", highlight=False)
        return None, 1
    except KeyboardInterrupt:
        console.print(f"\ninterrupted: finished episodes are saved; in-flight ones are marked incomplete.\n"
                      f"resume with: {resume}", highlight=False)
        return None, 130
