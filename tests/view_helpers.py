"""Helpers for the view tests, the screenshots script and the bench: trace DBs played by the real
run_crafter, and `python -m synth_qwen.view` in a subprocess on a free port."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from synth_qwen.action_schema import interact_call
from synth_qwen.scripted_endpoint import ScriptedEndpoint
from rollout_helpers import REPO, rollout_env, run_module

XSS_REPLY = "<script>window.pwned = 1</script> I go left"
XSS_REASONING = '<img src=x onerror="window.pwned = 2">'
XSS_MODEL = "evil<script>window.pwned = 3</script>\" x='y' autofocus onfocus='window.pwned = 4'"  # quotes: attributes too


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def play(folder: Path, db_url: str, run_id: str, model: str, episodes: int, turns: int, seed: int = 1, **extra):
    """One run of the real run_crafter (builtin policies play in-process)."""
    env = rollout_env(folder, crafter_model=model, crafter_run_id=run_id, crafter_episodes=episodes,
                      crafter_max_steps=turns, crafter_seed=seed, crafter_db_url=db_url, **extra)
    done = run_module("synth_qwen.run_crafter", env, folder)
    assert done.returncode == 0, done.stderr
    return done


def play_xss(folder: Path, db_url: str, run_id: str = "xss", turns: int = 3):
    """A model whose replies carry HTML that would run script if a page did not escape it."""
    def script(body):
        return {"role": "assistant", "content": XSS_REPLY,
                "tool_calls": [interact_call(f"call_{len(body['messages'])}", ["move_left"], XSS_REASONING)]}
    with ScriptedEndpoint(script=script) as endpoint:
        return play(folder, db_url, run_id, XSS_MODEL, 1, turns, openai_base_url=endpoint.base_url)


def filter_sft(folder: Path, db_url: str, output: Path, **extra):
    env = rollout_env(folder, crafter_db_url=db_url, output_jsonl=output, **extra)
    done = run_module("synth_qwen.filter_traces", env, folder)
    assert done.returncode == 0, done.stderr + done.stdout
    return done


class ViewServer:
    """`python -m synth_qwen.view` on a free port."""

    def __init__(self, db_url: str, log_path: Path, **env):
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith(("CRAFTER_", "VIEW_"))},
                    "CRAFTER_DB_URL": db_url, "PYTHONPATH": str(REPO),
                    **{k.upper(): str(v) for k, v in env.items()}}
        self.log_path = log_path

    def __enter__(self) -> "ViewServer":
        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, "-m", "synth_qwen.view"], cwd=REPO,
                                        env={**self.env, "VIEW_PORT": str(self.port)},
                                        stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"view exited: {self.log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"view did not start: {self.log_path.read_text()}")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes, str]:
        """(status, body, content type) of one GET, through aiohttp's client."""
        async def fetch():
            async with aiohttp.ClientSession() as http, http.get(self.url + path) as response:
                return response.status, await response.read(), response.content_type
        return asyncio.run(fetch())

    def text(self, path: str) -> str:
        status, body, _ = self.get(path)
        assert status == 200, (path, status, body[:300])
        return body.decode()
