"""Helpers for the serve tests and bench: start a real server, make Crafter SFT examples."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

from synth_qwen import action_schema, crafter_env
from synth_qwen.fine_tuning_api import TERMINAL_STATUSES
from synth_qwen.observation import observe

REPO = Path(__file__).resolve().parents[1]
MAX_ACTIONS = 3
STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m synth_qwen.serve` in a subprocess on a free port; `restart()` keeps the data dir."""

    def __init__(self, data_dir: Path, file_size_limit: int | None = None, **env):
        self.data_dir = Path(data_dir)
        self.file_size_limit = file_size_limit  # bytes no file of serve or its workers may grow past
        self.env = {key.upper(): str(value) for key, value in env.items()}
        self.process = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"

    def start(self) -> "Server":
        self.port = free_port()
        env = {**os.environ, "SERVE_PORT": str(self.port), "SERVE_DATA_DIR": str(self.data_dir),
               "SERVE_HOST": "127.0.0.1", **self.env}
        log = open(self.log_path, "a")
        self.process = subprocess.Popen([sys.executable, "-m", "synth_qwen.serve"], cwd=REPO, env=env,
                                        stdout=log, stderr=subprocess.STDOUT, preexec_fn=self.cap_file_size)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"serve did not start: {self.log()}")

    def cap_file_size(self) -> None:
        """RLIMIT_FSIZE (Python ignores SIGXFSZ): a write past the limit fails with "File too large", as
        one on a full disk fails with "No space left on device"."""
        if self.file_size_limit is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_size_limit, self.file_size_limit))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> "Server":
        self.stop()
        return self.start()


def wait_for(condition, timeout_s: float = 120) -> None:
    """Poll until condition() holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def wait_for_job(client, job_id: str, timeout_s: float = 240):
    """Poll until the job is final (a generous bound: the test fails with the job state, not hangs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in TERMINAL_STATUSES:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout_s}s")


# ---------------------------------------------------------------------------------------
# SFT examples: per-turn, in DESIGN §4.2 shape, from real Crafter observations.

def hinted_action(observation_text: str, rng: random.Random) -> str:
    """A plausible teacher: the first step of the first '(go: …)' route, else a random move."""
    for line in observation_text.splitlines():
        if "(go: " in line and not line.lstrip("- ").startswith(("zombie", "skeleton", "lava")):
            return line.split("(go: ")[1].rstrip(")").split()[0]
    return rng.choice(["move_left", "move_right", "move_up", "move_down"])


def interact_example(observation_text: str, actions: list[str], call_id: str,
                     history: list[dict] | None = None) -> dict:
    arguments = json.dumps({"actions": actions, "reasoning": f"{actions[0]} toward a target"})
    return {
        "messages": [{"role": "system", "content": action_schema.system_prompt(MAX_ACTIONS)}, *(history or []),
                     {"role": "user", "content": observation_text},
                     {"role": "assistant", "content": "", "tool_calls": [action_schema.tool_call(call_id, arguments)]}],
        "tools": [action_schema.interact_tool(MAX_ACTIONS)],
        "parallel_tool_calls": False,
    }


def crafter_examples(count: int, seed: int = 0, with_history: bool = False) -> list[dict]:
    """`count` per-turn examples; with_history adds one earlier turn (weight 0) plus its tool answer."""
    rng = random.Random(seed)
    env = crafter_env.CrafterEnv(seed=seed, difficulty="easy")
    env.start()
    observation = observe(env).text
    examples, previous = [], None
    for turn in range(count):
        action = hinted_action(observation, rng)
        history = None
        if with_history and previous:
            prev_obs, prev_action, prev_id = previous
            history = [{"role": "user", "content": prev_obs},
                       {"role": "assistant", "content": "", "weight": 0, "tool_calls": [
                           action_schema.tool_call(prev_id, json.dumps({"actions": [prev_action]}))]},
                       {"role": "tool", "tool_call_id": prev_id, "content": f"executed {prev_action}"}]
        call_id = f"call_{seed}_{turn}"
        examples.append(interact_example(observation, [action], call_id, history))
        previous = (observation, action, call_id)
        if env.act(action).done:
            env.start()
        observation = observe(env).text
    return examples


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """A raw request (for what the SDK cannot send: broken JSON, escaping paths); (status, JSON body)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def preference_pairs(count: int, seed: int = 0, rejected_action: str = "noop") -> list[dict]:
    """`count` DPO lines (OpenAI's preference format) from crafter_examples: the example's reply is
    preferred over the same call asking for `rejected_action`."""
    pairs = []
    for example in crafter_examples(count, seed=seed):
        *prompt, preferred = example["messages"]
        call = preferred["tool_calls"][0]
        rejected = {**preferred, "tool_calls": [{**call, "function": {**call["function"], "arguments": json.dumps(
            {"actions": [rejected_action], "reasoning": "wait"})}}]}
        pairs.append({"input": {"messages": prompt, "tools": example["tools"], "parallel_tool_calls": False},
                      "preferred_output": [preferred], "non_preferred_output": [rejected]})
    return pairs
