"""The vocabulary bridge between a teacher and a student (paper, Appendix A, "Tokenizer compatibility").

RSD scores every teacher-proposed token with the student, so both models must agree on what each
token id means. The decoder works in the STUDENT's ids (traces are stored in student ids) and relies
on a shared token having the SAME id in both vocabularies, as for the paper's pair (s1.1-7B, a
Qwen2.5 model, and Qwen3-0.6B: ids 0..151,664 identical). Built once per pair, the bridge holds:

- ``teacher_mask`` (V_t,): teacher logit rows the teacher may never propose (set to -inf): every row
  at or beyond the teacher tokenizer's length (the 128 padded rows of a 152,064-row head, and more:
  the paper's teacher tokenizer stops at 151,664), ids whose token string differs from the student's
  same id, and ids the student lacks ("vocabulary suppression").
- ``student_mask`` (V_s,): student logit rows with no token behind them; never sampled.
- ``student_only``: student ids the teacher does not share (Qwen3's ``<tool_response>``,
  ``</tool_response>``, ``<think>``, ``</think>``), each with its teacher spelling: the teacher
  tokenizer's encoding of the token's text, e.g. ``</think>`` -> [522, 26865, 29]. The student's
  context keeps the single id, the teacher's context gets the spelling ("separate context
  management"), so the two contexts differ in length.

The teacher's probability of a student-only token (used by SKD-inspired decoding, where the TEACHER
approves the student's proposals; ``rsdlib.decoding.score_student_only_proposals``):

- RULE: P_t(y) for a student-only id y with teacher spelling s_1..s_L is the probability that the
  teacher, sampling from the distribution the decoder uses (masked, tempered, top-p), writes exactly
  that spelling next: prod_j P_t(s_j | teacher context, s_<j). The threshold test reads this product
  (with ``threshold_on: raw``, the product of the raw T = 1 probabilities). Without it, ``</think>``
  would have teacher probability 0 and SKD would reject the student's ``</think>`` every time, so a
  trace could close its thinking only through the teacher's three pieces ``</``, ``think``, ``>``.
- Why the product and not the first piece: P_t(``</``) also counts ``</tool_response>``, ``</div>``
  and every other closing tag, so it over-approves; the product is exact for the canonical spelling
  (other segmentations of the same text, e.g. ``</th`` + ``ink>``, are not added in: the teacher's
  own tokenizer never produces them). Cost: L - 1 extra teacher positions (2 for ``</think>``), in one
  look-ahead forward that is rolled back, only on steps where some row's student proposes a
  student-only id (about once per trace), and only for the proposed id, never for the whole vocabulary.
- Scope: only the approval test and the recorded ``teacher_prob`` of an accepted student-only token
  use it. The teacher's own SAMPLING distribution (RSD proposals, SKD fallback, teacher mode) keeps
  student-only ids at 0: a teacher that wants to close its thinking writes the pieces. RSD never
  asks the teacher about a student-only id (its threshold is on the student), so RSD's exact mixture
  P(y) = P_t(y) 1[P_s(y) >= tau] + r P_s(y) is unchanged; SKD's becomes
  P(y) = P_s(y) 1[A_t(y) >= tau] + r P_t(y), with A_t the approval probabilities (P_t on shared ids,
  the spelling product on student-only ids) and r = sum over z with A_t(z) < tau of P_s(z).

Rules (``from_tokenizers``):

- Token strings are the raw tokenizer strings (``get_vocab()``, the same strings as
  ``convert_ids_to_tokens``), added and special tokens included. A student id is SHARED iff it has a
  token, the teacher has a token with the same string under the same id, and the id is a logit row
  of both models. A GGUF placeholder ``[PAD<id>]`` at its own id (llama.cpp's filler for unused
  rows) counts as no token.
- A pair is UNBRIDGEABLE (``BridgeError``) when fewer than ``min_shared_fraction`` (default 90%) of
  the student's real ids are shared: the models then do not speak the same ids, and mapping text
  between them is the lossy route the paper rules out. It is also unbridgeable when a student-only
  token has no faithful teacher spelling (empty, not round-tripping to the same text, or using ids
  outside the teacher's logit rows). The error names the pair, the counts and the first examples.

Special tokens across tokenizers (``special_pairs``; DeepSeek-R1-Distill-Llama-8B teaching
Llama-3.2-1B-Instruct: the same 128,256 ids, some special tokens renamed; Tables 4 and 6):

- A special token is matched by its ROLE, never by its text: ``special_pairs`` maps a student special id
  to the teacher special id with the same role (begin of text, end of turn, end of text, thinking
  delimiters; ``rsdlib.prompts.special_token_pairs`` builds it from the two templates' families).
  A student-only special token with a counterpart is spelled as that one teacher token (the student's
  ``<|begin_of_text|>`` is R1-Distill's ``<｜begin▁of▁sentence｜>``, one id, not 7 text pieces); one without
  a counterpart (Llama's reserved tokens, which R1-Distill renamed) is never sampled by the student
  (``student_mask``) and refused by ``student_to_teacher``.
- The teacher's own special tokens with a student counterpart are never masked: ``teacher_alias`` maps
  such a teacher id to the student id its probability goes to (``teacher_to_student`` adds it there).
  R1-Distill's end of turn ``<｜end▁of▁sentence｜>`` (128001) goes to the student's ``<|eot_id|>``
  (128009). Its ``</think>`` (128014, one token) goes to the student's ``</think>`` token when the student
  has one, else to the FIRST piece of the student's spelling of the text (Llama-3.2: ``</``, then
  ``think``, ``>``): the teacher's probability of closing its thinking is credited to that piece, and once
  the piece is emitted the teacher continues from the text it sees (the pieces are shared ids). This is
  exact for the first piece's marginal, not for the rest of the spelling, which the models write on.
- Ids shared by string are unaffected: the paper's Qwen pair has no special pair that differs, so its
  bridge is unchanged.

Masks are kept on CPU and copied once per device on first use (``_on``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import torch

DEFAULT_MIN_SHARED_FRACTION = 0.9  # below this share of the student's real ids, a pair is unbridgeable
N_EXAMPLES = 5  # examples quoted in a BridgeError
_GGUF_PLACEHOLDER = re.compile(r"\[PAD(\d+)\]")  # llama.cpp's name for an unused row: "[PAD151665]"


class BridgeError(ValueError):
    """A teacher/student pair that cannot be bridged; the message says which ids/strings differ."""


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def token_strings(tokenizer, size: int) -> list[str | None]:
    """Raw token string of every id below ``size`` (None where the tokenizer has no token).

    Built from ``get_vocab()`` (one dict, no per-id calls); added tokens win where an id is listed
    twice, as in ``convert_ids_to_tokens``. GGUF placeholders ``[PAD<id>]`` at their own id are None.
    """
    strings: list[str | None] = [None] * size
    for token, idx in tokenizer.get_vocab().items():
        if 0 <= idx < size:
            strings[idx] = token
    for idx, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if 0 <= idx < size:
            strings[idx] = str(added)
    for idx, token in enumerate(strings):
        if token is not None and token.startswith("[PAD"):
            m = _GGUF_PLACEHOLDER.fullmatch(token)
            if m and int(m.group(1)) == idx:
                strings[idx] = None
    return strings


def _examples(items: Sequence[str], total: int) -> str:
    shown = "; ".join(items[:N_EXAMPLES])
    return f"{shown}{f'; and {total - N_EXAMPLES:,} more' if total > N_EXAMPLES else ''}"


@dataclass(eq=False)
class VocabBridge:
    """Teacher/student vocabulary bridge (Appendix A). Shared ids are the same in both vocabularies."""

    teacher_vocab_size: int  # teacher logit rows (V_t)
    student_vocab_size: int  # student logit rows (V_s)
    teacher_mask: torch.Tensor  # bool (V_t,), True = never proposable by the teacher
    student_mask: torch.Tensor  # bool (V_s,), True = student row with no token: never sampled
    student_only: dict[int, list[int]] = field(default_factory=dict)  # student id -> teacher spelling
    student_only_text: dict[int, str] = field(default_factory=dict)  # student id -> its text (for messages)
    teacher_alias: dict[int, int] = field(default_factory=dict)  # teacher special id -> student id of its role
    _device_masks: dict = field(default_factory=dict, init=False, repr=False)  # (name, device) -> mask

    def __post_init__(self) -> None:
        v_t, v_s = self.teacher_vocab_size, self.student_vocab_size
        if v_t < 1 or v_s < 1:
            raise ValueError(f"vocab sizes must be positive, got teacher {v_t}, student {v_s}")
        for name, mask, size in (("teacher_mask", self.teacher_mask, v_t), ("student_mask", self.student_mask, v_s)):
            if mask.dtype != torch.bool or tuple(mask.shape) != (size,):
                got = f"{mask.dtype} {tuple(mask.shape)}"
                raise ValueError(f"{name} must be a bool tensor of shape ({size},), got {got}")
        self.teacher_mask = self.teacher_mask.detach().cpu()
        self.student_mask = self.student_mask.detach().cpu()
        self.student_only = {int(k): [int(t) for t in v] for k, v in self.student_only.items()}
        for sid, spelling in self.student_only.items():
            if not 0 <= sid < v_s or self.student_mask[sid]:
                raise ValueError(f"student-only id {sid} is not a real student id (V_s={v_s})")
            if not spelling or not all(0 <= t < v_t for t in spelling):
                raise ValueError(f"student-only id {sid}: teacher spelling {spelling} is empty or outside 0..{v_t - 1}")
        self.teacher_alias = {int(k): int(v) for k, v in self.teacher_alias.items()}
        for tid, sid in self.teacher_alias.items():
            if not 0 <= tid < v_t or not 0 <= sid < v_s or self.student_mask[sid] or self.teacher_mask[tid]:
                raise ValueError(f"teacher_alias {tid} -> {sid}: needs a proposable teacher id and a real student id")
        # the decoder's contract: the ids the teacher may propose are exactly the shared student ids
        # (real student ids that are not student-only), under the same id, and the aliased teacher ids
        shared = self.shared_mask  # (V_s,)
        if shared[v_t:].any():
            bad = (v_t + torch.nonzero(shared[v_t:]).flatten()).tolist()
            raise ValueError(
                f"student ids {bad[:N_EXAMPLES]} are real, not student-only, and beyond the teacher's {v_t} rows"
            )
        n = min(v_t, v_s)
        shared_t = torch.zeros(v_t, dtype=torch.bool)  # (V_t,)
        shared_t[:n] = shared[:n]
        if self.teacher_alias:
            shared_t[list(self.teacher_alias)] = True
        mismatch = torch.nonzero(shared_t == self.teacher_mask).flatten().tolist()  # proposable XOR shared
        if mismatch:
            raise ValueError(
                f"teacher_mask disagrees with the student's shared ids at {mismatch[:N_EXAMPLES]} "
                f"({len(mismatch)} ids): an id is proposable by the teacher iff it is a shared student id"
            )

    def __eq__(self, other) -> bool:
        if not isinstance(other, VocabBridge):
            return NotImplemented
        return (
            (self.teacher_vocab_size, self.student_vocab_size, self.student_only, self.teacher_alias)
            == (other.teacher_vocab_size, other.student_vocab_size, other.student_only, other.teacher_alias)
            and torch.equal(self.teacher_mask, other.teacher_mask)
            and torch.equal(self.student_mask, other.student_mask)
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tokenizers(
        cls,
        teacher_tokenizer,
        student_tokenizer,
        teacher_vocab_size: int,
        student_vocab_size: int,
        min_shared_fraction: float = DEFAULT_MIN_SHARED_FRACTION,
        special_pairs: dict[int, int] | None = None,
    ) -> "VocabBridge":
        """Build the bridge from two HF tokenizers and the two models' logit row counts.

        ``special_pairs``: student special id -> teacher special id of the same role (module docstring).
        Raises ``BridgeError`` when the pair is unbridgeable (see the module docstring for the rule).
        """
        pairs = {int(k): int(v) for k, v in (special_pairs or {}).items()}
        if not 0.0 <= min_shared_fraction <= 1.0:
            raise ValueError(f"min_shared_fraction must be in [0, 1], got {min_shared_fraction}")
        v_t, v_s = int(teacher_vocab_size), int(student_vocab_size)
        t_str = token_strings(teacher_tokenizer, v_t)
        s_str = token_strings(student_tokenizer, v_s)
        pair = f"teacher {_name(teacher_tokenizer)!r} (V_t={v_t}) / student {_name(student_tokenizer)!r} (V_s={v_s})"

        n = min(v_t, v_s)
        shared = [s is not None and s == t for s, t in zip(s_str[:n], t_str[:n])]  # over ids < n
        student_real = [s is not None for s in s_str]
        n_real = sum(student_real)
        n_shared = sum(shared)
        if n_real == 0:
            raise BridgeError(f"cannot bridge {pair}: the student tokenizer has no tokens below {v_s}")
        not_shared = [i for i in range(v_s) if student_real[i] and not (i < n and shared[i])]
        # student-only special tokens: one teacher token of the same role, or never sampled (never text)
        special_ids = set(getattr(student_tokenizer, "all_special_ids", ()) or ())
        special_ids |= {i for i, t in (getattr(student_tokenizer, "added_tokens_decoder", None) or {}).items()
                        if getattr(t, "special", False)}
        by_role = {sid: [pairs[sid]] for sid in not_shared if sid in pairs and 0 <= pairs[sid] < v_t}
        unpaired_special = [i for i in not_shared if i in special_ids and i not in by_role] if pairs else []
        for i in unpaired_special:
            student_real[i] = False
        not_shared = [i for i in not_shared if i not in by_role and i not in unpaired_special]
        if n_shared < min_shared_fraction * n_real:
            differ = [i for i in not_shared if i < v_t and t_str[i] is not None]
            lacking = [i for i in not_shared if i >= v_t or t_str[i] is None]
            differ_ex = [f"id {i}: student {s_str[i]!r} vs teacher {t_str[i]!r}" for i in differ[:N_EXAMPLES]]
            lacking_ex = [f"id {i}: {s_str[i]!r}" for i in lacking[:N_EXAMPLES]]
            raise BridgeError(
                f"cannot bridge {pair}: only {n_shared:,} of the student's {n_real:,} token ids "
                f"({n_shared / n_real:.1%}) have the same token string under the same id in the teacher "
                f"(need >= {min_shared_fraction:.0%}); RSD compares the two models' probabilities id by id, "
                f"so both must use one vocabulary. {len(differ):,} ids have different strings, e.g. "
                + _examples(differ_ex, len(differ))
                + f"; {len(lacking):,} student ids have no teacher token"
                + (", e.g. " + _examples(lacking_ex, len(lacking)) if lacking else "")
                + "."
            )

        # student-only ids: the teacher spells their text with its own tokens
        student_only: dict[int, list[int]] = {}
        texts: dict[int, str] = {}
        if not_shared:
            decoded = student_tokenizer.batch_decode(
                [[i] for i in not_shared], skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
            spellings = teacher_tokenizer(decoded, add_special_tokens=False)["input_ids"]
            bad = []
            for sid, text, spelling in zip(not_shared, decoded, spellings):
                spelling = list(spelling)
                back = teacher_tokenizer.decode(
                    spelling, skip_special_tokens=False, clean_up_tokenization_spaces=False
                )
                if not spelling or back != text or "\ufffd" in text or not all(0 <= t < v_t for t in spelling):
                    bad.append(f"id {sid}: {s_str[sid]!r} -> text {text!r} -> teacher {spelling}")
                    continue
                student_only[sid], texts[sid] = spelling, text
            if bad:
                raise BridgeError(
                    f"cannot bridge {pair}: {len(bad):,} of the {len(not_shared):,} student-only tokens have no "
                    "faithful teacher spelling (empty, not decoding back to the same text, a partial character, "
                    "or ids beyond the teacher's logit rows): " + _examples(bad, len(bad)) + "."
                )

        for sid, spelling in by_role.items():
            student_only[sid] = spelling
            texts[sid] = student_tokenizer.convert_ids_to_tokens(sid)
        shared_t = torch.zeros(v_s, dtype=torch.bool)
        shared_t[:n] = torch.tensor(shared, dtype=torch.bool)
        student_mask = ~torch.tensor(student_real, dtype=torch.bool)  # (V_s,)
        teacher_mask = torch.ones(v_t, dtype=torch.bool)  # (V_t,)
        teacher_mask[:n] = ~shared_t[:n]
        # the teacher's own special tokens of a role the student has: proposable, credited to the student's id
        alias: dict[int, int] = {}
        for sid, tid in pairs.items():
            if tid < v_t and teacher_mask[tid] and 0 <= sid < v_s and not student_mask[sid] and sid not in student_only:
                alias[tid] = sid
                teacher_mask[tid] = False
        return cls(v_t, v_s, teacher_mask, student_mask, student_only, texts, alias)

    @classmethod
    def identity(cls, vocab_size: int) -> "VocabBridge":
        """Both models share one vocabulary of ``vocab_size`` rows, all real (tests with tiny models)."""
        none = torch.zeros(vocab_size, dtype=torch.bool)
        return cls(vocab_size, vocab_size, none, none.clone())

    @classmethod
    def shared_prefix(
        cls,
        teacher_vocab_size: int,
        student_vocab_size: int,
        n_shared: int,
        student_only: dict[int, Sequence[int]] | None = None,
    ) -> "VocabBridge":
        """A bridge from id counts alone (no tokenizers): ids 0..n_shared-1 are shared, the rest masked.

        The shape of the paper's pair (field notes, section 1): s1.1-7B has 152,064 logit rows, Qwen3-0.6B
        151,936, ids 0..151,664 mean the same token in both (``n_shared=151_665``); every teacher row
        >= n_shared is masked and every student row >= n_shared is a padding row, except the
        ``student_only`` ids (student id -> teacher spelling), e.g. ``{151668: [522, 26865, 29]}`` for
        ``</think>``. Used where the architecture matters but the vocabulary does not (random-weight
        throughput checks at the paper's shapes, ``benchmarks/gpu_check.py``).
        """
        v_t, v_s, n = int(teacher_vocab_size), int(student_vocab_size), int(n_shared)
        if not 1 <= n <= min(v_t, v_s):
            raise ValueError(f"n_shared must be in 1..{min(v_t, v_s)} (the smaller vocabulary), got {n}")
        teacher_mask = torch.ones(v_t, dtype=torch.bool)  # (V_t,)
        teacher_mask[:n] = False
        student_mask = torch.ones(v_s, dtype=torch.bool)  # (V_s,)
        student_mask[:n] = False
        only = {int(k): [int(t) for t in v] for k, v in (student_only or {}).items()}
        for sid in only:
            if not n <= sid < v_s:
                raise ValueError(f"student-only id {sid} must lie in {n}..{v_s - 1} (beyond the shared ids)")
            student_mask[sid] = False
        return cls(v_t, v_s, teacher_mask, student_mask, only)

    # ------------------------------------------------------------------ facts
    @property
    def shared_mask(self) -> torch.Tensor:
        """bool (V_s,): real student ids the teacher shares (same id, same string)."""
        shared = ~self.student_mask
        if self.student_only:
            shared = shared.clone()
            shared[list(self.student_only)] = False
        return shared

    @property
    def student_only_mask(self) -> torch.Tensor:
        """bool (V_s,): student ids the teacher writes with its own spelling (``student_only``)."""
        mask = torch.zeros(self.student_vocab_size, dtype=torch.bool)
        if self.student_only:
            mask[list(self.student_only)] = True
        return mask

    @property
    def is_identity(self) -> bool:
        """Equal sizes, no student-only ids, and the teacher masks exactly what the student masks."""
        return (
            self.teacher_vocab_size == self.student_vocab_size
            and not self.student_only
            and not self.teacher_alias
            and torch.equal(self.teacher_mask, self.student_mask)
        )

    def summary(self) -> dict:
        """JSON-able description, to be recorded with every trace."""
        return {
            "teacher_vocab_size": self.teacher_vocab_size,
            "student_vocab_size": self.student_vocab_size,
            "shared": int(self.shared_mask.sum()),
            "teacher_masked": int(self.teacher_mask.sum()),
            "student_masked": int(self.student_mask.sum()),
            "student_only": {str(k): v for k, v in sorted(self.student_only.items())},
            "student_only_text": {str(k): v for k, v in sorted(self.student_only_text.items())},
            "teacher_alias": {str(k): v for k, v in sorted(self.teacher_alias.items())},
            "is_identity": self.is_identity,
        }

    # ------------------------------------------------------------------ mapping
    def student_to_teacher(self, student_ids: Sequence[int]) -> list[int]:
        """Student ids -> teacher ids: shared ids unchanged, student-only ids replaced by their spelling."""
        out: list[int] = []
        for sid in student_ids:
            sid = int(sid)
            spelling = self.student_only.get(sid)
            if spelling is not None:
                out.extend(spelling)
            elif 0 <= sid < self.teacher_vocab_size and not (self.teacher_alias and self.student_mask[sid]):
                out.append(sid)
            else:
                raise ValueError(f"student id {sid} has no teacher counterpart (V_t={self.teacher_vocab_size})")
        return out

    def _on(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, str(device))
        mask = self._device_masks.get(key)
        if mask is None:
            mask = self._device_masks[key] = getattr(self, name).to(device)
        return mask

    def _masks_any(self, name: str) -> bool:
        """Whether mask ``name`` masks anything (computed once; the masks never change)."""
        key = ("any", name)
        if key not in self._device_masks:
            self._device_masks[key] = bool(getattr(self, name).any())
        return self._device_masks[key]

    def teacher_to_student(self, teacher_probs: torch.Tensor) -> torch.Tensor:
        """(..., V_t) teacher probabilities (masked rows already 0) -> (..., V_s) over student ids.

        Shared ids are copied, student-only and student-masked ids get 0. Identity bridges return the
        input itself.
        """
        if teacher_probs.shape[-1] != self.teacher_vocab_size:
            raise ValueError(f"expected last dim {self.teacher_vocab_size}, got {tuple(teacher_probs.shape)}")
        if self.is_identity and not self._masks_any("teacher_mask"):
            return teacher_probs
        n = min(self.teacher_vocab_size, self.student_vocab_size)
        out = teacher_probs.new_zeros(*teacher_probs.shape[:-1], self.student_vocab_size)  # (..., V_s)
        out[..., :n] = teacher_probs[..., :n].masked_fill(self._on("teacher_mask", teacher_probs.device)[:n], 0)
        if self.teacher_alias:  # a teacher special token's probability goes to the student id of its role
            aliased = teacher_probs[..., :n].masked_fill(~self._on("shared_teacher_rows", teacher_probs.device), 0)
            out[..., :n] = aliased  # shared ids only (an aliased teacher id may also be a real student id)
            for tid, sid in self.teacher_alias.items():
                out[..., sid] += teacher_probs[..., tid]
        return out

    @property
    def shared_teacher_rows(self) -> torch.Tensor:
        """bool (min(V_t, V_s),): ids the teacher proposes under the same id (proposable, not aliased)."""
        n = min(self.teacher_vocab_size, self.student_vocab_size)
        rows = ~self.teacher_mask[:n]
        if self.teacher_alias:
            rows = rows.clone()
            rows[[t for t in self.teacher_alias if t < n]] = False
        return rows

    def mask_teacher_logits(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """(..., V_t) -> the same with ``teacher_mask`` rows at -inf (the input itself if none is masked)."""
        return self._mask(teacher_logits, "teacher_mask", self.teacher_vocab_size)

    def mask_student_logits(self, student_logits: torch.Tensor) -> torch.Tensor:
        """(..., V_s) -> the same with ``student_mask`` rows at -inf (the input itself if none is masked)."""
        return self._mask(student_logits, "student_mask", self.student_vocab_size)

    def _mask(self, logits: torch.Tensor, name: str, size: int) -> torch.Tensor:
        if logits.shape[-1] != size:
            raise ValueError(f"{name}: expected last dim {size}, got {tuple(logits.shape)}")
        if not self._masks_any(name):  # decided once per bridge: no per-step host work
            return logits
        return logits.masked_fill(self._on(name, logits.device), float("-inf"))
