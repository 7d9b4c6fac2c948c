"""The real size, offline: `local/qwen3-4b-shaped` (Qwen3-4B-Instruct-2507's exact config, random
bf16 weights, 8 GB) through the real serve and the `openai` SDK on CPU. One example exported by
the real filter_traces, one epoch, batch 1, gradient checkpointing: the job succeeds, writes a
checkpoint and a PEFT adapter vLLM's rules accept (7 x 36 x 2 LoRA tensors, 66 MB of bf16), PEFT
loads it unmerged, the ft: model chats. Every serve process's peak memory is measured: the flow
stays within this machine's 24 GiB with room to spare. Slow (minutes on 2 cores): marked
`fullsize`; skip it locally with SYNTH_SKIP_FULLSIZE=1 or -m "not fullsize", CI runs it."""
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from rollout_helpers import REPO, rollout_env, run_module
from serve_helpers import Server, wait_for_job
from synth_qwen import adapter_check, tiny_model
from synth_qwen.tiny_model import QWEN3_4B_SHAPED_ID

pytestmark = [pytest.mark.fullsize, pytest.mark.timeout(2 * 3600)]

GIB = 1 << 30
EXAMPLES = 1  # one training step; a single-turn episode, in the tiny model's compact text prompt: ~250 tokens (a step of
# 900 tokens with the full prompt and tools costs ~3x as much on CPU, and proves nothing more about size)
RANK = 16
LAYERS = 36
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QWEN3_4B_CONFIG = dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, intermediate_size=9728, vocab_size=151936, tie_word_embeddings=True,
                       max_position_embeddings=262144, eos_token_id=151645, dtype="bfloat16")
MEMORY_BUDGET_GIB = 24  # the whole flow, every process at once
ROLES = {"synth_qwen.train_worker": "train worker", "synth_qwen.inference_worker": "inference worker",
         "synth_qwen.serve": "serve"}


class PeakMemory(threading.Thread):
    """Peak resident memory of serve and its workers, read from /proc every 0.2 s: per role VmHWM
    (all resident pages, the mapped model files included) and RssAnon (the process's own memory: an
    fp32 copy of the base would be 16 GB of it); all at once, the largest sum of VmRSS (an upper
    bound: pages of a model file two processes map are counted twice)."""

    def __init__(self, root_pid: int):
        super().__init__(daemon=True)
        self.root_pid, self.running = root_pid, True
        self.peak, self.peak_anon, self.peak_total = {}, {}, 0

    def run(self):
        while self.running:
            total = 0
            for pid, role in self.processes().items():
                status = proc_status(pid)
                if status:
                    self.peak[role] = max(self.peak.get(role, 0), status["VmHWM"])
                    self.peak_anon[role] = max(self.peak_anon.get(role, 0), status["RssAnon"])
                    total += status["VmRSS"]
            self.peak_total = max(self.peak_total, total)
            time.sleep(0.2)

    def processes(self) -> dict[int, str]:
        """pid -> role of serve and its descendants."""
        parents = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        found, frontier = {self.root_pid}, [self.root_pid]
        while frontier:
            parent = frontier.pop()
            children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
            found.update(children)
            frontier += children
        roles = {}
        for pid in found:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            role = next((name for module, name in ROLES.items() if module in command), None)
            if role:
                roles[pid] = role
        return roles


def proc_status(pid: int) -> dict[str, int] | None:
    """VmRSS, VmHWM and RssAnon of a process in bytes (None once it is gone)."""
    fields = ("VmRSS", "VmHWM", "RssAnon")
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines if line.startswith(fields)}
    return values if len(values) == len(fields) else None


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The run's folder; removed at the end (the 8 GB model lives under its serve data dir)."""
    folder = tmp_path_factory.mktemp("fullsize")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def training_file(work) -> Path:
    """EXAMPLES per-turn examples, as a user makes them: run_crafter traces, filter_traces exports."""
    db, out = work / "traces.db", work / "sft.jsonl"
    done = run_module("synth_qwen.run_crafter", rollout_env(work, crafter_db_url=f"sqlite:///{db}",
                                                             crafter_model="builtin:expert", crafter_tool_mode="text",
                                                             crafter_prompt="compact", crafter_history=0,
                                                             crafter_episodes=EXAMPLES, crafter_max_steps=1), work)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "synth_qwen.filter_traces", "-d", str(db), "-o", str(out),
                           "--min-total-reward", "-1000", "--max-cost", "none", "--max-tokens", "none"],
                          cwd=work, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(out.read_text().splitlines()) == EXAMPLES
    return out


