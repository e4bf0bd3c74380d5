"""The trace job: selection rules, the append-only store, resumption after kill -9, config conflicts."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rsdlib.decoding import DecodingConfig
from rsdlib.store import JsonlLineError, RunConflictError, read_jsonl_resumable
from rsdlib.traces import TraceJobConfig, run_trace_job, select_examples, summarize_run

HERE = Path(__file__).resolve().parent
EOT = 7


def sample(k, n_tokens, status="correct", closes=1, finish="stop", fallback=0, pid="p1", last=EOT):
    tokens = list(range(100, 100 + n_tokens - 1)) + ([last] if finish == "stop" else [101])
    fb = [True] * fallback + [False] * (n_tokens - fallback)
    return {"problem_id": pid, "sample_index": k, "prompt_ids": [1, 2, 3], "token_ids": tokens, "status": status,
            "think_closes": closes, "finish_reason": finish, "ended_turn": tokens[-1] == EOT,
            "fallback_rate": fallback / n_tokens, "fallback": fb,
            "student_prob_raw": [0.5] * (n_tokens - 1) + [0.001]}


def test_selection_keeps_shortest_correct_and_applies_the_filter():
    cfg = TraceJobConfig(samples_per_problem=7, max_fallback_rate=0.5)
    samples = [
        sample(0, 30),
        sample(1, 5, closes=2),  # closes its thinking twice: not kept
        sample(2, 6, finish="length"),  # never ended its turn
        sample(3, 7, fallback=4),  # fallback 4/7 > 50%
        sample(4, 8, status="wrong"),
        sample(5, 12),
        sample(6, 9, last=8),  # stopped on another stop id (say <|endoftext|>): not an end of turn
    ]
    [ex] = select_examples(samples, cfg, stop_ids=[EOT])
    assert ex["kind"] == "full" and ex["sample_index"] == 5 and ex["completion_ids"][-1] == EOT
    [first] = select_examples(samples, TraceJobConfig(keep="first"), stop_ids=[EOT])
    assert first["sample_index"] == 0
    r1 = select_examples(samples, TraceJobConfig(keep="random", base_seed=3), stop_ids=[EOT])
    r2 = select_examples(samples, TraceJobConfig(keep="random", base_seed=3), stop_ids=[EOT])
    assert r1 == r2 and r1[0]["sample_index"] in (0, 5)


def test_unsolved_problem_gives_a_prefix_without_end_of_turn():
    cfg = TraceJobConfig(prefix_tokens=4)
    samples = [sample(0, 3, status="wrong"), sample(1, 9, status="no_answer", finish="length")]
    [ex] = select_examples(samples, cfg, stop_ids=[EOT])
    assert ex["kind"] == "prefix" and ex["sample_index"] == 0
    assert ex["completion_ids"] == [100, 101]  # the 3-token sample minus its end-of-turn id
    [longest] = select_examples(samples, TraceJobConfig(prefix_tokens=4, prefix_sample="longest"), stop_ids=[EOT])
    assert longest["completion_ids"] == [100, 101, 102, 103]
    assert select_examples(samples, TraceJobConfig(prefix_tokens=0), stop_ids=[EOT]) == []


def test_summary_matches_hand_computed_table2_row():
    cfg = TraceJobConfig(method="rsd", decoding=DecodingConfig(mode="rsd", threshold=0.01))
    samples = [sample(0, 10, fallback=1), sample(1, 4, status="wrong"), sample(0, 5, pid="p2", status="wrong")]
    examples = select_examples(samples[:2], cfg, [EOT]) + select_examples(samples[2:], cfg, [EOT])
    row = summarize_run(samples, examples, cfg, n_problems=2)
    assert row["Correctly solved"] == "1/2" and row["prefix_examples"] == 1
    assert row["Fallback rate (%)"] == pytest.approx(10.0)  # 1 of the 10 kept tokens
    assert row["Sub-1% tokens (%)"] == pytest.approx(10.0)  # its last token has p = 0.001
    assert row["Average token count"] == 10 and row["correct_samples"] == 1
    teacher_row = summarize_run(samples, examples, TraceJobConfig(decoding=DecodingConfig(mode="teacher")), 2)
    assert teacher_row["Fallback rate (%)"] == "Not Applicable"


def test_torn_last_line_is_cut_off_by_the_writer_only(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_jsonl_resumable(path) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n{"a": ', "a reader never modifies the file"
    assert read_jsonl_resumable(path, repair=True) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'


def test_bad_line_before_the_end_is_an_error_naming_file_and_line(tmp_path):
    """Damaging line 3 of 48 used to cut the file there, silently losing 45 good records."""
    path = tmp_path / "samples.jsonl"
    lines = [json.dumps({"i": i}) + "\n" for i in range(48)]
    lines[2] = '{"i": 2, "trunc\n'
    path.write_text("".join(lines))
    before = path.read_bytes()
    for repair in (False, True):
        with pytest.raises(JsonlLineError, match=rf"{path}, line 3: not valid JSON"):
            read_jsonl_resumable(path, repair=repair)
        assert path.read_bytes() == before


def test_trace_run_stats_never_modifies_a_live_run(tmp_path):
    """A reader beside a writer (notebook 20, trace_run_stats) must leave a torn last line alone."""
    from rsdlib.traces import trace_run_stats

    cfg = TraceJobConfig(method="rsd", decoding=DecodingConfig(mode="rsd", threshold=0.01))
    (tmp_path / "config.json").write_text(json.dumps({"hash": cfg.hash(), "config": {"decoding": {"mode": "rsd"}},
                                                      "problems": ["p1"]}))
    (tmp_path / "dataset.jsonl").write_text("")
    records = [json.dumps(sample(k, 4, status="wrong")) + "\n" for k in range(3)]
    (tmp_path / "samples.jsonl").write_text("".join(records) + records[0][:20])  # the writer is mid-append
    before = (tmp_path / "samples.jsonl").read_bytes()
    assert trace_run_stats(tmp_path)["samples"] == 3
    assert (tmp_path / "samples.jsonl").read_bytes() == before


JOB_SCRIPT = r"""
import sys, json
sys.path.insert(0, {tests!r})
from _tiny import tiny_tokenizer, tiny_model
from types import SimpleNamespace
from rsdlib.bridge import VocabBridge
from rsdlib.data import Problem
from rsdlib.decoding import DecodingConfig
from rsdlib.traces import TraceJobConfig, run_trace_job
tok = tiny_tokenizer()
teacher, student = tiny_model(tok, seed=1, layers=3), tiny_model(tok, seed=2)
V = teacher.config.vocab_size
pair = SimpleNamespace(teacher=teacher, student=student, student_tokenizer=tok, teacher_tokenizer=tok,
                       bridge=VocabBridge.from_tokenizers(tok, tok, V, V))
