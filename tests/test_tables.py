"""Tables and figures carry intervals and paired differences (issue 16): rsdlib.tables on constructed
results folders, rsdlib.plots' interval cells and extra CSV columns."""

from __future__ import annotations

import csv
import json
import math

import pytest

from rsdlib import reference
from rsdlib.metrics import Interval, wilson_interval
from rsdlib.plots import comparison_rows, error_bar, interval_cell, write_table
from rsdlib.tables import (
    accuracy_interval_notes,
    accuracy_uncertainty,
    add_accuracy_intervals,
    add_trace_intervals,
    load_correctness,
    sub_share_difference,
    trace_uncertainty,
)

PROBLEMS = {"AIME24": 2, "AIME25": 2, "GPQA Diamond": 2, "MATH500": 8}


def _write_eval(root, model, solved):
    """results/demo/eval/<model>/<bench>/samples.jsonl with problems p0..; ``solved``: {bench: set of indices}."""
    for bench, n in PROBLEMS.items():
        folder = root / "demo" / "eval" / model / reference.BENCHMARK_KEYS[bench]
        folder.mkdir(parents=True)
        with open(folder / "samples.jsonl", "w") as fh:
            for i in range(n):
                status = "correct" if i in solved.get(bench, set()) else "wrong"
                fh.write(json.dumps({"problem_id": f"{bench}-{i}", "sample_index": 0, "status": status}) + "\n")


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("RSDLIB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("RSDLIB_FIGURES", str(tmp_path / "figures"))
    root = tmp_path / "results"
    _write_eval(root, "base", {"MATH500": {0}})
    _write_eval(root, "rsd-p1", {"MATH500": {0, 1, 2, 3, 4, 5}})  # +5 of 8 on MATH500, same elsewhere
    return tmp_path


def test_load_correctness_reads_the_status_per_problem(results):
    got = load_correctness("demo", "rsd-p1")
    assert set(got) == set(reference.BENCHMARKS)
    assert got["MATH500"]["MATH500-5"] == [True] and got["MATH500"]["MATH500-6"] == [False]
    assert load_correctness("demo", "not-evaluated") == {}


def test_accuracy_uncertainty_and_paired_difference(results):
    unc = accuracy_uncertainty({"base": "base", "rsd-p1": "rsd-p1", "teacher": "absent"}, "demo")
    assert set(unc) == {"base", "rsd-p1"}  # an unevaluated model has no row
    ours = unc["rsd-p1"]["ours"]
    assert ours["MATH500"].estimate == pytest.approx(75.0) and ours["MATH500"].n == 8
    assert ours["Average"].estimate == pytest.approx(75.0 / 4)
    assert unc["base"]["vs_base"] == {}
    diff = unc["rsd-p1"]["vs_base"]
    assert diff["MATH500"].estimate == pytest.approx(62.5) and diff["MATH500"].excludes_zero
    assert diff["AIME24"].estimate == 0.0 and not diff["AIME24"].excludes_zero
    assert diff["Average"].estimate == pytest.approx(62.5 / 4)
    # issue 33: both models solve none of AIME24's 2 problems: the discordant-pair bound, +-Wilson's upper limit
    # for 0 of 2 (65.76 points; it was +-81.09, a share of 0.5 on [-1, 1])
    w = wilson_interval(0, 2).scaled(100)
    assert (diff["AIME24"].low, diff["AIME24"].high) == pytest.approx((-w.high, w.high))
    # and the flat benchmarks keep their uncertainty in the Averages: each Average is at least as wide as any
    # single benchmark's quarter share of it
    for entry in (ours, diff, unc["base"]["ours"]):
        widest = max(entry[b].high - entry[b].low for b in reference.BENCHMARKS)
        assert entry["Average"].high - entry["Average"].low >= widest / 4


def test_accuracy_table_has_interval_columns_sections_and_mde(results):
    columns = [*reference.BENCHMARKS, "Average"]
    rows = {"base": "base", "rsd-p1": "rsd-p1"}
    ours = [{"key": k, "MATH500": 100 * (1 if k == "base" else 6) / 8} for k in rows]
    table = comparison_rows(ours, reference.TABLE1, columns, label_as="Models")
    layout = add_accuracy_intervals(table, accuracy_uncertainty(rows, "demo"), columns)
    rsd = next(r for r in table if r["key"] == "rsd-p1")
    assert rsd["MATH500 (ours, 95% CI)"].startswith("75.00 [") and rsd["MATH500 Δ vs base excludes 0"] is True
    assert rsd["MATH500 (ours) low"] < 75 < rsd["MATH500 (ours) high"]
    heading, diff_rows, diff_cols = layout["section"]
    assert [r["Models"] for r in diff_rows] == [rsd["Models"]]
    cell = diff_rows[0]["MATH500 Δ vs base [95% CI]"]
    assert cell.startswith("+62.50 [") and cell.endswith("*")
    assert layout["problems"] == PROBLEMS
    notes = accuracy_interval_notes(layout["problems"])
    assert "Minimum detectable effect" in notes[-1] and "MATH500: 70 points" in notes[-1]  # 2.80 * sqrt(0.5/8)
    assert "AIME24: none (> 100)" in notes[-1]  # 2 problems: 2.80 * sqrt(0.5/2) = 140 points
    # the notes state the methods of issue 33: Wilson where a benchmark does not vary, kept in the Average,
    # and the discordant-pair bound where two models agree on every problem
    assert "Wilson's score interval" in notes[0] and "stays in the Average" in notes[0]
    assert notes[1].startswith("Δ vs base") and "discordant-pair bound" in notes[1]
    paths = write_table(table, "tab1_test", "demo", title="t", columns=layout["columns"], notes=notes,
                        csv_columns=layout["csv_columns"], sections=[layout["section"]])
    md = paths[0].read_text()
    assert "MATH500 (ours, 95% CI)" in md and "Paired difference to the base student" in md and "+62.50 [" in md
    with open(paths[1]) as fh:
        header, *body = list(csv.reader(fh))
    for col in ("MATH500 (ours)", "MATH500 (ours) low", "MATH500 (ours) high", "MATH500 Δ vs base",
                "MATH500 Δ vs base low", "MATH500 Δ vs base excludes 0", "Average (ours) high"):
        assert col in header
    row = dict(zip(header, next(b for b in body if b[header.index("MATH500 (ours)")] == "75.0")))
    assert float(row["MATH500 (ours) low"]) < 75.0 < float(row["MATH500 (ours) high"])


def _score(method, pid, logprobs, fallback=None, kept=True):
    return {"run": "main", "method": method, "problem_id": pid, "kept": kept, "n_tokens": len(logprobs),
            "token_logprobs": logprobs, "perplexity": math.exp(-sum(logprobs) / len(logprobs)), "fallback": fallback}


LOW, HIGH = math.log(0.001), math.log(0.5)


def test_trace_uncertainty_and_teacher_difference():
    scores = [_score("teacher", f"p{i}", [LOW, HIGH, HIGH, HIGH]) for i in range(5)]
    scores += [_score("rsd-p1", f"p{i}", [HIGH] * 4, fallback=[1, 0, 0, 0]) for i in range(5)]
    scores += [_score("rsd-p1", "p9", [LOW] * 4, kept=False)]  # not kept: never counted
    analysis = {"teacher": {"solved": 5, "problems": 6, "mode": "teacher"},
                "rsd-p1": {"solved": 5, "problems": 5, "mode": "rsd"}}
    unc = trace_uncertainty(scores, analysis)
    assert unc["teacher"]["sub_threshold"].estimate == pytest.approx(25.0)
    assert unc["teacher"]["sub_threshold"].low == unc["teacher"]["sub_threshold"].high == pytest.approx(25.0)
    assert "fallback" not in unc["teacher"]
    assert unc["rsd-p1"]["fallback"].estimate == pytest.approx(25.0)
    assert unc["rsd-p1"]["sub_threshold"].estimate == 0.0
    assert unc["rsd-p1"]["length"].estimate == 4.0
    w = wilson_interval(5, 6).scaled(100)
    assert (unc["teacher"]["solved"].low, unc["teacher"]["solved"].high) == pytest.approx((w.low, w.high))
    d = sub_share_difference(scores, "rsd-p1")
    assert d.estimate == pytest.approx(-25.0) and d.excludes_zero
    assert sub_share_difference(scores, "skd") is None

    rows = [{"key": k, "Datasets": k, "Correctly solved (ours)": "5/6" if k == "teacher" else "5/5",
             "Fallback rate (%) (ours)": None, "Sub-1% tokens (%) (ours)": None} for k in ("teacher", "rsd-p1")]
    layout = add_trace_intervals(rows, unc, {"teacher": "teacher", "rsd-p1": "rsd-p1"}, {"rsd-p1": d})
    assert rows[0]["Correctly solved (ours, 95% CI)"].startswith("5/6 (83 [")
    cell = rows[1]["Sub-1% Δ vs teacher (ours, 95% CI)"]
    assert cell.startswith("-25.00") and cell.endswith("*")
    assert {"Sub-1% tokens (%) (ours) low", "Sub-1% Δ vs teacher excludes 0"} <= set(layout["csv_columns"])


def test_interval_cell_and_error_bar():
    iv = Interval(12.5, 2.0, 40.0, 6, "bootstrap")
    assert interval_cell(iv) == "12.50 [2.00, 40.00]"
    assert interval_cell(iv, mark=True, signed=True) == "+12.50 [2.00, 40.00] *"
    assert interval_cell(Interval(0.0, -3.0, 5.0, 6, "b"), mark=True) == "0.00 [-3.00, 5.00]"
    assert interval_cell(None) == "—"
    assert error_bar([iv, None]) == [[10.5, 0.0], [27.5, 0.0]]


def test_worked_solution_completion_is_thinking_then_boxed_answer():
    from rsdlib.prompts import worked_solution_completion

    assert (worked_solution_completion("  x = 2 + 2 = 4 ", "4")
            == "x = 2 + 2 = 4\n</think>\n\nThe final answer is $\\boxed{4}$.")
    assert worked_solution_completion("see above", None, "<|im_start|>answer") == "see above\n<|im_start|>answer"
