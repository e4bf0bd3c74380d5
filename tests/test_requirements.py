"""Declared requirements: transformers' lower bound is the one rsdlib checks at import, and every package
rsdlib imports is declared."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import rsdlib

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirements(extras: bool = False) -> list[Requirement]:
    lines = list(PROJECT["dependencies"])
    if extras:
        lines += [line for extra in PROJECT["optional-dependencies"].values() for line in extra]
    return [Requirement(line) for line in lines]


def test_pyproject_transformers_bound_is_min_transformers():
    (req,) = [r for r in _requirements() if r.name == "transformers"]
    lower = [s.version for s in req.specifier if s.operator == ">="]
    assert lower == [rsdlib.MIN_TRANSFORMERS]
    assert Version(lower[0]) == Version(rsdlib.MIN_TRANSFORMERS)
    assert any(s.operator == "<" for s in req.specifier), "transformers keeps an upper bound"
    assert req == Requirement(rsdlib.TRANSFORMERS_REQUIREMENT)  # the one the import check tells users to install
    assert Version(metadata.version("transformers")) in req.specifier  # the tests run on a supported release


@pytest.mark.parametrize("old", ["4.57.6", "4.50.0", "4.99", "4", "5.0.0", "5.10.2", "5.9"])
def test_check_refuses_an_older_transformers_naming_both_versions(monkeypatch, old):
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: old if name == "transformers" else real(name))
    with pytest.raises(ImportError) as info:
        rsdlib.check_transformers()
    message = str(info.value)
    assert f"transformers {old} is installed" in message
    assert f"transformers >= {rsdlib.MIN_TRANSFORMERS}" in message
    assert f"pip install '{rsdlib.TRANSFORMERS_REQUIREMENT}'" in message


@pytest.mark.parametrize("ok", ["5.10.4", "5.11", "5.24.0", "5.25.0", "5.39.9", "5.11.0.dev0", "6"])
def test_check_accepts_supported_versions(ok):
    rsdlib.check_transformers(ok)


def test_import_fails_with_the_message_under_an_older_transformers():
    """The check runs when rsdlib is imported (a fresh process whose package metadata says 4.57.6)."""
    code = ("from importlib import metadata; real = metadata.version; "
            "metadata.version = lambda n: '4.57.6' if n == 'transformers' else real(n); import rsdlib")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode != 0
    assert "ImportError: rsdlib needs transformers >= " in out.stderr
    assert "transformers 4.57.6 is installed" in out.stderr


def _imported_top_modules(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "rsdlib"}


def test_every_package_rsdlib_imports_is_declared():
    declared = {canonicalize_name(r.name) for r in _requirements(extras=True)}
    providers = metadata.packages_distributions()
    undeclared = {}
    for module in sorted(_imported_top_modules(REPO / "rsdlib")):
        dists = {canonicalize_name(d) for d in providers.get(module, [module])}
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert not undeclared, f"imported by rsdlib/ but not declared in pyproject.toml: {undeclared}"
