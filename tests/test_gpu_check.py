"""benchmarks/gpu_check.py (issue 18): the --tiny run on a machine that has only torch, transformers,
accelerate and peft, and the pieces its numbers rest on (step clock, OOM halving, speculative cost model,
the paper profile's work counts)."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
ALLOWED_ROOTS = ("torch", "transformers", "accelerate", "peft")  # what the GPU machine has installed
NAMED_BLOCKS = ("gguf", "papermill", "math_verify", "matplotlib", "seaborn", "wordcloud")  # the list


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gc_mod = _gpu_check()


def _dependency_closure(roots) -> set[str]:
    """Canonical names of the installed distributions ``roots`` need, transitively (no extras)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _blocked_modules() -> list[str]:
    """Top-level modules of every installed distribution outside the closure of ALLOWED_ROOTS, plus the named ones."""
    from packaging.utils import canonicalize_name

    allowed = _dependency_closure(ALLOWED_ROOTS) | {"rsdlib"}
    blocked = set(NAMED_BLOCKS)
    for module, dists in metadata.packages_distributions().items():
        if module.startswith("_") or module in sys.stdlib_module_names or not module.isidentifier():
            continue
        if not any(canonicalize_name(d) in allowed for d in dists):
            blocked.add(module)
    return sorted(blocked)


