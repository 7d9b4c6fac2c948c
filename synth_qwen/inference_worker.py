"""Inference subprocess of `serve`: `python -m synth_qwen.inference_worker`.

Holds models (a few, least recently used evicted) and answers chat requests read as JSON lines on
stdin (a `ChatRequest` each) with JSON lines on stdout (a `ChatAnswer` or a `ChatFailure`).
Concurrent requests for the same model decode together (continuous batching, see `Batch`), so
many concurrent episodes cost little more than one; each answer is written as soon as its row
stops. When the request offers tools, Qwen's `<tool_call>` output becomes OpenAI tool calls as
vLLM's hermes parser makes them (qwen_format); output that does not parse stays plain content.
torch is imported only when the worker runs; serve imports just the request and answer records.
"""
from __future__ import annotations

import os
import queue
import secrets
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter

from synth_qwen import cpu_compute, qwen_format
from synth_qwen.serve_store import ModelSpec

DEFAULT_MAX_TOKENS = 512
PREFIX_PROMPTS = 64  # prompts remembered at most (each new prompt is compared with all of them)
RELEASED = "inference worker: released"  # its log line when serve asks it to free its models


class ChatRequest(BaseModel):
    """A chat completion for the worker, checked by serve (OpenAI's request fields it honours)."""
    id: int = 0  # serve numbers each request it sends; the answer carries the number back
    model: ModelSpec
    messages: list[dict]
    tools: list | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None


class ReleaseModels(BaseModel):
    """serve's word that a training job starts: free every loaded model (they reload on the next chat),
    so the two workers do not hold a big base model at once."""
    type: Literal["release"] = "release"


WORKER_REQUEST = TypeAdapter(ReleaseModels | ChatRequest)  # one line of the worker's stdin


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatAnswer(BaseModel):
    id: int
    message: dict  # OpenAI's assistant message: role, content and tool_calls if any
    finish_reason: str
    usage: Usage


class ChatFailure(BaseModel):
    id: int
    error: str


WORKER_ANSWER = TypeAdapter(ChatAnswer | ChatFailure)  # WORKER_ANSWER.validate_json(line) in serve


# ---------------------------------------------------------------------------------------
# The worker process

SMALL_MODEL_PARAMS = 100_000_000  # below this, CPU decoding runs on one torch thread


def limit_cpu_threads(model, device: str) -> None:
    """One torch thread to decode a small model on CPU: its ops are too short to split, and two
    OpenMP threads wait on each other's time slices (measured on 2 busy cores, tiny model: a decode
    step 250 ms -> 3 ms). Training keeps all threads: its batched steps are big enough to split
    (tiny model, 8 x 650 tokens on 2 idle cores: 1.6 s/step on one thread, 0.8 s on two)."""
    import torch

    if device == "cpu" and model.num_parameters() < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    stop_ids: list[int]
    prefix_cache: "PrefixCache" = field(default_factory=lambda: PrefixCache(0))  # Batch's: recent prompts


class Models:
    """model key -> LoadedModel, least recently used evicted beyond `capacity`."""

    def __init__(self, capacity: int, device: str, prefix_cache_mb: int = 0):
        self.capacity, self.device, self.loaded = capacity, device, OrderedDict()
        self.prefix_cache_bytes = prefix_cache_mb << 20

    def get(self, spec: ModelSpec) -> LoadedModel:
        key = spec.key
        if key in self.loaded:
            self.loaded.move_to_end(key)
            return self.loaded[key]
        while len(self.loaded) >= self.capacity:
            self.loaded.popitem(last=False)
            collect_garbage(self.device)  # before the next load: never two big models at once
        self.loaded[key] = self.load(spec)
        return self.loaded[key]

    def release(self) -> None:
        """Forget every model; a running batch keeps its own until it ends."""
        count = len(self.loaded)
        self.loaded.clear()
        collect_garbage(self.device)
        print(f"{RELEASED} {count} models (a training job started)", file=sys.stderr, flush=True)

    def load(self, spec: ModelSpec) -> LoadedModel:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from synth_qwen import tiny_model

        local_only = not spec.allow_download
        dtype = torch.bfloat16 if self.device == "cuda" else "auto"  # on CPU as saved: a bf16 4B never in fp32
        base = spec.base or spec
        base_path = tiny_model.local_path(base)
        model_path = spec.path if spec.path and spec.kind != "tiny" else base_path
        if spec.adapter:
            from peft import PeftModel

            model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, local_files_only=local_only)
            model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=local_only)
        model.to(self.device).eval()
        if self.device == "cpu":
            from synth_qwen import kv_slots

            cpu_compute.fp32_matmuls(model)
            model.set_attn_implementation(kv_slots.CASCADE)  # decode reads the shared system prompt once
        stop_ids = {tokenizer.convert_tokens_to_ids(token) for token in qwen_format.STOP_TOKENS} | {tokenizer.eos_token_id}
        stop_ids.discard(None)
        stop_ids.discard(tokenizer.unk_token_id)
        limit_cpu_threads(model, self.device)
        return LoadedModel(model, tokenizer, sorted(stop_ids), PrefixCache(self.prefix_cache_bytes))


