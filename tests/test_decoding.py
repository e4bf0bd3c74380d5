"""The decoder against references: the exact mixture, teacher/student sampling, and a slow uncached decoder."""

import math

import pytest
import torch
from _tiny import ALPHA, tiny_lm
from scipy import stats

from rsdlib.bridge import VocabBridge
from rsdlib.decoding import (
    Decoder,
    DecodingConfig,
    StepProbs,
    choose_tokens,
    draw_uniforms,
    propose_and_verify,
    rsd_mixture,
    rsd_sample,
    skd_mixture,
    step_probs,
    tempered_probs,
    top_p_filter,
)
from rsdlib.engine import ModelState
from rsdlib.sampling import counter_uniforms_reference


def random_probs(batch, vocab, gen, sharp=3.0):
    return torch.softmax(torch.randn(batch, vocab, generator=gen) * sharp, dim=-1)


# ---------------------------------------------------------------- pure maths
def test_mixture_limits_and_hand_example():
    p_t = torch.tensor([[0.5, 0.3, 0.2]])
    p_s = torch.tensor([[0.6, 0.005, 0.395]])
    mix, r = rsd_mixture(p_t, p_s, 0.01)
    # token 1 is sub-threshold for the student: its teacher mass 0.3 falls back onto p_s
    assert torch.allclose(r, torch.tensor([0.3]))
    assert torch.allclose(mix, torch.tensor([[0.5 + 0.3 * 0.6, 0.3 * 0.005, 0.2 + 0.3 * 0.395]]))
    mix0, r0 = rsd_mixture(p_t, p_s, 0.0)
    assert torch.equal(mix0, p_t) and r0.item() == 0
    mix2, r2 = rsd_mixture(p_t, p_s, 1.5)
    assert torch.allclose(mix2, p_s) and r2.item() == 1
    skd, r_skd = skd_mixture(p_t, p_s, 0.25)  # student proposes; the teacher rejects only token 2 (0.2 < 0.25)
    assert torch.allclose(r_skd, torch.tensor([0.395]))
    assert torch.allclose(skd, torch.tensor([[0.6 + 0.395 * 0.5, 0.005 + 0.395 * 0.3, 0.395 * 0.2]]))
    assert torch.allclose(skd.sum(-1), torch.ones(1))


