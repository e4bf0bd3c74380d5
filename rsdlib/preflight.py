"""Preflight: before the first GPU-hour, check what a profile will need hours later (issue 30, point 7).

The paper profile first touches some of its inputs late: the gated Llama-3.2-1B-Instruct and the hub's
s1K-1.1 are first loaded after about 135 GPU-hours of trace generation. ``rsdlib preflight --profile
paper`` checks, in seconds and in this order, stopping at the first failure with ONE line:

1. every hub model and dataset the profile's parameter files name (``hub_ids``) is reachable with
   this machine's credentials (``huggingface_hub.auth_check``: unknown ids and gated repos whose
   licence was not accepted fail), or, with the hub offline (``HF_HUB_OFFLINE=1``), already cached;
2. the hub cache's disk has room for the weights not yet cached (safetensors sizes from the hub);
3. torch is a CUDA build and the NVIDIA driver supports its CUDA version (skipped with ``cuda=False``,
   e.g. on the dry run's CPU machine).

Stand-ins (``standin:``), the embedded pair, tiny models and local folders are not hub ids.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PROBE_TIMEOUT = 10.0  # seconds per hub request
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NOT_HUB = ("standin:", "embedded:", "tiny:")


class PreflightError(RuntimeError):
    """One check failed; the message is one line naming what and the fix."""


@dataclass
class HubIds:
    models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)


def _is_hub_id(value) -> bool:
    return (isinstance(value, str) and not value.startswith(_NOT_HUB) and bool(_HUB_ID.match(value))
            and not Path(value).expanduser().exists())


def hub_ids(profile: str, params_dir: Path | None = None) -> HubIds:
    """The hub models and datasets the profile's notebooks will load (parameter files and notebook defaults)."""
    from rsdlib.data import BENCHMARKS
    from rsdlib.reproduce import PARAMS_DIR, resolved_params

    folder = (params_dir or PARAMS_DIR) / profile
    if not folder.is_dir():
        raise PreflightError(f"preflight: no parameter folder {folder} (profiles: "
                             f"{', '.join(sorted(p.name for p in folder.parent.iterdir() if p.is_dir()))})")
    models: list[str] = []
    datasets: list[str] = []

    def add(out: list[str], value) -> None:
        if _is_hub_id(value) and value not in out:
            out.append(value)

    def hub_of(benchmark: str) -> list[str]:
        spec = BENCHMARKS.get(benchmark)
        return [spec.hub[0][0]] if spec else []

    for path in sorted(folder.glob("*.yaml")):
        params = resolved_params(profile, path.stem, params_dir)
        for key in ("teacher", "student"):
            add(models, params.get(key))
        for pair in (params.get("extra_pairs") or {}).values():
            add(models, pair.get("teacher"))
            add(models, pair.get("student"))
        for spec in (params.get("extra_models") or {}).values():
            add(models, spec)
        if params.get("reference") in ("s1k-1.1",):
            for d in hub_of("s1k-1.1"):
                add(datasets, d)
        if params.get("source") == "hub" and params.get("benchmark"):
            for d in hub_of(params["benchmark"]):
                add(datasets, d)
        evaluation = params.get("evaluation") or {}
        if evaluation.get("source") == "hub":
            for bench in evaluation.get("benchmarks") or ():
                for d in hub_of(bench):
                    add(datasets, d)
    return HubIds(models, datasets)


