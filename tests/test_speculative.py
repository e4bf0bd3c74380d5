"""Speculative RSD is exact: same distribution as lockstep RSD; caches roll back past rejected drafts."""

import itertools
import math

import pytest
import torch
from _tiny import ALPHA, tiny_lm
from scipy import stats

from rsdlib.bridge import VocabBridge
from rsdlib.decoding import Decoder, DecodingConfig, rsd_mixture, step_probs

V = 16
PROMPT = [3, 5, 7, 2, 9]


@pytest.fixture(scope="module")
def pair16():
    return tiny_lm(V, seed=11, layers=3, init=0.35), tiny_lm(V, seed=12, init=0.35)


def exact_rsd(teacher, student, bridge, cfg, contexts):
    """Exact RSD mixture P (N, V) and fallback probability r (N,) after each context (uncached)."""
    with torch.no_grad():
        s = student(torch.tensor(contexts)).logits[:, -1]
        t = teacher(torch.tensor([bridge.student_to_teacher(c) for c in contexts])).logits[:, -1]
    probs = step_probs(t, s, bridge, cfg)
    return rsd_mixture(probs.teacher, probs.student, cfg.threshold)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_first_tokens_and_fallback_match_lockstep_rsd_distribution(pair16, k):
    teacher, student = pair16
    bridge = VocabBridge.identity(V)
    base = dict(mode="rsd", temperature=1.0, threshold=0.08, max_new_tokens=3)
    cfg = DecodingConfig(**base, draft_tokens=k)
    # exact joint of the first three tokens, by enumeration
    p1, r1 = exact_rsd(teacher, student, bridge, cfg, [PROMPT])
    ctx2 = [PROMPT + [a] for a in range(V)]
    p2, r2 = exact_rsd(teacher, student, bridge, cfg, ctx2)  # row a: P(. | a)
    ctx3 = [PROMPT + [a, b] for a, b in itertools.product(range(V), range(V))]
    p3, r3 = exact_rsd(teacher, student, bridge, cfg, ctx3)
    joint12 = p1[0][:, None] * p2  # (V, V)
    joint123 = joint12.reshape(-1, 1) * p3  # (V*V, V)
    marg3 = joint123.sum(0)
    expect_fb = [r1[0].item(), (p1[0] * r2).sum().item(), (joint12.reshape(-1) * r3).sum().item()]

    n = 6000
    dec = Decoder(teacher, student, bridge, cfg)
    traces = dec.generate([PROMPT] * n, list(range(n)), batch_size=500)
    assert 0 < dec.stats["accepted"] < dec.stats["drafted"], "want both accepted and rejected drafts"
    toks = torch.tensor([t.token_ids for t in traces])  # (n, 3)
    fbs = torch.tensor([t.fallback for t in traces], dtype=torch.float64)

    def chi2_pvalue(counts, expected):
        big = expected >= 5
        obs = torch.cat([counts[big], counts[~big].sum()[None]])
        exp = torch.cat([expected[big], expected[~big].sum()[None]])
        keep = exp > 0
        assert counts[expected == 0].sum() == 0, "a token sequence of probability 0 was emitted"
        scaled = exp[keep].numpy() * obs[keep].sum().item() / exp[keep].sum().item()
        return stats.chisquare(obs[keep].numpy(), scaled).pvalue

    counts12 = torch.bincount(toks[:, 0] * V + toks[:, 1], minlength=V * V).double()
    assert chi2_pvalue(counts12, joint12.reshape(-1).double() * n) > ALPHA
    counts3 = torch.bincount(toks[:, 2], minlength=V).double()
    assert chi2_pvalue(counts3, marg3.double() * n) > ALPHA
    for pos, want in enumerate(expect_fb):
        got = fbs[:, pos].mean().item()
        assert 0.02 < want < 0.98, "the test needs fallback to be neither rare nor certain"
        z = (got - want) / math.sqrt(want * (1 - want) / n)
        assert abs(z) < stats.norm.ppf(1 - ALPHA / 2), (pos, got, want)


