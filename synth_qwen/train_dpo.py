"""DPO for serve's training worker: `train_worker.main()` runs `train(spec, job_dir, reporter)` when
the job's `method.type` is "dpo".

Each preference line is two chat examples (`sft_format.preference_pair`), encoded as SFT examples
are (`qwen_format.encode_example`: labels only on the answer). An answer's implicit reward is
beta x (its log-probability under the model being trained - under the reference); the loss is
-log sigmoid(reward(preferred) - reward(non-preferred)) (Rafailov et al., 2023, "Direct Preference
Optimization"). The reference is the model the job starts from, scored once before the first step:
the same numbers a frozen copy would give, without a second model in memory. For the tiny model
that is its starting weights; for a LoRA job the base with the new adapter at zero (what disabling
it gives), or, starting from an `ft:` adapter, that fine-tuned model.

A plain PyTorch loop: shuffle, pad, one forward per batch for both answers, AdamW, linear warmup
and decay, metrics events, a checkpoint per epoch; the schedule, the cancel/serve-alive checks and
checkpoints are train_worker's. Imports torch only inside functions.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path

from synth_qwen import qwen_format, sft_format
from synth_qwen.train_worker import (DIVERGED_HINT, LOGS_PER_RUN, LORA_ALPHA_PER_RANK, TRAINING_DEFAULTS, Checks,
                                     Diverged, NothingToTrain, Reporter, StepMetrics, TrainingSpec, WorkerMetrics,
                                     WorkerResult, learning_rate_at, linear_layer_names, load_base, read_jsonl,
                                     resolve_device, save_checkpoint)

DEFAULT_BETA = 0.1  # beta="auto" (OpenAI's and TRL's default)
# Learning rates per base-model kind (x learning_rate_multiplier): a tenth of SFT's, since DPO
# starts from a model that already answers and only reorders its answers.
LEARNING_RATES = {"tiny": 1e-4, "hf": 2e-5}
MAX_GRAD_NORM = 1.0


def resolve_beta(beta: float | str | None) -> float:
    return DEFAULT_BETA if beta in (None, "auto") else float(beta)


# ---------------------------------------------------------------------------------------
# Pairs -> token ids

@dataclass
class EncodedPair:
    chosen: dict  # input_ids + labels (qwen_format.encode_example)
    rejected: dict

    @property
    def tokens(self) -> int:
        return len(self.chosen["input_ids"]) + len(self.rejected["input_ids"])

    @property
    def trainable(self) -> bool:
        """Both answers keep a token within SERVE_MAX_SEQ_LEN (else nothing is compared)."""
        return all(any(label != -100 for label in side["labels"]) for side in (self.chosen, self.rejected))


def encode_pairs(tokenizer, template: str, lines: list[dict], max_length: int) -> list[EncodedPair]:
    return [EncodedPair(*(qwen_format.encode_example(tokenizer, template, example, max_length)
                          for example in sft_format.preference_pair(line))) for line in lines]


def collate(pairs: list[EncodedPair], pad_id: int):
    """One right-padded batch: the chosen answers' rows, then the rejected ones'."""
    import torch

    rows = [pair.chosen for pair in pairs] + [pair.rejected for pair in pairs]
    width = max(len(row["input_ids"]) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        length = len(row["input_ids"])
        input_ids[index, :length] = torch.tensor(row["input_ids"])
        labels[index, :length] = torch.tensor(row["labels"])
        attention[index, :length] = 1
    return input_ids, labels, attention


# ---------------------------------------------------------------------------------------
# The maths

def sequence_logps(model, input_ids, labels, attention):
    """Sum of log p(label token | the tokens before it) per row. Logits are computed only where some
    row has a label next (the answers: a few dozen positions of a long prompt), not over the whole
    sequence x vocabulary."""
    import torch

    targets = labels[:, 1:]
    positions = (targets != -100).any(dim=0).nonzero().squeeze(1)
    logits = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=positions, use_cache=False).logits
    targets = targets[:, positions]
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logps * (targets != -100)).sum(dim=1)


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float):
    """(mean loss, chosen rewards, rejected rewards) from per-pair sequence log-probabilities."""
    import torch.nn.functional as F

    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def batches(count: int, batch_size: int, generator=None) -> list[list[int]]:
    """Indices in batches; shuffled when a generator is given."""
    import torch

    order = torch.randperm(count, generator=generator).tolist() if generator is not None else list(range(count))
    return [order[start:start + batch_size] for start in range(0, count, batch_size)]


def pair_logps(model, pairs: list[EncodedPair], pad_id: int, device: str):
    """(chosen, rejected) sequence log-probabilities of a batch of pairs."""
    input_ids, labels, attention = (tensor.to(device) for tensor in collate(pairs, pad_id))
    logps = sequence_logps(model, input_ids, labels, attention)
    return logps[:len(pairs)], logps[len(pairs):]


def reference_logps(model, pairs: list[EncodedPair], batch_size: int, pad_id: int, device: str):
    """(N, 2) log-probabilities of every pair's answers under the model as it is now."""
    import torch

    model.eval()
    scores = torch.zeros((len(pairs), 2))
    with torch.no_grad():
        for indices in batches(len(pairs), batch_size):
            chosen, rejected = pair_logps(model, [pairs[i] for i in indices], pad_id, device)
            scores[indices] = torch.stack([chosen, rejected], dim=1).float().cpu()
    return scores


