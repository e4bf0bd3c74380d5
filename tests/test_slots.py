"""The device-side lockstep scheduler (``rsdlib.engine.run_slots``, issue 31) against references.

- its steady-state step makes no host sync: one per window of ``flush_every`` steps, counted by a hook on
  every tensor method that reads a value back to the host (the host-side scheduler makes several per step,
  which shows the hook sees them);
- its traces are the host-side scheduler's (``Decoder(engine="rows")``) token for token, records included,
  with refills, rows of different lengths, stop ids, a bridged pair whose student-only token is spelled in
  three teacher pieces, and any ``flush_every``;
- the counter-based uniforms equal their plain-Python reference and do not depend on the batch.
"""

import math

import pytest
import torch
from _tiny import tiny_lm

from rsdlib.bridge import VocabBridge
from rsdlib.decoding import Decoder, DecodingConfig, LockstepRule
from rsdlib.sampling import counter_uniforms, counter_uniforms_reference

VOCAB = 48
PROMPTS = [[5, 9, 13, 2, 7, 30, 31], [4, 8], [11, 12, 13, 14], [40, 41, 42, 43, 44, 45, 46, 20, 21, 22, 3]]
SYNC_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "nonzero")


@pytest.fixture(scope="module")
def pair():
    return tiny_lm(VOCAB, seed=1, layers=3), tiny_lm(VOCAB, seed=2)


def test_counter_uniforms_match_their_reference_and_ignore_the_batch():
    seeds = torch.tensor([0, 1, 2**63 - 1, 123456789012345, 7])
    steps = torch.tensor([0, 5, 7, 10**6, 0])
    u = counter_uniforms(seeds, steps, 3)
    assert u.dtype == torch.float64 and ((u >= 0) & (u < 1)).all()
    for b in range(len(seeds)):
        assert u[b].tolist() == counter_uniforms_reference(int(seeds[b]), int(steps[b]), 3)
        assert torch.equal(counter_uniforms(seeds[b : b + 1], steps[b : b + 1], 3)[0], u[b])  # alone = in a batch
    many = counter_uniforms(torch.arange(4000), torch.zeros(4000, dtype=torch.long), 2)
    assert abs(many.mean().item() - 0.5) < 0.02 and abs(torch.corrcoef(many.T)[0, 1].item()) < 0.05


def _fields(traces):
    return [(t.token_ids, t.source, t.fallback, t.finish_reason) for t in traces]


def _probs(traces):
    return [(t.teacher_prob, t.student_prob, t.student_prob_raw, t.student_entropy) for t in traces]


def _same_floats(a, b):
    """Equal up to float rounding (refilled rows sit at other cache columns, so attention sums differ in ulps)."""
    return all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-5) or (math.isnan(x) and math.isnan(y))
               for ra, rb in zip(a, b) for la, lb in zip(ra, rb) for x, y in zip(la, lb))


@pytest.mark.parametrize("mode", ["rsd", "skd", "teacher", "student"])
def test_slots_give_the_host_schedulers_traces(pair, mode):
    teacher, student = pair
    bridge = VocabBridge.identity(VOCAB)
    cfg = DecodingConfig(mode=mode, temperature=0.8, threshold=0.05, max_new_tokens=20, stop_ids=(1, 17, 23))
    prompts, seeds = PROMPTS * 3, list(range(40, 52))
    rows = Decoder(teacher, student, bridge, cfg, engine="rows").generate(prompts, seeds, batch_size=5)
    for flush_every, cache in ((1, "dynamic"), (16, "dynamic"), (5, "static")) if mode == "rsd" else ((3, "static"),):
        dec = Decoder(teacher, student, bridge, cfg, flush_every=flush_every, cache=cache)
        assert dec.uses_slots
        slots = dec.generate(prompts, seeds, batch_size=5)
        assert _fields(slots) == _fields(rows)
        assert _same_floats(_probs(slots), _probs(rows))
    assert len({len(t.token_ids) for t in rows}) > 1 and {t.finish_reason for t in rows} == {"stop", "length"}


