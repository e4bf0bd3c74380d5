# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Table 6 · Average token count of RSD traces, per threshold and per student
#
# **Paper:** Appendix F, Table 6: RSD traces tailored for Qwen3-0.6B average over 4,000 tokens at every
# threshold, those tailored for Llama-3.2-1B-Instruct only 1,081: RSD keeps each student's own style.
#
# **Reads:** `results/<profile>/analysis/summary.json` (notebook 20: per pair and method, the kept
# traces' lengths, computed from the trace files of notebook 10).
#
# **Writes:** `figures/<profile>/tab6_trace_lengths.{md,csv}`: our value beside the paper's.
#
# **Time:** seconds.

# %%
import json

import pandas as pd

from rsdlib import paths, reference
from rsdlib.models import display_name
from rsdlib.plots import comparison_rows, interval_cell, write_table
from rsdlib.tables import difference_mde_note, keep_rule_lengths, read_scores, trace_uncertainty

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile> and figures/<profile>
pair_keys: dict = {"main": ""}  # pair run -> suffix of the paper row keys: "" (Qwen3-0.6B rows), "-llama" (Llama row)

# %%
analysis = json.loads(paths.input_file(profile, "analysis", "summary.json").read_text())
manifest = json.loads(paths.input_file(profile, "traces", "manifest.json").read_text())
unknown = set(pair_keys) - set(analysis["runs"])
if unknown:
    raise ValueError(f"pair_keys names runs notebook 10 did not make: {sorted(unknown)}; "
                     f"runs: {list(analysis['runs'])}")

# %%
ours, origin = [], {}  # origin: row key -> (pair run, method)
for run, methods in analysis["runs"].items():
    suffix = pair_keys.get(run, f"-{run}")
    student = display_name(analysis["pairs"][run]["student"])
    for method, summary in methods.items():
        if summary.get("mode") != "rsd":
            continue
        pct = f"{100 * summary['threshold']:g}%"
        origin[method + suffix] = (run, method)
        ours.append({"key": method + suffix, "label": f"RSD-generated (p_th={pct}, tailored for {student})",
                     "Average token count": summary.get("avg_tokens"),
                     "kept traces": summary.get("solved"),
                     "mean tokens, all samples": summary.get("avg_sample_tokens")})
rows = comparison_rows(ours, reference.TABLE6, ["Average token count"])
extra = {r["key"]: r for r in ours}
for r in rows:
    mine = extra.get(r["key"], {})
    r["kept traces (ours)"] = mine.get("kept traces")
    r["mean tokens, all samples (ours)"] = mine.get("mean tokens, all samples")
    if mine and r["label"] == r["key"]:
        r["label"] = mine["label"]
# 95% intervals of the average length: bootstrap over each method's kept traces
scores, lengths = read_scores(profile), {}
for run, methods in analysis["runs"].items():
    uncertainty = trace_uncertainty(scores, methods, run=run, threshold=analysis["threshold"])
    lengths.update({m + pair_keys.get(run, f"-{run}"): u.get("length") for m, u in uncertainty.items()})
for r in rows:
    length = lengths.get(r["key"])
    r["Average token count (ours, 95% CI)"] = interval_cell(length, 0) if length else None
    low_high = (length.low, length.high) if length else (None, None)
    r["Average token count (ours) low"], r["Average token count (ours) high"] = low_high
rows = [{("Datasets" if k == "label" else k): v for k, v in r.items()} for r in rows]  # the paper's header
csv_columns = [c for c in rows[0] if c not in ("key", "Average token count (ours, 95% CI)")] if rows else []
hidden = {"Average token count (ours)", "Average token count (ours) low", "Average token count (ours) high"}
columns = ["Datasets", "Average token count (ours, 95% CI)",
           *[c for c in rows[0] if c not in {"key", "Datasets", "Average token count (ours, 95% CI)", *hidden}]
           ] if rows else []
pd.DataFrame(rows)[columns]

# %% [markdown]
# Which correct trace is kept moves these lengths (the paper says only "selecting a correct one"; the
# authors' code kept the shortest for RSD). Both rules on the same samples, no new generation:

# %%
by_rule = keep_rule_lengths(profile, manifest)
for r in rows:
    rule = by_rule.get(origin.get(r["key"]), {})
    r["keep rule (ours)"] = rule.get("keep")
    r["mean tokens, first correct (ours)"] = rule.get("first")
    r["mean tokens, shortest correct (ours)"] = rule.get("shortest")
columns += ["keep rule (ours)", "mean tokens, first correct (ours)", "mean tokens, shortest correct (ours)"]
csv_columns += ["keep rule (ours)", "mean tokens, first correct (ours)", "mean tokens, shortest correct (ours)"]
pd.DataFrame(rows)[columns]

# %%
budget = manifest["decoding"].get("max_new_tokens")
notes = [
    "Average token count: mean length (student tokens, end-of-turn included) of the kept RSD traces. "
    f"Ours are capped by this profile's budget of {budget} new tokens; the paper's context was 8,192.",
    "Ours: " + "; ".join(f"{run}: {display_name(p['teacher'])} -> {display_name(p['student'])}"
                         for run, p in manifest["pairs"].items()) + ".",
    "— : not produced (no kept trace, or the pair/threshold was not run in this profile).",
    "95% CI: bootstrap over the kept traces (2,000 resamples, seeded). The paper reports no intervals.",
    "Keep rule: which correct sample of a problem became its trace (RSD: the shortest, as in the authors' code). "
    "The two last columns recompute the mean from the same samples under the first-correct and the "
    "shortest-correct rule.",
    difference_mde_note("a difference in average length between two rows",
                        [lengths.get(r["key"]) for r in rows if lengths.get(r["key"])], "tokens", two_rows=True),
]
write_table(rows, "tab6_trace_lengths", profile, columns=columns, csv_columns=csv_columns, notes=notes, digits=0,
            title="Table 6: average token count of RSD-generated traces (ours beside the paper)")