def test_top_p_filter_keeps_smallest_nucleus():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert torch.allclose(top_p_filter(p, 0.75), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert torch.allclose(top_p_filter(p, 0.8), torch.tensor([[0.5, 0.3, 0.0, 0.0]]) / 0.8)
    assert torch.allclose(top_p_filter(p, 0.81), torch.tensor([[0.5, 0.3, 0.15, 0.0]]) / 0.95)


@pytest.mark.parametrize("trials", [1, 3])
@pytest.mark.parametrize("rule", ["rsd", "skd"])
def test_sampler_frequencies_match_exact_mixture(rule, trials):
    gen = torch.Generator().manual_seed(7)
    vocab, n = 12, 200_000
    p_t, p_s = random_probs(1, vocab, gen), random_probs(1, vocab, gen)
    threshold = 0.05 if trials == 1 else 0.2  # several draws need a stricter verifier to fall back often
    if rule == "rsd":
        exact, r = rsd_mixture(p_t, p_s, threshold, trials)
        tokens, fallback = rsd_sample(p_t.expand(n, -1), p_s.expand(n, -1), threshold, gen, trials=trials)
    else:
        exact, r = skd_mixture(p_t, p_s, threshold, trials)
        u = draw_uniforms(gen, n, trials + 1)
        tokens, fallback = propose_and_verify(p_s.expand(n, -1), p_t.expand(n, -1), p_t.expand(n, -1), threshold, u)
    assert 0.02 < r.item() < 0.98, "the test needs a mixture with both parts"
    counts = torch.bincount(tokens, minlength=vocab).double()
    expected = exact[0].double() * n
    live = expected > 0
    assert counts[~live].sum() == 0, "a token of probability 0 was sampled"
    chi2 = (((counts - expected) ** 2)[live] / expected[live]).sum().item()
    assert chi2 < stats.chi2.ppf(1 - ALPHA, int(live.sum()) - 1)
    z = (fallback.double().mean().item() - r.item()) / math.sqrt(r.item() * (1 - r.item()) / n)
    assert abs(z) < stats.norm.ppf(1 - ALPHA / 2)


def test_sampler_never_returns_masked_ids():
    gen = torch.Generator().manual_seed(3)
    p_t = random_probs(4, 20, gen)
    p_t[:, 15:] = 0
    p_t /= p_t.sum(-1, keepdim=True)
    p_s = random_probs(4, 20, gen)
    p_s[:, 18:] = 0
    p_s /= p_s.sum(-1, keepdim=True)
    for _ in range(200):
        tokens, _ = rsd_sample(p_t, p_s, 0.05, gen)
        assert ((p_t.gather(-1, tokens[:, None]) > 0) | (p_s.gather(-1, tokens[:, None]) > 0)).all()
        assert (tokens < 18).all()


# ---------------------------------------------------------------- engine vs references
def row_uniforms(seed, step, n):
    """The uniforms of one row's step, from the plain-Python reference of the decoder's counter-based draws."""
    return torch.tensor([counter_uniforms_reference(seed, step, n)], dtype=torch.float64)


def reference_decode(teacher, student, bridge, cfg, prompt, seed):
    """Slow reference: one row, no cache, the full context recomputed at every step."""
    tokens, out = [], {"tokens": [], "teacher_prob": [], "student_prob": [], "fallback": []}
    for _ in range(cfg.max_new_tokens):
        s_ctx = list(prompt) + tokens
        t_ctx = bridge.student_to_teacher(s_ctx)
        with torch.no_grad():
            t_logits = teacher(torch.tensor([t_ctx])).logits[:, -1] if cfg.needs_teacher else None
            s_logits = student(torch.tensor([s_ctx])).logits[:, -1] if cfg.needs_student else None
        probs = step_probs(t_logits, s_logits, bridge, cfg)
        tok, fb, _ = choose_tokens(probs, cfg, row_uniforms(seed, len(tokens), cfg.trials + 1))
        y = int(tok[0])
        tokens.append(y)
        out["tokens"].append(y)
        out["fallback"].append(bool(fb[0]))
        out["teacher_prob"].append(float(probs.teacher[0, y]) if probs.teacher is not None else math.nan)
        out["student_prob"].append(float(probs.student[0, y]) if probs.student is not None else math.nan)
        if y in cfg.stop_ids:
            break
    return out


VOCAB = 48
PROMPTS = [[5, 9, 13, 2, 7, 30, 31], [4, 8], [11, 12, 13, 14], [40, 41, 42, 43, 44, 45, 46, 20, 21, 22, 3]]


@pytest.fixture(scope="module")
def pair():
    return tiny_lm(VOCAB, seed=1, layers=3), tiny_lm(VOCAB, seed=2)


@pytest.mark.parametrize("mode", ["rsd", "skd", "teacher", "student"])
def test_batched_cached_decoder_matches_uncached_reference(pair, mode):
    teacher, student = pair
    bridge = VocabBridge.identity(VOCAB)
    cfg = DecodingConfig(mode=mode, temperature=0.8, threshold=0.05, max_new_tokens=24, stop_ids=(1, 17))
    seeds = [11, 12, 13, 14]
    traces = Decoder(teacher, student, bridge, cfg).generate(PROMPTS, seeds, batch_size=4)
    lengths = {len(t.token_ids) for t in traces}
    assert len(lengths) > 1, "want rows that finish at different steps (exercises dropping rows)"
    for prompt, seed, trace in zip(PROMPTS, seeds, traces):
        ref = reference_decode(teacher, student, bridge, cfg, prompt, seed)
        assert trace.token_ids == ref["tokens"]
        assert trace.fallback == ref["fallback"]
        for got, want in (("teacher_prob", "teacher_prob"), ("student_prob", "student_prob")):
            g, w = torch.tensor(getattr(trace, got)), torch.tensor(ref[want])
            assert torch.allclose(g, w, atol=1e-5, equal_nan=True)
        assert trace.seed == seed and trace.config["mode"] == mode


def test_refilled_slots_match_reference(pair):
    """More sequences than slots: finished rows are refilled with prompts merged into the running batch."""
    teacher, student = pair
    bridge = VocabBridge.identity(VOCAB)
    cfg = DecodingConfig(mode="rsd", temperature=0.8, threshold=0.05, max_new_tokens=20, stop_ids=(1, 17, 23))
    prompts = PROMPTS * 3
    seeds = list(range(100, 100 + len(prompts)))
    finished = []
    traces = Decoder(teacher, student, bridge, cfg).generate(
        prompts, seeds, batch_size=3, on_finish=lambda i, t: finished.append(i))
    assert sorted(finished) == list(range(len(prompts)))
    assert finished != sorted(finished) or len({len(t.token_ids) for t in traces}) > 1
    for prompt, seed, trace in zip(prompts, seeds, traces):
        assert trace.prompt_ids == prompt and trace.seed == seed
        ref = reference_decode(teacher, student, bridge, cfg, prompt, seed)
        assert trace.token_ids == ref["tokens"]
        assert torch.allclose(torch.tensor(trace.student_prob), torch.tensor(ref["student_prob"]), atol=1e-5)


def test_deterministic_under_seed_and_batch_size(pair):
    teacher, student = pair
    bridge = VocabBridge.identity(VOCAB)
    cfg = DecodingConfig(mode="rsd", temperature=0.9, threshold=0.05, max_new_tokens=16)
    dec = Decoder(teacher, student, bridge, cfg)
    a = dec.generate(PROMPTS, [1, 2, 3, 4], batch_size=4)
    b = dec.generate(PROMPTS, [1, 2, 3, 4], batch_size=3)
    c = dec.generate(PROMPTS, [5, 2, 3, 4], batch_size=4)
    assert [t.token_ids for t in a] == [t.token_ids for t in b]
    assert a[0].token_ids != c[0].token_ids  # a new seed for row 0 changes row 0 ...
    assert [t.token_ids for t in a[1:]] == [t.token_ids for t in c[1:]]  # ... and nothing else


def test_threshold_zero_is_teacher_and_above_one_is_student(pair):
    teacher, student = pair
    bridge = VocabBridge.identity(VOCAB)
    seeds = [21, 22, 23, 24]

    def run(**kw):
        cfg = DecodingConfig(temperature=1.0, max_new_tokens=20, **kw)
        return [t.token_ids for t in Decoder(teacher, student, bridge, cfg).generate(PROMPTS, seeds, batch_size=4)]

    rsd_low, teacher_only = run(mode="rsd", threshold=0.0), run(mode="teacher")
    rsd_high, student_only = run(mode="rsd", threshold=1.01), run(mode="student")
    assert rsd_low == teacher_only
    assert rsd_high == student_only
    assert teacher_only != student_only
    mid = run(mode="rsd", threshold=0.05)
    assert mid != teacher_only and mid != student_only


def test_rsd_traces_have_no_sub_threshold_teacher_tokens(pair):
    teacher, student = pair
    cfg = DecodingConfig(mode="rsd", temperature=1.0, threshold=0.05, max_new_tokens=30)
    traces = Decoder(teacher, student, VocabBridge.identity(VOCAB), cfg).generate(PROMPTS, [1, 2, 3, 4])
    for t in traces:
        for src, p_s, fb in zip(t.source, t.student_prob, t.fallback):
            assert src == int(fb)
            if not fb:  # an accepted teacher token passed the student's threshold
                assert p_s >= 0.05
    assert any(any(t.fallback) for t in traces) and not all(all(t.fallback) for t in traces)


# ---------------------------------------------------------------- a paper-like bridged pair
def test_bridged_pair_masks_padding_and_spells_student_only_token():
    """Teacher has 128 padded logit rows; the student's last id is a student-only `</think>`."""
    v_s, pad_rows = 40, 128
    v_t = v_s + pad_rows
    think_close = v_s - 1
    spelling = [7, 8, 9]
    teacher = tiny_lm(v_t, seed=5)
    student = tiny_lm(v_s, seed=6)
    with torch.no_grad():  # make the forbidden rows tempting: padded teacher rows, and `</think>` for the student
        teacher.lm_head.weight[v_s:] *= 8
        teacher.lm_head.weight[think_close] *= 8
        student.lm_head.weight[think_close] *= 4
    teacher_mask = torch.zeros(v_t, dtype=torch.bool)
    teacher_mask[v_s - 1 :] = True  # the teacher's own id 39 is a different string; 40.. are padding
    bridge = VocabBridge(
        teacher_vocab_size=v_t, student_vocab_size=v_s, teacher_mask=teacher_mask,
        student_mask=torch.zeros(v_s, dtype=torch.bool), student_only={think_close: spelling},
    )
    assert bridge.student_to_teacher([3, think_close, 4]) == [3, *spelling, 4]
    cfg = DecodingConfig(mode="rsd", temperature=1.0, threshold=0.02, max_new_tokens=30)
    prompts = [[3, 4, 5], [10, 11, 12, 13, 14], [20, 21]]
    traces = Decoder(teacher, student, bridge, cfg).generate(prompts, [1, 2, 3], batch_size=3)
    emitted = [y for t in traces for y in t.token_ids]
    assert max(emitted) < v_s
    assert think_close in emitted, "the test needs the student-only token to be emitted"
    for t in traces:
        for y, src in zip(t.token_ids, t.source):
            if y == think_close:
                assert src == 1 and t.teacher_prob[t.token_ids.index(y)] == 0.0  # only via the student
    # the teacher's context after `</think>` is its spelling: the cached engine (teacher context built
    # token by token) agrees with the reference (teacher context = student_to_teacher(whole sequence))
    for prompt, seed, trace in zip(prompts, [1, 2, 3], traces):
        ref = reference_decode(teacher, student, bridge, cfg, prompt, seed)
        assert trace.token_ids == ref["tokens"]
        assert torch.allclose(torch.tensor(trace.teacher_prob), torch.tensor(ref["teacher_prob"]), atol=1e-5)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown decoding mode"):
        DecodingConfig(mode="beam")
    with pytest.raises(ValueError, match="top_p"):
        DecodingConfig(top_p=0)
    with pytest.raises(ValueError, match="needs a teacher"):
        Decoder(None, object(), VocabBridge.identity(4), DecodingConfig(mode="rsd"))


def test_growing_cache_layer_matches_plain_tensor_ops():
    from rsdlib.engine import GrowingLayer

    gen = torch.Generator().manual_seed(0)
    layer, keys = GrowingLayer(), torch.empty(3, 2, 0, 4)
    for n in (5, 1, 1, 70, 1):  # crosses the initial capacity and a doubling
        k = torch.randn(3, 2, n, 4, generator=gen)
        keys = torch.cat([keys, k], dim=2)
        got, _ = layer.update(k, k.clone())
        assert torch.equal(got, keys)
    layer.batch_select_indices(torch.tensor([0, 2]))
    keys = keys[[0, 2]]
    layer.drop_left(3)
    keys = keys[:, :, 3:]
    assert torch.equal(layer.keys, keys) and torch.equal(layer.values, keys)
    layer.crop(keys.shape[2] - 4)
    keys = keys[:, :, :-4]
    assert torch.equal(layer.keys, keys) and layer.get_seq_length() == keys.shape[2]
    k = torch.randn(2, 2, 2, 4, generator=gen)
    got, _ = layer.update(k, k)
    assert torch.equal(got, torch.cat([keys, k], dim=2))


# ---------------------------------------------------------------- SKD and student-only tokens (issue 12, item 4)
class Steered(torch.nn.Module):
    """A causal LM whose logits get a scripted bias: ``always`` at every position, ``after[prev]`` where
    the position's input token is ``prev`` (a bigram steer: it works with the KV cache, as each
    position's bias depends only on its own input id)."""

    def __init__(self, model, always=None, after=None):
        super().__init__()
        self.model, self.config = model, model.config
        self.always, self.after = dict(always or {}), {k: dict(v) for k, v in (after or {}).items()}

    @property
    def device(self):
        return self.model.device

    @property
    def dtype(self):
        return self.model.dtype

    def forward(self, input_ids, **kwargs):
        out = self.model(input_ids=input_ids, **kwargs)
        logits = out.logits  # (B, keep, V)
        last = input_ids[:, -logits.shape[1]:].to(logits.device)  # (B, keep): the input id at each kept position
        for tok, bias in self.always.items():
            logits[..., tok] += bias
        for prev, boosts in self.after.items():
            hit = (last == prev).to(logits.dtype)
            for tok, bias in boosts.items():
                logits[..., tok] += hit * bias
        return out


def spelled_approval(teacher, bridge, cfg, teacher_context, probs):
    """Reference rule (rsdlib.bridge docstring): EVERY student-only id scored by the product of its teacher
    spelling's piece probabilities, each from an uncached forward on context + earlier pieces."""
    approval = probs.teacher.clone()
    raw = probs.teacher_raw.clone() if probs.teacher_raw is not None else None
    for sid, spelling in bridge.student_only.items():
        tempered_product = raw_product = 1.0
        for j, piece in enumerate(spelling):
            with torch.no_grad():
                logits = teacher(torch.tensor([teacher_context + spelling[:j]])).logits[:, -1].float()
            logits = bridge.mask_teacher_logits(logits)
            tempered_product *= float(tempered_probs(logits, cfg.temperature, cfg.top_p)[0, piece])
            raw_product *= float(torch.softmax(logits, -1)[0, piece])
        approval[0, sid] = tempered_product
        if raw is not None:
            raw[0, sid] = raw_product
    return StepProbs(probs.teacher, probs.student, probs.student_raw, raw, approval)


def reference_decode_skd(teacher, student, bridge, cfg, prompt, seed):
    """Slow SKD reference with student-only tokens: no cache, all student-only ids scored every step."""
    tokens, out = [], {"tokens": [], "teacher_prob": [], "fallback": []}
    for _ in range(cfg.max_new_tokens):
        s_ctx = list(prompt) + tokens
        t_ctx = bridge.student_to_teacher(s_ctx)
        with torch.no_grad():
            t_logits = teacher(torch.tensor([t_ctx])).logits[:, -1]
            s_logits = student(torch.tensor([s_ctx])).logits[:, -1]
        probs = spelled_approval(teacher, bridge, cfg, t_ctx, step_probs(t_logits, s_logits, bridge, cfg))
        tok, fb, _ = choose_tokens(probs, cfg, row_uniforms(seed, len(tokens), cfg.trials + 1))
        y = int(tok[0])
        tokens.append(y)
        out["tokens"].append(y)
        out["fallback"].append(bool(fb[0]))
        out["teacher_prob"].append(float(probs.teacher_approval[0, y]))
        if y in cfg.stop_ids:
            break
    return out


SPELLING = [7, 8, 9]  # the teacher's spelling of the synthetic student-only `</think>`


def synthetic_bridged_pair(v_s=40, pad_rows=128):
    """Student id v_s - 1 is a student-only `</think>` spelled [7, 8, 9] by the teacher; the teacher has padded rows.

    The student likes `</think>`; the teacher writes 7 sometimes and, once it has, 8 then 9 (a bigram
    steer), so its probability of the whole spelling is near its probability of 7: sometimes above the
    threshold, sometimes below.
    """
    v_t, think_close = v_s + pad_rows, v_s - 1
    teacher = Steered(tiny_lm(v_t, seed=5), always={7: 5.0}, after={7: {8: 30.0}, 8: {9: 30.0}})
    student = tiny_lm(v_s, seed=6)
    with torch.no_grad():
        student.lm_head.weight[think_close] *= 1.5
    teacher_mask = torch.zeros(v_t, dtype=torch.bool)
    teacher_mask[think_close:] = True
    bridge = VocabBridge(teacher_vocab_size=v_t, student_vocab_size=v_s, teacher_mask=teacher_mask,
                         student_mask=torch.zeros(v_s, dtype=torch.bool), student_only={think_close: SPELLING})
    return teacher, student, bridge, think_close


@pytest.mark.parametrize("trials,threshold_on", [(1, "tempered"), (2, "raw")])
def test_skd_student_only_token_matches_uncached_spelling_reference(trials, threshold_on):
    """The cached engine (look-ahead on the proposed rows only, rolled back; refills) equals a reference that
    scores every student-only id by its spelling with uncached forwards, token for token."""
    teacher, student, bridge, think_close = synthetic_bridged_pair()
    cfg = DecodingConfig(mode="skd", temperature=1.0, threshold=0.05, max_new_tokens=14, trials=trials,
                         threshold_on=threshold_on, stop_ids=(1,))
    prompts = [[30, 12, 22, 4], [10, 11, 12, 13, 14], [31, 36, 16, 27], [15, 33, 11, 20], [20, 21]]
    seeds = [1, 2, 3, 4, 5]
    traces = Decoder(teacher, student, bridge, cfg).generate(prompts, seeds, batch_size=2)
    accepted = [(t, j) for t in traces for j, y in enumerate(t.token_ids) if y == think_close]
    assert accepted, "the student's `</think>` must be approved by the teacher at least once"
    for t, j in accepted:  # only the student can emit it, and the teacher approved it by its spelling
        assert t.source[j] == 1 and not t.fallback[j] and t.teacher_prob[j] >= 0.05 or threshold_on == "raw"
    for prompt, seed, trace in zip(prompts, seeds, traces):
        ref = reference_decode_skd(teacher, student, bridge, cfg, prompt, seed)
        assert trace.token_ids == ref["tokens"]
        assert trace.fallback == ref["fallback"]
        assert torch.allclose(torch.tensor(trace.teacher_prob), torch.tensor(ref["teacher_prob"]), rtol=1e-4, atol=1e-6)


def test_skd_step_distribution_is_the_documented_mixture():
    """One SKD step from one prompt, 4,000 rows: frequencies match P(y) = P_s(y) 1[A_t(y) >= tau] + r P_t(y),
    A_t = the teacher's probabilities with `</think>` scored by its spelling (chi-square)."""
    teacher, student, bridge, think_close = synthetic_bridged_pair()
    cfg = DecodingConfig(mode="skd", temperature=1.0, threshold=0.03, max_new_tokens=1)
    prompt, n = [31, 36, 16, 27], 4000
    traces = Decoder(teacher, student, bridge, cfg).generate([prompt] * n, list(range(n)), batch_size=n)
    t_ctx = bridge.student_to_teacher(prompt)
    with torch.no_grad():
        probs = step_probs(teacher(torch.tensor([t_ctx])).logits[:, -1], student(torch.tensor([prompt])).logits[:, -1],
                           bridge, cfg)
    probs = spelled_approval(teacher, bridge, cfg, t_ctx, probs)
    a_think = probs.teacher_approval[0, think_close].item()
    assert a_think >= cfg.threshold and probs.student[0, think_close] > 0.05, "the test needs an approvable `</think>`"
    exact, r = skd_mixture(probs.teacher_approval, probs.student, cfg.threshold)  # verifier = A_t ...
    exact = exact - r[:, None] * probs.teacher_approval + r[:, None] * probs.teacher  # ... fallback = P_t
    counts = torch.bincount(torch.tensor([t.token_ids[0] for t in traces]), minlength=exact.shape[1]).double()
    expected = exact[0].double() * n
    live = expected > 0
    assert counts[~live].sum() == 0
    chi2 = (((counts - expected) ** 2)[live] / expected[live]).sum().item()
    assert chi2 < stats.chi2.ppf(1 - ALPHA, int(live.sum()) - 1)
    assert counts[think_close] > 0.5 * expected[think_close]  # old rule: never (teacher probability 0)


def test_look_ahead_leaves_the_cache_as_it_was():
    model = tiny_lm(VOCAB, seed=3)
    a, b = ModelState(model, 0), ModelState(model, 0)
    for state in (a, b):
        state.feed([[5, 6, 7], [8, 9]])
    ahead = a.look_ahead([[10, 11], []])
    assert ahead[0].shape == (2, VOCAB) and ahead[1].shape == (0, VOCAB)
    with torch.no_grad():  # the look-ahead logits are those of the continued context
        full = model(torch.tensor([[5, 6, 7, 10, 11]])).logits[0, -2:]
    assert torch.allclose(ahead[0], full, atol=1e-5)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.next_pos, b.next_pos)
    assert a.cache.get_seq_length() == b.cache.get_seq_length()
    assert torch.allclose(a.feed([[12], [13]]), b.feed([[12], [13]]), atol=1e-6)


