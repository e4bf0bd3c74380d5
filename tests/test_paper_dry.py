"""The paper profile's dry run (issue 12): params/paper-dry is params/paper with stand-ins and small sizes.

``test_dry_profile_differs_from_paper_only_in_allowed_keys`` diffs the two profiles' keys and values
and fails on any difference outside model ids (stand-ins), problem counts, samples, token budgets,
epochs/steps and evaluation limits. ``test_paper_dry_reproduction`` runs ``rsdlib reproduce
--profile paper-dry`` end to end (stand-in models of rsdlib.standins, real tokenizers): 18/18
notebooks, every table and figure, kept traces for every method.
"""

from __future__ import annotations

import csv
import fnmatch
import json

import pytest
import yaml

from rsdlib.reproduce import NOTEBOOKS, PARAMS_DIR, expected_outputs

# (notebook, dotted key path) patterns whose value may differ, and why
ALLOWED = {
    "*:teacher": "model id (stand-in)", "*:student": "model id (stand-in)",
    "10_generate_traces:extra_pairs.*.teacher": "model id (stand-in)",
    "10_generate_traces:extra_pairs.*.student": "model id (stand-in)",
    "10_generate_traces:transfers.*.student": "model id (stand-in)",
    "40_evaluate:extra_models.*-base": "model id (stand-in)",
    "10_generate_traces:reference": "the s1K-1.1 traces are DeepSeek-R1's output, hub only: stand-in",
    "10_generate_traces:n_problems": "problem count", "00_walkthrough:n_steps": "token budget",
    "10_generate_traces:decoding.max_new_tokens": "token budget",
    "10_generate_traces:job.samples_per_problem": "samples", "10_generate_traces:job.prefix_tokens": "token budget",
    "10_generate_traces:job.batch_size": "samples (rows at once)",
    "10_generate_traces:methods.self-distill-ce.samples_per_problem": "samples",
    "3*_*:training.epochs": "epochs", "3*_*:training.block_size": "token budget",
    "30_train:method_training.reference.block_size": "token budget",
    "40_evaluate:evaluation.samples.*": "evaluation limit", "40_evaluate:evaluation.limit*": "evaluation limit",
    "40_evaluate:evaluation.max_tokens.*": "token budget", "40_evaluate:evaluation.think_budget.*": "token budget",
    "fig2_surprisal:max_tokens": "token budget", "fig5_fig7_excerpts:*_tokens": "token budget",
}


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _profile(name):
    """Flattened parameter files of a profile (a notebook without a file: its defaults, nothing changed)."""
    files = {nb.name: PARAMS_DIR / name / f"{nb.name}.yaml" for nb in NOTEBOOKS}
    return {nb: _flatten((yaml.safe_load(path.read_text()) or {}) if path.is_file() else {})
            for nb, path in files.items()}


def profile_differences(paper: dict, dry: dict) -> list[str]:
    """Differences between two flattened profiles that ALLOWED does not permit."""
    bad = []
    for nb in paper:
        for key in sorted(set(paper[nb]) | set(dry[nb])):
            a, b = paper[nb].get(key, "<absent>"), dry[nb].get(key, "<absent>")
            if a == b:
                continue
            allowed = any(fnmatch.fnmatch(f"{nb}:{key}", pat) for pat in ALLOWED)
            if not allowed or (ALLOWED.get(next((p for p in ALLOWED if fnmatch.fnmatch(f"{nb}:{key}", p)), ""))
                               == "model id (stand-in)" and b != f"standin:{a}"):
                bad.append(f"{nb}: {key}: paper {a!r} / dry {b!r}")
    return bad


def test_dry_profile_differs_from_paper_only_in_allowed_keys():
    bad = profile_differences(_profile("paper"), _profile("paper-dry"))
    assert not bad, "params/paper-dry differs from params/paper beyond stand-ins and sizes:\n" + "\n".join(bad)


def test_the_diff_check_catches_a_changed_recipe():
    """Not vacuous: a learning rate, a prompt, a missing key or a non-stand-in model id are all caught."""
    paper = _profile("paper")
    for nb, key, value in (("30_train", "training.learning_rate", 1e-3), ("10_generate_traces", "prompt.style", "x"),
                           ("10_generate_traces", "teacher", "some/other-model"),
                           ("40_evaluate", "evaluation.temperature", 1.0)):
        dry = {k: dict(v) for k, v in _profile("paper-dry").items()}
        dry[nb][key] = value
        assert any(key in line for line in profile_differences(paper, dry)), key
    dry = {k: dict(v) for k, v in _profile("paper-dry").items()}
    del dry["40_evaluate"]["evaluation.top_p"]
    assert profile_differences(paper, dry)


@pytest.mark.slow
def test_paper_dry_reproduction(tmp_path, monkeypatch):
    from rsdlib.reproduce import reproduce
    from rsdlib.standins import standin_tokenizers_dir

    standin_tokenizers_dir()  # a clear error when the real tokenizer files are not provided
    monkeypatch.setenv("RSDLIB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("RSDLIB_FIGURES", str(tmp_path / "figures"))
    report = reproduce("paper-dry", threads=1, echo=lambda line: None)
    assert [r.name for r in report.results if r.status != "ok"] == [], [(r.name, r.error) for r in report.failed()]
    assert len(report.results) == 18
    written = {p.name for p in report.outputs}
    assert set(expected_outputs()) <= written
    manifest = json.loads((tmp_path / "results" / "paper-dry" / "traces" / "manifest.json").read_text())
    for run, methods in manifest["methods"].items():
        for method in methods:
            dataset = tmp_path / "results" / "paper-dry" / "traces" / run / method / "dataset.jsonl"
            kinds = [json.loads(line)["kind"] for line in dataset.read_text().splitlines()]
            assert kinds.count("full") >= 1, f"{run}/{method} kept no trace"
            if method != "reference":  # the hybrid recipe: every problem with a gold gives an example
                assert kinds.count("prefix") >= 1, f"{run}/{method} has no prefix example"
    # an extra pair's teacher-solved set is its own teacher's: R1-Distill runs its own teacher method, while
    # Qwen3-1.7B's pair shares s1.1-7B (and its prompt) with pair main, so main's teacher run restricts it
    assert "teacher" in manifest["methods"]["llama"] and "teacher" not in manifest["methods"]["qwen3-1.7b"]
    assert set(manifest["transfers"]) == set(yaml.safe_load(
        (PARAMS_DIR / "paper-dry" / "10_generate_traces.yaml").read_text())["transfers"])
    # Table 4 whole (issue 29): all 23 of the paper's rows, each with our Average
    with open(tmp_path / "figures" / "paper-dry" / "tab4_cross_model.csv", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 23 and all(row["Average (ours)"] not in ("", None) for row in table), table
