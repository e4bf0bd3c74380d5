"""rsdlib.grading: where answers are read (after </think>, whole, auto), how (standard / boxed), matching, threads."""

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
    assert extract_answer(text, answer_format="boxed") == "3"
    # the standard (math-verify) reading takes boxes joined by "and" together, as one answer
    assert extract_answer(text) == "2,3"
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
    assert grade(resp("0.6"), p) == {"status": "wrong", "answer": "0.6", "found": "boxed", "closed_thinking": True}
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
    assert counts == {"correct": 3, "wrong": 2, "no_answer": 1, "timed_out": 0, "total": 6,
                      "found": {"boxed": 5, "stated": 0, "last_expression": 0, "none": 1}}


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


# ----------------------------------------------------------------------------------------------
# Issue 19 / issue 12 item 7: answers read as the field reads them, without false positives
# ----------------------------------------------------------------------------------------------
T = "Some thinking \\boxed{999}.</think>\n"  # a decoy box inside the thinking


# (answer part, gold, kind, found): unboxed correct answers that strict boxed reading missed
ISSUE_19_MISSED = [
    ("Answer: C", "C", "choice", "stated"),
    ("So the answer is B.", "B", "choice", "stated"),
    ("After simplifying, the final answer is 34", "34", "integer", "stated"),
    ("Putting it together:\n$\\frac{1}{3}$", "\\frac{1}{3}", "math", "last_expression"),
    ("The total count is\n7,425,000", "7425000", "integer", "last_expression"),
    ("The pairs are $\\boxed{(1,2)}, \\boxed{(2,1)}$", "(1,2), (2,1)", "math", "boxed"),
    ("The pairs are \\boxed{(1,2)}, \\boxed{(2,1)}", "(1,2), (2,1)", "math", "boxed"),
]


@pytest.mark.parametrize("answer,gold,kind,found", ISSUE_19_MISSED)
def test_issue_19_unboxed_answers_are_read(answer, gold, kind, found):
    g = grade(T + answer, {"gold": gold, "kind": kind})
    assert (g["status"], g["found"]) == ("correct", found)
    # the strict mode keeps the old reading: no box after </think> is no answer
    strict = grade(T + answer, {"gold": gold, "kind": kind}, answer_format="boxed")
    if found != "boxed":
        assert strict["status"] == "no_answer"


# issue 12 item 7: false positives that must stay wrong, in both formats
FALSE_POSITIVES = [
    ("\\boxed{1,2}", "12", "integer"),
    ("\\boxed{1,2}", "12", "math"),
    ("\\boxed{3, 4}", "34", "integer"),
    ("\\boxed{1 2}", "12", "integer"),
    ("\\boxed{1 2}", "12", "math"),
    ("3, 4", "34", "integer"),
    ("1 2", "12", "integer"),
    ("The answer is 1 2", "12", "integer"),
]


@pytest.mark.parametrize("answer,gold,kind", FALSE_POSITIVES)
def test_separate_numbers_are_never_joined_into_one(answer, gold, kind):
    assert grade(T + answer, {"gold": gold, "kind": kind})["status"] != "correct"
    strict = grade(T + answer, {"gold": gold, "kind": kind}, answer_format="boxed")
    assert strict["status"] != "correct"
    if strict["answer"] is not None:
        assert not answer_matches(strict["answer"], gold, kind)


def test_plain_integer_rules():
    from rsdlib.grading import _as_int

    assert [_as_int(s) for s in ("033", "1,000", "1{,}000", "1\\,000", "7,425,000", "\\text{33}", "33.", "33.0")] == \
        [33, 1000, 1000, 1000, 7425000, 33, 33, 33]
    assert [_as_int(s) for s in ("1,2", "3, 4", "1 2", "12,34", "1,0000", "33.5")] == [None] * 6


