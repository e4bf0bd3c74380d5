"""The reproduction driver: runs a profile's notebooks with papermill, in dependency order (issue 7).

    rsdlib reproduce --profile demo                 # every notebook of the demo profile
    rsdlib reproduce --profile smoke --only 20_trace_analysis fig3_perplexity
    rsdlib reproduce --profile demo --force         # rerun every notebook and redo cached stages too
    rsdlib reproduce --profile ~/my-profile         # a folder of parameter files outside the repository
    rsdlib --threads 1 reproduce --profile demo     # 1 torch thread per kernel (a busy shared CPU)
    python -m rsdlib.reproduce --profile smoke      # the same without the rsdlib CLI

A profile is a name under ``params/`` (``smoke``, ``demo``, ``paper``) or a folder outside the
repository (its name names the results, ``results/<folder name>``); anything else, such as a path
into the repository's tracked tree, is refused. The demo profile is the notebooks' own defaults:
``params/demo/`` holds no parameter file, and a notebook without a file in a profile runs with its
defaults. One run per profile at a time: ``results/<profile>/.lock`` (``rsdlib.store.run_lock``)
is taken before anything runs, and a second run is refused by name.

For each notebook ``notebooks/<name>.py`` (jupytext percent format) the driver

1. reads its one ``parameters`` cell (``name: type = literal  # help`` lines) and the profile's
   ``params/<profile>/<name>.yaml``; a key the notebook does not declare, or a value of the wrong
   type, is refused before anything runs (papermill itself would only warn);
2. skips it when nothing it depends on changed since its last successful run: the content hashes
   of its source, its resolved parameters, rsdlib's code and its input files (every file under
   ``results/<profile>/<folder>`` written by the notebooks it reads, ``rsdlib.paths.MADE_BY``) are
   stored beside the executed copy (``<name>.run.json``); ``--force`` reruns it;
3. otherwise converts it to ``results/<profile>/notebooks/src/<name>.ipynb`` and executes it with
   ``papermill.execute_notebook`` (kernel ``python3``, absolute paths, working directory = the
   repository root, a per-cell timeout, ``MPLBACKEND=Agg``, quiet progress bars), writing the executed
   copy to ``results/<profile>/notebooks/<name>.ipynb`` and its output to ``<name>.log``;
4. prints one line when each notebook starts and one when it ends (with its wall time), skips
   notebooks whose dependency failed, and ends with a report of what failed where, which notebooks
   were skipped as unchanged, and a listing of the figures and tables written.

The profile name is passed to every notebook as its ``profile`` parameter; ``--force`` sets the
``force`` parameter of the notebooks that declare one (the expensive stages).

"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from rsdlib import paths
from rsdlib.store import file_sha256, read_json

NOTEBOOKS_DIR = paths.REPO_ROOT / "notebooks"
PARAMS_DIR = paths.REPO_ROOT / "params"
PROFILES = ("smoke", "demo", "paper", "paper-dry")
DEFAULT_TIMEOUT = {"smoke": 900, "demo": 7200, "paper": None, "paper-dry": 2400}  # seconds per cell (None: no limit)
# paper-dry: notebook 30 trains 23 stand-in students in one cell since Table 4 is whole (issue 29)


@dataclasses.dataclass(frozen=True)
class NotebookSpec:
    """One notebook of the reproduction: its name, what it needs first, the figure/table files it writes."""

    name: str  # notebooks/<name>.py
    depends: tuple[str, ...] = ()  # notebooks whose results it needs
    reads: tuple[str, ...] = ()  # notebooks whose results it also reads when they exist (not needed)
    figures: tuple[str, ...] = ()  # <figures>/<stem>.pdf + .png
    tables: tuple[str, ...] = ()  # <figures>/<stem>.md + .csv


# Run order (a notebook runs after everything it reads).
NOTEBOOKS: tuple[NotebookSpec, ...] = (
    NotebookSpec("00_walkthrough", figures=("walkthrough",), tables=("walkthrough",)),
    NotebookSpec("10_generate_traces"),
    NotebookSpec("20_trace_analysis", depends=("10_generate_traces",)),
    NotebookSpec("30_train", depends=("10_generate_traces",)),
    NotebookSpec("35_multistep", depends=("10_generate_traces",)),
    NotebookSpec("40_evaluate", depends=("30_train",), reads=("35_multistep",)),  # its models too, when present
    NotebookSpec("tab1_main_results", depends=("40_evaluate",), tables=("tab1_main_results",)),
    NotebookSpec("tab2_dataset_stats", depends=("20_trace_analysis",), tables=("tab2_dataset_stats",)),
    NotebookSpec("tab3_compute_equivalent", depends=("20_trace_analysis", "40_evaluate"),
                 tables=("tab3_compute_equivalent",)),
    NotebookSpec("tab4_cross_model", depends=("40_evaluate",), tables=("tab4_cross_model",)),
    NotebookSpec("tab5_multistep", depends=("40_evaluate",), reads=("35_multistep",), tables=("tab5_multistep",)),
    NotebookSpec("tab6_trace_lengths", depends=("20_trace_analysis",), tables=("tab6_trace_lengths",)),
    NotebookSpec("fig4_cross_model", depends=("40_evaluate",), figures=("fig4_cross_model",)),
    NotebookSpec("fig2_surprisal", depends=("20_trace_analysis",), figures=("fig2_surprisal",)),
    NotebookSpec("fig3_perplexity", depends=("20_trace_analysis",), figures=("fig3_perplexity",)),
    NotebookSpec("fig5_fig7_excerpts", depends=("20_trace_analysis",), figures=("fig5_excerpts", "fig7_comparison")),
    NotebookSpec("fig6_wordcloud", depends=("20_trace_analysis",), figures=("fig6_wordcloud",)),
    NotebookSpec("fig1_overview", reads=("40_evaluate",), figures=("fig1_overview",)),
)
BY_NAME = {nb.name: nb for nb in NOTEBOOKS}


class ParameterError(ValueError):
    """A parameter file (or override) that does not fit the notebook's parameters cell."""


