"""Problem records and benchmark loaders: s1K, s1K-1.1, MATH500, AIME24, AIME25, GPQA Diamond.

Paper sections 3.1 (RSD traces are generated for the 1,000 s1K problems), 4 and Appendix B (the four
evaluation benchmarks) and the "+ s1K-1.1" baseline of Table 1 (DeepSeek-R1 traces).

Every loader returns a list of ``Problem`` (id, question, gold, kind, options, source, meta) with
kind "math" (a LaTeX expression checked by math-verify), "integer" (AIME) or "choice" (GPQA: gold
is the letter of the correct option among ``options``). ``load_benchmark(name)`` reads, in order:

1. a local folder (the ``local_dir`` argument, else the ``RSDLIB_DATA_DIR`` environment variable)
   holding the file named in ``BENCHMARKS`` (field names per file: DATA.md), when the file is there;
2. ``source="shipped"`` (the default, every profile): the pinned copy inside the package,
   ``rsdlib/benchmark_data/`` (MATH500, AIME24, AIME25, s1K gzip-compressed; GPQA Diamond only as
   its authors' password zip), whose sha256 over the ORIGINAL bytes is checked at every load;
   ``source="hub"``: the Hugging Face hub through ``datasets.load_dataset``. s1K-1.1 (the R1 traces)
   is hub-only whatever the source;

and raises ``DatasetUnavailableError`` with one message naming the dataset, the hub id, the local
file expected and the environment variable when nothing works, ``ShippedDataError`` when a shipped
copy fails its checksum. DATA.md (repository root) is the data card: sources, licences, counts,
fields, both checksums of every shipped file, the hub dataset each one mirrors.

s1K: many reference solutions are worked solutions. ``extract_gold`` takes the last ``\\boxed{}``,
else a short solution as-is, else a clearly marked final answer ("Answer: C", "the answer is 7",
or a short expression after the last "=" of the last line); proofs and prose get gold "" and
``meta["gold_extracted"] = False``. ``answer_checkable`` splits a list into (checkable,
unextractable) so callers count and report the second part instead of dropping it silently.

GPQA: the questions must not be published in plain text (its authors' request). The package ships
them only inside ``gpqa_diamond.zip``, encrypted (ZipCrypto) with the password of the official GPQA
release, ``GPQA_ZIP_PASSWORD``, and decrypts them in memory at load: the plain text is never written
to a file. A GPQA problem's id is a hash of its question, ``repr`` shows no question or option text,
and errors and log lines raised here never include it.
Options are shuffled by ``shuffle_choices(problem, sample_index)`` with a seed fixed per
(question id, sample index); ``load_benchmark`` returns the sample-0 order.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import random
import re
import zipfile
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence
from zlib import error as zlib_error

from rsdlib.grading import CHOICE_LETTERS, last_boxed
from rsdlib.paths import data_dir

__all__ = [
    "Problem",
    "BENCHMARKS",
    "DatasetUnavailableError",
    "ShippedDataError",
    "SOURCES",
    "load_benchmark",
    "extract_gold",
    "answer_checkable",
    "shuffle_choices",
    "split_by_hash",
    "easiest",
    "stable_hash",
]

log = logging.getLogger(__name__)

ENV_VAR = "RSDLIB_DATA_DIR"
PRIVATE_SOURCES = ("gpqa_diamond",)  # question text never shown in reprs, logs or errors
SOURCES = ("shipped", "hub")  # where load_benchmark reads a benchmark when no local folder has it
SHIPPED_ROOT = resources.files("rsdlib") / "benchmark_data"  # package data (pyproject.toml: package-data)
# The password of the official GPQA release (github.com/idavidrein/gpqa, dataset.zip). It is public:
# the zip keeps the questions out of plain text online (and out of web crawls), as the authors ask.
GPQA_ZIP_PASSWORD = "deserted-untie-orchid"


@dataclass
class Problem:
    """One problem, common to every benchmark and trace source."""

    id: str  # stable across runs: "math500/test/...", "aime24-60", "gpqa-<hash>", "s1k-17"
    question: str  # the problem statement (for "choice": without the options)
    gold: str  # reference answer; "" when it could not be extracted (s1K)
    kind: str  # "math" | "integer" | "choice"
    options: list[str] | None = None  # "choice": option texts in presentation order (A, B, ...)
    source: str = ""  # benchmark name, e.g. "math500", "gpqa_diamond"
    meta: dict = field(default_factory=dict)  # level/subject (MATH500), trace/attempt (s1K-1.1), ...

    def __post_init__(self) -> None:
        if self.kind not in ("math", "integer", "choice"):
            raise ValueError(f"problem {self.id}: kind must be math|integer|choice, got {self.kind!r}")
        if self.kind == "choice" and self.options is not None:
            if self.gold and self.gold not in CHOICE_LETTERS[: len(self.options)]:
                raise ValueError(f"problem {self.id}: gold letter {self.gold!r} outside the {len(self.options)} "
                                 "options")

    @property
    def private(self) -> bool:
        """True for benchmarks whose text must stay out of logs and committed files (GPQA)."""
        return self.source in PRIVATE_SOURCES or bool(self.meta.get("private"))

    def __repr__(self) -> str:
        if self.private:
            shown = "<hidden>"
            opts = f"<{len(self.options)} hidden>" if self.options is not None else None
        else:
            shown = repr(self.question[:60] + ("..." if len(self.question) > 60 else ""))
            opts = self.options
        return (
            f"Problem(id={self.id!r}, kind={self.kind!r}, gold={self.gold!r}, source={self.source!r}, "
            f"question={shown}, options={opts})"
        )

    __str__ = __repr__

    def question_with_options(self) -> str:
        """The question followed by "(A) ...", "(B) ..." lines for a "choice" problem."""
        if self.kind != "choice" or not self.options:
            return self.question
        lines = [f"({CHOICE_LETTERS[i]}) {opt}" for i, opt in enumerate(self.options)]
        return self.question.rstrip() + "\n\n" + "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Problem":
        return cls(**{k: d[k] for k in ("id", "question", "gold", "kind", "options", "source", "meta") if k in d})


class DatasetUnavailableError(RuntimeError):
    """Neither the local folder nor the requested source could provide a benchmark."""


class ShippedDataError(DatasetUnavailableError):
    """A shipped copy is missing, cannot be decompressed or decrypted, or fails its sha256."""


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def stable_hash(text: str, n: int = 12) -> str:
    """First ``n`` hex digits of sha256(text): the same in every process and on every machine."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


