"""Training subprocess of `serve`: `python -m synth_qwen.train_worker JOB_DIR`.

Reads JOB_DIR/spec.json (a `TrainingSpec`, written by serve), trains with TRL's SFTTrainer and
reports progress as JSON lines on stdout (a `WorkerMessage` each: event, metrics, checkpoint, result
or error); anything else the libraries print goes to stderr (serve keeps it in JOB_DIR/worker.log).

Loss falls only on assistant turns with weight 1: examples are pre-tokenized here into
`input_ids` + `labels` (-100 over system/user/tool text and over weight-0 assistant turns, see
`qwen_format.encode_example`), because TRL has no per-message weight. The tiny model is fully
fine-tuned; real Hugging Face models (and `local/qwen3-shaped`) get a LoRA adapter on all linear
projections.
This module imports torch only inside main(): serve reads its tables without it.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from synth_qwen import qwen_format
from synth_qwen.serve_store import Hyperparameters, ModelSpec

# Training defaults per base-model kind; "auto" hyperparameters resolve from here.
TRAINING_DEFAULTS = {
    "tiny": dict(method="full", learning_rate=1e-3, batch_size=4, warmup_steps=0.03, weight_decay=0.0,
                 gradient_checkpointing=False),
    "hf": dict(method="lora", learning_rate=2e-4, batch_size=4, warmup_steps=0.03, weight_decay=0.0,
               gradient_checkpointing=True),
}
LORA_ALPHA_PER_RANK = 2
LOGS_PER_RUN = 50  # metrics events per job, whatever its length


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


class StepMetrics(BaseModel):
    """One logged training step: a row of JOB_DIR/metrics.csv (columns in this order), a metrics event."""
    model_config = ConfigDict(ser_json_inf_nan="constants")  # a diverged run's loss stays NaN, not null
    step: int
    epoch: float
    train_loss: float
    train_mean_token_accuracy: float | None = None
    learning_rate: float | None = None
    elapsed_s: float
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


def make_callback(reporter: Reporter, tokenizer, job_dir: Path):
    from transformers import TrainerCallback

    cancel_flag = job_dir / "cancel"
    parent = os.getppid()
    metrics_path = job_dir / "metrics.csv"
    started = time.time()
    with open(metrics_path, "w", newline="") as handle:
        csv.writer(handle).writerow(StepMetrics.model_fields)

    class Progress(TrainerCallback):
        last_metrics: StepMetrics | None = None
        first_step = last_step = None  # (time, tokens seen) after the first and the latest step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            row = StepMetrics(step=state.global_step, epoch=round(state.epoch or 0, 3), train_loss=logs["loss"],
                              train_mean_token_accuracy=logs.get("mean_token_accuracy"),
                              learning_rate=logs.get("learning_rate"), elapsed_s=round(time.time() - started, 2))
            self.last_metrics = row
            with open(metrics_path, "a", newline="") as handle:
                csv.writer(handle).writerow(row.model_dump().values())
            reporter.send(WorkerMetrics(data=row, total_steps=state.max_steps))
            problem = divergence(logs)
            if problem:  # stops the trainer; main() reports it as the job's error
                raise Diverged(f"{problem} at step {state.global_step}; {DIVERGED_HINT}")

        def on_step_end(self, args, state, control, **kwargs):
            self.last_step = (time.perf_counter(), state.num_input_tokens_seen)
            self.first_step = self.first_step or self.last_step
            if os.getppid() != parent:  # serve died (SIGKILL): no one will read our results
                os._exit(3)
            if cancel_flag.exists():  # serve asks politely first, then terminates
                control.should_training_stop = True

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            if cancel_flag.exists():
                return
            broken = nonfinite_weights(model)
            if broken:  # never published as a checkpoint model
                raise Diverged(f"{len(broken)} trained weight tensors are not finite at step {state.global_step} "
                               f"(first: {broken[0]}); {DIVERGED_HINT}")
            folder = job_dir / "checkpoints" / f"step-{state.global_step}"
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            reporter.send(WorkerCheckpoint(step=state.global_step, path=str(folder), metrics=self.last_metrics))

        def steady_tokens_per_second(self) -> float | None:
            """Tokens/s after the first step (which pays one-time warm-up), up to the last one."""
            if not self.first_step or self.last_step[0] <= self.first_step[0]:
                return None
            return (self.last_step[1] - self.first_step[1]) / (self.last_step[0] - self.first_step[0])

    return Progress()


def train(spec: TrainingSpec, job_dir: Path, reporter: Reporter) -> None:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer, training_template = load_base(spec, reporter)
    defaults = TRAINING_DEFAULTS[spec.base.kind]
    hyper = spec.hyperparameters
    examples = read_jsonl(spec.training_file)
    rows = [qwen_format.encode_example(tokenizer, training_template, example, spec.max_seq_len) for example in examples]
    truncated = sum(len(row["input_ids"]) == spec.max_seq_len for row in rows)
    tokens_per_epoch = sum(len(row["input_ids"]) for row in rows)
    reporter.event(f"Tokenized {len(rows)} examples ({tokens_per_epoch:,} tokens"
                   + (f", {truncated} truncated to {spec.max_seq_len}" if truncated else "") + ")",
                   level="warn" if truncated else "info")
    if not any(label != -100 for row in rows for label in row["labels"]):  # the loss would read 0: nothing learned
        raise NothingToTrain(f"no example keeps an assistant token to train on within {spec.max_seq_len} tokens "
                       f"(SERVE_MAX_SEQ_LEN): every reply was truncated away")
    eval_rows = None
    if spec.validation_file:
        eval_rows = [qwen_format.encode_example(tokenizer, training_template, example, spec.max_seq_len)
                     for example in read_jsonl(spec.validation_file)]

    device = resolve_device(spec.device)
    cpu = device == "cpu"
    steps_per_epoch = -(-len(rows) // hyper.batch_size)
    config = SFTConfig(
        output_dir=str(job_dir / "trainer"), per_device_train_batch_size=hyper.batch_size,
        per_device_eval_batch_size=hyper.batch_size, num_train_epochs=hyper.n_epochs,
        learning_rate=defaults["learning_rate"] * hyper.learning_rate_multiplier,
        warmup_steps=defaults["warmup_steps"], weight_decay=defaults["weight_decay"], seed=spec.seed,
        logging_steps=max(1, steps_per_epoch * hyper.n_epochs // LOGS_PER_RUN), save_strategy="no",
        eval_strategy="epoch" if eval_rows else "no", report_to="none", disable_tqdm=True,
        use_cpu=cpu, bf16=not cpu and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=defaults["gradient_checkpointing"] and not cpu,
        max_length=None, dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding")  # feeds the steady-state tokens/s
    peft_config = None
    if defaults["method"] == "lora" and not spec.base.init_adapter:
        from peft import LoraConfig

        peft_config = LoraConfig(r=spec.lora_rank, lora_alpha=LORA_ALPHA_PER_RANK * spec.lora_rank,
                                 target_modules=linear_layer_names(model), lora_dropout=0.05, task_type="CAUSAL_LM")
    progress = make_callback(reporter, tokenizer, job_dir)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                         eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[progress])
    reporter.event(f"Training: {hyper.n_epochs} epochs x {steps_per_epoch} steps, batch {hyper.batch_size}, "
                   f"{'LoRA r=' + str(spec.lora_rank) if defaults['method'] == 'lora' else 'full fine-tune'}, device {device}")
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    broken = nonfinite_weights(trainer.model)
    if broken:  # a NaN between two logged steps: the loss looked fine, the weights are not
        raise Diverged(f"{len(broken)} trained weight tensors are not finite (first: {broken[0]}); {DIVERGED_HINT}")
    epochs_run = trainer.state.epoch or 0
    output_dir = Path(spec.output_dir)
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))  # the inference template, as the base ships it
    trained_tokens = int(tokens_per_epoch * epochs_run)
    reporter.send(WorkerResult(trained_tokens=trained_tokens, output_dir=str(output_dir),
                               metrics_csv=str(job_dir / "metrics.csv"), train_seconds=round(seconds, 2),
                               tokens_per_second=round(trained_tokens / max(seconds, 1e-9), 1),
                               steady_tokens_per_second=round(progress.steady_tokens_per_second() or 0, 1),
                               adapter=defaults["method"] == "lora"))


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
