"""adapter_check: vLLM's rules for a PEFT LoRA folder, on adapters PEFT really writes (a small random
Qwen3), then made wrong on purpose one way each; every wrong one names the rule it breaks."""
import json
import shutil
from pathlib import Path

import pytest

from synth_qwen import adapter_check

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHAPE = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, intermediate_size=128)


def qwen3(shape=SHAPE):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config(**shape, tie_word_embeddings=True))


def peft_adapter(folder: Path, model=None, **lora) -> Path:
    """What PEFT saves for a LoRA on `model` (the small Qwen3 by default), B made non-zero as training would."""
    import torch
    from peft import LoraConfig, get_peft_model

    settings = dict(r=8, lora_alpha=16, target_modules=LINEAR, task_type="CAUSAL_LM") | lora
    peft_model = get_peft_model(model or qwen3(), LoraConfig(**settings))
    with torch.no_grad():
        for name, weights in peft_model.named_parameters():
            if "lora_B" in name:
                weights.normal_()
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return peft_adapter(tmp_path_factory.mktemp("good") / "adapter")


@pytest.fixture
def copy(good, tmp_path):
    def make() -> Path:
        return Path(shutil.copytree(good, tmp_path / "adapter"))
    return make


def edit_config(folder: Path, **changes) -> Path:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    for key in [key for key, value in changes.items() if value is None]:
        del config[key]
    path.write_text(json.dumps(config))
    return folder


def edit_tensors(folder: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    save_file(edit(load_file(path)), path)
    return folder


def rules(folder: Path, max_lora_rank: int = 16, base=SHAPE) -> list[str]:
    return sorted({problem.rule for problem in adapter_check.check_adapter(folder, max_lora_rank, base_config=base)})


def test_what_peft_writes_for_all_linear_layers_passes(good):
    assert rules(good) == []
    assert rules(good, max_lora_rank=8) == []  # r == --max-lora-rank is allowed


BROKEN = {
    "files": lambda folder: (folder / "adapter_model.safetensors").unlink() or folder,
    "config": lambda folder: edit_config(folder, r=None),
    "rank": lambda folder: shutil.rmtree(folder) or peft_adapter(folder, r=32, lora_alpha=64),  # above 16
    "bias": lambda folder: edit_config(folder, bias="all"),
    "features": lambda folder: edit_config(folder, init_lora_weights="pissa"),
    "modules": lambda folder: edit_tensors(folder, lambda tensors: {  # vLLM's packed name, not PEFT's
        name.replace(".q_proj.", ".qkv_proj."): weights for name, weights in tensors.items()}),
    "pairs": lambda folder: edit_tensors(folder, lambda tensors: {
        name: weights for name, weights in tensors.items() if not name.endswith("layers.1.mlp.down_proj.lora_B.weight")}),
    "dtype": lambda folder: edit_tensors(folder, lambda tensors: {
        name: weights.to(__import__("torch").int8) if "v_proj" in name else weights for name, weights in tensors.items()}),
    "tensor_names": lambda folder: edit_tensors(folder, lambda tensors: {
        **tensors, "base_model.model.model.norm.weight": __import__("torch").ones(SHAPE["hidden_size"])}),
}


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_an_adapter_made_wrong_names_the_rule_it_breaks(copy, rule):
    assert rules(BROKEN[rule](copy())) == [rule]
    assert rule in adapter_check.RULES


def test_a_rank_above_max_lora_rank_says_which_to_serve_with(good):
    [problem] = adapter_check.check_adapter(good, max_lora_rank=1, base_config=SHAPE)
    assert problem.rule == "rank" and "serve it with --max-lora-rank 8" in problem.message


def test_an_adapter_for_another_base_breaks_the_shape_rule(good):
    wider = dict(SHAPE, hidden_size=128)
    problems = adapter_check.check_adapter(good, base_config=wider)
    assert {problem.rule for problem in problems} == {"shapes"}
    assert any("q_proj.lora_A is [8, 64], the base model needs [8, 128]" in str(problem) for problem in problems)


@pytest.mark.parametrize("variant, rule", [
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),  # PEFT then also saves a full lm_head copy
    (dict(use_dora=True), "features"),  # DoRA adds lora_magnitude_vector tensors
    (dict(target_modules=LINEAR + ["embed_tokens"]), "modules"),  # vLLM's Qwen3 has no embedding LoRA
])
def test_peft_variants_vllm_rejects(tmp_path, variant, rule):
    assert rule in rules(peft_adapter(tmp_path / "adapter", **variant))


def test_a_max_lora_rank_vllm_does_not_take_is_a_usage_error(good):
    with pytest.raises(ValueError, match="--max-lora-rank 12 is not one vLLM takes"):
        adapter_check.check_adapter(good, max_lora_rank=12)