problems = [Problem(id=f"q{{i}}", question=f"What is {{i}} + {{i}}?", gold=str(2 * i), kind="integer")
            for i in range(4)]
problems.append(Problem(id="nogold", question="Prove it.", gold="", kind="math"))
cfg = TraceJobConfig(method="rsd", decoding=DecodingConfig(mode="rsd", temperature=1.0, threshold=0.01,
                     max_new_tokens=int(sys.argv[2])), samples_per_problem=3, batch_size=int(sys.argv[3]),
                     prefix_tokens=8, grade_timeout=None)
summary = run_trace_job(pair, problems, cfg, sys.argv[1], progress=False)
print(json.dumps(summary))
"""


def run_job(folder, max_new=40, batch=4, wait=True):
    script = JOB_SCRIPT.format(tests=str(HERE))
    proc = subprocess.Popen([sys.executable, "-c", script, str(folder), str(max_new), str(batch)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        return json.loads(out.strip().splitlines()[-1])
    return proc


def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    whole = run_job(tmp_path / "whole")
    interrupted = tmp_path / "interrupted"
    proc = run_job(interrupted, wait=False)
    samples = interrupted / "samples.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if samples.exists() and samples.read_text().count("\n") >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = samples.read_text().count("\n")
    assert 4 <= n_before < 12
    with open(samples, "a") as f:  # as if the kill had torn a line
        f.write('{"problem_id": "q0", "sampl')
    # resumed with another batch size: allowed (not part of the config hash), results unchanged
    resumed = run_job(interrupted, batch=3)
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    keys = [(r["problem_id"], r["sample_index"]) for r in lines]
    assert len(keys) == len(set(keys)) == 13, "lost or duplicated samples"  # 4 x 3 + nogold's prefix-only one
    assert (interrupted / "dataset.jsonl").read_text() == (tmp_path / "whole" / "dataset.jsonl").read_text()
    for key in ("n_solved", "prefix_examples", "samples", "avg_sample_tokens", "problems_without_gold",
                "ungradable_problems"):
        assert resumed[key] == whole[key]
    # every problem counts (issue 30): the gold-less one is unsolved, with a prefix-only generation
    assert whole["n_problems"] == 5 and whole["problems_without_gold"] == 1 == whole["ungradable_problems"]
    assert whole["training_examples"] == 5
    assert whole["decoder_batch"]["batch_size"] == 4 and resumed["decoder_batch"]["requested_batch_size"] == 3

    def by_key(path):
        rows = map(json.loads, path.read_text().splitlines())
        return {(r["problem_id"], r["sample_index"]): r["token_ids"] for r in rows}

    assert by_key(samples) == by_key(tmp_path / "whole" / "samples.jsonl")


def test_rerun_with_another_config_is_refused(tmp_path):
    run_job(tmp_path / "run", max_new=6)
    proc = run_job(tmp_path / "run", max_new=7, wait=False)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0 and "RunConflictError" in err and "different config" in err


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path):
    from filelock import FileLock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with FileLock(str(run_dir / ".lock")):  # stands for a job still running in another process
        proc = run_job(run_dir, max_new=6, wait=False)
        _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0 and "RunConflictError" in err and "another process" in err
    assert not (run_dir / "samples.jsonl").exists()
    run_job(run_dir, max_new=6)  # once the lock is free the job runs


def test_duplicated_sample_lines_are_counted_once(tmp_path):
    first = run_job(tmp_path / "run", max_new=6)
    samples = tmp_path / "run" / "samples.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(lines + lines[:5]))  # as an older, unlocked double run left it
    again = run_job(tmp_path / "run", max_new=6)
    assert again["samples"] == first["samples"] == 12
    assert again["n_solved"] == first["n_solved"]


def test_empty_problem_list_is_refused_before_anything_runs(tmp_path):
    cfg = TraceJobConfig(method="rsd")
    with pytest.raises(ValueError, match="no problems given"):
        run_trace_job(None, [], cfg, tmp_path / "run", force=True)  # pair=None: refused before any use of it
    assert not (tmp_path / "run").exists()


def test_changed_problem_list_message_is_about_the_problems(tmp_path):
    from rsdlib.traces import _claim_folder

    cfg = TraceJobConfig(method="rsd")
    _claim_folder(tmp_path, cfg, ["p1", "p2"])
    _claim_folder(tmp_path, cfg, ["p1", "p2"])  # same run: accepted
    with pytest.raises(RunConflictError) as info:
        _claim_folder(tmp_path, cfg, ["p1"])
    message = str(info.value)
    assert "different problem list (2 problems stored, 1 in this run, 1 differing ids)" in message
    assert "hash" not in message  # the hashes are equal: naming them said nothing


def test_max_cache_gib_is_validated_and_not_hashed():
    base = TraceJobConfig(method="rsd")
    assert TraceJobConfig(method="rsd", max_cache_gib=12.5, batch_size=64).hash() == base.hash()
    with pytest.raises(ValueError, match="max_cache_gib must be > 0"):
        TraceJobConfig(max_cache_gib=0)
    assert TraceJobConfig.from_yaml({"max_cache_gib": 80}).max_cache_gib == 80.0


def test_the_trace_filter_reads_boxed_answers_by_default(tmp_path, monkeypatch):
    """A kept trace has its answer in \\boxed{} (the authors' filter); ``answer_format: standard`` reads more."""
    from _tiny import tiny_model, tiny_tokenizer

    import rsdlib.traces as traces
    from rsdlib.bridge import VocabBridge
    from rsdlib.data import Problem
    from rsdlib.grading import grade_many

    assert TraceJobConfig().answer_format == "boxed"
    with pytest.raises(ValueError, match="answer_format must be one of"):
        TraceJobConfig(answer_format="loose")
    assert TraceJobConfig(answer_format="standard").hash() != TraceJobConfig().hash()
    # the same unboxed answer: wrong for the boxed filter, correct for the standard reading
    unboxed = "thinking</think> The final answer is 4"
    assert grade_many([(unboxed, "4", "integer")], timeout=None, answer_format="boxed")[0]["status"] != "correct"
    assert grade_many([(unboxed, "4", "integer")], timeout=None, answer_format="standard")[0]["status"] == "correct"

    seen = []

    def recording(items, **kwargs):
        seen.append(kwargs["answer_format"])
        return grade_many(items, **kwargs)

    monkeypatch.setattr(traces, "grade_many", recording)
    tok = tiny_tokenizer()
    teacher, student = tiny_model(tok, seed=1), tiny_model(tok, seed=2)
    V = teacher.config.vocab_size
    pair = SimpleNamespace(teacher=teacher, student=student, student_tokenizer=tok, teacher_tokenizer=tok,
                           bridge=VocabBridge.from_tokenizers(tok, tok, V, V))
    problems = [Problem(id="q1", question="What is 2 + 2?", gold="4", kind="integer")]
    for fmt in ("boxed", "standard"):
        cfg = TraceJobConfig(method="rsd", decoding=DecodingConfig(mode="rsd", max_new_tokens=4), samples_per_problem=1,
                             prefix_tokens=2, grade_timeout=None, answer_format=fmt)
        run_trace_job(pair, problems, cfg, tmp_path / fmt, progress=False)
    assert seen == ["boxed", "standard"]
