"""The built-in offline base model `local/tiny-qwen3`.

Qwen3 architecture, deterministic random init, a small byte-level BPE trained here on Crafter
text, and Qwen3-Instruct-2507's chat template loaded from the installed `trl` package (never
copied into this repo). Built on first use in seconds and cached under the serve data dir.
A real Qwen vocabulary (152k) would make a model this small ~15x slower, hence the own BPE.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

from synth_qwen.settings import DEFAULT_ACTIONS_PER_TURN

TINY_MODEL_ID = "local/tiny-qwen3"

# Size presets (SERVE_TINY_SIZE). "small" is the reference: ~4.2M params, ~3.2k train tokens/s on 2 cores.
SIZES = {
    "micro": dict(vocab_size=2048, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, intermediate_size=384),
    "small": dict(vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, intermediate_size=768),
    "medium": dict(vocab_size=4096, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                   num_key_value_heads=2, head_dim=64, intermediate_size=1152),
}
MAX_POSITIONS = 8192
INIT_SEED = 0
CORPUS_SEEDS = (1, 2, 3)  # Crafter worlds walked at random for observation text
CORPUS_STEPS_PER_SEED = 120

# Chat scaffolding tokens, as in Qwen3's tokenizer. Special ones are stripped when decoding;
# the tool-call markers are plain added tokens so decoded text keeps them (as in Qwen's own).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKER_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
TEMPLATE_FILES = {"inference": "qwen3_instruct_2507.jinja", "training": "qwen3_instruct_2507_training.jinja"}


def chat_template(kind: str = "inference") -> str:
    """Qwen3-Instruct-2507's template as shipped in the installed trl (training = with generation markers)."""
    import trl

    path = Path(trl.__file__).parent / "chat_templates" / TEMPLATE_FILES[kind]
    if not path.exists():
        raise RuntimeError(f"{path} not found: install trl>=1.16 (the tiny model takes its chat template from it)")
    return path.read_text(encoding="utf-8")


def ensure(data_dir: str | Path, size: str = "small") -> Path:
    """Directory of the tiny model for `size`, building it once (atomic rename, safe across processes)."""
    corpus = corpus_texts()
    recipe = [SIZES[size], corpus, chat_template(), INIT_SEED, domain_tokens()]  # any change: a new model
    key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:12]
    target = Path(data_dir) / "base_models" / f"tiny-qwen3-{size}-{key}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        tokenizer = build_tokenizer(corpus, SIZES[size]["vocab_size"])
        model = build_model(tokenizer, size)
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first; its copy is identical
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + MARKER_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token=None, unk_token=None)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in MARKER_TOKENS + domain_tokens()])
    tokenizer.chat_template = chat_template("inference")
    return tokenizer


def domain_tokens() -> list[str]:
    """Crafter's action and achievement names, one token each: a model this small otherwise spells
    them from BPE pieces and invents names like `make_up` or `move_table` (measured: most of its
    invalid turns). Added tokens match longest-first, so `move_down` never splits into `move_` + `do`."""
    from crafter import constants

    return list(constants.actions) + list(constants.achievements)


def build_model(tokenizer, size: str):
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    spec = dict(SIZES[size], vocab_size=len(tokenizer))
    config = Qwen3Config(**spec, max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(INIT_SEED)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    return model


# ---------------------------------------------------------------------------------------
# Training corpus for the tokenizer: the text this model will actually read and write.

def corpus_texts() -> list[str]:
    """System prompt, tools schema, observations from random play, tool-call JSON, template literals."""
    from synth_qwen import action_schema, crafter_env  # Crafter loads only when a model is built
    from synth_qwen.observation import observe

    texts = template_literals()
    rng = random.Random(INIT_SEED)
    texts.append(action_schema.system_prompt(DEFAULT_ACTIONS_PER_TURN))
    texts.append(json.dumps(action_schema.interact_tool(DEFAULT_ACTIONS_PER_TURN)))
    for seed in CORPUS_SEEDS:
        env = crafter_env.CrafterEnv(seed=seed, difficulty="normal")
        env.start()
        texts.append(observe(env).text)
        for _ in range(CORPUS_STEPS_PER_SEED):
            if env.act(rng.choice(crafter_env.ACTIONS)).done:
                break
            texts.append(observe(env).text)
    texts += [tool_call_text(rng, list(crafter_env.ACTIONS), action_schema.INTERACT_TOOL_NAME) for _ in range(300)]
    return texts


def tool_call_text(rng: random.Random, actions: list[str], tool_name: str) -> str:
    chosen = [rng.choice(actions) for _ in range(rng.randint(1, DEFAULT_ACTIONS_PER_TURN))]
    arguments = {"actions": chosen, "reasoning": f"{chosen[0].replace('_', ' ')} then continue"}
    return "<tool_call>\n" + json.dumps({"name": tool_name, "arguments": arguments}) + "\n</tool_call><|im_end|>"


def template_literals() -> list[str]:
    """String literals of the chat template (its fixed scaffolding text), so BPE learns them whole."""
    template = chat_template()
    literals = re.findall(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"", template)
    return [(a or b).encode().decode("unicode_escape") for a, b in literals if (a or b).strip()] * 20
