"""Scaling of the trace job over processes: units/s with 1, 2, ... processes, side by side (issue 13).

Runs ``python -m rsdlib.traces`` (one process) and ``torchrun --standalone --nproc-per-node N -m
rsdlib.traces`` on the same job, each in a fresh folder, and prints one Markdown table: work units
(problem x sample) per second of the generation (from the first rank's start to the merge, the
summary's ``ranks``), the speed-up over one process, and each rank's units and wall seconds. Model
loading and interpreter start are outside the rate (printed as "end to end").

    python benchmarks/bench_scaling.py                        # tiny random pair, 1 and 2 processes, 1 thread each
    python benchmarks/bench_scaling.py --pair embedded        # the embedded 1.5B -> 0.5B pair
    python benchmarks/bench_scaling.py --nproc-per-node 1 8 --pair "simplescaling/s1.1-7B,Qwen/Qwen3-0.6B" \\
        --device auto --dtype auto --problems 64 --samples 16 --max-new-tokens 4096   # one GPU per process

On a CPU each process gets ``--threads`` torch threads (default 1); on a shared machine the numbers
depend on what else runs: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PARAMS = """\
teacher: {teacher!r}
student: {student!r}
dtype: {dtype}
device: {device}
benchmark: math500
n_problems: {problems}
pick: first
split: all
decoding: {{temperature: 0.7, top_p: 1.0, max_new_tokens: {max_new_tokens}}}
job: {{samples_per_problem: {samples}, prefix_tokens: 8, batch_size: {batch_size}, grade_timeout: 5.0}}
prompt: {{extra_instruction: ""}}
restrict_to_teacher_solved: false
methods:
  rsd-p1: {{mode: rsd, threshold: 0.01}}
  teacher: {{mode: teacher}}
"""


def run(nproc: int, params: Path, out: Path, env: dict) -> tuple[dict, float]:
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = [sys.executable, *launcher, "-m", "rsdlib.traces", "--params", str(params), "--method", "rsd-p1",
           "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{nproc} process(es) failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return json.loads((out / "summary.json").read_text()), elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc-per-node", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--pair", default="tiny", help="tiny | embedded | 'TEACHER,STUDENT' model specs")
    p.add_argument("--problems", type=int, default=8, help="MATH500 problems (file order)")
    p.add_argument("--samples", type=int, default=4, help="samples per problem")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4, help="decoder rows per process")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    p.add_argument("--device", default="cpu", help="cpu, or auto / cuda (each rank on cuda:LOCAL_RANK)")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    teacher, student = {"tiny": ("tiny:teacher", "tiny:student"), "embedded": ("embedded:teacher", "embedded:student")}.get(
        args.pair, tuple(args.pair.split(",")) if "," in args.pair else (None, None))
    if teacher is None:
        p.error("--pair: tiny, embedded, or TEACHER,STUDENT")
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
               "TOKENIZERS_PARALLELISM": "false", "RSDLIB_RESULTS": str(tmp / "results")}
        params = tmp / "10_generate_traces.yaml"
        params.write_text(PARAMS.format(teacher=teacher, student=student, dtype=args.dtype, device=args.device,
                                        problems=args.problems, samples=args.samples,
                                        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size))
        if teacher.startswith("tiny:"):  # made once, not by several processes at a time
            os.environ["RSDLIB_RESULTS"] = env["RSDLIB_RESULTS"]
            sys.path.insert(0, str(ROOT))
            from rsdlib.standins import tiny_model_folder

            for role in ("teacher", "student"):
                tiny_model_folder(role)
        units = args.problems * args.samples
        print(f"trace job: {args.problems} MATH500 problems x {args.samples} samples = {units} units, RSD at 1%, "
              f"pair {teacher} -> {student}, <= {args.max_new_tokens} new tokens, batch {args.batch_size} per process, "
              f"{args.threads} thread(s) per process, {args.device}; load average before {os.getloadavg()[0]:.2f}")
        rows, base = [], None
        for n in args.nproc_per_node:
            summary, elapsed = run(n, params, tmp / f"run{n}", env)
            ranks = summary["ranks"]
            wall = max(r["wall_seconds"] for r in ranks)
            rate = sum(r["units"] for r in ranks) / wall
            base = base or rate
            rows.append(f"| {n} | {sum(r['units'] for r in ranks)} | {wall:.1f} | {rate:.2f} | {rate / base:.2f}x | "
                        f"{' / '.join(str(r['units']) for r in ranks)} | {' / '.join(format(r['wall_seconds'], '.1f') for r in ranks)} "
                        f"| {elapsed:.1f} |")
        print("\n| processes | units | job wall (s) | units/s | speed-up | units per rank | wall per rank (s) | end to end (s) |")
        print("|---:|---:|---:|---:|---:|---|---|---:|")
        print("\n".join(rows))
        print(f"\nload average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
