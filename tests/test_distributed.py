"""Stages split across processes (issue 13): ranks from the launcher's environment, shares of the
work, and torchrun runs on the tiny models (gloo, CPU) whose merged files equal a single process's,
after a rank is killed too. Training under torchrun keeps the effective batch."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rsdlib.distributed import World, assign

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("wall_seconds_this_call", "ranks")  # the only fields allowed to differ between runs


def test_world_from_torchrun_and_slurm_environments():
    assert World.from_env({}) == World(0, 1, 0)
    assert World.from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == World(3, 8, 1)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5"}
    assert World.from_env(slurm) == World(5, 16, 5)
    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    assert World.from_env({**slurm, **torchrun}) == World(0, 2, 0)  # torchrun wins
    with pytest.raises(ValueError, match="inconsistent launch"):
        World.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    assert World(1, 2).is_main is False and World().is_main


def test_assign_partitions_the_units_interleaved_or_by_cost():
    for world in (1, 2, 3, 8):
        shares = [assign(10, world, r) for r in range(world)]
        assert sorted(i for s in shares for i in s) == list(range(10))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert assign(7, 2, 0) == [0, 2, 4, 6] and assign(7, 2, 1) == [1, 3, 5]
    costs = [9, 1, 1, 1, 8, 1, 1, 1, 7, 2]  # long units first, each to the least-loaded rank
    shares = [assign(10, 3, r, costs) for r in range(3)]
    assert sorted(i for s in shares for i in s) == list(range(10))
    loads = [sum(costs[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(costs)
    assert loads == [sum(costs[i] for i in assign(10, 3, r, costs)) for r in range(3)]
    assert max(loads) == 11  # interleaving would give rank 0 units 0, 3, 6, 9 = 13


def _line(pid, k):
    return json.dumps({"problem_id": pid, "sample_index": k, "v": f"{pid}{k}"}) + "\n"


def test_one_process_merges_shards_left_by_a_killed_launch(tmp_path):
    """Shards of an interrupted 2-rank run (one torn last line) merge in canonical order, once each."""
    from rsdlib.distributed import Shards

    (tmp_path / "samples.jsonl").write_text(_line("b", 0))
    for rank, text in ((0, _line("a", 0) + _line("b", 0) + _line("b", 1)),
                       (1, _line("a", 1) + '{"problem_id": "a", "sam')):
        shard = tmp_path / "shards" / f"rank{rank}-of-2"
        shard.mkdir(parents=True)
        (shard / "samples.jsonl").write_text(text)
        (shard / "pending.jsonl").write_text(_line("c", 0))
    shards = Shards(tmp_path, World())
    assert shards.path("samples.jsonl") == tmp_path / "samples.jsonl"
    assert {(r["problem_id"], r["sample_index"]) for r in shards.read("samples.jsonl")} == {
        ("a", 0), ("a", 1), ("b", 0), ("b", 1)}
    merged = shards.merge("samples.jsonl", order=["b", "a"], extra=["pending.jsonl"])
    keys = [(r["problem_id"], r["sample_index"]) for r in records(tmp_path / "samples.jsonl")]
    assert keys == [("b", 0), ("b", 1), ("a", 0), ("a", 1)] == [(r["problem_id"], r["sample_index"]) for r in merged]
    assert not list((tmp_path / "shards").glob("*/*.jsonl"))


def test_force_clears_shard_records_but_keeps_the_locked_folders(tmp_path):
    from rsdlib.distributed import Shards

    shard = tmp_path / "shards" / "rank1-of-2"
    shard.mkdir(parents=True)
    (shard / ".lock").write_text("")  # held by rank 1 while rank 0 clears
    (shard / "samples.jsonl").write_text(_line("a", 0))
    Shards(tmp_path, World()).clear()
    assert shard.is_dir() and (shard / ".lock").exists() and not (shard / "samples.jsonl").exists()


# ----------------------------------------------------------------------------------------------
# torchrun on the tiny models
# ----------------------------------------------------------------------------------------------
TRACE_PARAMS = """
teacher: "tiny:teacher"
student: "tiny:student"
dtype: float32
device: cpu
benchmark: math500
n_problems: 4
pick: first
split: all
decoding: {temperature: 1.0, top_p: 1.0, max_new_tokens: 32}
job: {samples_per_problem: 6, prefix_tokens: 8, batch_size: 1, grade_timeout: 5.0}
prompt: {extra_instruction: ""}
restrict_to_teacher_solved: false
methods:
  teacher: {mode: teacher}
  rsd-p1: {mode: rsd, threshold: 0.01}
