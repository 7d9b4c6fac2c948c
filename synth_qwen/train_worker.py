"""Training subprocess of `serve`: `python -m synth_qwen.train_worker JOB_DIR`.

Reads JOB_DIR/spec.json (a `TrainingSpec`, written by serve), trains in a plain PyTorch loop and
reports progress as JSON lines on stdout (a `WorkerMessage` each: event, metrics, checkpoint, result
or error); anything else the libraries print goes to stderr (serve keeps it in JOB_DIR/worker.log).

Loss falls only on assistant turns with weight 1: examples are pre-tokenized here into
`input_ids` + `labels` (-100 over system/user/tool text and over weight-0 assistant turns, see
`qwen_format.encode_example`), because chat fine-tuning has per-message weights. Speed comes from three things, each measured in
bench/bench_serve.py: length-grouped batches (little padding), the output head run only on labelled
positions, and bf16 autocast (+ torch.compile) where the device computes bf16 natively. The tiny model is fully
fine-tuned; real Hugging Face models (and `local/qwen3-shaped`) get a LoRA adapter on all linear
projections.
This module imports torch only inside main(): serve reads its tables without it.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from synth_qwen import cpu_compute, qwen_format
from synth_qwen.inference_worker import SMALL_MODEL_PARAMS
from synth_qwen.serve_store import Hyperparameters, ModelSpec
from synth_qwen.write_errors import write_failure

# Training defaults per base-model kind; "auto" hyperparameters resolve from here.
TRAINING_DEFAULTS = {
    "tiny": dict(method="full", learning_rate=1e-3, batch_size=4, warmup_steps=0.03, weight_decay=0.0,
                 gradient_checkpointing=False),
    "hf": dict(method="lora", learning_rate=2e-4, batch_size=4, warmup_steps=0.03, weight_decay=0.0,
               gradient_checkpointing=True),
}
LORA_ALPHA_PER_RANK = 2
LOGS_PER_RUN = 50  # metrics events per job, whatever its length
GROUP_WINDOW = 32  # length-grouped batching sorts this many batches' rows at a time
MAX_GRAD_NORM = 1.0
# torch.compile, where `auto` uses it (CUDA), only pays back its warm-up on a long job: on this CPU its
# steady gain over bf16 eager was x1.08 after 7-23 s more start-up, even at 1.1-3.7 M trained tokens.
COMPILE_MIN_TOKENS = 1_000_000


# ---------------------------------------------------------------------------------------
# What serve and the worker say to each other

class TrainingSpec(BaseModel):
    """JOB_DIR/spec.json: the job as serve resolved it."""
    job_id: str
    model: str  # the model the job asked for (named in the log)
    base: ModelSpec  # what that model trains from (serve.training_base)
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters  # resolved: numbers only
    method: Literal["supervised", "dpo"] = "supervised"  # dpo: train_dpo.train runs the job
    beta: float | None = None  # dpo, resolved
    seed: int
    device: str  # SERVE_DEVICE
    max_seq_len: int
    lora_rank: int
    output_dir: str
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # SERVE_TRAIN_PRECISION
    compile: Literal["auto", "on", "off"] = "auto"  # SERVE_TRAIN_COMPILE


class StepMetrics(BaseModel):
    """One logged training step: a row of JOB_DIR/metrics.csv (columns in this order), a metrics event."""
    model_config = ConfigDict(ser_json_inf_nan="constants")  # a diverged run's loss stays NaN, not null
    step: int
    epoch: float
    train_loss: float
    train_mean_token_accuracy: float | None = None
    learning_rate: float | None = None
    elapsed_s: float
    valid_loss: float | None = None  # at the end of each epoch, when the job has a validation file
    reward_accuracy: float | None = None  # dpo: share of pairs whose preferred answer earns more reward
    reward_margin: float | None = None  # dpo: mean reward(preferred) - reward(non-preferred)


class WorkerEvent(BaseModel):
    type: Literal["event"] = "event"
    message: str
    level: str = "info"


class WorkerMetrics(BaseModel):
    type: Literal["metrics"] = "metrics"
    data: StepMetrics
    total_steps: int


class WorkerCheckpoint(BaseModel):
    type: Literal["checkpoint"] = "checkpoint"
    step: int
    path: str
    metrics: StepMetrics | None = None  # the last logged step, if any was logged yet


class WorkerResult(BaseModel):
    type: Literal["result"] = "result"
    trained_tokens: int
    output_dir: str
    metrics_csv: str
    train_seconds: float
    tokens_per_second: float
    steady_tokens_per_second: float
    adapter: bool  # output_dir holds a LoRA adapter, else full weights


class WorkerError(BaseModel):
    type: Literal["error"] = "error"
    message: str
    code: str = "training_failed"  # the job's error code; Diverged.code when training could not work


WorkerMessage = Annotated[WorkerEvent | WorkerMetrics | WorkerCheckpoint | WorkerResult | WorkerError,
                          Field(discriminator="type")]
WORKER_MESSAGE = TypeAdapter(WorkerMessage)  # WORKER_MESSAGE.validate_json(line) -> one of the above


# ---------------------------------------------------------------------------------------
# Device and hyperparameters

def resolve_device(device: str) -> str:
    """SERVE_DEVICE=auto -> cuda when torch sees a GPU, else cpu."""
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def auto_epochs(n_examples: int) -> int:
    """OpenAI's rule for n_epochs="auto"."""
    if n_examples * 3 < 100:
        return min(25, 100 // max(1, n_examples))
    if n_examples * 3 > 25000:
        return max(1, 25000 // n_examples)
    return 3


def resolve_hyperparameters(requested: Hyperparameters, kind: str, n_examples: int) -> Hyperparameters:
    def pick(value, fallback):
        return fallback if value == "auto" else value

    return Hyperparameters(
        n_epochs=int(pick(requested.n_epochs, auto_epochs(n_examples))),
        batch_size=int(pick(requested.batch_size, TRAINING_DEFAULTS[kind]["batch_size"])),
        learning_rate_multiplier=float(pick(requested.learning_rate_multiplier, 1.0)))


# ---------------------------------------------------------------------------------------
# Examples (qwen_format.encode_example turns each into input_ids + labels)

def read_jsonl(path: str) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ---------------------------------------------------------------------------------------
# The worker

class Reporter:
    """Protocol lines to serve on the real stdout; library chatter is redirected to stderr."""

    def __init__(self):
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)

    def send(self, message: BaseModel) -> None:
        self.out.write(message.model_dump_json() + "\n")

    def event(self, message: str, level: str = "info") -> None:
        self.send(WorkerEvent(message=message, level=level))


def load_base(spec: TrainingSpec, reporter: Reporter):
    """(model, tokenizer, training chat template) for the job's base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from synth_qwen import tiny_model

    base = spec.base
    path = tiny_model.local_path(base)
    if base.init_path and not base.init_adapter:
        path = base.init_path  # a fine-tuned model's full weights (the tiny model's jobs)
    local_only = not base.allow_download
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=local_only, dtype="auto")
    if base.init_adapter:  # a fine-tuned adapter trains on (no new adapter on top)
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, base.init_path, is_trainable=True)
    training_template = qwen_format.training_template(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    reporter.event(f"Loaded base model {spec.model} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return model, tokenizer, training_template


class Diverged(Exception):
    """The loss or the weights stopped being finite numbers: the job fails, no model is published."""
    code = "training_diverged"


class NothingToTrain(Diverged):
    """No token would be trained (the loss would read 0 and the job "succeed" having learned nothing)."""
    code = "no_trained_tokens"


class CannotWrite(Diverged):
    """A checkpoint or the final model could not be written (a full disk): no model is published."""
    code = "output_not_written"


def save_weights(model, folder: Path) -> None:
    """The model's weights, or its LoRA adapter in the base model's dtype: vLLM and PEFT cast an
    adapter to that dtype anyway, and PEFT trains it in fp32, which would double the file (Qwen3-4B
    r=16: 66 MB in bf16). Only the small LoRA tensors are cast; the base's are never copied."""
    if not hasattr(model, "peft_config"):
        return model.save_pretrained(folder)
    dtype = model.get_base_model().dtype
    state = {name: weights.to(dtype) if "lora_" in name else weights for name, weights in model.state_dict().items()}
    model.save_pretrained(folder, state_dict=state)


def save_or_fail(what: str, folder: Path, *savers) -> None:
    """Each saver writes into `folder`; when one fails, the half-written folder goes (it holds the space the
    job needs to record its failure, and it is no model) and the job fails naming what and where."""
    try:
        for save in savers:
            save(str(folder))
    except Exception as error:  # OSError, or safetensors' own error wrapping one
        shutil.rmtree(folder, ignore_errors=True)
        reason = write_failure(error) or " ".join(str(error).split())
        raise CannotWrite(f"cannot write the {what} to {folder} ({reason}): free space on the disk of "
                          f"SERVE_DATA_DIR, then create a new job") from error


def divergence(logs: dict) -> str | None:
    """Why these logged metrics show a diverged run (a NaN or infinite loss or gradient), or None."""
    for key in ("loss", "grad_norm"):
        value = logs.get(key)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            return f"the training {key.replace('_', ' ')} became {value}"
    return None


def nonfinite_weights(model) -> list[str]:
    import torch

    return [name for name, weights in model.named_parameters() if weights.requires_grad and
            not bool(torch.isfinite(weights).all())]


DIVERGED_HINT = "the learning rate is too high for this data: lower learning_rate_multiplier"


def linear_layer_names(model) -> list[str]:
    """PEFT's "all-linear" (every linear layer but the output head), as the short names (q_proj,
    ..., down_proj) that adapter_config.json then lists, the form vLLM's --lora-modules expects."""
    import torch

    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head})