_INT_GOLD = re.compile(r"^[+-]?\d+$")


def _kind_of(gold: str) -> str:
    return "integer" if _INT_GOLD.match(gold.strip()) else "math"


def _field(row: dict, *names: str, what: str, dataset: str) -> Any:
    """First present field among ``names``; the error lists column names only (never values)."""
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise KeyError(f"{dataset}: no {what} field among {names}; the record has columns {sorted(row)}")


def _int_gold(value: Any) -> str:
    """AIME answers: "033" and 33 both become "33"."""
    text = str(value).strip()
    return str(int(text)) if _INT_GOLD.match(text) else text


# ----------------------------------------------------------------------------------------------
# s1K gold extraction
# ----------------------------------------------------------------------------------------------
SHORT_SOLUTION_CHARS = 20  # DATA.md: 373 of the 1000 s1K solutions are shorter (final answers)
_PROOF_END = re.compile(r"(\\blacksquare|\\square|\\Box\b|\\qed|\bQ\.?E\.?D\.?)\s*\$*\\?\)?\s*$", re.IGNORECASE)
_ANSWER_LINE = re.compile(
    r"(?:final answer|the answer is|answer\s*:|answer is)\s*:?\s*(?:is\s*)?(.+?)\s*\.?\s*$", re.IGNORECASE
)
_LETTER_ANSWER = re.compile(r"^\(?([A-J])\)?$")


def _clean_expression(expr: str) -> str:
    """Strip math delimiters, alignment marks and trailing punctuation around a formula."""
    expr = re.sub(r"\\(begin|end)\{[a-z*]+\}|&", " ", expr).strip()
    expr = re.sub(r"^(\$\$|\$|\\\[|\\\()", "", expr)
    expr = re.sub(r"(\$\$|\$|\\\]|\\\))$", "", expr)
    expr = expr.strip().rstrip(".,;").strip()
    return expr


