"""Folders rsdlib reads and writes, each overridable by an environment variable.

- repository root: found from the package location (notebooks never rely on the working dir)
- `RSDLIB_CACHE`: cache for the embedded model pair (default: the per-user cache dir)
- `RSDLIB_DATA_DIR`: a local folder of benchmark files (MATH500, AIME, GPQA, s1K) used instead of the
  copies shipped in `rsdlib/benchmark_data` (or the hub)
- `RSDLIB_RESULTS`: where stages write their results (default: `<repo>/results`)
- `RSDLIB_FIGURES`: where notebooks write figures and tables (default: `<repo>/figures`)

`input_file` is how a notebook reads what an earlier notebook wrote: a missing file gives one line
naming the notebook (and the `rsdlib reproduce` call) that makes it, not a traceback from deep inside.

Parameter keys become folder names (methods, `extra_pairs`, `extra_models`, model keys): `check_name`
allows only simple names (letters, digits, `-`, `_`, `.`; no leading dot), and `results_path` /
`check_inside` refuse any path that does not resolve inside the run's results folder, before anything is
written or deleted (issue 32).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def cache_dir() -> Path:
    """Per-user cache folder for rsdlib (embedded models); `RSDLIB_CACHE` overrides it."""
    env = os.environ.get("RSDLIB_CACHE")
    if env:
        path = Path(env).expanduser()
    else:  # imported here: training (which reaches this module) runs in gpu_check's minimal environment
        import platformdirs

        path = Path(platformdirs.user_cache_dir("rsdlib"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path | None:
    """Local benchmark folder from `RSDLIB_DATA_DIR`, or None (then loaders use the shipped copies or the hub)."""
    env = os.environ.get("RSDLIB_DATA_DIR")
    return Path(env).expanduser().resolve() if env else None


def results_dir(profile: str | None = None) -> Path:
    """Results folder (`RSDLIB_RESULTS` or `<repo>/results`), per profile when one is given (a simple name)."""
    env = os.environ.get("RSDLIB_RESULTS")
    base = Path(env).expanduser() if env else REPO_ROOT / "results"
    return base / check_name(profile, "profile") if profile else base


SIMPLE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


class UnsafePathError(ValueError):
    """A name or path that would write or delete outside the run's results folder."""


def check_name(name, what: str) -> str:
    """``name`` when it is a simple folder name (letters, digits, ``-``, ``_``, ``.``; no leading dot), else
    UnsafePathError naming ``what`` (e.g. "methods key", "extra_models key"). Parameter keys that name a
    folder go through here: ``../x``, ``/abs``, ``a/b`` and ``.hidden`` are refused."""
    if not isinstance(name, str) or len(name) > 200 or not SIMPLE_NAME.fullmatch(name):
        raise UnsafePathError(f"{what} {name!r} is not a simple name: it names a folder under the results, so it may "
                              "hold only letters, digits, '-', '_' and '.', and must not start with '.'")
    return name


def check_inside(path: Path, root: Path, what: str = "") -> Path:
    """``path`` when it resolves (symlinks followed) inside ``root`` (or is ``root``), else UnsafePathError.

    Called before a library function writes or deletes under a path built from parameters."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafePathError(f"{what or 'path'} {path} resolves to {resolved}, outside {base}: refused "
                              "(nothing was written or deleted)")
    return Path(path)


def results_path(profile: str, *parts: str) -> Path:
    """``results/<profile>/<parts...>``, each part a simple name (``check_name``), resolving inside
    ``results/<profile>`` (``check_inside``): the one way stages build a folder from parameter keys."""
    root = results_dir(profile)
    path = root.joinpath(*(check_name(p, "folder name") for p in parts))
    return check_inside(path, root, "results path")


def params_source(profile: str, notebook: str) -> str:
    """Where ``notebook``'s parameters of ``profile`` come from, for error messages: the real file (in the
    profile folder ``rsdlib reproduce`` was given, ``RSDLIB_PROFILE_DIR``, or ``params/<profile>/``)."""
    folder = os.environ.get("RSDLIB_PROFILE_DIR")
    if folder and Path(folder).name == profile:
        path = Path(folder) / f"{notebook}.yaml"
    else:
        path = REPO_ROOT / "params" / profile / f"{notebook}.yaml"
    return f"{path}" if path.is_file() else f"notebook {notebook}'s parameters ({path} does not exist: its defaults)"


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
    folder = Path(env).expanduser() if env else REPO_ROOT / "figures"
    from rsdlib.store import explained_writes

    folder = folder / check_name(profile, "profile")
    with explained_writes(folder / "x", f"the figures and tables of profile {profile!r}"):  # names a read-only place
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