# (answer part after </think>, gold, status, found, answer text): the choice rules in priority order
CHOICE_RULES = [
    # 1. boxed
    ("\\boxed{C}", "C", "correct", "boxed", "C"),
    ("\\boxed{(C)}", "C", "correct", "boxed", "C"),
    ("\\boxed{\\text{Option B}}", "B", "correct", "boxed", "B"),
    ("\\boxed{c}", "C", "correct", "boxed", "C"),
    ("Answer: A\n\nso \\boxed{C}", "C", "correct", "boxed", "C"),  # the box beats "Answer:"
    # 2. "Answer: X"
    ("Answer: C", "C", "correct", "stated", "C"),
    ("Answer: (C)", "C", "correct", "stated", "C"),
    ("**Answer:** (D)", "D", "correct", "stated", "D"),
    ("Final Answer: B", "B", "correct", "stated", "B"),
    ("answer: c.", "C", "correct", "stated", "C"),
    ("The answer is A.\nAnswer: C", "C", "correct", "stated", "C"),
    ("Answer: C\nOn reflection the answer is A", "C", "correct", "stated", "C"),  # rule 2 beats rule 3
    # 3. "the answer is X"
    ("The answer is C", "C", "correct", "stated", "C"),
    ("So the answer is B.", "B", "correct", "stated", "B"),
    ("The correct option is (D).", "D", "correct", "stated", "D"),
    ("I choose A.", "A", "correct", "stated", "A"),
    ("The answer is B.\n\nC", "B", "correct", "stated", "B"),  # rule 3 beats a lone letter line
    # 4. "Option X"
    ("Option C", "C", "correct", "stated", "C"),
    ("After weighing them all, option C.", "C", "correct", "stated", "C"),
    ("Option A is wrong. Option C is correct.", "C", "correct", "stated", "C"),
    ("$\\text{Option B}$", "B", "correct", "stated", "B"),
    ("Option A: too slow. Option D: too fast.", "A", "no_answer", "none", None),  # options discussed, none chosen
    # 5. a line holding only the letter
    ("Therefore:\n\n**D**\n", "D", "correct", "last_expression", "D"),
    ("Therefore:\n(B)", "B", "correct", "last_expression", "B"),
    # wrong letters are wrong
    ("Answer: B", "C", "wrong", "stated", "B"),
    ("\\boxed{124}", "C", "wrong", "boxed", "124"),  # a box without a letter, no other form
]


@pytest.mark.parametrize("answer,gold,status,found,text", CHOICE_RULES)
def test_choice_rules_in_priority_order(answer, gold, status, found, text):
    g = grade(T + answer, {"gold": gold, "kind": "choice"})
    assert (g["status"], g["found"], g["answer"]) == (status, found, text)


# two letters, or a letter that is a word or a variable: never a single letter
CHOICE_REFUSALS = [
    ("Answer: A and B", "A"),
    ("Answer: A and B", "B"),
    ("The answer is (B) or (C)", "B"),
    ("The answer is (B) or (C)", "C"),
    ("\\boxed{A and B}", "A"),
    ("\\boxed{A}, \\boxed{B}", "B"),
    ("Options B and C are both plausible.", "B"),
    ("the answer is a = 5", "A"),
    ("\\boxed{a = 5}", "A"),
    ("the answer is a prime", "A"),
    ("Answer: Cat", "C"),
]


@pytest.mark.parametrize("answer,gold", CHOICE_REFUSALS)
def test_choice_refuses_two_letters_and_words(answer, gold):
    g = grade(T + answer, {"gold": gold, "kind": "choice"})
    assert g["status"] != "correct", g
    assert answer_matches(answer, gold, "choice") is False


def test_two_letters_are_reported_as_the_text_read():
    g = grade(T + "The answer is (B) or (C)", {"gold": "B", "kind": "choice"})
    assert (g["status"], g["found"], g["answer"]) == ("wrong", "stated", "(B) or (C)")
    # a comma followed by a lower-case word is not a second letter
    assert grade(T + "Answer: C, a classic result", {"gold": "C", "kind": "choice"})["status"] == "correct"


def test_choice_letters_beyond_d_follow_the_gold():
    assert grade(T + "Answer: F", {"gold": "F", "kind": "choice"})["status"] == "correct"
    assert grade(T + "Answer: F", {"gold": "A", "kind": "choice"})["status"] == "no_answer"  # A-D only


