"""The paper's prompt (Figure 7; field notes sections 1 and 9), built from the student's chat template.

The default (``PromptStyle()``, the paper profile's, named ``figure7``) is Figure 7's RSD prompt: the
system turn is the Qwen system prompt + "\\nYou must respond to every query in the following
manner: ..." (``FIGURE7_INSTRUCTION``), the user turn is the bare question (plus lettered options
and ``CHOICE_INSTRUCTION`` for multiple choice: ours, the paper shows no choice prompt), and the
assistant turn is opened with ``<think>\\n``. Other styles are named options (``PROMPT_STYLES``,
``PromptStyle.named``; a profile picks one with ``prompt: {style: NAME}``):

- ``figure7``: Figure 7, right (RSD traces): the default.
- ``figure7-s1k``: Figure 7, left (the s1K-1.1 trace): the Qwen system prompt alone, bare question.
- ``user-instruction``: not from the paper: the Qwen system prompt and the user turn ending with
  "Please reason step by step, and put your final answer within \\boxed{}." (Qwen's math prompt;
  the demo profile's, tuned on the embedded coder pair).

The assistant turn is opened with the thinking delimiter. Models whose tokenizer has ``<think>``/``</think>``
as tokens (Qwen3) get them
as single ids; others (the embedded Qwen2.5 pair, s1.1) get the same delimiters as plain text.
The prompt is built in the STUDENT's ids; the teacher sees it through the vocabulary bridge.

Data is never a control token (issue 32). Problem text, gold answers and reference traces are encoded with
every added token of the vocabulary (``<|im_end|>``, ``<|im_start|>``, ``</think>``, ``<|eot_id|>``...)
spelled out as ordinary text (``encode_data``); only the template's own markers, and the delimiters rsdlib
writes itself, are control tokens (``encode_parts``). A problem that writes ``<|im_end|>`` therefore cannot
close the user turn and open the assistant's. Text that spells no added token encodes exactly as before.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from typing import Sequence

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
FIGURE7_INSTRUCTION = (  # Figure 7 (RSD side), the system turn after the Qwen system prompt
    "You must respond to every query in the following manner:\n"
    "First, provide a step-by-step logical exploration of the problem.\n"
    "Then, provide a clear and direct response based on your reasoning, with the final answer enclosed in "
    "$\\boxed{\\text{}}$."
)
FIGURE7_SYSTEM = f"{QWEN_SYSTEM_PROMPT}\n{FIGURE7_INSTRUCTION}"


@dataclass
class PromptStyle:
    """How a problem is turned into a chat prompt; recorded with every trace."""

    system: str = FIGURE7_SYSTEM  # system prompt ("" = none); Figure 7: Qwen's + the response instruction
    math_instruction: str = ""  # appended to math questions (Figure 7: none, the user turn is the bare question)
    choice_instruction: str = CHOICE_INSTRUCTION  # appended to multiple-choice questions
    extra_instruction: str = ""  # e.g. WORDS_ONLY for the embedded coder pair (field notes s.8)
    think_open: str = "<think>"  # opens the assistant turn
    think_close: str = "</think>"  # ends the thinking part; grading reads the text after the last one
    shots: tuple = ()  # worked examples shown as earlier chat turns: ((question, response), ...)
    think_close_aliases: tuple = ()  # a model's NATIVE ends of thinking, mapped to think_close in traces and
    # grading (s1.1-7B: "<|im_start|>answer", s1's format; rsdlib.traces.map_think_close)

    def __post_init__(self) -> None:
        self.think_close_aliases = tuple(self.think_close_aliases)
        if any(not a or a == self.think_close for a in self.think_close_aliases):
            raise ValueError("think_close_aliases must be non-empty and differ from think_close, "
                             f"got {self.think_close_aliases!r}")

    @classmethod
    def named(cls, name: str, **overrides) -> "PromptStyle":
        """A style of ``PROMPT_STYLES`` by name, with ``overrides`` on top."""
        if name not in PROMPT_STYLES:
            raise ValueError(f"unknown prompt style {name!r}; styles: {', '.join(PROMPT_STYLES)}")
        return cls(**{**PROMPT_STYLES[name], **overrides})

    def user_message(self, problem) -> str:
        if problem.kind == "choice":
            options = "\n".join(f"{LETTERS[i]}) {opt}" for i, opt in enumerate(problem.options or []))
            parts = [problem.question, options, self.choice_instruction]
        else:
            parts = [problem.question, self.math_instruction]
        text = "\n\n".join(p for p in parts if p)
        return f"{text} {self.extra_instruction}".rstrip()


def prompt_text(tokenizer, problem, style: PromptStyle | None = None) -> str:
    """The full prompt as text: chat template + opened thinking (do not log it for GPQA)."""
    style = style or PromptStyle()
    return _chat_text(tokenizer, style, style.user_message(problem))


def _chat_text(tokenizer, style: PromptStyle, user: str) -> str:
    messages = [{"role": "system", "content": style.system}] if style.system else []
    for question, response in style.shots:  # few-shot turns teach the output format
        shot_q = "\n\n".join(p for p in (question, style.math_instruction) if p)
        messages += [{"role": "user", "content": f"{shot_q} {style.extra_instruction}".rstrip()},
                     {"role": "assistant", "content": f"{style.think_open}\n{response}"}]
    messages.append({"role": "user", "content": user})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"{text}{style.think_open}\n"


def prompt_ids(tokenizer, problem, style: PromptStyle | None = None) -> list[int]:
    """The prompt in the tokenizer's ids (the student's, for RSD); the user turn (the problem) is data.

    The template is rendered once with the problem and once with a placeholder in its place: what the
    placeholder's render puts before and after it are the template's own text (its markers are control
    tokens), the rest is the problem as the template wrote it, encoded by ``encode_data``."""
    style = style or PromptStyle()
    user = style.user_message(problem)
    text = _chat_text(tokenizer, style, user)
    if not spells_added_token(tokenizer, user):
        return _encode(tokenizer, text)  # nothing to neutralise: the same ids as ever
    before, slot, after = _chat_text(tokenizer, style, DATA_SLOT).partition(DATA_SLOT)
    if not slot or DATA_SLOT in after or len(before) + len(after) > len(text) or not (
            text.startswith(before) and text.endswith(after)):
        raise ValueError(f"the chat template of {getattr(tokenizer, 'name_or_path', '?')!r} changes the user text "
                         "in a way rsdlib cannot separate from its markers; refusing to encode a problem that "
                         "spells its special tokens")
    return encode_parts(tokenizer, [(before, False), (text[len(before):len(text) - len(after)], True), (after, False)])


DATA_SLOT = "\ue000rsdlib-data\ue001"  # a private-use placeholder no template alters


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


_ADDED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> (added spellings, plain backend)


def _added(tokenizer) -> list:
    """[spellings of the tokenizer's added tokens, its backend without them (built on first use) or None]."""
    try:
        return _ADDED[tokenizer]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable: no cache
        return [_added_spellings(tokenizer), None]
    entry = _ADDED[tokenizer] = [_added_spellings(tokenizer), None]
    return entry


def _added_spellings(tokenizer) -> tuple[str, ...]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = backend.get_added_tokens_decoder() if backend is not None else getattr(
        tokenizer, "added_tokens_decoder", {})
    return tuple(sorted({str(getattr(t, "content", t)) for t in decoder.values()} - {""}))


def spells_added_token(tokenizer, text: str) -> bool:
    """True when ``text`` contains the spelling of one of the tokenizer's added (special or control) tokens."""
    return any(token in text for token in _added(tokenizer)[0])


def encode_data(tokenizer, text: str) -> list[int]:
    """Ids of data text (a problem, a gold answer, a reference trace) with every added token spelled out as
    ordinary text: ``<|im_end|>`` in a problem becomes the ids of its characters, never the control token.

    Fast tokenizers: the tokenizer's own pipeline with its added tokens left out (normaliser, pre-tokeniser
    and BPE unchanged; transformers' ``split_special_tokens`` would still match non-special added tokens
    such as Qwen3's ``</think>``). Text that spells no added token gets the usual ids."""
    if not spells_added_token(tokenizer, text):
        return _encode(tokenizer, text)
    entry = _added(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer: special tokens split as text
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    if entry[1] is None:
        from tokenizers import Tokenizer

        spec = json.loads(backend.to_str())
        spec["added_tokens"] = []
        entry[1] = Tokenizer.from_str(json.dumps(spec))
    return list(entry[1].encode(text, add_special_tokens=False).ids)


def encode_parts(tokenizer, parts: Sequence[tuple[str, bool]]) -> list[int]:
    """Ids of the concatenated ``parts``, each ``(text, is_data)``: data through ``encode_data``, the rest (the
    template's and rsdlib's own markers, such as the ``</think>`` a reference trace gets) as usual. When no data
    part spells an added token this is the plain encoding of the whole text (the same ids as ever)."""
    if not any(is_data and spells_added_token(tokenizer, text) for text, is_data in parts):
        return _encode(tokenizer, "".join(text for text, _ in parts))
    ids: list[int] = []
    for text, is_data in parts:
        if text:
            ids += encode_data(tokenizer, text) if is_data else _encode(tokenizer, text)
    return ids


def vocab_id(tokenizer, token: str) -> int | None:
    """Id of one token of the tokenizer's vocabulary (added tokens included), else None (not the unknown
    token's id; the id must map back to the token where the tokenizer can say so)."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(tid, int) or tid < 0:
        return None
    if tid == getattr(tokenizer, "unk_token_id", None) and token != getattr(tokenizer, "unk_token", None):
        return None
    back = getattr(tokenizer, "convert_ids_to_tokens", None)
    return tid if back is None or back(tid) == token else None


def turn_end_id(tokenizer, tokens: Sequence[str] = ("<|im_end|>", "<|eot_id|>")) -> int:
    """The id that closes an assistant turn: the first of ``tokens`` in the vocabulary, else eos.

    A full training example must end with it (rsdlib.train supervises it so the student learns to stop).
    """
    for token in tokens:
        tid = vocab_id(tokenizer, token)
        if tid is not None:
            return tid
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no end-of-turn or eos token")
    return int(tokenizer.eos_token_id)


def end_of_turn_ids(tokenizer) -> tuple[int, ...]:
    """Ids that end an assistant turn: ``<|im_end|>`` when the vocabulary has it, and eos."""
    ids = {tid for t in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>") if (tid := vocab_id(tokenizer, t)) is not None}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no end-of-turn or eos token")
    return tuple(sorted(ids))


PROMPT_STYLES: dict[str, dict] = {
    "figure7": {},  # Figure 7, RSD side: the default
    "figure7-s1k": {"system": QWEN_SYSTEM_PROMPT},  # Figure 7, s1K-1.1 side
    "user-instruction": {"system": QWEN_SYSTEM_PROMPT, "math_instruction": MATH_INSTRUCTION},  # not the paper's
}


def worked_solution_completion(solution: str, gold: str | None, think_close: str = "</think>") -> str:
    """A benchmark's worked solution written as a trace: thinking, the closing delimiter, a boxed answer.

    Pre-existing traces the student did not write (the offline stand-in for s1K-1.1, Table 2's first
    row); without a gold answer the boxed line is left out. ``worked_solution_parts`` marks what is data.
    """
    return "".join(text for text, _ in worked_solution_parts(solution, gold, think_close))


def worked_solution_parts(solution: str, gold: str | None, think_close: str = "</think>") -> list[tuple[str, bool]]:
    """``worked_solution_completion`` as ``encode_parts`` pieces: the solution and the gold are data."""
    parts = [((solution or "").strip(), True), (f"\n{think_close}", False)]
    if gold:
        parts += [("\n\nThe final answer is $\\boxed{", False), (str(gold), True), ("}$.", False)]
    return parts


def reference_parts(thinking: str, answer: str, think_close: str = "</think>") -> list[tuple[str, bool]]:
    """A pre-existing trace (s1K-1.1: R1's thinking, then its attempt) as ``encode_parts`` pieces: the
    thinking and the answer are data, the end-of-thinking delimiter between them is rsdlib's."""
    return [(thinking.strip(), True), (f"\n{think_close}\n\n", False), (answer.strip(), True)]


def prompt_style(values: dict):
    """A ``rsdlib.prompts.PromptStyle`` from a parameter dict; a shot may be given by the name of a
    constant of ``rsdlib.prompts`` (e.g. ``shots: [FORMAT_SHOT]``) instead of its (question, response)."""
    values = dict(values)
    name = values.pop("style", "figure7")  # a named style of rsdlib.PROMPT_STYLES, then overrides
    if name not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {name!r}; styles: {', '.join(PROMPT_STYLES)}")
    values = {**PROMPT_STYLES[name], **values}
    shots = []
    for shot in values.pop("shots", ()) or ():
        if isinstance(shot, str):
            if not shot.isupper() or not isinstance(globals().get(shot), tuple):
                raise ValueError(f"unknown shot {shot!r}: name a (question, response) constant of rsdlib.prompts")
            shot = globals()[shot]
        question, response = shot
        shots.append((question, response))
    return PromptStyle(**values, shots=tuple(shots))
