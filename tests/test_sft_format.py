"""The SFT JSONL validator shared by filter_traces, sft_kickoff and serve."""
import json

from serve_helpers import crafter_examples, write_jsonl
from synth_qwen.action_schema import tool_call
from synth_qwen.sft_format import MIN_EXAMPLES, validate_example, validate_jsonl


def call(call_id="call_1", arguments='{"actions": ["do"]}'):
    return tool_call(call_id, arguments)


def test_a_per_turn_example_with_history_is_valid():
    assert validate_example(crafter_examples(3, seed=0, with_history=True)[-1]) == []


def test_problems_are_named():
    cases = {
        "role 'robot'": {"messages": [{"role": "robot", "content": "x"}]},
        "needs content or tool_calls": {"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]},
        "arguments must be a JSON string": {"messages": [{"role": "assistant", "tool_calls": [
            call(arguments={"actions": ["do"]})]}]},
        "arguments is not valid JSON": {"messages": [{"role": "assistant", "tool_calls": [call(arguments="{x")]}]},
        "type must be 'function'": {"messages": [{"role": "assistant", "tool_calls": [{**call(), "type": "tool"}]}]},
        "tool_call_id of an earlier": {"messages": [{"role": "assistant", "tool_calls": [call()]},
                                                    {"role": "tool", "tool_call_id": "call_2", "content": "ok"}]},
        "weight must be 0 or 1": {"messages": [{"role": "assistant", "content": "x", "weight": 2}]},
        "only allowed on assistant": {"messages": [{"role": "user", "content": "x", "weight": 0},
                                                   {"role": "assistant", "content": "y"}]},
        "no trainable assistant": {"messages": [{"role": "user", "content": "x"},
                                                {"role": "assistant", "content": "y", "weight": 0}]},
        "'tools' must be a list": {"messages": [{"role": "assistant", "content": "y"}], "tools": {}},
        "non-empty list": {"messages": []},
    }
    for expected, example in cases.items():
        problems = validate_example(example)
        assert any(expected in problem for problem in problems), (expected, problems)


def test_jsonl_report_names_lines_and_counts(tmp_path):
    rows = [json.dumps(row) for row in crafter_examples(MIN_EXAMPLES, seed=1)]
    rows[3] = "{broken"
    report = validate_jsonl(write_jsonl(tmp_path / "t.jsonl", rows))
    assert not report.ok and report.errors[0].startswith("line 4: not valid JSON")
    assert report.summary().startswith(str(tmp_path / "t.jsonl") + ": line 4")
    short = validate_jsonl(write_jsonl(tmp_path / "s.jsonl", rows[:2]), name="file-abc")
    assert short.summary() == f"file-abc: has 2 examples; at least {MIN_EXAMPLES} are required"
    assert validate_jsonl(write_jsonl(tmp_path / "ok.jsonl", crafter_examples(MIN_EXAMPLES, seed=2))).ok
