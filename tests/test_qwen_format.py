"""The Qwen chat format (synth_qwen.qwen_format) on the Qwen3-shaped model's real tokenizer:
training tokens, inference prompts and filter_traces' counts agree token for token on examples
that the real runner and filter_traces exported; tool calls parse as vLLM's hermes parser does."""
import json

import pytest

from rollout_helpers import rollout_env, run_module
from synth_qwen import filter_traces, qwen_format, tiny_model

OPEN = ["--min-total-reward", "-1000", "--max-cost", "none", "--max-tokens", "none"]


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return tiny_model.ensure_qwen3_shaped(tmp_path_factory.mktemp("qwen3"))


@pytest.fixture(scope="module")
def tokenizer(qwen3_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3_dir)


def edge_examples() -> list[dict]:
    """Template branches the Crafter traces do not reach: developer role, content parts, text next
    to two calls, consecutive tool answers, a weight-0 text reply, non-ASCII and decomposed text."""
    call = lambda i, args: {"id": f"c{i}", "type": "function", "function": {"name": "interact", "arguments": args}}
    tools = [{"type": "function", "function": {"name": "interact", "description": "Act in Crafter: café",
                                               "parameters": {"type": "object", "properties": {}}}}]
    return [
        {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be brief. "}, {"type": "text", "text": "Ünïcode"}]},
                      {"role": "user", "content": "Cafe\u0301 — 中文 😀 12345"},
                      {"role": "assistant", "content": "Two moves.", "tool_calls": [call(1, '{"actions": ["noop"]}'),
                                                                                      call(2, '{"actions": ["do"]}')]},
                      {"role": "tool", "tool_call_id": "c1", "content": "done"},
                      {"role": "tool", "tool_call_id": "c2", "content": "done\n  twice"},
                      {"role": "assistant", "content": "thinking aloud", "weight": 0},
                      {"role": "user", "content": "again"},
                      {"role": "assistant", "content": "", "tool_calls": [call(3, '{"actions": []}')]}],
         "tools": tools},
        {"messages": [{"role": "user", "content": "no system, no tools"}, {"role": "assistant", "content": "ok"}]},
    ]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> list[dict]:
    """Per-turn and whole-episode examples, as filter_traces exports them from the expert's real play."""
    work = tmp_path_factory.mktemp("exported")
    done = run_module("synth_qwen.run_crafter", rollout_env(work, crafter_model="builtin:expert", crafter_episodes=2,
                                                            crafter_max_steps=6, crafter_history=6), work)
    assert done.returncode == 0, done.stderr
    examples = []
    for mode in ("turn", "episode"):
        out = work / f"{mode}.jsonl"
        assert filter_traces.main(["-d", str(work / "traces.db"), "-o", str(out), "--mode", mode, *OPEN]) == 0
        examples += [json.loads(line) for line in out.read_text().splitlines()]
    assert any(m["role"] == "tool" for e in examples for m in e["messages"])  # history with tool answers
    return examples + edge_examples()


def test_added_tokens_sit_at_qwen3_ids(qwen3_dir, tokenizer):
    from transformers import AutoConfig

    assert len(tokenizer) == 151669 and AutoConfig.from_pretrained(qwen3_dir).vocab_size == qwen_format.QWEN3_VOCAB_SIZE
    for id_, (token, special) in qwen_format.QWEN3_ADDED_TOKENS.items():
        assert tokenizer.convert_tokens_to_ids(token) == id_
        assert tokenizer.decode([id_], skip_special_tokens=True) == ("" if special else token)
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert tokenizer.chat_template == qwen_format.chat_template("inference")


def test_tiktoken_counts_and_hf_tokenizer_agree_token_for_token(exported, tokenizer):
    encoding = qwen_format.tiktoken_encoding()
    for example in exported:
        text = qwen_format.render(example["messages"], example.get("tools"))
        assert qwen_format.encode_text(encoding, text) == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_filter_counts_equal_the_real_templates_tokens(exported, tokenizer):
    """filter_traces' cap counts exactly what training feeds the model (and what inference reads)."""
    counter = filter_traces.TokenCounter()
    template = qwen_format.training_template(tokenizer)
    for example in exported:
        trained = qwen_format.encode_example(tokenizer, template, example, max_length=10**6)["input_ids"]
        rendered = tokenizer.apply_chat_template(qwen_format.chat_messages(example["messages"]),
                                                 tools=example.get("tools"), tokenize=True, return_dict=True)
        assert counter.qwen(example) == len(trained) == len(rendered["input_ids"])
        assert trained == list(rendered["input_ids"])


