"""Version preflight: the library versions rsdlib runs on, reported and checked before any work starts.

The window is pyproject.toml's (tests/test_versions.py keeps ``WINDOW`` equal to it): torch is pinned to
2.13.0 (the CPU build for CPUs, the CUDA 13 build on GPU machines: requirements/cpu.lock, cuda.lock);
transformers from 5.10.4 (vLLM 0.30.0's floor, the oldest release the fast suite passes on: ``make
test-floor``) to below 5.40 (which removes the ``past_key_values`` argument the engine passes); peft and
accelerate from their tested floors; vLLM, the optional evaluation backend, exactly 0.30.0 (the one release
built on torch 2.13.0 that does not cap transformers below 5.18-5.21). The CUDA torch build needs an NVIDIA
driver new enough for its CUDA runtime: 580 or newer for CUDA 13 (field notes, section 10).

``rsdlib prepare`` and ``benchmarks/gpu_check.py`` call :func:`preflight` first: one line of versions, then,
for each version outside the window, one line naming it and the fix, and exit. Nothing here imports torch
or transformers unless they are installed, and only the standard library and ``packaging`` (a dependency
of transformers) are needed, so the GPU check's minimal environment (torch + transformers) can run it.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from rsdlib import TRANSFORMERS_REQUIREMENT

# name -> the versions rsdlib runs on (pyproject.toml's specifiers; vllm: the `vllm` extra's pin)
WINDOW = {
    "torch": "==2.13.0",
    "transformers": TRANSFORMERS_REQUIREMENT.removeprefix("transformers"),
    "peft": ">=0.13",
    "accelerate": ">=1.7",
    "vllm": "==0.30.0",
}
# The oldest NVIDIA driver each CUDA major version's runtime runs on (NVIDIA's CUDA toolkit release notes).
MIN_DRIVER = {12: 525, 13: 580}
FAST_GQA_TRANSFORMERS = "5.23"  # the first release whose sdpa avoids repeat_kv under a padding mask (one-token steps)
FIX = {
    "vllm": "pip install --require-hashes -r requirements/cuda.lock (CUDA machines)",
    "default": "pip install --require-hashes -r requirements/cpu.lock (CPU) or requirements/cuda.lock (CUDA)",
}


@dataclass
class Versions:
    """What is installed: package versions (None: not installed), the CUDA runtime torch was built for and
    the NVIDIA driver (None: none)."""

    packages: dict[str, str | None]
    cuda_runtime: str | None = None  # torch.version.cuda, e.g. "13.0"
    nvidia_driver: str | None = None  # e.g. "580.65.06"


def installed_version(name: str) -> str | None:
    """The installed distribution's version from its metadata (the package is not imported)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def nvidia_driver_version(proc: Path = Path("/proc/driver/nvidia/version")) -> str | None:
    """The loaded NVIDIA kernel driver's version (Linux: read from ``proc``), None without one."""
    try:
        text = proc.read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module(?: for [^ ]+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def collect() -> Versions:
    """The versions of this environment; torch is imported only to read the CUDA runtime it was built for."""
    packages = {name: installed_version(name) for name in WINDOW}
    cuda_runtime = None
    if packages["torch"] is not None:
        import torch

        cuda_runtime = torch.version.cuda
    return Versions(packages, cuda_runtime, nvidia_driver_version())


def report(versions: Versions) -> str:
    """One line: every package's version, the CUDA runtime and the driver."""
    parts = [f"{name} {version or 'not installed'}" for name, version in versions.packages.items()]
    parts.append(f"CUDA runtime {versions.cuda_runtime or 'none (CPU build)'}")
    parts.append(f"NVIDIA driver {versions.nvidia_driver or 'none'}")
    return "versions: " + " · ".join(parts)


def problems(versions: Versions) -> list[str]:
    """One line per version outside the window, naming the version, the window and the fix."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    lines = []
    for name, version in versions.packages.items():
        if version is None:
            continue  # torch/transformers fail on import; peft and vllm are needed only where they are used
        spec = SpecifierSet(WINDOW[name])
        try:
            inside = spec.contains(Version(version), prereleases=True)
        except InvalidVersion:
            inside = False
        if not inside:
            fix = FIX.get(name, FIX["default"])
            lines.append(f"{name} {version} is outside rsdlib's window {name}{spec} (pyproject.toml): {fix}")
    if versions.cuda_runtime and versions.nvidia_driver:
        major = int(versions.cuda_runtime.split(".")[0])
        need = MIN_DRIVER.get(major)
        driver = int(versions.nvidia_driver.split(".")[0])
        if need is not None and driver < need:
            lines.append(f"NVIDIA driver {versions.nvidia_driver} is too old for torch {versions.packages['torch']}'s "
                         f"CUDA {versions.cuda_runtime} runtime (needs driver {need} or newer): update the driver")
    return lines


def notes(versions: Versions) -> list[str]:
    """Versions inside the window that are slow where they run: transformers before 5.23 on a CUDA build."""
    from packaging.version import Version

    transformers = versions.packages.get("transformers")
    if versions.cuda_runtime and transformers and Version(transformers) < Version(FAST_GQA_TRANSFORMERS):
        return [f"note: transformers {transformers} < {FAST_GQA_TRANSFORMERS}: its sdpa copies the KV heads under a "
                f"padding mask (repeat_kv); rsdlib's decoder steps avoid it (rsdlib.attention), padded prefills and "
                f"scoring do not; requirements/cuda.lock holds a newer one"]
    return []


def preflight(versions: Versions | None = None, out=None) -> Versions:
    """Print the versions line (and any note); exit with one line per version outside the window (SystemExit)."""
    versions = collect() if versions is None else versions
    for line in [report(versions), *notes(versions)]:
        print(line, file=out or sys.stdout, flush=True)
    found = problems(versions)
    if found:
        raise SystemExit("\n".join(found))
    return versions