def _cached(repo_id: str, repo_type: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    probe = "config.json" if repo_type == "model" else "README.md"
    return isinstance(try_to_load_from_cache(repo_id, probe, repo_type=repo_type), str)


def check_hub(ids: HubIds, endpoint: str | None = None) -> int:
    """Raise PreflightError for the first id that cannot be used; return the bytes of weights to download.

    ``endpoint``: the hub's address (default: ``HF_ENDPOINT`` or huggingface.co).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub import errors as hub_errors

    from rsdlib.paths import hub_offline

    offline = hub_offline() or constants.HF_HUB_OFFLINE  # the environment, or as huggingface_hub read it
    api = HfApi(endpoint=endpoint)
    to_download = 0
    for repo_type, names in (("model", ids.models), ("dataset", ids.datasets)):
        for repo_id in names:
            what = f"{repo_type} {repo_id}"
            if offline:
                if not _cached(repo_id, repo_type):
                    raise PreflightError(f"preflight: {what} is not in the local hub cache and the hub is off "
                                         "(HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE set): unset it, or download it first")
                continue
            try:
                api.auth_check(repo_id, repo_type=repo_type)
                if repo_type == "model" and not _cached(repo_id, repo_type):
                    info = api.model_info(repo_id, files_metadata=True, timeout=PROBE_TIMEOUT)
                    to_download += sum(s.size or 0 for s in info.siblings or ()
                                       if s.rfilename.endswith(".safetensors"))
            except hub_errors.GatedRepoError:
                raise PreflightError(f"preflight: {what} is gated and this machine's token has no access: accept "
                                     f"its licence on huggingface.co/{repo_id} and log in (hf auth login)") from None
            except hub_errors.RepositoryNotFoundError:
                raise PreflightError(f"preflight: {what} does not exist on the hub or is private (check the "
                                     "spelling in the profile's parameter files, or log in)") from None
            except (hub_errors.HfHubHTTPError, OSError, hub_errors.OfflineModeIsEnabled) as err:
                if _cached(repo_id, repo_type):
                    continue
                first = (str(err).splitlines() or [""])[0][:160]
                raise PreflightError(f"preflight: {what}: the hub is unreachable ({type(err).__name__}: {first}) "
                                     "and it is not cached: check the network or HF_ENDPOINT") from None
            except Exception as err:  # httpx's connection errors are not OSErrors
                if not type(err).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
                    raise
                if _cached(repo_id, repo_type):
                    continue
                raise PreflightError(f"preflight: {what}: the hub is unreachable ({type(err).__name__}) and it "
                                     "is not cached: check the network or HF_ENDPOINT") from None
    return to_download


def check_disk(needed_bytes: int, folder: Path | None = None, *, margin: float = 1.1) -> int:
    """Raise PreflightError when the hub cache's disk has less than ``needed_bytes`` x ``margin`` free."""
    from huggingface_hub import constants

    folder = Path(folder or constants.HF_HUB_CACHE)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes * margin:
        raise PreflightError(f"preflight: {needed_bytes / 2**30:.1f} GiB of weights to download but {free / 2**30:.1f} "
                             f"GiB free under {probe}: free space or set HF_HOME to a larger disk")
    return free


def _driver_cuda() -> tuple[str | None, str | None]:
    """(driver version, highest CUDA version it supports) from nvidia-smi, or (None, None)."""
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    driver = re.search(r"Driver Version:\s*([\d.]+)", out)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", out)
    return (driver.group(1) if driver else None), (cuda.group(1) if cuda else None)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def check_cuda(torch_cuda: str | None = None, driver: tuple[str | None, str | None] | None = None,
               available: bool | None = None) -> str:
    """Raise PreflightError unless torch is a CUDA build whose CUDA version the driver supports."""
    import torch

    torch_cuda = torch.version.cuda if torch_cuda is None else torch_cuda
    if not torch_cuda:
        raise PreflightError(f"preflight: torch {torch.__version__} is a CPU build: install the CUDA build "
                             "(requirements/cuda.lock or the PyTorch index for your CUDA), or pass --no-cuda")
    driver_version, driver_cuda = driver if driver is not None else _driver_cuda()
    if driver_cuda is None:
        raise PreflightError(f"preflight: torch is built for CUDA {torch_cuda} but nvidia-smi found no NVIDIA "
                             "driver: install the driver, or pass --no-cuda")
    if _version_tuple(driver_cuda) < _version_tuple(torch_cuda):
        raise PreflightError(f"preflight: NVIDIA driver {driver_version} supports CUDA up to {driver_cuda}, torch is "
                             f"built for CUDA {torch_cuda}: update the driver, or install a torch build for "
                             f"CUDA <= {driver_cuda}")
    available = torch.cuda.is_available() if available is None else available
    if not available:
        raise PreflightError(f"preflight: driver {driver_version} (CUDA {driver_cuda}) and torch (CUDA {torch_cuda}) "
                             "match but torch sees no GPU: check CUDA_VISIBLE_DEVICES")
    return f"driver {driver_version} (CUDA <= {driver_cuda}), torch CUDA {torch_cuda}"


def preflight(profile: str, *, cuda: bool = True, params_dir: Path | None = None, echo=print) -> None:
    """Every check in order; raises PreflightError at the first failure (``rsdlib preflight`` prints it)."""
    ids = hub_ids(profile, params_dir)
    echo(f"hub models: {', '.join(ids.models) or 'none'}; hub datasets: {', '.join(ids.datasets) or 'none'}")
    needed = check_hub(ids)
    echo("hub: every id reachable with this machine's credentials (or cached)")
    free = check_disk(needed)
    echo(f"disk: {needed / 2**30:.1f} GiB of weights to download, {free / 2**30:.1f} GiB free")
    if cuda:
        echo(f"cuda: {check_cuda()}")
    echo(f"preflight {profile}: ok")
