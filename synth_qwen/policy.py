"""Who acts: an OpenAI-compatible LLM, the builtin expert, or builtin random play.

Every policy answers a turn with the same `Reply` — an assistant message (content and/or an
`interact` tool call) plus usage — so the runner traces all of them the same way. Builtin
policies run in-process and report 0 tokens and $0.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import openai
from openai.types.chat import ChatCompletion

from synth_qwen.action_schema import (INTERACT_TOOL_NAME, interact_call, parse_interact_arguments, parse_text_actions,
                                      text_answer, tool_call)
from synth_qwen.crafter_env import ACTIONS
from synth_qwen.observation import Observation
from synth_qwen.settings import RolloutSettings
from synth_qwen.tracing import sampling_seed

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
PREFLIGHT_TIMEOUT_S = 5.0
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.5, 30.0


@dataclass
class Reply:
    content: str | None
    tool_calls: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    cost_usd: float | None = 0.0
    latency_s: float = 0.0
    attempts: int = 1
    error: str | None = None  # the call itself failed (after retries)

    def assistant_message(self) -> dict:
        """The assistant message as stored, replayed in history and written to SFT data."""
        message = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message


def actions_from_reply(reply: Reply, tool_mode: str, max_actions: int) -> tuple[list[str] | None, str | None]:
    """The valid action list of a reply, or (None, why it is invalid)."""
    if tool_mode == "tools":
        calls = [c for c in reply.tool_calls if c.get("function", {}).get("name") == INTERACT_TOOL_NAME]
        if not calls:
            named = [c.get("function", {}).get("name") for c in reply.tool_calls]
            return None, (f"unknown tool {named[0]!r}; call {INTERACT_TOOL_NAME}" if named else
                          "no interact tool call in the reply")
        return parse_interact_arguments(calls[0]["function"].get("arguments", ""), max_actions)
    return parse_text_actions(reply.content or "", max_actions)


# ---------------------------------------------------------------------------------------
# Builtin policies

def builtin_reply(actions: list[str], reasoning: str, tool_mode: str, session_id: str, turn: int) -> Reply:
    """A builtin decision as an LLM-shaped reply: an interact call (its id names session and
    turn) or text. Relabelling uses it too, so a teacher's label is the very reply it plays."""
    if tool_mode == "tools":
        call = interact_call(f"call_{session_id[-8:]}_{turn}", actions, reasoning)
        return Reply(content=None, tool_calls=[call], finish_reason="tool_calls")
    return Reply(content=text_answer(actions, reasoning), finish_reason="stop")


class BuiltinAgent:
    """Wraps a decision function (obs -> actions, reasoning) into LLM-shaped replies."""

    def __init__(self, decide, tool_mode: str, session_id: str):
        self.decide = decide
        self.tool_mode = tool_mode
        self.session_id = session_id

    async def act(self, messages: list[dict], observation: Observation, turn: int, episode_seed: int = 0) -> Reply:
        await asyncio.sleep(0)  # a turn is a chance for the other episodes and the lease heartbeat to run
        start = time.perf_counter()
        actions, reasoning = self.decide(observation)
        reply = builtin_reply(actions, reasoning, self.tool_mode, self.session_id, turn)
        reply.latency_s = time.perf_counter() - start
        return reply


def random_decider(seed: int, max_actions: int):
    rng = random.Random(seed)

    def decide(_observation: Observation):
        count = rng.randint(1, max_actions)
        return [rng.choice(ACTIONS) for _ in range(count)], "random play"
    return decide


def expert_decider(seed: int, max_actions: int, noise: float = 0.0):
    """The teacher; with `noise` (DART) each of its actions is swapped for a random one with that
    probability, and its memory follows what was executed (the trace then shows the noisy actions)."""
    from synth_qwen.expert import ExpertAgent
    teacher = ExpertAgent(max_actions=max_actions, seed=seed)
    if not noise:
        return teacher.act
    rng = random.Random(f"dart:{seed}")

    def decide(observation: Observation):
        actions, reasoning = teacher.act(observation)
        executed = [rng.choice(ACTIONS) if rng.random() < noise else action for action in actions]
        if executed != actions:
            teacher.executed(executed)
        return executed, reasoning
    return decide


BUILTIN_DECIDERS = {"builtin:expert": expert_decider, "builtin:random": random_decider}


# ---------------------------------------------------------------------------------------
# OpenAI-compatible endpoint