# ----------------------------------------------------------------------------------------------
# Profiles
# ----------------------------------------------------------------------------------------------
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclasses.dataclass(frozen=True)
class Profile:
    """A profile: its name (``results/<name>``, ``figures/<name>``, the notebooks' ``profile``) and
    the folder of its parameter files."""

    name: str
    folder: Path

    @property
    def params_dir(self) -> Path:
        return self.folder.parent


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def resolve_profile(profile: str, params_dir: str | Path | None = None) -> Profile:
    """A profile name under ``params_dir`` (default ``params/``), or a folder outside the repository.

    A path that leads into the repository (``../params/smoke``, ``params/smoke``, ``notebooks``) is
    refused: its results would be written into the tracked tree. A folder outside the repository
    (or under the results folder) is a profile named after the folder, which must not also be the
    name of a profile under ``params/`` (both would write ``results/<name>``).
    """
    params_dir = Path(params_dir) if params_dir else PARAMS_DIR
    known = sorted(p.name for p in params_dir.iterdir() if p.is_dir()) if params_dir.is_dir() else []
    if PROFILE_NAME.fullmatch(profile):
        if not (params_dir / profile).is_dir():
            raise ParameterError(f"unknown profile {profile!r}: no folder {params_dir / profile} "
                                 f"(profiles: {', '.join(known)}; or give a folder outside the repository)")
        return Profile(profile, params_dir / profile)
    folder = Path(profile).expanduser().resolve()
    repo, results = paths.REPO_ROOT.resolve(), paths.results_dir().resolve()
    # under the results folder is outside the tracked tree only when the results folder is not the repository
    # or one of its parents (RSDLIB_RESULTS=/ would otherwise let rsdlib/ or notebooks/ pass as a profile)
    in_results = _inside(folder, results) and not _inside(repo, results)
    if _inside(folder, repo) and not in_results:
        raise ParameterError(
            f"--profile {profile!r} is a folder inside the repository ({folder}): a profile is a name under "
            f"{params_dir} ({', '.join(known)}) or a folder outside the repository's tracked tree")
    if not folder.is_dir():
        raise ParameterError(f"profile folder {folder} (from --profile {profile!r}) does not exist")
    if not PROFILE_NAME.fullmatch(folder.name):
        raise ParameterError(f"profile folder {folder}: its name {folder.name!r} is not a profile name "
                             "(letters, digits, '_', '-', '.')")
    if folder.name in known:
        raise ParameterError(f"profile folder {folder} has the name of the profile {params_dir / folder.name}: "
                             f"both would write results/{folder.name}; rename the folder")
    return Profile(folder.name, folder)


# ----------------------------------------------------------------------------------------------
# The parameters cell
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # the annotation as written: "str", "int", "float", "bool", "list", "dict", "str | None"
    default: Any
    help: str


def notebook_path(name: str) -> Path:
    return NOTEBOOKS_DIR / f"{name}.py"


def read_notebook(name_or_path: str | Path):
    """The notebook (nbformat) of ``notebooks/<name>.py`` or of a path."""
    import jupytext

    path = Path(name_or_path)
    if not path.suffix:
        path = notebook_path(str(name_or_path))
    return jupytext.read(path)


def parameters_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]


