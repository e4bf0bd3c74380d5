"""Issue 30: the paper's data rules (all problems accounted for, trusted golds, keep rule per method, the
threshold's probability, top-p, the s1K-1.1 prompt, MATH500 avg@k, the preflight)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from _tiny import tiny_model, tiny_tokenizer

from rsdlib.bridge import VocabBridge
from rsdlib.data import Problem
from rsdlib.decoding import DecodingConfig
from rsdlib.grading import TRUSTED_GOLD_RULES, gold_trust
from rsdlib.traces import (
    KEEP_BY_MODE,
    TraceJobConfig,
    kept_lengths_by_rule,
    run_trace_job,
    select_examples,
    trace_run_stats,
)


def _tiny_pair():
    tok = tiny_tokenizer()
    teacher, student = tiny_model(tok, seed=1), tiny_model(tok, seed=2)
    V = teacher.config.vocab_size
    return SimpleNamespace(teacher=teacher, student=student, student_tokenizer=tok, teacher_tokenizer=tok,
                           bridge=VocabBridge.from_tokenizers(tok, tok, V, V))


def _s1k_like(i: int, gold: str, rule: str, question: str = "", solution: str = "") -> Problem:
    return Problem(id=f"q{i}", question=question or f"What is {i}+{i}?", gold=gold, kind="math",
                   meta={"gold_rule": rule, "gold_extracted": bool(gold), "solution": solution or gold})


# ------------------------------------------------------------------------------------- point 1
def test_trusted_golds_refuse_partial_ones():
    assert gold_trust(Problem(id="m", question="2+2?", gold="4", kind="integer")) == (True, "answer column")
    assert gold_trust(_s1k_like(0, "128", "short"))[0]
    assert gold_trust(_s1k_like(1, "C", "answer_line"))[0]
    assert gold_trust(_s1k_like(2, "7", "boxed", solution="so $\\boxed{7}$"))[0]
    assert not gold_trust(_s1k_like(3, "", "none"))[0]
    assert not gold_trust(_s1k_like(4, "0.0947", "last_equals"))[0]  # a worked solution's last "=": not stated
    # a two-part proof reduced to one inequality: the boxed claim, not an answer
    proof = _s1k_like(5, "a^2 + b^2 \\leq 2", "boxed", question="Prove that a^2+b^2 <= 2 and that a+b <= 2.")
    trusted, why = gold_trust(proof)
    assert not trusted and "proof" in why
    # a multi-part answer whose gold kept only its last box
    parts = _s1k_like(6, "2^{1011}", "boxed", question="(1) Find the minimum. (2) Find the product.",
                      solution="(1) $\\boxed{2}$ (2) $\\boxed{2^{1011}}$")
    assert not gold_trust(parts)[0]
    assert set(TRUSTED_GOLD_RULES) == {"answer column", "short", "answer_line", "boxed"}


def test_shipped_s1k_golds_all_accounted_for():
    from rsdlib.data import load_benchmark

    problems = load_benchmark("s1k")
    trusted = [p for p in problems if gold_trust(p)[0]]
    ungradable = [p for p in problems if not gold_trust(p)[0]]
    assert len(problems) == len(trusted) + len(ungradable) == 1000
    assert all(p.meta["gold_rule"] in TRUSTED_GOLD_RULES for p in trusted)
    assert sum(not p.gold for p in ungradable) == 184  # no extractable gold (DATA.md)
    assert len(ungradable) == 264  # + 43 last_equals + 33 proof claims + 4 multi-part boxes (pinned data)


def test_every_problem_is_accounted_for_and_ungradable_ones_get_prefixes(tmp_path):
    """Unrestricted (teacher) and restricted runs: full + prefix = every problem; ungradable never attempted."""
    pair = _tiny_pair()
    problems = [Problem(id=f"q{i}", question=f"What is {i}+{i}?", gold=str(2 * i), kind="integer") for i in range(4)]
    problems.insert(1, _s1k_like(10, "", "none"))  # a proof: no gold
    problems.insert(3, _s1k_like(11, "4", "last_equals"))  # a partial gold, which a sample could hit
    cfg = TraceJobConfig(method="teacher", decoding=DecodingConfig(mode="teacher", max_new_tokens=10),
                         samples_per_problem=2, prefix_tokens=5, grade_timeout=None)
    summary = run_trace_job(pair, problems, cfg, tmp_path / "teacher", progress=False)
    assert summary["ungradable_problems"] == 2 and summary["problems_without_gold"] == 1
    assert summary["training_examples"] == 6 == summary["full_examples"] + summary["prefix_examples"]
    assert summary["n_problems"] == 6  # Table 2's denominator: every problem (the paper's 234/1000)
    samples = [json.loads(x) for x in (tmp_path / "teacher" / "samples.jsonl").read_text().splitlines()]
    graded = {s["problem_id"] for s in samples if not s.get("prefix_only")}
    assert graded == {"q0", "q1", "q2", "q3"}  # the ungradable ones are never attempted nor graded
    assert {s["problem_id"] for s in samples if s.get("prefix_only")} == {"q10", "q11"}
    dataset = [json.loads(x) for x in (tmp_path / "teacher" / "dataset.jsonl").read_text().splitlines()]
    assert sorted(e["problem_id"] for e in dataset) == sorted(p.id for p in problems)
    assert {e["kind"] for e in dataset if e["problem_id"] in ("q10", "q11")} == {"prefix"}
    stats = trace_run_stats(tmp_path / "teacher")
    assert stats["problems"] == 6 and stats["attempted_problems"] == 4 and stats["ungradable_problems"] == 2
    # a restricted run: "/N" is the teacher-solved count; every other problem (ungradable too) gets a prefix
    teacher_dir = tmp_path / "fake-teacher"
    teacher_dir.mkdir()
    (teacher_dir / "dataset.jsonl").write_text("".join(
        json.dumps({"problem_id": pid, "kind": "full", "sample_index": 0}) + "\n" for pid in ("q1", "q2")))
    rsd = TraceJobConfig(method="rsd", decoding=DecodingConfig(mode="rsd", max_new_tokens=10),
                         samples_per_problem=2, prefix_tokens=5, grade_timeout=None)
    s2 = run_trace_job(pair, problems, rsd, tmp_path / "rsd", restrict_to=teacher_dir, progress=False)
    assert s2["n_problems"] == 2 and s2["samples"] == 4
    assert s2["prefix_only_problems"] == 4 and s2["training_examples"] == 6
    assert trace_run_stats(tmp_path / "rsd")["problems"] == 2


# ------------------------------------------------------------------------------------- point 2
def _sample(pid, k, n_tokens, correct=True):
    return {"problem_id": pid, "sample_index": k, "prompt_ids": [1], "token_ids": list(range(n_tokens)),
            "think_closes": 1, "ended_turn": True, "fallback_rate": 0.0,
            "status": "correct" if correct else "wrong"}


def test_keep_rule_is_per_method_and_table6_under_both_rules():
    assert KEEP_BY_MODE == {"rsd": "shortest", "skd": "shortest", "teacher": "first", "student": "first"}
    for mode, rule in KEEP_BY_MODE.items():
        assert TraceJobConfig(decoding=DecodingConfig(mode=mode)).keep == rule
    assert TraceJobConfig(decoding=DecodingConfig(mode="student"), keep="shortest").keep == "shortest"
    samples = [_sample("a", 0, 9, correct=False), _sample("a", 1, 7), _sample("a", 2, 3),
               _sample("b", 0, 4), _sample("b", 1, 2), _sample("c", 0, 5, correct=False)]
    first = select_examples(samples[:3], TraceJobConfig(decoding=DecodingConfig(mode="teacher")), stop_ids=[])
    shortest = select_examples(samples[:3], TraceJobConfig(decoding=DecodingConfig(mode="rsd")), stop_ids=[])
    assert first[0]["sample_index"] == 1 and shortest[0]["sample_index"] == 2
    by_rule = kept_lengths_by_rule(samples, 0.5)
    assert by_rule == {"problems": 2, "first": (7 + 4) / 2, "shortest": (3 + 2) / 2}


def test_paper_profiles_keep_by_the_authors_rule():
    import yaml

    from rsdlib.reproduce import PARAMS_DIR
    from rsdlib.traces import method_job_config

    for profile in ("paper", "paper-dry"):
        params = yaml.safe_load((PARAMS_DIR / profile / "10_generate_traces.yaml").read_text())
        params.setdefault("profile", profile)
        keep = {m: method_job_config(params, m, "t", "s").keep for m in params["methods"]}
        assert keep["teacher"] == keep["self-distill"] == keep["self-distill-ce"] == "first"
        assert keep["rsd-p1"] == keep["skd"] == "shortest"