@pytest.fixture(scope="module")
def paper_pair_stand_in():
    """Tiny random models with the paper pair's vocabularies and REAL tokenizers: a Qwen2 teacher with
    152,064 rows (s1.1-7B) and a Qwen3 student with 151,936 (Qwen3-0.6B), bridged from the Qwen2.5/Qwen3 tokenizers."""
    import _tokenizers as T

    try:
        qwen25, qwen3 = T.qwen25_tokenizer(), T.qwen3_tokenizer()
    except T.FixtureUnavailable as err:
        pytest.fail(str(err), pytrace=False)
    teacher = tiny_lm(152_064, seed=8, init=0.02)
    student = tiny_lm(151_936, seed=9, init=None, arch="qwen3", head_dim=8, tie_embeddings=True,
                      pad_token_id=151_643, eos_token_id=151_645)
    bridge = VocabBridge.from_tokenizers(qwen25, qwen3, 152_064, 151_936)
    prompt = qwen3("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n<think>\n",
                   add_special_tokens=False)["input_ids"]
    return teacher, student, bridge, qwen3, prompt


THINK_CLOSE_ID, THINK_CLOSE_TEACHER = 151_668, [522, 26865, 29]  # `</think>`: student id, teacher spelling


def test_skd_closes_thinking_when_the_teacher_agrees(paper_pair_stand_in):
    """Paper pair stand-in: the student proposes `</think>` (151668); a teacher steered to write `</`, `think`, `>`
    approves it, so SKD emits the student's single `</think>` id (old rule: teacher probability 0, always rejected)."""
    teacher, student, bridge, qwen3, prompt = paper_pair_stand_in
    assert bridge.student_only[THINK_CLOSE_ID] == THINK_CLOSE_TEACHER
    steer = {"always": {522: 25.0}, "after": {522: {26865: 50.0}, 26865: {29: 50.0}}}
    wants_to_close = Steered(student, always={THINK_CLOSE_ID: 25.0})
    cfg = DecodingConfig(mode="skd", temperature=0.7, threshold=0.01, max_new_tokens=3, stop_ids=(151_645,))
    decoder = Decoder(Steered(teacher, **steer), wants_to_close, bridge, cfg)
    traces = decoder.generate([prompt] * 2, [0, 1], batch_size=2)
    for trace in traces:
        assert trace.token_ids[0] == THINK_CLOSE_ID, qwen3.decode(trace.token_ids)
        assert trace.source[0] == 1 and not trace.fallback[0] and trace.teacher_prob[0] > 0.9
        assert qwen3.decode(trace.token_ids[:1]) == "</think>"