def parse_parameters(source: str, where: str = "parameters cell") -> dict[str, Parameter]:
    """Declared parameters of a parameters cell; refuses anything but ``name: type = literal  # help``."""
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ParameterError(f"{where}: not valid Python ({err})") from None
    lines = source.splitlines()
    out: dict[str, Parameter] = {}
    for node in tree.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None):
            raise ParameterError(
                f"{where}, line {node.lineno}: only `name: type = literal  # help` lines are allowed, got "
                f"{ast.get_source_segment(source, node)!r}"
            )
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            raise ParameterError(f"{where}, line {node.lineno}: the value of {node.target.id!r} is not a "
                                 "literal") from None
        line = lines[node.end_lineno - 1]
        help_text = line.split("#", 1)[1].strip() if "#" in line[node.value.end_col_offset:] else ""
        out[node.target.id] = Parameter(node.target.id, ast.unparse(node.annotation), default, help_text)
    return out


def notebook_parameters(name_or_path: str | Path) -> dict[str, Parameter]:
    """The parameters a notebook declares (exactly one cell tagged ``parameters`` is required)."""
    nb = read_notebook(name_or_path)
    cells = parameters_cells(nb)
    label = Path(name_or_path).stem
    if len(cells) != 1:
        raise ParameterError(f"notebook {label}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    return parse_parameters(cells[0].source, f"notebook {label}, parameters cell")


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "list": (list,), "dict": (dict,),
}


def _type_ok(annotation: str, value: Any) -> bool:
    options = [a.strip() for a in annotation.split("|")]
    for opt in options:
        base = opt.split("[", 1)[0]
        if base == "None" and value is None:
            return True
        allowed = _TYPES.get(base)
        if allowed is None:
            return True  # an annotation we do not check
        if isinstance(value, bool) and bool not in allowed:
            continue
        if isinstance(value, allowed):
            return True
    return False


def params_file(profile: str, name: str, params_dir: Path | None = None) -> Path:
    return (params_dir or PARAMS_DIR) / profile / f"{name}.yaml"


def load_params(profile: str, name: str, params_dir: Path | None = None, *, declared: dict | None = None) -> dict:
    """The checked parameters of notebook ``name`` under ``profile`` (``profile`` itself added).

    A profile without a file for the notebook runs it with the notebook's own defaults (the demo's).
    """

    path = params_file(profile, name, params_dir)
    values = read_params_yaml(path) if os.path.lexists(path) else {}
    if not isinstance(values, dict):
        raise ParameterError(f"{path}: expected a mapping of parameter names to values")
    declared = declared if declared is not None else notebook_parameters(name)
    check_parameters(name, values, declared, source=str(path))
    if "profile" in values and values["profile"] != profile:
        raise ParameterError(f"{path}: says profile {values['profile']!r} but is in the {profile!r} folder")
    if "profile" in declared:
        values["profile"] = profile
    return values


def read_params_yaml(path: Path):
    """The YAML of a parameter file that must exist as a regular file (a symbolic link to one is fine): a
    dangling link, ``/dev/null``, a folder or a pipe is refused (silently running the defaults would not be
    what the file asked for)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        if path.is_symlink() and not path.exists():
            why = f"a symbolic link to {os.readlink(path)}, which does not exist"
        elif not path.exists():
            why = "no such file"
        else:
            why = "a folder" if path.is_dir() else "not a regular file (a device, pipe or socket)"
        raise ParameterError(f"parameter file {path}: {why}; a parameter file must be a regular YAML file "
                             "(delete it to run the notebook's defaults)")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def resolved_params(profile: str, name: str, params_dir: Path | None = None) -> dict:
    """Every parameter of notebook ``name`` as ``profile`` runs it: the notebook's defaults (the demo
    profile), then what the profile's file changes."""
    declared = notebook_parameters(name)
    return {p.name: p.default for p in declared.values()} | load_params(profile, name, params_dir, declared=declared)


def check_parameters(name: str, values: dict, declared: dict[str, Parameter], source: str = "parameters") -> None:
    """Refuse keys the notebook does not declare and values of the wrong type, naming them all."""
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ParameterError(
            f"{source}: unknown parameter(s) {', '.join(unknown)} for notebook {name}; "
            f"it declares: {', '.join(declared)}"
        )
    wrong = [f"{k} (expected {declared[k].type}, got {type(v).__name__} {v!r})"
             for k, v in values.items() if not _type_ok(declared[k].type, v)]
    if wrong:
        raise ParameterError(f"{source}: wrong type for {'; '.join(wrong)} in notebook {name}")


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class NotebookResult:
    name: str
    # "ok" | "unchanged" (skipped: nothing it depends on changed) | "failed" | "skipped" (a dependency failed)
    status: str
    seconds: float = 0.0
    output: Path | None = None
    log: Path | None = None
    error: str = ""


