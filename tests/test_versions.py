"""Version preflight (rsdlib.versions): its window is pyproject.toml's, it reports every version in one line,
and it refuses, one line each naming the version and the fix, what lies outside (fake version values)."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from rsdlib import cli, embedded, versions

REPO = Path(__file__).resolve().parents[1]
GOOD = {"torch": "2.13.0+cpu", "transformers": "5.25.0", "peft": "0.21.2", "accelerate": "1.16.0", "vllm": None}


def fake(cuda=None, driver=None, **packages) -> versions.Versions:
    return versions.Versions({**GOOD, **packages}, cuda_runtime=cuda, nvidia_driver=driver)


def test_window_is_pyproject_toml():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["vllm"]
    declared = {Requirement(line).name: Requirement(line).specifier for line in lines}
    for name, spec in versions.WINDOW.items():
        assert SpecifierSet(spec) == declared[name], name


def test_report_names_every_version_the_runtime_and_the_driver():
    line = versions.report(fake(cuda="13.0", driver="580.65.06", vllm="0.30.0"))
    assert line == ("versions: torch 2.13.0+cpu · transformers 5.25.0 · peft 0.21.2 · accelerate 1.16.0 · "
                    "vllm 0.30.0 · CUDA runtime 13.0 · NVIDIA driver 580.65.06")
    assert "vllm not installed" in versions.report(fake())
    assert "CUDA runtime none (CPU build) · NVIDIA driver none" in versions.report(fake())


@pytest.mark.parametrize("packages", [
    {}, {"transformers": "5.10.4"}, {"transformers": "5.39.2"}, {"torch": "2.13.0"}, {"torch": "2.13.0+cu130"},
    {"vllm": "0.30.0"}, {"peft": "0.13.0", "accelerate": "1.7.0"}, {"peft": None},
])
def test_versions_inside_the_window_pass(packages):
    assert versions.problems(fake(**packages)) == []


@pytest.mark.parametrize("name, version, window", [
    ("transformers", "5.10.2", ">=5.10.4"),  # below vLLM 0.30.0's floor
    ("transformers", "5.40.0", "<5.40"),  # past_key_values removed
    ("torch", "2.14.0", "==2.13.0"),
    ("torch", "2.12.1+cu128", "==2.13.0"),
    ("vllm", "0.33.0", "==0.30.0"),  # caps transformers, needs torch 2.14
    ("peft", "0.12.0", ">=0.13"),
    ("accelerate", "1.6.0", ">=1.7"),  # resumed training takes another data order
])
def test_a_version_outside_the_window_is_one_line_naming_it_and_the_fix(name, version, window):
    (line,) = versions.problems(fake(**{name: version}))
    assert "\n" not in line
    assert line.startswith(f"{name} {version} is outside rsdlib's window {name}")
    assert all(part in line for part in window.split(","))
    assert "pip install --require-hashes -r requirements/" in line


@pytest.mark.parametrize("cuda, driver, refused", [
    ("13.0", "575.57.08", True), ("13.0", "580.65.06", False), ("13.0", "590.1", False),
    ("12.8", "520.61.05", True), ("12.8", "570.1", False), (None, "550.1", False), ("13.0", None, False),
])
def test_the_driver_must_be_new_enough_for_the_cuda_runtime(cuda, driver, refused):
    found = versions.problems(fake(cuda=cuda, driver=driver, torch="2.13.0+cu130"))
    assert bool(found) == refused
    if refused:
        assert found == [f"NVIDIA driver {driver} is too old for torch 2.13.0+cu130's CUDA {cuda} runtime "
                         f"(needs driver {versions.MIN_DRIVER[int(cuda.split('.')[0])]} or newer): update the driver"]


def test_preflight_prints_first_then_exits_on_what_is_outside():
    out = io.StringIO()
    with pytest.raises(SystemExit) as info:
        versions.preflight(fake(transformers="5.5.0", vllm="0.31.0"), out=out)
    assert out.getvalue().startswith("versions: torch 2.13.0+cpu · transformers 5.5.0")
    lines = str(info.value.code).splitlines()
    assert [line.split(" is outside")[0] for line in lines] == ["transformers 5.5.0", "vllm 0.31.0"]
    assert versions.preflight(fake(), out=io.StringIO()).packages == GOOD


def test_this_environment_passes():
    """The suite runs on versions inside the window (the locks' and the floors')."""
    assert versions.problems(versions.collect()) == []


def test_driver_version_is_read_from_the_kernel_module_line(tmp_path):
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder)\n"
                    "GCC version:  gcc version 12.2.0\n")
    assert versions.nvidia_driver_version(proc) == "580.95.05"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n")
    assert versions.nvidia_driver_version(proc) == "550.54.15"
    assert versions.nvidia_driver_version(tmp_path / "absent") is None


def test_prepare_refuses_before_touching_the_models(monkeypatch, capsys):
    monkeypatch.setattr(versions, "collect", lambda: fake(transformers="5.9.0"))
    monkeypatch.setattr(embedded, "prepare", lambda *a, **k: pytest.fail("the models came before the version check"))
    with pytest.raises(SystemExit) as info:
        cli.main(["prepare"])
    assert capsys.readouterr().out.startswith("versions: torch 2.13.0+cpu · transformers 5.9.0")
    assert str(info.value.code).startswith("transformers 5.9.0 is outside rsdlib's window transformers")


def test_an_old_transformers_on_a_cuda_build_gets_a_note_not_a_refusal():
    slow = fake(cuda="13.0", driver="580.65.06", transformers="5.22.2")
    assert versions.problems(slow) == []
    (note,) = versions.notes(slow)
    assert note.startswith("note: transformers 5.22.2 < 5.23: ") and "repeat_kv" in note
    out = io.StringIO()
    versions.preflight(slow, out=out)
    assert out.getvalue().splitlines()[1] == note
    assert versions.notes(fake(transformers="5.22.2")) == []  # CPU build: no note
    assert versions.notes(fake(cuda="13.0", transformers="5.23.0")) == []