class EndpointPolicy:
    """One shared async client; bounded retries with jitter; Retry-After honoured."""

    def __init__(self, settings: RolloutSettings, base_url: str, api_key: str, tools: list[dict] | None):
        self.settings = settings
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                                         timeout=settings.crafter_request_timeout_s)
        self.tools = tools

    def request_params(self) -> dict:
        """Everything in a request except messages and tools (stored once per session)."""
        s = self.settings
        params = {"model": s.crafter_model, "temperature": s.crafter_temperature, "max_tokens": s.crafter_max_tokens}
        if s.crafter_tool_mode == "tools":
            params["tool_choice"] = s.crafter_tool_choice
        if s.crafter_think is not None:
            params["chat_template_kwargs"] = {"enable_thinking": s.crafter_think}
        return params

    def seed_base(self) -> int | None:
        """CRAFTER_SAMPLING_SEED when calls sample (each then sends tracing.sampling_seed), else None."""
        s = self.settings
        return None if s.crafter_sampling_seed == "off" or s.crafter_temperature == 0 else s.crafter_sampling_seed

    async def act(self, messages: list[dict], observation: Observation, turn: int, episode_seed: int = 0) -> Reply:
        body = dict(self.request_params(), messages=messages)
        base = self.seed_base()
        if base is not None:
            body["seed"] = sampling_seed(base, episode_seed, turn)
        if self.tools:
            body["tools"] = self.tools
        start = time.perf_counter()
        attempts, last_error = 0, None
        while attempts <= self.settings.crafter_max_retries:
            attempts += 1
            try:
                # client.post skips the SDK's per-request TypedDict transform (~7 ms of CPU per
                # call with long histories, the bottleneck at 100+ calls/s); same HTTP, same client.
                completion = await self.client.post("/chat/completions", body=body, cast_to=ChatCompletion)
                return self.reply_from(completion, time.perf_counter() - start, attempts)
            except (openai.APIConnectionError, openai.APITimeoutError) as error:
                last_error, wait = f"{type(error).__name__}: {error}", None
            except openai.APIStatusError as error:
                last_error = f"HTTP {error.status_code}: {short(error.message)}"
                if error.status_code not in RETRYABLE_STATUS:
                    break
                wait = retry_after_seconds(error.response)
            except (ValueError, json.JSONDecodeError) as error:  # a malformed body from the server
                last_error, wait = f"malformed response: {short(str(error))}", None
            if attempts > self.settings.crafter_max_retries:
                break
            await asyncio.sleep(wait if wait is not None else backoff_seconds(attempts))
        return Reply(content=None, finish_reason=None, prompt_tokens=None, completion_tokens=None,
                     cost_usd=None, latency_s=time.perf_counter() - start, attempts=attempts, error=last_error)

    def reply_from(self, completion, latency_s: float, attempts: int) -> Reply:
        if not getattr(completion, "choices", None):
            raise ValueError("response has no choices")
        choice = completion.choices[0]
        message = choice.message
        calls = [tool_call(c.id or f"call_{i}", c.function.arguments, c.function.name)
                 for i, c in enumerate(message.tool_calls or [])]
        usage = completion.usage
        prompt_tokens = getattr(usage, "prompt_tokens", None) if usage else None
        completion_tokens = getattr(usage, "completion_tokens", None) if usage else None
        return Reply(content=message.content, tool_calls=calls, finish_reason=choice.finish_reason,
                     prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     cost_usd=self.cost(usage, prompt_tokens, completion_tokens),
                     latency_s=latency_s, attempts=attempts)

    def cost(self, usage, prompt_tokens, completion_tokens) -> float | None:
        """The endpoint's own cost when it reports one, else our prices, else unknown (None)."""
        reported = getattr(usage, "cost", None) if usage is not None else None
        if reported is None and usage is not None and getattr(usage, "model_extra", None):
            reported = usage.model_extra.get("cost")
        if isinstance(reported, (int, float)):
            return float(reported)
        s = self.settings
        if s.crafter_price_input_per_m is None or s.crafter_price_output_per_m is None or prompt_tokens is None:
            return None
        return (prompt_tokens * s.crafter_price_input_per_m + (completion_tokens or 0) * s.crafter_price_output_per_m) / 1e6

    async def close(self):
        await self.client.close()


async def endpoint_problem(base_url: str, api_key: str) -> str | None:
    """One cheap call (GET /models) before any episode is played: None when the server answers
    (even a 404: some servers have no model list), else why it cannot be used, as one line."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=PREFLIGHT_TIMEOUT_S)
    try:
        await client.models.list()
    except openai.APIConnectionError as error:  # refused, unresolvable, timed out
        return f"cannot connect ({type(error).__name__}: {short(str(error), 120)})"
    except openai.AuthenticationError:
        return "it refused the API key (HTTP 401): set OPENAI_API_KEY"
    except openai.APIStatusError:
        return None
    finally:
        await client.close()
    return None


def retry_after_seconds(response) -> float | None:
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return min(float(value), BACKOFF_CAP_S * 4) if value is not None else None
    except ValueError:
        return None


def backoff_seconds(attempt: int) -> float:
    """Exponential with full jitter, capped."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))


def short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "…"