@dataclasses.dataclass
class Report:
    profile: str
    results: list[NotebookResult]
    outputs: list[Path]  # figure and table files written during the run
    seconds: float

    @property
    def ok(self) -> bool:
        return all(r.status in ("ok", "unchanged") for r in self.results)

    def failed(self) -> list[NotebookResult]:
        return [r for r in self.results if r.status not in ("ok", "unchanged")]

    def unchanged(self) -> list[NotebookResult]:
        return [r for r in self.results if r.status == "unchanged"]


def resolve_only(only: Sequence[str] | None) -> list[NotebookSpec]:
    """Notebooks to run: all, or those named (exact names, or unique prefixes such as ``20`` or ``fig3``)."""
    if not only:
        return list(NOTEBOOKS)
    chosen = []
    for item in only:
        item = Path(item).stem
        matches = [nb for nb in NOTEBOOKS if nb.name == item] or [nb for nb in NOTEBOOKS if nb.name.startswith(item)]
        if len(matches) != 1:
            known = ", ".join(nb.name for nb in NOTEBOOKS)
            what = "matches no notebook" if not matches else f"is ambiguous ({', '.join(m.name for m in matches)})"
            raise ParameterError(f"--only {item!r} {what}; notebooks: {known}")
        chosen.append(matches[0])
    return [nb for nb in NOTEBOOKS if nb in chosen]  # always in dependency order


