"""Issue 12: the paper profile runs the paper's experiment (composition, prompt, s1.1's format, ids, Table 3)."""

from __future__ import annotations

import json
import math

import pytest
from _tiny import tiny_pair

from rsdlib.data import Problem
from rsdlib.decoding import DecodingConfig, Trace
from rsdlib.prompts import FIGURE7_SYSTEM, PROMPT_STYLES, PromptStyle, prompt_text
from rsdlib.traces import (
    EmptyTrainingSetError,
    TraceJobConfig,
    map_think_close,
    pair_reference,
    run_trace_job,
    training_composition,
)

FIG7 = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\nYou must respond "
        "to every query in the following manner:\nFirst, provide a step-by-step logical exploration of the problem.\n"
        "Then, provide a clear and direct response based on your reasoning, with the final answer enclosed in "
        "$\\boxed{\\text{}}$.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n")


def real_tokenizer(name):
    """A stand-in's tokenizer (real files of RSDLIB_STANDIN_TOKENIZERS / ../shared/tokenizers)."""
    from rsdlib.standins import STANDINS, _standin_tokenizer, standin_tokenizers_dir

    return _standin_tokenizer(STANDINS[name], standin_tokenizers_dir() / STANDINS[name].tokenizer)


# ------------------------------------------------------------------------------------- item 2
def test_default_prompt_is_figure7_with_the_real_qwen3_chat_template():
    tok = real_tokenizer("Qwen/Qwen3-0.6B")
    problem = Problem(id="x", question="What is 2+2?", gold="4", kind="integer")
    assert prompt_text(tok, problem) == FIG7
    assert prompt_text(tok, problem, PromptStyle.named("figure7")) == FIG7
    assert PromptStyle().system == FIGURE7_SYSTEM
    left = prompt_text(tok, problem, PromptStyle.named("figure7-s1k"))  # Figure 7's s1K-1.1 side
    assert left.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
                           "You are a helpful assistant.<|im_end|>")
    old = prompt_text(tok, problem, PromptStyle.named("user-instruction"))
    assert "What is 2+2?\n\nPlease reason step by step" in old
    assert set(PROMPT_STYLES) == {"figure7", "figure7-s1k", "user-instruction"}
    with pytest.raises(ValueError, match="unknown prompt style"):
        PromptStyle.named("nope")


def test_paper_profiles_use_figure7_and_map_s1s_native_end():
    import yaml

    from rsdlib.prompts import prompt_style
    from rsdlib.reproduce import PARAMS_DIR

    for profile in ("paper", "paper-dry"):
        values = yaml.safe_load((PARAMS_DIR / profile / "10_generate_traces.yaml").read_text())["prompt"]
        style = prompt_style(values)
        assert style.system == FIGURE7_SYSTEM and style.math_instruction == ""
        assert style.think_close_aliases == ("<|im_start|>answer",)