def test_training_prompt_is_the_inference_prompt(exported, tokenizer):
    """The tokens before the last reply in training are the tokens serve prompts with, and the
    reply's tokens follow them directly."""
    template = qwen_format.training_template(tokenizer)
    for example in exported:
        messages = example["messages"]
        row = qwen_format.encode_example(tokenizer, template, example, max_length=10**6)
        prompt = qwen_format.prompt_ids(tokenizer, messages[:-1], example.get("tools"))
        assert row["input_ids"][:len(prompt)] == prompt
        reply = tokenizer.decode(row["input_ids"][len(prompt):])
        assert reply.endswith("<|im_end|>\n") and (messages[-1]["content"] or "") in reply


def test_labels_cover_exactly_the_weighted_assistant_spans(exported, tokenizer):
    """Expected spans derived without the generation markers: assistant message i spans from the end of
    the prompt for it (messages before it + generation prompt) to the end of the conversation up to it."""
    template = qwen_format.training_template(tokenizer)
    for example in exported:
        messages, tools = example["messages"], example.get("tools")
        row = qwen_format.encode_example(tokenizer, template, example, max_length=10**6)
        expected = [-100] * len(row["input_ids"])
        for index, message in enumerate(messages):
            if message["role"] == "assistant" and message.get("weight", 1):
                start = len(qwen_format.prompt_ids(tokenizer, messages[:index], tools))
                end = len(tokenizer.encode(qwen_format.render(messages[:index + 1], tools), add_special_tokens=False))
                expected[start:end] = row["input_ids"][start:end]
        assert row["labels"] == expected
        assert any(label != -100 for label in row["labels"])


def test_tiny_model_reads_the_same_format(tmp_path):
    """The tiny model's tokenizer carries the same template and chat tokens (its own BPE aside)."""
    from transformers import AutoTokenizer

    tiny = AutoTokenizer.from_pretrained(tiny_model.ensure(tmp_path, "micro"))
    assert tiny.chat_template == qwen_format.chat_template("inference")
    assert qwen_format.training_template(tiny) == qwen_format.chat_template("training")
    for token in qwen_format.CHAT_SPECIAL_TOKENS + qwen_format.CHAT_MARKER_TOKENS:
        assert len(tiny.encode(token, add_special_tokens=False)) == 1


# ---------------------------------------------------------------------------------------
# Model output -> tool calls, as vLLM's hermes parser

CALL = '<tool_call>\n{"name": "interact", "arguments": {"actions": ["do"], "why": "café"}}\n</tool_call>'


@pytest.mark.parametrize("text, content, calls", [
    (CALL, None, [("interact", '{"actions": ["do"], "why": "café"}')]),
    ("Let me act.\n" + CALL, "Let me act.\n", [("interact", '{"actions": ["do"], "why": "café"}')]),
    (CALL + "\n" + CALL.replace("interact", "other"), None, [("interact", '{"actions": ["do"], "why": "café"}'),
                                                            ("other", '{"actions": ["do"], "why": "café"}')]),
    ('<tool_call>\n{"name": "interact", "arguments": {}}', None, [("interact", "{}")]),  # unterminated last block
    ('<tool_call>{"name": "f", "arguments": "a string"}</tool_call>', None, [("f", '"a string"')]),
    (" plain text, no call ", " plain text, no call ", []),
    ("", "", []),
])
def test_tool_calls_parse_as_vllm_hermes(text, content, calls):
    got_content, got_calls = qwen_format.parse_tool_calls(text)
    assert got_content == content
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in got_calls] == calls
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in got_calls)
    assert len({c["id"] for c in got_calls}) == len(got_calls)


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "interact", "arguments": {"actions": [\n</tool_call>',  # broken JSON
    '<tool_call>{"name": "interact"}</tool_call>',  # no arguments
    '<tool_call>{"name": 7, "arguments": {}}</tool_call>',  # name not a string
    '<tool_call>["interact", {}]</tool_call>',  # not an object
    CALL + '<tool_call>{"name": "x", "arguments": }</tool_call>',  # one bad block spoils all
    "Done.\n<tool_call>",  # an empty unterminated block
])
def test_malformed_calls_return_the_whole_text(text):
    assert qwen_format.parse_tool_calls(text) == (text, [])
    assert qwen_format.assistant_message(text, "stop", tools=[{}]) == ({"role": "assistant", "content": text}, "stop")


def test_calls_are_parsed_only_when_the_request_offers_tools():
    message, finish = qwen_format.assistant_message(CALL, "stop", tools=[{}])
    assert finish == "tool_calls" and message["content"] is None and len(message["tool_calls"]) == 1
    assert qwen_format.assistant_message(CALL, "stop", tools=None) == ({"role": "assistant", "content": CALL}, "stop")