def _environment(profile: str, threads: int | None = None, folder: Path | None = None) -> dict[str, str]:
    """Environment of the kernels: headless matplotlib, quiet progress bars, and ``threads`` CPU threads
    for torch (OMP/MKL) when given. Benchmarks come from the copies shipped in rsdlib (or the user's
    own ``RSDLIB_DATA_DIR``, inherited): nothing outside the repository is looked for."""
    env = {"MPLBACKEND": "Agg", "TQDM_MININTERVAL": "60", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore::DeprecationWarning", "RSDLIB_PROFILE": profile}
    if folder is not None:  # error messages name the real parameter file (rsdlib.paths.params_source)
        env["RSDLIB_PROFILE_DIR"] = str(Path(folder).resolve())
    if threads:
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    # Every GPU goes to the stages' ranks (issue 28): RSDLIB_GPUS lists them, and a stage with `workers: 0`
    # launches one torchrun rank per GPU (rsdlib.distributed.run_ranks: traces, DDP training, evaluation).
    # The kernel itself sees ONE GPU, so work done in the kernel (workers: 1) never goes DataParallel.
    # RSDLIB_KERNEL_GPUS overrides the kernel's (e.g. "0,1" for a vLLM tensor-parallel evaluation in the kernel);
    # RSDLIB_CPU_DEVICES=N (inherited) makes the stages treat the CPU as N devices (gloo ranks).
    gpus = _driver_gpus()
    env["RSDLIB_GPUS"] = ",".join(gpus)
    env["CUDA_VISIBLE_DEVICES"] = os.environ.get("RSDLIB_KERNEL_GPUS") or (gpus[0] if gpus else "0")
    return env


def _devices_line() -> str:
    """The run log's line on devices (in the kernels' environment): what `workers: 0` stages launch on."""
    from rsdlib.distributed import GPUS_ENV, cpu_devices, stage_devices

    devices = stage_devices()
    if cpu_devices():
        return (f"devices: the CPU as {len(devices)} device(s) (RSDLIB_CPU_DEVICES): workers: 0 stages run that many "
                "gloo ranks")
    if devices:
        return (f"devices: {len(devices)} GPU(s) ({os.environ.get(GPUS_ENV)}): workers: 0 stages run one rank per GPU; "
                f"kernels see GPU {os.environ.get('CUDA_VISIBLE_DEVICES')}")
    return "devices: no GPU: stages run in one process unless their workers says otherwise"


def _driver_gpus() -> list[str]:
    """The GPUs the driver sees (CUDA_VISIBLE_DEVICES's entries, else every device torch counts)."""
    from rsdlib.distributed import visible_gpus

    return visible_gpus()


def stage_world_size(params: dict) -> int | None:
    """Processes a stage notebook with ``workers`` runs on (None for a notebook without it), in the kernels'
    environment: what the driver prints and records for it."""
    if "workers" not in params:
        return None
    from rsdlib.distributed import workers_for

    return workers_for(params["workers"])


def _error_summary(err: BaseException) -> str:
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename is not None:
        where = getattr(err, "exec_count", None)
        cell = f"cell In[{where}]" if where is not None else f"cell #{getattr(err, 'cell_index', '?')}"
        return f"{cell}: {ename}: {str(evalue).splitlines()[0][:400] if evalue else ''}"
    return f"{type(err).__name__}: {str(err).splitlines()[0][:400] if str(err) else ''}"


def run_notebook(spec: NotebookSpec, profile: str, params: dict, *, out_dir: Path,
                 timeout: float | None) -> NotebookResult:
    """Convert and execute one notebook; never raises for a failure inside the notebook."""
    import jupytext
    import papermill as pm

    src_dir = out_dir / "src"
    src_dir.mkdir(parents=True, exist_ok=True)
    src = src_dir / f"{spec.name}.ipynb"
    output = out_dir / f"{spec.name}.ipynb"
    log = out_dir / f"{spec.name}.log"
    nb = jupytext.read(notebook_path(spec.name))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    jupytext.write(nb, src, fmt="ipynb")
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(f"# {spec.name} (profile {profile}) parameters: {params}\n")
        fh.flush()
        try:
            pm.execute_notebook(
                str(src.resolve()), str(output.resolve()), parameters=params, kernel_name="python3",
                cwd=str(paths.REPO_ROOT), execution_timeout=timeout, progress_bar=False, log_output=False,
                stdout_file=fh, stderr_file=fh, request_save_on_cell_execute=True,
            )
        except Exception as err:  # PapermillExecutionError, timeouts, dead kernels
            fh.write("\n" + "".join(traceback.format_exception_only(type(err), err)))
            return NotebookResult(spec.name, "failed", time.perf_counter() - start, output, log, _error_summary(err))
    return NotebookResult(spec.name, "ok", time.perf_counter() - start, output, log)


# ----------------------------------------------------------------------------------------------
# Skipping unchanged notebooks (content hashes of everything a notebook's outputs depend on)
# ----------------------------------------------------------------------------------------------
RUN_RECORD = "{name}.run.json"  # beside the executed copy: what it was made from and what it wrote


class _FileHashes:
    """Content hashes of files, computed once per (size, mtime) so that unchanged multi-GB model files
    are not read again on every run (a touched file with the same bytes keeps its hash)."""

    def __init__(self, base: Path):
        self.base = base
        self.known: dict[str, dict] = {}  # relative path -> {"size", "mtime_ns", "sha256"}

    def remember(self, entries: dict[str, dict]) -> None:
        self.known.update(entries)

    def entry(self, path: Path) -> dict:
        rel = path.relative_to(self.base).as_posix()
        st = path.stat()
        old = self.known.get(rel)
        if old and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
            return old
        entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}
        self.known[rel] = entry
        return entry

    def tree(self, folders: Sequence[Path]) -> dict[str, dict]:
        """Every file under ``folders`` except hidden ones (locks) and ``*.tmp`` (unfinished writes)."""
        out = {}
        for folder in folders:
            if not folder.exists():
                continue
            files = [folder] if folder.is_file() else sorted(folder.rglob("*"))
            for path in files:
                rel = path.relative_to(folder) if path != folder else Path(path.name)
                if path.is_file() and not any(part.startswith(".") for part in rel.parts) and path.suffix != ".tmp":
                    out[path.relative_to(self.base).as_posix()] = self.entry(path)
        return out


def _upstream(spec: NotebookSpec) -> list[str]:
    """Every notebook whose results ``spec`` reads, directly or through another notebook."""
    by_name = {nb.name: nb for nb in NOTEBOOKS}
    seen: list[str] = []
    todo = [*spec.depends, *spec.reads]
    while todo:
        name = todo.pop()
        if name not in seen and name in by_name:
            seen.append(name)
            todo += [*by_name[name].depends, *by_name[name].reads]
    return sorted(seen)


def _written_folders(names: Sequence[str], results: Path) -> list[Path]:
    return [results / folder for folder, maker in paths.MADE_BY.items() if maker in names]


