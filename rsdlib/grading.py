"""Offline answer grading: the correctness test of the paper's rejection sampling and evaluation.

Paper sections 3.1 (rejection sampling keeps correct traces), 4 and Appendix B (AIME24/25, MATH500,
GPQA Diamond). The authors graded with an external LLM judge; rsdlib grades offline, reading answers
the way the field's standard extractor does (field notes, section 6).

Where the answer is read (``answer_from``, a per-model setting; ``answer_region``):

- ``"after_thinking"``: the text after the LAST end-of-thinking delimiter (``</think>``). A response
  that never closes its thinking has no answer: status "no_answer", never "wrong".
- ``"whole"``: the whole response, for models that do not think (Table 4's base
  Llama-3.2-1B-Instruct row).
- ``"auto"`` (``resolve_answer_from``): ``"after_thinking"`` when the model thinks, i.e. the prompt
  opens a thinking section (``PromptStyle.think_open`` non-empty) or the tokenizer spells the
  delimiter as one token (Qwen3, R1-distill); ``"whole"`` otherwise. Thinking is decided per model,
  never per response, so a thinking model that never closes its thinking stays "no answer".

How the answer is read (``answer_format``; ``extract``):

- ``"standard"`` (default). For "math" and "integer": math-verify's ``parse`` extraction with
  ``LatexExtractionConfig(boxed_match_priority=0)`` and ``ExprExtractionConfig()``: boxed answers
  first, then the anchored forms ("final answer is ...", "Answer: ...", "the answer is ..."), then
  the last LaTeX or plain expression. Like math-verify, the last box is read together with the
  boxes just before it (less than 10 characters apart, or less than 70 across a comma, "and", "or"
  or ";"): ``\\boxed{(1,2)}, \\boxed{(2,1)}`` is one answer, judged whole.
  For "choice" (GPQA letters), in this order, the first rule that finds a letter deciding (within a
  rule, the last occurrence in the text):
    1. ``\\boxed{X}`` (also ``\\boxed{(X)}``, ``\\boxed{\\text{Option X}}``, ``\\boxed{X) ...}``);
    2. "Answer: X" / "Answer: (X)" (also "Final Answer:", "**Answer:** X");
    3. "the answer is X" ("correct answer/option/choice is", "would be", "I choose X");
    4. "Option X" ending a line or sentence, or "Option X is correct/the answer"; ``\\text{Option X}``;
    5. a line holding only the letter ("C", "(C)", "**C**", "C.").
  Letters are A-D (A-J when the gold is later). A lower-case letter counts only where it cannot
  be a word: in a box, in parentheses, or ending its clause ("answer: c."); "the answer is a
  prime" and "a = 5" are not letters. An answer naming two letters ("A and B", "(B) or (C)",
  ``\\boxed{A}, \\boxed{B}``) is refused: read as that text, matched to no letter ("wrong").
- ``"boxed"``: strict reading: only the content of the last complete ``\\boxed{}``/``\\fbox{}``.

The tiers reuse math-verify's own regex tables (``math_verify.parser``, tested with 0.9.0), so each
tier reads exactly as ``parse`` does; should those internals move, rsdlib falls back to ``parse``
itself and infers the tier from the text (a box present, else an "answer" anchor).

``extract`` also says how the answer was found (``FOUND``): "boxed", "stated" (an anchored form,
rules 2-4 for letters), "last_expression" (the last expression; rule 5 for letters) or "none".
Evaluation summaries count these per model and benchmark, so a model that stops boxing shows.

Matching (``answer_matches``; ``grade``): "math": ``verify(parse(gold), answer)`` (gold first);
"integer": as integers when both are plain integers ("033" == "33"; "1,000" == "1000" with proper
thousands groups, never "1,2" == 12, "3, 4" == 34 or "1 2" == 12), else math-verify; "choice":
the letters. ``grade(text, problem)`` -> dict with ``status`` in {"correct", "wrong", "no_answer"},
``answer`` and ``found``; ``grade_many(items, timeout=...)``: many gradings with a hard limit.

Timeouts: math-verify's own timeouts use ``signal.alarm``, which only works in the main thread of
the main interpreter (not in worker threads, and not reliably in notebooks). rsdlib always calls
math-verify with ``parsing_timeout=None`` and ``timeout_seconds=None``, so every function here works
in any thread, and ``grade_many`` enforces its time limit from outside: every item that needs
math-verify (extraction and comparison: both can hang in sympy) runs in a persistent worker process
(started with "spawn", so it is safe from threaded parents and Jupyter kernels) that is killed and
replaced when an item overruns; the item is then graded "wrong" with ``timed_out=True``. The worker
is started without re-importing the caller's main script, so scripts need no
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import re
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

__all__ = [
    "THINK_END",
    "KINDS",
    "STATUSES",
    "ANSWER_FORMATS",
    "ANSWER_FROM",
    "FOUND",
    "GRADING_VERSION",
    "Extraction",
    "last_boxed",
    "closed_thinking",
    "answer_region",
    "resolve_answer_from",
    "extract",
    "extract_answer",
    "choice_letter",
    "answer_key",
    "answer_matches",
    "is_correct",
    "grade",
    "grade_many",
    "summarize_grades",
    "TRUSTED_GOLD_RULES",
    "gold_trust",
]

THINK_END = "</think>"
KINDS = ("math", "integer", "choice")
STATUSES = ("correct", "wrong", "no_answer")
ANSWER_FORMATS = ("standard", "boxed")  # how the answer is read
ANSWER_FROM = ("auto", "after_thinking", "whole")  # where the answer is read
FOUND = ("boxed", "stated", "last_expression", "none")  # how the answer was found
GRADING_VERSION = 2  # stored with graded rows; rows graded by another version are re-graded
CHOICE_LETTERS = "ABCDEFGHIJ"
OPTION_LETTERS = "ABCD"  # GPQA's four options (rsdlib.prompts.LETTERS)

# math-verify logs a warning once when timeouts are disabled; rsdlib disables them on purpose.
logging.getLogger("math_verify").setLevel(logging.ERROR)


# ----------------------------------------------------------------------------------------------
# Where the answer is read
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


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """Every complete ``\\boxed{...}``/``\\fbox{...}``: (start, end, content), in text order."""
    out = []
    for match in _BOX_RE.finditer(text):
        content = _balanced(text, match.end() - 1)
        if content is not None:
            out.append((match.start(), match.end() + len(content) + 1, content.strip()))
    return out


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` in ``text`` (braces balanced).

    Nested braces are kept (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); an unclosed last box is
    skipped in favour of the previous complete one. ``\\boxed 5`` (no braces) is read when no braced
    box exists. Returns None when there is no box.
    """
    boxes = _boxes(text)
    if boxes:
        return boxes[-1][2]
    spaced = _BOX_SPACE_RE.findall(text)
    return spaced[-1].strip() if spaced else None


