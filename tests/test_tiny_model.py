"""local/tiny-qwen3, the built-in base model: its tokenizer, a deterministic build, and the cache
key that decides when a new model is built."""
import json

import pytest
from crafter import constants

from synth_qwen import crafter_env, tiny_model
from synth_qwen.observation import observe

SIZE = "micro"  # the smallest preset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def built(data_dir):
    return tiny_model.ensure(data_dir, SIZE)


@pytest.fixture(scope="module")
def tokenizer(built):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(built)


def test_text_round_trips_through_the_tokenizer(tokenizer):
    env = crafter_env.CrafterEnv(seed=11, difficulty="hard")  # a world it never saw
    env.start()
    observation = observe(env).text
    call = json.dumps({"name": "interact", "arguments": {"actions": ["move_down", "do"], "reasoning": "dig down"}})
    text = f"{observation}\n<tool_call>\n{call}\n</tool_call>\nnot Crafter: café ✓ 木\tdouble  space"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    merged = tokenizer.encode(observation, add_special_tokens=False)
    assert len(merged) < len(observation) / 2  # a BPE trained on Crafter text, not one token per byte


def test_crafter_names_and_chat_markers_are_single_tokens(tokenizer):
    names = [*constants.actions, *constants.achievements, "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
    for name in names:
        assert len(tokenizer.encode(name, add_special_tokens=False)) == 1, name
    ids = tokenizer.encode('{"actions": ["move_down", "do", "make_wood_pickaxe"]}', add_special_tokens=False)
    assert {"move_down", "do", "make_wood_pickaxe"} <= set(tokenizer.convert_ids_to_tokens(ids))  # in context too


def test_the_same_recipe_gives_the_same_model_byte_for_byte(built, data_dir, tmp_path):
    written = (built / "model.safetensors").stat().st_mtime_ns
    assert tiny_model.ensure(data_dir, SIZE) == built  # the same recipe: the same directory, left as it was
    assert (built / "model.safetensors").stat().st_mtime_ns == written
    again = tiny_model.ensure(tmp_path, SIZE)  # an empty cache: built once more from scratch
    assert again.name == built.name
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (built / name).read_bytes(), name


def test_another_seed_gives_another_model_under_another_key(built, data_dir, monkeypatch):
    monkeypatch.setattr(tiny_model, "INIT_SEED", 1)
    reseeded = tiny_model.ensure(data_dir, SIZE)
    assert reseeded.name != built.name and (built / "config.json").exists()  # both kept side by side
    assert (reseeded / "model.safetensors").read_bytes() != (built / "model.safetensors").read_bytes()


@pytest.mark.parametrize("change", ["size", "corpus"])
def test_the_cache_key_changes_with_what_the_model_is_built_from(built, data_dir, monkeypatch, change):
    if change == "size":
        monkeypatch.setitem(tiny_model.SIZES, SIZE, dict(tiny_model.SIZES[SIZE], intermediate_size=256))
    else:
        monkeypatch.setattr(tiny_model, "CORPUS_STEPS_PER_SEED", tiny_model.CORPUS_STEPS_PER_SEED // 2)
    changed = tiny_model.ensure(data_dir, SIZE)
    assert changed.name.startswith(f"tiny-qwen3-{SIZE}-") and changed.name != built.name
    config = json.loads((changed / "config.json").read_text())
    assert config["intermediate_size"] == (256 if change == "size" else tiny_model.SIZES[SIZE]["intermediate_size"])
