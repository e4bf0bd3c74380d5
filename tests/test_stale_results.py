"""Issue 32, points 4, 5, 6 and 11: no stale result without a word.

- 4: a model is named by its content, never by its folder: multi-step RSD regenerates cycle 2's traces
  after cycle 1 is retrained, and a moved or copied results folder resumes (training checkpoints, trained
  models, multi-step cycles) instead of being refused or redone.
- 5: the benchmark files of ``RSDLIB_DATA_DIR`` are part of reproduce's content hash, by content.
- 6: ``rsdlib regrade`` rewrites every file derived from the grades, folder by folder; an interrupted
  regrade is refused by the readers, naming it.
- 11: problems longer than the student's context are counted at selection time, with what happens to them.
Tiny random models (``tiny:``), no network.
"""

from __future__ import annotations

import json
import shutil

import pytest
from _tiny import StopAt, tiny_model, tiny_tokenizer

from rsdlib import reproduce
from rsdlib.train import TrainConfig, train


# ----------------------------------------------------------------------------------------------
# 4. models by content: multi-step cycles and copied results folders
# ----------------------------------------------------------------------------------------------
def stage_params(name: str, **changes) -> dict:
    return {**reproduce.resolved_params("smoke", name), **changes}


def test_multistep_regenerates_cycle_2_after_cycle_1_is_retrained_and_a_copied_folder_resumes(
        tmp_path, monkeypatch, capsys):
    from rsdlib.multistep import run_multistep
    from rsdlib.stages import run_trace_stage

    monkeypatch.setenv("RSDLIB_RESULTS", str(tmp_path / "a"))
    run_trace_stage(stage_params("10_generate_traces", methods={"teacher": {"mode": "teacher"},
                                                                "rsd-p1": {"mode": "rsd", "threshold": 0.01}},
                                 extra_pairs={}, reference=""))
    ms = stage_params("35_multistep")
    run_multistep(ms)
    cycle2 = tmp_path / "a" / "smoke" / "multistep" / "cycle2"
    first = json.loads((cycle2 / "traces" / "config.json").read_text())
    capsys.readouterr()

    # cycle 1 retrained (another number of epochs): cycle 2's traces come from another student
    retrained = {**ms, "training": {**ms["training"], "epochs": 2}}
    run_multistep(retrained)
    out = capsys.readouterr().out
    second = json.loads((cycle2 / "traces" / "config.json").read_text())
    assert second["hash"] != first["hash"], "cycle 2 kept the traces of the old cycle-1 model"
    assert "cycle 2: its student (the previous cycle's model) changed: regenerating" in out
    from rsdlib.models import model_identity
    assert second["config"]["student"] == model_identity(tmp_path / "a" / "smoke" / "multistep" / "cycle1" / "model"
                                                         / "final")

    # the whole results folder moved elsewhere: nothing is refused, nothing is redone
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    monkeypatch.setenv("RSDLIB_RESULTS", str(tmp_path / "b"))
    summaries = {c: (tmp_path / "b" / "smoke" / "multistep" / f"cycle{c}" / "model" / "train_summary.json")
                 for c in (1, 2)}
    before = {c: p.stat().st_mtime_ns for c, p in summaries.items()}
    samples = tmp_path / "b" / "smoke" / "multistep" / "cycle2" / "traces" / "samples.jsonl"
    samples_before = samples.stat().st_mtime_ns
    rows = run_multistep(retrained)
    assert "regenerating" not in capsys.readouterr().out
    assert {c: p.stat().st_mtime_ns for c, p in summaries.items()} == before  # not retrained
    assert samples.stat().st_mtime_ns == samples_before
    manifest = json.loads((tmp_path / "b" / "smoke" / "multistep" / "manifest.json").read_text())
    assert manifest["models"]["rsd-p1-2step"]["final"] == "multistep/cycle2/model/final"  # relative: moves with it
    assert rows[-1]["model"] == "multistep/cycle2/model/final"


