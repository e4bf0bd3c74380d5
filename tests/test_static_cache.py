"""The static KV cache of the slot path (``rsdlib.engine.StaticState``, ``Decoder(cache="static")``, issue 31).

- traces equal the dynamic cache's token for token (records within float rounding) through refills whose
  prompts are wider than the write column (everyone moves right) and runs long enough that the buffer's
  end is reached (dead columns dropped, everyone moves left): CACHE_CHUNK is made small so both happen
  many times in a short run, and the test checks that they did;
- the compiled path (``compile=True``: ``torch.compile`` of each model's forward) gives the eager static
  path's tokens;
- clear errors: an unknown cache kind, a model whose attention cannot take the 4-D padding mask, and a run
  that cannot use the slot path.
"""

import dataclasses
import logging
import weakref

import pytest
import torch
from _tiny import tiny_lm

import rsdlib.decoding as decoding
import rsdlib.engine as engine
from rsdlib.bridge import VocabBridge
from rsdlib.decoding import Decoder, DecodingConfig
from rsdlib.engine import StaticState, prefill
from rsdlib.traces import TraceJobConfig

VOCAB = 48


@pytest.fixture(scope="module")
def pair():
    return tiny_lm(VOCAB, seed=1, layers=3), tiny_lm(VOCAB, seed=2)


def _prompts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 40, (n,), generator=g).tolist()
    return [torch.randint(2, VOCAB, (k,), generator=g).tolist() for k in lengths]


def _fields(traces):
    return [(t.token_ids, t.source, t.fallback, t.finish_reason) for t in traces]


def _close(a, b):
    return all(abs(x - y) <= 1e-4 for ta, tb in zip(a, b)
               for xs, ys in ((ta.teacher_prob, tb.teacher_prob), (ta.student_prob, tb.student_prob))
               for x, y in zip(xs, ys))


def test_static_cache_moves_its_columns_and_keeps_the_dynamic_caches_tokens(pair, monkeypatch):
    teacher, student = pair
    bridge = VocabBridge.identity(VOCAB)
    cfg = DecodingConfig(mode="rsd", temperature=0.9, threshold=0.05, max_new_tokens=60, stop_ids=(17,))
    prompts, seeds = _prompts(40), list(range(100, 140))
    dynamic = Decoder(teacher, student, bridge, cfg, flush_every=4).generate(prompts, seeds, batch_size=4)
    for module in (engine, decoding):
        monkeypatch.setattr(module, "CACHE_CHUNK", 8)  # capacity = widest row + 9 columns: frequent moves
    moves = []
    original = StaticState._shift

    def spy(self, delta):
        moves.append(delta)
        return original(self, delta)

    monkeypatch.setattr(StaticState, "_shift", spy)
    static = Decoder(teacher, student, bridge, cfg, flush_every=4, cache="static").generate(prompts, seeds,
                                                                                          batch_size=4)
    assert _fields(static) == _fields(dynamic)
    assert _close(static, dynamic)
    assert len({len(t.token_ids) for t in dynamic}) > 5  # rows end at different steps: refills mid-run
    assert any(d < 0 for d in moves), moves  # the buffer's end was reached: dead columns dropped