def _looks_like_expression(expr: str, max_chars: int = 60) -> bool:
    """A short formula or number: no run of three or more plain words, balanced braces."""
    if not expr or len(expr) > max_chars:
        return False
    if expr.count("{") != expr.count("}"):
        return False
    bare = re.sub(r"\\[a-zA-Z]+|\{[^{}]*\}", " ", expr)
    return not re.search(r"[A-Za-z]{2,}\s+[A-Za-z]{2,}\s+[A-Za-z]{2,}", bare)


_LAYOUT_LINE = re.compile(r"^(\$\$|\\\[|\\\]|\\(begin|end)\{[a-z*]+\}(\{[^}]*\})?|\\tag\{[^}]*\})$")
_INLINE_MATH = re.compile(r"\$([^$]+)\$|\\\((.+?)\\\)")


def _math_segments(line: str) -> list[tuple[str, int]]:
    """Inline math segments of a line with their end offsets ($...$ and \\(...\\))."""
    return [(m.group(1) or m.group(2) or "", m.end()) for m in _INLINE_MATH.finditer(line)]


def _value_after_equals(expr: str) -> str:
    """The part after the last "=" or "\\approx" of a formula ("t = ... = 10 s" -> "10 s")."""
    return _clean_expression(re.split(r"=|\\approx", expr)[-1])


def extract_gold(solution: str) -> tuple[str, str]:
    """The final answer of a reference solution and the rule that found it.

    Rules, first match wins:

    - "boxed": the last ``\\boxed{}``/``\\fbox{}`` (balanced braces);
    - "short": the whole solution when it is one line shorter than ``SHORT_SOLUTION_CHARS`` ("128",
      "ABC", "167.0");
    - "answer_line": the last line says "Answer: C" / "the (final) answer is X" (a letter, or a short
      formula; "the answer is $8+1=9$" gives "9");
    - "last_equals": the last line ends with a formula "... = value" (a display-math line, or an
      inline segment closing the line that is the only equation of its sentence) and the value is a
      short formula ("t = ... = 1 \\times 10^{14} s" gives "1 \\times 10^{14} s").

    Anything else, including proofs ending in a QED mark and prose conclusions, gives ``("", "none")``.
    """
    text = (solution or "").strip()
    if not text:
        return "", "none"
    boxed = last_boxed(text)
    if boxed:
        return boxed, "boxed"
    if len(text) < SHORT_SOLUTION_CHARS and "\n" not in text:
        return _clean_expression(text), "short"
    lines = []
    closes_display = False  # the last content line is followed by "$$", "\\]" or "\\end{...}"
    for ln in text.splitlines():
        ln = re.sub(r"\\tag\{[^}]*\}|\\\\\s*$", "", ln.strip()).strip()
        if ln and not _LAYOUT_LINE.match(ln):
            lines.append(ln)
            closes_display = False
        elif ln:
            closes_display = closes_display or ln == "$$" or ln.startswith("\\]") or ln.startswith("\\end")
    if not lines:
        return "", "none"
    last = lines[-1]
    if _PROOF_END.search(last):
        return "", "none"
    m = _ANSWER_LINE.search(last)
    if m:
        ans = m.group(1)
        segments = _math_segments(ans)
        if segments:
            ans = segments[-1][0]
        ans = re.sub(r"^\*+|\*+$", "", _clean_expression(ans)).strip()
        if _LETTER_ANSWER.match(ans):
            return _LETTER_ANSWER.match(ans).group(1), "answer_line"
        if "=" in ans:
            ans = _value_after_equals(ans)
        if "$" not in ans and re.search(r"\d|\\[a-zA-Z]", ans) and _looks_like_expression(ans):
            return ans, "answer_line"
        return "", "none"
    segments = _math_segments(last)
    if segments:
        formula, end = segments[-1]
        if last[end:].strip(" .,;") != "":
            return "", "none"  # prose after the last formula
        sentence_start = max(last.rfind(". ", 0, end - len(formula) - 2), 0)
        equations = [seg for seg, e in segments if e > sentence_start and ("=" in seg or "\\approx" in seg)]
        if len(equations) != 1:
            return "", "none"  # no equation, or several results in one sentence ("c_1 = ... and c_2 = ...")
    elif closes_display and "$" not in last:
        formula = last  # the last line of a display-math block
    else:
        return "", "none"
    if "=" in formula or "\\approx" in formula:
        value = _value_after_equals(formula)
        if value and "$" not in value and _looks_like_expression(value, max_chars=40):
            return value, "last_equals"
    return "", "none"