# ------------------------------------------------------------------------------------- item 3
def _trace(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n = len(ids)
    return Trace(prompt_ids=[1], token_ids=list(ids), source=[0] * n, teacher_prob=[0.5] * n,
                 student_prob=[0.5] * n, student_prob_raw=[0.5] * n, student_entropy=[1.0] * n, fallback=[False] * n)


def test_s1_native_end_of_thinking_is_mapped_to_the_students_delimiter():
    tok = real_tokenizer("Qwen/Qwen3-0.6B")
    style = PromptStyle(think_close_aliases=("<|im_start|>answer",))
    tr = _trace(tok, "So x = 4.<|im_start|>answer\nAnswer: $\\boxed{4}$<|im_end|>")
    assert map_think_close(tr, tok, style) == "<|im_start|>answer"
    text = tok.decode(tr.token_ids, skip_special_tokens=False)
    assert text == "So x = 4.</think>\nAnswer: $\\boxed{4}$<|im_end|>"
    assert tr.token_ids.count(151668) == 1  # Qwen3's single </think> id
    assert all(len(getattr(tr, k)) == len(tr.token_ids) for k in ("source", "teacher_prob", "fallback"))
    assert math.isnan(tr.teacher_prob[tr.token_ids.index(151668)])
    from rsdlib.grading import grade_many

    assert grade_many([(text, "4", "integer")], timeout=None)[0]["status"] == "correct"
    # a trace that already closed its thinking is left alone
    tr2 = _trace(tok, "a</think>b<|im_start|>answer\nc")
    before = list(tr2.token_ids)
    assert map_think_close(tr2, tok, style) is None and tr2.token_ids == before


def _tiny_pair():
    return tiny_pair()


def _fake_teacher_run(folder, solved: list[str]):
    folder.mkdir(parents=True)
    (folder / "dataset.jsonl").write_text("".join(
        json.dumps({"problem_id": pid, "kind": "full", "sample_index": 0}) + "\n" for pid in solved))
    return folder


def test_empty_teacher_solved_set_is_a_loud_error(tmp_path):
    pair = _tiny_pair()
    problems = [Problem(id=f"q{i}", question=f"What is {i}+{i}?", gold=str(2 * i), kind="integer") for i in range(3)]
    cfg = TraceJobConfig(method="rsd", decoding=DecodingConfig(mode="rsd", max_new_tokens=4), samples_per_problem=1,
                         prefix_tokens=4, grade_timeout=None)
    with pytest.raises(EmptyTrainingSetError, match="solved 0"):
        run_trace_job(pair, problems, cfg, tmp_path / "rsd", restrict_to=_fake_teacher_run(tmp_path / "t", []),
                      progress=False)


# ------------------------------------------------------------------------------------- item 1
def test_every_problem_gets_an_example_full_or_prefix(tmp_path):
    """The hybrid recipe: attempted = teacher-solved; every other problem gets a prefix-only generation."""
    pair = _tiny_pair()
    problems = [Problem(id=f"q{i}", question=f"What is {i}+{i}?", gold=str(2 * i), kind="integer") for i in range(5)]
    teacher_dir = _fake_teacher_run(tmp_path / "teacher", ["q1", "q3"])
    cfg = TraceJobConfig(method="rsd", decoding=DecodingConfig(mode="rsd", max_new_tokens=12), samples_per_problem=2,
                         prefix_tokens=6, grade_timeout=None)
    summary = run_trace_job(pair, problems, cfg, tmp_path / "rsd", restrict_to=teacher_dir, progress=False)
    dataset = [json.loads(line) for line in (tmp_path / "rsd" / "dataset.jsonl").read_text().splitlines()]
    assert sorted(e["problem_id"] for e in dataset) == [f"q{i}" for i in range(5)]  # one example per problem
    assert summary["samples"] == 4  # attempts: the teacher-solved problems only
    assert summary["prefix_only_problems"] == 3 and summary["prefix_only_samples"] == 3
    assert summary["training_examples"] == 5 == summary["full_examples"] + summary["prefix_examples"]
    samples = [json.loads(line) for line in (tmp_path / "rsd" / "samples.jsonl").read_text().splitlines()]
    prefix_only = [s for s in samples if s.get("prefix_only")]
    assert {s["problem_id"] for s in prefix_only} == {"q0", "q2", "q4"}
    assert all(len(s["token_ids"]) <= 6 for s in prefix_only)
    from rsdlib.traces import trace_run_stats

    stats = trace_run_stats(tmp_path / "rsd")
    assert stats["problems"] == 2 and stats["samples"] == 4 and stats["training_examples"] == 5
    # attempted scope: examples only for the attempted problems
    cfg2 = TraceJobConfig(**{**cfg.__dict__, "prefix_scope": "attempted"})
    s2 = run_trace_job(pair, problems, cfg2, tmp_path / "rsd2", restrict_to=teacher_dir, progress=False)
    assert s2["training_examples"] == 2 and s2["prefix_only_problems"] == 0
    assert training_composition([{"kind": "full"}, {"kind": "prefix"}, {"kind": "prefix"}]) == {
        "full_examples": 1, "prefix_examples": 2, "training_examples": 3}


# ------------------------------------------------------------------------------------- item 6
def test_s1k11_shares_s1ks_id_space_and_pairs_by_question():
    from rsdlib.data import _s1k, _s1k_11

    s1k = _s1k([{"id": 0, "problem": "Q zero?", "solution": "\\boxed{1}"},
                {"id": 1, "problem": "Q one?", "solution": "\\boxed{2}"}])
    s11 = _s1k_11([{"question": "Q one?", "solution": "\\boxed{2}", "deepseek_thinking_trajectory": "R1 thinks",
                    "deepseek_attempt": "So \\boxed{2}"},
                   {"question": "Q zero?", "solution": "\\boxed{1}", "deepseek_thinking_trajectory": "t0",
                    "deepseek_attempt": "a0"}])
    assert [p.id for p in s1k] == ["s1k-0", "s1k-1"] and s11[0].id.startswith("s1k-") and s11[0].source == "s1k-1.1"
    pairs = pair_reference(s11, s1k, "</think>")
    assert [(p.id, text) for p, text in pairs] == [("s1k-0", "t0\n</think>\n\na0"),
                                                   ("s1k-1", "R1 thinks\n</think>\n\nSo \\boxed{2}")]


def test_paper_reference_run_follows_s1s_block_size():
    import yaml

    from rsdlib.reproduce import PARAMS_DIR

    train = yaml.safe_load((PARAMS_DIR / "paper" / "30_train.yaml").read_text())
    assert train["method_training"] == {"reference": {"block_size": 32768}}
    assert train["training"]["truncate"] is False


# ------------------------------------------------------------------------------------- item 11
def test_table3_has_the_papers_self_distill_16_solved_cell():
    from rsdlib import reference

    assert reference.TABLE3_SOLVED == {"self-distill": (122, 234), "self-distill-203": (189, 234), "rsd-p1": (180, 234)}
    table2 = {r["key"]: r for r in reference.TABLE2}
    assert (table2["self-distill"]["solved"], table2["self-distill"]["of"]) == reference.TABLE3_SOLVED["self-distill"]


# ------------------------------------------------------------------------------------- item 9
def test_notebook_kernels_are_pinned_to_one_gpu(monkeypatch):
    from rsdlib.reproduce import _environment

    monkeypatch.delenv("RSDLIB_KERNEL_GPUS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _environment("paper")["CUDA_VISIBLE_DEVICES"] == "0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert _environment("paper")["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.setenv("RSDLIB_KERNEL_GPUS", "0,1")
    assert _environment("paper")["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_a_training_stage_refuses_a_dataset_without_kept_traces(tmp_path):
    from rsdlib.traces import check_trainable

    path = tmp_path / "dataset.jsonl"
    path.write_text(json.dumps({"kind": "prefix", "problem_id": "a"}) + "\n")
    with pytest.raises(EmptyTrainingSetError, match="0 kept"):
        check_trainable(path, "main-rsd-p1")
    path.write_text("")
    with pytest.raises(EmptyTrainingSetError):
        check_trainable(path, "main-rsd-p1")
    path.write_text(json.dumps({"kind": "full"}) + "\n" + json.dumps({"kind": "prefix"}) + "\n")
    assert check_trainable(path, "x") == {"full_examples": 1, "prefix_examples": 1, "training_examples": 2}


def test_training_notebooks_use_the_check_instead_of_skipping():
    from rsdlib.reproduce import notebook_path

    stages = {"30_train": ("rsdlib/train.py", "run_train_stage(params)"),
              "35_multistep": ("rsdlib/multistep.py", "run_multistep(params)")}
    for name, (module, call) in stages.items():
        source = notebook_path(name).read_text()
        assert call in source and "not trained" not in source and "the student stays" not in source
        stage = (notebook_path(name).parents[1] / module).read_text()
        assert "check_trainable(" in stage and 'require_kept=params["require_kept_traces"]' in stage


# ------------------------------------------------------------------------------------- item 10
def test_each_model_is_evaluated_in_its_own_process_with_the_same_result(tmp_path, monkeypatch):
    """The orchestration vLLM needs (one process per model), checked with the HF backend."""
    from _tiny import save_tiny_pair

    from rsdlib.evalproc import EvaluationProcessError, evaluate_isolated, isolate_models
    from rsdlib.evaluate import EvalConfig, evaluate

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"problem": f"What is {i}+1?", "answer": str(i + 1), "level": 1, "unique_id": f"test/a/{i}.json"}
            for i in range(3)]
    (data / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = save_tiny_pair(tmp_path / "model")
    cfg = EvalConfig(benchmarks=("math500",), samples={"math500": 2}, max_tokens={"math500": 8}, think_budget={},
                     temperature=0.7, limit=3, batch_size=4, data_dir=str(data), dtype="float32", device="cpu")
    inproc = evaluate(str(folder), cfg, tmp_path / "a", progress=False)
    child = evaluate_isolated(str(folder), cfg, tmp_path / "b")
    assert child["math500"]["score"] == inproc["math500"]["score"]
    assert child["math500"]["n_samples"] == inproc["math500"]["n_samples"] == 6
    def samples(folder):
        keep = ("problem_id", "sample_index", "seed", "n_tokens", "finish_reason", "status")
        rows = [json.loads(x) for x in (folder / "math500" / "samples.jsonl").read_text().splitlines()]
        return sorted(tuple(r[k] for k in keep) for r in rows)

    assert samples(tmp_path / "a") == samples(tmp_path / "b")  # same samples, generated in another process
    with pytest.raises(EvaluationProcessError, match="failed"):
        evaluate_isolated(str(tmp_path / "missing-model"), cfg, tmp_path / "c")
    assert isolate_models(EvalConfig(backend="vllm")) and not isolate_models(EvalConfig(backend="hf"))
    monkeypatch.setenv("RSDLIB_EVAL_ISOLATE", "1")
    assert isolate_models(EvalConfig(backend="hf"))


def test_prefix_only_training_is_allowed_only_when_asked(tmp_path):
    from rsdlib.traces import check_trainable

    path = tmp_path / "dataset.jsonl"
    path.write_text(json.dumps({"kind": "prefix"}) + "\n")
    assert check_trainable(path, "smoke", require_kept=False)["prefix_examples"] == 1
    path.write_text("")
    with pytest.raises(EmptyTrainingSetError):
        check_trainable(path, "smoke", require_kept=False)
