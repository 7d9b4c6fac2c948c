"""serve's training paths side by side in one run (~5 minutes on 2 cores):

    .venv/bin/python bench/bench_train_paths.py

1. the same job (data, seed, hyperparameters) with SERVE_TRAIN_PRECISION=fp32 and with the fast
   path forced on (bf16 autocast + torch.compile): the loss at every logged step, the final losses'
   ratio (they should agree within 2 %), and each job's tokens/s; and once more in bf16 without
   compile, so the steady-state gain of compiling shows apart from bf16's;
2. a short job (50 steps) with SERVE_TRAIN_COMPILE=off and on: the whole job's wall time, warm-up
   included, so a short job's cost of compiling shows.
On a CPU without native bf16 (no avx512_bf16/AMX) the forced fast path is slower: `auto` keeps
fp32 there, and this script shows by how much.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openai import OpenAI  # noqa: E402

from serve_helpers import Server, crafter_examples, wait_for_job, write_jsonl  # noqa: E402

SIZE = "small"
EXAMPLES, EPOCHS, BATCH = 96, 2, 4
SHORT_STEPS = 50


def job(work: Path, name: str, data: Path, epochs: int, batch: int, **env) -> dict:
    """One job on a fresh server with `env`: its logged losses, tokens/s and wall time."""
    server = Server(work / name, serve_tiny_size=SIZE, **env).start()
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=600)
        training_file = client.files.create(file=data.open("rb"), purpose="fine-tune")
        started = time.perf_counter()
        created = client.fine_tuning.jobs.create(model="local/tiny-qwen3", training_file=training_file.id, seed=0,
                                                 hyperparameters={"n_epochs": epochs, "batch_size": batch})
        finished = wait_for_job(client, created.id, timeout_s=1800)
        wall = time.perf_counter() - started
        assert finished.status == "succeeded", finished.error
        events = list(reversed(client.fine_tuning.jobs.list_events(created.id, limit=100).data))
        losses = [(e.data["step"], e.data["train_loss"]) for e in events if e.type == "metrics"]
        done = next(e.data for e in events if "tokens_per_second" in (e.data or {}))
        return {"losses": losses, "steady": done["steady_tokens_per_second"], "wall": wall}
    finally:
        server.stop()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_train_paths-"))
    data = write_jsonl(work / "train.jsonl", crafter_examples(EXAMPLES, seed=11))
    fp32 = job(work, "fp32", data, EPOCHS, BATCH, serve_train_precision="fp32", serve_train_compile="off")
    fast = job(work, "fast", data, EPOCHS, BATCH, serve_train_precision="bf16", serve_train_compile="on")
    print(f"loss per logged step, the same job ({EXAMPLES} examples, {EPOCHS} epochs, batch {BATCH}, seed 0)")
    print("  step   fp32     bf16+compile")
    for (step, a), (_, b) in zip(fp32["losses"], fast["losses"]):
        print(f"  {step:4d}  {a:7.4f}  {b:7.4f}")
    final_ratio = fast["losses"][-1][1] / fp32["losses"][-1][1]
    print(f"final loss ratio bf16+compile / fp32: {final_ratio:.3f} (agreement within 2 %: "
          f"{abs(final_ratio - 1) <= 0.02})")
    print(f"steady tokens/s: fp32 {fp32['steady']:.0f}, bf16+compile {fast['steady']:.0f} "
          f"(x{fast['steady'] / fp32['steady']:.2f})", flush=True)
    bf16 = job(work, "bf16-eager", data, EPOCHS, BATCH, serve_train_precision="bf16", serve_train_compile="off")
    print(f"steady tokens/s: bf16 eager {bf16['steady']:.0f}; compile's steady-state gain on top of bf16: "
          f"x{fast['steady'] / bf16['steady']:.2f}", flush=True)

    short = write_jsonl(work / "short.jsonl", crafter_examples(SHORT_STEPS, seed=12))
    eager = job(work, "short-eager", short, 1, 1, serve_train_compile="off")
    compiled = job(work, "short-compiled", short, 1, 1, serve_train_compile="on")
    print(f"a {SHORT_STEPS}-step job, whole wall time: compile off {eager['wall']:.1f} s, on {compiled['wall']:.1f} s")


if __name__ == "__main__":
    main()
