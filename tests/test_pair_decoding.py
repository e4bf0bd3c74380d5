"""The decoder on the real embedded pair (slow: loads Qwen2.5-Coder 1.5B + 0.5B, prepared by `rsdlib prepare`)."""

import pytest

pytestmark = pytest.mark.slow

THRESHOLD = 0.01


@pytest.fixture(scope="module")
def setup():
    from rsdlib.data import Problem
    from rsdlib.models import load_demo_pair
    from rsdlib.prompts import WORDS_ONLY, PromptStyle, end_of_turn_ids, prompt_ids

    pair = load_demo_pair(dtype="float32", device="cpu")
    tok = pair.student_tokenizer
    problem = Problem(id="demo", question="What is $3 \\times 4 + 5$?", gold="17", kind="integer")
    ids = prompt_ids(tok, problem, PromptStyle.named("user-instruction", extra_instruction=WORDS_ONLY))
    return pair, tok, ids, end_of_turn_ids(tok)


@pytest.mark.parametrize("draft_tokens", [0, 3])
def test_rsd_on_the_embedded_pair_obeys_the_rule(setup, draft_tokens):
    from rsdlib.decoding import Decoder, DecodingConfig

    pair, tok, ids, stops = setup
    assert pair.bridge.is_identity
    real_vocab = int((~pair.bridge.student_mask).sum())  # ids past the [PAD] fillers are masked
    cfg = DecodingConfig(mode="rsd", temperature=0.7, threshold=THRESHOLD, max_new_tokens=20, stop_ids=stops,
                         draft_tokens=draft_tokens)
    traces = Decoder(pair.teacher, pair.student, pair.bridge, cfg).generate([ids] * 3, [0, 1, 2], batch_size=3)
    for t in traces:
        assert len(t.token_ids) == len(t.student_prob) == len(t.fallback) > 0
        assert max(t.token_ids) < real_vocab
        text = tok.decode(t.token_ids, skip_special_tokens=True)
        assert text.strip(), "empty output"
        if draft_tokens == 0:  # lockstep: an accepted teacher token passed the student's threshold, on the
            tested = t.student_prob_raw if cfg.threshold_on == "raw" else t.student_prob  # probability tested
            for p_s, fb in zip(tested, t.fallback):
                assert fb or p_s >= THRESHOLD
        assert all(0 <= p <= 1 for p in t.teacher_prob + t.student_prob + t.student_prob_raw)


def test_threshold_zero_reproduces_teacher_sampling_on_the_embedded_pair(setup):
    from rsdlib.decoding import Decoder, DecodingConfig

    pair, tok, ids, stops = setup
    out = {}
    for mode, threshold in (("rsd", 0.0), ("teacher", 0.01)):
        cfg = DecodingConfig(mode=mode, threshold=threshold, max_new_tokens=12, stop_ids=stops)
        traces = Decoder(pair.teacher, pair.student, pair.bridge, cfg).generate([ids] * 2, [5, 6], batch_size=2)
        out[mode] = [t.token_ids for t in traces]
    assert out["rsd"] == out["teacher"]