def closed_thinking(text: str, delim: str = THINK_END) -> bool:
    """True when the end-of-thinking delimiter occurs in ``text``."""
    return delim in text


def _check_answer_from(answer_from: str) -> None:
    if answer_from not in ANSWER_FROM:
        raise ValueError(f"answer_from must be one of {ANSWER_FROM}, got {answer_from!r}")


def answer_region(response_text: str, answer_from: str = "after_thinking", delim: str | None = THINK_END) -> str | None:
    """The part of a response its answer is read from (module docstring), or None when there is none.

    ``"after_thinking"``: the text after the LAST ``delim``, None when the thinking never closed
    (``delim=None`` reads the whole text). ``"whole"``: the whole response. ``"auto"`` needs the
    model: resolve it first with ``resolve_answer_from``.
    """
    _check_answer_from(answer_from)
    if answer_from == "auto":
        raise ValueError("answer_from='auto' depends on the model: resolve it with resolve_answer_from(...) first")
    if answer_from == "whole" or delim is None:
        return response_text
    cut = response_text.rfind(delim)
    if cut < 0:
        return None
    return response_text[cut + len(delim) :]


def resolve_answer_from(answer_from: str, *, think_open: str = "<think>", think_close: str = THINK_END,
                        tokenizer: Any = None) -> str:
    """``"after_thinking"`` or ``"whole"`` for one model; an explicit choice is returned unchanged.

    ``"auto"``: the model thinks (answers are read after its thinking) when the prompt opens a
    thinking section (``think_open`` non-empty) or its tokenizer spells ``think_close`` as one token;
    otherwise it answers directly and the whole response is read.
    """
    _check_answer_from(answer_from)
    if answer_from != "auto":
        return answer_from
    if think_open:
        return "after_thinking"
    if tokenizer is not None and think_close:
        try:
            ids = tokenizer(think_close, add_special_tokens=False)["input_ids"]
        except Exception:  # a tokenizer that cannot encode it does not think with it
            ids = []
        if len(ids) == 1:
            return "after_thinking"
    return "whole"