# ---------------------------------------------------------------------------------------
# Speed: precision, compilation, batches

def bf16_is_fast(device: str) -> bool:
    """Does this device compute in bf16 natively? CUDA: torch says; CPU: the avx512_bf16 or AMX
    instructions (without them oneDNN emulates bf16 and training runs ~3x slower than fp32,
    measured on an AVX-512 Xeon without avx512_bf16)."""
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_path(device: str, precision: str, compile_setting: str, planned_tokens: int) -> tuple[bool, bool]:
    """(bf16 autocast, torch.compile) for this job: SERVE_TRAIN_PRECISION / SERVE_TRAIN_COMPILE,
    "auto" meaning bf16 where the device has it, and compile only on CUDA, on top of bf16, for a job
    long enough to pay back its warm-up. Never on CPU by default: there its backward is not
    bit-reproducible (the same job twice gives other losses from step 2 on; bf16 and fp32 eager are)
    and it gains 8 % (docs/benchmarks.md, serve)."""
    bf16 = precision == "bf16" or (precision == "auto" and bf16_is_fast(device))
    compiled = compile_setting == "on" or (
        compile_setting == "auto" and device == "cuda" and bf16 and planned_tokens >= COMPILE_MIN_TOKENS)
    return bf16, compiled


def length_grouped_batches(lengths: list[int], batch_size: int, rng) -> list[list[int]]:
    """One epoch's batches (lists of row indices): shuffled, then sorted by length within windows of
    GROUP_WINDOW batches, so a batch's rows are of similar length and little compute goes to padding;
    the batches' order is shuffled again."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * GROUP_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda index: -lengths[index])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(rows: list[dict], pad_id: int, device: str):
    """input_ids and labels right-padded to the longest row (padding is labelled -100). Right padding
    needs no attention mask: a causal model's real tokens never look at later positions."""
    import torch

    width = max(len(row["input_ids"]) for row in rows)
    ids = torch.tensor([row["input_ids"] + [pad_id] * (width - len(row["input_ids"])) for row in rows], device=device)
    labels = torch.tensor([row["labels"] + [-100] * (width - len(row["labels"])) for row in rows], device=device)
    return ids, labels


