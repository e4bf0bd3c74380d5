"""Folders rsdlib reads and writes, each overridable by an environment variable.

- repository root: found from the package location (notebooks never rely on the working dir)
- `RSDLIB_CACHE`: cache for the embedded model pair (default: the per-user cache dir)
- `RSDLIB_DATA_DIR`: a local folder of benchmark files (MATH500, AIME, GPQA, s1K) used instead of the
  copies shipped in `rsdlib/benchmark_data` (or the hub)
- `RSDLIB_RESULTS`: where stages write their results (default: `<repo>/results`)
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def cache_dir() -> Path:
    """Per-user cache folder for rsdlib (embedded models); `RSDLIB_CACHE` overrides it."""
    env = os.environ.get("RSDLIB_CACHE")
    path = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("rsdlib"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path | None:
    """Local benchmark folder from `RSDLIB_DATA_DIR`, or None (then loaders use the shipped copies or the hub)."""
    env = os.environ.get("RSDLIB_DATA_DIR")
    return Path(env).expanduser().resolve() if env else None


def results_dir(profile: str | None = None) -> Path:
    """Results folder (`RSDLIB_RESULTS` or `<repo>/results`), per profile when one is given."""
    env = os.environ.get("RSDLIB_RESULTS")
    base = Path(env).expanduser() if env else REPO_ROOT / "results"
    return base / profile if profile else base


def figures_dir(profile: str) -> Path:
    """Committed figures and tables of a profile: `<repo>/figures/<profile>`."""
    return REPO_ROOT / "figures" / profile


def hub_offline() -> bool:
    """True when the user asked transformers/huggingface_hub not to touch the network."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes")