def evaluate(model, pairs, reference, beta: float, batch_size: int, pad_id: int, device: str) -> tuple[float, float]:
    """(loss, reward accuracy) on held-out pairs."""
    import torch

    model.eval()
    losses, correct = [], 0
    with torch.no_grad():
        for indices in batches(len(pairs), batch_size):
            chosen, rejected = pair_logps(model, [pairs[i] for i in indices], pad_id, device)
            ref = reference[indices].to(device)
            loss, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta)
            losses.append(float(loss) * len(indices))
            correct += int((chosen_rewards > rejected_rewards).sum())
    return sum(losses) / len(pairs), correct / len(pairs)


# ---------------------------------------------------------------------------------------
# The job

def with_new_adapter(model, spec: TrainingSpec):
    """A LoRA job from a base model trains a new adapter on every linear layer (as SFT's does)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.lora_rank, lora_alpha=LORA_ALPHA_PER_RANK * spec.lora_rank,
                        target_modules=linear_layer_names(model), lora_dropout=0.05, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def load_pairs(spec: TrainingSpec, path: str, tokenizer, template: str, reporter: Reporter, label: str):
    pairs = encode_pairs(tokenizer, template, read_jsonl(path), spec.max_seq_len)
    kept = [pair for pair in pairs if pair.trainable]
    dropped = len(pairs) - len(kept)
    reporter.event(f"Tokenized {len(pairs)} {label} preference pairs ({sum(p.tokens for p in pairs):,} tokens"
                   + (f"; {dropped} dropped: an answer was truncated away at {spec.max_seq_len} tokens"
                      if dropped else "") + ")", level="warn" if dropped else "info")
    return kept


def train(spec: TrainingSpec, job_dir: Path, reporter: Reporter) -> None:
    import torch

    model, tokenizer, template = load_base(spec, reporter)
    kind = spec.base.kind
    defaults = TRAINING_DEFAULTS[kind]
    lora = defaults["method"] == "lora"
    if lora and not spec.base.init_adapter:
        model = with_new_adapter(model, spec)
    hyper, beta = spec.hyperparameters, spec.beta
    pairs = load_pairs(spec, spec.training_file, tokenizer, template, reporter, "training")
    if not pairs:
        raise NothingToTrain(f"no preference pair keeps both answers within {spec.max_seq_len} tokens "
                             "(SERVE_MAX_SEQ_LEN): every answer was truncated away")
    held_out = load_pairs(spec, spec.validation_file, tokenizer, template, reporter, "validation") \
        if spec.validation_file else []
    device = resolve_device(spec.device)
    torch.manual_seed(spec.seed)
    model.to(device)
    if defaults["gradient_checkpointing"] and device != "cpu":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda" and torch.cuda.is_bf16_supported())
    pad_id = tokenizer.pad_token_id
    with autocast:
        reference = reference_logps(model, pairs, hyper.batch_size, pad_id, device)
        held_out_reference = reference_logps(model, held_out, hyper.batch_size, pad_id, device) if held_out else None

    steps_per_epoch = -(-len(pairs) // hyper.batch_size)
    total_steps = steps_per_epoch * hyper.n_epochs
    parameters = [weights for weights in model.parameters() if weights.requires_grad]
    peak = LEARNING_RATES[kind] * hyper.learning_rate_multiplier
    warmup = max(1, math.ceil(total_steps * defaults["warmup_steps"]))
    optimizer = torch.optim.AdamW(parameters, lr=peak, weight_decay=defaults["weight_decay"])
    reporter.event(f"Training (DPO, beta {beta:g}): {hyper.n_epochs} epochs x {steps_per_epoch} steps, batch "
                   f"{hyper.batch_size} pairs, {'LoRA r=' + str(spec.lora_rank) if lora else 'full fine-tune'}, "
                   f"device {device}; reference: the starting model")

    metrics_path = job_dir / "metrics.csv"
    with open(metrics_path, "w", newline="") as handle:
        csv.writer(handle).writerow(StepMetrics.model_fields)
    log_every = max(1, total_steps // LOGS_PER_RUN)
    checks = Checks(job_dir)
    generator = torch.Generator().manual_seed(spec.seed)
    started = time.time()
    first_step = last_step = None  # (time, tokens) after the first and the latest step
    window, last_metrics, step, tokens_seen = [], None, 0, 0
    for epoch in range(hyper.n_epochs):
        for indices in batches(len(pairs), hyper.batch_size, generator):
            model.train()
            batch = [pairs[i] for i in indices]
            ref = reference[indices].to(device)
            with autocast:
                chosen, rejected = pair_logps(model, batch, pad_id, device)
            loss, chosen_rewards, rejected_rewards = dpo_loss(chosen.float(), rejected.float(), ref[:, 0], ref[:, 1], beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM))
            learning_rate = learning_rate_at(step, total_steps, warmup, peak)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            optimizer.step()
            step += 1
            tokens_seen += sum(pair.tokens for pair in batch)
            last_step = (time.perf_counter(), tokens_seen)
            first_step = first_step or last_step
            window.append((float(loss), (chosen_rewards > rejected_rewards).float().mean().item(),
                           (chosen_rewards - rejected_rewards).mean().item(), len(batch)))
            if not (math.isfinite(window[-1][0]) and math.isfinite(grad_norm)):
                problem = "loss" if not math.isfinite(window[-1][0]) else "gradient norm"
                raise Diverged(f"the training {problem} became {window[-1][0] if problem == 'loss' else grad_norm} "
                               f"at step {step}; {DIVERGED_HINT}")
            if step % log_every == 0 or step == total_steps:
                last_metrics = log_window(window, step, step / steps_per_epoch, learning_rate, started,
                                          total_steps, metrics_path, reporter)
                window = []
            if checks.cancelled():  # serve has marked the job cancelled: stop, publish nothing
                return
        save_checkpoint(model, tokenizer, job_dir, step, last_metrics, reporter)
        if held_out:
            with autocast:
                loss, accuracy = evaluate(model, held_out, held_out_reference, beta, hyper.batch_size, pad_id, device)
            reporter.event(f"Validation after epoch {epoch + 1}: loss {loss:.4f}, reward accuracy {accuracy:.3f} "
                           f"({len(held_out)} pairs)")
    seconds = time.time() - started
    output_dir = Path(spec.output_dir)
    model.save_pretrained(output_dir)  # a LoRA job: the adapter (PEFT's layout); else the full weights
    tokenizer.save_pretrained(output_dir)
    steady = (last_step[1] - first_step[1]) / (last_step[0] - first_step[0]) if last_step[0] > first_step[0] else 0
    reporter.send(WorkerResult(trained_tokens=tokens_seen, output_dir=str(output_dir), metrics_csv=str(metrics_path),
                               train_seconds=round(seconds, 2),
                               tokens_per_second=round(tokens_seen / max(seconds, 1e-9), 1),
                               steady_tokens_per_second=round(steady, 1), adapter=lora))


def log_window(window: list, step: int, epoch: float, learning_rate: float, started: float, total_steps: int,
               metrics_path: Path, reporter: Reporter) -> StepMetrics:
    """The steps since the last log, averaged per pair: one metrics.csv row and one metrics event."""
    pairs = sum(size for *_, size in window)
    loss, accuracy, margin = (sum(values[k] * values[3] for values in window) / pairs for k in range(3))
    row = StepMetrics(step=step, epoch=round(epoch, 3), train_loss=loss, learning_rate=learning_rate,
                      elapsed_s=round(time.time() - started, 2), reward_accuracy=accuracy, reward_margin=margin)
    with open(metrics_path, "a", newline="") as handle:
        csv.writer(handle).writerow(row.model_dump().values())
    reporter.send(WorkerMetrics(data=row, total_steps=total_steps))
    return row