class LossOnLabels:
    """The mean next-token loss over labelled positions, with the output head run only there:
    assistant replies are a small part of each example, so most positions need no logits (measured on
    the tiny model, 4 x ~780 tokens of which 144 labelled: forward + backward 1.9-2.1 s instead of 2.4 s)."""

    def __init__(self, model, compiled: bool, warn):
        import torch

        self.eager, self.head, self.warn = model.get_decoder(), model.get_output_embeddings(), warn
        self.backbone = torch.compile(self.eager, dynamic=True) if compiled else self.eager  # dynamic: one graph for every width

    def hidden(self, ids):
        """The backbone's output; a compile that fails (no C++ compiler, a full disk under its cache)
        costs speed, not the job: the eager backbone takes over."""
        from torch._dynamo.exc import BackendCompilerFailed

        try:
            return self.backbone(input_ids=ids).last_hidden_state
        except BackendCompilerFailed as error:
            if self.backbone is self.eager:
                raise
            self.backbone = self.eager
            cause = getattr(error, "inner_exception", None) or error
            self.warn(f"torch.compile failed ({type(cause).__name__}); training on uncompiled "
                      "(SERVE_TRAIN_COMPILE=off skips the attempt)")
            return self.backbone(input_ids=ids).last_hidden_state

    def __call__(self, ids, labels):
        """(loss, correct next tokens, labelled tokens)."""
        import torch

        hidden = self.hidden(ids)[:, :-1]
        targets = labels[:, 1:]
        keep = targets != -100
        logits = self.head(hidden[keep]).float()
        targets = targets[keep]
        loss = torch.nn.functional.cross_entropy(logits, targets)
        return loss, int((logits.argmax(-1) == targets).sum()), int(targets.numel())


