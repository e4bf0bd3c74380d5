"""Offline answer grading: the correctness test of the paper's rejection sampling and evaluation.

Paper sections 3.1 (rejection sampling keeps correct traces), 4 and Appendix B (AIME24/25, MATH500,
GPQA Diamond). The authors graded with an external LLM judge; rsdlib grades offline (field notes,
section 6):

- ``extract_answer(text, delim="</think>")``: the content of the last ``\\boxed{...}`` (or
  ``\\fbox{...}``, braces balanced) in the text after the LAST end-of-thinking delimiter. A response
  that never closes its thinking has no answer (None), reported as "no_answer", apart from "wrong".
- ``answer_matches(answer, gold, kind)``: one extracted answer against the gold, for
  kind "math" (``math-verify``: ``verify(parse(gold), parse(answer))``, gold first), "integer"
  (compared as integers: "033" == "33") or "choice" (gold a letter; "C", "(C)", "C)", "\\text{C}").
- ``is_correct(text, gold, kind)`` = extract + match; ``grade(text, problem)`` -> dict with
  ``status`` in {"correct", "wrong", "no_answer"} and the extracted ``answer``.
- ``grade_many(items, timeout=...)``: many gradings with a hard per-item time limit.

Timeouts: math-verify's own timeouts use ``signal.alarm``, which only works in the main thread of
the main interpreter (not in worker threads, and not reliably in notebooks). rsdlib always calls
``parse(..., parsing_timeout=None)`` and ``verify(..., timeout_seconds=None)``, so every function
here works in any thread, and ``grade_many`` enforces its time limit from outside: each item runs in
a persistent worker process (started with "spawn", so it is safe from threaded parents and Jupyter
kernels) that is killed and replaced when an item overruns; the item is then graded "wrong" with
``timed_out=True``. The worker is started without re-importing the caller's main script, so scripts
need no ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import re
import sys
import threading
from typing import Any, Iterable, Sequence

__all__ = [
    "THINK_END",
    "KINDS",
    "STATUSES",
    "last_boxed",
    "closed_thinking",
    "extract_answer",
    "answer_matches",
    "is_correct",
    "grade",
    "grade_many",
]

THINK_END = "</think>"
KINDS = ("math", "integer", "choice")
STATUSES = ("correct", "wrong", "no_answer")
CHOICE_LETTERS = "ABCDEFGHIJ"

# math-verify logs a warning once when timeouts are disabled; rsdlib disables them on purpose.
logging.getLogger("math_verify").setLevel(logging.ERROR)


# ----------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_SPACE_RE = re.compile(r"\\boxed\s+([^\s${}\\]+)")  # "\boxed 5" (no braces)


def _balanced(text: str, open_at: int) -> str | None:
    """Content of the brace group opening at ``text[open_at] == "{"``, or None if never closed.

    A backslash escapes the next character, so ``\\{`` and ``\\}`` are literal braces.
    """
    depth, i = 0, open_at
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` in ``text`` (braces balanced).

    Nested braces are kept (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); an unclosed last box is
    skipped in favour of the previous complete one. ``\\boxed 5`` (no braces) is read when no braced
    box exists. Returns None when there is no box.
    """
    for match in reversed(list(_BOX_RE.finditer(text))):
        content = _balanced(text, match.end() - 1)
        if content is not None:
            return content.strip()
    spaced = _BOX_SPACE_RE.findall(text)
    return spaced[-1].strip() if spaced else None


def closed_thinking(text: str, delim: str = THINK_END) -> bool:
    """True when the end-of-thinking delimiter occurs in ``text``."""
    return delim in text


def extract_answer(response_text: str, delim: str | None = THINK_END) -> str | None:
    """The final answer of a response: last boxed content after the LAST ``delim``.

    ``delim=None`` searches the whole text (for answers given without a thinking section).
    Returns None when the thinking never closed or there is no box after it.
    """
    if delim is not None:
        cut = response_text.rfind(delim)
        if cut < 0:
            return None
        response_text = response_text[cut + len(delim) :]
    return last_boxed(response_text)


# ----------------------------------------------------------------------------------------------
# Matching one answer against the gold
# ----------------------------------------------------------------------------------------------
_WRAPPERS_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm|mbox|operatorname)\s*\{([^{}]*)\}")


def _strip_latex(s: str) -> str:
    """Light normalisation for string comparisons: text wrappers, $, spaces, \\left/\\right, dots."""
    s = s.strip()
    for _ in range(3):
        s = _WRAPPERS_RE.sub(r"\1", s)
    s = s.replace("$", "").replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    s = s.replace("\\ ", " ").replace("~", " ")
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".").strip()


_CHOICE_RE = re.compile(r"^\(?([A-Ja-j])\)?(?:$|[\s.:)\]])")


