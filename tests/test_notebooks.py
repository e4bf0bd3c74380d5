"""The reproduction notebooks: conventions, parameter files, and a full smoke run through papermill.

The smoke run (random tiny models, three MATH500 problems) executes every notebook of the driver's
order once per test session, writing results and figures under a temporary folder
(``RSDLIB_RESULTS`` / ``RSDLIB_FIGURES``), never into the repository.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import pytest

from rsdlib import reproduce

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_FILES = sorted((REPO / "notebooks").glob("*.py"))
PROFILES = ("smoke", "demo", "paper", "paper-dry")


def test_every_notebook_file_is_in_the_driver_order():
    names = {p.stem for p in NOTEBOOK_FILES}
    assert names == {nb.name for nb in reproduce.NOTEBOOKS}
    order = [nb.name for nb in reproduce.NOTEBOOKS]
    for i, nb in enumerate(reproduce.NOTEBOOKS):  # dependencies run first
        assert all(order.index(d) < i for d in nb.depends), nb.name


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebook_conventions(path, tmp_path):
    import jupytext
    import papermill as pm

    nb = jupytext.read(path)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# ")
    for word in ("Reads", "Writes", "Time"):
        assert word in first.source, f"{path.name}: the title cell must say what it {word.lower()}"
    cells = reproduce.parameters_cells(nb)
    assert len(cells) == 1, f"{path.name}: exactly one parameters cell"
    index = nb.cells.index(cells[0])
    assert nb.cells[index + 1].cell_type == "code", "a validation cell follows the parameters"
    assert any("import" in c.source for c in nb.cells[1:index]), "imports come before the parameters"
    params = reproduce.parse_parameters(cells[0].source)
    assert "profile" in params
    for p in params.values():
        assert p.help, f"{path.name}: parameter {p.name} has no help comment"
        assert p.type.split("|")[0].strip().split("[")[0] in ("str", "int", "float", "bool", "list", "dict")
    # papermill must see the same parameters (it parses the cell with its own rules)
    ipynb = tmp_path / f"{path.stem}.ipynb"
    jupytext.write(nb, ipynb, fmt="ipynb")
    assert set(pm.inspect_notebook(str(ipynb))) == set(params)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("spec", reproduce.NOTEBOOKS, ids=lambda s: s.name)
def test_parameter_files_match_the_notebooks(profile, spec):
    declared = reproduce.notebook_parameters(spec.name)
    values = reproduce.load_params(profile, spec.name, declared=declared)  # refuses unknown keys and types
    assert values["profile"] == profile
    if "force" in declared:
        assert values.get("force", False) is False, "force belongs on the command line, not in a profile"


def test_paper_profile_uses_the_papers_setup():
    traces = reproduce.load_params("paper", "10_generate_traces")
    assert traces["teacher"] == "simplescaling/s1.1-7B" and traces["student"] == "Qwen/Qwen3-0.6B"
    assert traces["benchmark"] == "s1k" and traces["job"]["samples_per_problem"] == 16
    assert traces["decoding"]["temperature"] == 0.7 and traces["reference"] == "s1k-1.1"
    thresholds = sorted(m["threshold"] for m in traces["methods"].values() if m["mode"] == "rsd")
    assert thresholds == [0.003, 0.01, 0.03, 0.1]
    assert traces["extra_pairs"]["llama"]["student"] == "meta-llama/Llama-3.2-1B-Instruct"
    training = reproduce.load_params("paper", "30_train")["training"]
    assert training["epochs"] == 15 and training["global_batch_size"] == 16 and training["block_size"] == 8192


@pytest.mark.parametrize("spec", reproduce.NOTEBOOKS, ids=lambda s: s.name)
def test_the_demo_profile_is_the_notebooks_defaults(spec):
    """Issue 20: Run All on a notebook as it is does what `rsdlib reproduce --profile demo` does, from one
    source: the notebook's parameters cell. params/demo/ restates nothing (a profile holds only what it
    changes), and a file there that differs from the notebook is reported key by key."""
    import yaml

    declared = reproduce.notebook_parameters(spec.name)
    assert declared["profile"].default == "demo"
    path = REPO / "params" / "demo" / f"{spec.name}.yaml"
    values = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    differ = {k: {"notebook": declared[k].default, "demo": v} for k, v in values.items()
              if k in declared and declared[k].default != v}
    assert not differ, f"{path} differs from the defaults of notebooks/{spec.name}.py: {differ}"
    assert not values, f"{path} restates the defaults of notebooks/{spec.name}.py ({', '.join(values)}): leave it out"
    assert reproduce.resolved_params("demo", spec.name) == {p.name: p.default for p in declared.values()}



@pytest.mark.parametrize("profile", [p for p in PROFILES if p != "demo"])
def test_no_parameter_file_restates_a_notebook_default(profile):
    """One source of defaults: a profile's file holds only the keys it changes from the notebook's
    parameters cell (a restated default would silently stop following the notebook)."""
    import yaml

    restated = {}
    for spec in reproduce.NOTEBOOKS:
        path = REPO / "params" / profile / f"{spec.name}.yaml"
        values = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
        declared = reproduce.notebook_parameters(spec.name)
        same = sorted(k for k, v in values.items() if k in declared and declared[k].default == v)
        if same:
            restated[spec.name] = same
    assert not restated, f"params/{profile} restates notebook defaults (leave these keys out): {restated}"

def test_demo_traces_never_use_the_evaluation_half():
    traces = reproduce.resolved_params("demo", "10_generate_traces")
    assert traces["split"] == "trace" and traces["benchmark"] == "math500"


# ----------------------------------------------------------------------------------------------
# The smoke reproduction (every notebook, through the driver and papermill)
# ----------------------------------------------------------------------------------------------
def _smoke_env(root: Path):
    """RSDLIB_RESULTS / RSDLIB_FIGURES pointing at the smoke run's folders while the block runs."""
    return mock.patch.dict(os.environ, {"RSDLIB_RESULTS": str(root / "results"),
                                        "RSDLIB_FIGURES": str(root / "figures")})


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    assert not os.environ.get("RSDLIB_DATA_DIR"), "conftest unsets it: the smoke run reads the shipped copies"
    root = tmp_path_factory.mktemp("smoke")
    lines = []
    with _smoke_env(root):
        report = reproduce.reproduce("smoke", echo=lines.append)
    print("\n".join(lines))
    return report, root, "\n".join(lines)