def prompt_ids(tokenizer, request: ChatRequest) -> list[int]:
    return qwen_format.prompt_ids(tokenizer, request.messages, request.tools)


def generate_batch(model, tokenizer, stop_ids: list[int], requests: list[ChatRequest], device: str) -> list[ChatAnswer]:
    """Answers to `requests` decoded together, in request order (the worker streams them instead)."""
    batch, answers = Batch(model, tokenizer, stop_ids, device=device), {}
    for request in requests:
        batch.add(request)
    while batch.rows:
        answers.update((answer.id, answer) for answer in batch.step())
    return [answers[request.id] for request in requests]


class Batch:
    """Requests for one model decoding together, one token per step.

    Each prompt is prefilled alone (no padding; only the last position's logits), reusing the
    key/values of the longest prefix it shares with a recent prompt (`PrefixCache`): Crafter turns
    share the system prompt and tools, and a full-history turn extends its conversation's last one.
    Its key/values then go into a free slot of the batch's cache (kv_slots), also between steps, so
    a request never waits for a running batch to finish and nobody else's cache is copied. A row leaves the batch the step it stops, so nobody
    pays for a longer neighbour.
    """

    def __init__(self, model, tokenizer, stop_ids: list[int], prefix: "PrefixCache | None" = None, device: str = "cpu"):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.stop_set = set(stop_ids)
        self.prefix = prefix if prefix is not None else PrefixCache(0)
        self.rows: dict[int, dict] = {}  # slot -> the request decoding there
        self.slots = None  # kv_slots.Slots, made with the first row
        self.pad_id = tokenizer.pad_token_id or 0
        from synth_qwen import kv_slots

        self.cascade = getattr(model.config, "_attn_implementation", None) == kv_slots.CASCADE
        self.message_end = tokenizer.convert_tokens_to_ids(qwen_format.IM_END)  # ends the first message

    def add(self, request: ChatRequest) -> None:
        import torch
        from transformers import DynamicCache

        from synth_qwen import kv_slots

        ids = prompt_ids(self.tokenizer, request)
        shared, known = self.prefix.longest(ids)
        shared = min(shared, len(ids) - 1)  # >= 1 token to run
        cache = DynamicCache([(k[:, :, :shared], v[:, :, :shared]) for k, v in known] if shared else None)
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids[shared:]], device=self.device), cache=cache,
                             position_ids=torch.arange(shared, len(ids), device=self.device)[None],
                             use_cache=True, logits_to_keep=1)
        layers = [(k, v) for k, v, _ in out.cache]
        self.prefix.add(ids, layers)
        self.slots = self.slots or kv_slots.Slots(layers)
        slot = next(index for index in range(len(self.rows) + 1) if index not in self.rows)
        first = ids[:ids.index(self.message_end) + 1] if self.cascade and self.message_end in ids[:-1] else []
        self.slots.place(slot, layers, tuple(first))
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        temperature, top_p = request.temperature, request.top_p
        self.rows[slot] = {"request": request, "prompt_tokens": len(ids), "tokens": [], "stopped": False,
                           "limit": request.max_tokens or DEFAULT_MAX_TOKENS, "position": len(ids),
                           "temperature": float(1.0 if temperature is None else temperature),
                           "top_p": float(1.0 if top_p is None else top_p),
                           "generator": torch.Generator().manual_seed(seed), "logits": out.logits[0, -1].float().cpu()}

    def step(self) -> list[ChatAnswer]:
        """Pick each row's next token; returns the answers of rows that finished, then runs the rest."""
        import torch

        done, next_tokens = [], {}
        for slot, row in list(self.rows.items()):
            token = pick_token(row["logits"], row["temperature"], row["top_p"], row["generator"])
            if token in self.stop_set:
                row["stopped"] = True
            else:
                row["tokens"].append(token)
            if row["stopped"] or len(row["tokens"]) >= row["limit"]:
                done.append(self.answer(row))
                del self.rows[slot]
                self.slots.free(slot)
            else:
                next_tokens[slot] = token
        if not self.rows:
            return done
        cache = self.slots.step_cache()
        slots = range(self.slots.rows)  # free slots below a live one decode a pad token: cheaper than moving rows
        attention = {"slots": self.slots} if self.cascade else {"attention_mask": self.slots.step_mask()}
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([[next_tokens.get(slot, self.pad_id)] for slot in slots], device=self.device),
                position_ids=torch.tensor([[self.rows[slot]["position"] if slot in self.rows else 0] for slot in slots],
                                          device=self.device),
                cache=cache, use_cache=True, **attention)
        self.slots.advance()
        logits = out.logits[:, -1].float().cpu()
        for slot, row in self.rows.items():
            row["position"] += 1
            row["logits"] = logits[slot]
        return done

    def answer(self, row: dict) -> ChatAnswer:
        text = self.tokenizer.decode(row["tokens"], skip_special_tokens=True)
        message, finish_reason = qwen_format.assistant_message(text, "stop" if row["stopped"] else "length",
                                                               row["request"].tools)
        prompt, completion = row["prompt_tokens"], len(row["tokens"]) + row["stopped"]
        return ChatAnswer(id=row["request"].id, message=message, finish_reason=finish_reason,
                          usage=Usage(prompt_tokens=prompt, completion_tokens=completion,
                                      total_tokens=prompt + completion))

