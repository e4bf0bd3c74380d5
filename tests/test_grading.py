"""rsdlib.grading: extraction after the last </think>, no-answer, a table of tricky equivalences, threads."""

from __future__ import annotations

import threading
import time

import pytest

from rsdlib.grading import (
    answer_matches,
    closed_thinking,
    extract_answer,
    grade,
    grade_many,
    is_correct,
    last_boxed,
    summarize_grades,
)


def resp(answer: str, thinking: str = "Let me think. \\boxed{999} maybe.") -> str:
    """A response whose thinking (with a decoy box) is closed, then a boxed final answer."""
    return f"{thinking}</think>\n\nThe final answer is $\\boxed{{{answer}}}$."


# (prediction, gold, kind, expected)
EQUIVALENCES = [
    # fractions, decimals
    ("0.5", "\\frac{1}{2}", "math", True),
    ("1/2", "\\frac12", "math", True),
    ("\\frac12", "\\frac{1}{2}", "math", True),
    ("\\dfrac{1}{2}", "0.5", "math", True),
    ("0.51", "\\frac{1}{2}", "math", False),
    ("\\frac{1}{3}", "\\frac{1}{2}", "math", False),
    # intervals
    ("[2, 5)", "[2,5)", "math", True),
    ("(2,5)", "[2,5)", "math", False),
    ("(-\\infty, 3]", "(-\\infty,3]", "math", True),
    ("(-\\infty, 3)", "(-\\infty,3]", "math", False),
    # tuples (order matters)
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", "math", True),
    ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", "math", True),
    ("(\\frac{\\pi}{2}, 3)", "\\left( 3, \\frac{\\pi}{2} \\right)", "math", False),
    # \text{} units
    ("10 \\text{ cm}", "10", "math", True),
    ("10", "10\\text{ cm}", "math", True),
    ("11 \\text{ cm}", "10", "math", False),
    # degrees
    ("30^\\circ", "30", "math", True),
    ("30^{\\circ}", "30^\\circ", "math", True),
    ("60^\\circ", "30", "math", False),
    # text answers
    ("\\text{Evelyn}", "\\text{Evelyn}", "math", True),
    ("Evelyn", "\\text{Evelyn}", "math", True),
    ("Bob", "\\text{Evelyn}", "math", False),
    # algebra
    ("2\\sqrt{2}", "\\sqrt{8}", "math", True),
    ("x^2+2x+1", "(x+1)^2", "math", True),
    ("x^2+2x+2", "(x+1)^2", "math", False),
    ("x=2", "2", "math", True),
    # integers (AIME): leading zeros, formatting
    ("033", "33", "integer", True),
    ("33", "033", "integer", True),
    ("34", "033", "integer", False),
    ("\\text{33}", "33", "integer", True),
    ("1{,}000", "1000", "integer", True),
    ("\\frac{66}{2}", "33", "integer", True),
    ("33.5", "33", "integer", False),
    ("-7", "7", "integer", False),
    # letters
    ("C", "C", "choice", True),
    ("(C)", "C", "choice", True),
    ("C)", "C", "choice", True),
    ("\\text{C}", "C", "choice", True),
    ("\\text{(C)}", "C", "choice", True),
    ("C. 124", "C", "choice", True),
    ("B", "C", "choice", False),
    ("Cat", "C", "choice", False),
    ("(D)", "C", "choice", False),
]


@pytest.mark.parametrize("pred,gold,kind,expected", EQUIVALENCES)
def test_equivalence_table(pred, gold, kind, expected):
    assert is_correct(resp(pred), gold, kind) is expected
    assert answer_matches(pred, gold, kind) is expected


def test_boxed_choice_spelled_with_box():
    # "\boxed{C}" in the text is the normal case; the extracted "C" is the letter
    assert is_correct("...</think> So \\boxed{C}", "C", "choice")
    assert is_correct("...</think> So \\boxed{(C)}", "C", "choice")
    assert not is_correct("...</think> So \\boxed{(B)}", "C", "choice")


def test_last_boxed_balanced_and_fbox():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("\\fbox{\\{1,2\\}}") == "\\{1,2\\}"
    assert last_boxed("\\boxed{7} then \\boxed{\\frac{1}{2}") == "7"  # unclosed last box skipped
    assert last_boxed("\\boxed 5.") == "5."
    assert last_boxed("no box here") is None


