"""The paper's prompt built from a chat template."""

import pytest
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


# ------------------------------------------------------------------ every family's own template (issue 29)
# The real tokenizers (rsdlib.standins: ../shared/tokenizers, the repository's o200k for Phi-4-Mini) with the
# models' official chat templates. Each case: the exact prompt Figure 7's style gives "What is 1+1?", and how
# the model's thinking ends: the ids of "</think>" in its vocabulary (one token, or text it learns in SFT).
_F7 = ("You must respond to every query in the following manner:\nFirst, provide a step-by-step logical "
       "exploration of the problem.\nThen, provide a clear and direct response based on your reasoning, with the "
       "final answer enclosed in $\\boxed{\\text{}}$.")
_QWEN = (f"<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n{_F7}<|im_end|>\n"
         "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n<think>\n")
FAMILY_CASES = {  # hub id -> (family, exact prompt text, end of turn token, ids of "</think>")
    "simplescaling/s1.1-7B": ("qwen2.5", _QWEN, "<|im_end|>", [522, 26865, 29]),
    "Qwen/Qwen3-0.6B": ("qwen3", _QWEN, "<|im_end|>", [151668]),
    "Qwen/Qwen3-4B": ("qwen3", _QWEN, "<|im_end|>", [151668]),
    "meta-llama/Llama-3.2-1B-Instruct": (
        "llama3", "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
        f"2023\nToday Date: 26 Jul 2024\n\n{_F7}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 1+1?"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<think>\n", "<|eot_id|>", [524, 27963, 29]),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": (
        "r1-distill-llama", f"<｜begin▁of▁sentence｜>{_F7}<｜User｜>What is 1+1?<｜Assistant｜><think>\n",
        "<｜end▁of▁sentence｜>", [128014]),
    "google/gemma-3-1b-it": (
        "gemma3", f"<bos><start_of_turn>user\n{_F7}\n\nWhat is 1+1?<end_of_turn>\n<start_of_turn>model\n<think>\n",
        "<end_of_turn>", [954, 36345, 236813]),
    "microsoft/Phi-4-mini-instruct": (
        "phi4-mini", f"<|system|>{_F7}<|end|><|user|>What is 1+1?<|end|><|assistant|><think>\n", "<|end|>",
        [808, 49631, 29]),
    "microsoft/Phi-4-mini-reasoning": (
        "phi4-mini-reasoning", "<|system|>Your name is Phi, an AI math expert developed by Microsoft. "
        f"{_F7}<|end|><|user|>What is 1+1?<|end|><|assistant|><think>\n", "<|end|>", [808, 49631, 29]),
}


@pytest.fixture(scope="module")
def family_tokenizers():
    from rsdlib.standins import standin_tokenizer

    return {hub_id: standin_tokenizer(hub_id) for hub_id in FAMILY_CASES}


@pytest.mark.parametrize("hub_id", list(FAMILY_CASES))
def test_each_family_prompt_text_and_where_its_thinking_ends(family_tokenizers, hub_id):
    from rsdlib.prompts import chat_family

    tok = family_tokenizers[hub_id]
    family, text, turn_end, close_ids = FAMILY_CASES[hub_id]
    problem = Problem(id="x", question="What is 1+1?", gold="2", kind="integer")
    assert chat_family(tok).name == family
    assert prompt_text(tok, problem) == text
    ids = prompt_ids(tok, problem)
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert ids.count(tok.bos_token_id) == (1 if tok.bos_token_id is not None and text.startswith(tok.bos_token) else 0)
    assert tok.convert_ids_to_tokens(turn_end_id(tok)) == turn_end and turn_end_id(tok) in end_of_turn_ids(tok)
    assert tok("</think>", add_special_tokens=False)["input_ids"] == close_ids  # where its thinking ends
    if family in ("phi4-mini", "phi4-mini-reasoning"):  # the published chat format (Phi-4-mini's model card)
        chat = prompt_text(tok, problem, PromptStyle(system="S"))
        assert chat.split("<|user|>")[0] in ("<|system|>S<|end|>", "<|system|>Your name is Phi, an AI math expert "
                                             "developed by Microsoft. S<|end|>")


def test_figure7_s1k_style_leaves_non_qwen_models_without_a_system_turn(family_tokenizers):
    problem = Problem(id="x", question="Q?", gold="2", kind="integer")
    gemma = prompt_text(family_tokenizers["google/gemma-3-1b-it"], problem, PromptStyle.named("figure7-s1k"))
    assert gemma == "<bos><start_of_turn>user\nQ?<end_of_turn>\n<start_of_turn>model\n<think>\n"
    qwen = prompt_text(family_tokenizers["Qwen/Qwen3-0.6B"], problem, PromptStyle.named("figure7-s1k"))
    assert qwen.startswith(f"<|im_start|>system\n{QWEN_SYSTEM_PROMPT}<|im_end|>")


def test_llama_prompt_does_not_change_with_the_run_date(family_tokenizers):
    import datetime

    tok = family_tokenizers["meta-llama/Llama-3.2-1B-Instruct"]
    problem = Problem(id="x", question="Q?", gold="2", kind="integer")
    # transformers gives the template a clock (strftime_now): without the pinned date it writes today's
    raw = tok.apply_chat_template([{"role": "user", "content": "Q?"}], add_generation_prompt=True, tokenize=False)
    assert f"Today Date: {datetime.datetime.now().strftime('%d %b %Y')}" in raw
    assert "Today Date: 26 Jul 2024\n" in prompt_text(tok, problem)
