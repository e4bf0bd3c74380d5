"""The paper's prompt (Section 3.3 / 4.1, Figure 7; field notes section 1), built from the student's chat template.

A problem becomes: the Qwen system prompt, a user turn with the question (plus lettered options for
multiple choice) and the step-by-step / \\boxed{} instruction, and an assistant turn opened with the
thinking delimiter. Models whose tokenizer has ``<think>``/``</think>`` as tokens (Qwen3) get them
as single ids; others (the embedded Qwen2.5 pair, s1.1) get the same delimiters as plain text.
The prompt is built in the STUDENT's ids; the teacher sees it through the vocabulary bridge.
"""

from __future__ import annotations

from dataclasses import dataclass

QWEN_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHOICE_INSTRUCTION = (
    "Please reason step by step, and put the letter of the correct option (A, B, C or D) within \\boxed{}."
)
WORDS_ONLY = "Reason in words and equations only; do not write code."
# A worked example that shows small non-thinking models (the embedded pair) where the delimiters go.
FORMAT_SHOT = (
    "What is $2 + 3 \\cdot 4$?",
    "Multiplication comes before addition: $3 \\cdot 4 = 12$, and $2 + 12 = 14$.\n</think>\n"
    "The answer is $\\boxed{14}$.",
)
LETTERS = "ABCD"


@dataclass
class PromptStyle:
    """How a problem is turned into a chat prompt; recorded with every trace."""

    system: str = QWEN_SYSTEM_PROMPT  # system prompt ("" = none)
    math_instruction: str = MATH_INSTRUCTION  # appended to math questions
    choice_instruction: str = CHOICE_INSTRUCTION  # appended to multiple-choice questions
    extra_instruction: str = ""  # e.g. WORDS_ONLY for the embedded coder pair (field notes s.8)
    think_open: str = "<think>"  # opens the assistant turn
    think_close: str = "</think>"  # ends the thinking part; grading reads the text after the last one
    shots: tuple = ()  # worked examples shown as earlier chat turns: ((question, response), ...)

    def user_message(self, problem) -> str:
        if problem.kind == "choice":
            options = "\n".join(f"{LETTERS[i]}) {opt}" for i, opt in enumerate(problem.options or []))
            text = f"{problem.question}\n\n{options}\n\n{self.choice_instruction}"
        else:
            text = f"{problem.question}\n\n{self.math_instruction}"
        return f"{text} {self.extra_instruction}".rstrip()


def prompt_text(tokenizer, problem, style: PromptStyle | None = None) -> str:
    """The full prompt as text: chat template + opened thinking (do not log it for GPQA)."""
    style = style or PromptStyle()
    messages = [{"role": "system", "content": style.system}] if style.system else []
    for question, response in style.shots:  # few-shot turns teach the output format
        messages += [{"role": "user", "content": f"{question}\n\n{style.math_instruction} {style.extra_instruction}".rstrip()},
                     {"role": "assistant", "content": f"{style.think_open}\n{response}"}]
    messages.append({"role": "user", "content": style.user_message(problem)})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"{text}{style.think_open}\n"


def prompt_ids(tokenizer, problem, style: PromptStyle | None = None) -> list[int]:
    """The prompt in the tokenizer's ids (the student's, for RSD)."""
    return list(tokenizer(prompt_text(tokenizer, problem, style), add_special_tokens=False)["input_ids"])


def turn_end_id(tokenizer) -> int:
    """The id that closes an assistant turn: ``<|im_end|>`` / ``<|eot_id|>`` when present, else eos.

    A full training example must end with it (rsdlib.train supervises it so the student learns to stop).
    """
    for token in ("<|im_end|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid >= 0 and tokenizer.convert_ids_to_tokens(tid) == token:
            return tid
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no end-of-turn or eos token")
    return int(tokenizer.eos_token_id)


def end_of_turn_ids(tokenizer) -> tuple[int, ...]:
    """Ids that end an assistant turn: ``<|im_end|>`` when the vocabulary has it, and eos."""
    ids = set()
    for token in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            if tokenizer.convert_ids_to_tokens(tid) == token:
                ids.add(tid)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no end-of-turn or eos token")
    return tuple(sorted(ids))