class PrefixCache:
    """The key/values of recent prompts, within `max_bytes` (the newest is always kept, so 0 keeps
    just the last prompt), least recently used dropped first. With several conversations at once the
    last prompt is mostly another conversation's: each turn would prefill all but the system prompt
    and tools again, where its own conversation's last prompt may share nearly all of it."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.prompts: OrderedDict[tuple, tuple[list, int]] = OrderedDict()  # ids -> (layers, bytes)

    def longest(self, ids: list[int]) -> tuple[int, list]:
        """How many leading tokens of `ids` a remembered prompt shares, at most, and its key/values."""
        best, best_ids = 0, None
        for known in self.prompts:
            shared = common_prefix(ids, known)
            if shared > best:
                best, best_ids = shared, known
        if best_ids is None:
            return 0, []
        self.prompts.move_to_end(best_ids)
        return best, self.prompts[best_ids][0]

    def add(self, ids: list[int], layers: list[tuple]) -> None:
        key = tuple(ids)
        for known in [k for k in self.prompts if key[:len(k)] == k]:  # this prompt covers them
            del self.prompts[known]
        self.prompts[key] = (layers, sum(t.nelement() * t.element_size() for pair in layers for t in pair))
        while len(self.prompts) > 1 and (len(self.prompts) > PREFIX_PROMPTS or
                                         sum(size for _, size in self.prompts.values()) > self.max_bytes):
            self.prompts.popitem(last=False)


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pick_token(logits, temperature: float, top_p: float, generator) -> int:
    import torch

    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def collect_garbage(device: str) -> None:
    import gc

    gc.collect()  # a model caught in reference cycles is freed only by the collector
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def read_requests(inbox: queue.Queue) -> None:
    for line in sys.stdin:
        if line.strip():
            inbox.put(WORKER_REQUEST.validate_json(line))
    inbox.put(None)  # serve closed the pipe


def serve_requests(inbox: queue.Queue, models: "Models", max_batch: int, device: str, send) -> None:
    """Continuous batching: between decode steps, queued requests for the running model join it.

    Requests for another model wait until the running batch drains; joining stops at the first
    of them, so models are served in arrival order.
    """
    waiting, batch = [], None

    def take(message) -> None:
        if isinstance(message, ReleaseModels):
            models.release()
        else:
            waiting.append(message)

    while True:
        if not waiting and batch is None:  # idle: block for the next request
            take(inbox.get())
        while not inbox.empty():
            take(inbox.get())
        if not waiting and batch is None:
            continue
        if None in waiting:  # serve closed the pipe: nobody is left to answer
            return
        if batch is None:
            key = waiting[0].model.key
            try:
                loaded = models.get(waiting[0].model)
                batch = Batch(loaded.model, loaded.tokenizer, loaded.stop_ids, loaded.prefix_cache, device=device)
            except Exception as error:  # a bad model dir: tell each caller, keep serving
                fail([request for request in waiting if request.model.key == key], error, send)
                waiting = [request for request in waiting if request.model.key != key]
                continue
        while waiting and waiting[0].model.key == key and len(batch.rows) < max_batch:
            request = waiting.pop(0)
            try:
                batch.add(request)
            except Exception as error:  # e.g. a template that rejects these messages
                fail([request], error, send)
        try:
            for answer in batch.step() if batch.rows else []:
                send(answer)
        except Exception as error:
            fail([row["request"] for row in batch.rows.values()], error, send)
            batch.rows = {}
        if not batch.rows:
            batch = None


def fail(requests: list[ChatRequest], error: Exception, send) -> None:
    import traceback

    traceback.print_exc()
    for request in requests:
        send(ChatFailure(id=request.id, error=f"{type(error).__name__}: {error}"))


def main() -> None:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter to stderr; stdout carries only answers
    from synth_qwen.train_worker import resolve_device

    device, max_batch, capacity, prefix_cache_mb = resolve_device(sys.argv[1]), *map(int, sys.argv[2:5])
    inbox = queue.Queue()
    threading.Thread(target=read_requests, args=(inbox,), daemon=True).start()
    serve_requests(inbox, Models(capacity, device, prefix_cache_mb), max_batch, device,
                   lambda answer: out.write(answer.model_dump_json() + "\n"))


if __name__ == "__main__":
    main()
