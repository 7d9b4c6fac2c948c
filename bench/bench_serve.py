"""Benchmark `serve` on the tiny model (CPU), everything side by side in one run (~5.5 minutes on 2 cores).

    .venv/bin/python bench/bench_serve.py

1. training tokens/s: service jobs vs plain PyTorch loops (fp32 / bf16 autocast, eager /
   torch.compile) on the same model, data, batch, optimizer and torch thread count, alternated
   (ROUNDS each, medians). Steady state: tokens after the first step / time after the first step;
   only non-padding tokens count. The service number is measured inside the job's worker around its
   steps (so it includes the loop's per-step work: collation, loss on assistant tokens, metrics),
   not the worker's start-up, tokenization or model loading; the whole-`train()` figure too.
2. generation ms/token after a 600-token prompt, in the inference worker's own decoding loop:
   warm-up, then the median over GEN_RUNS greedy runs of GEN_TOKENS tokens (stop tokens off),
   timing only the decode steps after the prefill (printed apart). Then one decode step of the
   worker's batch at 1 and 16 rows with its attention (the shared system prompt read once for all
   rows) and with plain SDPA (each row reads its own copy), alternated.
3. chat turns/s through the real server and the openai client at concurrency 1, 8, 16, 32, each
   worker playing turns in a row like a Crafter episode (~800-token prompts). Two reply shapes:
   every reply runs to max_tokens=100 (the random-init base model never stops), and replies of
   40-80 tokens (max_tokens drawn per turn, like fine-tuned tool calls of varying length).
   Concurrencies are interleaved over CHAT_REPEATS rounds; medians. Each turn shows a new
   observation after the system prompt (CRAFTER_HISTORY=0's shape: turns share the system prompt
   and tools, as with the default sliding history).
4. full-history episodes (CRAFTER_HISTORY >= turns - 1, what FILTER_MODE=episode needs: each turn
   extends the episode's conversation) at concurrency 1 and 16, through serve with its prompt cache
   (SERVE_PREFIX_CACHE_MB, the default) and with the last prompt only (=0, the path before it),
   side by side in one run.
"""
from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openai import OpenAI  # noqa: E402

from serve_helpers import Server, crafter_examples, wait_for_job, write_jsonl  # noqa: E402

SIZE = "small"
EXAMPLES, BATCH, ROUNDS = 96, 4, 2
PROMPT_TOKENS, GEN_TOKENS, GEN_RUNS = 600, 64, 7
CONCURRENCY = (1, 8, 16, 32)
TURNS = {1: 8, 8: 3, 16: 2, 32: 2}  # turns per worker
CHAT_REPEATS = 2
HISTORY_TURNS, HISTORY_CONCURRENCY = 5, (1, 16)  # turns per full-history episode; replies of 40-80 tokens
REPLY_SHAPES = {"to max_tokens=100": lambda rng: 100, "40-80 tokens": lambda rng: rng.randint(40, 80)}


def service_training(client, data_path: Path) -> dict:
    training_file = client.files.create(file=data_path.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="local/tiny-qwen3", training_file=training_file.id, seed=0,
                                         hyperparameters={"n_epochs": 1, "batch_size": BATCH})
    job = wait_for_job(client, job.id, timeout_s=900)
    assert job.status == "succeeded", job.error
    return next(e for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data
                if "tokens_per_second" in (e.data or {})).data


PLAIN_LOOPS = {  # name -> (bf16 autocast, torch.compile)
    "fp32 eager": (False, False), "fp32 compile": (False, True),
    "bf16 autocast eager": (True, False), "bf16 autocast + compile": (True, True)}