def test_a_refill_wider_than_the_write_column_moves_every_row_right(pair):
    """Rows placed in a static state give the logits a dynamic state gives the same rows, also when the new
    prompt is wider than the write column (every row moves right first) and after the buffer moved left."""
    teacher, _ = pair
    ones = torch.ones(2, 1, dtype=torch.long)
    dynamic = prefill(teacher, [[2, 3, 4], [5, 6]])[0]
    static = StaticState(prefill(teacher, [[2, 3, 4], [5, 6]])[0], capacity=40)
    assert (static.col, static.capacity) == (3, 64)  # 40 rounded up to STATIC_ROUND
    wide = [[7, 8, 9, 10, 11, 12, 13, 14, 15, 16]]
    for state in (dynamic, static):
        state.place(torch.tensor([1]), prefill(teacher, wide)[0])
    assert static.col == 10  # moved right by 7
    for step in range(3):
        ids = torch.tensor([[20 + step], [30 + step]])
        torch.testing.assert_close(static.feed_ids(ids, ones), dynamic.feed_ids(ids, ones), atol=1e-5, rtol=1e-4)
    for state in (dynamic, static):  # the wide row ends; a short one takes its slot: columns 0-6 are dead
        state.place(torch.tensor([1]), prefill(teacher, [[21, 22]])[0])
    assert int(static.mask.any(0).long().argmax()) == 7
    static.retire_columns(first_live=7, upcoming=static.capacity - static.col + 1)  # no room left: move left
    assert static.col == 13 - 7
    for step in range(2):
        ids = torch.tensor([[40 + step], [41 + step]])
        torch.testing.assert_close(static.feed_ids(ids, ones), dynamic.feed_ids(ids, ones), atol=1e-5, rtol=1e-4)


def test_compiled_static_path_gives_the_eager_tokens(pair, monkeypatch):
    teacher, student = pair
    # torch's limit on graphs per code object is shared by both models' forwards and every run shape of the
    # process; at 3 the third run below (a new shape: graphs 5 and 6) would run eagerly unless the decoder
    # raises it (engine.RECOMPILE_LIMIT)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 3)
    bridge = VocabBridge.identity(VOCAB)
    cfg = DecodingConfig(mode="rsd", temperature=0.9, threshold=0.05, max_new_tokens=24, stop_ids=(1, 17))
    prompts, seeds = _prompts(6, seed=1), list(range(6))
    eager = Decoder(teacher, student, bridge, cfg, cache="static").generate(prompts, seeds, batch_size=3)
    dec = Decoder(teacher, student, bridge, cfg, compile=True)
    assert dec.cache == "static"
    from torch._dynamo.utils import counters

    graphs_before, breaks_before = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    compiled = dec.generate(prompts, seeds, batch_size=3)
    # one graph per model for the whole run: no step recompiles (a guard on the write column or the mask
    # would compile every step, and past torch's recompile limit fall back to eager without a word), and
    # the forward has no graph break (each break is a host round trip on CUDA)
    assert counters["stats"]["unique_graphs"] - graphs_before == 2
    assert sum(counters["graph_break"].values()) == breaks_before
    assert _fields(compiled) == _fields(eager)
    assert _close(compiled, eager)
    assert getattr(teacher, "_rsdlib_compiled_forward", None) is not None  # the compiled forward was used
    compiled_before = counters["stats"]["unique_graphs"]
    first_buffer = teacher._rsdlib_static_buffers[2][0][0].data_ptr()
    again = dec.generate(prompts, seeds, batch_size=3)  # same shapes: nothing compiles, the buffers are reused
    assert _fields(again) == _fields(eager)
    assert counters["stats"]["unique_graphs"] == compiled_before
    assert teacher._rsdlib_static_buffers[2][0][0].data_ptr() == first_buffer  # CUDA graphs keep their addresses
    longer = dataclasses.replace(cfg, max_new_tokens=24 + 2 * engine.STATIC_ROUND)  # wider buffers: new graphs
    eager = Decoder(teacher, student, bridge, longer, cache="static").generate(prompts, seeds, batch_size=3)
    compiled = Decoder(teacher, student, bridge, longer, compile=True).generate(prompts, seeds, batch_size=3)
    assert _fields(compiled) == _fields(eager)
    assert counters["stats"]["unique_graphs"] - graphs_before == 4  # compiled, not run eagerly past the limit