"""
N_UNITS = 24  # 4 problems x 6 samples


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment of the launched processes: this tree's rsdlib, 1 thread, results (tiny models) in a temp folder."""
    from rsdlib.standins import tiny_model_folder

    results = tmp_path_factory.mktemp("results")
    for role in ("teacher", "student"):
        tiny_model_folder(role, root=results)  # made once, before several processes want them
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RSDLIB_RESULTS": str(results),
            "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    path = tmp_path_factory.mktemp("params") / "10_generate_traces.yaml"
    path.write_text(TRACE_PARAMS)
    return path


def command(module, args, ranks):
    launcher = [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    return [sys.executable, *launcher, "-m", module, *map(str, args)]


def run(module, args, ranks, env):
    proc = subprocess.run(command(module, args, ranks), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def keyed(path):
    rows = records(path)
    out = {(r["problem_id"], r["sample_index"]): r for r in rows}
    assert len(out) == len(rows), f"duplicated samples in {path}"
    return out


def summary(folder, name="summary.json"):
    return {k: v for k, v in json.loads((Path(folder) / name).read_text()).items() if k not in TIMING}


@pytest.fixture(scope="module")
def one_rank(env, params, tmp_path_factory):
    out = tmp_path_factory.mktemp("traces") / "one"
    run("rsdlib.traces", ["--params", params, "--method", "rsd-p1", "--out", out], 1, env)
    return out


def assert_same_run(folder, reference):
    assert (folder / "dataset.jsonl").read_bytes() == (reference / "dataset.jsonl").read_bytes()
    assert keyed(folder / "samples.jsonl") == keyed(reference / "samples.jsonl")
    assert len(keyed(folder / "samples.jsonl")) == N_UNITS
    assert summary(folder) == summary(reference)
    assert not list((folder / "shards").glob("*/samples.jsonl")), "shards left after the merge"


def test_two_ranks_write_what_one_process_writes(env, params, one_rank, tmp_path):
    from rsdlib import launch

    out = tmp_path / "two"
    with pytest.MonkeyPatch.context() as mp:  # notebook 10's call with workers: 2
        for k, v in env.items():
            mp.setenv(k, v)
        merged = launch.traces_with_torchrun(params, "rsd-p1", out, 2, restrict_to=None)
    assert {k: v for k, v in merged.items() if k not in TIMING} == summary(one_rank)
    assert_same_run(out, one_rank)
    problems = json.loads((out / "config.json").read_text())["problems"]
    keys = [(r["problem_id"], r["sample_index"]) for r in records(out / "samples.jsonl")]
    assert keys == [(p, k) for p in problems for k in range(6)], "the merged file is in canonical order"
    ranks = json.loads((out / "summary.json").read_text())["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and [r["units"] for r in ranks] == [12, 12]
    assert all(r["wall_seconds"] > 0 for r in ranks)
    one = json.loads((one_rank / "summary.json").read_text())["ranks"]
    assert one == [{"rank": 0, "units": N_UNITS, "wall_seconds": one[0]["wall_seconds"]}]


def kill_rank_one_mid_run(env, params, out):
    """Start a 2-rank run, SIGKILL rank 1 once its shard holds 2 samples; returns the samples written by then."""
    proc = subprocess.Popen(command("rsdlib.traces", ["--params", params, "--method", "rsd-p1", "--out", out], 2),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shard = out / "shards" / "rank1-of-2" / "samples.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and shard.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before rank 1 could be killed:\n" + proc.stdout.read()[-3000:]
    rank1 = [p for p in psutil.Process(proc.pid).children(recursive=True)  # the rank, not its grading workers
             if p.environ().get("RANK") == "1" and p.parent().environ().get("RANK") != "1"]
    assert len(rank1) == 1
    os.kill(rank1[0].pid, signal.SIGKILL)
    proc.wait(timeout=300)
    assert proc.returncode != 0  # torchrun stops the other rank and fails
    assert not (out / "summary.json").exists()
    written = sum(len(records(p)) for p in (out / "shards").glob("*/samples.jsonl"))
    assert 2 <= written < N_UNITS
    return written


@pytest.mark.parametrize("rerun_ranks", [2, 1])
def test_a_killed_rank_loses_only_its_unfinished_units(env, params, one_rank, tmp_path, rerun_ranks):
    out = tmp_path / "run"
    written = kill_rank_one_mid_run(env, params, out)
    run("rsdlib.traces", ["--params", params, "--method", "rsd-p1", "--out", out], rerun_ranks, env)
    assert_same_run(out, one_rank)
    ranks = json.loads((out / "summary.json").read_text())["ranks"]
    assert len(ranks) == rerun_ranks
    assert sum(r["units"] for r in ranks) == N_UNITS - written, "finished units were generated again"


EVAL_PARAMS = """
evaluation:
  benchmarks: [aime24, math500]
  samples: {aime24: 4, math500: 1}
  limit: 2
  max_tokens: {aime24: 14, math500: 10}
  think_budget: {aime24: 8}
  temperature: 1.0
  batch_size: 1
  dtype: float32
  device: cpu
  grade_timeout: 5.0
"""


def test_evaluation_on_two_ranks_equals_one(env, tmp_path):
    params = tmp_path / "40_evaluate.yaml"
    params.write_text(EVAL_PARAMS)
    from rsdlib import launch

    run("rsdlib.evaluate", ["--params", params, "--model", "tiny:student", "--out", tmp_path / "r1"], 1, env)
    with pytest.MonkeyPatch.context() as mp:  # notebook 40's call with workers: 2
        for k, v in env.items():
            mp.setenv(k, v)
        merged = launch.evaluate_with_torchrun(params, "tiny:student", tmp_path / "r2", 2, ["aime24", "math500"])
    assert merged["math500"]["ranks"][1]["rank"] == 1
    for bench, n in (("aime24", 8), ("math500", 2)):
        one, two = tmp_path / "r1" / bench, tmp_path / "r2" / bench
        assert keyed(two / "samples.jsonl") == keyed(one / "samples.jsonl") and len(keyed(one / "samples.jsonl")) == n
        assert summary(two) == summary(one)
        assert [r["units"] for r in json.loads((two / "summary.json").read_text())["ranks"]] == [n // 2, n // 2]
        assert not (two / "pending.jsonl").exists() and not list((two / "shards").glob("*/*.jsonl"))
    assert any(r["forced"] or r["continued"] for r in records(tmp_path / "r2" / "aime24" / "samples.jsonl"))


def test_training_on_two_processes_keeps_the_effective_batch(env, tmp_path):
    """torchrun --nproc-per-node 2 -m rsdlib.train: accumulation halves, the batch of the optimizer step stays."""
    from rsdlib.standins import tiny_tokenizer

    tok = tiny_tokenizer()
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    data = tmp_path / "dataset.jsonl"
    data.write_text("".join(json.dumps({"id": f"e{i}", "prompt_ids": [40 + i, 41, 42],
                                        "completion_ids": [50, 51 + i, eot], "kind": "full"}) + "\n"
                            for i in range(8)))
    params = tmp_path / "30_train.yaml"
    params.write_text("training: {global_batch_size: 4, micro_batch_size: 1, block_size: 32, epochs: 1, "
                      "save_strategy: 'no', learning_rate: 1.0e-4, warmup_ratio: 0.0}\n")
    model = Path(env["RSDLIB_RESULTS"]) / "tiny-models" / "student"
    result = {}
    for ranks in (1, 2):
        out = tmp_path / f"train{ranks}"
        run("rsdlib.train", ["--params", params, "--data", data, f"model={model}", f"output_dir={out}"], ranks, env)
        result[ranks] = json.loads((out / "train_summary.json").read_text())
        result[ranks]["log"] = json.loads((out / "train_log.json").read_text())
    for ranks, accumulation in ((1, 4), (2, 2)):
        s = result[ranks]
        assert s["world_size"] == ranks and s["gradient_accumulation_steps"] == accumulation
        assert s["effective_batch_size"] == 4 and s["global_step"] == 2  # 8 examples / 4 per step
    seen = [[e["num_input_tokens_seen"] for e in result[r]["log"] if "num_input_tokens_seen" in e] for r in (1, 2)]
    assert seen[0] and seen[0] == seen[1], "the processes together see the examples one process sees"


def test_notebook_10_with_two_workers_goes_through_torchrun(env, monkeypatch):
    """workers: 2 launches each method with torchrun and reads the merged result (smoke profile, one method)."""
    from rsdlib import reproduce

    for k in ("RSDLIB_RESULTS", "PYTHONPATH", "OMP_NUM_THREADS"):
        monkeypatch.setenv(k, env[k])
    override = {"workers": 2, "methods": {"teacher": {"mode": "teacher"}}, "extra_pairs": {}, "reference": ""}
    lines = []
    report = reproduce.reproduce("smoke", only=["10_generate_traces"], overrides={"10_generate_traces": override},
                                 echo=lines.append)
    assert report.ok, "\n".join(lines) + report.results[0].log.read_text()[-3000:]
    traces = Path(env["RSDLIB_RESULTS"]) / "smoke" / "traces"
    ranks = json.loads((traces / "main" / "teacher" / "summary.json").read_text())["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert json.loads((traces / "manifest.json").read_text())["methods"] == {"main": ["teacher"]}
    assert "launching: torchrun" in report.results[0].output.read_text()


def test_stage_parameters_are_the_notebooks_as_reproduce_runs_them(tmp_path):
    from rsdlib.launch import stage_params
    from rsdlib.reproduce import ParameterError, notebook_parameters, resolved_params
    from rsdlib.traces import method_job_config

    demo = stage_params("10_generate_traces", profile="demo")
    defaults = {p.name: p.default for p in notebook_parameters("10_generate_traces").values()}
    assert demo == {**defaults, "profile": "demo"}
    assert stage_params("10_generate_traces", profile="smoke") == resolved_params("smoke", "10_generate_traces")
    smoke = stage_params("10_generate_traces", ROOT / "params" / "smoke" / "10_generate_traces.yaml")
    assert smoke["profile"] == "smoke" and smoke["teacher"] == "tiny:teacher"
    cfg = method_job_config(smoke, "self-distill-ce", "t", "s")  # the method's own keys win over the shared job's
    assert cfg.samples_per_problem == smoke["methods"]["self-distill-ce"]["samples_per_problem"]
    assert cfg.decoding.mode == "student" and cfg.decoding.max_new_tokens == smoke["decoding"]["max_new_tokens"]
    bad = tmp_path / "10_generate_traces.yaml"
    bad.write_text("n_problem: 3\n")
    with pytest.raises(ParameterError, match="unknown parameter"):
        stage_params("10_generate_traces", bad)


# ----------------------------------------------------------------------------------------------
# Every device (issue 28): workers 0, the effective batch at any world size, one set of folders
# ----------------------------------------------------------------------------------------------
def test_workers_zero_is_one_rank_per_device_and_a_profile_caps_it():
    from rsdlib.distributed import rank_environment, workers_for

    assert workers_for(0, {"RSDLIB_CPU_DEVICES": "2"}) == 2
    assert workers_for(0, {"RSDLIB_GPUS": "0,1,2", "CUDA_VISIBLE_DEVICES": "0"}) == 3  # the driver's, not the kernel's
    assert workers_for(0, {"CUDA_VISIBLE_DEVICES": "4,5"}) == 2
    assert workers_for(0, {"CUDA_VISIBLE_DEVICES": ""}) == 1
    assert workers_for(3, {"RSDLIB_GPUS": ",".join(map(str, range(8)))}) == 3  # a profile's cap
    with pytest.raises(ValueError, match="RSDLIB_CPU_DEVICES"):
        workers_for(0, {"RSDLIB_CPU_DEVICES": "two"})
    with pytest.raises(ValueError, match="workers must be"):
        workers_for(-1, {})
    ranks = rank_environment({"RSDLIB_GPUS": "0,1", "CUDA_VISIBLE_DEVICES": "0"})
    assert ranks["CUDA_VISIBLE_DEVICES"] == "0,1" and ranks["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
    assert rank_environment({"RSDLIB_CPU_DEVICES": "2", "RSDLIB_GPUS": "0,1"})["CUDA_VISIBLE_DEVICES"] == ""


def test_the_driver_gives_the_stages_every_gpu_and_each_kernel_one(monkeypatch):
    from rsdlib.reproduce import _environment

    monkeypatch.delenv("RSDLIB_KERNEL_GPUS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    env = _environment("paper")
    assert env["RSDLIB_GPUS"] == "3,5" and env["CUDA_VISIBLE_DEVICES"] == "3"
    from rsdlib.distributed import workers_for

    assert workers_for(0, env) == 2  # a kernel's workers: 0 launches one rank per GPU of the driver


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_the_effective_batch_is_the_profiles_at_any_world_size(world_size):
    from rsdlib.train import TrainConfig

    for micro in (1, 2):
        plan = TrainConfig(global_batch_size=16, micro_batch_size=micro).batch_plan(world_size)
        assert plan == {"world_size": world_size, "per_device_batch_size": micro,
                        "gradient_accumulation_steps": 16 // (micro * world_size), "effective_batch_size": 16}
    cfg = TrainConfig(global_batch_size=16)
    assert cfg.batch_plan(world_size, n_examples=1000)["repeated_examples_per_epoch"] == 0  # the paper's set
    assert cfg.batch_plan(world_size, n_examples=7)["repeated_examples_per_epoch"] == {1: 0, 2: 1, 4: 1}[world_size]
    with pytest.raises(ValueError, match="DataParallel"):  # a process that sees several GPUs
        TrainConfig(global_batch_size=16).batch_plan(world_size, devices_per_process=2)


def test_training_refuses_dataparallel(monkeypatch, tmp_path):
    """A single process that sees several GPUs would train DataParallel (batch x GPUs): refused before training."""
    import transformers

    from rsdlib.standins import tiny_model_folder
    from rsdlib.train import TrainConfig, train

    monkeypatch.setattr(transformers.TrainingArguments, "n_gpu", property(lambda self: 2))
    data = _dataset(tmp_path, 4)
    cfg = TrainConfig(model=str(tiny_model_folder("student", root=tmp_path)), output_dir=str(tmp_path / "run"),
                      global_batch_size=4, block_size=32, epochs=1, save_strategy="no")
    with pytest.raises(ValueError, match="DataParallel"):
        train(cfg, data)


def _dataset(folder, n):
    from rsdlib.standins import tiny_tokenizer

    eot = tiny_tokenizer().convert_tokens_to_ids("<|im_end|>")
    data = folder / "dataset.jsonl"
    data.write_text("".join(json.dumps({"id": f"e{i}", "prompt_ids": [40 + i % 20, 41, 42],
                                        "completion_ids": [50, 51 + i % 20, eot], "kind": "full"}) + "\n"
                            for i in range(n)))
    return data


def test_training_on_1_2_4_processes_steps_with_a_batch_of_16(env, tmp_path):
    """torchrun --nproc-per-node W -m rsdlib.train at W = 1, 2, 4: accumulation 16 / W, 16 examples per step."""
    data = _dataset(tmp_path, 32)
    params = tmp_path / "30_train.yaml"
    params.write_text("training: {global_batch_size: 16, micro_batch_size: 1, block_size: 32, epochs: 1, "
                      "save_strategy: 'no', learning_rate: 1.0e-4, warmup_ratio: 0.0}\n")
    model = Path(env["RSDLIB_RESULTS"]) / "tiny-models" / "student"
    seen = {}
    for ranks in (1, 2, 4):
        out = tmp_path / f"train{ranks}"
        proc = run("rsdlib.train", ["--params", params, "--data", data, f"model={model}", f"output_dir={out}"], ranks,
                   env)
        s = json.loads((out / "train_summary.json").read_text())
        plan = (s["world_size"], s["per_device_batch_size"], s["gradient_accumulation_steps"])
        assert plan == (ranks, 1, 16 // ranks)
        assert s["effective_batch_size"] == 16 and s["global_step"] == 2
        assert f"per-device batch 1 x {16 // ranks} accumulation step(s) x {ranks} = effective batch 16" in proc.stderr
        log = json.loads((out / "train_log.json").read_text())
        seen[ranks] = [e["num_input_tokens_seen"] for e in log if "num_input_tokens_seen" in e]
    assert seen[1] and seen[1] == seen[2] == seen[4], "the processes together see the examples one process sees"


def test_a_hand_run_training_and_the_notebooks_resume_each_other(env, tmp_path):
    """One set of folders: checkpoints of `torchrun -m rsdlib.train --params ... output_dir=<relative>` are the
    notebook's run (absolute folder) and are resumed, not refused; a run the notebook's ranks finished is not
    redone by the hand-run command."""
    import subprocess as sp

    from rsdlib.config import load_yaml_config
    from rsdlib.train import TrainConfig, train_launched

    data = _dataset(tmp_path, 8)
    params = tmp_path / "30_train.yaml"
    params.write_text("training: {global_batch_size: 4, micro_batch_size: 1, block_size: 32, epochs: 1, "
                      "save_strategy: steps, save_steps: 1, learning_rate: 1.0e-4, warmup_ratio: 0.0}\n")
    training = {"global_batch_size": 4, "micro_batch_size": 1, "block_size": 32, "epochs": 1,
                "save_strategy": "steps", "save_steps": 1, "learning_rate": 1.0e-4, "warmup_ratio": 0.0}
    model = str(Path(env["RSDLIB_RESULTS"]) / "tiny-models" / "student")

    def by_hand(folder, ranks):
        cmd = command("rsdlib.train", ["--params", params, "--data", data, f"model={model}", f"output_dir={folder}"],
                      ranks)
        proc = sp.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        return proc

    def as_notebook(folder):  # what notebook 30 builds: the same keys, the folder as an absolute path
        return load_yaml_config(TrainConfig, {**training, "model": model, "output_dir": str(tmp_path / folder)})

    by_hand("models/a", 2)  # relative to the working directory, as in the README
    run_dir = tmp_path / "models" / "a"
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    shutil.rmtree(run_dir / "final")  # as if killed after its last checkpoint
    (run_dir / "train_summary.json").unlink()
    final = train_launched(as_notebook("models/a"), data, workers=1)  # the notebook resumes the hand-run's checkpoints
    assert (final / "config.json").is_file()
    assert json.loads((run_dir / "train_summary.json").read_text())["global_step"] == 2

    train_launched(as_notebook("models/b"), data, workers=2)  # the notebook's DDP ranks
    summary = tmp_path / "models" / "b" / "train_summary.json"
    before = summary.stat().st_mtime_ns
    by_hand("models/b", 1)
    assert summary.stat().st_mtime_ns == before, "the hand-run command retrained a finished run of the notebook"


def test_the_readmes_training_commands_are_notebook_30s_runs(monkeypatch):
    """The README's accelerate and torchrun commands build notebook 30's config for main-rsd-p1 of the paper
    profile, in its folder: either resumes the other."""
    import re
    import shlex

    from rsdlib.config import config_hash
    from rsdlib.reproduce import resolved_params
    from rsdlib.train import SAME_RUN_FREE_FIELDS, command_config, stage_run_config

    monkeypatch.delenv("RSDLIB_RESULTS", raising=False)
    monkeypatch.chdir(ROOT)
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    pattern = re.compile(r"\s*(accelerate launch|torchrun).*-m rsdlib\.train")
    commands = [line for line in text.splitlines() if pattern.match(line)]
    assert {c.split()[0] for c in commands} == {"accelerate", "torchrun"}, commands
    params = resolved_params("paper", "30_train")
    student = resolved_params("paper", "10_generate_traces")["student"]
    notebook = stage_run_config(params, "main", "rsd-p1", student)
    for line in commands:
        words = shlex.split(line.replace("$PWD", str(ROOT)))
        cfg, data = command_config(words[words.index("rsdlib.train") + 1:])
        assert config_hash(cfg, SAME_RUN_FREE_FIELDS) == config_hash(notebook, SAME_RUN_FREE_FIELDS), line
        assert Path(cfg.output_dir).resolve() == Path(notebook.output_dir), line
        assert Path(data).resolve() == ROOT / "results" / "paper" / "traces" / "main" / "rsd-p1" / "dataset.jsonl"
