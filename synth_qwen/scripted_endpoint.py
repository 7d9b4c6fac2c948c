"""A scripted OpenAI-compatible chat endpoint on 127.0.0.1, for tests, benchmarks and CI smoke runs.

It answers `POST /v1/chat/completions` with an `interact` tool call (or text in text mode),
records every request body, and injects latency and faults on demand:

    with ScriptedEndpoint(latency_s=0.2, faults=["429", "500"]) as endpoint:
        os.environ["OPENAI_BASE_URL"] = endpoint.base_url
        ...

Faults are consumed one per request, in order: "429" (with Retry-After), "500", "timeout"
(answers after `timeout_sleep_s`), "malformed" (a 200 whose body is not JSON), "no_tool_call",
"unknown_action", "empty_choices". `always="500"` makes every request fail.

`python -m synth_qwen.scripted_endpoint --port 8111 --latency 0.2` runs it standalone.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import threading
import time
from collections import deque

from aiohttp import web

from synth_qwen.action_schema import interact_call
from synth_qwen.crafter_env import ACTIONS

PLAYABLE = [a for a in ACTIONS if a != "noop"]


class ScriptedEndpoint:
    def __init__(self, latency_s: float = 0.0, faults: list[str] | None = None, always: str | None = None,
                 timeout_sleep_s: float = 3.0, cost_per_call: float | None = None, script=None,
                 max_actions: int = 3):
        self.latency_s = latency_s
        self.faults = deque(faults or [])
        self.always = always
        self.timeout_sleep_s = timeout_sleep_s
        self.cost_per_call = cost_per_call
        self.script = script  # optional fn(body) -> assistant message dict
        self.max_actions = max_actions
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        self.base_url = ""

    # -- lifecycle: the server runs on its own loop in a thread ---------------------------
    def __enter__(self) -> "ScriptedEndpoint":
        started = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self.thread.start()
        if not started.wait(10):
            raise RuntimeError("scripted endpoint did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)

    def _serve(self, started: threading.Event, port: int = 0) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.stop_event = asyncio.Event()
        self.loop.run_until_complete(self._run(started, port))

    async def _run(self, started: threading.Event, port: int) -> None:
        app = web.Application()
        for prefix in ("/v1", "/api/v1"):
            app.router.add_post(prefix + "/chat/completions", self.chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{bound}/v1"
        started.set()
        await self.stop_event.wait()
        await runner.cleanup()

    # -- behaviour ------------------------------------------------------------------------
    def next_fault(self) -> str | None:
        with self.lock:
            return self.faults.popleft() if self.faults else self.always

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        with self.lock:
            self.requests.append(body)
            self.headers.append(dict(request.headers))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        fault = self.next_fault()
        if fault == "429":
            return web.json_response(error("rate limited", "rate_limit_exceeded"), status=429,
                                     headers={"Retry-After": "0.05"})
        if fault == "500":
            return web.json_response(error("internal error", "server_error"), status=500)
        if fault == "timeout":
            await asyncio.sleep(self.timeout_sleep_s)
        if fault == "malformed":
            return web.Response(text='{"id": "chatcmpl-x", "choices": [', content_type="application/json")
        if fault == "empty_choices":
            return web.json_response({"id": "chatcmpl-x", "object": "chat.completion", "choices": []})
        message = self.reply(body, fault)
        return web.json_response(completion(body, message, self.cost_per_call))

    def reply(self, body: dict, fault: str | None) -> dict:
        if fault == "no_tool_call":
            return {"role": "assistant", "content": "I will explore to the left."}
        if fault == "unknown_action":
            return self.interact(["eat_cow"], "eat")
        if self.script:
            return self.script(body)
        rng = random.Random(hashlib.sha256(json.dumps(body["messages"][-1]).encode()).hexdigest())
        actions = [rng.choice(PLAYABLE) for _ in range(rng.randint(1, self.max_actions))]
        if not body.get("tools"):
            return {"role": "assistant", "content": f"Exploring.\nActions: {', '.join(actions)}"}
        return self.interact(actions, "explore")

    @staticmethod
    def interact(actions: list[str], reasoning: str) -> dict:
        call_id = "call_" + hashlib.sha1(f"{actions}{reasoning}{time.time_ns()}".encode()).hexdigest()[:16]
        return {"role": "assistant", "content": None, "tool_calls": [interact_call(call_id, actions, reasoning)]}


def error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def completion(body: dict, message: dict, cost: float | None) -> dict:
    prompt_tokens = len(json.dumps(body["messages"])) // 4
    completion_tokens = max(1, len(json.dumps(message)) // 4)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    if cost is not None:
        usage["cost"] = cost
    return {"id": "chatcmpl-" + hashlib.sha1(str(time.time_ns()).encode()).hexdigest()[:12],
            "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
            "usage": usage}


def main() -> None:
    parser = argparse.ArgumentParser(description="scripted OpenAI-compatible endpoint (tests/benchmarks)")
    parser.add_argument("--port", type=int, default=8111)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    endpoint = ScriptedEndpoint(latency_s=args.latency)
    started = threading.Event()
    threading.Thread(target=endpoint._serve, args=(started, args.port), daemon=True).start()
    started.wait(10)
    print(f"scripted endpoint at {endpoint.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
