"""Transferred training sets (rsdlib.transfer; Table 4's "+ RSD-generated (Transferred)" and other students'
"+ s1K-1.1" rows): pair main's examples as text, in another student's own tokenizer and template."""

from __future__ import annotations

import pytest

from rsdlib.data import Problem
from rsdlib.prompts import PromptStyle, prompt_ids, turn_end_id
from rsdlib.standins import standin_tokenizer
from rsdlib.transfer import transfer_examples

PROBLEM = Problem(id="p1", question="What is 6 times 7?", gold="42", kind="integer")
COMPLETION = "Six sevens are forty-two.\n</think>\nThe final answer is $\\boxed{42}$."


@pytest.fixture(scope="module")
def qwen3():
    return standin_tokenizer("Qwen/Qwen3-0.6B")


def _examples(tok):
    ids = tok(COMPLETION, add_special_tokens=False)["input_ids"]
    assert 151668 in ids  # Qwen3 writes </think> as one token
    style = PromptStyle()
    return [{"id": "p1#0", "problem_id": "p1", "kind": "full", "prompt_ids": prompt_ids(tok, PROBLEM, style),
             "completion_ids": ids + [turn_end_id(tok)], "source": "rsd"},
            {"id": "p1#prefix", "problem_id": "p1", "kind": "prefix", "prompt_ids": prompt_ids(tok, PROBLEM, style),
             "completion_ids": ids[:5], "source": "rsd"}]


def test_same_tokenizer_and_template_give_the_examples_back_id_for_id(qwen3):
    examples = _examples(qwen3)
    moved = transfer_examples(examples, qwen3, standin_tokenizer("Qwen/Qwen3-4B"), {"p1": PROBLEM}, PromptStyle())
    for a, b in zip(examples, moved):
        assert (a["prompt_ids"], a["completion_ids"], a["kind"]) == (b["prompt_ids"], b["completion_ids"], b["kind"])


@pytest.mark.parametrize("hub_id,turn_end", [("meta-llama/Llama-3.2-1B-Instruct", "<|eot_id|>"),
                                             ("google/gemma-3-1b-it", "<end_of_turn>"),
                                             ("microsoft/Phi-4-mini-reasoning", "<|end|>")])
def test_another_student_gets_its_own_template_tokens_and_end_of_turn(qwen3, hub_id, turn_end):
    target = standin_tokenizer(hub_id)
    full, prefix = transfer_examples(_examples(qwen3), qwen3, target, {"p1": PROBLEM}, PromptStyle())
    assert full["prompt_ids"] == prompt_ids(target, PROBLEM, PromptStyle())  # its own chat template
    text = target.decode(full["completion_ids"], skip_special_tokens=False)
    assert text == COMPLETION + turn_end  # the same words, its own end of turn, nothing of Qwen's
    assert full["completion_ids"][-1] == turn_end_id(target) and "<|im_end|>" not in text
    assert prefix["kind"] == "prefix" and turn_end_id(target) not in prefix["completion_ids"]
    assert COMPLETION.startswith(target.decode(prefix["completion_ids"], skip_special_tokens=False))


def test_a_full_example_without_the_sources_end_of_turn_is_refused(qwen3):
    bad = dict(_examples(qwen3)[0])
    bad["completion_ids"] = bad["completion_ids"][:-1]
    with pytest.raises(ValueError, match="end of turn"):
        transfer_examples([bad], qwen3, qwen3, {"p1": PROBLEM}, PromptStyle())