def test_extraction_uses_text_after_last_think_end():
    text = "<think>try \\boxed{1}</think> wait, more </think> \\boxed{2} and finally \\boxed{3}"
    assert extract_answer(text) == "3"
    # the box before the LAST delimiter is not the answer
    assert extract_answer("thinking \\boxed{5} </think> no box after") is None
    assert extract_answer("</think> \\boxed{5} </think> nothing") is None


def test_no_answer_when_thinking_never_closes():
    text = "<think> long loop ... \\boxed{42} ... and so on"
    assert not closed_thinking(text)
    assert extract_answer(text) is None
    assert not is_correct(text, "42", "integer")
    g = grade(text, {"gold": "42", "kind": "integer"})
    assert g["status"] == "no_answer" and g["closed_thinking"] is False


def test_configurable_delimiter():
    s11 = "<|im_start|>think\nhmm \\boxed{1}<|im_start|>answer\n\\boxed{2}"
    assert extract_answer(s11, delim="<|im_start|>answer") == "2"
    assert extract_answer(s11) is None  # default delimiter absent
    assert extract_answer("plain \\boxed{4}", delim=None) == "4"


def test_grade_statuses():
    p = {"gold": "\\frac{1}{2}", "kind": "math"}
    assert grade(resp("0.5"), p)["status"] == "correct"
    assert grade(resp("0.6"), p) == {"status": "wrong", "answer": "0.6", "closed_thinking": True}
    assert grade("x</think> I give up.", p)["status"] == "no_answer"


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="kind"):
        is_correct(resp("1"), "1", "float")


def _run_in_thread(fn):
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # surface the thread's exception in the test
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join(120)
    assert "error" not in box, box.get("error")
    return box["value"]


def test_grading_inside_a_thread():
    # math-verify's default SIGALRM timeouts raise in non-main threads; ours must not
    assert _run_in_thread(lambda: is_correct(resp("0.5"), "\\frac{1}{2}", "math")) is True
    assert _run_in_thread(lambda: is_correct(resp("0.6"), "\\frac{1}{2}", "math")) is False


def test_grade_many_in_order_with_worker_processes_and_from_a_thread():
    items = [
        (resp("0.5"), "\\frac{1}{2}", "math"),
        (resp("0.75"), "\\frac{1}{2}", "math"),
        ("never closes \\boxed{1}", "1", "integer"),
        (resp("033"), "33", "integer"),
        (resp("(B)"), "C", "choice"),
        {"response_text": resp("[2,5)"), "gold": "[2,5)", "kind": "math"},
    ]
    expected = ["correct", "wrong", "no_answer", "correct", "wrong", "correct"]
    out = grade_many(items, timeout=60, workers=2)
    assert [g["status"] for g in out] == expected
    assert not any(g["timed_out"] for g in out)
    in_thread = _run_in_thread(lambda: grade_many(items, timeout=60, workers=1))
    assert [g["status"] for g in in_thread] == expected
    no_limit = grade_many(items, timeout=None)
    assert [g["status"] for g in no_limit] == expected
    counts = summarize_grades(out)
    assert counts == {"correct": 3, "wrong": 2, "no_answer": 1, "timed_out": 0, "total": 6}


def test_grade_many_times_out_and_replaces_the_worker():
    # sympy tries to evaluate this power tower for minutes: the worker must be killed and replaced
    hard = (resp("2^{2^{2^{30}}}"), "3", "math")
    t0 = time.monotonic()
    out = grade_many([hard, (resp("0.5"), "\\frac{1}{2}", "math")], timeout=3, workers=1)
    assert time.monotonic() - t0 < 60
    assert out[0]["status"] == "wrong" and out[0]["timed_out"] and out[0]["error"] == "timed out"
    assert out[1]["status"] == "correct" and not out[1]["timed_out"]


def test_a_script_without_a_main_guard_is_not_rerun_by_the_grading_worker(tmp_path):
    """A spawn worker used to re-run the caller's script (and with it, a whole trace job)."""
    import subprocess
    import sys

    marker = tmp_path / "runs.txt"
    script = tmp_path / "no_guard.py"
    script.write_text(
        "from rsdlib.grading import grade_many\n"
        f"open({str(marker)!r}, 'a').write('ran\\n')\n"
        "rows = grade_many([('</think> \\\\boxed{1/2}', '0.5', 'math'), ('</think> \\\\boxed{3}', '4', 'integer')],"
        " timeout=60)\n"
        "print([r['status'] for r in rows])\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['correct', 'wrong']"
    assert marker.read_text() == "ran\n", "the worker ran the script's top level again"
