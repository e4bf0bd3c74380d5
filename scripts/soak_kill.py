"""Soak test of "nothing lost when interrupted" (issue 32, acceptance): random ``kill -9`` across
``rsdlib reproduce --profile smoke`` and ``rsdlib regrade``, each followed by a rerun, must end with tables
byte-identical to an uninterrupted run.

    nice -n 10 python scripts/soak_kill.py --work /tmp/soak --kills 20 --budget-min 50

1. Reference (skipped when ``--work``/ref already holds it): one uninterrupted ``reproduce --profile smoke``
   (tables A), then ``rsdlib regrade <eval> --answer-format boxed`` and ``reproduce`` again (tables B).
2. Soak, in a fresh results folder: start ``reproduce``, ``kill -9`` it and every process under it (the
   notebook kernels, torchrun ranks) at a random point inside a notebook drawn at random (the stage
   notebooks 00-40 three times as likely as a table or figure; the first round aims one kill at each stage
   notebook), start it again, ... until the pipeline ends
   on its own; its tables must equal A byte for byte. Then the same regrade, killed at a random point (a
   reader run in between must refuse the half-regraded folder if the kill left one), rerun to the end, and
   ``reproduce`` again: its tables must equal B. Rounds repeat from an empty folder until ``--kills`` kills
   were made (the last round is always finished) or the time budget is spent.

Prints one line per kill (which notebook was running) and a summary; exit status 0 when every comparison
held. Tables are ``figures/smoke/*.md`` and ``*.csv``; figures (PNG/PDF) are compared too, for the record.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
RSDLIB = [sys.executable, "-m", "rsdlib.cli", "--threads", "1"]


def env_for(root: Path) -> dict:
    return {**os.environ, "RSDLIB_RESULTS": str(root / "results"), "RSDLIB_FIGURES": str(root / "figures"),
            "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def start(args: list[str], root: Path, log: Path) -> subprocess.Popen:
    fh = open(log, "a")
    fh.write(f"\n### {' '.join(args)} at {time.strftime('%H:%M:%S')}\n")
    fh.flush()
    return subprocess.Popen([*RSDLIB, *args], cwd=REPO, env=env_for(root), stdout=fh, stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL the process and every descendant (kernels, torchrun ranks); returns how many were killed."""
    try:
        family = [psutil.Process(proc.pid)]
        family += family[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(family, timeout=10)
    return len(family)


def run(args: list[str], root: Path, log: Path, limit: float = 1800) -> int:
    proc = start(args, root, log)
    try:
        return proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        return -9


def running_notebook(log: Path) -> str:
    started = re.findall(r"\] start\s+(\S+)", log.read_text(errors="replace"))
    return started[-1] if started else "(before the first notebook)"


def wait_for_start(proc: subprocess.Popen, log: Path, targets: list[str]) -> str | None:
    """Wait until this run starts one of the ``targets`` (returned, and dropped from the list with the targets
    before it: a target already done is skipped by the run), or until the run ends (None)."""
    offset = log.stat().st_size
    while proc.poll() is None:
        started = re.findall(r"\] start\s+(\S+)", log.read_text(errors="replace")[offset:])
        if started and started[-1] in targets:
            del targets[:targets.index(started[-1]) + 1]
            return started[-1]
        time.sleep(0.5)
    return None


def notebook_seconds(log: Path) -> dict[str, float]:
    """{notebook: seconds} of the reference run, in run order."""
    return {m[0]: float(m[1]) for m in re.findall(r"\] ok\s+(\S+)\s+([\d.]+) s", log.read_text(errors="replace"))}


def tables(root: Path) -> dict[str, bytes]:
    folder = root / "figures" / "smoke"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*")) if p.suffix in (".md", ".csv")}


def figures(root: Path) -> dict[str, bytes]:
    folder = root / "figures" / "smoke"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*")) if p.suffix in (".png", ".pdf")}


def compare(what: str, ours: dict, ref: dict) -> bool:
    differ = sorted(k for k in set(ours) | set(ref) if ours.get(k) != ref.get(k))
    print(f"  {what}: {len(ref)} files, {'identical' if not differ else 'DIFFER: ' + ', '.join(differ)}", flush=True)
    return not differ


REGRADE = ["--answer-format", "boxed"]


def reference(ref: Path) -> tuple[dict, dict, dict, dict, float]:
    done = ref / "done.json"
    if done.is_file():
        info = json.loads(done.read_text())
        a = {k: bytes.fromhex(v) for k, v in info["a"].items()}
        b = {k: bytes.fromhex(v) for k, v in info["b"].items()}
        fa = {k: bytes.fromhex(v) for k, v in info["fa"].items()}
        fb = {k: bytes.fromhex(v) for k, v in info["fb"].items()}
        return a, b, fa, fb, info["regrade_seconds"]
    shutil.rmtree(ref, ignore_errors=True)
    ref.mkdir(parents=True)
    log = ref / "log.txt"
    t0 = time.time()
    assert run(["reproduce", "--profile", "smoke"], ref, log) == 0, f"reference run failed: {log}"
    print(f"reference: uninterrupted run {time.time() - t0:.0f} s", flush=True)
    a, fa = tables(ref), figures(ref)
    t0 = time.time()
    assert run(["regrade", str(ref / "results" / "smoke" / "eval"), *REGRADE], ref, log) == 0
    regrade_seconds = time.time() - t0
    assert run(["reproduce", "--profile", "smoke"], ref, log) == 0, f"reference rerun failed: {log}"
    b, fb = tables(ref), figures(ref)
    print(f"reference: regrade {regrade_seconds:.0f} s; {sum(a[k] != b.get(k) for k in a)} table file(s) changed by it",
          flush=True)
    done.write_text(json.dumps({"a": {k: v.hex() for k, v in a.items()}, "b": {k: v.hex() for k, v in b.items()},
                                "fa": {k: v.hex() for k, v in fa.items()}, "fb": {k: v.hex() for k, v in fb.items()},
                                "regrade_seconds": regrade_seconds}))
    return a, b, fa, fb, regrade_seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/rsdlib-soak"))
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--regrade-kills", type=int, default=3, help="kills per round spent on the regrade")
    parser.add_argument("--budget-min", type=float, default=50.0, help="no new round after this many minutes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    started = time.time()
    a, b, fa, fb, regrade_seconds = reference(args.work / "ref")
    durations = notebook_seconds(args.work / "ref" / "log.txt")
    soak = args.work / "soak"
    kills, ok, rounds, where = 0, True, 0, []
    while kills < args.kills and (time.time() - started) / 60 < args.budget_min:
        rounds += 1
        shutil.rmtree(soak, ignore_errors=True)
        soak.mkdir(parents=True)
        log = soak / f"round{rounds}.log"
        print(f"round {rounds} (kills so far {kills})", flush=True)
        # each kill lands inside a notebook drawn at random (the stages weigh more), at a random point of its
        # reference duration; targets in run order, so the pipeline moves on between kills
        n_pipeline = max(1, args.kills - kills - args.regrade_kills)
        # the first round aims one kill at every stage notebook (traces, analysis, training, multi-step,
        # evaluation), so no stage goes untested by chance; the rest are drawn
        covered = [n for n in durations if n[:2].isdigit()][:n_pipeline] if rounds == 1 else []
        weights = [3 if n[:2].isdigit() else 1 for n in durations]
        targets = sorted(covered + rng.choices(list(durations), weights=weights, k=n_pipeline - len(covered)),
                         key=list(durations).index)
        while True:  # reproduce, killed at random points, until it ends on its own
            proc = start(["reproduce", "--profile", "smoke"], soak, log)
            target = wait_for_start(proc, log, targets) if targets else None
            if target is not None:
                wait = rng.uniform(1, max(2.0, durations[target]))
                try:
                    rc = proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    stage = running_notebook(log)
                    n = kill_tree(proc)
                    kills += 1
                    where.append(stage)
                    print(f"  kill {kills:2d}: {wait:4.1f} s into {target}, during {stage} ({n} processes)", flush=True)
                    continue
            rc = proc.wait()
            if rc != 0:
                print(f"  reproduce FAILED after a kill (exit {rc}); see {log}", flush=True)
                return 1
            if targets:  # it ended before reaching the remaining targets (they were skipped as unchanged)
                print(f"  the run ended before {', '.join(targets)}: no kill there", flush=True)
            break
        ok &= compare("tables after the killed runs", tables(soak), a)
        compare("figures (for the record)", figures(soak), fa)
        eval_dir = soak / "results" / "smoke" / "eval"
        for _ in range(args.regrade_kills):  # the regrade, killed at random points
            proc = start(["regrade", str(eval_dir), *REGRADE], soak, log)
            wait = rng.uniform(0.5, max(1.0, regrade_seconds))
            try:
                proc.wait(timeout=wait)
                print(f"  regrade ended before its kill at {wait:.1f} s", flush=True)
                continue
            except subprocess.TimeoutExpired:
                kill_tree(proc)
            kills += 1
            where.append("rsdlib regrade")
            state = json.loads((eval_dir / "grading.json").read_text()).get("state") \
                if (eval_dir / "grading.json").is_file() else None
            line = f"  kill {kills:2d}: after {wait:4.1f} s, during rsdlib regrade (grading.json: {state})"
            if state == "regrading":  # a reader in between must refuse the half-regraded folder
                rc = run(["reproduce", "--profile", "smoke", "--only", "tab1_main_results"], soak, log)
                refused = rc != 0 and "MixedGradingError" in (soak / "results" / "smoke" / "notebooks" /
                                                             "tab1_main_results.log").read_text()
                line += f"; Table 1 in between {'refused it (MixedGradingError)' if refused else 'DID NOT refuse it'}"
                ok &= refused
            print(line, flush=True)
        assert run(["regrade", str(eval_dir), *REGRADE], soak, log) == 0, f"regrade rerun failed: {log}"
        assert run(["reproduce", "--profile", "smoke"], soak, log) == 0, f"reproduce after regrade failed: {log}"
        ok &= compare("tables after the killed regrades", tables(soak), b)
        compare("figures (for the record)", figures(soak), fb)
    stages = {s: where.count(s) for s in dict.fromkeys(where)}
    print(f"\n{kills} kills in {rounds} round(s), {(time.time() - started) / 60:.1f} min; where: {stages}")
    print("RESULT:", "every table byte-identical to the uninterrupted run" if ok else "TABLES DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