def choice_letter(answer: str) -> str | None:
    """The option letter of an answer such as "C", "(C)", "C)", "C.", "\\text{C}", "C: 124°"."""
    s = answer.strip()
    for _ in range(3):
        s = _WRAPPERS_RE.sub(r"\1", s)
    s = s.replace("$", "").replace("\\left", "").replace("\\right", "").strip()
    s = re.sub(r"^\\boxed\s*\{(.*)\}$", r"\1", s).strip()
    m = _CHOICE_RE.match(s)
    if not m:
        return None
    letter = m.group(1)
    # a lone lower-case letter is accepted; lower case followed by more text is prose ("a) ..." is rare)
    return letter.upper()


_INT_RE = re.compile(r"^[+-]?\d+$")


def _as_int(s: str) -> int | None:
    """An integer written plainly: "033", "1,000", "1{,}000", "\\text{33}", "33.", "33.0"; else None."""
    t = _strip_latex(s).replace("{,}", "").replace(",", "")
    t = re.sub(r"\^\{?\\circ\}?$", "", t)  # 30^\circ
    if re.fullmatch(r"[+-]?\d+\.0*", t):
        t = t.split(".")[0]
    return int(t) if _INT_RE.match(t) else None


def _mv_parse(text: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(
        text,
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
        parsing_timeout=None,
    )


def _math_equal(answer: str, gold: str) -> bool:
    """math-verify equivalence, gold first; both wrapped in \\boxed{} so LaTeX is read as LaTeX."""
    from math_verify import verify

    if _strip_latex(answer) == _strip_latex(gold) and _strip_latex(gold):
        return True
    gold_parsed = _mv_parse("\\boxed{" + gold + "}")
    pred_parsed = _mv_parse("\\boxed{" + answer + "}")
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def answer_matches(answer: str | None, gold: str, kind: str) -> bool:
    """Whether an extracted answer equals the gold under the rule of ``kind`` (see module doc)."""
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {KINDS}")
    if answer is None or not str(gold).strip():
        return False
    gold = str(gold)
    if kind == "choice":
        gold_letter = choice_letter(gold)
        if gold_letter is None:
            raise ValueError("a 'choice' gold must be an option letter (A-J)")
        return choice_letter(answer) == gold_letter
    if kind == "integer":
        g, a = _as_int(gold), _as_int(answer)
        if g is not None and a is not None:
            return g == a
        if g is not None:
            # not a plain integer ("\frac{66}{2}", "33 \text{ apples}"): fall back to math equivalence
            return _math_equal(answer, str(g))
    return _math_equal(answer, gold)


def is_correct(response_text: str, gold: str, kind: str, delim: str | None = THINK_END) -> bool:
    """True when the response's final answer (after the last ``delim``) matches ``gold``."""
    return answer_matches(extract_answer(response_text, delim), gold, kind)


def grade(response_text: str, problem: Any, delim: str | None = THINK_END) -> dict:
    """Grade one response against a problem (anything with ``gold`` and ``kind``, or a dict).

    Returns ``{"status": "correct" | "wrong" | "no_answer", "answer": str | None,
    "closed_thinking": bool}``; "no_answer" when the thinking never closed or no box follows it.
    """
    gold, kind = (problem["gold"], problem["kind"]) if isinstance(problem, dict) else (problem.gold, problem.kind)
    answer = extract_answer(response_text, delim)
    closed = True if delim is None else closed_thinking(response_text, delim)
    if answer is None:
        status = "no_answer"
    else:
        status = "correct" if answer_matches(answer, gold, kind) else "wrong"
    return {"status": status, "answer": answer, "closed_thinking": closed}


# ----------------------------------------------------------------------------------------------
# Many gradings with a hard time limit (worker processes, killed on overrun)
# ----------------------------------------------------------------------------------------------
def _worker_loop(conn) -> None:  # runs in the worker process
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if msg is None:
            return
        answer, gold, kind = msg
        try:
            conn.send(("ok", answer_matches(answer, gold, kind)))
        except Exception as exc:  # a malformed gold must not kill the worker
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


_MAIN_LOCK = threading.Lock()


@contextlib.contextmanager
def _hidden_main():
    """Start a spawn child without re-running the parent's ``__main__`` script in it.

    "spawn" normally re-imports the main script in the child (so a script without an
    ``if __name__ == "__main__":`` guard would run again there: load its models, start its own
    job...). The grading worker needs nothing from ``__main__`` (its target lives in this module), so
    the main module's ``__spec__`` and ``__file__`` are hidden while the child starts.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    with _MAIN_LOCK:
        missing = object()
        saved = {name: getattr(main, name, missing) for name in ("__spec__", "__file__")}
        try:
            main.__spec__ = None
            if saved["__file__"] is not missing:
                del main.__file__
            yield
        finally:
            for name, value in saved.items():
                if value is not missing:
                    setattr(main, name, value)


class _Worker:
    """One grading process and the parent's end of its pipe."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_loop, args=(child,), daemon=True, name="rsdlib-grader")
        with _hidden_main():
            self.proc.start()
        child.close()

    def run(self, payload, timeout: float):
        """("ok", bool) | ("error", msg) | ("timeout", None); a timed-out worker is dead afterwards."""
        try:
            self.conn.send(payload)
            if self.conn.poll(timeout):
                return self.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self.kill()
            return ("error", "grading worker died")
        self.kill()
        return ("timeout", None)

    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


_IDLE: list[_Worker] = []
_IDLE_LOCK = threading.Lock()


def _take_worker() -> _Worker:
    with _IDLE_LOCK:
        while _IDLE:
            w = _IDLE.pop()
            if w.alive():
                return w
    return _Worker()


def _return_worker(w: _Worker) -> None:
    if w.alive():
        with _IDLE_LOCK:
            _IDLE.append(w)


@atexit.register
def shutdown_workers() -> None:
    """Stop the idle grading processes (also run at interpreter exit)."""
    with _IDLE_LOCK:
        workers, _IDLE[:] = list(_IDLE), []
    for w in workers:
        try:
            w.conn.send(None)
        except Exception:
            pass
        w.kill()


def grade_many(
    items: Iterable[tuple[str, str, str] | dict],
    *,
    timeout: float | None = 10.0,
    workers: int = 2,
    delim: str | None = THINK_END,
) -> list[dict]:
    """Grade many responses; each item is ``(response_text, gold, kind)`` or a dict with those keys.

    Returns one ``grade``-style dict per item, in order, plus ``timed_out`` (bool) and ``error``
    (str or None). Extraction, "no_answer", letters and plain integers are decided in this process;
    only comparisons that need math-verify go to ``workers`` worker processes, each limited to
    ``timeout`` seconds (an overrun is "wrong" with ``timed_out=True``, its worker replaced).
    ``timeout=None`` grades everything in the calling thread, without a limit.
    """
    rows: list[tuple[str, str, str]] = []
    for item in items:
        if isinstance(item, dict):
            rows.append((item["response_text"], str(item["gold"]), item["kind"]))
        else:
            text, gold, kind = item
            rows.append((text, str(gold), kind))
    results: list[dict | None] = [None] * len(rows)
    pending: list[tuple[int, str, str, str]] = []
    for i, (text, gold, kind) in enumerate(rows):
        if kind not in KINDS:
            raise ValueError(f"item {i}: unknown answer kind {kind!r}; expected one of {KINDS}")
        answer = extract_answer(text, delim)
        closed = True if delim is None else closed_thinking(text, delim)
        base = {"answer": answer, "closed_thinking": closed, "timed_out": False, "error": None}
        if answer is None:
            results[i] = {"status": "no_answer", **base}
        elif timeout is None or kind == "choice" or (
            kind == "integer" and _as_int(gold) is not None and _as_int(answer) is not None
        ):
            try:
                ok = answer_matches(answer, gold, kind)
                results[i] = {"status": "correct" if ok else "wrong", **base}
            except Exception as exc:
                results[i] = {"status": "wrong", **base, "error": f"{type(exc).__name__}: {exc}"}
        else:
            pending.append((i, answer, gold, kind))
            results[i] = base

    if pending:
        queue = list(reversed(pending))
        queue_lock = threading.Lock()

        def drive() -> None:
            worker = _take_worker()
            try:
                while True:
                    with queue_lock:
                        if not queue:
                            return
                        i, answer, gold, kind = queue.pop()
                    tag, value = worker.run((answer, gold, kind), timeout)
                    res = results[i]
                    if tag == "ok":
                        res["status"] = "correct" if value else "wrong"
                    else:
                        res["status"] = "wrong"
                        res["timed_out"] = tag == "timeout"
                        res["error"] = "timed out" if tag == "timeout" else value
                    if not worker.alive():
                        worker = _Worker()
            finally:
                _return_worker(worker)

        threads = [threading.Thread(target=drive, daemon=True) for _ in range(max(1, min(workers, len(pending))))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return results  # type: ignore[return-value]


def summarize_grades(grades: Sequence[dict]) -> dict:
    """Counts of a list of ``grade`` results: correct / wrong / no_answer / timed_out / total."""
    out = {s: sum(g["status"] == s for g in grades) for s in STATUSES}
    out["timed_out"] = sum(bool(g.get("timed_out")) for g in grades)
    out["total"] = len(grades)
    return out
