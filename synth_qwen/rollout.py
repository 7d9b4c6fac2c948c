"""Playing Crafter episodes into the trace DB: one seed to the end (`Episode`), many at once (`Runner`).

No printing and no CLI: run_crafter and eval call `Runner.run` and show progress through its callbacks.
Every episode is registered as `incomplete` when it starts and written whole, in one transaction,
when it ends; an interrupted run marks its in-flight episodes incomplete, and a rerun redoes them.

Any number of processes (on any number of machines) may play the same run id on one database: each
claims seeds one at a time (`tracing.claim_seed`), heartbeats the ones it plays, takes over those whose
process stopped heartbeating for CRAFTER_LEASE_S, and waits for the rest, so every seed is finished
exactly once and every process ends with the whole run.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from synth_qwen import tracing
from synth_qwen.action_schema import INTERACT_TOOL_NAME, interact_tool, system_prompt
from synth_qwen.crafter_env import CrafterEnv
from synth_qwen.observation import observe
from synth_qwen.policy import BUILTIN_DECIDERS, BuiltinAgent, EndpointPolicy, Reply, actions_from_reply
from synth_qwen.settings import BUILTIN_POLICIES, RolloutSettings, inference_api_key, inference_base_url, redact
from synth_qwen.tracing import LMEvent, Message, Session, Step

INTERRUPTED = "interrupted before the episode ended"


@dataclass
class RunResult:
    run_id: str
    played: int  # episodes finished in this invocation
    unreachable: int  # of those, episodes whose policy call never succeeded
    sessions: list[Session] = field(default_factory=list)  # every session of the run
    wall_s: float = 0.0
    lost: list[int] = field(default_factory=list)  # seeds taken over while this process played them


@dataclass(frozen=True)
class Plan:
    """Where the run's seeds stand when a process starts."""
    to_play: list[int]  # seeds with no episode yet, in order
    finished: int
    stale: int  # incomplete episodes nobody plays: this process redoes them
    held: dict[int, str]  # seed -> the live process playing it