def reference_probs(teacher, student, bridge, cfg, prompt, tokens):
    """Tempered P_t(y), P_s(y) of each emitted token from uncached forwards on the accepted context."""
    out_t, out_s = [], []
    for j, y in enumerate(tokens):
        ctx = list(prompt) + tokens[:j]
        with torch.no_grad():
            s = student(torch.tensor([ctx])).logits[:, -1]
            t = teacher(torch.tensor([bridge.student_to_teacher(ctx)])).logits[:, -1]
        probs = step_probs(t, s, bridge, cfg)
        out_t.append(float(probs.teacher[0, y]))
        out_s.append(float(probs.student[0, y]))
    return out_t, out_s


PROMPTS = [[5, 9, 13, 2, 7, 10, 11], [4, 8], [11, 12, 13, 14], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 3], [6, 6, 6]]


@pytest.mark.parametrize("k", [1, 3])
def test_caches_roll_back_past_rejected_drafts(pair16, k):
    """Every emitted token's probabilities equal those of a decoder that never saw the rejected drafts."""
    teacher, student = pair16
    bridge = VocabBridge.identity(V)
    cfg = DecodingConfig(mode="rsd", temperature=0.9, threshold=0.08, max_new_tokens=20, stop_ids=(0,), draft_tokens=k)
    dec = Decoder(teacher, student, bridge, cfg)
    traces = dec.generate(PROMPTS, [1, 2, 3, 4, 5], batch_size=3)  # 5 rows in 3 slots: refills too
    assert dec.stats["accepted"] < dec.stats["drafted"]
    for prompt, tr in zip(PROMPTS, traces):
        want_t, want_s = reference_probs(teacher, student, bridge, cfg, prompt, tr.token_ids)
        assert torch.allclose(torch.tensor(tr.teacher_prob), torch.tensor(want_t), atol=1e-5)
        assert torch.allclose(torch.tensor(tr.student_prob), torch.tensor(want_s), atol=1e-5)


def test_bridged_pair_speculative_spells_student_only_tokens():
    v_s, v_t, close = 24, 24 + 128, 23
    teacher, student = tiny_lm(v_t, seed=5), tiny_lm(v_s, seed=6)
    with torch.no_grad():
        teacher.lm_head.weight[v_s:] *= 8
        student.lm_head.weight[close] *= 4
    mask = torch.zeros(v_t, dtype=torch.bool)
    mask[close:] = True
    bridge = VocabBridge(teacher_vocab_size=v_t, student_vocab_size=v_s, teacher_mask=mask,
                         student_mask=torch.zeros(v_s, dtype=torch.bool), student_only={close: [7, 8, 9]})
    cfg = DecodingConfig(mode="rsd", temperature=1.0, threshold=0.03, max_new_tokens=24, draft_tokens=3)
    prompts = [[3, 4, 5], [10, 11, 12, 13, 14], [20, 21, close, 2]]
    traces = Decoder(teacher, student, bridge, cfg).generate(prompts, [1, 2, 3], batch_size=3)
    emitted = [y for t in traces for y in t.token_ids]
    assert max(emitted) < v_s and close in emitted
    for prompt, tr in zip(prompts, traces):
        want_t, want_s = reference_probs(teacher, student, bridge, cfg, prompt, tr.token_ids)
        assert torch.allclose(torch.tensor(tr.teacher_prob), torch.tensor(want_t), atol=1e-5)
        assert torch.allclose(torch.tensor(tr.student_prob), torch.tensor(want_s), atol=1e-5)


def test_speculative_is_deterministic_and_validated(pair16):
    teacher, student = pair16
    bridge = VocabBridge.identity(V)
    cfg = DecodingConfig(mode="rsd", threshold=0.08, max_new_tokens=12, draft_tokens=2)
    a = Decoder(teacher, student, bridge, cfg).generate(PROMPTS, [7] * 5, batch_size=5)
    b = Decoder(teacher, student, bridge, cfg).generate(PROMPTS, [7] * 5, batch_size=2)
    assert [t.token_ids for t in a] == [t.token_ids for t in b]
    with pytest.raises(ValueError, match="implemented for mode 'rsd'"):
        DecodingConfig(mode="skd", draft_tokens=2)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        Decoder(teacher, student, bridge, cfg).generate([[3]], [0])