def test_a_copied_training_folder_resumes_and_a_finished_one_is_not_retrained(tmp_path):
    tok = tiny_tokenizer()
    examples = []
    for i in range(8):
        prompt = tok(f"<|im_start|>user\nq{i}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
        answer = tok(f"the answer is {7 * i}", add_special_tokens=False)["input_ids"]
        examples.append({"id": f"e{i}", "prompt_ids": prompt["input_ids"], "completion_ids": answer + [258],
                         "kind": "full", "source": "test"})
    model_dir = tmp_path / "base"
    tiny_model(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)

    def cfg(folder, **kw):
        return TrainConfig(model=str(model_dir), output_dir=str(folder), epochs=2, learning_rate=3e-3,
                           global_batch_size=4, micro_batch_size=2, block_size=64, save_strategy="steps",
                           save_steps=1, seed=0, **kw)

    train(cfg(tmp_path / "cut"), examples, tokenizer=tok, callbacks=[StopAt(2)])
    assert not (tmp_path / "cut" / "final").exists()
    shutil.copytree(tmp_path / "cut", tmp_path / "copy")
    train(cfg(tmp_path / "copy"), examples, tokenizer=tok)  # resumes in the copy: same run, another folder
    log = json.loads((tmp_path / "copy" / "train_log.json").read_text())
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "copy" / "train_summary.json").read_text())["global_step"] == 4

    shutil.copytree(tmp_path / "copy", tmp_path / "moved")  # a finished run, moved: not trained again
    stamp = (tmp_path / "moved" / "train_summary.json").stat().st_mtime_ns
    assert train(cfg(tmp_path / "moved"), examples, tokenizer=tok) == tmp_path / "moved" / "final"
    assert (tmp_path / "moved" / "train_summary.json").stat().st_mtime_ns == stamp

    # the base model's weights changed in place (same folder): the checkpoints are another run's
    train(cfg(tmp_path / "cut2"), examples, tokenizer=tok, callbacks=[StopAt(2)])
    other = tiny_model(tok)
    for p in other.parameters():
        p.data.add_(0.01)
    other.save_pretrained(model_dir)
    with pytest.raises(ValueError, match=r"another config \(differs in: model \(its weights changed\)\)"):
        train(cfg(tmp_path / "cut2"), examples, tokenizer=tok)


# ----------------------------------------------------------------------------------------------
# 6. regrade: every derived file rewritten; an interrupted regrade refused by the readers
# ----------------------------------------------------------------------------------------------
def _row(pid, response, gold="5"):
    return {"benchmark": "math500", "problem_id": pid, "sample_index": 0, "n_tokens": 10, "finish_reason": "stop",
            "forced": False, "status": "no_answer", "answer": None, "vote": None, "gold": gold, "kind": "integer",
            "timed_out": False, "response": response}


def evaluated_profile(tmp_path, monkeypatch) -> "Path":  # noqa: F821
    """results/t/eval as notebook 40 leaves it: two models, their MATH500 rows graded after the thinking,
    their summaries and the stage's summary.json. The thinking never closes in 2 of 4 responses."""
    from rsdlib import evaluate as ev
    from rsdlib.config import config_to_dict
    from rsdlib.store import append_jsonl

    monkeypatch.setenv("RSDLIB_RESULTS", str(tmp_path / "results"))
    eval_dir = tmp_path / "results" / "t" / "eval"
    cfg = ev.EvalConfig(benchmarks=("math500",), samples={"math500": 1})
    responses = {"base": ["x</think> \\boxed{5}", "no end of thinking \\boxed{5}", "x</think> \\boxed{4}",
                          "x</think> \\boxed{5}"],
                 "rsd-p1": ["no end \\boxed{5}", "no end \\boxed{5}", "x</think> \\boxed{5}", "x</think> 3"]}
    models = {}
    for name, texts in responses.items():
        folder = eval_dir / name
        (folder / "math500").mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"hash": cfg.hash(), "model": name,
                                                         "config": config_to_dict(cfg)}))
        rows = [_row(f"p{i}", text) for i, text in enumerate(texts)]
        ev.regrade_rows(rows, timeout=60, force=True)
        for r in rows:
            append_jsonl(folder / "math500" / "samples.jsonl", r)
        summary = {"benchmark": "math500", **ev.summarize_rows(rows, 1), "answer_format": "standard",
                   "answer_from": "after_thinking", "grading_version": ev.GRADING_VERSION}
        (folder / "math500" / "summary.json").write_text(json.dumps(summary))
        models[name] = ev.score_row({"math500": summary}, ["math500"])
    (eval_dir / "summary.json").write_text(json.dumps({"profile": "t", "benchmarks": ["math500"], "models": models}))
    return eval_dir


