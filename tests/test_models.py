"""Model loading: local folders (safetensors only), clear errors, no hub access, dtype/device choice.

The hub is never contacted: tests/conftest.py sets HF_HUB_OFFLINE=1, and the "online" cases replace
the one hub probe with a stub that fails the way an unreachable or unknown hub id does.
"""

import os
import time

import httpx2
import pytest
import torch
from _tiny import save_tiny_pair, tiny_model, tiny_tokenizer

from rsdlib import models
from rsdlib.models import ModelNotFoundError

MADE_UP = "nobody-here/made-up-model-4242"


def assert_helpful(message: str, name: str):
    assert name in message
    for way in ("hub id", "local folder", ".gguf", "rsdlib prepare"):
        assert way in message, f"message does not mention {way!r}:\n{message}"
    assert "Traceback" not in message


def test_offline_unknown_id_fails_fast_with_one_clear_message():
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        models.load_model(MADE_UP)
    assert time.perf_counter() - start < 5, "offline must not wait for the network"
    assert_helpful(str(info.value), MADE_UP)
    assert "HF_HUB_OFFLINE" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_unreachable_hub_fails_fast(monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")

    def unreachable(self, repo_id, **kwargs):
        assert kwargs.get("timeout") is not None and kwargs["timeout"] <= 30, "the probe needs a short timeout"
        raise httpx2.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "model_info", unreachable)
    with pytest.raises(ModelNotFoundError) as info:
        models.load_model(MADE_UP)
    assert "unreachable" in str(info.value)
    assert_helpful(str(info.value), MADE_UP)
    assert info.value.__cause__ is None, "one message, not a chain of network errors"


def test_unknown_hub_id_says_so(monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")

    def not_found(self, repo_id, **kwargs):
        request = httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
        raise RepositoryNotFoundError("404", response=httpx2.Response(404, request=request))

    monkeypatch.setattr(HfApi, "model_info", not_found)
    with pytest.raises(ModelNotFoundError, match="does not exist on the Hugging Face hub") as info:
        models.load_model(MADE_UP)
    assert_helpful(str(info.value), MADE_UP)


@pytest.mark.parametrize("name", ["./no/such/folder", "/no/such/model.gguf", "~/nothing-here-4242"])
def test_missing_local_path(name):
    with pytest.raises(ModelNotFoundError, match="no such model file or folder") as info:
        models.load_model(name)
    assert_helpful(str(info.value), name)


def test_existing_file_that_is_not_a_model(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"not a model")
    with pytest.raises(ModelNotFoundError, match="neither a model folder nor a .gguf file"):
        models.load_model(tmp_path / "weights.pt")


def test_unknown_embedded_role():
    with pytest.raises(ModelNotFoundError, match="embedded:teacher"):
        models.load_model("embedded:mentor")


def test_folder_without_safetensors_is_refused(tmp_path):
    folder = save_tiny_pair(tmp_path / "tiny")
    for weights in folder.glob("*.safetensors"):
        weights.rename(weights.with_name("pytorch_model.bin"))  # as an old pickled checkpoint
    with pytest.raises(ModelNotFoundError, match="never loads pickled"):
        models.load_model(folder)


def test_local_folder_loads_the_saved_model(tmp_path):
    tokenizer = tiny_tokenizer()
    reference = tiny_model(tokenizer, seed=3)
    reference.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    model, tok = models.load_model(tmp_path / "tiny", device="cpu")
    assert not model.training and model.dtype == torch.float32 and model.device.type == "cpu"
    assert tok.get_vocab() == tokenizer.get_vocab() and tok.chat_template == tokenizer.chat_template
    ids = tokenizer("<|im_start|>user\nhi<|im_end|>", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)
    assert models.logit_rows(model) == reference.config.vocab_size > len(tokenizer)
    bf16, _ = models.load_model(str(tmp_path / "tiny"), dtype="bfloat16", device="cpu")
    assert bf16.dtype == torch.bfloat16


def test_gguf_name_in_a_folder_must_exist(tmp_path):
    folder = save_tiny_pair(tmp_path / "tiny")
    with pytest.raises(ModelNotFoundError, match="no GGUF file"):
        models.load_model(folder, gguf_file="missing.gguf")


def test_auto_dtype_on_cpu_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setenv("RSDLIB_CPU_BF16", "0")
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setenv("RSDLIB_CPU_BF16", "1")
    assert models.resolve_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.delenv("RSDLIB_CPU_BF16")
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    native = "amx_bf16" in flags or "avx512_bf16" in flags
    assert models.cpu_has_fast_bf16() == native
    assert models.resolve_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)


def test_dtype_and_device_choice():
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert models.resolve_dtype("bfloat16") == torch.bfloat16
    assert models.resolve_dtype("bfloat16") == torch.bfloat16
    assert models.resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        models.resolve_dtype("float8-ish")


def test_load_pair_names_and_bridges(tmp_path):
    teacher = save_tiny_pair(tmp_path / "teacher", seed=1)
    student = save_tiny_pair(tmp_path / "student", seed=2)
    pair = models.load_pair(teacher, student, device="cpu")
    assert pair.name == "teacher->student"
    assert pair.teacher is not pair.student
    assert pair.teacher_tokenizer.get_vocab() == pair.student_tokenizer.get_vocab()
    assert pair.bridge is not None and pair.bridge.teacher_vocab_size == models.logit_rows(pair.teacher)
    assert not pair.bridge.student_only, "same tokenizer: identity bridge"


def test_offline_hub_id_loads_from_the_local_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-qwen"
    save_tiny_pair(repo / "snapshots" / commit, seed=5)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.perf_counter()
    model, tok = models.load_model("tiny-org/tiny-qwen", device="cpu")  # HF_HUB_OFFLINE=1 (conftest)
    assert time.perf_counter() - start < 30
    reference, _ = models.load_model(repo / "snapshots" / commit, device="cpu")
    assert models.logit_rows(model) == models.logit_rows(reference)
    torch.testing.assert_close(model.lm_head.weight, reference.lm_head.weight, rtol=0, atol=0)
