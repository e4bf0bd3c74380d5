"""Issue 30: the paper's data rules (all problems accounted for, trusted golds, keep rule per method, the
threshold's probability, top-p, the s1K-1.1 prompt, MATH500 avg@k, the preflight)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from _tiny import tiny_pair as _tiny_pair

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


# ------------------------------------------------------------------------------------- point 3
@pytest.mark.parametrize("threshold_on", ["raw", "tempered"])
@pytest.mark.parametrize("mode", ["rsd", "skd"])
def test_threshold_variants_are_exact_mixtures(mode, threshold_on):
    """The decoder's step rule (step_probs + choose_tokens) at T = 0.7, top-p 0.95 samples exactly
    P(y) = P_prop(y) 1[test(y) >= tau] + r P_fallback(y), test = the raw (T = 1, no top-p) or the sampled
    verifier probability; r = the fallback probability (chi-square and a z-test on the fallback share)."""
    import math

    import torch
    from scipy import stats

    from rsdlib.sampling import choose_tokens, draw_uniforms, proposal_mixture, step_probs

    ident = SimpleNamespace(mask_student_logits=lambda x: x, mask_teacher_logits=lambda x: x,
                            teacher_to_student=lambda x: x)
    gen = torch.Generator().manual_seed(11)
    vocab, n, alpha = 12, 200_000, 1e-3
    # the verifier's 5th token has raw probability 0.047 but tempered 0.024: on one side of tau = 0.03 or the
    # other; top-p 0.95 also zeroes the verifier's tail in the tempered variant only
    verifier, proposer = torch.linspace(3, -3, vocab)[None], 0.3 * torch.linspace(-1, 1, vocab)[None]
    t_logits, s_logits = (proposer, verifier) if mode == "rsd" else (verifier, proposer)
    cfg = DecodingConfig(mode=mode, temperature=0.7, top_p=0.95, threshold=0.03, threshold_on=threshold_on)
    assert DecodingConfig().threshold_on == "raw"  # the paper's and the authors' choice is the default
    probs = step_probs(t_logits, s_logits, ident, cfg)
    raw_t, raw_s = torch.softmax(t_logits, -1), torch.softmax(s_logits, -1)
    if mode == "rsd":
        test = raw_s if threshold_on == "raw" else probs.student
        exact, r = proposal_mixture(probs.teacher, test, cfg.threshold, p_fallback=probs.student)
        other = proposal_mixture(probs.teacher, probs.student if threshold_on == "raw" else raw_s, cfg.threshold,
                                 p_fallback=probs.student)[1]
    else:
        test = raw_t if threshold_on == "raw" else probs.teacher
        exact, r = proposal_mixture(probs.student, test, cfg.threshold, p_fallback=probs.teacher)
        other = proposal_mixture(probs.student, probs.teacher if threshold_on == "raw" else raw_t, cfg.threshold,
                                 p_fallback=probs.teacher)[1]
    assert abs(r.item() - other.item()) > 0.01, "the two variants must differ here, or the test shows nothing"
    batch = type(probs)  # StepProbs
    expanded = batch(*(None if x is None else x.expand(n, -1) for x in
                       (probs.teacher, probs.student, probs.student_raw, probs.teacher_raw)))
    tokens, fallback, _ = choose_tokens(expanded, cfg, draw_uniforms(gen, n, cfg.trials + 1))
    counts = torch.bincount(tokens, minlength=vocab).double()
    expected = exact[0].double() * n
    live = expected > 0
    assert counts[~live].sum() == 0
    chi2 = (((counts - expected) ** 2)[live] / expected[live]).sum().item()
    assert chi2 < stats.chi2.ppf(1 - alpha, int(live.sum()) - 1)
    z = (fallback.double().mean().item() - r.item()) / math.sqrt(r.item() * (1 - r.item()) / n)
    assert abs(z) < stats.norm.ppf(1 - alpha / 2)


# ------------------------------------------------------------------------------------- points 3-5: the profiles
def _paper_params(profile, notebook):
    import yaml

    from rsdlib.reproduce import PARAMS_DIR

    return yaml.safe_load((PARAMS_DIR / profile / f"{notebook}.yaml").read_text())


@pytest.mark.parametrize("profile", ["paper", "paper-dry"])
def test_paper_sampling_is_the_authors(profile):
    from rsdlib.traces import method_job_config

    params = _paper_params(profile, "10_generate_traces")
    for method in params["methods"]:
        dec = method_job_config(params, method, "t", "s").decoding
        assert dec.top_p == 0.95 and dec.temperature == 0.7  # authors' trace sampling
        assert dec.threshold_on == "raw"  # Algorithm 1's P_s; the authors' vLLM logprobs are raw
    assert _paper_params(profile, "40_evaluate")["evaluation"]["top_p"] == 0.95


def test_s1k11_reference_uses_figure7_left_prompt():
    from rsdlib.prompts import FIGURE7_SYSTEM, QWEN_SYSTEM_PROMPT, prompt_style
    from rsdlib.traces import reference_prompt_style

    params = _paper_params("paper", "10_generate_traces")
    style = reference_prompt_style(params)
    assert style.system == QWEN_SYSTEM_PROMPT and style.math_instruction == ""  # Figure 7, left
    assert style.think_open == prompt_style(params["prompt"]).think_open
    assert reference_prompt_style({**params, "reference": "standin:s1k-1.1"}).system == QWEN_SYSTEM_PROMPT
    offline = {"reference": "math500_solutions", "prompt": {"style": "figure7"}}
    assert reference_prompt_style(offline).system == FIGURE7_SYSTEM  # other references: the profile's prompt


# ------------------------------------------------------------------------------------- point 8
def test_math500_reports_the_papers_pass1_and_avg_at_k(tmp_path, monkeypatch):
    from rsdlib import tables
    from rsdlib.evaluate import PAPER_SAMPLES, score_row, summarize_rows
    from rsdlib.metrics import avg_at_k

    # 3 problems x 4 samples; sample 0 is the paper's pass@1
    correct = {"p0": [1, 0, 0, 0], "p1": [0, 1, 1, 1], "p2": [1, 1, 1, 0]}
    rows = [{"problem_id": pid, "sample_index": k, "status": "correct" if c else "wrong", "vote": str(c),
             "n_tokens": 5} for pid, cs in correct.items() for k, c in enumerate(cs)]
    s = summarize_rows(rows, 4, PAPER_SAMPLES["math500"])
    assert s["paper_metric"] == "pass@1" and s["score"] == pytest.approx(2 / 3)  # samples 0: 1, 0, 1
    assert s["avg_at_k"] == pytest.approx(avg_at_k(list(correct.values()), 4)) == pytest.approx(7 / 12)
    assert summarize_rows(rows, 4)["score"] == s["avg_at_k"]  # no paper k: avg@n, as before
    row = score_row({"math500": s}, ["math500"])
    assert row["MATH500"] == pytest.approx(200 / 3) and row["MATH500 avg@4"] == pytest.approx(700 / 12)
    assert row["Average"] == pytest.approx(200 / 3)  # the paper's metric only
    # the tables: the paper's column on sample 0, avg@4 beside it, each with its interval
    monkeypatch.setenv("RSDLIB_RESULTS", str(tmp_path / "results"))
    for model, flip in (("base", False), ("rsd-p1", True)):
        folder = tmp_path / "results" / "paper" / "eval" / model / "math500"
        folder.mkdir(parents=True)
        (folder / "samples.jsonl").write_text("".join(
            json.dumps({**r, "status": "wrong" if flip and r["problem_id"] == "p0" else r["status"]}) + "\n"
            for r in rows))
    models = {"base": "base", "rsd-p1": "rsd-p1"}
    assert tables.extra_sample_columns(models, "paper") == {"MATH500 avg@4": "MATH500"}
    unc = tables.accuracy_uncertainty(models, "paper", benchmarks=["MATH500"])
    assert unc["base"]["ours"]["MATH500"].estimate == pytest.approx(200 / 3)
    assert unc["base"]["ours"]["MATH500 avg@4"].estimate == pytest.approx(700 / 12)
    assert unc["rsd-p1"]["vs_base"]["MATH500 avg@4"].estimate == pytest.approx(-100 / 12)
    assert unc["rsd-p1"]["vs_base"]["MATH500"].estimate == pytest.approx(-100 / 3)


# ------------------------------------------------------------------------------------- point 7: preflight
class _FakeHub:
    """A local hub: 'nobody/*' does not exist, 'gated/*' refuses this token, anything else answers with one
    1 GiB safetensors file."""

    def __enter__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                path = self.path.split("?")[0]
                if "/nobody/" in path:
                    self._send(404, {"error": "Repository not found"}, "RepoNotFound")
                elif "/gated/" in path:
                    self._send(403, {"error": "Access to this model is restricted"}, "GatedRepo")
                elif path.endswith("/auth-check"):
                    self._send(200, {})
                else:
                    repo = path.split("/api/models/", 1)[-1].split("/revision/")[0]
                    self._send(200, {"id": repo, "siblings": [{"rfilename": "model.safetensors", "size": 2**30},
                                                              {"rfilename": "config.json", "size": 10}]})

            def _send(self, status, body, code=None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if code:
                    self.send_header("X-Error-Code", code)
                    self.send_header("X-Error-Message", body["error"])
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests' own setting, read at import
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return tmp_path / "hub"


def test_preflight_names_every_hub_id_of_the_paper_profile():
    from rsdlib.preflight import hub_ids

    ids = hub_ids("paper")
    assert set(ids.models) == {"simplescaling/s1.1-7B", "Qwen/Qwen3-0.6B", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
                               "meta-llama/Llama-3.2-1B-Instruct", "Qwen/Qwen3-1.7B",
                               # Table 4's other students (issue 29), gated Gemma 3 among them
                               "google/gemma-3-1b-it", "microsoft/Phi-4-mini-instruct",
                               "microsoft/Phi-4-mini-reasoning", "Qwen/Qwen3-4B"}
    assert ids.datasets == ["simplescaling/s1K-1.1"]
    dry = hub_ids("paper-dry")
    assert dry.models == [] and dry.datasets == []  # stand-ins only


def test_preflight_fails_fast_with_one_line(empty_hub_cache, monkeypatch):
    from rsdlib.preflight import HubIds, PreflightError, check_disk, check_hub

    ids = HubIds(["Qwen/Qwen3-0.6B", "meta-llama/Llama-3.2-1B-Instruct"], ["simplescaling/s1K-1.1"])
    with _FakeHub() as hub:
        assert check_hub(ids, endpoint=hub) == 2 * 2**30  # two models of 1 GiB to download
        for bad, words in (("nobody/no-such-model", "does not exist"), ("gated/Llama-3.2-1B-Instruct", "gated")):
            with pytest.raises(PreflightError) as err:
                check_hub(HubIds(["Qwen/Qwen3-0.6B", bad]), endpoint=hub)
            assert bad in str(err.value) and words in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PreflightError, match="unreachable") as err:  # nothing listens on port 9
        check_hub(ids, endpoint="http://127.0.0.1:9")
    assert "\n" not in str(err.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: only the cache counts
    with pytest.raises(PreflightError, match="Qwen/Qwen3-0.6B is not in the local hub cache") as err:
        check_hub(ids, endpoint="http://127.0.0.1:9")
    assert "\n" not in str(err.value)
    with pytest.raises(PreflightError, match="GiB free"):
        check_disk(2**60, empty_hub_cache)


def test_preflight_cuda_driver_against_torch_build():
    from rsdlib.preflight import PreflightError, check_cuda

    with pytest.raises(PreflightError, match="CPU build"):
        check_cuda(torch_cuda="")
    with pytest.raises(PreflightError, match="supports CUDA up to 12.4, torch is built for CUDA 13.0"):
        check_cuda(torch_cuda="13.0", driver=("550.54", "12.4"), available=True)
    with pytest.raises(PreflightError, match="no NVIDIA driver"):
        check_cuda(torch_cuda="12.8", driver=(None, None))
    assert "CUDA 13.0" in check_cuda(torch_cuda="13.0", driver=("580.65", "13.0"), available=True)


def test_preflight_command_offline_is_one_line(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    proc = subprocess.run([sys.executable, "-m", "rsdlib.cli", "preflight", "--profile", "paper"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "simplescaling/s1.1-7B" in proc.stderr


# ------------------------------------------------------------------------------------- point 6
def test_prefix_only_pass_is_sized_like_the_main_pass(tmp_path, monkeypatch):
    import rsdlib.traces as traces_mod

    calls = []
    real = traces_mod.Decoder.generate

    def spy(self, prompts, seeds, **kw):
        calls.append((self.config.max_new_tokens, kw.get("max_cache_gib")))
        return real(self, prompts, seeds, **kw)

    monkeypatch.setattr(traces_mod.Decoder, "generate", spy)
    pair = _tiny_pair()
    problems = [Problem(id=f"q{i}", question=f"What is {i}+{i}?", gold=str(2 * i), kind="integer") for i in range(3)]
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    solved = {"problem_id": "q1", "kind": "full", "sample_index": 0}
    (teacher_dir / "dataset.jsonl").write_text(json.dumps(solved) + "\n")
    cfg = TraceJobConfig(method="rsd", decoding=DecodingConfig(mode="rsd", max_new_tokens=8), samples_per_problem=1,
                         prefix_tokens=4, grade_timeout=None, max_cache_gib=0.5)
    run_trace_job(pair, problems, cfg, tmp_path / "rsd", restrict_to=teacher_dir, progress=False)
    assert calls == [(8, 0.5), (4, 0.5)]  # the main pass, then the prefix-only pass, both under the budget


# ------------------------------------------------------------------------------------- point 7: quick check
def test_quick_check_keeps_one_method_per_path():
    from rsdlib.quickcheck import quick_params

    params = quick_params("paper-dry")
    assert params["n_problems"] == 6 and params["workers"] == 1
    methods = params["methods"]
    assert list(methods) == ["teacher", "rsd-p1", "self-distill", "self-distill-ce", "skd"]
    assert methods["self-distill-ce"]["samples_per_problem"] == params["job"]["samples_per_problem"] + 1
    assert set(params["extra_pairs"]) == {"llama", "qwen3-1.7b"}
    assert all(extra["methods"] == ["rsd-p1"] for extra in params["extra_pairs"].values())
    paper = quick_params("paper", samples=4, max_new_tokens=4096)
    assert paper["job"]["samples_per_problem"] == 4 and paper["decoding"]["max_new_tokens"] == 4096
    assert paper["methods"]["self-distill-ce"]["samples_per_problem"] == 5  # not 203


@pytest.mark.slow
def test_quick_check_on_the_dry_run(tmp_path):
    from rsdlib.quickcheck import quickcheck

    lines = []
    assert quickcheck(tmp_path, problems=6, echo=lines.append) == 0, "\n".join(lines)
    text = "\n".join(lines)
    assert "main/teacher: " in text and "(problems 6, 2 ungradable)" in text
    assert "llama/rsd-p1" in text and "grading: the filter's boxed reading" in text
