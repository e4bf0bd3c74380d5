"""A tailored pair across tokenizers (issue 29, item 3): DeepSeek-R1-Distill-Llama-8B teaching
Llama-3.2-1B-Instruct, with the real Llama-3 tokenizers (the stand-ins of ../shared/tokenizers; R1-Distill's
special tokens renamed as it names them)."""

from __future__ import annotations

import json

import pytest
import torch

from rsdlib.bridge import VocabBridge
from rsdlib.data import load_benchmark
from rsdlib.prompts import prompt_ids, prompt_text, special_token_pairs, teacher_prompt_ids
from rsdlib.standins import standin_tokenizer

R1, LLAMA = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "meta-llama/Llama-3.2-1B-Instruct"
BOS, R1_END, EOT, R1_THINK_CLOSE = 128000, 128001, 128009, 128014


@pytest.fixture(scope="module")
def toks():
    return standin_tokenizer(R1), standin_tokenizer(LLAMA)


@pytest.fixture(scope="module")
def bridge(toks):
    teacher, student = toks
    return VocabBridge.from_tokenizers(teacher, student, 128_256, 128_256,
                                      special_pairs=special_token_pairs(teacher, student))


def test_the_teachers_end_of_thinking_and_end_of_turn_are_never_masked(toks, bridge):
    teacher, student = toks
    assert teacher.convert_ids_to_tokens([R1_END, R1_THINK_CLOSE]) == ["<｜end▁of▁sentence｜>", "</think>"]
    assert not bridge.teacher_mask[R1_END] and not bridge.teacher_mask[R1_THINK_CLOSE]
    close_first_piece = student("</think>", add_special_tokens=False)["input_ids"][0]
    assert bridge.teacher_alias[R1_END] == EOT and bridge.teacher_alias[R1_THINK_CLOSE] == close_first_piece
    probs = torch.zeros(2, 128_256)  # (B, V_t)
    probs[0, R1_END], probs[0, 11] = 0.7, 0.3  # "ends its turn" / a shared text token
    probs[1, R1_THINK_CLOSE], probs[1, close_first_piece] = 0.6, 0.4
    out = bridge.teacher_to_student(probs)  # (B, V_s)
    assert out[0, EOT] == pytest.approx(0.7) and out[0, 11] == pytest.approx(0.3) and out[0, R1_END] == 0
    assert out[1, close_first_piece] == pytest.approx(1.0) and torch.allclose(out.sum(-1), torch.ones(2))
    # the old rule (strings compared id by id, no roles) masked both: R1-Distill could never close its thinking
    old = VocabBridge.from_tokenizers(teacher, student, 128_256, 128_256)
    assert old.teacher_mask[R1_END] and old.teacher_mask[R1_THINK_CLOSE]


def test_special_tokens_cross_as_special_tokens_never_as_text(toks, bridge):
    teacher, student = toks
    assert bridge.student_to_teacher([BOS]) == [BOS]  # <|begin_of_text|> is <｜begin▁of▁sentence｜>, one id
    old = VocabBridge.from_tokenizers(teacher, student, 128_256, 128_256)
    assert len(old.student_to_teacher([BOS])) == 7  # the bug: 7 text pieces "<", "|", "begin", ...
    assert bridge.student_to_teacher([128001]) == [R1_END]  # <|end_of_text|> -> the teacher's end
    reserved = [128011, 128012, 128013, 128014, 128015]  # Llama's reserved ids that R1-Distill renamed
    assert all(student.convert_ids_to_tokens(i).startswith("<|reserved_special_token") for i in reserved)
    assert bool(bridge.student_mask[reserved].all())  # never sampled by the student, never spelled as text
    with pytest.raises(ValueError, match="no teacher counterpart"):
        bridge.student_to_teacher([128011])
    for sid, spelling in bridge.student_only.items():  # every student-only id crosses as one special token
        assert len(spelling) == 1 and spelling[0] in teacher.all_special_ids


def test_each_teacher_is_prompted_in_its_own_template(toks):
    teacher, student = toks
    problem = load_benchmark("s1k", limit=1)[0]
    own = teacher_prompt_ids(teacher, student, problem)
    text = teacher.decode(own, skip_special_tokens=False)
    assert own[0] == BOS and own.count(BOS) == 1 and text == prompt_text(teacher, problem)
    assert text.endswith("<｜User｜>" + problem.question.strip() + "<｜Assistant｜><think>\n")
    assert own[-2] == teacher.convert_tokens_to_ids("<think>")  # its own <think> token, opened once
    assert "You are Qwen" not in text and "Alibaba" not in text  # Figure 7's Qwen identity is Qwen's only
    s_text = prompt_text(student, problem)
    assert s_text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert "Today Date: 26 Jul 2024" in s_text and "You are Qwen" not in s_text
    assert prompt_ids(student, problem)[0] == BOS and prompt_ids(student, problem).count(BOS) == 1
    # the paper's Qwen pair renders one text: the teacher reads the student's prompt through the bridge
    qwen25, qwen3 = standin_tokenizer("simplescaling/s1.1-7B"), standin_tokenizer("Qwen/Qwen3-0.6B")
    assert teacher_prompt_ids(qwen25, qwen3, problem) is None


@pytest.mark.slow
def test_the_llama_tailored_pair_keeps_a_trace_end_to_end(tmp_path, monkeypatch):
    """R1-Distill's stand-in teacher, steered to a correct solution, closes its thinking with its own
    </think> and its turn with its own end of sentence; RSD keeps the trace in the student's format."""
    import rsdlib.standins as standins
    from rsdlib.decoding import DecodingConfig
    from rsdlib.models import load_pair
    from rsdlib.traces import TraceJobConfig, run_trace_job

    real = standins.standin_folder
    monkeypatch.setattr(standins, "standin_folder", lambda hub_id: real(hub_id, root=tmp_path))
    pair = load_pair(f"standin:{R1}", f"standin:{LLAMA}", dtype="float32", device="cpu")
    known = [p for p in load_benchmark("s1k", limit=40)
             if p.gold and pair.student.rsdlib_steer._gold_for(p.question) is not None][:2]
    assert known, "the steering knows 3 in 4 s1K problems"
    summaries = {}
    for method, mode in (("teacher", "teacher"), ("rsd-p1", "rsd")):
        cfg = TraceJobConfig(method=method, decoding=DecodingConfig(mode=mode, threshold=0.01, temperature=0.7,
                                                                    max_new_tokens=80),
                             samples_per_problem=2, prefix_tokens=0, grade_timeout=None)
        restrict = tmp_path / "teacher" if method != "teacher" else None
        summaries[method] = run_trace_job(pair, known, cfg, tmp_path / method, progress=False, restrict_to=restrict)
    samples = [json.loads(line) for line in (tmp_path / "teacher" / "samples.jsonl").read_text().splitlines()]
    closed = [s for s in samples if s["think_closes"] == 1 and s["ended_turn"]]
    assert closed, [s["text"][-80:] for s in samples]  # the teacher's own </think> and end of turn reach the trace
    kept = [json.loads(line) for line in (tmp_path / "rsd-p1" / "dataset.jsonl").read_text().splitlines()]
    full = [e for e in kept if e["kind"] == "full"]
    assert full, summaries["rsd-p1"]
    tok = pair.student_tokenizer
    text = tok.decode(full[0]["completion_ids"], skip_special_tokens=False)
    assert text.count("</think>") == 1 and text.endswith("<|eot_id|>") and "\\boxed{" in text
    assert full[0]["prompt_ids"] == prompt_ids(tok, next(p for p in known if p.id == full[0]["problem_id"]))