def _library_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(paths.PACKAGE_DIR.rglob("*.py")):
        h.update(path.relative_to(paths.PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _data_folders(params: Any) -> list[str]:
    """Local benchmark folders a notebook may read: ``RSDLIB_DATA_DIR`` and any ``data_dir`` / ``local_dir``
    value among its parameters (``evaluation.data_dir`` of notebook 40)."""
    found = [os.environ["RSDLIB_DATA_DIR"]] if os.environ.get("RSDLIB_DATA_DIR") else []
    todo = [params]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            found += [v for k, v in item.items() if k in ("data_dir", "local_dir") and isinstance(v, str) and v]
            todo += list(item.values())
        elif isinstance(item, list):
            todo += item
    return found


def _data_files(params: dict) -> dict[str, str]:
    """{path: sha256} of every benchmark file (``rsdlib.data.BENCHMARKS`` names) in the local data folders a
    notebook may read: editing a problem in one reruns the notebooks, not only renaming the folder."""
    from rsdlib.data import BENCHMARKS

    out = {}
    for folder in _data_folders(params):
        for spec in BENCHMARKS.values():
            path = Path(folder).expanduser() / spec.local_file if spec.local_file else None
            if path is not None and path.is_file():
                st = path.stat()
                seen = (str(path), st.st_size, st.st_mtime_ns)  # each file read once per (size, mtime)
                if seen not in _DATA_SHAS:
                    _DATA_SHAS[seen] = file_sha256(path)
                out[str(path)] = _DATA_SHAS[seen]
    return out


_DATA_SHAS: dict[tuple, str] = {}


def _run_key(spec: NotebookSpec, params: dict, library: str, inputs: dict[str, dict]) -> dict:
    """What a notebook's outputs depend on, as content hashes (``force`` is not part of it)."""
    kept = {k: v for k, v in params.items() if k != "force"}
    return {
        "notebook": hashlib.sha256(notebook_path(spec.name).read_bytes()).hexdigest(),
        "parameters": hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest(),
        "library": library,
        "data_dir": os.environ.get("RSDLIB_DATA_DIR", ""),
        "data_files": _data_files(params),
        "inputs": {rel: e["sha256"] for rel, e in inputs.items()},
    }


def _why_rerun(record: dict | None, key: dict, output: Path, outputs: dict[str, dict], base: Path) -> str:
    """Why a notebook must run ("" when it can be skipped)."""
    if record is None:
        return "no earlier successful run"
    old = record.get("key", {})
    if old.get("notebook") != key["notebook"]:
        return "the notebook changed"
    if old.get("parameters") != key["parameters"]:
        return "its parameters changed"
    if old.get("library") != key["library"]:
        return "rsdlib's code changed"
    if old.get("data_dir") != key["data_dir"]:
        return "RSDLIB_DATA_DIR changed"
    if old.get("data_files", {}) != key["data_files"]:
        changed = sorted(set(old.get("data_files", {}).items()) ^ set(key["data_files"].items()))
        names = sorted({Path(path).name for path, _ in changed})
        return f"{len(names)} local benchmark file(s) changed ({', '.join(names)})"
    if old.get("inputs") != key["inputs"]:
        changed = sorted(set(old.get("inputs", {}).items()) ^ set(key["inputs"].items()))
        names = sorted({rel for rel, _ in changed})
        return f"{len(names)} input file(s) changed ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
    missing = [rel for rel in outputs if not (base / rel).is_file()]
    if missing or not output.is_file():
        return f"its output {missing[0] if missing else output.name} is missing"
    return ""


def _read_record(path: Path) -> dict | None:
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_record(path: Path, record: dict) -> None:
    from rsdlib.store import write_json_atomic

    write_json_atomic(path, record, indent=1)


def _echo(line: str) -> None:
    print(line, flush=True)


def reproduce(
    profile: str = "demo",
    *,
    only: Sequence[str] | None = None,
    force: bool = False,
    timeout: float | None | str = "default",
    params_dir: str | Path | None = None,
    overrides: dict[str, dict] | None = None,
    threads: int | None = None,
    echo: Callable[[str], None] = _echo,
    skip_unchanged: bool = True,
) -> Report:
    """Run the notebooks of ``profile`` (all, or ``only``) and return a report (see the module docstring).

    ``profile``: a name under ``params_dir`` (default ``params/``) or a folder outside the repository.
    ``force``: rerun every notebook and set ``force: true`` in those that declare it.
    ``skip_unchanged``: skip a notebook whose source, parameters, rsdlib code and input files are those
    of its last successful run (False runs it anyway, without forcing its stages to redo their work).

    ``overrides``: {notebook: {parameter: value}} applied over the parameter files (checked the same way).
    ``threads``: torch CPU threads in the kernels (on a CPU shared with other busy processes, 1 thread
    decodes several times faster than 2). All parameter files are checked before the first notebook starts.
    """
    resolved = resolve_profile(profile, params_dir)
    profile, params_dir = resolved.name, resolved.params_dir
    names = [nb.name for nb in NOTEBOOKS]
    stray = sorted(p.name for p in resolved.folder.glob("*.yaml") if p.stem not in names)
    if stray:
        raise ParameterError(f"{resolved.folder}: {', '.join(stray)} name(s) no notebook; "
                             f"notebooks: {', '.join(names)}")
    specs = resolve_only(only)
    timeout = DEFAULT_TIMEOUT.get(profile, 3600) if timeout == "default" else timeout
    # check everything first: a typo in the last file must not cost the first hour
    plan = []
    for spec in specs:
        declared = notebook_parameters(spec.name)
        params = load_params(profile, spec.name, params_dir, declared=declared)
        extra = dict((overrides or {}).get(spec.name, {}))
        check_parameters(spec.name, extra, declared, source="override")
        params.update(extra)
        if force and "force" in declared:
            params["force"] = True
        plan.append((spec, params))
    unknown_overrides = sorted(set(overrides or {}) - {s.name for s in specs})
    if unknown_overrides:
        raise ParameterError(f"overrides for notebooks not run: {', '.join(unknown_overrides)}")

    from rsdlib.store import RunConflictError, check_writable, run_lock

    results_root = paths.results_dir(profile)
    check_writable(results_root, f"the results of profile {profile!r} (notebook outputs, run records, the lock)")
    with contextlib.ExitStack() as stack:
        try:  # one run per profile: refused here, before anything runs or is overwritten
            stack.enter_context(run_lock(results_root))
        except RunConflictError:
            raise RunConflictError(
                f"profile {profile!r} is being reproduced by another run (lock {results_root / '.lock'} is held): "
                "wait for it to finish or stop it; nothing was run or overwritten") from None
        return _run_plan(plan, profile, results_root, paths.figures_dir(profile), force=force,
                         skip_unchanged=skip_unchanged, timeout=timeout, threads=threads, echo=echo,
                         folder=resolved.folder)


def _run_plan(plan, profile: str, results_root: Path, fig_dir: Path, *, force: bool, skip_unchanged: bool,
              timeout: float | None, threads: int | None, echo: Callable[[str], None],
              folder: Path | None = None) -> Report:
    """Run (or skip as unchanged) each planned notebook, in order, while the profile's lock is held."""
    out_dir = results_root / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    env = _environment(profile, threads, folder)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    before = {p: p.stat().st_mtime_ns for p in fig_dir.glob("*") if p.is_file()}
    echo(f"rsdlib reproduce: profile {profile}, {len(plan)} notebook(s); executed copies and logs in {out_dir}")
    if os.environ.get("RSDLIB_DATA_DIR"):
        echo(f"  benchmark files from {os.environ['RSDLIB_DATA_DIR']} (RSDLIB_DATA_DIR), where present")
    if threads:
        echo(f"  {threads} CPU thread(s) per kernel")
    echo(f"  {_devices_line()}")
    started = time.perf_counter()
    results: list[NotebookResult] = []
    broken: set[str] = set()
    library = _library_hash()
    # results files and figures are named relative to their common parent (``results/`` and ``figures/``
    # may live elsewhere through RSDLIB_RESULTS / RSDLIB_FIGURES)
    base = Path(os.path.commonpath([results_root.resolve(), fig_dir.resolve()]))
    hashes = _FileHashes(base)
    records = {spec.name: _read_record(out_dir / RUN_RECORD.format(name=spec.name)) for spec in NOTEBOOKS}
    for record in records.values():
        hashes.remember((record or {}).get("outputs", {}))
    try:
        for i, (spec, params) in enumerate(plan, 1):
            tag = f"[{i:2d}/{len(plan)}]"
            output, log = out_dir / f"{spec.name}.ipynb", out_dir / f"{spec.name}.log"
            record_path = out_dir / RUN_RECORD.format(name=spec.name)
            blocked = [d for d in spec.depends if d in broken]
            if blocked:
                res = NotebookResult(spec.name, "skipped", error=f"needs {', '.join(blocked)}, which did not succeed")
                broken.add(spec.name)
                echo(f"{tag} skipped {spec.name:<22} {res.error}")
                results.append(res)
                continue
            own = [fig_dir / f"{stem}.{ext}" for stem in spec.figures for ext in ("pdf", "png")]
            own += [fig_dir / f"{stem}.{ext}" for stem in spec.tables for ext in ("md", "csv")]
            own_folders = _written_folders([spec.name], results_root) + own
            key = _run_key(spec, params, library, hashes.tree(_written_folders(_upstream(spec), results_root)))
            record = records.get(spec.name)
            why = "--force" if force else "" if not skip_unchanged else _why_rerun(
                record, key, output, (record or {}).get("outputs", {}), base)
            if skip_unchanged and not force and not why:
                res = NotebookResult(spec.name, "unchanged", record.get("seconds", 0.0), output, log)
                echo(f"{tag} unchanged {spec.name:<20} skipped: nothing it depends on changed since its run of "
                     f"{record.get('finished', '?')} ({res.seconds:.1f} s then)")
                results.append(res)
                continue
            record_path.unlink(missing_ok=True)  # a run that dies midway leaves no record to trust
            world = stage_world_size(params)
            ranks = f"  [{world} process{'es' if world > 1 else ''}]" if world else ""
            echo(f"{tag} start   {spec.name:<22} {time.strftime('%H:%M:%S')}{ranks}" + (f"  ({why})" if why else ""))
            res = run_notebook(spec, profile, params, out_dir=out_dir, timeout=timeout)
            results.append(res)
            if res.status == "ok":
                _write_record(record_path, {
                    "notebook": spec.name, "profile": profile, "key": key, "seconds": round(res.seconds, 1),
                    "world_size": world,
                    "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "outputs": hashes.tree(own_folders)})
            else:
                broken.add(spec.name)
            mark = {"ok": "ok     ", "failed": "FAILED "}[res.status]
            line = f"{tag} {mark} {spec.name:<22} {res.seconds:7.1f} s"
            if res.error:
                line += f"  {res.error}"
            echo(line)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    written = sorted(p for p in fig_dir.glob("*") if p.is_file() and before.get(p) != p.stat().st_mtime_ns
                     and not p.name.startswith("."))
    report = Report(profile, results, written, time.perf_counter() - started)
    echo(format_report(report))
    return report


def format_report(report: Report) -> str:
    """The closing text: failures (where, log), then the figures and tables written."""
    n_ok = sum(r.status in ("ok", "unchanged") for r in report.results)
    lines = [f"\nprofile {report.profile}: {n_ok}/{len(report.results)} notebooks ok in {report.seconds:.0f} s"]
    if report.unchanged():
        lines.append(f"skipped as unchanged since their last run ({len(report.unchanged())}; --force reruns them): "
                     + ", ".join(r.name for r in report.unchanged()))
    for r in report.failed():
        lines.append(f"  {r.status.upper()}: {r.name}: {r.error}")
        if r.status == "failed":
            lines.append(f"      executed notebook: {r.output}\n      log: {r.log}")
    if report.outputs:
        lines.append(f"figures and tables written ({len(report.outputs)} files):")
        lines += [f"  {p}" for p in report.outputs]
    else:
        lines.append("no figure or table files were written")
    return "\n".join(lines)


def expected_outputs(specs: Sequence[NotebookSpec] = NOTEBOOKS) -> list[str]:
    """File names the given notebooks write into the figures folder."""
    names = []
    for spec in specs:
        names += [f"{s}.{ext}" for s in spec.figures for ext in ("pdf", "png")]
        names += [f"{s}.{ext}" for s in spec.tables for ext in ("md", "csv")]
    return names


# ----------------------------------------------------------------------------------------------
# Command line (wired into `rsdlib` by rsdlib.cli: add_reproduce_parser / main_reproduce)
# ----------------------------------------------------------------------------------------------
def add_reproduce_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``reproduce`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser("reproduce", help="run a profile's notebooks (tables and figures) with papermill",
                              description="Run the reproduction notebooks of one profile in dependency order.")
    _add_arguments(p)
    p.set_defaults(func=main_reproduce)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="demo",
                   help="a profile under params/: smoke, demo (default), paper or paper-dry (the paper profile with "
                        "stand-in models); or a folder of parameter files outside the repository")
    p.add_argument("--only", nargs="+", metavar="NB", help="run only these notebooks (names or unique prefixes)")
    p.add_argument("--force", action="store_true",
                   help="rerun unchanged notebooks and redo cached stages (sets force: true where declared)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per notebook cell (default: smoke 900, demo 7200, paper none; 0 = none)")
    p.add_argument("--list", action="store_true", help="list the notebooks and their parameters, run nothing")


def main_reproduce(args: argparse.Namespace) -> int:
    """Entry point of ``rsdlib reproduce``: 0 when every notebook succeeded (or was unchanged), 1 otherwise,
    2 when refused before anything ran (bad parameters or profile, another run of the profile)."""
    from rsdlib.store import RunConflictError

    if getattr(args, "list", False):
        for spec in NOTEBOOKS:
            params = notebook_parameters(spec.name)
            print(f"{spec.name}: " + ", ".join(f"{p.name}: {p.type}" for p in params.values()))
        return 0
    timeout: float | None | str = "default" if args.timeout is None else (args.timeout or None)
    threads = getattr(args, "threads", None)  # `rsdlib --threads N reproduce ...` (global option of rsdlib.cli)
    try:
        report = reproduce(args.profile, only=args.only, force=args.force, timeout=timeout, threads=threads)
    except (ParameterError, RunConflictError) as err:
        print(f"rsdlib reproduce: error: {err}", file=sys.stderr)
        return 2
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsdlib.reproduce", description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per notebook kernel")
    return main_reproduce(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
