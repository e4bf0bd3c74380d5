"""The paper's prompt built from a chat template."""

from _tiny import tiny_tokenizer

from rsdlib.data import Problem
from rsdlib.prompts import (
    QWEN_SYSTEM_PROMPT,
    WORDS_ONLY,
    PromptStyle,
    end_of_turn_ids,
    prompt_ids,
    prompt_text,
    turn_end_id,
)


def test_math_prompt_has_system_instruction_and_open_thinking():
    tok = tiny_tokenizer()
    p = Problem(id="x", question="What is 1+1?", gold="2", kind="integer")
    text = prompt_text(tok, p, PromptStyle.named("user-instruction", extra_instruction=WORDS_ONLY))
    assert text == (
        f"<|im_start|>system\n{QWEN_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nWhat is 1+1?\n\n"
        "Please reason step by step, and put your final answer within \\boxed{}. "
        f"{WORDS_ONLY}<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )
    ids = prompt_ids(tok, p)
    assert tok.convert_tokens_to_ids("<think>") in ids  # a single id when the vocabulary has the token
    assert tok.decode(ids) == prompt_text(tok, p)


def test_choice_prompt_letters_options_and_eot_ids():
    tok = tiny_tokenizer()
    p = Problem(id="c", question="Q?", gold="B", kind="choice", options=["w", "x", "y", "z"])
    text = prompt_text(tok, p)
    assert "A) w\nB) x\nC) y\nD) z" in text and "letter of the correct option" in text
    assert end_of_turn_ids(tok) == (tok.convert_tokens_to_ids("<|im_end|>"),)


def test_turn_end_is_im_end_even_when_eos_differs():
    tok = tiny_tokenizer()
    tok.eos_token = "<|endoftext|>"  # as the Qwen2.5 GGUF tokenizer has it
    assert turn_end_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")
    assert set(end_of_turn_ids(tok)) == set(tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))


def test_few_shot_turns_come_before_the_question():
    from rsdlib.prompts import FORMAT_SHOT

    tok = tiny_tokenizer()
    p = Problem(id="x", question="Q?", gold="1", kind="integer")
    text = prompt_text(tok, p, PromptStyle(shots=(FORMAT_SHOT,)))
    shot_q, shot_a = FORMAT_SHOT
    assert text.index(shot_q) < text.index(f"<think>\n{shot_a}<|im_end|>") < text.index("Q?")
    assert text.endswith("<|im_start|>assistant\n<think>\n") and text.count("</think>") == 1
