"""Folders rsdlib reads and writes, each overridable by an environment variable.

- repository root: found from the package location (notebooks never rely on the working dir)
- `RSDLIB_CACHE`: cache for the embedded model pair (default: the per-user cache dir)
- `RSDLIB_DATA_DIR`: a local folder of benchmark files (MATH500, AIME, GPQA, s1K) used instead of the
  copies shipped in `rsdlib/benchmark_data` (or the hub)
- `RSDLIB_RESULTS`: where stages write their results (default: `<repo>/results`)
- `RSDLIB_FIGURES`: where notebooks write figures and tables (default: `<repo>/figures`)

`input_file` is how a notebook reads what an earlier notebook wrote: a missing file gives one line
naming the notebook (and the `rsdlib reproduce` call) that makes it, not a traceback from deep inside.
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


# Which notebook writes each folder under results/<profile> (the papermill driver's dependency
# bookkeeping and the missing-input messages both read this table).
MADE_BY: dict[str, str] = {
    "traces": "10_generate_traces",
    "analysis": "20_trace_analysis",
    "models": "30_train",
    "multistep": "35_multistep",
    "eval": "40_evaluate",
}


class MissingInputError(FileNotFoundError):
    """A notebook's input that an earlier notebook makes is not there yet."""

    def _render_traceback_(self) -> list[str]:  # IPython / Jupyter show this one line instead of a traceback
        return [f"{type(self).__name__}: {self}"]


def input_file(profile: str, *parts: str) -> Path:
    """``results/<profile>/<parts...>``, or a MissingInputError naming the notebook that makes it.

    ``input_file("demo", "traces", "manifest.json")`` -> the path when the file exists; otherwise the
    error says "... is missing: notebook 10_generate_traces makes it (run it first, or
    `rsdlib reproduce --profile demo --only 10_generate_traces`)".
    """
    path = results_dir(profile).joinpath(*parts)
    if path.exists():
        return path
    maker = MADE_BY.get(parts[0]) if parts else None
    if maker is None:
        raise MissingInputError(f"{path} is missing")
    raise MissingInputError(f"{path} is missing: notebook {maker} makes it (run it first, or "
                            f"`rsdlib reproduce --profile {profile} --only {maker}`)")


def figures_dir(profile: str) -> Path:
    """Figures and tables of a profile (created): `<repo>/figures/<profile>`, or `$RSDLIB_FIGURES/<profile>`."""
    env = os.environ.get("RSDLIB_FIGURES")
    folder = Path(env).expanduser() / profile if env else REPO_ROOT / "figures" / profile
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def hub_offline() -> bool:
    """True when the user asked transformers/huggingface_hub not to touch the network."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes")


def portable(path: str | Path, results: Path) -> str:
    """``path`` as a manifest stores it: relative to the profile's results folder ``results`` when inside it
    (a moved or copied results folder stays valid), else as it is; ``resolve_stored`` reads it back."""
    try:
        return Path(path).resolve().relative_to(Path(results).resolve()).as_posix()
    except ValueError:
        return str(path)


def resolve_stored(path: str | None, results: Path) -> str | None:
    """A path a manifest stored with ``portable``: relative ones are under ``results``."""
    if path is None or Path(path).is_absolute():
        return path
    return str(Path(results) / path)
