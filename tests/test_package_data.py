"""The pinned benchmark copies travel with the package: a non-editable install finds and checks them.

Builds a wheel from a copy of the repository (setuptools' PEP 517 backend, no network), checks that
it carries every shipped file byte for byte and no plain GPQA file, installs it into a folder with
pip (``--no-deps --no-index``) and loads every shipped benchmark from there in a fresh interpreter
whose working directory is outside the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rsdlib.data import BENCHMARKS

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {name: spec.shipped.name for name, spec in BENCHMARKS.items() if spec.shipped is not None}
COUNTS = {"math500": 500, "aime24": 30, "aime25": 30, "gpqa_diamond": 198, "s1k": 1000}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "rsdlib", src / "rsdlib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = root / "dist"
    dist.mkdir()
    code = f"from setuptools import build_meta; print(build_meta.build_wheel({str(dist)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return dist / proc.stdout.strip().splitlines()[-1]


def test_every_benchmark_but_s1k11_has_a_shipped_copy():
    assert set(SHIPPED) == set(COUNTS)
    assert BENCHMARKS["s1k-1.1"].shipped is None  # the R1 traces stay hub-only


def test_the_wheel_carries_the_shipped_files(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        for file_name in SHIPPED.values():
            member = f"rsdlib/benchmark_data/{file_name}"
            assert member in names, f"{member} is not in {wheel.name}"
            assert whl.read(member) == (REPO / "rsdlib" / "benchmark_data" / file_name).read_bytes()
    data_files = sorted(n for n in names if n.startswith("rsdlib/benchmark_data/"))
    assert data_files == sorted(f"rsdlib/benchmark_data/{f}" for f in SHIPPED.values())  # nothing else, no plain GPQA
    assert not any("gpqa" in n and n.endswith((".jsonl", ".json", ".csv", ".parquet")) for n in names)


def test_a_non_editable_install_loads_every_shipped_benchmark(wheel, tmp_path):
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                          str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    code = (
        "import json, rsdlib, rsdlib.data as d\n"
        f"counts = {{n: len(d.load_benchmark(n)) for n in {sorted(COUNTS)!r}}}\n"
        "origins = {n: d.load_benchmark(n, limit=1)[0].meta['loaded_from'] for n in counts}\n"
        "print(json.dumps({'file': rsdlib.__file__, 'counts': counts, 'origins': origins}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RSDLIB_DATA_DIR", "PYTHONPATH")}
    env.update({"PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    proc = subprocess.run([sys.executable, "-c", code], cwd=run_dir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).resolve().is_relative_to(target.resolve()), out["file"]  # the installed copy, not the repo
    assert out["counts"] == COUNTS
    assert out["origins"] == {n: f"shipped:{BENCHMARKS[n].local_file}" for n in COUNTS}
