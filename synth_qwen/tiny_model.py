"""The built-in offline base models `local/tiny-qwen3` and `local/qwen3-shaped`.

Qwen3 architecture, deterministic random init, a small byte-level BPE trained here on Crafter
text, and Qwen3-Instruct-2507's chat template loaded from the installed `trl` package (never
copied into this repo). Built on first use in seconds and cached under the serve data dir.
A real Qwen vocabulary (152k) would make a model this small ~15x slower, hence the own BPE.

`local/qwen3-shaped` is the opposite trade: Qwen3's real tokenizer (151,936 rows), special tokens
and template on a small random Qwen3, so tests run the path Qwen3-4B-Instruct-2507 takes (a LoRA
adapter, not a full fine-tune). Its parameters are nearly all embedding; it is for proving the
format and the adapter plumbing, not for playing Crafter.
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

from synth_qwen import qwen_format
from synth_qwen.qwen_format import (CHAT_MARKER_TOKENS, CHAT_SPECIAL_TOKENS, EOS_TOKEN, PAD_TOKEN, chat_template,
                                    tool_call_block)
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

def ensure(data_dir: str | Path, size: str = "small") -> Path:
    """Directory of the tiny model for `size`, building it once (atomic rename, safe across processes)."""
    corpus = corpus_texts()
    recipe = [SIZES[size], corpus, chat_template(), INIT_SEED, domain_tokens()]  # any change: a new model
    key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:12]

    def build(staging: Path) -> None:
        tokenizer = build_tokenizer(corpus, SIZES[size]["vocab_size"])
        model = build_model(tokenizer, size)
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging)
    return built_once(Path(data_dir) / "base_models" / f"tiny-qwen3-{size}-{key}", build)


def built_once(target: Path, build) -> Path:
    """`target`, made by build(staging folder) unless it exists: built aside and renamed into place,
    so a reader never sees half a model. A lock makes a second process wait for the first build
    instead of making its own (two 4B builds at once would need 16 GB)."""
    import fcntl

    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if (target / "config.json").exists():  # built while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
        try:
            build(staging)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def local_path(spec) -> str:
    """Where a worker loads a base model (a serve_store.ModelSpec) from: the built-in ones are
    built here on first use, any other is its own path (a local dir or a hub id)."""
    if spec.kind == "tiny":
        return str(ensure(spec.data_dir, spec.size))
    if spec.key in QWEN3_SHAPED_MODELS:
        return str(ensure_qwen3_shaped(spec.data_dir, QWEN3_SHAPED_MODELS[spec.key]))
    return spec.path


def build_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHAT_SPECIAL_TOKENS + CHAT_MARKER_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                        bos_token=None, unk_token=None)
    tokenizer.add_special_tokens({"additional_special_tokens": CHAT_SPECIAL_TOKENS})
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in CHAT_MARKER_TOKENS + domain_tokens()])
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
                         eos_token_id=tokenizer.convert_tokens_to_ids(EOS_TOKEN),
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
    return tool_call_block(tool_name, json.dumps(arguments)) + EOS_TOKEN


def template_literals() -> list[str]:
    """String literals of the chat template (its fixed scaffolding text), so BPE learns them whole."""
    template = chat_template()
    literals = re.findall(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"", template)
    return [(a or b).encode().decode("unicode_escape") for a, b in literals if (a or b).strip()] * 20


# ---------------------------------------------------------------------------------------
# `local/qwen3-shaped`: the real Qwen3 tokenizer and template on a small random Qwen3, so the
# path Qwen3-4B-Instruct-2507 takes (full vocabulary, LoRA, adapter export) runs offline on CPU.

QWEN3_SHAPED_ID = "local/qwen3-shaped"
QWEN3_4B_SHAPED_ID = "local/qwen3-4b-shaped"
# Shapes: "test" for CPU tests (~9.8M params, nearly all of them the 151,936 x 64 embedding);
# "gpu-check" (~0.28B) saved in bfloat16 as Qwen3-4B ships (so dtype="auto" loads it as the 4B
# loads); "4b": exactly Qwen3-4B-Instruct-2507's config.json (4.02B params, 8 GB of bf16), for
# proving the real size offline. Shapes without their own positions and rope get MAX_POSITIONS.
QWEN3_SAVED_DTYPE = {"test": "float32", "gpu-check": "bfloat16", "4b": "bfloat16"}
QWEN3_SHAPES = {
    "test": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, intermediate_size=192),
    "gpu-check": dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=8,
                      head_dim=128, intermediate_size=3072),
    "4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
               head_dim=128, intermediate_size=9728, max_position_embeddings=262_144,
               rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0}),
}
QWEN3_SHAPED_MODELS = {QWEN3_SHAPED_ID: "test", QWEN3_4B_SHAPED_ID: "4b"}  # built-in model id -> shape
QWEN3_INIT = "normal(0, initializer_range) once; norms 1"  # build_qwen3_model's init (in the recipe)
SHARD_SIZE = "4GB"  # Qwen3-4B ships in shards too; sharded loading is the path it takes


def ensure_qwen3_shaped(data_dir: str | Path, shape: str = "test") -> Path:
    """Directory of the Qwen3-shaped model, building it once (as `ensure` builds the tiny one)."""
    template = chat_template()
    ranks = hashlib.sha256(qwen_format.ranks_file().read_bytes()).hexdigest()
    recipe = [QWEN3_SHAPES[shape], QWEN3_SAVED_DTYPE[shape], template, ranks, qwen_format.pre_tokenizer_pattern(),
              sorted(qwen_format.QWEN3_ADDED_TOKENS.items()), INIT_SEED, QWEN3_INIT]  # any change: a new model
    key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:12]

    def build(staging: Path) -> None:
        tokenizer = build_qwen3_tokenizer(shape)
        build_qwen3_model(shape).save_pretrained(staging, max_shard_size=SHARD_SIZE)
        tokenizer.save_pretrained(staging)
    return built_once(Path(data_dir) / "base_models" / f"qwen3-shaped-{shape}-{key}", build)


def qwen3_config(shape: str) -> dict:
    """Qwen3Config arguments of a shape (the vocabulary and special-token ids are Qwen3's own)."""
    ids = {token: id_ for id_, (token, _) in qwen_format.QWEN3_ADDED_TOKENS.items()}
    return dict(dict(max_position_embeddings=MAX_POSITIONS), **QWEN3_SHAPES[shape], vocab_size=qwen_format.QWEN3_VOCAB_SIZE,
                tie_word_embeddings=True, bos_token_id=ids[PAD_TOKEN], eos_token_id=ids[EOS_TOKEN],
                pad_token_id=ids[PAD_TOKEN])


def build_qwen3_tokenizer(shape: str = "test"):
    """Qwen3's tokenizer from its BPE ranks: Qwen's pre-tokenizer split, byte-level BPE, NFC, the
    added tokens at their real ids, eos/pad and the Instruct-2507 template."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    raw = TikTokenConverter(vocab_file=str(qwen_format.ranks_file()), pattern=qwen_format.pre_tokenizer_pattern()).converted()
    raw.normalizer = normalizers.NFC()
    for id_, (token, special) in sorted(qwen_format.QWEN3_ADDED_TOKENS.items()):
        raw.add_tokens([AddedToken(token, special=special, normalized=False)])
        if raw.token_to_id(token) != id_:
            raise RuntimeError(f"{token} got id {raw.token_to_id(token)}, Qwen3 has {id_}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                        bos_token=None, unk_token=None,
                                        model_max_length=qwen3_config(shape)["max_position_embeddings"])
    tokenizer.chat_template = chat_template("inference")
    return tokenizer


def build_qwen3_model(shape: str):
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM
    from transformers.initialization import no_init_weights

    ids = {token: id_ for id_, (token, _) in qwen_format.QWEN3_ADDED_TOKENS.items()}
    config = Qwen3Config(**qwen3_config(shape))
    # Made in the saved dtype (an fp32 model first would need 16 GB at the 4B size) and initialised
    # once, here: transformers' own init took ~4x as long (measured: ~6 minutes at the 4B size).
    with no_init_weights():
        model = Qwen3ForCausalLM._from_config(config, dtype=getattr(torch, QWEN3_SAVED_DTYPE[shape]))
    model.tie_weights()
    torch.manual_seed(INIT_SEED)
    with torch.no_grad():
        for weights in model.parameters():  # RMSNorm scales 1; matrices N(0, initializer_range), as Qwen3 inits
            weights.fill_(1.0) if weights.dim() == 1 else weights.normal_(0.0, config.initializer_range)
    model.generation_config = GenerationConfig(eos_token_id=[ids[token] for token in qwen_format.STOP_TOKENS],
                                               pad_token_id=config.pad_token_id)
    return model
