"""vLLM under torchrun ranks (issue 28): each rank's engine runs in a spawned process that sees only its
own GPU and none of the launch's variables. Checked on CPU with a fake ``vllm`` package (written here)
whose engine records what its process sees: environment, how it was started, its parent, whether
torch.distributed is initialised there, and which processes imported ``vllm`` at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rsdlib.distributed import LAUNCH_ENV, World
from rsdlib.vllmproc import engine_environment

ROOT = Path(__file__).resolve().parents[1]

FAKE_VLLM = '''
"""A fake vLLM: records what the engine's process sees; generates two tokens per request."""
import json, os, sys
import psutil

RECORD = os.environ["FAKE_VLLM_RECORD"]
open(os.path.join(RECORD, f"imported-{os.getpid()}"), "w").write(json.dumps(sys.orig_argv))


class SamplingParams:
    def __init__(self, **kw):
        self.kw = kw


class _Completion:
    def __init__(self, token_ids, finish_reason):
        self.token_ids, self.finish_reason = token_ids, finish_reason


class _Output:
    def __init__(self, completion):
        self.outputs = [completion]


class LLM:
    def __init__(self, **kwargs):
        import torch.distributed as dist

        parent = psutil.Process(os.getppid())
        keys = ["CUDA_VISIBLE_DEVICES", "VLLM_WORKER_MULTIPROC_METHOD", "PYTORCH_NVML_BASED_CUDA_CHECK",
                *os.environ.get("FAKE_VLLM_LAUNCH_KEYS", "").split(",")]
        record = {"pid": os.getpid(), "argv": sys.orig_argv, "kwargs": kwargs,
                  "env": {k: os.environ.get(k) for k in keys},
                  "dist_initialized": dist.is_available() and dist.is_initialized(),
                  "parent_rank": parent.environ().get("RANK"), "parent_pid": parent.pid}
        open(os.path.join(RECORD, f"engine-{os.getpid()}.json"), "w").write(json.dumps(record))

    def generate(self, requests, params, use_tqdm=False):
        out = []
        for p in params:
            ids = [40 + p.kw["seed"] % 5, p.kw["stop_token_ids"][0]][: p.kw["max_tokens"]]
            out.append(_Output(_Completion(ids, "stop" if len(ids) == 2 else "length")))
        return out
'''

EVAL_PARAMS = """
evaluation:
  benchmarks: [math500]
  samples: {math500: 2}
  limit: 2
  max_tokens: {math500: 8}
  temperature: 1.0
  backend: vllm
  dtype: float32
  device: cpu
  grade_timeout: 5.0
"""


def test_engine_environment_narrows_the_gpus_and_drops_the_launch():
    launch = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
              "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x", "CUDA_VISIBLE_DEVICES": "4,5", "HOME": "/h"}
    env = engine_environment(World(1, 2, 1), launch)
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env["HOME"] == "/h"
    assert not set(env) & set(LAUNCH_ENV)
    assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn" and env["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
    assert engine_environment(World(0, 2, 0), {"CUDA_VISIBLE_DEVICES": ""})["CUDA_VISIBLE_DEVICES"] == "0"
    one = engine_environment(World(), {"CUDA_VISIBLE_DEVICES": "2,3"})  # one process: tensor parallel stays possible
    assert one["CUDA_VISIBLE_DEVICES"] == "2,3"


@pytest.fixture
def fake_vllm(tmp_path):
    package = tmp_path / "fake" / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_VLLM)
    record = tmp_path / "record"
    record.mkdir()
    from rsdlib.standins import tiny_model_folder

    results = tmp_path / "results"
    tiny_model_folder("student", root=results)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), str(ROOT)]), "OMP_NUM_THREADS": "1",
           "RSDLIB_RESULTS": str(results), "TOKENIZERS_PARALLELISM": "false", "FAKE_VLLM_RECORD": str(record),
           "FAKE_VLLM_LAUNCH_KEYS": ",".join(LAUNCH_ENV), "CUDA_VISIBLE_DEVICES": "3,7"}
    params = tmp_path / "40_evaluate.yaml"
    params.write_text(EVAL_PARAMS)
    return env, record, params


def _engines(record):
    return [json.loads(p.read_text()) for p in sorted(record.glob("engine-*.json"))]


@pytest.mark.parametrize("ranks", [2, 1])
def test_each_rank_gets_a_spawned_engine_on_its_own_gpu_outside_the_group(fake_vllm, tmp_path, ranks):
    env, record, params = fake_vllm
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] if ranks > 1 else []
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, *launcher, "-m", "rsdlib.evaluate", "--params", params, "--model",
                           "tiny:student", "--out", out], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    engines = _engines(record)
    assert len(engines) == ranks
    # only the engines' processes imported vllm: no rank did
    assert sorted(int(p.name.split("-")[1]) for p in record.glob("imported-*")) == sorted(e["pid"] for e in engines)
    for e in engines:
        assert any("spawn_main" in a for a in e["argv"]), e["argv"]  # a spawned interpreter, not a fork
        assert not e["dist_initialized"]
        assert e["env"]["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn" and e["env"]["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
        assert all(e["env"][k] is None for k in LAUNCH_ENV), {k: e["env"][k] for k in LAUNCH_ENV if e["env"][k]}
        assert e["kwargs"]["model"] == e["kwargs"]["tokenizer"] and e["kwargs"]["dtype"] == "float32"
    if ranks == 1:
        assert engines[0]["env"]["CUDA_VISIBLE_DEVICES"] == "3,7" and engines[0]["parent_rank"] is None
    else:  # each rank's engine sees only that rank's GPU; its parent is the rank (which did join the launch)
        assert sorted((e["parent_rank"], e["env"]["CUDA_VISIBLE_DEVICES"]) for e in engines) == [("0", "3"), ("1", "7")]
    summary = json.loads((out / "math500" / "summary.json").read_text())
    assert summary["n_samples"] == 4 and summary["backend"] == "vllm" and len(summary["ranks"]) == ranks
    rows = [json.loads(line) for line in (out / "math500" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["n_tokens"] == 2 and r["finish_reason"] == "stop" for r in rows)
