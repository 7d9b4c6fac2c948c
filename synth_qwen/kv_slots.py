"""The key/value cache of the inference worker's continuous batch (imported only by the worker).

Per layer one buffer [slot, head, column, dim] with room to grow. Rows are aligned on a shared
write column `end`: a row of length L holds columns end-L .. end-1, and each decode step writes
column `end` of every slot in place (transformers' DynamicCache concatenates instead, copying the
whole cache at every step, which made 32 concurrent chats slower than 16). A joining row is written
into a free slot, touching only its own columns; attention skips the columns left of every live
row; the buffers are copied only to grow (more slots, or room on the right).

Rows that begin with the same first message (Crafter's system prompt and tools: ~600 of ~800
prompt tokens) keep only the rest in their slot once two of them are live; the first message's
key/values are held once (`shared`) and each decode step reads them once for all those rows
(`cascade_attention`: the two parts weighted by their softmax sums), instead of once per row.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

GROWTH_COLUMNS = 256  # room added on the right at each regrowth: one copy per this many decode steps


class Slots:
    def __init__(self, like: list[tuple]):
        """Empty buffers for the model that made `like` (a prefilled row: per layer (keys, values))."""
        self.like = like[0][0]  # [1, head, L, dim]: dtype, device, heads, dim
        self.layers = len(like)
        self.keys = self.values = self.mask = None
        self.end = 0
        self.firsts: dict[int, int] = {}  # live slot -> its first column
        self.first_ids: dict[int, tuple] = {}  # live slot -> the ids of its first message
        self.shared_ids: tuple = ()  # the first message the sharing rows begin with ...
        self.shared: list[tuple] = []  # ... its key/values per layer, [1, head, P, dim]
        self.sharing: set[int] = set()  # live slots that hold only what follows it
        self.rows = 0  # slots the next decode step runs: up to the last live one
        self.regrow(1, GROWTH_COLUMNS, 0)

    @property
    def low(self) -> int:
        """The first column any live row uses: attention starts here."""
        return min(self.firsts.values(), default=self.end)

    def place(self, slot: int, layers: list[tuple], first: tuple = ()) -> None:
        """Write a prefilled row (per layer (keys, values), each [1, head, L, dim]) into `slot`.
        `first`: the ids its first message spans. Once two live rows begin with the same one (and
        no other is shared), they keep only what follows it and read it from the shared block; alone,
        a row keeps all of it (one attention call is cheaper than two over the same columns)."""
        alike = [other for other, ids in self.first_ids.items() if first and ids == first]
        if alike and (first == self.shared_ids or not self.sharing):
            if first != self.shared_ids:
                self.shared_ids, self.shared = first, [(k[:, :, :len(first)], v[:, :, :len(first)]) for k, v in layers]
            for other in alike:
                self.drop_first(other)
            layers = [(k[:, :, len(first):], v[:, :, len(first):]) for k, v in layers]
            self.sharing.add(slot)
        length = layers[0][0].shape[2]
        self.fit(slot + 1, length)
        start = self.end - length
        for index, (keys, values) in enumerate(layers):
            self.keys[index][slot, :, start:self.end] = keys[0]
            self.values[index][slot, :, start:self.end] = values[0]
        self.mask[slot] = 0
        self.mask[slot, start:self.end] = 1
        self.firsts[slot] = start
        self.first_ids[slot] = first

    def drop_first(self, slot: int) -> None:
        """From now on `slot` reads its first message from the shared block (no copy: its own
        columns of it are just no longer attended to)."""
        if slot not in self.sharing:
            cut = len(self.shared_ids)
            self.mask[slot, self.firsts[slot]:self.firsts[slot] + cut] = 0
            self.firsts[slot] += cut
            self.sharing.add(slot)

    def free(self, slot: int) -> None:
        del self.firsts[slot], self.first_ids[slot]
        self.sharing.discard(slot)

    def step_cache(self) -> Cache:
        """A transformers Cache for the next decode step of every slot (the model writes column `end`);
        advance() after the model ran."""
        self.fit(0, 0)
        self.rows = max(self.firsts) + 1
        self.mask[:, self.end] = 1
        blocked = torch.tensor(float("-inf"), dtype=self.like.dtype, device=self.like.device)
        zero = torch.zeros((), dtype=self.like.dtype, device=self.like.device)
        self.own_bias = torch.where(self.mask[:self.rows, None, None, self.low:self.end + 1].bool(), zero, blocked)
        shares = torch.tensor([slot in self.sharing for slot in range(self.rows)], device=self.like.device)
        self.shared_bias = torch.where(shares, zero, blocked)[:, None, None, None] if self.sharing else None
        return Cache(layers=[SlotLayer(self, index) for index in range(self.layers)])

    def step_mask(self):
        """The step's attention mask for plain SDPA (no shared block)."""
        return self.mask[:self.rows, self.low:self.end + 1]

    def advance(self) -> None:
        self.end += 1

    def fit(self, slots: int, left: int) -> None:
        """Room for `slots` slots, `left` columns before `end`, and column `end` itself."""
        have_slots, have_columns = self.mask.shape
        if slots <= have_slots and left <= self.end < have_columns:
            return
        new_end = max(self.end - self.low, left)
        self.regrow(max(have_slots, slots + slots // 4), new_end + GROWTH_COLUMNS, new_end)

    def regrow(self, slots: int, columns: int, new_end: int) -> None:
        """New buffers; the live columns move so that they end at `new_end` (the one copy)."""
        low, width = self.low, self.end - self.low
        _, heads, _, dim = self.like.shape

        def moved(old):
            new = self.like.new_zeros(slots, heads, columns, dim)
            if old is not None:
                new[:old.shape[0], :, new_end - width:new_end] = old[:, :, low:self.end]
            return new

        self.keys = [moved(self.keys[i] if self.keys else None) for i in range(self.layers)]
        self.values = [moved(self.values[i] if self.values else None) for i in range(self.layers)]
        mask = torch.zeros(slots, columns, dtype=torch.long, device=self.like.device)
        if self.mask is not None:
            mask[:self.mask.shape[0], new_end - width:new_end] = self.mask[:, low:self.end]
        shift = new_end - self.end
        self.mask, self.end = mask, new_end
        self.firsts = {slot: first + shift for slot, first in self.firsts.items()}


class SlotLayer(CacheLayerMixin):
    """One layer of Slots, as the model sees a cache layer."""

    is_sliding = False

    def __init__(self, slots: Slots, index: int):
        super().__init__()
        self.slots, self.index, self.is_initialized = slots, index, True

    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        slots, keys, values = self.slots, self.slots.keys[self.index], self.slots.values[self.index]
        rows = slots.rows
        keys[:rows, :, slots.end] = key_states[:, :, 0]
        values[:rows, :, slots.end] = value_states[:, :, 0]
        return keys[:rows, :, slots.low:slots.end + 1], values[:rows, :, slots.low:slots.end + 1]

    def get_seq_length(self) -> int:
        return self.slots.end - self.slots.low

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1


CASCADE = "slots_cascade"  # the attention the inference worker's models run (prefill: plain SDPA)


def cascade_attention(module, query, key, value, attention_mask, scaling=None, slots: Slots | None = None, **kwargs):
    """A decode step over Slots: each row attends to its own columns (`key`, `value`) and, if it
    shares, to the shared block, read once for all rows (one attention call, every row's queries
    as one sequence). The two results are weighted by their softmax sums, which is the softmax over
    both parts. Anything else (prefill, a plain `generate`) is SDPA."""
    if slots is None or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    rows, heads, _, dim = query.shape
    kv_heads = heads // module.num_key_value_groups
    q = query.reshape(rows, kv_heads, -1, dim).to(key.dtype)  # query heads beside their key/value head
    out, own_sum = attention_with_log_sum(q, key, value, slots.own_bias, scaling)
    if slots.shared_bias is not None:
        shared_keys, shared_values = slots.shared[module.layer_idx]
        by_head = q.transpose(0, 1).reshape(1, kv_heads, -1, dim)  # every row's queries, per key/value head
        shared_out, shared_sum = attention_with_log_sum(by_head, shared_keys, shared_values, None, scaling)
        shared_out = shared_out.view(kv_heads, rows, -1, dim).transpose(0, 1)
        shared_sum = shared_sum.view(kv_heads, rows, -1, 1).transpose(0, 1) + slots.shared_bias
        own_part = torch.sigmoid(own_sum - shared_sum)  # e^own / (e^own + e^shared); 1 for a row that does not share
        out = torch.lerp(shared_out, out, own_part)
    out = out.reshape(rows, heads, 1, dim).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def attention_with_log_sum(query, key, value, bias, scale):
    """Softmax attention [batch, head, query, dim] and the log of each query's softmax sum,
    [batch, head, query, 1] (CPU SDPA's fused kernel returns both)."""
    out, log_sum = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, attn_mask=bias,
                                                                             scale=scale)
    return out, log_sum.unsqueeze(-1)


AttentionInterface.register(CASCADE, cascade_attention)
AttentionMaskInterface.register(CASCADE, sdpa_mask)