def plain_training(model_dir: Path, examples: list[dict], bf16: bool, compiled: bool) -> tuple[float, float]:
    """The same model, data, batch and optimizer in a hand-written loop (examples in file order,
    padded with a mask, logits everywhere: the textbook loop); (steady tokens/s, first step s)."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from synth_qwen.qwen_format import chat_template, encode_example
    from synth_qwen.train_worker import TRAINING_DEFAULTS

    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    rows = [encode_example(tokenizer, chat_template("training"), example, 2048) for example in examples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAINING_DEFAULTS["tiny"]["learning_rate"])
    forward = torch.compile(model, dynamic=True) if compiled else model
    model.train()
    marks = []  # (time, tokens) after each step
    tokens, started = 0, time.perf_counter()
    for start in range(0, len(rows), BATCH):
        batch = rows[start:start + BATCH]
        width = max(len(row["input_ids"]) for row in batch)
        ids = torch.tensor([r["input_ids"] + [tokenizer.pad_token_id] * (width - len(r["input_ids"])) for r in batch])
        labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch])
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = forward(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(mask.sum())
        marks.append((time.perf_counter(), tokens))
    return (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0]), marks[0][0] - started


def generation_ms_per_token(data_dir: Path, examples: list[dict]) -> tuple[float, float, int]:
    """(decode ms/token, prefill ms, prompt tokens): greedy, fixed length, median of GEN_RUNS."""
    from synth_qwen.inference_worker import Batch, ChatRequest, Models, prompt_ids
    from synth_qwen.serve_store import ModelSpec

    spec = ModelSpec(key="tiny", kind="tiny", size=SIZE, data_dir=str(data_dir))
    loaded = Models(1, "cpu").get(spec)
    model, tokenizer = loaded.model, loaded.tokenizer
    # System prompt + two observations, cut to PROMPT_TOKENS (with the tools schema it would start at ~700)
    user = "\n\n".join(example["messages"][-2]["content"] for example in examples[:2])
    request = ChatRequest(model=spec, messages=[examples[0]["messages"][0], {"role": "user", "content": user}],
                          temperature=0, max_tokens=GEN_TOKENS)
    messages = request.messages  # trimmed in place below
    while len(prompt_ids(tokenizer, request)) > PROMPT_TOKENS and len(messages[-1]["content"]) > 8:
        messages[-1]["content"] = messages[-1]["content"][:-8]
    prefills, decodes = [], []
    for _ in range(GEN_RUNS + 1):  # the first run warms up
        batch = Batch(model, tokenizer, [-1])  # no stop token: exactly GEN_TOKENS tokens; fresh prefix cache
        started = time.perf_counter()
        batch.add(request)
        prefilled = time.perf_counter()
        answers = []
        while batch.rows:
            answers += batch.step()
        decodes.append((time.perf_counter() - prefilled) / GEN_TOKENS * 1000)
        prefills.append((prefilled - started) * 1000)
        assert answers[0].usage.completion_tokens == GEN_TOKENS
    return statistics.median(decodes[1:]), statistics.median(prefills[1:]), len(prompt_ids(tokenizer, request))


DECODE_ROWS, DECODE_STEPS = (1, 16), 40
ATTENTION = ("shared system prompt read once (cascade)", "each row's own copy (plain SDPA)")


def decode_step_ms(data_dir: Path, examples: list[dict]) -> dict:
    """ms per decode step of the worker's Batch at 1 and 16 rows (Crafter prompts: one system prompt
    and tools, different observations), with the worker's attention and with plain SDPA, alternated;
    (attention, rows) -> median of GEN_RUNS."""
    from synth_qwen.inference_worker import Batch, ChatRequest, Models
    from synth_qwen.kv_slots import CASCADE
    from synth_qwen.serve_store import ModelSpec

    spec = ModelSpec(key="tiny", kind="tiny", size=SIZE, data_dir=str(data_dir))
    loaded = Models(1, "cpu").get(spec)
    implementation = dict(zip(ATTENTION, (CASCADE, "sdpa")))
    times = {(name, rows): [] for name in ATTENTION for rows in DECODE_ROWS}
    for _ in range(GEN_RUNS):
        for (name, rows), runs in times.items():
            loaded.model.set_attn_implementation(implementation[name])
            batch = Batch(loaded.model, loaded.tokenizer, [-1])  # no stop token
            for i in range(rows):
                batch.add(ChatRequest(model=spec, messages=examples[i]["messages"][:-1], tools=examples[i]["tools"],
                                      temperature=1.0, seed=i, max_tokens=DECODE_STEPS + 5))
            for _ in range(5):  # warm up
                batch.step()
            started = time.perf_counter()
            for _ in range(DECODE_STEPS):
                batch.step()
            runs.append((time.perf_counter() - started) / DECODE_STEPS * 1000)
    return {key: statistics.median(runs) for key, runs in times.items()}


def history_chat_rate(client, examples: list[dict], concurrency: int, seed: int) -> float:
    """Turns/s of full-history episodes: turn t sends the system prompt, every earlier turn (its
    observation, the call made and the tool's answer) and the new observation."""
    def episode(worker: int) -> int:
        rng = random.Random(seed * 1000 + worker)
        messages = [examples[0]["messages"][0]]
        for turn in range(HISTORY_TURNS):
            example = examples[(worker * 7 + turn) % len(examples)]
            observation, call = example["messages"][-2], example["messages"][-1]
            messages.append(observation)
            client.chat.completions.create(model="local/tiny-qwen3", messages=messages, tools=example["tools"],
                                           max_tokens=rng.randint(40, 80), temperature=1.0, seed=rng.randrange(1 << 30))
            messages += [call, {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "done"}]
        return HISTORY_TURNS

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        turns = sum(pool.map(episode, range(concurrency)))
    return turns / (time.perf_counter() - started)


def chat_rate(client, examples: list[dict], concurrency: int, reply_tokens, seed: int) -> float:
    def episode(worker: int) -> int:
        rng = random.Random(seed * 1000 + worker)
        for turn in range(TURNS[concurrency]):
            example = examples[(worker * 7 + turn) % len(examples)]
            client.chat.completions.create(model="local/tiny-qwen3", messages=example["messages"][:-1],
                                           tools=example["tools"], max_tokens=reply_tokens(rng), temperature=1.0,
                                           seed=rng.randrange(1 << 30))
        return TURNS[concurrency]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        turns = sum(pool.map(episode, range(concurrency)))
    return turns / (time.perf_counter() - started)


def main() -> None:
    from synth_qwen import tiny_model

    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_serve-"))
    examples = crafter_examples(EXAMPLES, seed=11)
    data_path = write_jsonl(work / "train.jsonl", examples)
    server = Server(work / "data", serve_tiny_size=SIZE).start()
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=600)
        from synth_qwen.train_worker import bf16_is_fast, fast_path

        bf16, compiled = fast_path("cpu", "auto", "auto", 0)  # auto compiles on CUDA only, whatever the job's length
        print(f"this CPU computes bf16 natively: {bf16_is_fast('cpu')}; the service's training path: "
              f"{'bf16 autocast' if bf16 else 'fp32'}{' + compile' if compiled else ''}", flush=True)
        service, plain = [], {name: [] for name in PLAIN_LOOPS}
        for _ in range(ROUNDS):  # alternated, so all see the same machine load
            service.append(service_training(client, data_path))
            for name, (use_bf16, use_compile) in PLAIN_LOOPS.items():
                plain[name].append(plain_training(tiny_model.ensure(work / "data", SIZE), examples, use_bf16, use_compile))
        steady = statistics.median(result["steady_tokens_per_second"] for result in service)
        whole = statistics.median(result["tokens_per_second"] for result in service)
        plain_rates = {name: statistics.median(rate for rate, _ in runs) for name, runs in plain.items()}
        fastest = max(plain_rates, key=plain_rates.get)
        print(f"training tokens/s (steady state, medians of {ROUNDS}, {EXAMPLES} examples, batch {BATCH})")
        for name, rate in plain_rates.items():
            first = statistics.median(first for _, first in plain[name])
            print(f"  plain loop, {name:24s} {rate:6.0f}   first step {first:5.1f} s")
        print(f"  service job                          {steady:6.0f}   ratio to the fastest plain loop ({fastest}) "
              f"{steady / plain_rates[fastest]:.2f} (target >= 0.8)\n"
              f"  service job over its whole train() call (first step and epoch checkpoint included): {whole:.0f}",
              flush=True)

        ms_per_token, prefill_ms, prompt_length = generation_ms_per_token(work / "data", examples)
        print(f"generation  {ms_per_token:.1f} ms/token (greedy, {GEN_TOKENS} tokens, median of {GEN_RUNS}) "
              f"after a {prompt_length}-token prompt; prefill {prefill_ms:.0f} ms", flush=True)

        steps = decode_step_ms(work / "data", examples)
        print(f"decode step ms at {' / '.join(map(str, DECODE_ROWS))} rows (the worker's Batch, medians of {GEN_RUNS})")
        for name in ATTENTION:
            print(f"  {name:42s} " + " / ".join(f"{steps[name, rows]:5.2f}" for rows in DECODE_ROWS), flush=True)

        client.chat.completions.create(model="local/tiny-qwen3", messages=examples[0]["messages"][:-1], max_tokens=1)
        print(f"chat turns/s through the server (openai client; medians of {CHAT_REPEATS}, interleaved)")
        for shape, reply_tokens in REPLY_SHAPES.items():
            rates = {c: [] for c in CONCURRENCY}
            for repeat in range(CHAT_REPEATS):
                for concurrency in CONCURRENCY:
                    rates[concurrency].append(chat_rate(client, examples, concurrency, reply_tokens, repeat))
            medians = {c: statistics.median(r) for c, r in rates.items()}
            print(f"  replies {shape:18s} " + "   ".join(
                f"c={c}: {rate:5.2f} (x{rate / medians[1]:.1f})" for c, rate in medians.items()), flush=True)
        last_only = Server(work / "data-last-prompt", serve_tiny_size=SIZE, serve_prefix_cache_mb=0).start()
        try:
            clients = {"prompt cache (default)": client, "last prompt only (=0)": OpenAI(
                base_url=last_only.url + "/v1", api_key="x", max_retries=0, timeout=600)}
            clients["last prompt only (=0)"].chat.completions.create(
                model="local/tiny-qwen3", messages=examples[0]["messages"][:-1], max_tokens=1)
            rates = {(name, c): [] for name in clients for c in HISTORY_CONCURRENCY}
            for repeat in range(CHAT_REPEATS):
                for (name, concurrency), runs in rates.items():
                    runs.append(history_chat_rate(clients[name], examples, concurrency, repeat))
            print(f"full-history episodes ({HISTORY_TURNS} turns, replies of 40-80 tokens), turns/s, medians of {CHAT_REPEATS}")
            for name in clients:
                medians = {c: statistics.median(rates[name, c]) for c in HISTORY_CONCURRENCY}
                print(f"  {name:24s} " + "   ".join(f"c={c}: {rate:5.2f} (x{rate / medians[1]:.1f})"
                                                    for c, rate in medians.items()), flush=True)
        finally:
            last_only.stop()
    finally:
        server.stop()
    print(f"bench took {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
