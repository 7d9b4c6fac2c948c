"""Preference fine-tuning (`method.type="dpo"`) through the real `serve` and the official openai SDK.

The tiny model first learns a habit by SFT (it answers "noop"), then a DPO job on that `ft:` model
prefers "do" on the same prompts: the reward accuracy climbs, the first step's loss is exactly
ln 2 (the reference is the starting model, so every reward starts at 0), and the greedy chat
answer moves from the non-preferred reply to the preferred one. A LoRA DPO job on
`local/qwen3-shaped` exports a PEFT adapter. Malformed preference files fail at validating_files
with the line named.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from serve_helpers import wait_for_job, write_jsonl
from synth_qwen.sft_format import MIN_EXAMPLES
from synth_qwen.tiny_model import QWEN3_SHAPED_ID, TINY_MODEL_ID

pytestmark = pytest.mark.timeout(600)
PREFERRED, NON_PREFERRED = "do", "noop"
TOOLS = [{"type": "function", "function": {"name": "interact", "description": "Act in Crafter.",
                                           "parameters": {"type": "object", "properties": {"actions": {"type": "array"}}}}}]


def prompt(index: int) -> list[dict]:
    return [{"role": "user", "content": f"Turn {index}: a tree is in front of you."}]


def reply(text: str) -> dict:
    return {"role": "assistant", "content": text}


def preference(messages: list[dict], preferred: dict, non_preferred: dict, **extra) -> dict:
    return {"input": {"messages": messages, **extra}, "preferred_output": [preferred],
            "non_preferred_output": [non_preferred]}


def upload(client, tmp_path, rows, name):
    return client.files.create(file=write_jsonl(tmp_path / name, rows).open("rb"), purpose="fine-tune")


def dpo(**hyperparameters) -> dict:
    return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}


def metrics(client, job_id) -> list[dict]:
    events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
    return sorted((event.data for event in events if event.type == "metrics"), key=lambda data: data["step"])


def greedy(client, model, messages, tools=None) -> str:
    answer = client.chat.completions.create(model=model, messages=messages, tools=tools, temperature=0, max_tokens=4)
    return answer.choices[0].message.content or ""


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)


@pytest.fixture(scope="module")
def habit(client, tmp_path_factory):
    """An SFT job that teaches the tiny model to answer NON_PREFERRED."""
    rows = [{"messages": prompt(index) + [reply(NON_PREFERRED)]} for index in range(12)]
    training_file = upload(client, tmp_path_factory.mktemp("sft"), rows, "habit.jsonl")
    job = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=training_file.id, seed=1, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 5, "batch_size": 4,
                                                                 "learning_rate_multiplier": 3}}})
    job = wait_for_job(client, job.id)
    assert job.status == "succeeded", job.error
    return job


@pytest.fixture(scope="module")
def preferred_job(client, habit, tmp_path_factory):
    rows = [preference(prompt(index), reply(PREFERRED), reply(NON_PREFERRED)) for index in range(12)]
    training_file = upload(client, tmp_path_factory.mktemp("dpo"), rows, "pairs.jsonl")
    job = client.fine_tuning.jobs.create(model=habit.fine_tuned_model, training_file=training_file.id, seed=2,
                                         suffix="prefer", method=dpo(n_epochs=4, batch_size=4,
                                                                     learning_rate_multiplier=10))
    assert job.status == "validating_files" and job.method.type == "dpo"
    return wait_for_job(client, job.id)


def test_dpo_moves_the_answer_from_the_non_preferred_reply_to_the_preferred_one(client, habit, preferred_job):
    job = preferred_job
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{TINY_MODEL_ID}:prefer:{job.id}"  # named after the root base, as SFT
    assert job.method.type == "dpo" and job.method.supervised is None
    resolved = job.method.dpo.hyperparameters
    assert (resolved.beta, resolved.n_epochs, resolved.batch_size, resolved.learning_rate_multiplier) == (0.1, 4, 4, 10)

    steps = metrics(client, job.id)
    assert [data["step"] for data in steps] == list(range(1, 13))
    # the reference is the starting model: every reward starts at 0 (up to float noise between batchings)
    assert math.isclose(steps[0]["train_loss"], math.log(2), rel_tol=1e-4) and abs(steps[0]["reward_margin"]) < 1e-4
    assert steps[0]["reward_accuracy"] <= 0.5 and steps[-1]["reward_accuracy"] == 1 and steps[-1]["reward_margin"] > 0.5
    assert steps[-1]["train_loss"] < 0.5 * steps[0]["train_loss"]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in checkpoints) == [3, 6, 9, 12]
    assert Path(job.model_extra["output_dir"], "model.safetensors").exists()  # the tiny model: full weights

    held_out = prompt(99)
    assert greedy(client, habit.fine_tuned_model, held_out).startswith(NON_PREFERRED)
    assert greedy(client, job.fine_tuned_model, held_out).startswith(PREFERRED)


def test_metrics_csv_has_the_dpo_columns(client, preferred_job):
    lines = client.files.content(preferred_job.result_files[0]).text.splitlines()
    assert lines[0].split(",")[-2:] == ["reward_accuracy", "reward_margin"] and len(lines) == 13


def test_beta_auto_is_resolved_and_the_job_lists_with_its_method(client, preferred_job):
    listed = {job.id: job for job in client.fine_tuning.jobs.list(limit=100).data}
    assert listed[preferred_job.id].method.dpo.hyperparameters.beta == 0.1
    events = [event.message for event in client.fine_tuning.jobs.list_events(preferred_job.id, limit=100).data]
    assert any("12 preference pairs" in message and "beta=0.1" in message for message in events)
    assert any("Training (DPO, beta 0.1)" in message for message in events)


def test_malformed_preference_files_fail_at_validation_with_the_line(client, tmp_path):
    good = [preference(prompt(index), reply(PREFERRED), reply(NON_PREFERRED)) for index in range(MIN_EXAMPLES)]

    def with_line(index: int, row) -> list:
        return [json.dumps(row) if i == index else r for i, r in enumerate(good)]
    cases = {
        "line 2: 'preferred_output' must be a list of exactly one assistant message":
            with_line(1, {**good[1], "preferred_output": [reply("a"), reply("b")]}),
        "line 3: 'non_preferred_output' must be a list of exactly one assistant message":
            with_line(2, {**good[2], "non_preferred_output": [{"role": "user", "content": "x"}]}),
        "line 1: 'input' must be an object with a non-empty 'messages' list (this is a chat example":
            [{"messages": prompt(0) + [reply("do")]}] + good[1:],
        "line 4: input.messages must end before the answer":
            with_line(3, preference(prompt(3) + [reply("do")], reply("a"), reply("b"))),
        "line 5: preferred_output and non_preferred_output say the same thing":
            with_line(4, preference(prompt(4), reply("do"), reply("do"))),
        "line 6: input.messages[0]: role 'robot'":
            with_line(5, preference([{"role": "robot", "content": "x"}], reply("a"), reply("b"))),
        "line 7: preferred_output[0].tool_calls[0]: function.arguments is not valid JSON":
            with_line(6, preference(prompt(6), {"role": "assistant", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "interact", "arguments": "{x"}}]},
                reply("b"))),
        f"at least {MIN_EXAMPLES} are required": good[:3],
    }
    jobs = {}
    for expected, rows in cases.items():
        training_file = upload(client, tmp_path, rows, f"case{len(jobs)}.jsonl")
        jobs[expected] = (training_file.id, client.fine_tuning.jobs.create(
            model=TINY_MODEL_ID, training_file=training_file.id, method=dpo()))
    for expected, (file_id, job) in jobs.items():
        job = wait_for_job(client, job.id)
        assert job.status == "failed" and job.error.code == "invalid_training_file" and job.error.param == "training_file"
        assert file_id in job.error.message and expected in job.error.message, job.error.message
    # and a preference file is no chat data: a supervised job names what it is
    training_file = upload(client, tmp_path, good, "pairs.jsonl")
    job = wait_for_job(client, client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=training_file.id).id)
    assert job.status == "failed" and "line 1: 'messages' must be a non-empty list (this is a preference line" \
        in job.error.message


def test_unsupported_methods_and_hyperparameters_get_a_400_that_says_what_is_supported(client, tmp_path):
    training_file = upload(client, tmp_path, [preference(prompt(0), reply("a"), reply("b"))] * MIN_EXAMPLES, "p.jsonl")
    cases = {
        "method.type 'reinforcement' is not supported here; supported: 'supervised', 'dpo'":
            dict(method={"type": "reinforcement", "reinforcement": {"hyperparameters": {}}}),
        "hyperparameters.beta must be 'auto' or a number from 0.001 to 10": dict(method=dpo(beta=0)),
        "hyperparameters.beta is not a hyperparameter of method.type='supervised'":
            dict(method={"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.2}}}),
    }
    for expected, body in cases.items():
        with pytest.raises(openai.BadRequestError) as raised:
            client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=training_file.id, **body)
        error = raised.value.body
        assert expected in error["message"] and error["type"] == "invalid_request_error", error
        assert error["param"] in ("method.type", "hyperparameters.beta")


def test_a_lora_dpo_job_on_qwen3_shaped_exports_a_peft_adapter(client, tmp_path):
    """The real Qwen3 tokenizer and template: tool-call answers, a new adapter on every linear layer."""
    def call(action: str) -> dict:
        return {"role": "assistant", "content": None, "tool_calls": [{"id": "call_0", "type": "function", "function": {
            "name": "interact", "arguments": json.dumps({"actions": [action]})}}]}
    rows = [preference(prompt(index), call(PREFERRED), call(NON_PREFERRED), tools=TOOLS, parallel_tool_calls=False)
            for index in range(MIN_EXAMPLES)]
    training_file = upload(client, tmp_path, rows, "pairs.jsonl")
    job = client.fine_tuning.jobs.create(model=QWEN3_SHAPED_ID, training_file=training_file.id, seed=3,
                                         method=dpo(n_epochs=2, batch_size=5, learning_rate_multiplier=50, beta=0.5))
    job = wait_for_job(client, job.id, timeout_s=480)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{QWEN3_SHAPED_ID}:{job.id}" and job.method.dpo.hyperparameters.beta == 0.5
    steps = metrics(client, job.id)
    assert [data["step"] for data in steps] == [1, 2, 3, 4]
    assert steps[-1]["reward_accuracy"] == 1 and steps[-1]["reward_margin"] > steps[0]["reward_margin"]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    output = Path(job.model_extra["output_dir"])
    for folder in [output] + [output.parent / "checkpoints" / f"step-{c.step_number}" for c in checkpoints]:
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and Path(config["base_model_name_or_path"]).name.startswith("qwen3-shaped")
        assert (folder / "adapter_model.safetensors").is_file() and not (folder / "model.safetensors").exists()
    assert sorted(c.step_number for c in checkpoints) == [2, 4]
    answer = client.chat.completions.create(model=job.fine_tuned_model, messages=prompt(99), tools=TOOLS, max_tokens=4)
    assert answer.model == job.fine_tuned_model