def test_smoke_every_notebook_runs(smoke_run):
    report, _, text = smoke_run
    assert [r.name for r in report.results] == [nb.name for nb in reproduce.NOTEBOOKS]
    assert report.ok, text
    for r in report.results:
        assert r.output.is_file() and r.log.is_file()
        executed = json.loads(r.output.read_text())
        errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{r.name}: {errors[:1]}"
    assert "figures and tables written" in text


def test_smoke_writes_every_table_and_figure(smoke_run):
    report, root, _ = smoke_run
    folder = root / "figures" / "smoke"
    expected = reproduce.expected_outputs()
    missing = [name for name in expected if not (folder / name).is_file() or (folder / name).stat().st_size == 0]
    assert not missing
    assert {p.name for p in report.outputs} >= set(expected)
    for name in expected:
        if name.endswith(".md") and name.startswith("tab"):
            text = (folder / name).read_text()
            assert "profile **smoke**" in text and "(paper)" in text and "(ours" in text  # "(ours)" or "(ours, 95% CI)"
        if name.endswith(".png"):
            assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_tables_and_figures_carry_intervals(smoke_run):
    """Issue 16: estimate + 95% interval columns in every table (Markdown and CSV), paired differences
    and the minimum detectable effect under the accuracy tables, error bars in Figures 1, 3 and 4."""
    import csv

    _, root, _ = smoke_run
    folder = root / "figures" / "smoke"
    for name in ("tab1_main_results", "tab3_compute_equivalent", "tab4_cross_model", "tab5_multistep"):
        md = (folder / f"{name}.md").read_text()
        assert "Average (ours, 95% CI)" in md and "Paired difference to the base student" in md, name
        assert "Minimum detectable effect" in md, name
        with open(folder / f"{name}.csv") as fh:
            header, *rows = list(csv.reader(fh))
        for col in ("MATH500 (ours)", "MATH500 (ours) low", "MATH500 (ours) high", "Average Δ vs base",
                    "Average Δ vs base low", "Average Δ vs base high", "Average Δ vs base excludes 0"):
            assert col in header, (name, col)
        base = dict(zip(header, rows[0]))  # the base student: evaluated in the smoke run
        assert float(base["MATH500 (ours) low"]) <= float(base["MATH500 (ours)"]) <= float(base["MATH500 (ours) high"])
    md2 = (folder / "tab2_dataset_stats.md").read_text()
    assert "Sub-1% tokens (%) (ours, 95% CI)" in md2 and "Sub-1% Δ vs teacher" in md2
    assert "6 of the 1,000 s1K worked solutions" in md2  # notebook 20 scored the s1K solutions (s1k_solutions: 6)
    with open(folder / "tab2_dataset_stats.csv") as fh:
        header = next(csv.reader(fh))
    assert {"Correctly solved (ours) low", "Sub-1% tokens (%) (ours) high",
            "Sub-1% Δ vs teacher excludes 0"} <= set(header)
    assert "Average token count (ours, 95% CI)" in (folder / "tab6_trace_lengths.md").read_text()
    executed = root / "results" / "smoke" / "notebooks"
    for name in ("fig1_overview", "fig4_cross_model"):
        assert "95% intervals: {" in (executed / f"{name}.ipynb").read_text(), name
    fig3 = (executed / "fig3_perplexity.ipynb").read_text()
    assert "ci_low" in fig3 and "s1k-solutions" in fig3


