"""Benchmark `serve` against plain PyTorch, side by side in one run (tiny model, CPU).

    .venv/bin/python bench/bench_serve.py

1. training tokens/s: a service job vs a plain PyTorch loop on the same model, data and batch
   (target ratio >= 0.6);
2. generation ms/token after a ~600-token prompt (in the inference worker's decoding loop);
3. chat throughput through the server (turns/s) at concurrency 1 vs 16.
"""
from __future__ import annotations

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
EXAMPLES, BATCH, EPOCHS = 64, 4, 1
REPLY_TOKENS = 40
TURNS_PER_WORKER = {1: 8, 16: 2}


def service_training(client, data_path: Path) -> tuple[float, str]:
    training_file = client.files.create(file=data_path.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="local/tiny-qwen3", training_file=training_file.id, seed=0,
                                         hyperparameters={"n_epochs": EPOCHS, "batch_size": BATCH})
    job = wait_for_job(client, job.id, timeout_s=900)
    assert job.status == "succeeded", job.error
    event = next(e for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if "tokens_per_second" in e.data)
    return event.data["tokens_per_second"], job.fine_tuned_model


def plain_training(data_dir: Path, examples: list[dict]) -> float:
    """The same model, data, batch and optimizer in a hand-written loop."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from synth_qwen import tiny_model
    from synth_qwen.train_worker import TRAINING_DEFAULTS, encode_example

    path = tiny_model.ensure(data_dir, SIZE)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    template = tiny_model.chat_template("training")
    rows = [encode_example(tokenizer, template, example, 2048) for example in examples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAINING_DEFAULTS["tiny"]["learning_rate"])
    model.train()
    started, tokens = time.perf_counter(), 0
    for _ in range(EPOCHS):
        for start in range(0, len(rows), BATCH):
            batch = rows[start:start + BATCH]
            width = max(len(row["input_ids"]) for row in batch)
            ids = torch.tensor([r["input_ids"] + [tokenizer.pad_token_id] * (width - len(r["input_ids"])) for r in batch])
            labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch])
            mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            tokens += sum(len(r["input_ids"]) for r in batch)
    return tokens / (time.perf_counter() - started)


def generation_ms_per_token(data_dir: Path, example: dict) -> tuple[float, int]:
    from synth_qwen.inference_worker import Models, generate_batch, prompt_ids

    model, tokenizer, stop_ids = Models(1, "cpu").get({"key": "tiny", "kind": "tiny", "size": SIZE,
                                                        "data_dir": str(data_dir)})
    request = {"id": 0, "messages": example["messages"][:-1], "tools": example["tools"], "temperature": 1.0}
    prompt_length = len(prompt_ids(tokenizer, request))
    timings = {}
    for new_tokens in (1, 33):
        runs = []
        for seed in range(3):
            started = time.perf_counter()
            answer = generate_batch(model, tokenizer, [-1], [{**request, "max_tokens": new_tokens, "seed": seed}], "cpu")
            runs.append(time.perf_counter() - started)
            assert answer[0]["usage"]["completion_tokens"] == new_tokens
        timings[new_tokens] = statistics.median(runs)
    return (timings[33] - timings[1]) / 32 * 1000, prompt_length


def chat_throughput(client, model: str, examples: list[dict], concurrency: int) -> float:
    def episode(worker: int) -> int:
        for turn in range(TURNS_PER_WORKER[concurrency]):
            example = examples[(worker * 7 + turn) % len(examples)]
            client.chat.completions.create(model=model, messages=example["messages"][:-1], tools=example["tools"],
                                           max_tokens=REPLY_TOKENS, temperature=1.0, seed=worker * 100 + turn)
        return TURNS_PER_WORKER[concurrency]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        turns = sum(pool.map(episode, range(concurrency)))
    return turns / (time.perf_counter() - started)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_serve-"))
    examples = crafter_examples(EXAMPLES, seed=11)
    data_path = write_jsonl(work / "train.jsonl", examples)
    server = Server(work / "data", serve_tiny_size=SIZE).start()
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=600)
        service_tps, _ = service_training(client, data_path)
        plain_tps = plain_training(work / "data", examples)
        print(f"training tokens/s   service job {service_tps:8.0f}   plain PyTorch loop {plain_tps:8.0f}   "
              f"ratio {service_tps / plain_tps:.2f} (target >= 0.6)")
        ms_per_token, prompt_length = generation_ms_per_token(work / "data", examples[0])
        print(f"generation          {ms_per_token:.1f} ms/token after a {prompt_length}-token prompt")
        client.chat.completions.create(model="local/tiny-qwen3", messages=examples[0]["messages"][:-1], max_tokens=1)
        rates = {c: chat_throughput(client, "local/tiny-qwen3", examples, c) for c in TURNS_PER_WORKER}
        print(f"chat throughput     concurrency 1: {rates[1]:.2f} turns/s   concurrency 16: {rates[16]:.2f} turns/s   "
              f"x{rates[16] / rates[1]:.1f} ({REPLY_TOKENS}-token replies)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
