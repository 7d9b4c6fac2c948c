"""The path Qwen3-4B-Instruct-2507 takes, on `local/qwen3-shaped` (the real Qwen3 tokenizer and
template on a small random Qwen3) through the real `serve` and the `openai` SDK: a LoRA job, its
checkpoints, the PEFT adapter vLLM's `--lora-modules` loads, and tool-call chat as vLLM's hermes
parser answers it. The job memorises one reply, a `<tool_call>` block, so the model's output is
known: whole, it comes back as `tool_calls`; cut short by max_tokens, as text (vLLM's answer to a
malformed block). Every other malformed shape is in test_qwen_format's parser table."""
import json
from pathlib import Path

import openai
import pytest

from serve_helpers import Server, wait_for_job, write_jsonl
from synth_qwen import qwen_format
from synth_qwen.tiny_model import QWEN3_SHAPED_ID, TINY_MODEL_ID

LORA_RANK = 8
TOOLS = [{"type": "function", "function": {"name": "interact", "description": "Act in Crafter.",
                                           "parameters": {"type": "object", "properties": {"actions": {"type": "array"}}}}}]
PROMPT = [{"role": "user", "content": "A tree is in front of you."}]
CALL = {"id": "call_0", "type": "function", "function": {"name": "interact", "arguments": '{"actions": ["do"]}'}}
LINEAR_LAYERS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def training_rows() -> list[dict]:
    example = {"messages": PROMPT + [{"role": "assistant", "content": "", "tool_calls": [CALL]}], "tools": TOOLS}
    return [example] * 10  # serve wants 10 examples at least


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("serve") / "data", serve_tiny_size="micro",
                     serve_lora_rank=LORA_RANK).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def job(client, tmp_path_factory):
    path = write_jsonl(tmp_path_factory.mktemp("files") / "train.jsonl", training_rows())
    training_file = client.files.create(file=path.open("rb"), purpose="fine-tune")
    # 40 steps at 50 x the LoRA rate: enough for a 64-wide random model to write the reply greedily
    # (its logits over 151,936 tokens stay nearly flat, so the loss barely moves while argmax is right).
    created = client.fine_tuning.jobs.create(
        model=QWEN3_SHAPED_ID, training_file=training_file.id, seed=3,
        hyperparameters={"n_epochs": 4, "batch_size": 1, "learning_rate_multiplier": 50})
    return wait_for_job(client, created.id, timeout_s=480)


def test_both_built_in_models_are_listed(client):
    listed = [model.id for model in client.models.list().data]
    assert listed[:2] == [TINY_MODEL_ID, QWEN3_SHAPED_ID]
    assert client.models.retrieve(QWEN3_SHAPED_ID).owned_by == "system"


def test_a_lora_job_writes_checkpoints_and_a_peft_adapter(client, job):
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith(f"ft:{QWEN3_SHAPED_ID}:")
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in checkpoints) == [10, 20, 30, 40]
    events = [event.message for event in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(f"LoRA r={LORA_RANK}" in message for message in events)

    for folder in [Path(job.model_extra["output_dir"])] + [
            Path(job.model_extra["output_dir"]).parent / "checkpoints" / f"step-{c.step_number}" for c in checkpoints]:
        config = json.loads((folder / "adapter_config.json").read_text())
        assert Path(config["base_model_name_or_path"]).name.startswith("qwen3-shaped-test-")
        assert config["peft_type"] == "LORA" and config["r"] == LORA_RANK and config["lora_alpha"] == 2 * LORA_RANK
        assert set(config["target_modules"]) == LINEAR_LAYERS  # what vLLM serves LoRA on
        assert (folder / "adapter_model.safetensors").is_file() and not (folder / "model.safetensors").exists()
    from safetensors import safe_open

    with safe_open(Path(job.model_extra["output_dir"]) / "adapter_model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert names and all(".lora_A." in name or ".lora_B." in name for name in names)
    assert {name.split(".lora_")[0].rsplit(".", 1)[1] for name in names} == LINEAR_LAYERS


def test_peft_on_the_base_gives_the_logits_of_the_model_serve_chats_with(server, job):
    """The adapter as vLLM applies it (unmerged, on the base) == serve's merged model, and != the base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from synth_qwen.inference_worker import Models
    from synth_qwen.serve_store import Store

    spec = Store(server.data_dir).models()[job.fine_tuned_model].spec
    served = Models(1, "cpu").get(spec)
    adapter = Path(job.model_extra["output_dir"])
    base_dir = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    ids = torch.tensor([qwen_format.prompt_ids(served.tokenizer, PROMPT, TOOLS)])
    with torch.inference_mode():
        base_logits = base(ids).logits
        peft_logits = PeftModel.from_pretrained(base, adapter).eval()(ids).logits
        served_logits = served.model(ids).logits
    assert torch.allclose(peft_logits, served_logits, atol=1e-4)
    assert not torch.allclose(base_logits, served_logits, atol=1e-2)


def test_a_reply_with_a_tool_call_comes_back_as_tool_calls(client, job):
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=PROMPT, tools=TOOLS,
                                           temperature=0, max_tokens=40)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "interact" and json.loads(call.function.arguments) == {"actions": ["do"]}


def test_a_malformed_call_comes_back_as_text(client, job):
    """The same reply cut after 5 tokens: an unterminated block that is not JSON -> the whole text."""
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=PROMPT, tools=TOOLS,
                                           temperature=0, max_tokens=5)
    choice = reply.choices[0]
    assert choice.message.content == '<tool_call>\n{"name":' and not choice.message.tool_calls
    assert choice.finish_reason == "length"


def test_serve_prompts_with_the_training_prompt_tokens(client, job, server):
    """usage.prompt_tokens of a chat == the tokens before the reply in the training example."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job.model_extra["output_dir"])
    trained = qwen_format.encode_example(tokenizer, qwen_format.training_template(tokenizer), training_rows()[0], 10**6)
    prompt = qwen_format.prompt_ids(tokenizer, PROMPT, TOOLS)
    assert trained["input_ids"][:len(prompt)] == prompt
    assert trained["labels"][:len(prompt)] == [-100] * len(prompt)
    assert all(label != -100 for label in trained["labels"][len(prompt):])
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=PROMPT, tools=TOOLS,
                                           temperature=0, max_tokens=40)
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.completion_tokens == len(trained["input_ids"]) - len(prompt) - 1  # the "\n" after <|im_end|>