def _s1k_problem(index: int, question: str, solution: str, source: str, meta: dict) -> Problem:
    gold, rule = extract_gold(solution)
    kind = _kind_of(gold) if gold else "math"
    if gold and rule == "answer_line" and _LETTER_ANSWER.match(gold):
        kind = "choice"  # "Answer: C" for a question whose options are written in its text
    meta = {**meta, "solution": solution, "gold_extracted": bool(gold), "gold_rule": rule}
    # s1K and s1K-1.1 share one id space (issue 12): the same question is "s1k-<index>" in both, so
    # an s1K-1.1 reference trace pairs with the RSD trace of its problem (Figures 5 and 7)
    return Problem(id=f"s1k-{index}", question=question, gold=gold, kind=kind, options=None, source=source, meta=meta)


def answer_checkable(problems: Iterable[Problem]) -> tuple[list[Problem], list[Problem]]:
    """Split into (problems with a gold answer, problems whose gold could not be extracted)."""
    checkable, unextractable = [], []
    for p in problems:
        (checkable if p.gold.strip() and p.meta.get("gold_extracted", True) else unextractable).append(p)
    return checkable, unextractable


# ----------------------------------------------------------------------------------------------
# GPQA options
# ----------------------------------------------------------------------------------------------
def gpqa_id(question: str) -> str:
    """Stable id of a GPQA question (hash of its whitespace-normalised text)."""
    return "gpqa-" + stable_hash(" ".join(question.split()))


def shuffle_choices(problem: Problem, sample_index: int, seed: int = 0) -> Problem:
    """A copy of a "choice" problem with its options in the order of sample ``sample_index``.

    The order depends only on (problem id, sample index, seed), never on earlier shuffles: it is
    drawn from ``meta["answer_options"]`` (correct option first, then the incorrect ones). The
    returned problem's ``gold`` is the letter of the correct option and ``meta["sample_index"]``
    records the sample.
    """
    canonical = problem.meta.get("answer_options")
    if problem.kind != "choice" or not canonical:
        raise ValueError(f"problem {problem.id}: shuffle_choices needs a choice problem with meta['answer_options']")
    rng = random.Random(int(stable_hash(f"{problem.id}|{sample_index}|{seed}", 16), 16))
    order = list(range(len(canonical)))
    rng.shuffle(order)
    options = [canonical[j] for j in order]
    gold = CHOICE_LETTERS[order.index(0)]
    return replace(problem, options=options, gold=gold, meta={**problem.meta, "sample_index": sample_index})


# ----------------------------------------------------------------------------------------------
# Per-benchmark record conversion (hub rows and local rows)
# ----------------------------------------------------------------------------------------------
def _math500(rows: Sequence[dict]) -> list[Problem]:
    out = []
    for i, r in enumerate(rows):
        gold = str(_field(r, "answer", what="answer", dataset="math500")).strip()
        meta = {"level": int(r["level"]) if r.get("level") is not None else None, "subject": r.get("subject")}
        if r.get("solution"):
            meta["solution"] = r["solution"]  # the worked solution (the offline stand-in for s1K-1.1 traces)
        out.append(
            Problem(
                id="math500/" + str(r.get("unique_id", i)),
                question=_field(r, "problem", what="question", dataset="math500"),
                gold=gold,
                kind=_kind_of(gold),
                source="math500",
                meta=meta,
            )
        )
    return out


def _aime(name: str):
    def convert(rows: Sequence[dict]) -> list[Problem]:
        out = []
        for i, r in enumerate(rows):
            gold = _int_gold(_field(r, "answer", "Answer", what="answer", dataset=name))
            rid = r.get("id", r.get("ID", i))
            out.append(
                Problem(
                    id=f"{name}-{rid}",
                    question=_field(r, "problem", "question", "Problem", what="question", dataset=name),
                    gold=gold,
                    kind=_kind_of(gold),
                    source=name,
                    meta={k: r[k] for k in ("url", "year") if r.get(k) is not None},
                )
            )
        return out

    return convert


