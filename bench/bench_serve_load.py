"""Does `serve` keep answering while it trains? One training job, CHATS concurrent chat clients and a
poller of the job's status and the file list, all at once on 127.0.0.1; the run stops by itself when
the job has ended (or after LIMIT_S, finished or not).

    .venv/bin/python bench/bench_serve_load.py

Every call must get an answer, none a 5xx. Prints each route's latency (p50, p95, max) under load and,
measured first on the same server with nothing running, the status route's idle p95; the target is a
status p95 of at most 1 s. tests/test_serve_load.py runs a small load and checks only the answers.
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai  # noqa: E402

from serve_helpers import Server, crafter_examples, write_jsonl  # noqa: E402
from synth_qwen.fine_tuning_api import TERMINAL_STATUSES  # noqa: E402
from synth_qwen.tiny_model import TINY_MODEL_ID  # noqa: E402

STATUS_ROUTE = "GET /fine_tuning/jobs/{id}"
STATUS_TARGET_S = 1.0
IDLE_POLLS = 30


@dataclass(frozen=True)
class Load:
    """What one run asks of serve: the bench's defaults (the test's run is smaller)."""
    size: str = "small"  # SERVE_TINY_SIZE
    examples: int = 24
    epochs: int = 1
    chats: int = 16  # chat clients, each sending its next request when the last one is answered
    turns: int | None = None  # requests per chat client; None: until the job has ended
    max_tokens: int = 40
    poll_s: float = 0.2  # the poller's pause between two rounds of status + file list
    limit_s: float = 600  # stop after this long even if the job has not ended


@dataclass
class Calls:
    """Every call's outcome, by route."""
    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # answered calls
    statuses: Counter = field(default_factory=Counter)  # (route, HTTP status)
    unanswered: list[str] = field(default_factory=list)  # "route: error" of calls that got no answer
    job_status: str | None = None  # the job's last status seen

    def server_errors(self) -> dict:
        return {key: count for key, count in self.statuses.items() if key[1] >= 500}


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]


async def timed(calls: Calls, route: str, call) -> None:
    started = time.perf_counter()
    try:
        await call()
        status = 200
    except openai.APIStatusError as error:
        status = error.status_code
    except openai.APIConnectionError as error:  # refused, reset or timed out: no answer at all
        calls.unanswered.append(f"{route}: {type(error).__name__}")
        return
    calls.seconds[route].append(time.perf_counter() - started)
    calls.statuses[route, status] += 1


async def idle_status_seconds(client: openai.AsyncOpenAI, job_id: str) -> list[float]:
    calls = Calls()
    for _ in range(IDLE_POLLS):
        await timed(calls, STATUS_ROUTE, lambda: client.fine_tuning.jobs.retrieve(job_id))
    return calls.seconds[STATUS_ROUTE]


async def under_load(client: openai.AsyncOpenAI, training_file: str, examples: list[dict], load: Load) -> Calls:
    calls = Calls()
    job = await client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=training_file,
                                               hyperparameters={"n_epochs": load.epochs})
    deadline = time.monotonic() + load.limit_s
    ended = asyncio.Event()

    async def status():
        current = await client.fine_tuning.jobs.retrieve(job.id)
        calls.job_status = current.status
        if current.status in TERMINAL_STATUSES:
            ended.set()

    async def poller():
        while not ended.is_set() and time.monotonic() < deadline:
            await timed(calls, STATUS_ROUTE, status)
            await timed(calls, "GET /files", lambda: client.files.list())
            await asyncio.sleep(load.poll_s)

    async def chat(client_number: int):
        turn = 0
        while (turn < load.turns if load.turns else turn == 0 or not ended.is_set()) and time.monotonic() < deadline:
            example = examples[(client_number * 7 + turn) % len(examples)]
            await timed(calls, "POST /chat/completions", lambda: client.chat.completions.create(
                model=TINY_MODEL_ID, messages=example["messages"][:-1], tools=example["tools"],
                max_tokens=load.max_tokens, temperature=1.0, seed=client_number * 1000 + turn))
            turn += 1

    await asyncio.gather(poller(), *(chat(number) for number in range(load.chats)))
    return calls


def measure(work: Path, load: Load) -> tuple[Calls, list[float]]:
    """(the calls under load, the status route's idle seconds) on a fresh server in `work`."""
    examples = crafter_examples(load.examples, seed=12)
    data_path = write_jsonl(work / "train.jsonl", examples)
    server = Server(work / "data", serve_tiny_size=load.size).start()

    async def run():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300) as client:
            training = await client.files.create(file=data_path.open("rb"), purpose="fine-tune")
            invalid = await client.files.create(file=("one.jsonl", b"{}\n"), purpose="fine-tune")
            never_runs = await client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=invalid.id)
            idle = await idle_status_seconds(client, never_runs.id)  # fails validation: nothing else runs
            return await under_load(client, training.id, examples, load), idle

    try:
        return asyncio.run(run())
    finally:
        server.stop()


def report(calls: Calls, idle: list[float], load: Load, wall_s: float) -> None:
    print(f"serve under load: 1 training job ({load.size} model, {load.examples} examples x {load.epochs} epochs) "
          f"+ {load.chats} concurrent chats ({load.max_tokens} tokens) + a status/file-list poller; "
          f"{wall_s:.0f} s, job {calls.job_status}")
    for route, seconds in sorted(calls.seconds.items()):
        statuses = ", ".join(f"{status} x{count}" for (name, status), count in sorted(calls.statuses.items())
                             if name == route)
        print(f"  {route:28s} {len(seconds):5d} calls ({statuses})  p50 {statistics.median(seconds) * 1000:7.0f} ms"
              f"  p95 {p95(seconds) * 1000:7.0f} ms  max {max(seconds) * 1000:7.0f} ms")
    status_p95 = p95(calls.seconds[STATUS_ROUTE])
    print(f"  status route p95 {status_p95 * 1000:.0f} ms under load vs {p95(idle) * 1000:.0f} ms idle "
          f"(target <= {STATUS_TARGET_S * 1000:.0f} ms: {'met' if status_p95 <= STATUS_TARGET_S else 'NOT met'}); "
          f"unanswered {len(calls.unanswered)}, 5xx {sum(calls.server_errors().values())}")


def main() -> int:
    load = Load()
    began = time.perf_counter()
    calls, idle = measure(Path(tempfile.mkdtemp(prefix="bench_serve_load-")), load)
    report(calls, idle, load, time.perf_counter() - began)
    return 0 if not calls.unanswered and not calls.server_errors() and calls.job_status == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