RUNNER = """
import importlib.util, json, runpy, sys
blocked = json.loads(sys.argv[1])
for name in blocked:
    sys.modules[name] = None  # import -> ModuleNotFoundError; importlib.util.find_spec -> None
assert all(importlib.util.find_spec(n) is None for n in blocked)
sys.argv = [sys.argv[2], *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_tiny_run_with_only_torch_transformers_accelerate_peft(tmp_path):
    """The whole check (--tiny) runs with every package outside torch/transformers/accelerate/peft and their
    dependencies made unimportable, and its table file has every row."""
    blocked = _blocked_modules()
    assert set(NAMED_BLOCKS) <= set(blocked) and "torch" not in blocked and "accelerate" not in blocked
    assert "pandas" in blocked or importlib.util.find_spec("pandas") is None
    out = tmp_path / "check.md"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script finds rsdlib itself
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(blocked), str(SCRIPT), "--tiny", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"}, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text == proc.stdout  # the file is the printed table, row by row
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    names = [r.split(" | ")[0].removeprefix("| ") for r in rows]
    plan = gc_mod.Plan.tiny()
    expected = (["decode: lockstep RSD", "decode: teacher only", "decode: student only"] * len(plan.batches)
                + ["decode: lockstep RSD, padded rows + refills",
                   "decode: lockstep RSD, padded rows + refills, static cache",
                   "decode: lockstep RSD, padded rows + refills, compiled", "decode: lockstep RSD, long context"]
                + [f"speculative RSD k={k}" for _ in plan.spec_batches for k in plan.draft_tokens]
                + ["train: student, full fine-tuning", "GPU-hours: traces (10)", "GPU-hours: traces, README's counts",
                   "GPU-hours: evaluation (40), HF decoder", "GPU-hours: training (30)",
                   "GPU-hours: multi-step RSD (35)",
                   "GPU-hours: total"])
    assert names == expected
    assert "skipped" not in text and "did not fit" not in text and "out of memory" not in text
    batches = [r.split(" | ")[1] for r in rows[: 3 * len(plan.batches)]]
    assert batches == [str(b) for b in plan.batches for _ in range(3)]
    for r in rows[: 3 * len(plan.batches) + 4 + len(plan.spec_batches) * len(plan.draft_tokens) + 1]:
        cells = r.split(" | ")
        assert float(cells[3].replace(",", "")) > 0 and float(cells[4].replace(",", "")) > 0, r  # tok/s, ms/step
    assert "speed-up vs teacher at a = 0.6/0.7/0.8" in text and "Assumptions of the GPU-hours rows" in text
    assert time.perf_counter() - start < 300


def test_step_clock_times_steps_and_the_share_outside_forwards():
    class Sleepy(torch.nn.Module):
        def __init__(self, seconds):
            super().__init__()
            self.seconds, self.device = seconds, torch.device("cpu")  # HF models have .device

        def forward(self, x):
            time.sleep(self.seconds)
            return x

    teacher, student = Sleepy(0.02), Sleepy(0.02)
    clock = gc_mod.StepClock({"teacher": teacher, "student": student}, "teacher", warmup=1, steps=3, max_seconds=60,
                             prefill_calls=2)
    x = torch.zeros(1)
    teacher(x), teacher(x), student(x), student(x)  # a prefill in two chunks
    calls = 0
    with pytest.raises(gc_mod.StopRow):
        while True:
            teacher(x)
            calls += 1
            student(x)
            time.sleep(0.04)  # sampling and bookkeeping
    clock.remove()
    assert calls == 1 + 3 + 1  # warm-up, 3 timed steps, and the forward that starts the next one (never run)
    result = clock.result()
    assert result["steps"] == 3
    assert 0.08 <= result["step_s"] < 0.2
    assert 0.3 < result["outside"] < 0.7  # 40 ms of 80 outside the forwards
    assert result["forward_s"]["teacher"] == pytest.approx(0.02, abs=0.015)
    teacher(x)  # hooks removed: no StopRow


def test_largest_fitting_halves_the_batch_on_out_of_memory():
    tried = []

    def measure(batch):
        tried.append(batch)
        if batch > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return {"batch": batch}

    assert gc_mod.largest_fitting(measure, 64) == ({"batch": 16}, 16, [64, 32])
    assert tried == [64, 32, 16]

    def never(batch):
        raise torch.cuda.OutOfMemoryError("simulated")

    assert gc_mod.largest_fitting(never, 4) == (None, None, [4, 2, 1])
    assert gc_mod._batch_note(64, 16, [64, 32]) == "16 (64, 32 did not fit)"


def test_tokens_per_round_matches_rsdlib_speculative_rounds():
    """E(a, k) = (1 - a^(k+1)) / (1 - a) against rsdlib.speculative.speculative_accept at acceptance a."""
    from rsdlib.speculative import speculative_accept

    rows, k, a = 200_000, 4, 0.7
    gen = torch.Generator().manual_seed(0)
    target = torch.tensor([a, 1 - a]).expand(rows, k + 1, 2)  # P_i: token 0 with probability a
    draft = torch.tensor([1.0, 0.0]).expand(rows, k, 2)  # q_i: always drafts token 0, accepted w.p. P/q = a
    drafts = torch.zeros(rows, k, dtype=torch.long)
    n_acc, _ = speculative_accept(target, draft, drafts, torch.rand(rows, k, generator=gen, dtype=torch.float64),
                                  torch.rand(rows, generator=gen, dtype=torch.float64))
    assert (n_acc + 1).double().mean().item() == pytest.approx(gc_mod.tokens_per_round(a, k), rel=0.01)
    assert gc_mod.tokens_per_round(1.0, 3) == 4 and gc_mod.tokens_per_round(0.0, 3) == 1
    sp = gc_mod.speculative_speedups(round_s=0.5, teacher_step_s=0.1, student_step_s=0.02, k=4, acceptances=(0.7,))
    assert sp["c"] == pytest.approx(0.2)
    assert sp["measured"][0.7] == pytest.approx(gc_mod.tokens_per_round(0.7, 4) * 0.1 / 0.5)
    assert sp["formula"][0.7] == pytest.approx(gc_mod.tokens_per_round(0.7, 4) / (5 * 0.2 + 1))


def test_paper_work_counts_the_profiles_samples():
    """Hand count from params/paper: teacher 16 x 1,000 (lockstep: it records P_s); SKD and four RSD
    thresholds 16 x 234 each, plus two extra pairs' RSD-1% and R1-Distill's own teacher run (16 x 1,000);
    self-distill 16 and 203 x 234; 9 + 14 trainings (Table 4's tailored, transferred and s1K-1.1 students);
    11 + 20 evaluated models, MATH500 at 4 samples."""
    scale = gc_mod.PaperScale()
    work = gc_mod.paper_work(scale)
    assert work["lockstep_samples"] == 16 * 1000 + 5 * 16 * 234 + 2 * 16 * 234 + 16 * 1000
    assert work["student_samples"] == (16 + 203) * 234
    assert work["student_tokens"] == pytest.approx(256.2e6, rel=1e-3)  # the README's ~256M student-only tokens
    assert work["train_runs"] == 23 and work["epochs"] == 15 and work["cycles"] == 3
    assert work["eval_samples"] == 31 * (30 * 64 * 2 + 198 * 8 + 500 * 4)
    assert work["trace_batch"] == 64


def test_paper_training_recipe_is_the_profiles():
    recipe = gc_mod.paper_training_recipe()
    assert recipe["gradient_checkpointing"] is True and recipe["block_size"] == 8192 and recipe["lora"] is False


def test_shapes_build_the_paper_architectures_on_the_meta_device():
    """The documented shapes give the models' known sizes (7.6B and 0.6B parameters) without allocating them."""
    teacher = gc_mod.build_model(gc_mod.TEACHER_SHAPE, torch.bfloat16, "meta")
    student = gc_mod.build_model(gc_mod.STUDENT_SHAPE, torch.bfloat16, "meta")
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    assert n_t == pytest.approx(7.62e9, rel=0.01)  # Qwen2.5-7B: 7.61B
    assert n_s == pytest.approx(0.596e9, rel=0.01)  # Qwen3-0.6B: 0.6B with tied embeddings
    assert teacher.lm_head.weight.shape == (152_064, 3_584) and student.config.tie_word_embeddings
    assert teacher.config.num_key_value_heads == 4 and student.config.head_dim == 128


def test_chunked_prefill_decoder_matches_the_decoder():
    """Feeding the prompt in chunks leaves the state one prefill gives: same first logits, same traces."""
    from rsdlib.bridge import VocabBridge
    from rsdlib.decoding import Decoder, DecodingConfig
    from rsdlib.engine import ModelState

    teacher = gc_mod.build_model(gc_mod.TINY_TEACHER, torch.float32, "cpu")
    student = gc_mod.build_model(gc_mod.TINY_STUDENT, torch.float32, "cpu")
    bridge = VocabBridge.shared_prefix(640, 576, gc_mod.TINY_SHARED, gc_mod.TINY_STUDENT_ONLY)
    prompts = torch.randint(0, gc_mod.TINY_SHARED, (3, 37), generator=torch.Generator().manual_seed(1)).tolist()
    whole = ModelState(teacher, 0).feed(prompts)
    chunked = gc_mod._feed_chunked(ModelState(teacher, 0), prompts, 8)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    assert gc_mod.prefill_forwards(37, 8) == 5
    cfg = DecodingConfig(mode="rsd", threshold=0.01, max_new_tokens=12)
    plain = Decoder(teacher, student, bridge, cfg).generate(prompts, [0, 1, 2], batch_size=3)
    dec = gc_mod.ChunkedPrefillDecoder(teacher, student, bridge, cfg)
    dec.chunk = 8
    assert [t.token_ids for t in dec.generate(prompts, [0, 1, 2], batch_size=3)] == [t.token_ids for t in plain]


def test_kv_sizing_matches_the_engine_and_the_field_notes():
    """KV bytes per token as the field notes give them, and the buffer length rsdlib's cache really allocates."""
    from rsdlib.engine import ModelState

    assert gc_mod.kv_bytes_per_token(gc_mod.TEACHER_SHAPE) == 57_344  # ~57 KB
    assert gc_mod.kv_bytes_per_token(gc_mod.STUDENT_SHAPE) == 114_688  # ~115 KB
    model = gc_mod.build_model(gc_mod.TINY_STUDENT, torch.float32, "cpu")
    state = ModelState(model, 0)
    gc_mod._feed_chunked(state, [list(range(1, 101))], 32)
    for _ in range(40):
        state.feed([[5]])
    buffer = state.cache.layers[0]._kbuf.shape[-2]
    assert gc_mod.kv_buffer_positions(100, 32, 40) == buffer == 256  # 140 live positions, one 256-position chunk
    assert gc_mod.kv_buffer_positions(8_000, 1_024, 35) == 8_192  # never twice the live context
    tried = []
    assert gc_mod.largest_fitting(lambda b: tried.append(b) or b, 64, fits=lambda b: b <= 16) == (16, 16, [64, 32])
    assert tried == [16]  # batches the sizing rejects are never run


def test_a_failing_row_prints_its_failure_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    """One row raises (teacher-only decoding, injected): it gets a 'failed' line, every other row is printed;
    ``--out`` may name a folder; the padded row runs prompts of different lengths with refills."""
    real = gc_mod.decode_row
    calls = []

    def flaky(teacher, student, bridge, mode, batch, plan, device, draft_tokens=0, context=None, padded=False,
              **options):
        calls.append((mode, batch, padded))
        if mode == "teacher" and plan.steps > 2:  # the warm-up rows (2 steps) stay intact
            raise RuntimeError("injected failure\nsecond line")
        return real(teacher, student, bridge, mode, batch, plan, device, draft_tokens, context, padded, **options)

    monkeypatch.setattr(gc_mod, "decode_row", flaky)
    plan = gc_mod.Plan(**{**gc_mod.asdict(gc_mod.Plan.tiny()), "batches": (2,), "spec_batches": (2,),
                          "draft_tokens": (2,), "long_context": 0})
    monkeypatch.setattr(gc_mod.Plan, "tiny", classmethod(lambda cls: plan))
    assert gc_mod.main(["--tiny", "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "gpu_check.md").read_text()
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "failed: RuntimeError: injected failure |" in rows["decode: teacher only"]
    for name in ("decode: lockstep RSD", "decode: student only", "decode: lockstep RSD, padded rows + refills",
                 "train: student, full fine-tuning"):
        assert "failed" not in rows[name] and float(rows[name].split(" | ")[3].replace(",", "")) > 0, rows[name]
    assert "failed" not in rows["speculative RSD k=2"]
    assert ("rsd", 2, True) in calls


def test_padded_chunked_prefill_matches_one_prefill():
    """Prompts of different lengths fed in chunks give the logits of one prefill forward."""
    from rsdlib.engine import prefill
    from rsdlib.standins import tiny_model

    model = tiny_model(vocab_size=64, eos_token_id=1, pad_token_id=0)
    rows = [list(range(5, 5 + n)) for n in (3, 11, 7)]
    _, whole = prefill(model, rows)
    state = gc_mod.ModelState(model, 0)
    chunked = gc_mod._feed_chunked(state, rows, 4)
    assert torch.allclose(chunked, whole, atol=1e-5)