def test_regrade_rewrites_the_stage_summary_so_tables_and_figures_agree(tmp_path, monkeypatch):
    from rsdlib import evaluate as ev
    from rsdlib import tables

    eval_dir = evaluated_profile(tmp_path, monkeypatch)
    assert tables.load_evaluation("t")["models"]["base"]["MATH500"] == 50.0
    ev.regrade(eval_dir, answer_from="whole", timeout=60)
    models = json.loads((eval_dir / "summary.json").read_text())["models"]  # what Figures 1 and 4 draw
    for name, expected in (("base", 75.0), ("rsd-p1", 75.0)):
        correct = tables.load_correctness("t", name, ["MATH500"])["MATH500"]  # what the tables' intervals read
        assert 100 * sum(c[0] for c in correct.values()) / len(correct) == expected
        assert models[name]["MATH500"] == expected and models[name]["Average"] == expected
        assert tables.load_evaluation("t")["models"][name]["MATH500"] == expected
        assert json.loads((eval_dir / name / "grading.json").read_text())["state"] == "graded"
    assert json.loads((eval_dir / "grading.json").read_text()) == {
        "state": "graded", "answer_from": "whole", "grading_version": ev.GRADING_VERSION}


def test_an_interrupted_regrade_is_refused_by_the_readers_until_it_is_finished(tmp_path, monkeypatch):
    from rsdlib import evaluate as ev
    from rsdlib import tables

    eval_dir = evaluated_profile(tmp_path, monkeypatch)
    whole = ev.regrade

    def killed_between_folders(folder, **kw):  # the crash: after the first model folder, before the second
        if folder.name == "rsd-p1":
            raise SystemExit("killed")
        return whole(folder, **kw)

    monkeypatch.setattr(ev, "regrade", killed_between_folders)
    with pytest.raises(SystemExit):
        whole(eval_dir, answer_format="boxed", timeout=60)
    monkeypatch.setattr(ev, "regrade", whole)
    for read in (lambda: tables.load_evaluation("t"), lambda: tables.load_correctness("t", "rsd-p1", ["MATH500"])):
        with pytest.raises(ev.MixedGradingError, match=r"interrupted `rsdlib regrade` .*"
                                                       r"finish it with `rsdlib regrade .*eval --answer-format boxed`"):
            read()
    ev.regrade(eval_dir, answer_format="boxed", timeout=60)  # run again: finished, readable
    assert tables.load_evaluation("t")["models"]["rsd-p1"]["MATH500"] == 25.0

    ev.regrade(eval_dir / "base", answer_format="standard", timeout=60)  # one model folder graded another way
    with pytest.raises(ev.MixedGradingError, match="graded in different ways .*base/math500: answer_format standard"):
        tables.load_evaluation("t")


# ----------------------------------------------------------------------------------------------
# 5. the local benchmark files are part of reproduce's content hash
# ----------------------------------------------------------------------------------------------
READS_DATA = '''\
# %% [markdown]
# # reads_data
# Reads a benchmark. Writes traces/.

# %% tags=["parameters"]
profile: str = "x"  # profile
'''


