"""The append-only store every stage writes through: JSONL files that survive a kill, atomic JSON writes,
run folders claimed by their config, and one writer per run folder.

A long job (trace generation, evaluation) appends one record per finished sample (``append_jsonl``,
fsynced), so an interrupted run resumes where it stopped: ``read_jsonl_resumable`` drops only a torn
final line. Files rewritten as a whole (merged shards, summaries, configs) go through a temporary file
renamed over the old one (``write_json_atomic``, ``write_jsonl_atomic``). ``claim_folder`` ties a run
folder to one configuration, and ``run_lock`` refuses a second writer. ``folder_sha256`` names a
folder (a trained model) by its content, never by where it lies. Used by rsdlib.traces,
rsdlib.evaluate, rsdlib.distributed and rsdlib.train; this module imports nothing of rsdlib.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

from filelock import FileLock, Timeout


class RunConflictError(RuntimeError):
    """The output folder holds a run made with a different config."""



class JsonlLineError(ValueError):
    """A line of a JSONL file that is not one JSON object (names the file and the 1-based line)."""


def read_jsonl_resumable(path: Path, *, repair: bool = False) -> list[dict]:
    """Records of a JSONL file written by appends (``append_jsonl``), for readers and for its writer.

    Only a torn FINAL line (no trailing newline: an append cut by a kill, or one still being
    written) is left out. A bad line anywhere else raises ``JsonlLineError`` naming the file and the
    line: records after it are never dropped silently. ``repair=True`` is for the one writer, under
    its ``run_lock``: it cuts the torn final line off the file so the next append starts a new line.
    Readers (the default) never modify the file.
    """
    path = Path(path)
    if not path.exists():
        return []
    records, good_bytes = [], 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                break  # the torn final line
            if line.strip():
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    raise JsonlLineError(
                        f"{path}, line {number}: not valid JSON ({getattr(err, 'msg', err)}); the records after it "
                        "are intact. Fix or delete that line (or delete the file to redo the run).") from None
                if not isinstance(record, dict):
                    raise JsonlLineError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
                records.append(record)
            good_bytes += len(line)
    if repair and good_bytes != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return records


def unique_samples(records: Sequence[dict]) -> list[dict]:
    """Drop repeated (problem_id, sample_index) records, keeping the first (defends older folders)."""
    seen, out = set(), []
    for r in records:
        key = (r["problem_id"], r["sample_index"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


@contextmanager
def run_lock(out_dir: Path, reason: str = "two writers would duplicate samples"):
    """Hold an exclusive lock on a run folder; a second process writing the same run is refused.

    Two processes appending to one ``samples.jsonl`` would duplicate samples, so the second one
    fails at once with RunConflictError instead of waiting (``reason`` says why in the message).
    Used by trace, evaluation and training runs.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out_dir / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunConflictError(
            f"{out_dir} is being written by another process (lock {out_dir / '.lock'} is held). "
            f"Wait for it to finish or stop it; {reason}.") from None
    try:
        yield
    finally:
        lock.release()


def append_jsonl(path: Path, record: dict) -> None:
    """Append one record and make it durable before returning."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: Path, data, *, end: str = "") -> None:
    """``data`` as indented JSON (then ``end``), through a temporary file renamed over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + end, encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, records: Sequence[dict], *, tmp: Path | None = None) -> None:
    """One JSON line per record, fsynced in a temporary file (``tmp``) that is then renamed over ``path``."""
    tmp = tmp or path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def claim_folder(out_dir: Path, mine: dict, conflict: Callable[[dict], str | None], *, end: str = "") -> None:
    """Write ``out_dir/config.json`` (``mine``) for a new run, or check the stored one: ``conflict(stored)``
    says what differs (None: the same run, which may go on), raised as a RunConflictError."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.json"
    if not path.exists():
        write_json_atomic(path, mine, end=end)
        return
    problem = conflict(json.loads(path.read_text()))
    if problem:
        raise RunConflictError(problem)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_FOLDER_SHAS: dict[tuple, str] = {}  # (folder, skip, (name, size, mtime_ns) of every file) -> sha: once per process


def folder_sha256(folder: Path, *, skip: Sequence[str] = ()) -> str:
    """Hex sha256 of a folder's content: every file's relative name and bytes, hidden files (locks) and the
    names in ``skip`` left out. Equal for a copy or a move of the folder, different when any byte changes."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in skip
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    stats = tuple((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(folder.resolve()), tuple(skip), stats)
    if key not in _FOLDER_SHAS:
        h = hashlib.sha256()
        for p, (name, _, _) in zip(files, stats):
            h.update(f"{name}\0{file_sha256(p)}\n".encode())
        _FOLDER_SHAS[key] = h.hexdigest()
    return _FOLDER_SHAS[key]
