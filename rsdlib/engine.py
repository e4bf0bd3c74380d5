"""The batched two-model engine: KV caches, per-model state, and the one batch scheduler.

Every decoding mode of rsdlib (lockstep RSD/SKD/teacher/student in ``rsdlib.decoding``, exact
speculative RSD in ``rsdlib.speculative``) runs on this engine. They differ only in their
``StepRule``: how a group of new rows is prefilled (``StepRule.start``), what one step emits
(``StepRule.step``) and how the surviving rows are prepared for the next step (``StepRule.advance``).
Everything else is written once, here, in ``run_batches``:

- pending prompts are admitted shortest first; a running batch is refilled when a quarter of its slots
  are free (the new rows are prefilled on their own and merged below the running ones);
- each emitted token is recorded in its row's trace as a ``TokenRecord``;
- a row that emits a stop id or reaches ``max_new_tokens`` ends, is yielded at once and leaves the
  batch (its cache rows are dropped, and columns that became padding in every row are trimmed).

The pieces below it:

- ``GrowingLayer`` / ``new_cache``: a transformers ``DynamicCache`` whose layers append in place into
  buffers grown by ``CACHE_CHUNK`` positions (never by doubling; ``cache_capacity``).
- ``ModelState``: one model's batched context (KV cache, attention mask, positions) with the row
  operations the scheduler and the step rules need: ``feed``, ``look_ahead``, ``forget_last``
  (speculative roll-back), ``extend`` (refill), ``keep`` (drop ended rows).
- ``prefill``, ``pad_id``, ``model_dtype``: small helpers around a model.

Rows hold STUDENT ids (the trace's vocabulary); a step rule maps them to the teacher's spelling
itself (``VocabBridge.student_to_teacher``). This module knows nothing of modes, configs or traces
beyond the trace's ``add(record)``, ``token_ids`` and ``finish_reason``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple, Protocol, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from rsdlib.attention import SDPA_NAMES

# ----------------------------------------------------------------------------------------------
# KV cache and one model's batched state
# ----------------------------------------------------------------------------------------------
CACHE_CHUNK = 256  # KV cache positions a buffer grows by; capacity = live width rounded up to this


def cache_capacity(length: int) -> int:
    """Buffer positions for ``length`` live ones: the next multiple of CACHE_CHUNK (never 2x the width)."""
    return max(CACHE_CHUNK, -(-length // CACHE_CHUNK) * CACHE_CHUNK)


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends in place into a buffer grown by fixed chunks.

    transformers' DynamicLayer concatenates the whole cache at every step (a full copy per token);
    this layer writes into a buffer of ``cache_capacity(width)`` positions (at most CACHE_CHUNK - 1 spare
    columns per row, where doubling could hold twice the live width: ~90 GB of cache at the paper's
    batch becomes ~180 GB) and exposes ``keys``/``values`` as views. A full buffer is copied into one
    a chunk larger: at 8k tokens that is 32 copies per layer, each costing about one decoding step's
    cache read. Row selection, merging, left trimming and cropping keep the buffer in sync.
    """

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._len = 0
            self._kbuf = self._vbuf = None
        n = key_states.shape[-2]
        if self._kbuf is None or self._len + n > self._kbuf.shape[-2]:
            self._resize(cache_capacity(self._len + n), key_states, value_states)
        self._kbuf[:, :, self._len : self._len + n] = key_states
        self._vbuf[:, :, self._len : self._len + n] = value_states
        self._set_length(self._len + n)
        return self.keys, self.values

    def _resize(self, capacity, like_k, like_v):
        """New buffers of ``capacity`` positions holding the current content."""
        kbuf = like_k.new_empty(*like_k.shape[:2], capacity, like_k.shape[3])
        vbuf = like_v.new_empty(*like_v.shape[:2], capacity, like_v.shape[3])
        if self._len:
            kbuf[:, :, : self._len] = self.keys
            vbuf[:, :, : self._len] = self.values
        self._kbuf, self._vbuf = kbuf, vbuf

    def _set_length(self, length):
        self._len = length
        self.keys = self._kbuf[:, :, :length]
        self.values = self._vbuf[:, :, :length]

    def _adopt(self, keys, values):
        """Replace the content by (keys, values) of shape (B, H, L, D), copied into fresh buffers."""
        self._len = 0
        self._kbuf = self._vbuf = None  # free the old buffers before allocating the new ones
        self.keys = self.values = None
        self._resize(cache_capacity(keys.shape[-2]), keys, values)
        self._kbuf[:, :, : keys.shape[-2]] = keys
        self._vbuf[:, :, : keys.shape[-2]] = values
        self._set_length(keys.shape[-2])

    def stack_below(self, other: "GrowingLayer", width: int) -> None:
        """Put the rows of ``other`` below ours, both right-aligned in ``width`` columns (left padding zeroed).

        Copies each part once into the new buffer (no intermediate concatenation).
        """
        parts = ((self.keys, self.values), (other.keys, other.values))
        rows = sum(k.shape[0] for k, _ in parts)
        kbuf = self.keys.new_empty(rows, self.keys.shape[1], cache_capacity(width), self.keys.shape[3])
        vbuf = self.values.new_empty(rows, self.values.shape[1], cache_capacity(width), self.values.shape[3])
        start = 0
        for keys, values in parts:
            end, pad = start + keys.shape[0], width - keys.shape[2]
            kbuf[start:end, :, :pad].zero_()  # padding must be finite: attention weighs it by 0
            vbuf[start:end, :, :pad].zero_()
            kbuf[start:end, :, pad:width] = keys
            vbuf[start:end, :, pad:width] = values
            start = end
        self._kbuf, self._vbuf = kbuf, vbuf
        self._set_length(width)

    def place_rows(self, slots: torch.Tensor, other: "GrowingLayer", width: int) -> None:
        """Overwrite rows ``slots`` (a (n,) index) with ``other``'s rows, right-aligned in our ``width`` columns.

        In place: only those rows are written (their columns left of ``other``'s are zeroed: padding
        must be finite). ``width`` must be our live width and at least ``other``'s.
        """
        n, cols = other.keys.shape[0], other.keys.shape[-2]
        for buf, theirs in ((self._kbuf, other.keys), (self._vbuf, other.values)):
            block = theirs.new_zeros(n, theirs.shape[1], width, theirs.shape[3])
            block[:, :, width - cols:] = theirs
            buf[slots, :, :width] = block

    def pad_left(self, n: int) -> None:
        """Add ``n`` zero columns on the left of every row (a copy: only when a longer prompt must fit)."""
        if self.is_initialized and self._len and n > 0:
            zeros = self.keys.new_zeros(*self.keys.shape[:2], n, self.keys.shape[3])
            self._adopt(torch.cat([zeros, self.keys], -2), torch.cat([zeros, self.values], -2))

    def batch_select_indices(self, indices):
        if self.is_initialized and self._len:
            self._adopt(self.keys[indices], self.values[indices])

    def drop_left(self, n):
        """Forget the first ``n`` positions of every row (columns that are padding everywhere)."""
        if self.is_initialized and self._len and n > 0:
            self._adopt(self.keys[:, :, n:], self.values[:, :, n:])

    def crop(self, max_length):
        """Negative: drop that many positions from the end (transformers 5); positive: keep that many."""
        if max_length < 0:
            max_length = self.get_seq_length() + max_length
        if self.is_initialized and max_length < self._len:
            self._set_length(max(0, max_length))  # later appends overwrite the tail in place