# ----------------------------------------------------------------------------------------------
# Reading the answer: math and integers (math-verify's extraction, in tiers)
# ----------------------------------------------------------------------------------------------
@dataclass
class Extraction:
    """One response's answer as read by ``extract``."""

    answer: str | None  # the answer as text (None: no answer found)
    found: str  # how: one of FOUND
    closed_thinking: bool  # the end-of-thinking delimiter occurs in the response
    parsed: list = field(default_factory=list, repr=False)  # math-verify's parse result (math kinds, standard format)
    letter: str | None = None  # the option letter read (choice), None when none or two letters


_MV_CONFIG = None
_MV_TIERS = None


def _mv_config():
    global _MV_CONFIG
    if _MV_CONFIG is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig

        _MV_CONFIG = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return _MV_CONFIG


def _mv_tiers():
    """math-verify's extraction regexes for ``_mv_config()``, split into rsdlib's three tiers.

    Each tier is math-verify's ``target_res`` structure: ``[(patterns, target_config), ...]``, the
    patterns ``[(compiled_regex, priority), ...]``. Boxed: the priority-0 patterns reading
    ``\\boxed``; stated: the other anchored patterns (priority < 300); last_expression: the
    unanchored ones (priority 300). Within a tier math-verify's priorities still apply.
    """
    global _MV_TIERS
    if _MV_TIERS is None:
        from math_verify.parser import get_extraction_regexes

        tiers: dict[str, list] = {"boxed": [], "stated": [], "last_expression": []}
        for patterns, target in get_extraction_regexes(_mv_config()):
            split: dict[str, list] = {name: [] for name in tiers}
            for pattern, priority in patterns:
                if priority >= 300:
                    split["last_expression"].append((pattern, priority))
                elif "boxed" in pattern.pattern:
                    split["boxed"].append((pattern, priority))
                else:
                    split["stated"].append((pattern, priority))
            for name, pats in split.items():
                if pats:
                    tiers[name].append((pats, target))
        _MV_TIERS = tiers
    return _MV_TIERS


def _mv_extract_tier(text: str, target_res) -> tuple[Any, str | None]:
    """math-verify's ``extract_target_from_pred`` loop on one tier: (parsed or None, first matched string).

    Priority groups in order; within a group the rightmost match first; the first match that
    parses wins (math-verify's ``extraction_mode="any_match"``).
    """
    from itertools import groupby

    from math_verify.parser import extract_match

    all_patterns = sorted(((p, t, prio) for pats, t in target_res for p, prio in pats), key=lambda x: x[2])
    first_string = None
    for _, group in groupby(all_patterns, key=lambda x: x[2]):
        matches = [(m, target) for pattern, target, _ in group for m in pattern.finditer(text)]
        matches.sort(key=lambda x: (x[0].end(), -x[0].start()), reverse=True)
        for match, target in matches:
            parsed, as_string = extract_match(match, target)
            if first_string is None and as_string:
                first_string = as_string
            if parsed is not None:
                return parsed, str(as_string)
    return None, first_string


def _extract_math(region: str) -> tuple[str | None, str, list]:
    """(answer text, found, parse result) by math-verify's extraction: boxed, then stated, then the last expression.

    The parse result is what ``math_verify.parse`` would return (``[value, string]``; ``[string]``
    when nothing parsed but something matched, as ``fallback_mode="first_match"``; ``[]`` when
    nothing matched). ``\\fbox`` is read as ``\\boxed``.
    """
    text = re.sub(r"\\fbox\s*\{", r"\\boxed{", region)
    try:
        tiers = _mv_tiers()
    except (ImportError, AttributeError):  # math-verify's internals moved: its public parse, tier guessed
        parsed = _mv_parse(text)
        if not parsed:
            return None, "none", []
        found = "boxed" if _boxes(text) else "stated" if re.search(r"(?i)answer", text) else "last_expression"
        return str(parsed[-1]), found, parsed
    fallback: tuple[str, str] | None = None
    for found, target_res in tiers.items():
        parsed, as_string = _mv_extract_tier(text, target_res)
        if parsed is not None:
            return as_string, found, [parsed, as_string]
        if as_string and fallback is None:
            fallback = (as_string, found)
    if fallback is not None:
        return fallback[0], fallback[1], [fallback[0]]
    return None, "none", []