def test_slots_feed_a_multi_piece_spelling_one_piece_per_step(pair):
    """RSD on a bridged pair whose student-only token (the student's favourite id here) is three teacher
    pieces: rows that emit it wait for the teacher's last piece (holes in the student's cache) and the
    traces match the host scheduler, which feeds the whole spelling at once."""
    teacher, student = pair
    cfg = DecodingConfig(mode="rsd", temperature=1.0, threshold=0.1, max_new_tokens=24, stop_ids=(1,))
    prompts, seeds = PROMPTS * 2, list(range(8))
    plain = Decoder(teacher, student, VocabBridge.identity(VOCAB), cfg).generate(prompts, seeds, batch_size=3)
    favourite = max(range(2, VOCAB), key=lambda y: sum(t.token_ids.count(y) for t in plain))
    teacher_mask = torch.zeros(VOCAB, dtype=torch.bool)
    teacher_mask[favourite] = True  # the teacher writes it only through its spelling
    bridge = VocabBridge(VOCAB, VOCAB, teacher_mask, torch.zeros(VOCAB, dtype=torch.bool), {favourite: [7, 8, 9]})
    rows = Decoder(teacher, student, bridge, cfg, engine="rows").generate(prompts, seeds, batch_size=3)
    assert sum(t.token_ids.count(favourite) for t in rows) >= 2, "the test needs rows that emit the spelled token"
    for cache in ("dynamic", "static"):
        dec = Decoder(teacher, student, bridge, cfg, flush_every=4, cache=cache)
        slots = dec.generate(prompts, seeds, batch_size=3)
        assert _fields(slots) == _fields(rows)
        assert _same_floats(_probs(slots), _probs(rows))


def _count_syncs(monkeypatch, steps_seen):
    """Wrap every tensor method that reads device values on the host; log the step count at each call."""
    log = []
    for name in SYNC_METHODS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, _name=name, **kwargs):
            log.append((steps_seen[0], _name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return log


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_steady_state_step_makes_no_host_sync(pair, monkeypatch, cache):
    teacher, student = pair
    bridge = VocabBridge.identity(VOCAB)
    steps, flush_every = 40, 8
    cfg = DecodingConfig(mode="rsd", temperature=0.8, threshold=0.05, max_new_tokens=steps)  # no stop: 40 steps
    seen = [0]
    original_step = LockstepRule.step_slots

    def counted(self, *args):
        seen[0] += 1
        return original_step(self, *args)

    monkeypatch.setattr(LockstepRule, "step_slots", counted)
    log = _count_syncs(monkeypatch, seen)
    dec = Decoder(teacher, student, bridge, cfg, flush_every=flush_every, cache=cache)
    traces = dec.generate(PROMPTS, [1, 2, 3, 4])
    monkeypatch.undo()
    assert seen[0] == steps and all(len(t.token_ids) == steps for t in traces)
    # steady state: from the second step to the last (the first step reads the bridge's CPU masks once,
    # VocabBridge._masks_any; they are host tensors, not device reads)
    steady = [(step, name) for step, name in log if 1 < step < steps]
    assert steady == [(w, "cpu") for w in range(flush_every, steps, flush_every)], steady  # one copy per window


def test_the_sync_hook_sees_the_host_schedulers_syncs(pair, monkeypatch):
    """The hook is not blind: the host-side scheduler reads values back at every step."""
    teacher, student = pair
    cfg = DecodingConfig(mode="rsd", temperature=0.8, threshold=0.05, max_new_tokens=12)
    seen = [0]
    log = _count_syncs(monkeypatch, seen)
    Decoder(teacher, student, VocabBridge.identity(VOCAB), cfg, engine="rows").generate(PROMPTS, [1, 2, 3, 4])
    monkeypatch.undo()
    assert len(log) >= 12 * 5  # at least the step's five .tolist() per step
