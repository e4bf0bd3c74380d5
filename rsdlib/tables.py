"""Every table number with its 95% interval, and every comparison with its paired difference (issue 16).

The table and figure notebooks read saved results only; this module turns those results into
intervals with the estimators of ``rsdlib.metrics`` and lays them out for ``rsdlib.plots.write_table``:

- accuracy tables (Tables 1, 3, 4, 5; Figures 1 and 4): ``load_correctness`` reads the per-sample rows
  of notebook 40 (``results/<profile>/eval/<model>/<benchmark>/samples.jsonl``);
  ``accuracy_uncertainty`` gives, per table row, each benchmark's avg@k / pass@1 and the Average with
  a bootstrap interval over problems, and the paired difference to the base model on the same
  problems (a benchmark whose problems all score alike: Wilson's interval, and its Wilson term in the
  Average; two models agreeing on every problem: the discordant-pair bound; every disagreement favouring one
  model: the Jeffreys posterior of the gain and loss shares; issue 33);
  ``add_accuracy_intervals`` adds the Markdown cells ("ours [low, high]") and the CSV columns
  (estimate, low, high, difference, its bounds, whether it excludes 0) to a comparison table, and
  returns the paired-difference section; ``accuracy_interval_notes`` states these methods and the
  minimum detectable effect under every accuracy table;
- trace tables (Tables 2 and 6; Figure 3): ``trace_uncertainty`` reads notebook 20's per-trace scores
  (``results/<profile>/analysis/scores.jsonl``, the kept traces) and gives per method the Wilson
  interval of the problems solved and bootstrap-over-traces intervals of the sub-1% share, fallback
  rate, trace perplexity and trace length; ``sub_share_difference`` is a method's sub-1% share minus
  the teacher's, problems resampled jointly.

All intervals are in the table's units (accuracy and shares in %), seeded (``seed``), 95%.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any, Mapping, Sequence

from rsdlib import metrics, paths, reference
from rsdlib.metrics import RESAMPLES, SEED, Interval, wilson_interval
from rsdlib.plots import interval_cell
from rsdlib.store import read_json

CI = "95% CI"
DIFF = "Δ vs base"


# ----------------------------------------------------------------------------------------------
# Accuracy tables (Tables 1, 3, 4, 5; Figures 1 and 4)
# ----------------------------------------------------------------------------------------------
def load_correctness(profile: str, model: str, benchmarks: Sequence[str] = reference.BENCHMARKS, *,
                     paper_samples: bool = True) -> dict:
    """{benchmark (paper name): {problem_id: [correct, ...] by sample index}} of one evaluated model.

    Reads ``results/<profile>/eval/<model>/<key>/samples.jsonl`` (notebook 40; ``status`` field only,
    never a response). A benchmark without a samples file is left out. ``paper_samples``: keep only the
    first samples the paper's metric uses (``reference.SAMPLES``: MATH500's pass@1 is sample 0), as the
    evaluation summary's score does; False keeps every sample (avg@n).
    """
    from rsdlib.evaluate import check_grading
    from rsdlib.store import read_jsonl_resumable, unique_samples

    check_grading(paths.results_dir(profile) / "eval", [model])  # no half-regraded folder
    out = {}
    for bench in benchmarks:
        folder = paths.results_dir(profile) / "eval" / model
        path = folder / reference.BENCHMARK_KEYS.get(bench, bench) / "samples.jsonl"
        if not path.is_file():
            continue
        by_problem: dict[str, dict[int, bool]] = defaultdict(dict)
        for r in unique_samples(read_jsonl_resumable(path)):
            by_problem[r["problem_id"]][int(r["sample_index"])] = r["status"] == "correct"
        keep = reference.SAMPLES.get(bench) if paper_samples else None
        out[bench] = {pid: [s[i] for i in sorted(s)][:keep] for pid, s in by_problem.items()}
    return out


def extra_sample_columns(rows: Mapping[str, str], profile: str,
                         benchmarks: Sequence[str] = reference.BENCHMARKS) -> dict[str, str]:
    """{column name: benchmark} for benchmarks evaluated with more samples than the paper's metric uses
    ("MATH500 avg@4" beside the paper's pass@1, issue 30): the avg@n columns ``accuracy_uncertainty`` fills."""
    out = {}
    for model in rows.values():
        for bench, per in load_correctness(profile, model, benchmarks, paper_samples=False).items():
            n = min((len(v) for v in per.values()), default=0)
            if n > reference.SAMPLES.get(bench, n):
                out[f"{bench} avg@{n}"] = bench
    return out


def accuracy_uncertainty(rows: Mapping[str, str], profile: str, *, base_key: str = "base",
                         benchmarks: Sequence[str] = reference.BENCHMARKS, seed: int = SEED,
                         resamples: int = RESAMPLES) -> dict[str, dict[str, dict[str, Interval]]]:
    """Per table row key: {"ours": {benchmark | "Average": Interval}, "vs_base": {...}} in %.

    ``rows``: {table row key: evaluated model name} as the table notebooks' ``rows`` parameter. "ours":
    avg@k (pass@1 with one sample) with a bootstrap interval over problems, the Average only when every
    benchmark was evaluated. "vs_base": the row's model minus the model of ``base_key`` on the same
    problems (paired bootstrap), absent for the base row itself or without a base model.
    """
    correctness = {key: load_correctness(profile, model, benchmarks) for key, model in rows.items()}
    base = correctness.get(base_key) or {}
    out = {}
    for key, per_bench in correctness.items():
        if not per_bench:
            continue
        ours = {b: metrics.bootstrap_accuracy(list(per_bench[b].values()), seed=seed, resamples=resamples).scaled(100)
                for b in benchmarks if b in per_bench}
        if len(ours) == len(benchmarks):
            ours["Average"] = metrics.bootstrap_average_accuracy({b: list(per_bench[b].values()) for b in benchmarks},
                                                         seed=seed, resamples=resamples).scaled(100)
        entry = {"ours": ours, "vs_base": {}}
        if key != base_key and base and set(base) == set(per_bench):
            diffs = metrics.paired_accuracy_difference(per_bench, base, seed=seed, resamples=resamples)
            if set(per_bench) != set(benchmarks):
                diffs.pop("Average", None)
            entry["vs_base"] = {b: iv.scaled(100) for b, iv in diffs.items()}
        out[key] = entry
    # avg@n beside the paper's metric where more samples were drawn (not part of the Average)
    extra = extra_sample_columns(rows, profile, benchmarks)
    every = {key: load_correctness(profile, model, sorted(set(extra.values())), paper_samples=False)
             for key, model in rows.items()} if extra else {}
    for column, bench in extra.items():
        n = int(column.rsplit("@", 1)[1])
        base_all = every.get(base_key, {}).get(bench)
        for key, per_bench in every.items():
            if key not in out or bench not in per_bench:
                continue
            mine = {pid: v[:n] for pid, v in per_bench[bench].items()}
            out[key]["ours"][column] = metrics.bootstrap_accuracy(list(mine.values()), seed=seed,
                                                                  resamples=resamples).scaled(100)
            if key != base_key and base_all and set(base_all) == set(mine):
                diff = metrics.paired_accuracy_difference({column: mine}, {column: {p: v[:n] for p, v in
                                                                                    base_all.items()}},
                                                          seed=seed, resamples=resamples)
                out[key]["vs_base"][column] = diff[column].scaled(100)
    return out


def cross_model_uncertainty(rows: Mapping[str, str], profile: str, **kw) -> dict[str, dict[str, dict[str, Interval]]]:
    """Table 4's ``accuracy_uncertainty``: each row's paired difference is to ITS OWN student's base row
    ("<student>/base"), as the paper's "(+0.57)" are, not to Qwen3-0.6B's."""
    out: dict = {}
    students = dict.fromkeys(key.split("/", 1)[0] for key in rows)
    for student in students:
        group = {k: m for k, m in rows.items() if k.split("/", 1)[0] == student}
        out.update(accuracy_uncertainty(group, profile, base_key=f"{student}/base", **kw))
    return out


def accuracy_mde_note(problems: Mapping[str, int]) -> str:
    """The minimum detectable effect under an accuracy table (problems per benchmark, one sample each)."""
    if not problems:
        return ""
    def points(se: float) -> str:  # an MDE above 100 points: no difference between two rows is detectable
        mde = 100 * metrics.minimum_detectable_effect(se)
        return f"{mde:.0f}" if mde <= 100 else "none (> 100)"

    per = ", ".join(f"{b}: {points(metrics.accuracy_difference_se([n]))}" for b, n in problems.items())
    avg = points(metrics.accuracy_difference_se(problems))
    return (f"Minimum detectable effect (the smallest true accuracy difference between two rows that this "
            f"profile's problem counts detect with 80% power, two-sided 5%, worst case p = 0.5, one sample per "
            f"problem): {per} points; Average: {avg} points. A smaller difference, or one whose interval "
            "contains 0, is not evidence either way.")


def add_accuracy_intervals(table: list[dict], uncertainty: Mapping[str, Mapping], columns: Sequence[str], *,
                           label: str = "Models", digits: int = 2) -> dict:
    """Add interval and paired-difference fields to the rows of a comparison table (in place).

    For each of ``columns`` that has an interval: ``<col> (ours, 95% CI)`` (Markdown cell
    "estimate [low, high]"), ``<col> (ours) low`` / ``high``, ``<col> Δ vs base`` with ``low`` /
    ``high`` / ``excludes 0`` (CSV). Returns {"columns": Markdown columns, "csv_columns": CSV columns,
    "section": (heading, rows, columns) of the paired differences, "problems": problems per benchmark}.
    """
    problems: dict[str, int] = {}
    diff_rows = []
    for r in table:
        entry = uncertainty.get(r["key"], {})
        ours, diffs = entry.get("ours", {}), entry.get("vs_base", {})
        for col in columns:
            iv = ours.get(col)
            r[f"{col} (ours, {CI})"] = interval_cell(iv, digits) if iv else _plain(r.get(f"{col} (ours)"), digits)
            r[f"{col} (ours) low"] = iv.low if iv else None
            r[f"{col} (ours) high"] = iv.high if iv else None
            d = diffs.get(col)
            r[f"{col} {DIFF}"] = d.estimate if d else None
            r[f"{col} {DIFF} low"] = d.low if d else None
            r[f"{col} {DIFF} high"] = d.high if d else None
            r[f"{col} {DIFF} excludes 0"] = d.excludes_zero if d else None
            if iv and col in reference.BENCHMARKS:
                problems[col] = max(problems.get(col, 0), iv.n)
        if diffs:
            diff_rows.append({label: r.get(label, r["key"]),
                              **{f"{col} {DIFF} [{CI}]": interval_cell(diffs.get(col), digits, mark=True, signed=True)
                                 for col in columns}})
    # a column the paper does not report (e.g. MATH500 avg@4 beside its pass@1) has no "(paper)" column
    papers = {c: f"{c} (paper)" for c in columns if any(f"{c} (paper)" in r for r in table)}
    md_columns = [label, *[x for c in columns for x in (f"{c} (ours, {CI})", papers.get(c)) if x]]
    csv_columns = [label, *[x for c in columns for x in (f"{c} (ours)", f"{c} (ours) low", f"{c} (ours) high",
                                                          papers.get(c), f"{c} {DIFF}", f"{c} {DIFF} low",
                                                          f"{c} {DIFF} high", f"{c} {DIFF} excludes 0") if x]]
    diff_columns = [col for col in columns if any(uncertainty.get(r["key"], {}).get("vs_base", {}).get(col)
                                                  for r in table)]
    section = ("Paired difference to the base student (ours, same problems; * : the 95% interval excludes 0)",
               [{k: v for k, v in d.items() if k == label or any(k.startswith(f"{c} ") for c in diff_columns)}
                for d in diff_rows], [label, *[f"{col} {DIFF} [{CI}]" for col in diff_columns]])
    return {"columns": md_columns, "csv_columns": csv_columns, "section": section, "problems": problems}


def accuracy_interval_notes(problems: Mapping[str, int]) -> list[str]:
    """The notes every accuracy table prints about its intervals."""
    return [
        f"ours, {CI}: our estimate and its 95% bootstrap interval over problems (2,000 resamples, seeded; a "
        "problem's samples are resampled with it). Where every problem of a benchmark scores the same (0 of 6 "
        "solved), Wilson's score interval instead, since resampling alone would give a zero-width interval. The "
        "Average averages, per replicate, one bootstrap replicate of each benchmark and, for a benchmark whose "
        "problems all score the same, one draw of its Wilson interval (its bound at a normal score), so that "
        "benchmark's uncertainty stays in the Average. The paper reports no intervals.",
        f"{DIFF}: the row's model minus the base student on the same problems, problems resampled jointly (the "
        "Average as above). Where the two models agree on every problem of a benchmark: the discordant-pair bound "
        "(McNemar's view: only problems they disagree on move the difference), ± the Wilson upper limit for 0 "
        "discordant problems of n. Where they disagree on some problems but every disagreement favours the same "
        "model (resampling would never cross 0): the Jeffreys posterior of the gain, loss and tie shares, "
        "Dirichlet(counts + 1/2).",
        accuracy_mde_note(problems),
    ]


def write_accuracy_table(table: list[dict], name: str, profile: str, intervals: Mapping, notes: Sequence[str],
                         title: str) -> list:
    """An accuracy table (Tables 1, 3, 4, 5) with its interval columns, the interval notes and the MDE section."""
    from rsdlib.plots import write_table

    return write_table(table, name, profile, columns=intervals["columns"], title=title,
                       notes=[*notes, *accuracy_interval_notes(intervals["problems"])],
                       csv_columns=intervals["csv_columns"], sections=[intervals["section"]])


def _plain(value: Any, digits: int) -> str:
    from rsdlib.plots import format_value

    return format_value(value, digits)


# ----------------------------------------------------------------------------------------------
# Trace tables (Tables 2 and 6; Figure 3)
# ----------------------------------------------------------------------------------------------
def read_scores(profile: str) -> list[dict]:
    """Notebook 20's per-trace rows (``results/<profile>/analysis/scores.jsonl``)."""
    path = paths.input_file(profile, "analysis", "scores.jsonl")  # a MissingInputError names notebook 20
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _low_count(row: dict, threshold: float) -> int:
    cut = math.log(threshold)
    return sum(lp < cut for lp in row["token_logprobs"])


def trace_uncertainty(scores: Sequence[dict], analysis: Mapping[str, Mapping], *, run: str = "main",
                      threshold: float = 0.01, seed: int = SEED, resamples: int = RESAMPLES) -> dict[str, dict]:
    """Per method of ``run``: Intervals of Table 2 / Table 6 / Figure 3, from the KEPT traces.

    ``scores``: notebook 20's rows; ``analysis``: its summary's ``runs[run]`` ({method: row with
    ``solved``, ``problems``, ``mode``}). Returns {method: {"solved" (Wilson, %), "sub_threshold" (%),
    "fallback" (%; rsd/skd only), "perplexity", "length" (tokens)}}: the last four by bootstrap over
    traces (pooled ratios for the shares; means over traces for perplexity and length).
    """
    kept = defaultdict(list)
    for r in scores:
        if r.get("run") == run and r.get("kept"):
            kept[r["method"]].append(r)
    out = {}
    for method, row in analysis.items():
        mine = kept.get(method, [])
        kw = {"seed": seed, "resamples": resamples}
        entry = {}
        if row.get("problems") and row.get("mode") != "reference":  # pre-existing traces are not attempts
            entry["solved"] = wilson_interval(int(row["solved"]), int(row["problems"])).scaled(100)
        if mine:
            entry["sub_threshold"] = metrics.bootstrap_ratio([_low_count(r, threshold) for r in mine],
                                                     [r["n_tokens"] for r in mine], **kw).scaled(100)
            entry["perplexity"] = metrics.bootstrap_mean([r["perplexity"] for r in mine], **kw)
            entry["length"] = metrics.bootstrap_mean([r["n_tokens"] for r in mine], **kw)
            if row.get("mode") in ("rsd", "skd") and all(r.get("fallback") for r in mine):
                entry["fallback"] = metrics.bootstrap_ratio([sum(bool(x) for x in r["fallback"]) for r in mine],
                                                    [len(r["fallback"]) for r in mine], **kw).scaled(100)
        out[method] = entry
    return out


def sub_share_difference(scores: Sequence[dict], method: str, baseline: str = "teacher", *, run: str = "main",
                         threshold: float = 0.01, seed: int = SEED, resamples: int = RESAMPLES) -> Interval | None:
    """Sub-1% share (%) of ``method``'s kept traces minus ``baseline``'s, problems resampled jointly
    (a problem one method has no trace of counts 0 of 0 tokens for it). None when either has no trace."""
    per = {m: defaultdict(lambda: [0, 0]) for m in (method, baseline)}
    for r in scores:
        if r.get("run") == run and r.get("kept") and r.get("method") in per:
            cell = per[r["method"]][r["problem_id"]]
            cell[0] += _low_count(r, threshold)
            cell[1] += r["n_tokens"]
    if not per[method] or not per[baseline]:
        return None
    ids = sorted(set(per[method]) | set(per[baseline]))
    a = [per[method].get(i, [0, 0]) for i in ids]
    b = [per[baseline].get(i, [0, 0]) for i in ids]
    return metrics.paired_ratio_difference([x[0] for x in a], [x[1] for x in a], [x[0] for x in b], [x[1] for x in b],
                                   seed=seed, resamples=resamples).scaled(100)


def difference_mde_note(what: str, intervals: Sequence[Interval], units: str, *, two_rows: bool = False) -> str:
    """MDE line: 2.80 x the median bootstrap standard error of ``intervals`` (80% power, two-sided 5%).

    ``intervals`` are differences (their se is the difference's), or, with ``two_rows``, single rows'
    estimates: a difference between two independent rows then has se sqrt(2) x a row's se.
    """
    ses = sorted(iv.se for iv in intervals if iv is not None and not math.isnan(iv.se))
    if not ses:
        return f"Minimum detectable effect of {what}: not computable here (no interval)."
    se = ses[len(ses) // 2] * (math.sqrt(2) if two_rows else 1.0)
    how = "2.80 x sqrt(2) x a row's bootstrap standard error" if two_rows else "2.80 x its bootstrap standard error"
    return (f"Minimum detectable effect of {what} (80% power, two-sided 5%; {how}, median over the rows): "
            f"{metrics.minimum_detectable_effect(se):.2f} {units}.")


def add_solved_interval(row: dict, column: str, solved: int, problems: int, digits: int = 0) -> None:
    """A solved count's Markdown cell "s/n (p% [low, high])" (Wilson) and its CSV bounds, in place."""
    if not problems:
        return
    iv = wilson_interval(int(solved), int(problems)).scaled(100)
    row[f"{column} (ours, {CI})"] = f"{solved}/{problems} ({interval_cell(iv, digits)} %)"
    row[f"{column} (ours) low"], row[f"{column} (ours) high"] = iv.low, iv.high


TRACE_COLUMNS = {"Correctly solved": "solved", "Fallback rate (%)": "fallback", "Sub-1% tokens (%)": "sub_threshold"}
SUB_DIFF = "Sub-1% Δ vs teacher (ours, 95% CI)"


def add_trace_intervals(rows: list[dict], uncertainty: Mapping[str, Mapping[str, Interval]],
                        key_to_method: Mapping[str, str], differences: Mapping[str, Interval | None], *,
                        label: str = "Datasets", digits: int = 2) -> dict:
    """Table 2's interval fields, added to its comparison rows in place (``trace_uncertainty`` output).

    Markdown cells ``<col> (ours, 95% CI)`` for Correctly solved ("s/n (rate [low, high] %)", Wilson),
    the fallback rate and the sub-1% share (bootstrap over traces), and the sub-1% share minus the
    teacher's (``differences``: method -> Interval, * where it excludes 0); CSV: estimate, low, high
    for each, the difference's bounds and whether it excludes 0. Returns {"columns", "csv_columns"}.
    """
    for r in rows:
        method = key_to_method.get(r["key"])
        unc = uncertainty.get(method, {}) if method else {}
        for col, stat in TRACE_COLUMNS.items():
            iv = unc.get(stat)
            if stat == "solved" and iv is not None:
                r[f"{col} (ours, {CI})"] = f"{r.get(f'{col} (ours)')} ({interval_cell(iv, 0)} %)"
            else:
                r[f"{col} (ours, {CI})"] = interval_cell(iv, digits) if iv else _plain(r.get(f"{col} (ours)"), digits)
            r[f"{col} (ours) low"], r[f"{col} (ours) high"] = (iv.low, iv.high) if iv else (None, None)
        d = differences.get(method) if method else None
        r[SUB_DIFF] = interval_cell(d, digits, mark=True, signed=True) if d else None
        r["Sub-1% Δ vs teacher"] = d.estimate if d else None
        r["Sub-1% Δ vs teacher low"], r["Sub-1% Δ vs teacher high"] = (d.low, d.high) if d else (None, None)
        r["Sub-1% Δ vs teacher excludes 0"] = d.excludes_zero if d else None
    columns = [label, *[f"{c} ({w})" for c in TRACE_COLUMNS for w in (f"ours, {CI}", "paper")], SUB_DIFF]
    csv_columns = [label, *[x for c in TRACE_COLUMNS for x in (f"{c} (ours)", f"{c} (ours) low", f"{c} (ours) high",
                                                                 f"{c} (paper)")],
                   "Sub-1% Δ vs teacher", "Sub-1% Δ vs teacher low", "Sub-1% Δ vs teacher high",
                   "Sub-1% Δ vs teacher excludes 0"]
    return {"columns": columns, "csv_columns": csv_columns}


# ----------------------------------------------------------------------------------------------
# Shared by the accuracy tables (Tables 1, 3, 4, 5)
# ----------------------------------------------------------------------------------------------
def load_evaluation(profile: str) -> dict:
    """``results/<profile>/eval/summary.json`` (notebook 40), or a MissingInputError saying what to run; a
    MixedGradingError when its models were graded in different ways or a regrade was cut midway."""
    from rsdlib.evaluate import check_grading

    doc = read_json(paths.input_file(profile, "eval", "summary.json"))
    check_grading(paths.results_dir(profile) / "eval", list(doc.get("models", {})))
    return doc


def check_row_keys(rows: dict, paper_rows: Sequence[dict], table: str) -> None:
    """Refuse row keys that are not rows of the paper's table (``rsdlib.reference``)."""
    known = [r["key"] for r in paper_rows]
    unknown = set(rows) - set(known)
    if unknown:
        raise ValueError(f"rows: unknown {table} keys {sorted(unknown)}; known: {known}")


def accuracy_rows(rows: dict, evaluation: dict, columns: Sequence[str]) -> list[dict]:
    """Our table rows: {paper row key: our evaluated model} -> [{"key", column: value}], evaluated ones only."""
    models = evaluation["models"]
    return [{"key": key, **{c: models[m].get(c) for c in columns}} for key, m in rows.items() if m in models]


def name_our_student(table: list[dict], base_key: str, student_spec: str) -> None:
    """The paper's base student is not ours: name both in the base row's label (in place)."""
    from rsdlib.models import display_name

    ours = display_name(student_spec)
    for r in table:
        if r["key"] == base_key:
            r["Models"] = f"{r['Models']} (ours: {ours})"


# ----------------------------------------------------------------------------------------------
# Table 2: dataset characteristics of each trace generator
# ----------------------------------------------------------------------------------------------
NOT_APPLICABLE = "Not Applicable"
REFERENCE_LABEL = {"s1k-1.1": "s1K-1.1", "math500_solutions": "s1K-1.1 stand-in: MATH500 worked solutions"}


def dataset_stats(profile: str, run: str, analysis: Mapping, manifest: Mapping) -> dict:
    """Table 2's rows (ours beside the paper's) with 95% intervals: Wilson for solved counts, bootstrap over
    traces for the shares, each method's sub-1% share against the teacher's. Returns {"rows", "columns",
    "csv_columns", "differences"}."""
    from rsdlib.plots import comparison_rows

    threshold = analysis["threshold"]
    full_scale = "s1k-solutions" in analysis["runs"][run]  # notebook 20 scored the 1,000 s1K worked solutions
    # our method name -> the paper's row key: the pre-existing-traces row is the full s1K set where it was scored
    key_of = ({"s1k-solutions": "s1k-1.1", "reference": "reference (training)"} if full_scale
              else {"reference": "s1k-1.1"})
    ours = []
    for method, row in analysis["runs"][run].items():
        key = key_of.get(method, method)
        solved = f"{row['solved']}/{row['problems']}"
        fallback = row["fallback_rate"] if row["mode"] in ("rsd", "skd") else NOT_APPLICABLE
        if row["mode"] in ("rsd", "skd") and row["kept_traces"] == 0:
            fallback = None  # no training trace: nothing to measure
        label = REFERENCE_LABEL.get(manifest.get("reference"), "s1K-1.1") if method == "reference" else None
        if method == "s1k-solutions":
            label = (f"s1K-1.1 stand-in: {row['problems']:,} of the 1,000 s1K worked solutions "
                     "(teacher-forced, no generation)")
        elif method == "reference" and full_scale:
            label = f"{label} (the '+ s1K-1.1' training set)"
        ours.append({"key": key, "method": method, "label": label or method, "Correctly solved": solved,
                     "Fallback rate (%)": fallback, "Sub-1% tokens (%)": row["sub_threshold_tokens"],
                     "kept traces": row["kept_traces"]})
    paper = [dict(r, **{"Fallback rate (%)": r["Fallback rate (%)"] if r["Fallback rate (%)"] is not None
                        else NOT_APPLICABLE}) for r in reference.TABLE2]
    rows = comparison_rows(ours, paper, ["Correctly solved", "Fallback rate (%)", "Sub-1% tokens (%)"])
    by_key = {r["key"]: r for r in ours}
    for r in rows:  # our labels for rows the paper lacks, and the reference stand-in's name
        if r["key"] in by_key and (r["key"] == "s1k-1.1" or r["label"] == r["key"]):
            r["label"] = by_key[r["key"]]["label"]
    rows = [{("Datasets" if k == "label" else k): v for k, v in r.items()} for r in rows]  # the paper's header
    scores = read_scores(profile)
    uncertainty = trace_uncertainty(scores, analysis["runs"][run], run=run, threshold=threshold)
    differences = {m: sub_share_difference(scores, m, "teacher", run=run, threshold=threshold)
                   for m, r in analysis["runs"][run].items() if m != "teacher" and r["mode"] != "reference"}
    layout = add_trace_intervals(rows, uncertainty, {r["key"]: r["method"] for r in ours}, differences)
    return {"rows": rows, "columns": layout["columns"], "csv_columns": layout["csv_columns"],
            "differences": differences}


def training_composition_rows(profile: str, manifest: Mapping) -> list[dict]:
    """Full / prefix / total training examples of every trace run (the hybrid recipe), printed as well."""
    from rsdlib.traces import trace_run_stats

    composition = []
    for run_name, run_methods in manifest["methods"].items():
        for m in run_methods:
            st = trace_run_stats(paths.results_dir(profile) / "traces" / run_name / m)
            composition.append({"pair": run_name, "method": m, "full": st["solved"], "prefix": st["prefix_examples"],
                                "total": st["training_examples"], "ungradable": st["ungradable_problems"]})
            print(f"{run_name}/{m}: {st['solved']} full + {st['prefix_examples']} prefix = "
                  f"{st['training_examples']} examples ({st['ungradable_problems']} problems without a trusted "
                  "gold: unsolved, prefixes)")
    return composition


def keep_rule_lengths(profile: str, manifest: Mapping) -> dict[tuple[str, str], dict]:
    """{(pair run, method): {"keep", "first", "shortest"}}: each run's mean kept-trace length under its own
    keep rule's two candidates, "first" and "shortest", from the same samples (Table 6 under both rules)."""
    from rsdlib.traces import trace_run_stats

    out = {}
    for run_name, run_methods in manifest["methods"].items():
        for m in run_methods:
            st = trace_run_stats(paths.results_dir(profile) / "traces" / run_name / m)
            out[(run_name, m)] = {"keep": st["keep"], "first": st["avg_tokens_first"],
                                  "shortest": st["avg_tokens_shortest"]}
    return out


def dataset_stats_notes(manifest: Mapping, run: str, threshold: float, differences: Mapping) -> list[str]:
    """The notes under Table 2: what was run, how each column is counted, the intervals."""
    from rsdlib.models import display_name

    trace_cfg = manifest["job"] | {"max_new_tokens": manifest["decoding"].get("max_new_tokens")}
    pair = manifest["pairs"][run]
    notes = [
        f"Ours: {display_name(pair['teacher'])} teaching {display_name(pair['student'])}, "
        f"{len(manifest['problems'])} {manifest['benchmark']} problems, {trace_cfg.get('samples_per_problem')} samples "
        f"per problem, at most {trace_cfg.get('max_new_tokens')} new tokens. Paper: s1.1-7B teaching Qwen3-0.6B, "
        "1,000 s1K problems, 16 samples, 8k context.",
        "Correctly solved: the teacher over all problems (those without a trusted gold, rsdlib.grading.gold_trust, "
        "count as unsolved and give prefixes); the other methods over the problems the teacher solved"
        + ("" if manifest["restrict_to_teacher_solved"] else " (not restricted in this profile: over all problems)")
        + ".",
        f"Sub-1% tokens: tokens of the kept (training) traces with probability below {threshold:g} under the "
        "student, teacher-forced, pooled over all tokens. Fallback rate: over the same traces.",
        "— : not produced (the method kept no trace, or the paper has no such row).",
        "95% CI: Wilson interval for Correctly solved; bootstrap over traces (2,000 resamples, seeded; a trace's "
        "tokens stay together) for the fallback rate and the sub-1% share. Δ vs teacher: the row's sub-1% share "
        "minus the teacher's, problems resampled jointly; * : its interval excludes 0. The paper reports no "
        "intervals.",
        difference_mde_note("a sub-1% share difference to the teacher", [d for d in differences.values() if d],
                            "points"),
    ]
    if manifest.get("reference") == "math500_solutions":
        notes.append("s1K-1.1 (DeepSeek-R1 traces) needs the Hugging Face hub; offline, the problems' worked "
                     "MATH500 solutions stand in as pre-existing traces the student did not write.")
    return notes
