"""Pieces of serve that need no server: tool-call parsing and the training labels."""
import json

from serve_helpers import crafter_examples
from synth_qwen.inference_worker import parse_tool_calls
from synth_qwen.train_worker import auto_epochs


def test_tool_calls_parse_into_openai_shape():
    content, calls = parse_tool_calls('ok\n<tool_call>\n{"name": "interact", "arguments": {"actions": ["do"]}}\n'
                                      '</tool_call>')
    assert content == "ok" and len(calls) == 1
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert json.loads(calls[0]["function"]["arguments"]) == {"actions": ["do"]}


def test_malformed_tool_calls_stay_plain_content():
    for text in ('<tool_call>\n{"name": "interact", "arguments": {"act\n</tool_call>',
                 '<tool_call>\n["interact"]\n</tool_call>', "just words", '<tool_call>{"arguments": {}}</tool_call>'):
        content, calls = parse_tool_calls(text)
        assert calls == [] and content == text.strip()


def test_openai_auto_epochs():
    assert [auto_epochs(n) for n in (10, 40, 1000, 20000)] == [10, 3, 3, 1]


def test_labels_cover_only_trained_assistant_turns(tmp_path):
    from transformers import AutoTokenizer

    from synth_qwen import tiny_model
    from synth_qwen.train_worker import encode_example

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.ensure(tmp_path, "micro"))
    example = crafter_examples(2, seed=0, with_history=True)[-1]
    assert example["messages"][2]["weight"] == 0
    row = encode_example(tokenizer, tiny_model.chat_template("training"), example, max_length=4096)
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
    final_call = example["messages"][-1]["tool_calls"][0]["function"]
    assert trained == ('<tool_call>\n{"name": "interact", "arguments": ' + final_call["arguments"] +
                       "}\n</tool_call><|im_end|>\n")
    assert len(row["input_ids"]) == len(row["labels"]) > 300