def _gpqa(rows: Sequence[dict], seed: int = 0) -> list[Problem]:
    out = []
    for r in rows:
        question = str(_field(r, "Question", what="question", dataset="gpqa_diamond")).strip()
        correct = str(_field(r, "Correct Answer", what="correct answer", dataset="gpqa_diamond")).strip()
        wrong = [str(_field(r, f"Incorrect Answer {j}", what="incorrect answer", dataset="gpqa_diamond")).strip()
                 for j in (1, 2, 3)]
        meta = {"answer_options": [correct, *wrong], "private": True}
        for k in ("Record ID", "Subdomain", "High-level domain"):
            if r.get(k) is not None:
                meta[k.lower().replace(" ", "_").replace("-", "_")] = r[k]
        base = Problem(id=gpqa_id(question), question=question, gold="A", kind="choice", options=[correct, *wrong],
                       source="gpqa_diamond", meta=meta)
        out.append(shuffle_choices(base, 0, seed))
    return out


def _s1k(rows: Sequence[dict]) -> list[Problem]:
    out = []
    for i, r in enumerate(rows):
        idx = r.get("id", i)
        meta = {k: r[k] for k in ("source_type", "cot_type") if r.get(k)}
        out.append(
            _s1k_problem(
                int(idx) if str(idx).isdigit() else i,
                _field(r, "question", "problem", what="question", dataset="s1k"),
                str(_field(r, "solution", what="solution", dataset="s1k")),
                "s1k",
                meta,
            )
        )
    return out


def _s1k_11(rows: Sequence[dict]) -> list[Problem]:
    out = []
    for i, r in enumerate(rows):
        meta = {k: r[k] for k in ("source_type", "cot_type") if r.get(k)}
        meta["trace"] = _field(r, "deepseek_thinking_trajectory", what="R1 trace", dataset="s1k-1.1")
        meta["attempt"] = _field(r, "deepseek_attempt", what="R1 attempt", dataset="s1k-1.1")
        out.append(
            _s1k_problem(i, _field(r, "question", "problem", what="question", dataset="s1k-1.1"),
                         str(_field(r, "solution", what="solution", dataset="s1k-1.1")), "s1k-1.1", meta)
        )
    return out