# ---------------------------------------------------------------------------------------
# The training loop

def learning_rate_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to `peak`, then linear decay to 0 at `total` (the schedule TRL's default used)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


class Checks:
    """What the loop checks between steps: the cancel flag serve writes, and serve still alive."""

    def __init__(self, job_dir: Path):
        self.cancel_flag, self.parent = job_dir / "cancel", os.getppid()

    def cancelled(self) -> bool:
        if os.getppid() != self.parent:  # serve died (SIGKILL): no one will read our results
            os._exit(3)
        return self.cancel_flag.exists()


def mean_loss(loss_fn, rows: list[dict], batch_size: int, pad_id: int, device: str, autocast) -> float:
    """The loss over `rows` (validation), weighted by labelled tokens."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad(), autocast():
        for start in range(0, len(rows), batch_size):
            loss, _, n = loss_fn(*collate(rows[start:start + batch_size], pad_id, device))
            total, count = total + float(loss) * n, count + n
    return total / max(count, 1)


def train(spec: TrainingSpec, job_dir: Path, reporter: Reporter) -> None:
    import contextlib
    import random

    import torch

    torch.manual_seed(spec.seed)  # LoRA's initial weights and dropout
    model, tokenizer, training_template = load_base(spec, reporter)
    defaults = TRAINING_DEFAULTS[spec.base.kind]
    hyper = spec.hyperparameters
    rows = [qwen_format.encode_example(tokenizer, training_template, example, spec.max_seq_len)
            for example in read_jsonl(spec.training_file)]
    truncated = sum(len(row["input_ids"]) == spec.max_seq_len for row in rows)
    tokens_per_epoch = sum(len(row["input_ids"]) for row in rows)
    reporter.event(f"Tokenized {len(rows)} examples ({tokens_per_epoch:,} tokens"
                   + (f", {truncated} truncated to {spec.max_seq_len}" if truncated else "") + ")",
                   level="warn" if truncated else "info")
    if not any(label != -100 for row in rows for label in row["labels"][1:]):  # the loss would read 0: nothing learned
        raise NothingToTrain(f"no example keeps an assistant token to train on within {spec.max_seq_len} tokens "
                             f"(SERVE_MAX_SEQ_LEN): every reply was truncated away")
    eval_rows = None
    if spec.validation_file:
        eval_rows = [qwen_format.encode_example(tokenizer, training_template, example, spec.max_seq_len)
                     for example in read_jsonl(spec.validation_file)]

    device = resolve_device(spec.device)
    lora = defaults["method"] == "lora"
    # Checkpointing slows a small model down, but a big one's activations would not fit (36 layers).
    checkpointing = defaults["gradient_checkpointing"] and (device != "cpu" or model.num_parameters() >= SMALL_MODEL_PARAMS)
    if device == "cpu" and checkpointing:
        cpu_compute.fp32_matmuls(model)  # bf16 weights stay bf16 in memory (see cpu_compute)
    if lora and not spec.base.init_adapter:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=spec.lora_rank, lora_alpha=LORA_ALPHA_PER_RANK * spec.lora_rank, target_modules=linear_layer_names(model),
            lora_dropout=0.05, task_type="CAUSAL_LM"))
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.to(device).train()
    bf16, compiled = fast_path(device, spec.precision, spec.compile, tokens_per_epoch * hyper.n_epochs)
    compiled = compiled and not checkpointing
    weights = next(model.parameters()).dtype
    bf16 = bf16 and weights == torch.float32  # a bf16 base (real Qwen on a GPU) needs no autocast
    precision = "bf16 autocast" if bf16 else str(weights).removeprefix("torch.")

    def autocast():
        return torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    loss_fn = LossOnLabels(model, compiled, lambda message: reporter.event(message, level="warn"))
    params = [p for p in model.parameters() if p.requires_grad]
    peak = defaults["learning_rate"] * hyper.learning_rate_multiplier
    optimizer = torch.optim.AdamW(params, lr=peak, weight_decay=defaults["weight_decay"],
                                  fused=device in ("cpu", "cuda"))
    rng = random.Random(spec.seed)
    lengths = [len(row["input_ids"]) for row in rows]
    steps_per_epoch = -(-len(rows) // hyper.batch_size)
    total_steps = steps_per_epoch * hyper.n_epochs
    warmup = math.ceil(defaults["warmup_steps"] * total_steps)
    log_every = max(1, total_steps // LOGS_PER_RUN)
    metrics_path = job_dir / "metrics.csv"
    with open(metrics_path, "w", newline="") as handle:
        csv.writer(handle).writerow(StepMetrics.model_fields)
    reporter.event(f"Training: {hyper.n_epochs} epochs x {steps_per_epoch} steps, batch {hyper.batch_size}, "
                   f"{'LoRA r=' + str(spec.lora_rank) if lora else 'full fine-tune'}, device {device}, "
                   f"{precision}{', compiled' if compiled else ''}" + (", gradient checkpointing" if checkpointing else ""))
    checks = Checks(job_dir)
    started = time.perf_counter()
    step, seen, window, last_metrics, first_mark, last_mark = 0, 0, [], None, None, None
    for epoch in range(hyper.n_epochs):
        for indices in length_grouped_batches(lengths, hyper.batch_size, rng):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(step, total_steps, warmup, peak)
            with autocast():
                loss, correct, labelled = loss_fn(*collate([rows[i] for i in indices], tokenizer.pad_token_id, device))
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += sum(lengths[i] for i in indices)
            last_mark = (time.perf_counter(), seen)
            first_mark = first_mark or last_mark
            window.append((float(loss), correct, labelled))
            problem = divergence({"loss": window[-1][0], "grad_norm": grad_norm})
            if problem:
                raise Diverged(f"{problem} at step {step}; {DIVERGED_HINT}")
            if step % log_every == 0 or step == total_steps:
                last_metrics = StepMetrics(
                    step=step, epoch=round(step / steps_per_epoch, 3),
                    train_loss=round(sum(w[0] for w in window) / len(window), 6),
                    train_mean_token_accuracy=round(sum(w[1] for w in window) / max(1, sum(w[2] for w in window)), 6),
                    learning_rate=optimizer.param_groups[0]["lr"], elapsed_s=round(time.perf_counter() - started, 2))
                window = []
                with open(metrics_path, "a", newline="") as handle:
                    csv.writer(handle).writerow(last_metrics.model_dump().values())
                reporter.send(WorkerMetrics(data=last_metrics, total_steps=total_steps))
            if checks.cancelled():
                break
        if checks.cancelled():  # the inner loop stopped for it (the flag stays): no checkpoint
            break
        if eval_rows:
            last_metrics = (last_metrics or StepMetrics(step=step, epoch=epoch + 1, train_loss=math.nan, elapsed_s=0)
                            ).model_copy(update={"valid_loss": round(mean_loss(
                                loss_fn, eval_rows, hyper.batch_size, tokenizer.pad_token_id, device, autocast), 6)})
        save_checkpoint(model, tokenizer, job_dir, step, last_metrics, reporter)
    seconds = time.perf_counter() - started
    broken = nonfinite_weights(model)
    if broken:  # a NaN between two logged steps: the loss looked fine, the weights are not
        raise Diverged(f"{len(broken)} trained weight tensors are not finite (first: {broken[0]}); {DIVERGED_HINT}")
    output_dir = Path(spec.output_dir)
    # PEFT saves only the adapter; the tokenizer carries the inference template, as the base ships it
    save_or_fail("fine-tuned " + ("adapter" if lora else "model"), output_dir, lambda folder: save_weights(model, folder),
                 tokenizer.save_pretrained)
    steady = (last_mark[1] - first_mark[1]) / (last_mark[0] - first_mark[0]) if last_mark[0] > first_mark[0] else 0
    reporter.send(WorkerResult(trained_tokens=seen, output_dir=str(output_dir),
                               metrics_csv=str(metrics_path), train_seconds=round(seconds, 2),
                               tokens_per_second=round(seen / max(seconds, 1e-9), 1),
                               steady_tokens_per_second=round(steady, 1), adapter=lora))


def save_checkpoint(model, tokenizer, job_dir: Path, step: int, metrics: StepMetrics | None, reporter: Reporter) -> None:
    """The model after an epoch, as a checkpoint serve publishes (never with non-finite weights)."""
    broken = nonfinite_weights(model)
    if broken:
        raise Diverged(f"{len(broken)} trained weight tensors are not finite at step {step} "
                       f"(first: {broken[0]}); {DIVERGED_HINT}")
    folder = job_dir / "checkpoints" / f"step-{step}"
    save_or_fail(f"checkpoint of step {step}", folder, lambda path: save_weights(model, path), tokenizer.save_pretrained)
    reporter.send(WorkerCheckpoint(step=step, path=str(folder), metrics=metrics))


def main() -> None:
    job_dir = Path(sys.argv[1])
    spec = TrainingSpec.model_validate_json((job_dir / "spec.json").read_text())
    reporter = Reporter()
    try:
        if spec.method == "dpo":
            from synth_qwen import train_dpo

            train_dpo.train(spec, job_dir, reporter)
        else:
            train(spec, job_dir, reporter)
    except Exception as error:  # reported to the job as its error; the traceback stays in worker.log
        import traceback

        traceback.print_exc()
        if isinstance(error, Diverged):  # a reason for the user, not a bug
            reporter.send(WorkerError(message=str(error), code=error.code))
        else:
            reporter.send(WorkerError(message=f"{type(error).__name__}: {error}"))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
