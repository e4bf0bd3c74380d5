"""Long stages split across processes, GPUs and machines: ranks, shares of the work, shards and their merge.

Trace generation (Algorithm 1 with rejection sampling, Sections 3.1-3.3) and evaluation (Section 4,
Appendix B) are made of independent WORK UNITS, one (problem, sample) each, whose seed depends only
on (base_seed, problem id, sample index). So they split across processes with the PyTorch
launcher, no scheduler of our own::

    torchrun --standalone --nproc-per-node 8 -m rsdlib.traces --params FILE --method rsd-p1 --out DIR
    srun torchrun --nnodes $SLURM_NNODES --nproc-per-node 8 --rdzv-backend c10d \\
         --rdzv-endpoint $HEAD:29500 -m rsdlib.traces ...

Each process reads its place from the launcher's environment (``World.from_env``: torchrun's
RANK / WORLD_SIZE / LOCAL_RANK, else Slurm's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID), loads one
model pair on its own device (``cuda:<LOCAL_RANK>``) and takes a deterministic share of the units
still to do (``assign``: interleaved, or longest-first when costs are known). Ranks coordinate only
through barriers of a gloo process group (MASTER_ADDR / MASTER_PORT, set by torchrun) and a
folder every rank can read (multi-node: a shared filesystem).

A run folder written by W ranks (``Shards``)::

    <run>/.lock                          held by rank 0 (one job per folder, as for a single process)
    <run>/samples.jsonl                  the merged file: the same name and records a single process writes
    <run>/shards/rank<R>-of-<W>/.lock    held by rank R: each rank locks only its shard
    <run>/shards/rank<R>-of-<W>/samples.jsonl   rank R's finished units, appended and fsynced

Every rank reads the merged file and every shard (its own repaired, the others only read), so a
rerun, with the same or another number of ranks, skips the units any earlier rank finished: a rank
killed mid-run loses only its unfinished units. When every rank is done, rank 0 merges the shards
into the merged file in a canonical order (the run's problem order, then sample index), dropping
repeats, and removes the shards. A single process (W = 1) appends to the merged file directly, as
before, and merges shards left by an interrupted multi-rank run.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator, Sequence

from rsdlib.store import read_json, read_jsonl_resumable, write_jsonl_atomic

SHARDS_DIR = "shards"
BARRIER_TIMEOUT = timedelta(days=7)  # ranks that finish early wait at the final barrier for the slowest


@dataclass(frozen=True)
class World:
    """This process's place in a launch: rank among world_size processes, local_rank on its machine."""

    rank: int = 0  # global rank, 0 .. world_size - 1
    world_size: int = 1  # processes in the launch
    local_rank: int = 0  # rank on this machine: the GPU it uses

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(f"inconsistent launch: rank {self.rank}, world size {self.world_size}, "
                             f"local rank {self.local_rank}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env: dict | None = None) -> "World":
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, else srun's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID."""
        env = os.environ if env is None else env
        for rank, size, local in (("RANK", "WORLD_SIZE", "LOCAL_RANK"),
                                  ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
            if env.get(rank) is not None and env.get(size) is not None:
                try:
                    return cls(int(env[rank]), int(env[size]), int(env.get(local, env[rank])))
                except ValueError as err:
                    raise ValueError(f"{rank}={env[rank]!r}, {size}={env[size]!r}, {local}={env.get(local)!r}: "
                                     f"not a launch ({err})") from None
        return cls()


def init(world: World) -> None:
    """Join the launch's gloo process group (barriers and small objects only); nothing for one process."""
    if world.world_size == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        return
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise RuntimeError(
            f"rank {world.rank} of {world.world_size}: {' and '.join(missing)} not set. torchrun sets them; under a "
            "bare srun export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1) and MASTER_PORT "
            "(any free port) first, or run torchrun inside srun.")
    dist.init_process_group("gloo", rank=world.rank, world_size=world.world_size, timeout=BARRIER_TIMEOUT)


def barrier(world: World) -> None:
    if world.world_size > 1:
        import torch.distributed as dist

        init(world)
        dist.barrier()


def all_gather(world: World, obj) -> list:
    """Every rank's ``obj`` (JSON-like), in rank order."""
    if world.world_size == 1:
        return [obj]
    import torch.distributed as dist

    init(world)
    out = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------------------------
# Devices a stage may launch its ranks on (issue 28)
# ----------------------------------------------------------------------------------------------
CPU_DEVICES_ENV = "RSDLIB_CPU_DEVICES"  # N: treat the CPU as N devices (gloo ranks), the multi-GPU paths on CPU
GPUS_ENV = "RSDLIB_GPUS"  # the GPUs a stage's ranks use (rsdlib reproduce sets it; the kernel itself sees one)
# what torchrun / accelerate / srun put in a rank's environment: a process that must not join the launch's
# process group (a rank's vLLM engine) starts without them
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
              "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "TORCHELASTIC_RUN_ID",
              "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE",
              "TORCHELASTIC_ERROR_FILE", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "ACCELERATE_USE_CPU",
              "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


def cpu_devices(env: dict | None = None) -> int:
    """``RSDLIB_CPU_DEVICES`` (0 when unset): how many CPU "devices" the stages treat the CPU as."""
    env = os.environ if env is None else env
    value = env.get(CPU_DEVICES_ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{CPU_DEVICES_ENV}={value!r}: expected a number of CPU devices >= 1 (or unset)")
    return int(value)


def visible_gpus(env: dict | None = None) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them: that variable's entries when it is
    set, else one per device torch counts (through NVML where it can, so no CUDA context is made)."""
    env = os.environ if env is None else env
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def stage_devices(env: dict | None = None) -> list[str]:
    """The devices a stage launches one rank on: ``["cpu"] * N`` under ``RSDLIB_CPU_DEVICES=N``, else the GPUs
    of ``RSDLIB_GPUS`` (set by ``rsdlib reproduce``: every GPU the driver sees), else ``visible_gpus``."""
    env = os.environ if env is None else env
    if cpu_devices(env):
        return ["cpu"] * cpu_devices(env)
    if env.get(GPUS_ENV) is not None:
        return [d.strip() for d in env[GPUS_ENV].split(",") if d.strip()]
    return visible_gpus(env)


def workers_for(workers: int, env: dict | None = None) -> int:
    """Processes for a stage's ``workers``: as given (a profile's cap), or 0 = one per device of
    ``stage_devices`` (1 without any)."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (0 = one per GPU), got {workers!r}")
    return workers or max(1, len(stage_devices(env)))


def rank_environment(env: dict | None = None) -> dict[str, str]:
    """The environment of a stage's launched ranks: every GPU of ``stage_devices`` visible (rank r takes
    ``cuda:<LOCAL_RANK>``), none under ``RSDLIB_CPU_DEVICES``, and CUDA availability checked through NVML
    (``PYTORCH_NVML_BASED_CUDA_CHECK=1``), so nothing makes a CUDA context before a rank picks its GPU."""
    env = dict(os.environ if env is None else env)
    devices = stage_devices(env)
    if cpu_devices(env):
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    return env


def launch_command(module: str, args: Sequence, workers: int) -> list[str]:
    """``torchrun --standalone --nproc-per-node <workers> -m <module> <args>`` (``python -m torch.distributed.run``)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
            "-m", module, *map(str, args)]


def run_ranks(module: str, args: Sequence, workers: int, *, echo: Callable[[str], None] = print) -> None:
    """Run ``module`` as ``workers`` torchrun ranks on this machine (``rank_environment``); raises RuntimeError
    with the end of the ranks' output when any fails."""
    import subprocess

    cmd = launch_command(module, args, workers)
    echo(f"launching: torchrun --standalone --nproc-per-node={workers} -m {module} {' '.join(map(str, args))}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=rank_environment())
    if proc.returncode != 0:
        raise RuntimeError(f"{module} under torchrun ({workers} processes) failed (exit {proc.returncode}):\n"
                           f"{(proc.stdout + proc.stderr)[-6000:]}")


def device_for(world: World, device: str) -> str:
    """The device this rank uses: ``cuda:<LOCAL_RANK>`` for "auto" / "cuda" when GPUs exist, else as asked."""
    if device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{world.local_rank % torch.cuda.device_count()}"
        return "cpu" if device == "auto" else device
    return device


def assign(n_units: int, world_size: int, rank: int, costs: Sequence[float] | None = None) -> list[int]:
    """Indices of the units rank ``rank`` does, deterministic from (n_units, world_size, costs).

    Without costs: interleaved (unit i goes to rank i mod W), so consecutive samples of one problem,
    whose lengths are alike, spread over the ranks. With costs: longest first, each unit to the rank
    with the least cost so far (ties: the lower rank), which keeps the ranks' totals within one unit.
    """
    if costs is None:
        return list(range(rank, n_units, world_size))
    if len(costs) != n_units:
        raise ValueError(f"assign: {len(costs)} costs for {n_units} units")
    load = [0.0] * world_size
    mine = []
    for i in sorted(range(n_units), key=lambda i: (-costs[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        load[r] += costs[i]
        if r == rank:
            mine.append(i)
    return sorted(mine)


def _key(record: dict) -> tuple[str, int]:
    return record["problem_id"], record["sample_index"]


class Shards:
    """One run folder written by the ranks of a launch (see the module docstring)."""

    def __init__(self, folder: str | Path, world: World | None = None):
        self.folder = Path(folder)
        self.world = world or World.from_env()
        self.started = time.perf_counter()

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    @property
    def shard_dir(self) -> Path:
        return self.folder / SHARDS_DIR / f"rank{self.world.rank}-of-{self.world.world_size}"

    def path(self, name: str) -> Path:
        """Where this rank appends ``name``: the merged file for one process, else its shard's copy."""
        return self.folder / name if self.world.world_size == 1 else self.shard_dir / name

    def shard_files(self, name: str) -> list[Path]:
        """``name`` in every shard of the folder, this launch's and earlier launches' alike."""
        return sorted((self.folder / SHARDS_DIR).glob(f"rank*-of-*/{name}"))

    @contextmanager
    def locked(self, run_lock: Callable[..., object]) -> Iterator["Shards"]:
        """Rank 0 locks the folder (one job per folder); with W > 1 every rank also locks its own shard.

        A rank that cannot lock fails at once (RunConflictError); the launcher then stops the others,
        which have written nothing: writes start only after ``take``'s barrier.
        """
        init(self.world)
        with ExitStack() as stack:
            if self.is_main:
                stack.enter_context(run_lock(self.folder))
            if self.world.world_size > 1:
                self.shard_dir.parent.mkdir(parents=True, exist_ok=True)
                stack.enter_context(run_lock(self.shard_dir, reason="two ranks of one launch would write one shard"))
            yield self

    def main_first(self, fn: Callable[[], object]):
        """Run ``fn`` on rank 0, then (after a barrier) on the others: claims and checks of config files."""
        if self.is_main:
            result = fn()
            barrier(self.world)
            return result
        barrier(self.world)
        return fn()

    def clear(self) -> None:
        """Delete every shard's records (``force``: the run is redone); rank 0 only, before ``main_first``.

        The shard folders stay: the other ranks already hold their locks in them.
        """
        if self.is_main:
            for path in (self.folder / SHARDS_DIR).glob("rank*-of-*/*.jsonl"):
                path.unlink(missing_ok=True)

    def read(self, name: str) -> list[dict]:
        """Records of the merged file and of every shard, each (problem_id, sample_index) once.

        Run before ``take``: each rank repairs (cuts a torn last line off) only the files it writes.
        """

        merged = self.folder / name
        records = read_jsonl_resumable(merged, repair=self.world.world_size == 1)
        for shard in self.shard_files(name):
            records += read_jsonl_resumable(shard, repair=shard == self.path(name))
        seen, out = set(), []
        for r in records:
            if _key(r) not in seen:
                seen.add(_key(r))
                out.append(r)
        return out

    def take(self, units: Sequence, costs: Sequence[float] | None = None) -> list:
        """This rank's share of ``units`` (the same list on every rank: computed from what all of them read).

        The barrier makes every rank read the folder before any rank writes to it.
        """
        barrier(self.world)
        mine = [units[i] for i in assign(len(units), self.world.world_size, self.world.rank, costs)]
        self.n_units = getattr(self, "n_units", 0) + len(mine)
        return mine

    def rank_stats(self) -> list[dict]:
        """Per rank: units done in this call and wall seconds (the summary's ``ranks``)."""
        mine = {"rank": self.world.rank, "units": getattr(self, "n_units", 0),
                "wall_seconds": round(time.perf_counter() - self.started, 1)}
        return all_gather(self.world, mine)

    def merge(self, name: str, order: Sequence[str] | None = None, extra: Sequence[str] = ()) -> list[dict] | None:
        """After every rank is done: rank 0 merges the shards of ``name`` into the merged file and returns
        all its records (None on the other ranks).

        Records are written in canonical order: ``order``'s problem ids (others after them, by id),
        then sample index; repeats are dropped. The merged file is rewritten (atomically) only when
        shards existed. ``extra`` names other per-rank files, deleted with the shards.
        """
        barrier(self.world)
        if not self.is_main:
            return None
        shards = self.shard_files(name)
        records = self.read(name)
        if shards:
            rank = {pid: i for i, pid in enumerate(order or ())}
            records.sort(key=lambda r: (rank.get(r["problem_id"], len(rank)), r["problem_id"], r["sample_index"]))
            write_jsonl_atomic(self.folder / name, records, tmp=self.folder / f".{name}.merging")
        for path in shards + [p for e in extra for p in self.shard_files(e)]:
            path.unlink(missing_ok=True)
        return records

    def result(self, paths: Sequence[Path]) -> list[dict]:
        """The JSON files rank 0 wrote after the merge, read by every rank once they exist."""
        barrier(self.world)
        return [read_json(Path(p)) for p in paths]
