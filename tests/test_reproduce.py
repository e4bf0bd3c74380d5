"""The papermill driver: parameter checking (unknown keys refused before anything runs), --only,
failure reports and dependency skipping, the CLI entry point, profile names and folders, one run
per profile (the results lock), and skipping notebooks whose inputs are unchanged."""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

import pytest

from rsdlib import data, reproduce, tables
from rsdlib.reproduce import NotebookSpec, ParameterError
from rsdlib.store import RunConflictError

REPO = Path(__file__).resolve().parents[1]


def copy_params(tmp_path: Path, profile: str = "smoke") -> Path:
    target = tmp_path / "params"
    shutil.copytree(REPO / "params" / profile, target / profile)
    return target


def test_unknown_parameter_is_refused_with_a_clear_message(tmp_path):
    params = copy_params(tmp_path)
    path = params / "smoke" / "fig3_perplexity.yaml"
    path.write_text(path.read_text() + "log_scael: true\n")  # a typo
    with pytest.raises(ParameterError) as err:
        reproduce.reproduce("smoke", params_dir=params, echo=lambda s: None)
    msg = str(err.value)
    assert "unknown parameter(s) log_scael" in msg and "fig3_perplexity" in msg and str(path) in msg
    assert "it declares: profile, run, methods, log_scale" in msg


def test_unknown_parameter_is_refused_before_any_notebook_runs(tmp_path, monkeypatch):
    params = copy_params(tmp_path)
    (params / "smoke" / "fig1_overview.yaml").write_text("rsd_method: rsd-p1\ncolour: red\n")
    ran = []
    monkeypatch.setattr(reproduce, "run_notebook", lambda *a, **k: ran.append(a))
    with pytest.raises(ParameterError, match="colour"):
        reproduce.reproduce("smoke", params_dir=params, echo=lambda s: None)
    assert ran == []  # the last notebook's typo stopped the run before the first notebook


