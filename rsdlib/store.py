"""The append-only store every stage writes through: JSONL files that survive a kill, atomic JSON writes,
run folders claimed by their config, and one writer per run folder.

A long job (trace generation, evaluation) appends one record per finished sample (``append_jsonl``,
fsynced), so an interrupted run resumes where it stopped: ``read_jsonl_resumable`` drops only a torn
final line. Files rewritten as a whole (merged shards, summaries, configs) go through a temporary file
renamed over the old one (``write_json_atomic``, ``write_jsonl_atomic``): every JSON file rsdlib writes goes
through them, so a full disk or a kill leaves the old file or the new one, never a cut one. ``read_json``
names the file in any parse error, and ``explain_os_error`` turns a full disk or a read-only folder into
one line naming the place and what was being written (issue 32). ``claim_folder`` ties a run
folder to one configuration, and ``run_lock`` refuses a second writer. ``folder_sha256`` names a
folder (a trained model) by its content, never by where it lies. Used by rsdlib.traces,
rsdlib.evaluate, rsdlib.distributed and rsdlib.train; this module imports nothing of rsdlib.
"""

from __future__ import annotations

import errno
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


class JsonFileError(ValueError):
    """A JSON file that does not parse (names the file)."""


def read_json(path: Path | str):
    """The parsed content of a JSON file; a file that does not parse (cut short, edited) raises
    JsonFileError naming it, never a bare JSONDecodeError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f", line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise JsonFileError(f"{path}{where}: not valid JSON ({getattr(err, 'msg', err)}): the file was cut short or "
                            "edited; delete it (or rerun with force) to redo what wrote it") from None


def explain_os_error(err: OSError, path: Path | str, what: str) -> OSError:
    """One line for a failed write: "no space left on <path>" (ENOSPC), "<folder> is read-only" / "not writable"
    (EROFS, EACCES, EPERM), saying ``what`` was being written; other errors name the path. Returns an OSError of
    the same errno, to raise ``from None``."""
    path = Path(path)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        message = f"no space left on {path} (the device of {path.parent}) while writing {what}: free space, rerun"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        kind = "read-only" if err.errno == errno.EROFS else "not writable"
        message = (f"{path.parent} is {kind} ({os.strerror(err.errno)}): rsdlib needs to write {what} there "
                   "(make it writable, or point RSDLIB_RESULTS at a writable folder)")
    else:
        message = f"cannot write {what} at {path}: {err.strerror or err}"
    return OSError(err.errno, message)


@contextmanager
def explained_writes(path: Path | str, what: str):
    """Re-raise an OSError of the block (a write under ``path``) as ``explain_os_error``'s one line."""
    try:
        yield
    except OSError as err:
        if err.errno is None:
            raise
        raise explain_os_error(err, path, what) from None


def check_writable(folder: Path | str, what: str) -> Path:
    """``folder``, created, after writing and removing a probe file in it: a read-only, unwritable or full
    place is named (``explain_os_error``, saying ``what`` needed it) before any work starts."""
    folder = Path(folder)
    probe = folder / f".rsdlib-write-probe-{os.getpid()}"
    with explained_writes(probe, what):
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as f:
            f.write("probe")
        probe.unlink()
    return folder


def write_json_atomic(path: Path, data, *, end: str = "", indent: int | None = 2, default=None) -> None:
    """``data`` as JSON (then ``end``), fsynced in a temporary file renamed over ``path``: a full disk or a kill
    leaves the old file or the new one, never a cut one. A failed write names the place (``explain_os_error``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with explained_writes(path, path.name):
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(data, indent=indent, ensure_ascii=False, default=default) + end)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise


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
    problem = conflict(read_json(path))
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