def new_run_id(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


# ---------------------------------------------------------------------------------------
# One episode

class Episode:
    """Plays one seed to the end and keeps the records to trace."""

    def __init__(self, settings: RolloutSettings, seed: int, agent, system: str, on_turn: Callable[[], None]):
        self.s = settings
        self.seed = seed
        self.agent = agent
        self.system = system
        self.tool_mode = settings.crafter_tool_mode
        self.on_turn = on_turn
        self.steps: list[Step] = []
        self.events: list[LMEvent] = []
        self.messages: list[Message] = []
        self.by_turn: dict[int, list[Message]] = {}
        self.history: list[int] = []  # valid turns, oldest first
        self.env: CrafterEnv | None = None
        self.total_reward = 0.0
        self.invalid_turns = 0
        self.status, self.status_reason, self.failure = "max_steps", None, None
        self.death_cause: str | None = None

    def feedback_line(self, reason: str) -> str:
        how = (f"call {INTERACT_TOOL_NAME} with 1 to {self.s.crafter_actions_per_turn} valid action names"
               if self.tool_mode == "tools" else "answer 'Actions: name, name'")
        return f"Your previous reply was invalid ({reason}); the game did not advance. Please {how}."

    def last_actions_line(self) -> str | None:
        """CRAFTER_LAST_ACTIONS: the actions the env executed on the last valid turn."""
        if not self.s.crafter_last_actions or not self.history:
            return None
        last_turn = self.history[-1]
        return f"Your last actions: {', '.join(step.action for step in self.steps if step.turn == last_turn)}."

    def add_message(self, turn: int, role: str, content: str | None, tool_calls=None, tool_call_id=None):
        message = Message(turn, len(self.by_turn.get(turn, [])), role, content, tool_calls or None, tool_call_id)
        self.by_turn.setdefault(turn, []).append(message)
        self.messages.append(message)

    def end(self, status: str, reason: str | None = None, failure: str | None = None) -> None:
        self.status, self.status_reason, self.failure = status, reason, failure

    async def play(self) -> None:
        env = CrafterEnv(seed=self.seed, difficulty=self.s.crafter_difficulty)
        await asyncio.to_thread(env.start)
        self.env = env
        observation = observe(env)
        feedback, consecutive_invalid = None, 0
        for turn in range(self.s.crafter_max_steps):
            lines = [feedback, self.last_actions_line(), observation.text]
            text = "\n".join(line for line in lines if line)
            self.add_message(turn, "user", text)
            history = self.history[-self.s.crafter_history:] if self.s.crafter_history else []
            request = tracing.request_messages(self.system, self.by_turn, turn, history)
            reply: Reply = await self.agent.act(request, observation, turn, self.seed)
            self.on_turn()
            event = LMEvent(turn=turn, event_type="lm_call", model=self.s.crafter_model,
                            prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                            cost_usd=reply.cost_usd, latency_s=round(reply.latency_s, 6),
                            finish_reason=reply.finish_reason, attempts=reply.attempts, history_turns=history,
                            created_at=tracing.utc_now(), error=reply.error)
            self.events.append(event)
            if reply.error:
                event.valid, event.invalid_reason = False, "call failed"
                self.end("agent_error", f"LM call failed on turn {turn}: {reply.error}", tracing.CALL_FAILED)
                return
            message = reply.assistant_message()
            self.add_message(turn, "assistant", message["content"], message.get("tool_calls"))
            actions, reason = actions_from_reply(reply, self.tool_mode, self.s.crafter_actions_per_turn)
            event.valid, event.invalid_reason = actions is not None, reason
            if actions is None:
                self.invalid_turns += 1
                consecutive_invalid += 1
                if consecutive_invalid >= self.s.crafter_max_invalid:
                    self.end("agent_error", f"{consecutive_invalid} invalid turns in a row; last: {reason}",
                             tracing.INVALID_TURNS)
                    return
                feedback = self.feedback_line(reason)
                continue
            feedback, consecutive_invalid = None, 0
            end_reason = self.execute(turn, env, actions, reply)
            self.history.append(turn)
            if end_reason:
                self.end("died" if end_reason == "died" else "completed")
                return
            observation = observe(env)

    def execute(self, turn: int, env: CrafterEnv, actions: list[str], reply: Reply) -> str | None:
        executed, gained, reward, end_reason = [], [], 0.0, None
        for action in actions:
            result = env.act(action)
            executed.append(action)
            reward += result.reward
            gained.extend(result.new_achievements)
            self.steps.append(Step(turn, env.steps, action, result.reward, list(result.new_achievements),
                                   result.end_reason))
            if result.done:
                end_reason, self.death_cause = result.end_reason, result.death_cause
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

    @property
    def unreachable(self) -> bool:
        """No call of this episode ever reached the policy."""
        return all(event.error for event in self.events)

    def summary(self) -> dict:
        """The session_traces values this episode ends with."""
        answered = [e for e in self.events if not e.error]
        cost = None if any(e.cost_usd is None for e in answered) else sum(e.cost_usd or 0.0 for e in answered)
        achievements = list(self.env.achievements) if self.env else []
        end_cause = self.death_cause if self.status == "died" else tracing.END_CAUSE_OF_STATUS[self.status]
        return {"status": self.status, "status_reason": self.status_reason, "failure": self.failure,
                "end_cause": end_cause,
                "total_reward": round(self.total_reward, 6), "achievements": achievements,
                "num_achievements": len(achievements), "env_steps": len(self.steps),
                "turns": len(self.events), "invalid_turns": self.invalid_turns,
                "prompt_tokens": sum(e.prompt_tokens or 0 for e in self.events),
                "completion_tokens": sum(e.completion_tokens or 0 for e in self.events), "cost_usd": cost}


# ---------------------------------------------------------------------------------------
# The run

class Runner:
    """Plays a run's seeds concurrently; one writer thread owns every DB write."""

    POLL_S = 1.0  # how often a process with nothing left to claim looks at the others' seeds

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
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace-writer")
        self.engine = tracing.open_db(settings.crafter_db_url)
        self.owner = tracing.new_owner()
        self.first_seed = settings.crafter_seed
        self.last_seed = settings.crafter_seed + settings.crafter_episodes - 1
        self.in_flight: set[str] = set()
        self.on_wait: Callable[[dict[int, str]], None] = lambda held: None
        self.waiting = 0  # workers waiting for other processes' episodes

    def request_params(self) -> dict:
        return self.endpoint.request_params() if self.endpoint else {"model": self.s.crafter_model}

    async def write(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)

    def agent_for(self, seed: int, session_id: str):
        if self.endpoint:
            return self.endpoint
        options = {"noise": self.s.crafter_expert_noise} if self.s.crafter_model == "builtin:expert" else {}
        decide = BUILTIN_DECIDERS[self.s.crafter_model](seed, self.s.crafter_actions_per_turn, **options)
        return BuiltinAgent(decide, self.tool_mode, session_id)

    def plan(self) -> Plan:
        """The run's row (the first process writes it) and where its seeds stand."""
        s = self.s
        config = dict(s.model_dump(mode="json"), crafter_db_url=redact(s.crafter_db_url))  # no password in the DB
        tracing.ensure_experiment(self.engine, self.run_id, self.purpose, config)
        with self.engine.connect() as conn:
            states = tracing.seed_states(conn, self.run_id, self.first_seed, self.last_seed, self.owner, s.crafter_lease_s)
        started = states.finished | states.stale | set(states.held)
        to_play = [seed for seed in range(self.first_seed, self.last_seed + 1) if seed not in started]
        return Plan(to_play, len(states.finished), len(states.stale), states.held)

    def session_row(self, seed: int) -> dict:
        return {
            "session_id": "sess_" + uuid.uuid4().hex[:20], "experiment_id": self.run_id, "run_id": self.run_id,
            "seed": seed, "difficulty": self.s.crafter_difficulty, "model": self.s.crafter_model,
            "purpose": self.purpose, "policy": self.s.crafter_model if self.builtin else "openai",
            "system_prompt": self.system, "tools": self.tools, "request_params": self.request_params(),
            "owner": self.owner,
            "metadata": {"episode_index": seed - self.first_seed, "max_turns": self.s.crafter_max_steps,
                         "actions_per_turn": self.s.crafter_actions_per_turn, "history": self.s.crafter_history,
                         "last_actions": self.s.crafter_last_actions,
                         "tool_mode": self.tool_mode, "protocol": self.s.protocol,
                         "sampling_seed": self.endpoint.seed_base() if self.endpoint else None}}

    async def claim(self, fresh: deque[int]) -> dict | None:
        """The registered row of this process's next episode, or None when none is left: first the
        seeds nobody had started, then those whose process stopped; while other live processes still
        play seeds of the run, wait, to take over any of them whose heartbeat stops."""
        while fresh:
            row = self.session_row(fresh.popleft())
            if await self.write(tracing.claim_seed, self.engine, row):
                return row
        while True:
            row, states = await self.write(tracing.take_over_stale, self.engine, self.run_id, self.first_seed,
                                           self.last_seed, self.owner, self.s.crafter_lease_s, self.session_row)
            if row is not None:
                return row
            if not states.held:
                return None
            self.on_wait(states.held)
            self.waiting += 1  # the more workers wait, the longer each sleeps: a few queries a second at most
            try:
                await asyncio.sleep(self.POLL_S * self.waiting)
            finally:
                self.waiting -= 1

    async def keep_alive(self) -> None:
        """Heartbeat the episodes in flight, well inside the lease."""
        while True:
            await asyncio.sleep(self.s.crafter_lease_s / 4)
            await self.write(tracing.heartbeat, self.engine, list(self.in_flight))

    async def episode(self, registered: dict, on_turn) -> tuple[Session, bool, bool]:
        """Play a claimed episode: (its session, unreachable, still ours when it ended)."""
        session_id, seed = registered["session_id"], registered["seed"]
        self.in_flight.add(session_id)
        episode = Episode(self.s, seed, self.agent_for(seed, session_id), self.system, on_turn)
        await episode.play()
        summary = episode.summary()
        ours = await self.write(tracing.finish_session, self.engine, session_id, summary,
                                episode.steps, episode.events, episode.messages)
        self.in_flight.discard(session_id)
        registered = {key: value for key, value in registered.items() if key != "owner"}
        return Session(**registered, **summary), episode.unreachable, ours

    async def run(self, seeds: list[int], on_turn: Callable[[], None] = lambda: None,
                  on_episode: Callable[[Session], None] = lambda session: None) -> RunResult:
        """Play `seeds` (the plan's), then whatever of the run other processes leave behind."""
        start = time.perf_counter()
        result = RunResult(self.run_id, played=0, unreachable=0)
        fresh = deque(seeds)

        async def worker():
            while (registered := await self.claim(fresh)) is not None:
                session, unreachable, ours = await self.episode(registered, on_turn)
                if not ours:
                    result.lost.append(session.seed)
                    continue
                result.played += 1
                result.unreachable += unreachable
                on_episode(session)

        keep_alive = asyncio.create_task(self.keep_alive())
        try:
            await asyncio.gather(*(worker() for _ in range(self.s.crafter_concurrency)))
        finally:
            keep_alive.cancel()
            if self.in_flight:
                await self.write(tracing.mark_incomplete, self.engine, list(self.in_flight), INTERRUPTED)
            if self.endpoint:
                await self.endpoint.close()
        result.wall_s = time.perf_counter() - start
        result.sessions = tracing.sessions(self.engine, tracing.session_traces.c.run_id == self.run_id)
        return result