# ----------------------------------------------------------------------------------------------
# Reading the answer: option letters
# ----------------------------------------------------------------------------------------------
_WRAPPERS_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|textrm|mbox|operatorname|emph)\s*\{([^{}]*)\}")
_END = r"(?=$|[\s.,:;!?)\]}]|\Z)"  # what may follow a letter


def _plain(text: str) -> str:
    """Letters' view of a text: text wrappers unwrapped, markdown emphasis and math delimiters removed."""
    s = text
    for _ in range(3):
        s = _WRAPPERS_RE.sub(r"\1", s)
    s = s.replace("**", "").replace("__", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    return s.replace("\\left", "").replace("\\right", "")


def _letter_pattern(letters: str) -> str:
    cls = "".join(letters) + "".join(letters).lower()
    return rf"(?P<open>\(\s*)?(?P<letter>[{cls}])(?(open)\s*\))"


def _second_letter_re(letters: str) -> re.Pattern:
    """What follows a first letter when the answer names two: ", B", " and (C)", " or option D", "/B".

    The second letter is upper case, or in parentheses: ", a classic result" names no second letter.
    """
    up, low = "".join(letters).upper(), "".join(letters).lower()
    return re.compile(r"\s*(?i:,\s*(?:and|or)\b|,|/|&|\band\b|\bor\b)\s*(?i:(?:options?|choices?)\s*)?"
                      r"(?:\(\s*[" + up + low + r"]\s*\)|[" + up + r"])" + _END)


def _judge_letter(match: re.Match, text: str, letters: str) -> tuple[str, str | None] | None:
    """A candidate letter at ``match``: ("one", letter), ("two", None) when a second letter follows, or None.

    None when it is not a letter answer: followed by ``=`` ("a = 5"), or a lower-case letter that
    may be a word ("the answer is a prime"): lower case counts only in parentheses or before
    punctuation / the end of the line.
    """
    letter = match.group("letter")
    rest = text[match.end():]
    if re.match(r"\s*=", rest) or re.match(r"[A-Za-z0-9_]", rest):
        return None
    if letter.islower() and not match.group("open") and not re.match(r"[ \t]*(?:$|[.,:;!?)\]}])", rest, re.M):
        return None
    if _second_letter_re(letters).match(rest):
        return ("two", None)
    return ("one", letter.upper())


def _box_letter(content: str, letters: str) -> tuple[str, str | None] | None:
    """The letter of a box's content ("C", "(C)", "\\text{Option C}", "C) 124", "c"), ("two", None), or None."""
    s = _plain(content).strip()
    s = re.sub(r"^(?:options?|choices?)\s*:?\s*", "", s, flags=re.I)
    m = re.match(_letter_pattern(letters), s)
    if not m:
        return None
    judged = _judge_letter(m, s, letters)
    if judged is None and m.group("letter").islower() and re.fullmatch(r"\s*", s[m.end():]):
        return ("one", m.group("letter").upper())  # a lone lower-case letter in a box is a letter
    return judged


# rule 2-4 anchors (case-insensitive), each followed by the letter pattern
_ANSWER_COLON = r"\banswer\s*(?:is\s*)?[:：]\s*(?:(?:options?|choices?)\s*)?"
_ANSWER_IS = (r"(?:\b(?:answer|option|choice)\s+(?:is|would\s+be|will\s+be|must\s+be|should\s+be)\s*:?\s*"
              r"|\bI\s+(?:choose|select|pick)\s+|\b(?:choose|select|pick)\s+)(?:(?:options?|choices?)\s*)?")
_OPTION = r"\b(?:options?|choices?)\s*"


def _extract_choice(region: str, letters: str) -> tuple[str | None, str, str | None]:
    """(answer text, found, letter) for a multiple-choice response, by the rules of the module docstring."""
    # 1. boxes: the last box, with the boxes joined to it ("\boxed{A}, \boxed{B}")
    boxes = _boxes(region)
    if boxes:
        group = [boxes[-1]]
        for prev in reversed(boxes[:-1]):
            gap = region[prev[1]:group[0][0]]
            if not re.fullmatch(r"[\s$,.;]*(?:\b(?:and|or)\b)?[\s$,]*", gap):
                break
            group.insert(0, prev)
        judged = [_box_letter(content, letters) for _, _, content in group]
        named = {j[1] for j in judged if j and j[0] == "one"}
        if len(named) > 1 or any(j and j[0] == "two" for j in judged):
            return ", ".join(c for _, _, c in group), "boxed", None
        if named:
            letter = named.pop()
            return letter, "boxed", letter
    text = _plain(region)
    letter_re = _letter_pattern(letters)
    # 2-4. stated forms, in priority order; the last occurrence of a form first
    option_tail = r"(?=[ \t]*[.!]?[ \t]*(?:$|\n)|\s+is\s+(?:the\s+)?(?:correct|right|best|answer))"
    for anchor, tail in ((_ANSWER_COLON, ""), (_ANSWER_IS, ""), (_OPTION, option_tail)):
        pattern = re.compile(anchor + letter_re + tail, re.I | re.M)
        for m in reversed(list(pattern.finditer(text))):
            judged = _judge_letter(m, text, letters)
            if judged is None:
                continue
            if judged[0] == "two":
                start = m.start("open") if m.group("open") else m.start("letter")
                return text[start:m.end() + 24].splitlines()[0].strip(), "stated", None
            return judged[1], "stated", judged[1]
    # 5. a line holding only the letter
    line_re = re.compile(r"^[ \t>#*\-]*" + letter_re + r"[ \t]*[.:)]?[ \t]*$", re.M)
    lines = list(line_re.finditer(text))
    if lines:
        letter = lines[-1].group("letter").upper()
        return letter, "last_expression", letter
    if boxes:  # a box without a letter: its content is the answer (wrong)
        return boxes[-1][2], "boxed", None
    return None, "none", None


# ----------------------------------------------------------------------------------------------
# extract: where, then how
# ----------------------------------------------------------------------------------------------
def _letters_for(gold: str | None) -> str:
    """The option letters read: A-D, or up to the gold's letter when it is later (E-J)."""
    letter = choice_letter(gold) if gold else None
    if letter is not None and letter not in OPTION_LETTERS:
        return CHOICE_LETTERS[: CHOICE_LETTERS.index(letter) + 1]
    return OPTION_LETTERS


def _check(kind: str, answer_format: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {KINDS}")
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")


def _extract_region(region: str | None, kind: str, answer_format: str,
                    letters: str) -> tuple[str | None, str, list, str | None]:
    """(answer, found, parsed, letter) of an answer region (None: no region)."""
    if region is None:
        return None, "none", [], None
    if answer_format == "boxed":
        answer = last_boxed(region)
        if answer is None:
            return None, "none", [], None
        letter = None
        if kind == "choice":
            judged = _box_letter(answer, letters)
            letter = judged[1] if judged and judged[0] == "one" else None
        return answer, "boxed", [], letter
    if kind == "choice":
        answer, found, letter = _extract_choice(region, letters)
        return answer, found, [], letter
    answer, found, parsed = _extract_math(region)
    return answer, found, parsed, None


def extract(response_text: str, kind: str = "math", *, answer_format: str = "standard",
            answer_from: str = "after_thinking", delim: str | None = THINK_END, gold: str | None = None) -> Extraction:
    """Read a response's final answer: the region ``answer_from`` names, then the rules of ``answer_format``.

    For "choice", ``gold`` (optional) only widens the letters read beyond A-D when it is later.
    "math"/"integer" in the standard format call math-verify, which has no time limit here
    (``grade_many`` enforces one).
    """
    _check(kind, answer_format)
    region = answer_region(response_text, answer_from, delim)
    closed = True if delim is None else closed_thinking(response_text, delim)
    answer, found, parsed, letter = _extract_region(region, kind, answer_format, _letters_for(gold))
    return Extraction(answer=answer, found=found, closed_thinking=closed, parsed=parsed, letter=letter)


def extract_answer(response_text: str, delim: str | None = THINK_END, *, kind: str = "math",
                   answer_format: str = "standard", answer_from: str = "after_thinking") -> str | None:
    """The final answer of a response as text (None: no answer); see ``extract``."""
    return extract(response_text, kind, answer_format=answer_format, answer_from=answer_from, delim=delim).answer


# ----------------------------------------------------------------------------------------------
# Matching one answer against the gold
# ----------------------------------------------------------------------------------------------
def _strip_latex(s: str) -> str:
    """Light normalisation for string comparisons: text wrappers, $, \\left/\\right, thin spaces, dots.

    Whitespace is removed except between two digits or letters, where it becomes one space: "1 2"
    stays apart from "12".
    """
    s = s.strip()
    for _ in range(3):
        s = _WRAPPERS_RE.sub(r"\1", s)
    s = s.replace("$", "").replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    s = s.replace("\\ ", " ").replace("~", " ")
    s = re.sub(r"(?<=\w)\s+(?=\w)", " ", s)
    s = re.sub(r"(?<!\w)\s+|\s+(?!\w)", "", s)
    return s.rstrip(".").strip()


_CHOICE_RE = re.compile(r"^\(?([A-Ja-j])\)?(?:$|[\s.:)\]])")


def choice_letter(answer: str) -> str | None:
    """The option letter of a gold or a boxed answer: "C", "(C)", "C)", "C.", "\\text{C}", "C: 124°", "Option C".

    None for anything else, including two letters ("A and B") and "a = 5".
    """
    s = _plain(str(answer)).strip()
    s = re.sub(r"^\\boxed\s*\{(.*)\}$", r"\1", s).strip()
    judged = _box_letter(s, CHOICE_LETTERS)
    return judged[1] if judged and judged[0] == "one" else None


_INT_RE = re.compile(r"[+-]?\d+")
_GROUPED_RE = re.compile(r"[+-]?\d{1,3}(?:(?:,|\{,\}|\\,|\\ | )\d{3})+")  # 1,000 / 1{,}000 / 1\,000 / 1 000


def _as_int(s: str) -> int | None:
    """An integer written plainly: "033", "1,000", "1{,}000", "\\text{33}", "33.", "33.0", "30^\\circ"; else None.

    Thousands separators count only in groups of three digits: "1,2", "3, 4" and "1 2" are not 12/34.
    """
    t = s.strip()
    for _ in range(3):
        t = _WRAPPERS_RE.sub(r"\1", t)
    t = t.replace("$", "").strip().rstrip(".").strip()
    t = re.sub(r"\^\{?\\circ\}?$", "", t).strip()
    if _GROUPED_RE.fullmatch(t):
        t = re.sub(r"[^\d+-]", "", t)
    if re.fullmatch(r"[+-]?\d+\.0*", t):
        t = t.split(".")[0]
    return int(t) if _INT_RE.fullmatch(t) else None


def answer_key(answer: str | None, kind: str) -> str | None:
    """What two answers share when they are the same vote: integers by value, else the normalised text.

    Never joins separate numbers: "1,2", "3, 4" and "1 2" keep their separators.
    """
    if answer is None:
        return None
    if kind == "integer":
        value = _as_int(answer)
        if value is not None:
            return str(value)
    if kind == "choice":
        letter = choice_letter(answer)
        if letter is not None:
            return letter
    return _strip_latex(answer) or None


def _mv_parse(text: str):
    from math_verify import parse

    return parse(text, extraction_config=_mv_config(), parsing_timeout=None)


def _verify(gold: str, parsed: list) -> bool:
    from math_verify import verify

    gold_parsed = _mv_parse("\\boxed{" + gold + "}")
    if not gold_parsed or not parsed:
        return False
    return bool(verify(gold_parsed, parsed, timeout_seconds=None))


def _math_equal(answer: str, gold: str) -> bool:
    """math-verify equivalence, gold first; both wrapped in \\boxed{} so LaTeX is read as LaTeX."""
    if _strip_latex(answer) == _strip_latex(gold) and _strip_latex(gold):
        return True
    return _verify(gold, _mv_parse("\\boxed{" + answer + "}"))


def _gold_letter(gold: str) -> str:
    letter = choice_letter(gold)
    if letter is None:
        raise ValueError("a 'choice' gold must be an option letter (A-J)")
    return letter


def answer_matches(answer: str | None, gold: str, kind: str) -> bool:
    """Whether an answer (text, as ``extract`` reads it) equals the gold under the rule of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {KINDS}")
    if answer is None or not str(gold).strip():
        return False
    gold = str(gold)
    if kind == "choice":
        return choice_letter(answer) == _gold_letter(gold)
    if kind == "integer":
        g, a = _as_int(gold), _as_int(answer)
        if g is not None and a is not None:
            return g == a
        if g is not None:
            # not a plain integer ("\frac{66}{2}", "33 \text{ apples}"): fall back to math equivalence
            return _math_equal(answer, str(g))
    return _math_equal(answer, gold)


def _matches(answer: str | None, parsed: list, letter: str | None, gold: str, kind: str) -> bool:
    """``answer_matches`` for an extraction: the letter read (choice), or math-verify's own parse result."""
    if answer is None or not str(gold).strip():
        return False
    if kind == "choice":
        return letter is not None and letter == _gold_letter(gold)
    if not parsed:  # the strict boxed format: compare the text
        return answer_matches(answer, gold, kind)
    g, a = _as_int(gold), _as_int(answer)
    if kind == "integer" and g is not None and a is not None:
        return g == a
    if _strip_latex(answer) == _strip_latex(gold) and _strip_latex(gold):
        return True
    return _verify(str(g) if kind == "integer" and g is not None else gold, parsed)


def _grade_region(region: str | None, gold: str, kind: str, answer_format: str) -> dict:
    """status, answer, found of one answer region (None: no region); may call math-verify."""
    answer, found, parsed, letter = _extract_region(region, kind, answer_format, _letters_for(gold))
    if answer is None:
        return {"status": "no_answer", "answer": None, "found": "none"}
    ok = _matches(answer, parsed, letter, gold, kind)
    return {"status": "correct" if ok else "wrong", "answer": answer, "found": found}


def is_correct(response_text: str, gold: str, kind: str, delim: str | None = THINK_END, *,
               answer_format: str = "standard", answer_from: str = "after_thinking") -> bool:
    """True when the response's final answer (``extract``) matches ``gold``."""
    return grade(response_text, {"gold": gold, "kind": kind}, delim,
                 answer_format=answer_format, answer_from=answer_from)["status"] == "correct"


def grade(response_text: str, problem: Any, delim: str | None = THINK_END, *, answer_format: str = "standard",
          answer_from: str = "after_thinking") -> dict:
    """Grade one response against a problem (anything with ``gold`` and ``kind``, or a dict).

    Returns ``{"status": "correct" | "wrong" | "no_answer", "answer": str | None, "found": FOUND,
    "closed_thinking": bool}``; "no_answer" when the thinking never closed (``answer_from=
    "after_thinking"``) or no answer is found. No time limit: see ``grade_many``.
    """
    gold, kind = (problem["gold"], problem["kind"]) if isinstance(problem, dict) else (problem.gold, problem.kind)
    _check(kind, answer_format)
    region = answer_region(response_text, answer_from, delim)
    closed = True if delim is None else closed_thinking(response_text, delim)
    return {**_grade_region(region, str(gold), kind, answer_format), "closed_thinking": closed}


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
        region, gold, kind, answer_format = msg
        try:
            conn.send(("ok", _grade_region(region, gold, kind, answer_format)))
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
        """("ok", grade dict) | ("error", msg) | ("timeout", None); a timed-out worker is dead afterwards."""
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


def _decided_here(region: str | None, gold: str, kind: str, answer_format: str) -> bool:
    """Whether an item can be graded in the calling process: no math-verify call can happen."""
    if region is None or kind == "choice":
        return True
    if answer_format == "standard":
        return False  # math-verify's extraction reads the region
    answer = last_boxed(region)
    return answer is None or (kind == "integer" and _as_int(gold) is not None and _as_int(answer) is not None)


def grade_many(
    items: Iterable[tuple[str, str, str] | dict],
    *,
    timeout: float | None = 10.0,
    workers: int = 2,
    delim: str | None = THINK_END,
    answer_format: str = "standard",
    answer_from: str = "after_thinking",
) -> list[dict]:
    """Grade many responses; each item is ``(response_text, gold, kind)`` or a dict with those keys.

    Returns one ``grade``-style dict per item, in order, plus ``timed_out`` (bool) and ``error``
    (str or None). "no_answer", letters and plain boxed integers are decided in this process;
    everything that calls math-verify (the standard extraction of "math"/"integer", and its
    comparisons) goes to ``workers`` worker processes, each item limited to ``timeout`` seconds (an
    overrun is "wrong" with ``timed_out=True``, ``found`` "none", its worker replaced).
    ``timeout=None`` grades everything in the calling thread, without a limit.
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
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
        region = answer_region(text, answer_from, delim)
        closed = True if delim is None else closed_thinking(text, delim)
        base = {"closed_thinking": closed, "timed_out": False, "error": None}
        if timeout is None or _decided_here(region, gold, kind, answer_format):
            try:
                results[i] = {**_grade_region(region, gold, kind, answer_format), **base}
            except Exception as exc:
                results[i] = {"status": "wrong", "answer": None, "found": "none", **base,
                              "error": f"{type(exc).__name__}: {exc}"}
        else:
            pending.append((i, region, gold, kind))
            results[i] = {"status": "wrong", "answer": None, "found": "none", **base}

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
                        i, region, gold, kind = queue.pop()
                    tag, value = worker.run((region, gold, kind, answer_format), timeout)
                    res = results[i]
                    if tag == "ok":
                        res.update(value)
                    else:
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
    """Counts of a list of ``grade`` results: correct / wrong / no_answer / timed_out / total, and ``found``."""
    out = {s: sum(g["status"] == s for g in grades) for s in STATUSES}
    out["found"] = {f: sum(g.get("found") == f for g in grades) for f in FOUND}
    out["timed_out"] = sum(bool(g.get("timed_out")) for g in grades)
    out["total"] = len(grades)
    return out


# ----------------------------------------------------------------------------------------------
# Which golds may grade a trace correct (issue 30)
# ----------------------------------------------------------------------------------------------
# s1K's reference solutions are worked solutions; rsdlib.data.extract_gold reads a final answer out of
# them and records the rule that found it (``meta["gold_rule"]``). A trace graded "correct" against a
# partial gold (one part of a multi-part answer, the claim a proof ends with) would enter training as a
# solved problem, so only these golds grade traces; every other problem is UNGRADABLE: unsolved, it
# gets a prefix like any unsolved problem (rsdlib.traces) and is counted.
TRUSTED_GOLD_RULES = {
    "answer column": "the benchmark's own answer field (MATH500, AIME, GPQA: no extraction involved)",
    "short": "the whole reference solution is one short line: it is the answer itself",
    "answer_line": "the solution ends with an explicit 'Answer: X' / 'the answer is X'",
    "boxed": "the solution's own single boxed final answer (not for proofs, not when it boxes several answers)",
}
UNTRUSTED_GOLD_RULES = {
    "none": "no final answer could be read (proofs, prose conclusions)",
    "last_equals": "the value after the last '=' of a worked solution's last line: often an intermediate "
                   "step or one part of the answer, never stated as the answer",
}
_PROOF_QUESTION = re.compile(r"\b(prove|show that|show how|demonstrate that|verify that|justify)\b", re.IGNORECASE)


def gold_trust(problem: Any) -> tuple[bool, str]:
    """(trusted, why) for a problem's gold (anything with ``gold``, ``kind``, ``question``, ``meta``).

    Trusted: ``TRUSTED_GOLD_RULES``. Untrusted: no gold; ``UNTRUSTED_GOLD_RULES``; a boxed or stated
    gold of a proof question ("prove", "show that", ... without answer options): the box then holds
    the claim proved, e.g. a two-part proof reduced to one inequality, which a trace can write without
    proving anything; a boxed gold from a solution that boxes several different answers (a multi-part
    answer reduced to its last part).
    """
    meta = getattr(problem, "meta", None) or {}
    gold = str(getattr(problem, "gold", "") or "").strip()
    if not gold:
        return False, "no gold answer"
    rule = meta.get("gold_rule")
    if rule is None:
        return True, "answer column"
    if rule not in TRUSTED_GOLD_RULES:
        return False, f"gold rule {rule!r}: " + UNTRUSTED_GOLD_RULES.get(rule, "not a trusted rule")
    if rule in ("boxed", "answer_line") and getattr(problem, "kind", "") != "choice" and \
            _PROOF_QUESTION.search(str(getattr(problem, "question", ""))):
        return False, "a proof question: the gold is the claim proved (or one part of it), not an answer"
    if rule == "boxed" and len({b[2].strip() for b in _boxes(str(meta.get("solution", "")))}) > 1:
        return False, "the solution boxes several different answers: the gold is only the last part"
    return True, rule