def test_static_buffers_serve_the_next_batch_and_run_without_waiting_for_the_collector(pair, monkeypatch):
    """A finished StaticState (its batch or its run over) hands its buffers to the next one of its shape
    even while it is still alive (a loop variable, a reference cycle: here every state is held on purpose),
    and a state of another shape frees them before allocating: on a GPU two sets of buffers are two KV
    caches, and a compiled forward's CUDA graphs want the same addresses."""
    teacher, student = pair
    bridge = VocabBridge.identity(VOCAB)
    # no stop ids: the rows of a batch end together, so the run starts a second batch afresh
    cfg = DecodingConfig(mode="rsd", temperature=0.9, threshold=0.05, max_new_tokens=12, stop_ids=())
    prompts, seeds = _prompts(4, seed=2), list(range(4))
    fresh, held = [], []
    original_buffers, original_init = engine._static_buffers, StaticState.__init__

    def buffers_spy(owner, state, capacity):
        kept = getattr(state.model, "_rsdlib_static_buffers", None)
        buffers = original_buffers(owner, state, capacity)
        fresh.append(kept is None or buffers is not kept[2])
        return buffers

    def init_spy(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        held.append(self)

    monkeypatch.setattr(engine, "_static_buffers", buffers_spy)
    monkeypatch.setattr(StaticState, "__init__", init_spy)
    dec = Decoder(teacher, student, bridge, cfg, cache="static")
    first = dec.generate(prompts, seeds, batch_size=2)
    assert fresh == [True, True, False, False]  # teacher and student allocate once; the second batch reuses
    address = teacher._rsdlib_static_buffers[2][0][0].data_ptr()
    assert _fields(dec.generate(prompts, seeds, batch_size=2)) == _fields(first)
    assert fresh[4:] == [False] * 4 and teacher._rsdlib_static_buffers[2][0][0].data_ptr() == address
    assert len(held) == 8 and all(state.released and not state.cache.layers for state in held)
    with pytest.raises(RuntimeError, match="after its run released it"):
        held[0].feed_ids(torch.tensor([[3], [4]]), torch.ones(2, 1, dtype=held[0].mask.dtype))
    old_buffers = [weakref.ref(keys) for keys, _ in teacher._rsdlib_static_buffers[2]]
    longer = dataclasses.replace(cfg, max_new_tokens=12 + 2 * engine.STATIC_ROUND)  # another shape
    Decoder(teacher, student, bridge, longer, cache="static").generate(prompts, seeds, batch_size=2)
    assert fresh[8:10] == [True, True]
    assert all(ref() is None for ref in old_buffers)  # freed, though every state that used them lives on


def test_static_cache_errors(pair, caplog):
    teacher, student = pair
    bridge = VocabBridge.identity(VOCAB)
    cfg = DecodingConfig(mode="rsd", max_new_tokens=4)
    with pytest.raises(ValueError, match="cache must be one of"):
        Decoder(teacher, student, bridge, cfg, cache="paged")
    with pytest.raises(ValueError, match="runs on the slot engine"):
        Decoder(teacher, student, bridge, cfg, engine="rows", cache="static")
    with pytest.raises(ValueError, match="decode_cache must be one of"):
        TraceJobConfig(decode_cache="paged")
    spec = DecodingConfig(mode="rsd", max_new_tokens=4, draft_tokens=2)  # speculative: the host scheduler
    with caplog.at_level(logging.WARNING, logger="rsdlib.decoding"):
        traces = Decoder(teacher, student, bridge, spec, cache="static").generate([[2, 3]], [0])
    assert len(traces[0].token_ids) == 4 and "takes the host-side scheduler with a dynamic cache" in caplog.text
    eager = tiny_lm(VOCAB, seed=3)
    eager.config._attn_implementation = "eager"  # a 4-D boolean padding mask is sdpa's
    with pytest.raises(ValueError, match="needs a model on sdpa attention"):
        Decoder(eager, student, bridge, cfg, cache="static").generate([[2, 3]], [0])


def test_trace_jobs_pass_the_cache_to_their_decoder_and_keep_their_hash():
    job = TraceJobConfig(decode_cache="static", compile_decoder=True)
    assert job.decoder_options == {"cache": "static", "compile": True}
    assert job.hash() == TraceJobConfig().hash()  # same tokens: results made either way are reused