def test_editing_a_problem_in_a_local_data_file_reruns_the_notebook(tmp_path, monkeypatch):
    from rsdlib.reproduce import NotebookResult, NotebookSpec

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "reads_data.py").write_text(READS_DATA)
    (tmp_path / "params" / "t").mkdir(parents=True)
    data = tmp_path / "data"
    data.mkdir()
    problem = {"problem": "What is 2 + 3?", "answer": "5", "unique_id": "test/1.json"}
    (data / "math500.jsonl").write_text(json.dumps(problem) + "\n")
    monkeypatch.setattr(reproduce, "NOTEBOOKS_DIR", tmp_path / "notebooks")
    monkeypatch.setattr(reproduce, "NOTEBOOKS", (NotebookSpec("reads_data"),))
    monkeypatch.setattr(reproduce.paths, "MADE_BY", {"traces": "reads_data"})
    monkeypatch.setenv("RSDLIB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("RSDLIB_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("RSDLIB_DATA_DIR", str(data))
    calls = []

    def fake_run(spec, profile, params, *, out_dir, timeout):
        calls.append(spec.name)
        (out_dir / f"{spec.name}.ipynb").write_text("{}")
        return NotebookResult(spec.name, "ok", 0.1, out_dir / f"{spec.name}.ipynb", out_dir / f"{spec.name}.log")

    monkeypatch.setattr(reproduce, "run_notebook", fake_run)

    def run():
        calls.clear()
        lines = []
        assert reproduce.reproduce("t", params_dir=tmp_path / "params", echo=lines.append).ok
        return list(calls), "\n".join(lines)

    assert run()[0] == ["reads_data"]
    assert run()[0] == []  # nothing changed
    (data / "math500.jsonl").write_text(json.dumps({**problem, "problem": "What is 2 + 4?", "answer": "6"}) + "\n")
    calls, text = run()
    assert calls == ["reads_data"] and "1 local benchmark file(s) changed (math500.jsonl)" in text
    (data / "notes.txt").write_text("not a benchmark file")  # files no loader reads do not count
    assert run()[0] == []


# ----------------------------------------------------------------------------------------------
# 11. problems longer than the student's context: said at selection time; training says the truth
# ----------------------------------------------------------------------------------------------
def test_problems_longer_than_the_context_are_counted_when_selected(tmp_path, monkeypatch, capsys):
    from rsdlib.stages import run_trace_stage

    data = tmp_path / "data"
    data.mkdir()
    long_question = "Add up these numbers: " + " + ".join(str(i % 10) for i in range(1100)) + ". What is the sum?"
    rows = [{"problem": "What is 2 + 3?", "answer": "5", "unique_id": "a"},
            {"problem": long_question, "answer": "4950", "unique_id": "b"},
            {"problem": "What is 4 + 4?", "answer": "8", "unique_id": "c"}]
    (data / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("RSDLIB_DATA_DIR", str(data))
    monkeypatch.setenv("RSDLIB_RESULTS", str(tmp_path / "results"))

    class Selected(Exception):
        pass

    def stop(*args, **kwargs):  # the line is printed at selection, before any generation: stop there
        raise Selected

    monkeypatch.setattr("rsdlib.stages.run_trace_job", stop)
    with pytest.raises(Selected):
        run_trace_stage(stage_params("10_generate_traces", methods={"teacher": {"mode": "teacher"}}, extra_pairs={},
                                     reference=""))
    out = capsys.readouterr().out
    assert ("WARNING: 1 of 3 problems have a prompt longer than the student's context of 4096 tokens (longest "
            in out)
    assert "they are still attempted" in out and "truncate: true cuts completions only" in out


def test_training_does_not_ask_for_truncate_when_it_is_already_set():
    from rsdlib.train import build_dataset

    long_prompt = {"id": "long", "prompt_ids": list(range(1, 40)), "completion_ids": [5, 6, 258], "kind": "full"}
    with pytest.raises(ValueError) as refused:
        build_dataset([long_prompt], 259, 258, block_size=32, truncate=True)
    assert "set truncate: true" not in str(refused.value)
    assert "prompt alone fills block_size=32" in str(refused.value) and "long (42 tokens)" in str(refused.value)
    with pytest.raises(ValueError, match="or set truncate: true"):  # off: cutting would help, so it says so
        build_dataset([{**long_prompt, "prompt_ids": [1, 2], "completion_ids": list(range(1, 40)) + [258]}],
                      259, 258, block_size=32, truncate=False)
