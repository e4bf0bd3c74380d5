"""The repository's install files agree with each other."""

import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for name, extra in project["optional-dependencies"].items():
        if name != "vllm":  # GPU-only, heavy: not in the conda env (environment.yml says how to add it)
            wanted |= set(extra)
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {d for d in pip_section if not d.startswith("-e")}
    assert listed == wanted
    assert "-e ." in pip_section


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test\n" in ci
    assert "make test" in readme


def test_ci_runs_without_a_benchmark_folder_and_without_the_hub():
    ci = (REPO / ".ci" / "run").read_text()
    assert "env -u RSDLIB_DATA_DIR HF_HUB_OFFLINE=1 make test\n" in ci
