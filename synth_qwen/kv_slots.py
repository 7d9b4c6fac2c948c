"""The key/value cache of the inference worker's continuous batch (imported only by the worker).

Per layer one buffer [slot, head, column, dim] with room to grow. Rows are aligned on a shared
write column `end`: a row of length L holds columns end-L .. end-1, and each decode step writes
column `end` of every slot in place (transformers' DynamicCache concatenates instead, copying the
whole cache at every step, which made 32 concurrent chats slower than 16). A joining row is written
into a free slot, touching only its own columns; attention skips the columns left of every live
row; the buffers are copied only to grow (more slots, or room on the right).
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

GROWTH_COLUMNS = 256  # room added on the right at each regrowth: one copy per this many decode steps


class Slots:
    def __init__(self, like: list[tuple]):
        """Empty buffers for the model that made `like` (a prefilled row: per layer (keys, values))."""
        self.like = like[0][0]  # [1, head, L, dim]: dtype, device, heads, dim
        self.layers = len(like)
        self.keys = self.values = self.mask = None
        self.end = 0
        self.firsts: dict[int, int] = {}  # live slot -> its first column
        self.regrow(1, GROWTH_COLUMNS, 0)

    @property
    def low(self) -> int:
        """The first column any live row uses: attention starts here."""
        return min(self.firsts.values(), default=self.end)

    def place(self, slot: int, layers: list[tuple]) -> None:
        """Write a prefilled row (per layer (keys, values), each [1, head, L, dim]) into `slot`."""
        length = layers[0][0].shape[2]
        self.fit(slot + 1, length)
        start = self.end - length
        for index, (keys, values) in enumerate(layers):
            self.keys[index][slot, :, start:self.end] = keys[0]
            self.values[index][slot, :, start:self.end] = values[0]
        self.mask[slot] = 0
        self.mask[slot, start:self.end] = 1
        self.firsts[slot] = start

    def free(self, slot: int) -> None:
        del self.firsts[slot]

    def step_cache(self) -> Cache:
        """A transformers Cache for the next decode step of every slot (the model writes column `end`);
        advance() after the model ran."""
        self.fit(0, 0)
        self.mask[:, self.end] = 1
        return Cache(layers=[SlotLayer(self, index) for index in range(self.layers)])

    def step_mask(self):
        return self.mask[:, self.low:self.end + 1]

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
        keys[:, :, slots.end] = key_states[:, :, 0]
        values[:, :, slots.end] = value_states[:, :, 0]
        return keys[:, :, slots.low:slots.end + 1], values[:, :, slots.low:slots.end + 1]

    def get_seq_length(self) -> int:
        return self.slots.end - self.slots.low

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1