def test_smoke_stages_pass_results_through_files(smoke_run):
    _, root, _ = smoke_run
    results = root / "results" / "smoke"
    manifest = json.loads((results / "traces" / "manifest.json").read_text())
    for run, methods in manifest["methods"].items():
        for method in methods:
            assert (results / "traces" / run / method / "summary.json").is_file()
    summary = json.loads((results / "analysis" / "summary.json").read_text())
    assert set(summary["runs"]) == set(manifest["methods"])
    models = json.loads((results / "models" / "manifest.json").read_text())["models"]
    assert any(m["final"] for m in models.values())


def test_smoke_prints_a_start_and_an_end_line_per_notebook(smoke_run):
    report, _, text = smoke_run
    for r in report.results:
        assert f"start   {r.name}" in text and f"ok      {r.name}" in text


def test_smoke_second_run_skips_every_notebook_in_seconds(smoke_run):
    """Issue 17, item 11: nothing changed, so nothing runs (the first run took minutes)."""
    import time

    _, root, _ = smoke_run
    manifest = root / "results" / "smoke" / "traces" / "manifest.json"
    os.utime(manifest)  # touched, same bytes: still unchanged
    lines = []
    with _smoke_env(root):
        start = time.perf_counter()
        again = reproduce.reproduce("smoke", echo=lines.append)
        seconds = time.perf_counter() - start
    text = "\n".join(lines)
    print(text, f"\nsecond run: {seconds:.1f} s")
    assert again.ok and [r.status for r in again.results] == ["unchanged"] * len(reproduce.NOTEBOOKS), text
    assert seconds < 30
    assert f"skipped as unchanged since their last run ({len(reproduce.NOTEBOOKS)}; --force reruns them)" in text


def test_smoke_a_changed_input_reruns_its_dependents_only(smoke_run):
    """Rewriting notebook 20's word counts (same data, other bytes) reruns what reads notebook 20's
    results, and nothing else: not 20 itself, not 10, 30, 35, 40 or the accuracy tables."""
    _, root, _ = smoke_run
    path = root / "results" / "smoke" / "analysis" / "low_tokens.json"
    before = path.read_bytes()
    path.write_text(json.dumps(json.loads(before), indent=3))
    assert path.read_bytes() != before
    lines = []
    with _smoke_env(root):
        again = reproduce.reproduce("smoke", echo=lines.append)
    text = "\n".join(lines)
    print(text)
    assert again.ok, text
    reran = sorted(r.name for r in again.results if r.status == "ok")
    assert reran == sorted(["tab2_dataset_stats", "tab3_compute_equivalent", "tab6_trace_lengths", "fig2_surprisal",
                            "fig3_perplexity", "fig5_fig7_excerpts", "fig6_wordcloud"]), text
    assert all(r.status == "unchanged" for r in again.results if r.name not in reran)
    assert "input file(s) changed" in text and "analysis/low_tokens.json" in text


def test_smoke_rerun_skips_finished_stages(smoke_run):
    """A second run of the expensive stages (executed again, not skipped by the driver) finds their stored
    configs and does not redo the work."""
    report, root, _ = smoke_run
    results = root / "results" / "smoke"
    samples = results / "traces" / "main" / "rsd-p1" / "samples.jsonl"
    before = samples.read_bytes()
    with _smoke_env(root):
        again = reproduce.reproduce("smoke", only=["10_generate_traces", "20_trace_analysis"], echo=lambda s: None,
                                    skip_unchanged=False)  # run them: their own stored configs make them skip the work
    assert again.ok
    assert samples.read_bytes() == before
    log = (results / "notebooks" / "20_trace_analysis.log").read_text()
    executed = (results / "notebooks" / "20_trace_analysis.ipynb").read_text()
    assert "skipping the scoring" in executed or "skipping the scoring" in log


def test_no_gpqa_text_in_smoke_outputs(smoke_run):
    """GPQA questions must never reach logs, executed notebooks, tables or figures."""
    from rsdlib.data import load_benchmark

    _, root, _ = smoke_run
    gpqa = load_benchmark("gpqa_diamond")  # the shipped zip, decrypted in memory
    snippets = [p.question[:60] for p in gpqa if len(p.question) >= 60]
    assert len(snippets) > 150
    texts = [p.read_text(errors="ignore") for p in root.rglob("*")
             if p.is_file() and p.suffix in (".md", ".csv", ".log", ".ipynb", ".json", ".jsonl")]
    leaked = [s for s in snippets if any(s in t for t in texts)]
    assert not leaked