def test_cli_reports_an_unknown_parameter_and_exits_2(tmp_path, monkeypatch, capsys):
    params = copy_params(tmp_path)
    (params / "smoke" / "tab2_dataset_stats.yaml").write_text("run: main\nbogus: 1\n")
    monkeypatch.setattr(reproduce, "PARAMS_DIR", params)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    reproduce.add_reproduce_parser(sub)
    args = parser.parse_args(["reproduce", "--profile", "smoke", "--only", "tab2"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "rsdlib reproduce: error:" in err and "unknown parameter(s) bogus" in err


def test_wrong_type_and_override_checks():
    declared = reproduce.notebook_parameters("fig3_perplexity")
    with pytest.raises(ParameterError, match=r"log_scale \(expected bool, got str"):
        reproduce.check_parameters("fig3_perplexity", {"log_scale": "yes"}, declared)
    reproduce.check_parameters("fig3_perplexity", {"log_scale": False, "methods": ["rsd-p1"]}, declared)
    with pytest.raises(ParameterError, match="unknown parameter"):
        reproduce.reproduce("smoke", only=["fig3"], overrides={"fig3_perplexity": {"nope": 1}}, echo=lambda s: None)


def test_parameters_cell_must_hold_only_annotated_literals():
    good = reproduce.parse_parameters('a: int = 3  # three\nb: dict = {"x": [1, 2]}  # nested\n')
    assert good["a"].default == 3 and good["a"].help == "three" and good["b"].default == {"x": [1, 2]}
    with pytest.raises(ParameterError, match="only `name: type = literal"):
        reproduce.parse_parameters("import os\n")
    with pytest.raises(ParameterError, match="not a literal"):
        reproduce.parse_parameters("a: int = len([1])\n")


def test_only_accepts_names_and_unique_prefixes():
    chosen = reproduce.resolve_only(["fig3", "20_trace_analysis"])
    assert [s.name for s in chosen] == ["20_trace_analysis", "fig3_perplexity"]
    with pytest.raises(ParameterError, match="ambiguous"):
        reproduce.resolve_only(["fig"])
    with pytest.raises(ParameterError, match="matches no notebook"):
        reproduce.resolve_only(["fig99"])


def test_unknown_profile_is_refused():
    with pytest.raises(ParameterError, match="unknown profile 'nope'"):
        reproduce.reproduce("nope", echo=lambda s: None)


NOTEBOOK = '''\
# %% [markdown]
# # {name}
# Reads nothing. Writes nothing. Time: instant.

# %%
import os

# %% tags=["parameters"]
profile: str = "x"  # profile
fail: bool = False  # raise on purpose

# %%
assert os.environ["MPLBACKEND"] == "Agg"
if fail:
    raise RuntimeError("failing on purpose")
print("ran", profile)
'''


def test_failures_are_reported_and_dependents_skipped(tmp_path, monkeypatch):
    nbs, params = tmp_path / "notebooks", tmp_path / "params" / "t"
    nbs.mkdir()
    params.mkdir(parents=True)
    for name, fail in (("a_fails", True), ("b_needs_a", False), ("c_independent", False)):
        (nbs / f"{name}.py").write_text(NOTEBOOK.format(name=name))
        (params / f"{name}.yaml").write_text(f"fail: {str(fail).lower()}\n")
    specs = (NotebookSpec("a_fails"), NotebookSpec("b_needs_a", depends=("a_fails",)), NotebookSpec("c_independent"))
    monkeypatch.setattr(reproduce, "NOTEBOOKS_DIR", nbs)
    monkeypatch.setattr(reproduce, "NOTEBOOKS", specs)
    monkeypatch.setenv("RSDLIB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("RSDLIB_FIGURES", str(tmp_path / "figures"))
    lines = []
    report = reproduce.reproduce("t", params_dir=tmp_path / "params", timeout=120, echo=lines.append)
    status = {r.name: r.status for r in report.results}
    assert status == {"a_fails": "failed", "b_needs_a": "skipped", "c_independent": "ok"}
    text = "\n".join(lines)
    assert "FAILED " in text and "RuntimeError: failing on purpose" in text and "cell In[" in text
    assert "needs a_fails, which did not succeed" in text
    assert str(tmp_path / "results" / "t" / "notebooks" / "a_fails.log") in text
    assert "ran t" in (tmp_path / "results" / "t" / "notebooks" / "c_independent.log").read_text()
    assert not report.ok


def test_accuracy_table_helpers(tmp_path, monkeypatch):
    from rsdlib import paths as rpaths

    monkeypatch.setattr(rpaths, "results_dir", lambda profile: tmp_path / profile)
    missing = r"notebook 40_evaluate makes it .*rsdlib reproduce --profile x --only 40_evaluate"
    with pytest.raises(FileNotFoundError, match=missing):
        tables.load_evaluation("x")
    (tmp_path / "x" / "eval").mkdir(parents=True)
    (tmp_path / "x" / "eval" / "summary.json").write_text('{"models": {"m1": {"A": 1.0, "B": 2.0}}}')
    evaluation = tables.load_evaluation("x")
    assert tables.accuracy_rows({"k1": "m1", "k2": "missing"}, evaluation, ["A", "B"]) == [
        {"key": "k1", "A": 1.0, "B": 2.0}]
    with pytest.raises(ValueError, match=r"unknown Table 9 keys \['nope'\]; known: \['base'\]"):
        tables.check_row_keys({"nope": "m1"}, [{"key": "base"}], "Table 9")
    tables.check_row_keys({"base": "m1"}, [{"key": "base"}], "Table 9")
    table = [{"key": "base", "Models": "Qwen3-0.6B"}, {"key": "other", "Models": "+ RSD"}]
    tables.name_our_student(table, "base", "/models/my-student")
    assert [r["Models"] for r in table] == ["Qwen3-0.6B (ours: my-student)", "+ RSD"]


def test_empty_problem_selection_is_refused(tmp_path, monkeypatch):
    import json

    (tmp_path / "math500.jsonl").write_text("".join(json.dumps(
        {"problem": f"What is {i}+{i}?", "answer": str(2 * i), "level": 1, "unique_id": f"test/a/{i}.json"}) + "\n"
        for i in range(4)))
    monkeypatch.setenv("RSDLIB_DATA_DIR", str(tmp_path))
    assert len(data.select_problems("math500", 0, split="trace", split_fraction=1.0)) == 4
    with pytest.raises(ValueError, match=r"no math500 problems selected \(split 'trace', split_fraction 0.0"):
        data.select_problems("math500", 0, split="trace", split_fraction=0.0)


def test_kernels_never_get_a_benchmark_folder_from_beside_the_repository(tmp_path, monkeypatch):
    """The driver used to point RSDLIB_DATA_DIR at a data folder beside the repository when there was one."""
    fake_repo = tmp_path / "repo"
    fake_repo.mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "math500.jsonl").write_text("{}\n")
    monkeypatch.setattr(reproduce.paths, "REPO_ROOT", fake_repo)
    monkeypatch.delenv("RSDLIB_DATA_DIR", raising=False)
    env = reproduce._environment("smoke")
    assert "RSDLIB_DATA_DIR" not in env
    assert not any(str(tmp_path / "shared") in v for v in env.values())


def test_no_project_file_names_a_folder_outside_the_repository():
    # split, so that this line is not a hit itself
    outside = ("../" + "shared", "shared/" + "data", "REPO_ROOT" + ".parent", "REPO" + ".parent")
    files = [REPO / "Makefile", REPO / ".ci" / "run", REPO / "README.md", REPO / "DATA.md",
             *REPO.glob("rsdlib/*.py"), *REPO.glob("notebooks/*.py"), *REPO.glob("params/*/*.yaml"),
             *REPO.glob("tests/*.py")]
    # the one named exception: the dry run's stand-in tokenizers (real tokenizer files for tests and the
    # paper-dry profile, RSDLIB_STANDIN_TOKENIZERS; rsdlib.standins), never data or the main job
    standin = re.compile(r"\.\./shared/tokenizers|REPO_ROOT\.parent / \"shared\" / \"tokenizers\"")
    hits = [f"{f.relative_to(REPO)}: {word}" for f in files for word in outside
            if word in standin.sub("", f.read_text())]
    assert not hits


# ----------------------------------------------------------------------------------------------
# Profiles are names under params/ or folders outside the repository (issue 17, item 9)
# ----------------------------------------------------------------------------------------------
def test_a_profile_path_into_the_repository_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RSDLIB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("RSDLIB_FIGURES", str(tmp_path / "figures"))
    ran = []
    monkeypatch.setattr(reproduce, "run_notebook", lambda *a, **k: ran.append(a))
    for cwd, profile in ((REPO / "notebooks", "../params/smoke"), (REPO, "params/smoke"), (REPO, "./smoke"),
                         (REPO / "params", "smoke/..")):
        monkeypatch.chdir(cwd)
        with pytest.raises(ParameterError, match="inside the repository") as err:
            reproduce.reproduce(profile, echo=lambda s: None)
        assert "a profile is a name under" in str(err.value) and "(demo, " in str(err.value)
    assert ran == [] and not (tmp_path / "params").exists() and not (tmp_path / "results").exists()
    with pytest.raises(ParameterError, match="unknown profile 'nope'"):
        reproduce.resolve_profile("nope")


def test_a_profile_folder_outside_the_repository_is_named_after_the_folder(tmp_path, monkeypatch):
    folder = tmp_path / "elsewhere" / "my-profile"
    shutil.copytree(REPO / "params" / "smoke", folder)
    resolved = reproduce.resolve_profile(str(folder))
    assert resolved == reproduce.Profile("my-profile", folder.resolve())
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert reproduce.resolve_profile("./my-profile").name == "my-profile"
    assert reproduce.load_params("my-profile", "fig3_perplexity", resolved.params_dir)["profile"] == "my-profile"
    clash = tmp_path / "smoke"
    clash.mkdir()
    with pytest.raises(ParameterError, match="has the name of the profile .*rename the folder"):
        reproduce.resolve_profile(str(clash))
    with pytest.raises(ParameterError, match="does not exist"):
        reproduce.resolve_profile(str(tmp_path / "missing"))


def test_a_yaml_file_that_names_no_notebook_is_refused(tmp_path):
    params = copy_params(tmp_path)
    (params / "smoke" / "fig3_perplexty.yaml").write_text("log_scale: true\n")
    with pytest.raises(ParameterError, match="fig3_perplexty.yaml name.s. no notebook"):
        reproduce.reproduce("smoke", params_dir=params, echo=lambda s: None)


# ----------------------------------------------------------------------------------------------
# One run per profile (item 10) and skipping unchanged notebooks (item 11), with a fake executor
# ----------------------------------------------------------------------------------------------
def fake_profile(tmp_path, monkeypatch):
    """Three notebooks: a_make writes traces/, b_use reads it and writes analysis/, c_other reads nothing.
    run_notebook is replaced by a function doing what each notebook would write, recording the calls."""
    nbs, params = tmp_path / "notebooks", tmp_path / "params" / "t"
    nbs.mkdir()
    params.mkdir(parents=True)
    for name in ("a_make", "b_use", "c_other"):
        (nbs / f"{name}.py").write_text(NOTEBOOK.format(name=name))
    (params / "b_use.yaml").write_text("fail: false\n")
    specs = (NotebookSpec("a_make"), NotebookSpec("b_use", depends=("a_make",), figures=("fig_b",)),
             NotebookSpec("c_other"))
    monkeypatch.setattr(reproduce, "NOTEBOOKS_DIR", nbs)
    monkeypatch.setattr(reproduce, "NOTEBOOKS", specs)
    monkeypatch.setattr(reproduce.paths, "MADE_BY", {"traces": "a_make", "analysis": "b_use"})
    monkeypatch.setenv("RSDLIB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("RSDLIB_FIGURES", str(tmp_path / "figures"))
    results, figures = tmp_path / "results" / "t", tmp_path / "figures" / "t"
    calls = []

    def fake_run(spec, profile, params, *, out_dir, timeout):
        calls.append(spec.name)
        if spec.name == "a_make":
            (results / "traces").mkdir(parents=True, exist_ok=True)
            (results / "traces" / "x.jsonl").write_text("1\n")
        if spec.name == "b_use":
            (results / "analysis").mkdir(parents=True, exist_ok=True)
            (results / "analysis" / "y.json").write_text((results / "traces" / "x.jsonl").read_text() * 2)
            for ext in ("pdf", "png"):
                (figures / f"fig_b.{ext}").write_text("figure")
        output = out_dir / f"{spec.name}.ipynb"
        output.write_text("{}")
        return reproduce.NotebookResult(spec.name, "ok", 0.5, output, out_dir / f"{spec.name}.log")

    monkeypatch.setattr(reproduce, "run_notebook", fake_run)

    def run(**kw):
        calls.clear()
        lines = []
        report = reproduce.reproduce("t", params_dir=tmp_path / "params", echo=lines.append, **kw)
        assert report.ok
        return list(calls), "\n".join(lines), report

    return run, results, figures


def test_unchanged_notebooks_are_skipped_and_a_changed_input_reruns_its_dependents_only(tmp_path, monkeypatch):
    run, results, figures = fake_profile(tmp_path, monkeypatch)
    calls, text, _ = run()
    assert calls == ["a_make", "b_use", "c_other"]
    assert "start   a_make" in text and "(no earlier successful run)" in text and "ok      a_make" in text
    calls, text, report = run()  # nothing changed: nothing runs, and the report says so
    assert calls == [] and [r.status for r in report.results] == ["unchanged"] * 3
    assert "skipped as unchanged since their last run (3; --force reruns them): a_make, b_use, c_other" in text
    os.utime(results / "traces" / "x.jsonl", ns=(1, 1))  # touched, same bytes: still unchanged
    assert run()[0] == []
    (results / "traces" / "x.jsonl").write_text("2\n")  # an input of b_use changed: b_use reruns, alone
    calls, text, _ = run()
    assert calls == ["b_use"] and "1 input file(s) changed (" in text and "traces/x.jsonl" in text
    (tmp_path / "params" / "t" / "b_use.yaml").write_text("fail: false\nprofile: t\n")  # same resolved values
    assert run()[0] == []
    (tmp_path / "params" / "t" / "c_other.yaml").write_text("fail: false\n")  # c_other's parameters changed
    calls, text, _ = run()
    assert calls == ["c_other"] and "its parameters changed" in text
    (figures / "fig_b.png").unlink()  # an output is missing: its notebook reruns
    calls, text, _ = run()
    assert calls == ["b_use"] and "its output" in text and "fig_b.png is missing" in text
    nb = reproduce.NOTEBOOKS_DIR / "c_other.py"
    nb.write_text(nb.read_text() + "\n# %%\nprint('more')\n")
    assert run()[0] == ["c_other"]
    assert run(force=True)[0] == ["a_make", "b_use", "c_other"]
    assert run(skip_unchanged=False)[0] == ["a_make", "b_use", "c_other"]
    assert run()[0] == []


def test_a_failed_notebook_is_not_skipped_next_time(tmp_path, monkeypatch):
    run, results, _ = fake_profile(tmp_path, monkeypatch)
    run()
    fake = reproduce.run_notebook
    monkeypatch.setattr(reproduce, "run_notebook", lambda spec, *a, **k: reproduce.NotebookResult(
        spec.name, "failed", 0.1, error="boom") if spec.name == "c_other" else fake(spec, *a, **k))
    (reproduce.NOTEBOOKS_DIR / "c_other.py").write_text(NOTEBOOK.format(name="c_other") + "# changed\n")
    report = reproduce.reproduce("t", params_dir=tmp_path / "params", echo=lambda s: None)
    assert [r.status for r in report.results] == ["unchanged", "unchanged", "failed"]
    monkeypatch.setattr(reproduce, "run_notebook", fake)
    calls, _, _ = run()
    assert calls == ["c_other"]


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from rsdlib.store import run_lock
with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_second_run_of_a_profile_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    run, results, _ = fake_profile(tmp_path, monkeypatch)
    run()
    executed = results / "notebooks" / "a_make.ipynb"
    executed.write_text('{"first run": true}')
    (tmp_path / "params" / "t" / "a_make.yaml").write_text("fail: false\n")  # would rerun a_make
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(results)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunConflictError, match=r"profile 't' is being reproduced by another run \(lock "
                                                       r".*\.lock is held\).*nothing was run or overwritten"):
            run()
        assert executed.read_text() == '{"first run": true}'
        monkeypatch.setattr(reproduce, "PARAMS_DIR", tmp_path / "params")
        parser = argparse.ArgumentParser()
        reproduce.add_reproduce_parser(parser.add_subparsers())
        args = parser.parse_args(["reproduce", "--profile", "t"])
        capsys.readouterr()
        assert args.func(args) == 2
        assert "rsdlib reproduce: error: profile 't' is being reproduced by another run" in capsys.readouterr().err
        assert executed.read_text() == '{"first run": true}'
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert run()[0] == ["a_make"]  # the lock is free again

