"""bf16 weights, fp32 arithmetic, for big models on a CPU without bf16 units.

A model shipped in bf16 (Qwen3-4B: 8 GB) cannot be copied to fp32 on a 24 GiB machine (16 GB),
yet a CPU without avx512_bf16/AMX multiplies bf16 slowly. Measured on this 2-core box (a 900 x 2560
by 2560 x 9728 matmul): bf16 4.1 s, weight converted to fp32 then fp32 1.2 s; for one row (decoding)
bf16 38 ms, converted 247 ms. So each bf16 linear layer converts its weight for the one multiply
when it gets FP32_MIN_ROWS rows or more, and keeps bf16 below (its output in fp32 either way). Only one layer's fp32 copy exists at
a time when nothing keeps it: at inference, or in training with gradient checkpointing (otherwise
autograd would keep every layer's copy for the backward pass: the 16 GB again).
"""
from __future__ import annotations

import types

FP32_MIN_ROWS = 64  # measured crossover between the two ways above


def fp32_matmuls(model) -> int:
    """Make every bf16 nn.Linear of `model` (the tied output head included) multiply in fp32 from
    FP32_MIN_ROWS rows up; returns how many layers changed."""
    import torch

    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.bfloat16:
            module.forward = types.MethodType(linear_forward, module)
            changed += 1
    return changed


def linear_forward(self, x):
    from torch.nn.functional import linear

    if x.numel() // x.shape[-1] >= FP32_MIN_ROWS:
        return linear(x.float(), self.weight.float(), None if self.bias is None else self.bias.float())
    return linear(x.to(self.weight.dtype), self.weight, self.bias).float()  # one dtype downstream: the KV cache mixes both