def new_cache():
    """An empty DynamicCache whose layers append in amortised O(1) (see GrowingLayer)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache


class ModelState:
    """One model's batched context: KV cache, 2-D attention mask over the cache, next position per row."""

    def __init__(self, model, pad_id: int):
        self.model = model
        self.device = model.device
        self.pad_id = pad_id
        self.cache = None
        self.mask = None  # (B, L) 1 = real token
        self.next_pos = None  # (B,) number of real tokens so far

    @torch.no_grad()
    def feed(self, rows: list[list[int]], keep: int = 1) -> torch.Tensor:
        """Append each row's new ids (left-padded to a common width) and return last-position logits (B, V).

        With ``keep`` > 1, return the logits of the last ``keep`` positions instead, (B, keep, V).
        """
        width = max(len(r) for r in rows)
        batch = len(rows)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)  # (B, W), rows right-aligned
        new_mask = torch.zeros((batch, width), dtype=torch.long)  # (B, W)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
                new_mask[i, width - len(r) :] = 1
        return self.feed_ids(ids.to(self.device), new_mask.to(self.device), keep)

    @torch.no_grad()
    def feed_ids(self, ids: torch.Tensor, new_mask: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """``feed`` on device tensors: ids (B, W), new_mask (B, W) 1 = real (a 0 column is a hole in that row).

        No host work per row and no host sync of ours. A one-token step of an sdpa model with full
        attention only passes its padding mask as the 4-D boolean mask sdpa reads (``decode_mask``), so
        transformers neither inspects the mask on the host nor copies the KV heads (``repeat_kv``).
        """
        batch = ids.shape[0]
        if self.cache is None:
            self.cache = new_cache()
            self.mask = new_mask
            start = torch.zeros(batch, dtype=torch.long, device=self.device)
        else:
            self.mask = torch.cat([self.mask, new_mask], dim=1)  # (B, L + W)
            start = self.next_pos
        positions = start[:, None] + (new_mask.cumsum(-1) - 1).clamp_min(0)  # (B, width)
        self.next_pos = start + new_mask.sum(-1)
        mask = self.mask
        if ids.shape[1] == 1 and self.cache.get_seq_length() > 0 and decode_mask_ok(self.model):
            mask = self.mask.bool()[:, None, None, :]  # (B, 1, 1, L): the query attends to the row's real columns
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=keep,
        )
        self.cache = out.past_key_values
        return out.logits[:, -1, :] if keep == 1 else out.logits[:, -keep:, :]

    @torch.no_grad()
    def look_ahead(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """Logits after each of each row's tokens, WITHOUT keeping them: [(len(row), V)] per row.

        The tokens are fed, read and rolled back (``forget_last``); the cache, mask and positions end
        as they were. Rows with no tokens get an empty tensor.
        """
        width = max(len(r) for r in rows)
        if width == 0:
            return [torch.empty(0, 0) for _ in rows]
        logits = self.feed(rows, keep=width)
        logits = logits[:, None, :] if width == 1 else logits  # (B, W, V)
        self.forget_last([len(r) for r in rows])
        return [logits[b, width - len(r):] for b, r in enumerate(rows)]

    def forget_last(self, counts: Sequence[int]) -> None:
        """Roll back: hide each row's last ``counts[b]`` real tokens (rejected drafts) from attention.

        The hidden columns stay in the cache as padding (rows roll back by different amounts) and
        trailing columns hidden in every row are cropped away. Positions move back with them.
        """
        for b, n in enumerate(counts):
            if n:
                real = self.mask[b].nonzero().squeeze(-1)
                self.mask[b, real[-n:]] = 0
        self.next_pos = self.next_pos - torch.tensor(list(counts), device=self.device)
        live = self.mask.any(0).nonzero()
        length = int(live[-1]) + 1 if len(live) else 0
        if length < self.mask.shape[1]:
            self.cache.crop(length - self.mask.shape[1])  # negative: remove that many (transformers 5)
            self.mask = self.mask[:, :length]

    def extend(self, other: "ModelState") -> None:
        """Append the rows of ``other`` (a freshly prefilled state) below ours, left-padding the shorter cache."""
        width = max(self.mask.shape[1], other.mask.shape[1])

        def pad_left(t, n):  # (B, L) mask
            return t if n == 0 else torch.cat([t.new_zeros(t.shape[0], n), t], dim=1)

        pad_a, pad_b = width - self.mask.shape[1], width - other.mask.shape[1]
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.stack_below(theirs, width)
        self.mask = torch.cat([pad_left(self.mask, pad_a), pad_left(other.mask, pad_b)])
        self.next_pos = torch.cat([self.next_pos, other.next_pos])

    def place(self, slots: torch.Tensor, other: "ModelState") -> None:
        """Put ``other``'s rows (freshly prefilled) into rows ``slots`` of ours, in place, right-aligned.

        Only those rows are written; if ``other`` is wider than we are, every row first gets
        left padding (a copy, once per longer prompt).
        """
        slots = slots.to(self.device)
        grow = other.mask.shape[1] - self.mask.shape[1]
        if grow > 0:
            for layer in self.cache.layers:
                layer.pad_left(grow)
            self.mask = torch.cat([self.mask.new_zeros(self.mask.shape[0], grow), self.mask], dim=1)
        width, cols = self.mask.shape[1], other.mask.shape[1]
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.place_rows(slots, theirs, width)
        rows = self.mask.new_zeros(len(slots), width)
        rows[:, width - cols:] = other.mask
        self.mask[slots] = rows
        self.next_pos[slots] = other.next_pos

    def retire_columns(self, first_live: int, upcoming: int = 0) -> None:
        """``run_slots``: drop the first ``first_live`` columns (no live row reads them) once they reach
        CACHE_CHUNK (a copy of the cache, so not at every step). ``upcoming`` is unused (StaticState needs it)."""
        if CACHE_CHUNK <= first_live < self.mask.shape[1]:
            for layer in self.cache.layers:
                layer.drop_left(first_live)
            self.mask = self.mask[:, first_live:]

    def keep(self, index: torch.Tensor) -> None:
        """Drop finished rows: keep only ``index`` (sorted row numbers) and trim all-padding columns."""
        index = index.to(self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.next_pos = self.next_pos[index]
        live_cols = self.mask.any(0).nonzero()
        first = int(live_cols[0]) if len(live_cols) else 0
        if first > 0:  # columns that are padding in every remaining row cost attention for nothing
            for layer in self.cache.layers:
                layer.drop_left(first)
            self.mask = self.mask[:, first:]


STATIC_ROUND = 64  # StaticState: buffer positions are a multiple of this (every step attends over all of them)


class SlotLayer(DynamicLayer):
    """A KV cache layer of FIXED shape (B, H, capacity, D), written in place at a column all layers share.

    ``update`` writes the step's one new column at ``column`` (a (1,) long tensor on the device, shared with
    the other layers and owned by ``StaticState``) and returns the whole buffers: the shapes and addresses
    never change from one step to the next, which is what a compiled forward needs (``torch.compile``;
    CUDA graphs on CUDA). Columns right of the write column, and left of a row's first token, are masked.
    """

    is_compileable = True

    def setup(self, keys: torch.Tensor, values: torch.Tensor, column: torch.Tensor) -> None:
        """Adopt ``keys``/``values`` (B, H, capacity, D) as the buffers and ``column`` as the write column."""
        self.keys, self.values, self.column = keys, values, column
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        if not torch.compiler.is_compiling():  # fixed addresses: a compiled graph reads them in place
            torch._dynamo.mark_static_address(keys)
            torch._dynamo.mark_static_address(values)

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys.index_copy_(2, self.column, key_states)  # (B, H, 1, D) into column `column`
        self.values.index_copy_(2, self.column, value_states)
        return self.keys, self.values

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.keys.shape[-2]


# Graphs torch.compile may make of the models' forwards in one process before it gives up (torch's default, 8,
# is far too few here: see compiled_forward).
RECOMPILE_LIMIT = 64


def compiled_forward(model):
    """``torch.compile`` of a model's forward (one per model; CUDA: mode "reduce-overhead", CUDA graphs).

    Each batch shape of a run is one graph per model (``dynamic=False``: the static buffers' shape), and
    dynamo counts graphs per code object. transformers' deprecation decorator wraps every model's forward in
    one and the same function, so the teacher, the student and every run of the process (each trace job and
    its prefix run) share one count. Past torch's ``recompile_limit`` (8 by default: four runs of a pair)
    dynamo runs the forward eagerly from then on, with one warning, and the "compiled" decoder is the eager
    static one, slower than the dynamic cache. The limit is raised to ``RECOMPILE_LIMIT`` (never lowered).
    """
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    fn = getattr(model, "_rsdlib_compiled_forward", None)
    if fn is None:
        mode = "reduce-overhead" if model.device.type == "cuda" else None
        fn = torch.compile(model.forward, dynamic=False, mode=mode)
        model._rsdlib_compiled_forward = fn
    return fn


def _static_buffers(owner, state: ModelState, capacity: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zeroed (keys, values) buffers (B, H, capacity, D) per layer for ``owner`` (a StaticState of ``state.model``).

    The buffers of the model's previous StaticState are reused when their shapes match and that state is
    done (released when its batch or run ends, or gone): a compiled forward then sees the same addresses
    and neither compiles nor records its CUDA graph again. "Done" does not wait for the garbage collector:
    a finished state can live on (a loop variable, a reference cycle), and on a GPU a second set of
    buffers beside the first is a second KV cache. For the same reason a done state's buffers of another
    shape are let go before the new ones are allocated (a released state holds none itself)."""
    import weakref

    shapes = [((*src.keys.shape[:2], capacity, src.keys.shape[3]), (*src.values.shape[:2], capacity,
                                                                    src.values.shape[3]), src.keys.dtype,
               src.keys.device) for src in state.cache.layers]
    kept = getattr(state.model, "_rsdlib_static_buffers", None)
    previous = kept[1]() if kept is not None else None
    done = kept is not None and (previous is None or previous.released)
    if done and kept[0] == shapes:
        buffers = kept[2]
        for keys, values in buffers:
            keys.zero_()
            values.zero_()
    else:
        if done:  # another shape: free the done state's buffers before allocating (no two caches at once)
            del state.model._rsdlib_static_buffers, kept
        buffers = [(torch.zeros(k, dtype=dtype, device=device), torch.zeros(v, dtype=dtype, device=device))
                   for k, v, dtype, device in shapes]
    try:
        state.model._rsdlib_static_buffers = (shapes, weakref.ref(owner), buffers)
    except AttributeError:
        pass
    return buffers


class StaticState:
    """One model's batched context in buffers of fixed shape: the decode step a compiled forward can run.

    Made from a freshly prefilled ``ModelState`` (``Decoder(cache="static")``): every row's KV lives in
    (B, H, capacity, D) buffers, allocated once for the run's widest row (``capacity``: the longest prompt in
    this model's ids + ``max_new_tokens`` + margins, as ``Decoder.cache_users`` sizes it), with rows
    right-aligned at a write column ``col`` all rows share (a row's holes and left padding are masked).
    Each one-token step writes column ``col`` in place and attends over the whole buffer through a
    (B, 1, 1, capacity) boolean mask. Rows are refilled in place (``place``); ended rows cost nothing to
    retire. The content is moved (one copy of the live columns) only when the write column must move:
    left when the buffer's end is reached (``retire_columns``: the columns no live row reads are dropped),
    right when a refilled prompt is wider than the write column. Same interface as ``ModelState`` for
    ``run_slots`` and ``LockstepRule``; same logits up to float rounding (the masked columns weigh 0).
    """

    released = False  # set by release(): its run has ended and its buffers may serve the next run

    def __init__(self, state: ModelState, capacity: int, compiled: bool = False):
        if not decode_mask_ok(state.model):
            cfg = getattr(state.model, "config", None)
            raise ValueError(
                "a static KV cache (Decoder(cache='static') / compile) needs a model on sdpa attention with full "
                f"attention in every layer; {type(state.model).__name__} has attention "
                f"{getattr(cfg, '_attn_implementation', None)!r}, layer types "
                f"{sorted(set(getattr(cfg, 'layer_types', None) or ['full_attention']))}: use cache='dynamic'")
        self.model, self.device, self.pad_id, self.compiled = state.model, state.device, state.pad_id, compiled
        batch, width = state.mask.shape
        self.capacity = -(-max(int(capacity), width + 1) // STATIC_ROUND) * STATIC_ROUND
        self.col = width  # the next column written (host mirror of self.column)
        self.column = torch.tensor([width], dtype=torch.long, device=self.device)
        self.mask = state.mask.new_zeros(batch, self.capacity)  # (B, capacity) 1 = a real token
        self.mask[:, :width] = state.mask
        self.next_pos = state.next_pos.clone()
        self.cache = DynamicCache()
        buffers = _static_buffers(self, state, self.capacity)
        layers = []
        for src, (keys, values) in zip(state.cache.layers, buffers):
            keys[:, :, :width], values[:, :, :width] = src.keys, src.values
            layer = SlotLayer()
            layer.setup(keys, values, self.column)
            layers.append(layer)
        self.cache.layers = layers
        # eager: the module call (its hooks run); compiled: the compiled forward (hooks are not traced)
        self.forward = compiled_forward(state.model) if compiled else state.model

    def release(self) -> None:
        """Its batch is over: let go of the KV buffers (the model keeps them for its next StaticState, which
        takes them if the shape matches and frees them before allocating if not)."""
        self.released = True
        self.cache.layers = []

    @torch.no_grad()
    def feed_ids(self, ids: torch.Tensor, new_mask: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """One column per row: ids (B, 1), new_mask (B, 1) (0: a hole in that row). Returns logits (B, V)."""
        if self.released:
            raise RuntimeError("StaticState used after its run released it (its buffers may serve another run)")
        if ids.shape[1] != 1 or keep != 1:
            raise ValueError(f"a static cache takes one token per row per step, got {tuple(ids.shape)}, keep={keep}")
        if self.col >= self.capacity:
            raise RuntimeError(f"static KV cache full ({self.capacity} columns): retire_columns was not called")
        self.mask[:, self.col] = new_mask[:, 0]
        positions = self.next_pos[:, None]  # (B, 1): a hole repeats the row's next position (it is masked)
        self.next_pos = self.next_pos + new_mask[:, 0]
        out = self.forward(input_ids=ids, attention_mask=self.mask.bool()[:, None, None, :], position_ids=positions,
                           past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.col += 1
        self.column.add_(1)
        logits = out.logits[:, -1, :]
        return logits.clone() if self.compiled else logits  # CUDA graphs reuse their output memory

    def _shift(self, delta: int) -> None:
        """Move every row's columns ``delta`` to the right (negative: left), and the write column with them."""
        col = self.col
        if delta == 0:
            return
        if not 0 <= col + delta <= self.capacity:
            raise RuntimeError(f"static KV cache: cannot move {col} columns by {delta} in {self.capacity}")
        src, dst = slice(max(0, -delta), col), slice(max(0, delta), col + delta)  # the live columns, moved
        for layer in self.cache.layers:
            for buf in (layer.keys, layer.values):
                buf[:, :, dst] = buf[:, :, src].clone()
        self.mask[:, dst] = self.mask[:, src].clone()
        if delta < 0:
            self.mask[:, col + delta:] = 0
        else:
            self.mask[:, :delta] = 0
        self.col = col + delta
        self.column.fill_(self.col)

    def retire_columns(self, first_live: int, upcoming: int) -> None:
        """Before ``upcoming`` more steps: if they would pass the buffer's end, drop the ``first_live`` columns
        no live row reads (moving the rest left)."""
        if self.col + upcoming > self.capacity:
            self._shift(-min(first_live, self.col))
        if self.col + upcoming > self.capacity:
            raise RuntimeError(f"static KV cache: {self.col} live columns + {upcoming} steps exceed its "
                               f"{self.capacity} (a row wider than Decoder.cache_users planned)")

    def place(self, slots: torch.Tensor, other: "ModelState") -> None:
        """Write ``other``'s rows (freshly prefilled) into rows ``slots``, in place, ending at the write column."""
        slots = slots.to(self.device)
        width = other.mask.shape[1]
        if width > self.col:  # a wider prompt than the write column: move everyone right (once)
            self._shift(width - self.col)
        start, end = self.col - width, self.col
        rows = self.mask.new_zeros(len(slots), self.capacity)
        rows[:, start:end] = other.mask
        self.mask[slots] = rows
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys[slots, :, start:end] = theirs.keys
            mine.values[slots, :, start:end] = theirs.values
        self.next_pos[slots] = other.next_pos

    def keep(self, index: torch.Tensor) -> None:
        """Keep only rows ``index`` (new, smaller buffers: a copy; a compiled run never shrinks its batch)."""
        index = index.to(self.device)
        for layer in self.cache.layers:
            layer.setup(layer.keys[index], layer.values[index], self.column)
        try:
            self.model._rsdlib_static_buffers = None  # the full-size buffers are free now: do not keep them
        except AttributeError:
            pass
        self.mask = self.mask[index]
        self.next_pos = self.next_pos[index]


def decode_mask_ok(model) -> bool:
    """Whether a one-token step may pass the padding mask as sdpa's 4-D boolean mask (``feed_ids``):
    sdpa attention (transformers' or ``rsdlib.attention``'s) and full attention in every layer (a sliding window
    needs transformers' own mask)."""
    ok = getattr(model, "_rsdlib_decode_mask_ok", None)
    if ok is None:
        cfg = getattr(model, "config", None)
        types = getattr(cfg, "layer_types", None) or ["full_attention"]
        ok = (getattr(cfg, "_attn_implementation", None) in SDPA_NAMES
              and all(t == "full_attention" for t in types) and not getattr(cfg, "use_sliding_window", False))
        try:
            model._rsdlib_decode_mask_ok = ok
        except AttributeError:
            pass
    return ok


def model_dtype(model) -> torch.dtype:
    """The dtype of a model's activations (and so of its KV cache)."""
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(model.parameters()).dtype


def pad_id(model, fallback: int = 0) -> int:
    """The id a model's rows are left-padded with (masked out, so any id works): pad, else eos, else bos."""
    cfg = model.config
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(cfg, name, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return fallback


def prefill(model, rows: list[list[int]]) -> tuple[ModelState, torch.Tensor]:
    """A fresh ``ModelState`` of ``model`` holding ``rows`` (the model's own ids), and the logits after
    each row's last token, (B, V)."""
    state = ModelState(model, pad_id(model))
    return state, state.feed(rows)


# ----------------------------------------------------------------------------------------------
# Rows, batches, step rules and the scheduler
# ----------------------------------------------------------------------------------------------
class TokenRecord(NamedTuple):
    """What a trace records about one emitted token (``rsdlib.decoding.Trace`` has one list per field).

    Probabilities are of the emitted token, NaN for a model that was not run.
    """

    token: int  # student id
    source: int  # 0: written by the teacher, 1: by the student
    fallback: bool  # the proposal was rejected and the fallback model wrote the token
    teacher_prob: float  # P_t(token) under the distribution sampled from (tempered, top-p)
    student_prob: float  # P_s(token), likewise
    student_prob_raw: float  # P_s(token) at T = 1, no top-p
    student_entropy: float  # entropy (nats) of the student's raw distribution at this position


@dataclass
class Row:
    """One sequence of a batch: its prompt, its growing trace and its own random generator."""

    index: int  # position of its prompt in the run's prompt list
    prompt: list[int]  # student ids
    trace: Any  # rsdlib.decoding.Trace (anything with add(record), token_ids and finish_reason)
    generator: torch.Generator  # seeded with the row's seed (speculative rounds draw from it)
    seed: int = 0  # the row's seed: lockstep steps draw ``counter_uniforms(seed, step)``

    @property
    def last_token(self) -> int:
        """The row's latest token: the last one emitted, or the prompt's last before any."""
        return (self.trace.token_ids or self.prompt)[-1]


@dataclass
class Batch:
    """The rows decoded together and each model's state over them (row b of a state is ``rows[b]``).

    ``teacher_logits`` / ``student_logits`` are the logits a rule keeps for its next step ((B, V) each;
    lockstep keeps them, speculative decoding does not); a model that does not run has None throughout.
    """

    rows: list[Row]
    teacher: ModelState | None = None
    student: ModelState | None = None
    teacher_logits: torch.Tensor | None = None
    student_logits: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # a rule's per-row device tensors, (B, ...)

    def place(self, slots: torch.Tensor, other: "Batch") -> None:
        """``run_slots``: put ``other``'s rows (freshly started) into rows ``slots``, in place."""
        for mine, theirs in ((self.teacher, other.teacher), (self.student, other.student)):
            if mine is not None:
                mine.place(slots, theirs)
        for name in ("teacher_logits", "student_logits"):
            mine = getattr(self, name)
            if mine is not None:
                mine[slots.to(mine.device)] = getattr(other, name)
        for name, tensor in self.extra.items():
            tensor[slots.to(tensor.device)] = other.extra[name]

    def select(self, index: torch.Tensor) -> None:
        """``run_slots``: keep only rows ``index`` (sorted), logits and extras included (a copy of the cache)."""
        for state in (self.teacher, self.student):
            if state is not None:
                state.keep(index)
        for name in ("teacher_logits", "student_logits"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name)[index.to(getattr(self, name).device)])
        self.extra = {name: t[index.to(t.device)] for name, t in self.extra.items()}
        self.rows = [self.rows[j] for j in index.tolist()]

    def extend(self, other: "Batch") -> None:
        """Append ``other``'s rows (freshly started by the same rule) below ours."""
        for mine, theirs in ((self.teacher, other.teacher), (self.student, other.student)):
            if mine is not None:
                mine.extend(theirs)
        if self.teacher_logits is not None:
            self.teacher_logits = torch.cat([self.teacher_logits, other.teacher_logits])
        if self.student_logits is not None:
            self.student_logits = torch.cat([self.student_logits, other.student_logits])
        self.rows = self.rows + other.rows

    def keep(self, kept: list[int]) -> None:
        """Keep only rows ``kept`` (sorted positions), in every state. The kept logits are stale after a
        step, so they are dropped: ``StepRule.advance`` computes the next ones."""
        index = torch.tensor(kept, dtype=torch.long)
        for state in (self.teacher, self.student):
            if state is not None:
                state.keep(index)
        self.teacher_logits = self.student_logits = None
        self.rows = [self.rows[j] for j in kept]


class StepRule(Protocol):
    """How a decoding mode starts rows and advances a batch; ``run_batches`` does the rest."""

    def start(self, rows: list[Row]) -> Batch:
        """Prefill the prompts of new rows: a batch of just these rows, ready for ``step``."""
        ...

    def step(self, batch: Batch) -> list[list[TokenRecord]]:
        """One step of every row: the tokens each row emits, in order (lockstep: one per row)."""
        ...

    def advance(self, batch: Batch, kept: list[int]) -> None:
        """Make the batch ready for the next step after ended rows left it (feed the tokens just emitted,
        roll back rejected drafts). ``kept[b]``: the position in the stepped batch of what is now row b."""
        ...

    def recorded(self, tokens: int) -> None:
        """Told after each step how many tokens the scheduler recorded (an ending row records up to its
        stop). For statistics; the default ignores it."""


@dataclass
class _Pending:
    """Prompts not yet admitted, shortest on top (ties: lowest index first)."""

    prompts: Sequence[Sequence[int]]
    order: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.order = sorted(range(len(self.prompts)), key=lambda i: (-len(self.prompts[i]), i))

    def pop(self, n: int) -> list[int]:
        return [self.order.pop() for _ in range(min(n, len(self.order)))]


def run_batches(
    prompts: Sequence[Sequence[int]],
    seeds: Sequence[int],
    rule: StepRule,
    *,
    new_trace: Callable[[list[int], int], Any],
    stop_ids: Sequence[int],
    max_new_tokens: int,
    batch_size: int,
    refill: bool = True,
) -> Iterator[tuple[int, Any]]:
    """Decode every prompt with ``rule``; yield (prompt index, trace) as each trace ends.

    At most ``batch_size`` rows run at once. ``new_trace(prompt ids, seed)`` makes a row's empty trace;
    the row's generator is ``torch.Generator().manual_seed(seed)``. A row ends when it emits one of
    ``stop_ids`` (kept in the trace, ``finish_reason`` "stop") or holds ``max_new_tokens`` tokens
    ("length"). With ``refill`` an ended row's slot goes to a pending prompt whenever a quarter of the
    slots are free; without it, a new batch starts only when the running one is empty.
    """
    stop = frozenset(int(s) for s in stop_ids)
    pending = _Pending(prompts)
    batch: Batch | None = None
    while pending.order or batch is not None:
        # 1. admit pending prompts: into an empty batch, or into a running one once enough slots are free
        free = batch_size - (len(batch.rows) if batch is not None else 0)
        if pending.order and (batch is None or (refill and free >= max(1, batch_size // 4))):
            rows = []
            for i in pending.pop(free):
                prompt, seed = [int(x) for x in prompts[i]], int(seeds[i])
                rows.append(Row(i, prompt, new_trace(list(prompt), seed), torch.Generator().manual_seed(seed), seed))
            started = rule.start(rows)  # prefilled on their own...
            if batch is None:
                batch = started
            else:
                batch.extend(started)  # ...then merged below the running rows
        # 2. one step of the rule: the tokens each row emits
        emitted = rule.step(batch)
        # 3. record them; a row ends at a stop id or at max_new_tokens, and is handed out at once
        kept, recorded = [], 0
        for j, (row, records) in enumerate(zip(batch.rows, emitted)):
            ended = False
            for record in records:
                row.trace.add(record)
                recorded += 1
                if record.token in stop or len(row.trace.token_ids) >= max_new_tokens:
                    row.trace.finish_reason = "stop" if record.token in stop else "length"
                    ended = True
                    break
            if ended:
                yield row.index, row.trace
            else:
                kept.append(j)
        rule.recorded(recorded)
        # 4. drop the ended rows from every state, then prepare the others' next step
        if not kept:
            batch = None
            continue
        if len(kept) < len(batch.rows):
            batch.keep(kept)
        rule.advance(batch, kept)


# ----------------------------------------------------------------------------------------------
# The slot scheduler: the same job, with the rows' bookkeeping on the device
# ----------------------------------------------------------------------------------------------
FLUSH_EVERY = 16  # run_slots: steps between two reads of the device (records, finished rows)
RECORD_FIELDS = 8  # token, recorded?, then TokenRecord's six numbers: source ... student_entropy


class SlotRule(Protocol):
    """A one-token-per-step rule whose step is tensors only (``run_slots``)."""

    def start(self, rows: list[Row]) -> Batch:
        """Prefill new rows: a batch of just these rows (``Batch.extra`` holds the rule's per-row tensors)."""
        ...

    def step_slots(self, batch: Batch, seeds: torch.Tensor, counters: torch.Tensor):
        """One step of every row: (tokens (B,), emitted (B,) bool, values (B, 6) float64), with ``values``
        TokenRecord's fields after ``token``. A row with emitted False took no step (its draw is unused)."""
        ...

    def feed_slots(self, batch: Batch, tokens: torch.Tensor, emitted: torch.Tensor) -> None:
        """Feed the step's tokens: the logits of the next step."""
        ...


def _record(trace, records) -> None:
    """Append a row's recorded steps ((n, RECORD_FIELDS) float64 array) to its trace."""
    for token, _, source, fallback, p_t, p_s, p_raw, h in records.tolist():
        trace.add(TokenRecord(int(token), int(source), bool(fallback), p_t, p_s, p_raw, h))


def run_slots(
    prompts: Sequence[Sequence[int]],
    seeds: Sequence[int],
    rule: SlotRule,
    *,
    new_trace: Callable[[list[int], int], Any],
    stop_ids: Sequence[int],
    max_new_tokens: int,
    batch_size: int,
    refill: bool = True,
    flush_every: int = FLUSH_EVERY,
    on_batch: Callable[[Batch], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """``run_batches`` for a ``SlotRule``, with no per-row host work and no host sync inside a window of steps.

    The batch is a fixed set of slots. Each step, on the device: the rule's step (its randomness is
    ``counter_uniforms(row seed, row step)``: a row's tokens do not depend on its neighbours), the
    record written into a preallocated (window, B, 8) buffer, the rows' lengths, and their end (stop
    id or ``max_new_tokens``) as a flag. Every ``flush_every`` steps (sooner when a row reaches its
    length limit, which the host knows) ONE copy brings the records and flags to the host: records go
    to the traces, ended traces are yielded, their slots are freed. A freed slot keeps decoding
    (its output is ignored) until a refill writes new rows into it in place (``Batch.place``) once a
    quarter of the slots are free; with nothing left to admit, the batch is compacted to its live rows
    once a quarter of the slots are free. Columns dead in every live row are dropped once they
    reach CACHE_CHUNK. Same traces as ``run_batches`` with the same rule.

    ``on_batch(batch)`` is called on each new batch (not on refills) before its first step: the decoder's
    static cache replaces the batch's states there (``StaticState``). A batch whose states run a compiled
    forward keeps its number of slots to the end (no compaction: a new shape would compile again).
    """
    if flush_every < 1:
        raise ValueError(f"flush_every must be >= 1, got {flush_every}")
    stop_list = sorted({int(s) for s in stop_ids})
    pending = _Pending(prompts)
    batch: Batch | None = None
    slots: list[Row | None] = []  # slot -> its row (None: free)

    def new_rows(n):
        rows = []
        for i in pending.pop(n):
            prompt, seed = [int(x) for x in prompts[i]], int(seeds[i])
            rows.append(Row(i, prompt, new_trace(list(prompt), seed), torch.Generator().manual_seed(seed), seed))
        return rows

    while pending.order or batch is not None:
        # 1. admit pending prompts: a new batch, or a refill of the free slots written in place
        if batch is None:
            slots = new_rows(batch_size)
            batch = rule.start(slots)
            if on_batch is not None:
                on_batch(batch)  # e.g. Decoder(cache="static"): fixed-shape states
            fixed_rows = any(getattr(st, "compiled", False) for st in (batch.teacher, batch.student))
            device = (batch.student or batch.teacher).device
            seed_t = torch.tensor([r.seed for r in slots], dtype=torch.long, device=device)  # (B,)
            length = torch.zeros(len(slots), dtype=torch.long, device=device)  # (B,) tokens recorded
            active = torch.ones(len(slots), dtype=torch.bool, device=device)  # (B,) still recording
            reason = torch.zeros(len(slots), dtype=torch.long, device=device)  # (B,) 1 stop, 2 length
            stop_t = torch.tensor(stop_list, dtype=torch.long, device=device)
        else:
            free = [j for j, r in enumerate(slots) if r is None]
            if pending.order and refill and len(free) >= max(1, len(slots) // 4):
                rows = new_rows(len(free))
                where = torch.tensor(free[: len(rows)], dtype=torch.long, device=device)
                batch.place(where, rule.start(rows))
                for j, r in zip(free, rows):
                    slots[j] = r
                seed_t[where] = torch.tensor([r.seed for r in rows], dtype=torch.long, device=device)
                length[where], active[where], reason[where] = 0, True, 0
        # 2. a window of steps, all on the device
        live = [r for r in slots if r is not None]
        window = min(flush_every, min(max_new_tokens - len(r.trace.token_ids) for r in live))
        records = torch.empty(window, len(slots), RECORD_FIELDS, dtype=torch.float64, device=device)
        for w in range(window):
            tokens, emitted, values = rule.step_slots(batch, seed_t, length)
            recorded = emitted & active  # (B,)
            records[w] = torch.cat([tokens[:, None].double(), recorded[:, None].double(), values], dim=1)
            length += recorded
            at_stop = recorded & torch.isin(tokens, stop_t)
            ended = recorded & (at_stop | (length >= max_new_tokens))
            reason = torch.where(ended, 2 - at_stop.long(), reason)  # 1: a stop id, 2: the length limit
            active = active & ~ended
            rule.feed_slots(batch, tokens, emitted)
        # 3. one copy to the host: the window's records, the flags, each cache's first live column
        firsts = []
        for state in (batch.teacher, batch.student):
            if state is not None:
                cols = (state.mask.bool() & active[:, None]).any(0)  # (L,) columns a live row still reads
                firsts.append(torch.where(cols.any(), cols.long().argmax(), cols.shape[0]).view(1))
        packet = torch.cat([records.flatten(), active.double(), reason.double(), *[f.double() for f in firsts]])
        host = packet.cpu().numpy()
        n_rec = records.numel()
        rec = host[:n_rec].reshape(window, len(slots), RECORD_FIELDS)
        still, why = host[n_rec : n_rec + len(slots)], host[n_rec + len(slots) : n_rec + 2 * len(slots)]
        first_live = host[n_rec + 2 * len(slots) :].astype(int).tolist()
        for j, row in enumerate(slots):
            if row is None:
                continue
            _record(row.trace, rec[rec[:, j, 1] > 0, j])
            if not still[j]:
                row.trace.finish_reason = "stop" if why[j] == 1 else "length"
                slots[j] = None
                yield row.index, row.trace
        # 4. retire: drop dead columns; with nothing to admit, compact to the live rows
        kept = [j for j, r in enumerate(slots) if r is not None]
        if not kept:
            if pending.order:  # every slot is free: start afresh
                for done in (batch.teacher, batch.student):  # a static state's buffers serve the next batch
                    if isinstance(done, StaticState):
                        done.release()
                batch = None
            else:
                break
            continue
        if not pending.order and not fixed_rows and len(slots) - len(kept) >= max(1, len(slots) // 4):
            index = torch.tensor(kept, dtype=torch.long, device=device)
            batch.rows = slots
            batch.select(index)  # (also drops the columns now dead in every row)
            slots = batch.rows
            seed_t, length, active, reason = seed_t[index], length[index], active[index], reason[index]
        else:
            for state, first in zip([s for s in (batch.teacher, batch.student) if s is not None], first_live):
                state.retire_columns(first, flush_every)
    return