def test_standard_math_reading_matches_math_verify_parse():
    """rsdlib's tiered extraction gives the value math-verify's own ``parse`` gives (a reference)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    from rsdlib.grading import extract

    texts = ["So $\\boxed{\\frac{1}{2}}$.", "Answer: $x = 3$", "the final answer is 7", "We get $\\frac{2}{3}$",
             "in total 1,234 apples", "The pairs are \\boxed{(1,2)}, \\boxed{(2,1)}", "it is \\boxed{1,2}",
             "result: 3.5%", "no numbers at all", "first 5 then 6", "\\boxed{\\text{Evelyn}}"]
    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    for text in texts:
        ours = extract(text, "math", answer_from="whole").parsed
        theirs = parse(text, extraction_config=config, parsing_timeout=None)
        assert [str(x) for x in ours] == [str(x) for x in theirs], text


def test_found_tiers_for_math():
    from rsdlib.grading import extract

    assert extract(T + "so \\boxed{4}. The answer is 5", "integer").found == "boxed"  # boxed first
    assert extract(T + "x is 3, so the answer is 5", "integer").answer == "5"
    assert extract(T + "x is 3, so the answer is 5", "integer").found == "stated"
    assert extract(T + "we find 3 and then 4", "integer").found == "last_expression"
    assert extract(T + "I cannot tell.", "integer").found == "none"
    assert extract(T + "\\fbox{7}", "integer").answer == "7"


# ----------------------------------------------------------------------------------------------
# Issue 12 item 8: where the answer is read, per model
# ----------------------------------------------------------------------------------------------
def test_answer_from_modes():
    from rsdlib.grading import answer_region

    base_model = "Let me compute. 2 + 2 = 4.\nThe answer is $\\boxed{4}$."  # a non-thinking model: no </think>
    p = {"gold": "4", "kind": "integer"}
    assert grade(base_model, p)["status"] == "no_answer"  # after_thinking is the strict default
    assert grade(base_model, p, answer_from="whole")["status"] == "correct"
    assert grade(base_model, p, answer_from="whole")["closed_thinking"] is False  # a fact, whatever is read
    # a thinking model that never closes its thinking stays "no answer", whatever its text holds
    looping = "Hmm \\boxed{4} wait, let me recheck ... recheck ..."
    assert grade(looping, p, answer_from="after_thinking")["status"] == "no_answer"
    assert answer_region("a</think>b</think>c") == "c" and answer_region("abc") is None
    assert answer_region("a</think>b", "whole") == "a</think>b"
    with pytest.raises(ValueError, match="resolve"):
        answer_region("x", "auto")
    with pytest.raises(ValueError, match="answer_from"):
        grade(base_model, p, answer_from="everything")
    with pytest.raises(ValueError, match="answer_format"):
        grade(base_model, p, answer_format="loose")


class _Tok:
    """A tokenizer stand-in: ``</think>`` is one token or three."""

    def __init__(self, single: bool):
        self.single = single

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [7] if self.single and text == "</think>" else [1, 2, 3]}


def test_resolve_answer_from_auto():
    from rsdlib.grading import resolve_answer_from

    # the prompt opens a thinking section: the model is asked to think
    assert resolve_answer_from("auto", think_open="<think>") == "after_thinking"
    # no opened thinking: a tokenizer with </think> as one token thinks natively (Qwen3), others do not
    assert resolve_answer_from("auto", think_open="", tokenizer=_Tok(single=True)) == "after_thinking"
    assert resolve_answer_from("auto", think_open="", tokenizer=_Tok(single=False)) == "whole"
    assert resolve_answer_from("auto", think_open="") == "whole"
    # explicit choices win
    assert resolve_answer_from("whole", think_open="<think>") == "whole"
    assert resolve_answer_from("after_thinking", think_open="") == "after_thinking"


def test_grade_many_reads_per_answer_from_and_format():
    items = [("Thus \\boxed{4}.", "4", "integer"), ("x</think> Answer: B", "B", "choice"),
             ("no close; the final answer is 4", "4", "integer")]
    assert [g["status"] for g in grade_many(items, timeout=60)] == ["no_answer", "correct", "no_answer"]
    whole = grade_many(items, timeout=60, answer_from="whole")
    assert [g["status"] for g in whole] == ["correct", "correct", "correct"]
    assert [g["found"] for g in whole] == ["boxed", "stated", "stated"]
    boxed = grade_many(items, timeout=60, answer_from="whole", answer_format="boxed")
    assert [g["status"] for g in boxed] == ["correct", "no_answer", "no_answer"]


def test_math_reading_falls_back_to_public_parse_when_internals_move(monkeypatch):
    import rsdlib.grading as grading

    def moved():
        raise ImportError("math_verify.parser.get_extraction_regexes moved")

    monkeypatch.setattr(grading, "_mv_tiers", moved)
    assert grade(T + "So \\boxed{4}.", {"gold": "4", "kind": "integer"})["found"] == "boxed"
    assert grade(T + "The final answer is 4", {"gold": "4", "kind": "integer"})["status"] == "correct"
    assert grade(T + "we get 3 then 4", {"gold": "4", "kind": "integer"})["found"] == "last_expression"
    assert grade(T + "\\boxed{1,2}", {"gold": "12", "kind": "integer"})["status"] == "wrong"
    assert grade(T + "nothing here", {"gold": "4", "kind": "integer"})["status"] == "no_answer"
