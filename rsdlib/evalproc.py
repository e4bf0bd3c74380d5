"""One process per evaluated model (issue 12): vLLM does not give GPU memory back across engines in one process.

``evaluate_isolated(model, cfg, out_dir)`` runs ``rsdlib.evaluate.evaluate`` for one model in a fresh
Python process (``python -m rsdlib.evalproc``) and returns its summaries, so each model's vLLM engine
lives and dies with its own process and the next model starts on a clean GPU. A failure in the child
raises ``EvaluationProcessError`` with the tail of its output. ``isolate_models(cfg)`` says when the
evaluation notebook uses it: always for ``backend: vllm``; the HF backend (rsdlib's decoder, freed by
Python) runs in the notebook process unless ``RSDLIB_EVAL_ISOLATE=1``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from rsdlib import paths
from rsdlib.store import read_json, write_json_atomic


class EvaluationProcessError(RuntimeError):
    """The evaluation process of one model failed."""


def isolate_models(cfg) -> bool:
    """Evaluate each model in its own process? Always for vLLM; for HF only when RSDLIB_EVAL_ISOLATE=1."""
    return cfg.backend == "vllm" or os.environ.get("RSDLIB_EVAL_ISOLATE", "") in ("1", "true", "yes")


def evaluate_isolated(model: str | Path, cfg, out_dir: str | Path, *, force: bool = False,
                      base_model: str | None = None, timeout: float | None = None) -> dict:
    """``rsdlib.evaluate.evaluate(model, cfg, out_dir)`` in a child process; returns its {benchmark: summary}."""
    from rsdlib.config import config_to_dict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    request = out_dir / "eval_request.json"
    result = out_dir / "eval_result.json"
    result.unlink(missing_ok=True)
    write_json_atomic(request, {"model": str(model), "config": config_to_dict(cfg), "force": force,
                                "base_model": base_model})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(paths.REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, "-m", "rsdlib.evalproc", str(request), str(result)], env=env,
                          cwd=str(paths.REPO_ROOT), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not result.is_file():
        tail = (proc.stdout[-1500:] + "\n" + proc.stderr[-3000:]).strip()
        raise EvaluationProcessError(f"the evaluation process of {model} failed (exit {proc.returncode}):\n{tail}")
    return read_json(result)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsdlib.evalproc", description=__doc__.split("\n\n")[0])
    parser.add_argument("request", help="eval_request.json written by evaluate_isolated")
    parser.add_argument("result", help="where to write the summaries (JSON)")
    args = parser.parse_args(argv)
    from rsdlib.config import load_yaml_config
    from rsdlib.evaluate import EvalConfig, evaluate

    request = read_json(Path(args.request))
    cfg = load_yaml_config(EvalConfig, request["config"])
    summaries = evaluate(request["model"], cfg, Path(args.request).parent, force=request["force"],
                         base_model=request.get("base_model"), progress=False)
    write_json_atomic(Path(args.result), summaries, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
