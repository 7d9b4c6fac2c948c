"""Will vLLM load this LoRA adapter? The rules vLLM's `vllm/lora/` applies to a PEFT folder
(`--lora-modules NAME=DIR` or `POST /v1/load_lora_adapter`), checked offline, no torch, no vLLM:

    problems = check_adapter(folder, max_lora_rank=16)   # [] when vLLM loads it
    [Problem(rule="rank", message="r=32 is above --max-lora-rank 16 ...")]

Each problem names the rule it breaks (RULES). The sources, in vllm-project/vllm: `PEFTHelper`
(`lora/peft_helper.py`: required fields, `validate_legal`, `_validate_features`), `LoRAModel.
from_local_checkpoint` (`lora/lora_model.py`: the tensor file, unexpected modules),
`parse_fine_tuned_lora_name` (`lora/utils.py`), the worker's expected modules (every linear layer
of the served model, packed layers expanded by the model's `packed_modules_mapping`: Qwen3's
`qkv_proj` = q/k/v, `gate_up_proj` = gate/up), `LoRAConfig` (`config/lora.py`: the ranks
`--max-lora-rank` takes, default 16; adapters are cast to `lora_dtype`, auto = the model's dtype).
Shapes follow from the base model's config.json (lora_A is r x in, lora_B is out x r).
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

RULES = {
    "files": "adapter_config.json and the tensors (adapter_model.safetensors, .bin or .pt) are in the folder",
    "config": "adapter_config.json is a LoRA config with the fields vLLM requires: r, lora_alpha, target_modules",
    "rank": "r (and every rank_pattern value) is a positive integer at most --max-lora-rank",
    "modules_to_save": "no modules_to_save (vLLM allows them only for classification heads)",
    "bias": "bias is 'none' and lora_bias is off (vLLM has no LoRA bias)",
    "features": "no PEFT variant vLLM does not implement (DoRA, aLoRA, QALoRA, BD-LoRA, layer_replication, "
                "an init that changes the base weights: PiSSA, OLoRA, CorDA, LoftQ)",
    "tensor_names": "every tensor is a <module>.lora_A.weight or <module>.lora_B.weight (or an embedding's "
                    "lora_embedding_A/B)",
    "modules": "every module is a linear layer vLLM serves LoRA on, by its Hugging Face name "
               "(q_proj/k_proj/v_proj, which vLLM packs into qkv_proj, o_proj, gate_proj/up_proj, packed "
               "into gate_up_proj, down_proj); a packed name such as qkv_proj is not one",
    "pairs": "every module has both its lora_A and its lora_B",
    "shapes": "lora_A is r x in_features and lora_B is out_features x r of the base model's layer",
    "dtype": "tensors are float16, bfloat16 or float32 (vLLM casts them to the served dtype)",
}

# vLLM's Qwen3ForCausalLM: its linear layers, and how its packed ones unpack (packed_modules_mapping).
VLLM_PACKED_MODULES = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
VLLM_LINEAR_LAYERS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # LoRAConfig.max_lora_rank's allowed values
DEFAULT_MAX_LORA_RANK = 16
TENSOR_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}  # safetensors' names
# init_lora_weights strings that only set the adapter's first values (vLLM's _init_is_supported)
PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
UNSUPPORTED_FLAGS = {"use_dora": "DoRA", "alora_invocation_tokens": "Activated LoRA (aLoRA)",
                     "layer_replication": "layer_replication", "use_bdlora": "block-diagonal LoRA (BD-LoRA)",
                     "use_qalora": "QALoRA"}


@dataclass(frozen=True)
class Problem:
    rule: str  # a key of RULES
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


def expected_modules() -> set[str]:
    """The module names vLLM accepts in an adapter for Qwen3: its linear layers, packed ones unpacked."""
    return {name for layer in VLLM_LINEAR_LAYERS for name in VLLM_PACKED_MODULES.get(layer, (layer,))}


def linear_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA-able linear layer of a Qwen3 (Llama-family) config."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    return {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
            "gate_proj": (hidden, inner), "up_proj": (hidden, inner), "down_proj": (inner, hidden)}


def safetensors_header(path: Path) -> dict[str, dict]:
    """name -> {dtype, shape} from a .safetensors file's JSON header (8-byte length, then JSON)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header


def lora_tensor_name(name: str) -> tuple[str, str] | None:
    """(module path, "A" or "B") as vLLM's parse_fine_tuned_lora_name reads a tensor name, else None."""
    parts = name.removeprefix("base_model.model.").split(".")
    if len(parts) > 2 and parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"):
        return ".".join(parts[:-2]), parts[-2][-1]
    if len(parts) > 1 and parts[-1] in ("lora_embedding_A", "lora_embedding_B"):  # an embedding's LoRA
        return ".".join(parts[:-1]), parts[-1][-1]
    return None