@dataclass(frozen=True)
class ShippedFile:
    """A pinned copy of a benchmark file inside the package (``rsdlib/benchmark_data/``)."""

    name: str  # file in rsdlib/benchmark_data: "<local_file>.gz", or a password zip holding <local_file>
    sha256: str  # of the ORIGINAL bytes (the uncompressed local_file), checked at every load
    archive_sha256: str  # of the shipped .gz / .zip itself (DATA.md; tests check it)
    password: str | None = None  # zip password (GPQA); None: a gzip file

    def __post_init__(self) -> None:
        for what in ("sha256", "archive_sha256"):
            if not re.fullmatch(r"[0-9a-f]{64}", getattr(self, what)):
                raise ValueError(f"shipped file {self.name}: {what} must be 64 lowercase hex digits")
        if self.password is None and not self.name.endswith(".gz"):
            raise ValueError(f"shipped file {self.name}: a file without a password must be a .gz")


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives: hub id(s) (with config and split), the local file name, the shipped copy."""

    hub: tuple[tuple[str, str | None, str], ...]  # (hub id, config, split), tried in order
    local_file: str | None  # file name in the local folder (None: hub only)
    convert: Any  # rows -> list[Problem]
    shipped: ShippedFile | None = None  # pinned copy in the package (None: hub only, s1K-1.1)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "math500": BenchmarkSpec(
        (("HuggingFaceH4/MATH-500", None, "test"),), "math500.jsonl", _math500,
        ShippedFile("math500.jsonl.gz", "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
                    "a189eda6d3efdafb3d8654f086b0b964480be73b9fd29b48b057d4d4043f254c"),
    ),
    "aime24": BenchmarkSpec(
        (("simplescaling/aime24_nofigures", None, "train"),), "aime24.jsonl", _aime("aime24"),
        ShippedFile("aime24.jsonl.gz", "66ccede21ab71f1170c8d0d575603d6f82989a5d8e26952f9d1d4324b2e526d8",
                    "84c5f4e27a994d5e1cb48a3a26a3e3d7c3735a2004afe5f82da167d5e3909711"),
    ),
    "aime25": BenchmarkSpec(
        (
            ("simplescaling/aime25_nofigures", None, "train"),
            ("opencompass/AIME2025", "AIME2025-I+AIME2025-II", "test"),
        ),
        "aime25.jsonl",
        _aime("aime25"),
        ShippedFile("aime25.jsonl.gz", "d8538a5a10c511a03558a2d6cef8d5a0e3012d0505a45c06f9caab715c966ca3",
                    "488b7f05af3f6c50a75ef468c4e3f92382c41ed2805c834ceec2c0152a8fa97d"),
    ),
    "gpqa_diamond": BenchmarkSpec(
        (("Idavidrein/gpqa", "gpqa_diamond", "train"),), "gpqa_diamond.jsonl", _gpqa,
        ShippedFile("gpqa_diamond.zip", "a783322254b5ab9c436a286e2cd964d9848c77eabeab8afb813edc7478ce1f51",
                    "d7a55f12fcf972e4bb669dfa54919be9aa3e69d0875a75e77aac2a5043b2c2fc", password=GPQA_ZIP_PASSWORD),
    ),
    "s1k": BenchmarkSpec(
        (("simplescaling/s1K", None, "train"),), "s1k.json", _s1k,
        ShippedFile("s1k.json.gz", "1edd685af28743cab508e891d6abe22f174edec61dc3a66895673b2a41b51cf5",
                    "83736a57791236dd5eff5a8b8c2e3fe0e50f4629256aea5b2ee80f81e441cd60"),
    ),
    "s1k-1.1": BenchmarkSpec((("simplescaling/s1K-1.1", None, "train"),), "s1k-1.1.jsonl", _s1k_11),
}


def _parse_rows(text: str, where: str) -> list[dict]:
    """Rows of a benchmark file: a JSON list/dict (``.json``) or one JSON object per line.

    A malformed file names ``where`` (the file) and the line, never its text (GPQA).
    """
    if where.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}, line {err.lineno}: not valid JSON ({err.msg}, column {err.colno})") from None
        return list(data.values()) if isinstance(data, dict) else list(data)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}, line {number}: not valid JSON ({err.msg}, column {err.colno})") from None
    return rows


def _read_local(path: Path) -> list[dict]:
    """Rows of a local benchmark file; a malformed one names the file and line."""
    return _parse_rows(path.read_text(encoding="utf-8"), str(path))


def shipped_bytes(name: str) -> bytes:
    """The original bytes of benchmark ``name``'s shipped copy, decompressed (or decrypted) in memory.

    Raises ``ShippedDataError`` (naming the file and both checksums, never its content) when the copy
    is missing, unreadable or its sha256 differs from the one pinned in ``BENCHMARKS``. For GPQA the
    returned bytes are the plain questions: keep them in memory, never write or log them.
    """
    spec = BENCHMARKS[name]
    shipped = spec.shipped
    if shipped is None:
        raise ShippedDataError(f"benchmark {name!r} has no shipped copy (hub only)")
    where = SHIPPED_ROOT / shipped.name
    try:
        blob = where.read_bytes()
    except OSError as exc:
        raise ShippedDataError(f"shipped copy {where} of {name!r} is missing ({type(exc).__name__}): "
                               f"reinstall rsdlib, or load it with source='hub' or local_dir=...") from None
    try:
        if shipped.password is not None:
            with zipfile.ZipFile(io.BytesIO(blob)) as archive:
                raw = archive.read(spec.local_file, pwd=shipped.password.encode("ascii"))
        else:
            raw = gzip.decompress(blob)
    except (OSError, EOFError, KeyError, RuntimeError, zipfile.BadZipFile, zlib_error) as exc:
        raise ShippedDataError(f"shipped copy {where} of {name!r} cannot be read: {type(exc).__name__}: "
                               f"{str(exc)[:200]}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != shipped.sha256:
        raise ShippedDataError(
            f"shipped copy {where} of {name!r}: sha256 of the original {spec.local_file} is {digest}, expected "
            f"{shipped.sha256} (DATA.md; archive sha256 {shipped.archive_sha256}): the file was altered. "
            f"Reinstall rsdlib, or load it with source='hub' or local_dir=..."
        )
    return raw


def _read_shipped(name: str) -> list[dict]:
    return _parse_rows(shipped_bytes(name).decode("utf-8"), BENCHMARKS[name].local_file)


def _read_hub(hub_id: str, config: str | None, split: str) -> list[dict]:
    import datasets

    configs = config.split("+") if config else [None]
    rows: list[dict] = []
    for cfg in configs:  # opencompass/AIME2025 keeps parts I and II in two configs
        ds = datasets.load_dataset(hub_id, cfg, split=split) if cfg else datasets.load_dataset(hub_id, split=split)
        rows.extend(dict(r) for r in ds)
    return rows


def _refuse_duplicate_ids(problems: Sequence[Problem], origin: str) -> None:
    """Problem ids (``unique_id`` / ``id`` / row index) key every sample and grade: two rows with one id would mix
    their samples silently. Names the file, the id and the rows (never the text: GPQA)."""
    rows: dict[str, list[int]] = {}
    for index, p in enumerate(problems):
        rows.setdefault(p.id, []).append(index + 1)
    repeated = {pid: where for pid, where in rows.items() if len(where) > 1}
    if repeated:
        pid, where = next(iter(repeated.items()))
        raise ValueError(f"{origin}: problem id {pid!r} (its unique_id / id field) is in rows "
                         f"{', '.join(map(str, where))}; each problem needs its own id ({len(repeated)} repeated "
                         "id(s) in all): fix the file")


def load_benchmark(
    name: str,
    *,
    source: str = "shipped",
    local_dir: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Problem]:
    """Problems of benchmark ``name`` (one of ``BENCHMARKS``): local folder, else ``source``.

    source: "shipped" (default): the pinned, sha256-checked copy inside the package (s1K-1.1 has
      none and is read from the hub); "hub": the Hugging Face dataset the paper used.
    local_dir: folder holding the benchmark's local file (default: ``$RSDLIB_DATA_DIR``); it wins
      over ``source`` when the file is there.
    split: hub split (default: the benchmark's own, e.g. "test" for MATH-500); files have one.
    limit: keep the first ``limit`` problems (file order).
    seed: salt of the GPQA option shuffle (sample 0 order); other benchmarks ignore it.
    """
    key = name.lower().replace("-", "_").replace(" ", "_")
    aliases = {"s1k_1.1": "s1k-1.1", "s1k_11": "s1k-1.1", "gpqa": "gpqa_diamond", "math_500": "math500"}
    key = aliases.get(key, key)
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES} (the copy shipped in rsdlib, or the hub), got {source!r}")
    spec = BENCHMARKS[key]
    folder = Path(local_dir).expanduser() if local_dir is not None else data_dir()

    rows: list[dict] | None = None
    origin = None
    failures: list[str] = []
    if folder is not None and spec.local_file is not None:
        path = folder / spec.local_file
        if path.is_file():
            rows, origin = _read_local(path), str(path)
        else:
            failures.append(f"no local file {path}")
    if rows is None and source == "shipped" and spec.shipped is not None:
        rows, origin = _read_shipped(key), f"shipped:{spec.local_file}"  # ShippedDataError when altered
    if rows is None:
        for hub_id, config, default_split in spec.hub:
            try:
                rows = _read_hub(hub_id, config, split or default_split)
                origin = f"hub:{hub_id}"
                break
            except Exception as exc:  # offline, gated, missing: report all, never the data
                first = str(exc).splitlines()[0][:200] if str(exc) else ""
                failures.append(f"hub {hub_id}: {type(exc).__name__}: {first}")
    if rows is None:
        hubs = " or ".join(h for h, _, _ in spec.hub)
        gated = " (gated: accept its terms on the hub, then `huggingface-cli login`)" if key == "gpqa_diamond" else ""
        local_hint = (
            f"or put {spec.local_file!r} in a folder and pass local_dir=... or set {ENV_VAR}"
            if spec.local_file
            else "(it has no local-file option)"
        )
        shipped_hint = " or load the copy shipped in rsdlib (source='shipped', the default)" if spec.shipped else ""
        raise DatasetUnavailableError(
            f"benchmark {key!r} is unavailable: load the hub dataset {hubs}{gated} (network or HF cache) "
            f"{local_hint}{shipped_hint}. Tried: {'; '.join(failures)}"
        )
    if failures:
        log.info("%s: %s; read %s instead", key, "; ".join(failures), origin)
    problems = spec.convert(rows, seed) if key == "gpqa_diamond" else spec.convert(rows)
    _refuse_duplicate_ids(problems, origin)
    for p in problems:
        p.meta["loaded_from"] = origin
    log.info("loaded %d %s problems from %s", len(problems), key, origin)
    return problems[:limit] if limit is not None else problems


# ----------------------------------------------------------------------------------------------
# Deterministic subsets
# ----------------------------------------------------------------------------------------------
def split_by_hash(problems: Sequence[Problem], fraction: float, salt: str = "") -> tuple[list[Problem], list[Problem]]:
    """Disjoint (a, b): a problem is in ``a`` when the hash of (salt, id) falls below ``fraction``.

    Membership depends only on the id and the salt, so it is stable across runs, orders and subsets
    (used to keep trace-generation and evaluation problems apart in the demo).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    a, b = [], []
    for p in problems:
        u = int(stable_hash(f"{salt}|{p.id}", 15), 16) / 16**15
        (a if u < fraction else b).append(p)
    return a, b


def easiest(problems: Sequence[Problem], n: int) -> list[Problem]:
    """The ``n`` lowest-level MATH500 problems (``meta["level"]``); ties keep file order."""
    missing = [p.id for p in problems if p.meta.get("level") is None]
    if missing:
        raise ValueError(f"easiest() needs meta['level'] (MATH500); {len(missing)} problems lack it, e.g. {missing[0]}")
    return sorted(problems, key=lambda p: p.meta["level"])[:n]


def select_problems(benchmark: str, n: int = 0, *, pick: str = "first", split: str = "all",
                    split_fraction: float = 0.5, split_salt: str = "rsdlib", require_gold: bool = True,
                    skip_diagrams: bool = False, source: str = "shipped") -> list:
    """A profile's problems: ``split`` "trace" / "eval" are the two disjoint halves of ``split_by_hash``
    (trace generation and evaluation never share a problem), "all" the whole benchmark; then ``pick``
    "first" (file order) or "easiest" (lowest MATH500 level) ``n`` problems (0 = all).
    ``skip_diagrams`` leaves out problems drawn with Asymptote code (``[asy]``), hard for text models.
    ``source``: "shipped" (the pinned copy in rsdlib, default) or "hub" (``rsdlib.data.load_benchmark``).
    """
    if pick not in ("first", "easiest"):
        raise ValueError(f"pick must be 'first' or 'easiest', got {pick!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n_problems must be an integer >= 0 (0 = every problem), got {n!r}")
    if split not in ("all", "trace", "eval"):
        raise ValueError(f"split must be 'all', 'trace' or 'eval', got {split!r}")
    problems = load_benchmark(benchmark, source=source)
    if require_gold:
        problems, _ = answer_checkable(problems)
    if split != "all":
        trace_part, eval_part = split_by_hash(problems, split_fraction, salt=split_salt)
        problems = trace_part if split == "trace" else eval_part
    if skip_diagrams:
        problems = [p for p in problems if "[asy]" not in p.question]
    if n:
        problems = easiest(problems, n) if pick == "easiest" else problems[:n]
    if not problems:
        raise ValueError(f"no {benchmark} problems selected (split {split!r}, split_fraction {split_fraction}, "
                         f"split_salt {split_salt!r}, n {n}, skip_diagrams {skip_diagrams}): nothing to run. "
                         "Check split_fraction (0 leaves the trace half empty, 1 the eval half) and n_problems.")
    return problems