@pytest.fixture(scope="module")
def run(work, training_file, fullsize_report):
    """serve, one LoRA job on the 4B shape, one chat with the fine-tuned model; memory sampled throughout."""
    server = Server(work / "data", serve_device="cpu", serve_min_examples=EXAMPLES, serve_max_seq_len=1024,
                    serve_lora_rank=RANK).start()
    memory = PeakMemory(server.process.pid)
    memory.start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=3600)
    try:
        listed = [model.id for model in client.models.list().data]
        started = time.monotonic()
        uploaded = client.files.create(file=training_file.open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=QWEN3_4B_SHAPED_ID, training_file=uploaded.id, seed=0,
                                             method={"type": "supervised", "supervised": {"hyperparameters": {
                                                 "n_epochs": 1, "batch_size": 1}}})
        job = wait_for_job(client, job.id, timeout_s=2 * 3600)
        job_seconds = time.monotonic() - started
        chat_started = time.monotonic()
        example = json.loads(training_file.read_text().splitlines()[0])
        reply = client.chat.completions.create(model=job.fine_tuned_model or QWEN3_4B_SHAPED_ID,
                                               messages=example["messages"][:-1], temperature=0, max_tokens=3) if job.status == "succeeded" else None
        chat_seconds = time.monotonic() - chat_started
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    finally:
        server.stop()  # the inference worker's 8 GB goes with it, before PEFT loads the base here
        memory.running = False
        memory.join()
    result = dict(job=job, reply=reply, events=events, checkpoints=checkpoints, listed=listed, memory=memory,
                  data_dir=server.data_dir, log=server.log())
    done = next((event.data for event in events if event.data and "train_seconds" in event.data), {})
    fullsize_report += [
        f"job {job.status} in {job_seconds:.0f}s: {job.trained_tokens or 0:,} tokens, training {done.get('train_seconds', 0):.0f}s "
        f"({done.get('train_seconds', 0) / EXAMPLES:.0f}s per step of batch 1, {done.get('tokens_per_second', 0):.1f} tokens/s)",
        f"chat with the ft: model: {reply.usage.completion_tokens if reply else 0} tokens in {chat_seconds:.0f}s (load + merge + prefill)",
        "peak resident memory: " + ", ".join(f"{role} {peak / GIB:.1f} GiB ({memory.peak_anon[role] / GIB:.1f} GiB its own)"
                                             for role, peak in sorted(memory.peak.items()))
        + f"; all at once at most {memory.peak_total / GIB:.1f} GiB (budget {MEMORY_BUDGET_GIB} GiB)"]
    return result


def adapter_dir(run) -> Path:
    return Path(run["job"].model_extra["output_dir"])


def test_the_4b_shape_is_listed_and_built_with_qwen3_4bs_config(run):
    assert QWEN3_4B_SHAPED_ID in run["listed"]
    [built] = (run["data_dir"] / "base_models").glob("qwen3-shaped-4b-*")
    config = json.loads((built / "config.json").read_text())
    assert {key: config[key] for key in QWEN3_4B_CONFIG} == QWEN3_4B_CONFIG
    assert config["rope_parameters"]["rope_theta"] == 5_000_000
    index = json.loads((built / "model.safetensors.index.json").read_text())  # sharded, as Qwen3-4B ships
    assert len(set(index["weight_map"].values())) >= 2
    assert 8.0e9 < index["metadata"]["total_size"] < 8.1e9  # 4.02 B parameters in bf16, the tied head once


def test_a_lora_job_on_it_succeeds_with_gradient_checkpointing(run):
    job = run["job"]
    assert job.status == "succeeded", (job.error, run["log"][-2000:])
    assert job.fine_tuned_model.startswith(f"ft:{QWEN3_4B_SHAPED_ID}:")
    messages = [event.message for event in run["events"]]
    assert any("gradient checkpointing" in message and f"LoRA r={RANK}" in message for message in messages), messages
    assert [checkpoint.step_number for checkpoint in run["checkpoints"]] == [EXAMPLES]


def test_the_adapter_is_what_vllm_loads(run):
    folder = adapter_dir(run)
    assert adapter_check.check_adapter(folder, max_lora_rank=RANK) == []
    header = adapter_check.safetensors_header(folder / "adapter_model.safetensors")
    assert len(header) == len(LORA_MODULES) * LAYERS * 2
    shapes = adapter_check.linear_shapes(QWEN3_4B_CONFIG)
    for layer in range(LAYERS):
        for module in LORA_MODULES:
            in_features, out_features = shapes[module]
            path = next(name for name in header if f".layers.{layer}." in name and f".{module}.lora_A." in name)
            assert header[path]["shape"] == [RANK, in_features] and header[path]["dtype"] == "BF16"
            assert header[path.replace("lora_A", "lora_B")]["shape"] == [out_features, RANK]
    params = sum(math.prod(meta["shape"]) for meta in header.values())
    assert params == LAYERS * RANK * sum(i + o for i, o in shapes.values()) == 33_030_144  # 0.917 M per layer
    size = (folder / "adapter_model.safetensors").stat().st_size
    assert 2 * params < size < 2 * params + 200_000  # bf16 (66 MB), not fp32's 132 MB
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == RANK and set(config["target_modules"]) == set(LORA_MODULES)


def test_chat_with_the_fine_tuned_model_returns_tokens(run):
    reply = run["reply"]
    assert reply is not None and reply.usage.completion_tokens >= 1
    assert reply.choices[0].finish_reason in ("length", "stop", "tool_calls")


def test_the_whole_flow_fits_in_24_gib_with_no_fp32_copy(run):
    peak, own = run["memory"].peak, run["memory"].peak_anon
    assert set(peak) == {"serve", "train worker", "inference worker"}, peak
    assert run["memory"].peak_total < MEMORY_BUDGET_GIB * GIB
    # The train worker maps the 8 GB base from its files and never copies it (an fp32 copy: 16 GB of
    # its own); the inference worker's merged weights are its own (~7 GB of bf16), never fp32.
    assert own["train worker"] < 8 * GIB and own["inference worker"] < 12 * GIB, own
    assert peak["serve"] < GIB  # serve never loads a model


def test_peft_loads_the_adapter_unmerged_on_the_base(run):
    """As vLLM applies it: the base as shipped, the adapter beside it; its update changes the logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = adapter_dir(run)
    base_dir = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto"), folder).eval()
    layers = [module for name, module in model.named_modules() if hasattr(module, "lora_A") and name.endswith("_proj")]
    assert len(layers) == len(LORA_MODULES) * LAYERS and not any(layer.merged for layer in layers)
    assert model.get_base_model().dtype == torch.bfloat16
    ids = AutoTokenizer.from_pretrained(folder).apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode():
        tuned = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
    assert torch.isfinite(tuned).all() and not torch.equal(tuned, base)