def check_adapter(folder: str | Path, max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
                  base_config: dict | None = None) -> list[Problem]:
    """Every vLLM rule the adapter in `folder` breaks ([] when vLLM loads it). `base_config` (the base
    model's config.json) enables the shape rule; by default it is read from the adapter config's
    base_model_name_or_path when that is a local folder."""
    if max_lora_rank not in VLLM_MAX_LORA_RANKS:
        raise ValueError(f"--max-lora-rank {max_lora_rank} is not one vLLM takes: {VLLM_MAX_LORA_RANKS}")
    folder = Path(folder)
    config_path = folder / "adapter_config.json"
    tensors_path = next((folder / name for name in TENSOR_FILES if (folder / name).is_file()), None)
    if not config_path.is_file() or tensors_path is None:
        missing = "adapter_config.json" if not config_path.is_file() else " or ".join(TENSOR_FILES)
        return [Problem("files", f"{folder} has no {missing}")]
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        return [Problem("config", f"adapter_config.json is not JSON: {error}")]
    problems = config_problems(config, max_lora_rank)
    if tensors_path.suffix != ".safetensors" or any(p.rule == "config" for p in problems):
        return problems  # vLLM reads .bin/.pt with torch; their tensors are not checked here
    if base_config is None:
        base_config = local_base_config(config.get("base_model_name_or_path"))
    return problems + tensor_problems(safetensors_header(tensors_path), config, base_config)


def config_problems(config: dict, max_lora_rank: int) -> list[Problem]:
    problems = []
    missing = [field for field in ("r", "lora_alpha", "target_modules") if field not in config]
    if config.get("peft_type", "LORA") != "LORA" or missing:
        what = f"peft_type {config.get('peft_type')!r}" if config.get("peft_type", "LORA") != "LORA" else \
            f"missing {', '.join(missing)}"
        return [Problem("config", f"not a LoRA config vLLM reads: {what}")]
    ranks = [config["r"], *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(rank, int) and not isinstance(rank, bool) and rank > 0 for rank in ranks):
        problems.append(Problem("rank", f"ranks must be positive integers; got {ranks}"))
    elif max(ranks) > max_lora_rank:
        problems.append(Problem("rank", f"r={max(ranks)} is above --max-lora-rank {max_lora_rank} "
                                        f"(serve it with --max-lora-rank {min(r for r in VLLM_MAX_LORA_RANKS if r >= max(ranks))})"
                                if max(ranks) <= VLLM_MAX_LORA_RANKS[-1] else
                                f"r={max(ranks)} is above vLLM's largest --max-lora-rank {VLLM_MAX_LORA_RANKS[-1]}"))
    if config.get("modules_to_save"):
        problems.append(Problem("modules_to_save", f"modules_to_save={config['modules_to_save']}: vLLM loads only "
                                                   "the LoRA matrices; train without modules_to_save"))
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append(Problem("bias", f"bias={config.get('bias')!r}, lora_bias={config.get('lora_bias')!r}: "
                                        "vLLM needs bias='none' and no lora_bias"))
    used = [label for flag, label in UNSUPPORTED_FLAGS.items() if config.get(flag)]
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in PLAIN_INITS:
        used.append(f"init_lora_weights={init!r}")
    if used:
        problems.append(Problem("features", f"vLLM does not implement {', '.join(used)}"))
    return problems


def local_base_config(base: str | None) -> dict | None:
    path = Path(base) / "config.json" if base else None
    return json.loads(path.read_text()) if path and path.is_file() else None


def tensor_problems(header: dict[str, dict], config: dict, base_config: dict | None) -> list[Problem]:
    problems, found = [], {}  # module path -> {"A": shape, "B": shape}
    shapes = linear_shapes(base_config) if base_config else {}
    expected = expected_modules()
    for name, meta in header.items():
        parsed = lora_tensor_name(name)
        if parsed is None:
            problems.append(Problem("tensor_names", f"{name} is not a lora_A/lora_B weight (vLLM: unsupported LoRA weight)"))
            continue
        module, side = parsed
        if meta["dtype"] not in FLOAT_DTYPES:
            problems.append(Problem("dtype", f"{name} is {meta['dtype']}; vLLM takes {', '.join(FLOAT_DTYPES.values())}"))
        found.setdefault(module, {})[side] = meta["shape"]
    unexpected = sorted({module.rsplit(".", 1)[-1] for module in found} - expected)
    if unexpected:
        problems.append(Problem("modules", f"{', '.join(unexpected)} {'is' if len(unexpected) == 1 else 'are'} not among "
                                           f"the modules vLLM expects ({', '.join(sorted(expected))})"))
    for module, sides in sorted(found.items()):
        if set(sides) != {"A", "B"}:
            problems.append(Problem("pairs", f"{module} has lora_{''.join(sides)} only"))
            continue
        kind = module.rsplit(".", 1)[-1]
        rank = pattern_rank(config, module)
        if kind in shapes:
            in_features, out_features = shapes[kind]
            want = {"A": [rank, in_features], "B": [out_features, rank]}
            for side in "AB":
                if sides[side] != want[side]:
                    problems.append(Problem("shapes", f"{module}.lora_{side} is {sides[side]}, the base model "
                                                      f"needs {want[side]}"))
    return problems


def pattern_rank(config: dict, module: str) -> int:
    """The module's rank: rank_pattern's first key matching a dotted suffix of its name (PEFT's rule), else r."""
    for key, rank in (config.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return rank
    return config["r"]