def test_skd_rejects_the_students_think_close_when_only_its_first_piece_is_likely(paper_pair_stand_in):
    """The rule is the product over the spelling: a teacher that likes `</` but not `think` after it rejects
    `</think>` (a first-piece rule would approve it), and its fallback writes `</`."""
    teacher, student, bridge, qwen3, prompt = paper_pair_stand_in
    cfg = DecodingConfig(mode="skd", temperature=0.7, threshold=0.01, max_new_tokens=1)
    traces = Decoder(Steered(teacher, always={522: 25.0}), Steered(student, always={THINK_CLOSE_ID: 25.0}),
                     bridge, cfg).generate([prompt] * 2, [0, 1], batch_size=2)
    for trace in traces:
        assert trace.token_ids == [522] and trace.fallback == [True] and trace.source == [0]


def test_rsd_still_never_asks_the_teacher_about_student_only_tokens(paper_pair_stand_in):
    """RSD's mixture is unchanged: a student `</think>` reaches the trace only by fallback, teacher_prob 0."""
    teacher, student, bridge, qwen3, prompt = paper_pair_stand_in
    steer = {"always": {522: 25.0}, "after": {522: {26865: 50.0}, 26865: {29: 50.0}}}
    cfg = DecodingConfig(mode="rsd", temperature=0.7, threshold=0.01, max_new_tokens=1)
    traces = Decoder(Steered(teacher, **steer), Steered(student, always={THINK_CLOSE_ID: 25.0}),
                     bridge, cfg).generate([prompt] * 2, [0, 1], batch_size=2)
    for trace in traces:  # the teacher proposes `</` (student probability ~0): fallback to the student's `</think>`
        assert trace.token_ids == [THINK_CLOSE_ID] and trace.fallback == [True] and trace.teacher_prob == [0.0]
