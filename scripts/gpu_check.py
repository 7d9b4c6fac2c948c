"""The Qwen3-4B LoRA job on a GPU: `serve` with SERVE_DEVICE=cuda trains a LoRA adapter on
`local/qwen3-4b-shaped` (Qwen3-4B-Instruct-2507's exact config and real tokenizer and template,
random bf16 weights, built on first use), the job tests/test_fullsize.py runs on CPU, then chats
with it. Prints training tokens/s, peak GPU memory, the adapter's size and whether vLLM's rules
accept it (synth_qwen.adapter_check).

    python scripts/gpu_check.py [--examples 64] [--epochs 1] [--batch-size 4] [--model local/qwen3-shaped]

Without CUDA it says so and exits 1 before building anything. Nothing in the repo depends on it.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from synth_qwen.tiny_model import QWEN3_4B_SHAPED_ID, QWEN3_SHAPED_MODELS  # noqa: E402 (after the path)


def gpu_memory_used_mib() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


class PeakMemory(threading.Thread):
    """nvidia-smi's memory.used every 0.2 s (the worker processes' CUDA memory, whoever allocates it)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = 0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, gpu_memory_used_mib())
            time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--model", default=QWEN3_4B_SHAPED_ID, choices=list(QWEN3_SHAPED_MODELS))
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing measured. "
              "Run it on a machine with an NVIDIA GPU and a CUDA build of torch.")
        return 1
    if shutil.which("nvidia-smi") is None:
        print("gpu_check: nvidia-smi not found: cannot read GPU memory")
        return 1

    import openai

    from serve_helpers import crafter_examples, wait_for_job, write_jsonl
    from synth_qwen import adapter_check, tiny_model

    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    started = time.perf_counter()
    model_dir = tiny_model.ensure_qwen3_shaped(work / "data", QWEN3_SHAPED_MODELS[args.model])
    config = json.loads((model_dir / "config.json").read_text())
    print(f"model: {args.model} ({model_dir.name}, {config['num_hidden_layers']} layers of {config['hidden_size']}), "
          f"built in {time.perf_counter() - started:.0f}s")

    env = {**os.environ, "SERVE_DEVICE": "cuda", "SERVE_DATA_DIR": str(work / "data"), "SERVE_HOST": "127.0.0.1",
           "SERVE_PORT": str(free_port()), "PYTHONPATH": str(REPO)}
    log = open(work / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, "-m", "synth_qwen.serve"], cwd=REPO, env=env, stdout=log, stderr=log)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{env['SERVE_PORT']}/v1", api_key="unused", max_retries=0)
    try:
        for _ in range(300):
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                time.sleep(0.2)
        path = write_jsonl(work / "train.jsonl", crafter_examples(args.examples, seed=0, with_history=True))
        training_file = client.files.create(file=path.open("rb"), purpose="fine-tune")
        baseline = gpu_memory_used_mib()
        peak = PeakMemory()
        peak.start()
        job = client.fine_tuning.jobs.create(model=args.model, training_file=training_file.id, seed=0, hyperparameters={
            "n_epochs": args.epochs, "batch_size": args.batch_size})
        job = wait_for_job(client, job.id, timeout_s=3 * 3600)
        peak.running = False
        if job.status != "succeeded":
            print(f"gpu_check: the job {job.status}: {job.error}; see {work}/serve.log and the job's worker.log")
            return 1
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        done = next(event.data for event in events if event.data and "tokens_per_second" in event.data)
        adapter = Path(job.model_extra["output_dir"])
        chat_started = time.perf_counter()
        example = crafter_examples(2, seed=7)[-1]
        reply = client.chat.completions.create(model=job.fine_tuned_model, messages=example["messages"][:-1],
                                               tools=example["tools"], temperature=0, max_tokens=32)
        chat_seconds = time.perf_counter() - chat_started
    finally:
        serve.terminate()
        serve.wait(timeout=60)

    peak_gib = (peak.peak - baseline) / 1024
    steady = done.get("steady_tokens_per_second") or done["tokens_per_second"]
    print(f"GPU: {torch.cuda.get_device_name(0)}")
    print(f"LoRA job: {job.trained_tokens:,} tokens in {done['train_seconds']:.1f}s, {done['tokens_per_second']:.0f} "
          f"tokens/s ({steady:.0f} after the first step), batch {args.batch_size}, rank {json.loads((adapter / 'adapter_config.json').read_text())['r']}")
    print(f"peak GPU memory during the job: {peak_gib:.2f} GiB above the idle {baseline / 1024:.2f} GiB")
    print(f"adapter: {adapter} ({(adapter / 'adapter_model.safetensors').stat().st_size / 1e6:.1f} MB)")
    problems = adapter_check.check_adapter(adapter, max_lora_rank=adapter_check.DEFAULT_MAX_LORA_RANK)
    print("adapter check (vLLM's rules, --max-lora-rank 16): " + ("ok" if not problems else "; ".join(map(str, problems))))
    print(f"chat through the adapter: {reply.usage.completion_tokens} tokens in {chat_seconds:.1f}s "
          f"(first request: loads and merges), finish_reason {reply.choices[0].finish_reason}")
    shutil.rmtree(work, ignore_errors=True)  # the 8 GB model too
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
