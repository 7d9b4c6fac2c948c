"""Inference subprocess of `serve`: `python -m synth_qwen.inference_worker`.

Holds models (a few, least recently used evicted) and answers chat requests read as JSON lines on
stdin with JSON lines on stdout ({"id", "message", "finish_reason", "usage"} or {"id", "error"}).
Requests that arrive together for the same model are decoded as one left-padded batch, so many
concurrent episodes cost little more than one. Qwen's `<tool_call>` output is parsed into OpenAI
tool calls here; output that does not parse stays plain content (never an error).
torch is imported only in the worker's main(); serve imports nothing from here but the parser.
"""
from __future__ import annotations

import json
import os
import queue
import re
import secrets
import sys
import threading
import time
from collections import OrderedDict

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
GATHER_WINDOW_S = 0.01  # after the first request, wait this long for its concurrent siblings
DEFAULT_MAX_TOKENS = 512
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """(content, tool_calls) from Qwen output; any malformed call -> the whole text as content."""
    blocks = TOOL_CALL.findall(text)
    if not blocks:
        return text.strip() or None, []
    calls = []
    for block in blocks:
        try:
            call = json.loads(block)
        except ValueError:
            return text.strip() or None, []
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or \
                not isinstance(call.get("arguments", {}), dict):
            return text.strip() or None, []
        calls.append({"id": f"call_{secrets.token_hex(12)}", "type": "function",
                      "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))}})
    content = TOOL_CALL.sub("", text).strip()
    return content or None, calls


def chat_message(text: str, finish_reason: str) -> tuple[dict, str]:
    content, calls = parse_tool_calls(text)
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
        finish_reason = "tool_calls"
    return message, finish_reason


# ---------------------------------------------------------------------------------------
# The worker process

class Models:
    """model key -> (model, tokenizer), least recently used evicted beyond `capacity`."""

    def __init__(self, capacity: int, device: str):
        self.capacity, self.device, self.loaded = capacity, device, OrderedDict()

    def get(self, spec: dict):
        key = spec["key"]
        if key in self.loaded:
            self.loaded.move_to_end(key)
            return self.loaded[key]
        while len(self.loaded) >= self.capacity:
            self.loaded.popitem(last=False)
        self.loaded[key] = self.load(spec)
        return self.loaded[key]

    def load(self, spec: dict):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        local_only = not spec.get("allow_download", False)
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        base = spec.get("base") or spec
        base_path = base.get("path")
        if base["kind"] == "tiny":
            from synth_qwen import tiny_model

            base_path = str(tiny_model.ensure(base["data_dir"], base["size"]))
        model_path = spec["path"] if spec.get("path") and spec["kind"] != "tiny" else base_path
        if spec.get("adapter"):
            from peft import PeftModel

            model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, local_files_only=local_only)
            model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=local_only)
        model.to(self.device).eval()
        stop_ids = {tokenizer.convert_tokens_to_ids(token) for token in STOP_TOKENS} | {tokenizer.eos_token_id}
        stop_ids.discard(None)
        stop_ids.discard(tokenizer.unk_token_id)
        return model, tokenizer, sorted(stop_ids)


def prompt_ids(tokenizer, request: dict) -> list[int]:
    from synth_qwen.train_worker import chat_messages

    return list(tokenizer.apply_chat_template(
        chat_messages(request["messages"]), tools=request.get("tools") or None,
        add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


def generate_batch(model, tokenizer, stop_ids: list[int], requests: list[dict], device: str) -> list[dict]:
    """Left-padded batched decoding with per-request temperature, max_tokens and seed."""
    import torch

    prompts = [prompt_ids(tokenizer, request) for request in requests]
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    limits = [request.get("max_tokens") or DEFAULT_MAX_TOKENS for request in requests]
    temperatures = [float(request.get("temperature") if request.get("temperature") is not None else 1.0)
                    for request in requests]
    top_ps = [float(request.get("top_p") if request.get("top_p") is not None else 1.0) for request in requests]
    generators = [torch.Generator().manual_seed(request["seed"] if request.get("seed") is not None
                                                 else secrets.randbits(63)) for request in requests]
    outputs = [[] for _ in requests]
    finished = [False] * len(requests)
    stopped = [False] * len(requests)
    stop_set = set(stop_ids)
    with torch.inference_mode():
        result = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        for step in range(max(limits)):
            logits = result.logits[:, -1, :].float().cpu()
            next_tokens = []
            for row in range(len(requests)):
                if finished[row]:
                    next_tokens.append(pad)
                    continue
                token = pick_token(logits[row], temperatures[row], top_ps[row], generators[row])
                next_tokens.append(token)
                if token in stop_set:
                    finished[row] = stopped[row] = True
                else:
                    outputs[row].append(token)
                    finished[row] = len(outputs[row]) >= limits[row]
            if all(finished):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            result = model(input_ids=torch.tensor(next_tokens, device=device)[:, None], attention_mask=mask,
                           position_ids=positions, cache=result.cache, use_cache=True)
    answers = []
    for row, request in enumerate(requests):
        text = tokenizer.decode(outputs[row], skip_special_tokens=True)
        message, finish_reason = chat_message(text, "stop" if stopped[row] else "length")
        completion_tokens = len(outputs[row]) + stopped[row]
        answers.append({"id": request["id"], "message": message, "finish_reason": finish_reason,
                        "usage": {"prompt_tokens": len(prompts[row]), "completion_tokens": completion_tokens,
                                  "total_tokens": len(prompts[row]) + completion_tokens}})
    return answers


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


def read_requests(inbox: queue.Queue) -> None:
    for line in sys.stdin:
        if line.strip():
            inbox.put(json.loads(line))
    inbox.put(None)  # serve closed the pipe


def next_batch(inbox: queue.Queue, waiting: list[dict], max_batch: int) -> list[dict] | None:
    """The oldest request plus every queued one for the same model (up to max_batch)."""
    if not waiting:
        first = inbox.get()
        if first is None:
            return None
        waiting.append(first)
        time.sleep(GATHER_WINDOW_S)
    while True:
        try:
            request = inbox.get_nowait()
        except queue.Empty:
            break
        if request is None:
            return None
        waiting.append(request)
    key = waiting[0]["model"]["key"]
    batch = [request for request in waiting if request["model"]["key"] == key][:max_batch]
    for request in batch:
        waiting.remove(request)
    return batch


def main() -> None:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter to stderr; stdout carries only answers
    from synth_qwen.train_worker import resolve_device

    device, max_batch, capacity = resolve_device(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    models = Models(capacity, device)
    inbox, waiting = queue.Queue(), []
    threading.Thread(target=read_requests, args=(inbox,), daemon=True).start()
    while (batch := next_batch(inbox, waiting, max_batch)) is not None:
        try:
            model, tokenizer, stop_ids = models.get(batch[0]["model"])
            answers = generate_batch(model, tokenizer, stop_ids, batch, device)
        except Exception as error:  # a bad model dir or template: tell each caller, keep serving
            import traceback

            traceback.print_exc()
            answers = [{"id": request["id"], "error": f"{type(error).__name__}: {error}"} for request in batch]
        for answer in answers:
            out.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
