"""Transferred training sets (paper, Section 5.1 and Table 4's "+ RSD-generated (Transferred)" rows).

"Transferred" needs no new decoding: the Qwen3-0.6B RSD-1% training set (and, for the "+ s1K-1.1" rows,
the s1K-1.1 set), as TEXT, re-tokenized for another student with that student's own tokenizer and chat
template, then trained into it (notebook 30). Each example keeps its problem and kind:

- the prompt is rebuilt from the problem with the other student's template (``rsdlib.prompts.prompt_ids``:
  its own system-role rules, Llama's pinned date, the Qwen identity only for Qwen models);
- the completion is the source student's completion decoded to text (special tokens kept as their
  text, so Qwen3's ``</think>`` becomes the text ``</think>``, which the other student learns through
  SFT; Phi-4-Mini-Reasoning writes it natively), the source's end-of-turn token dropped, the text
  encoded by the other tokenizer, and the other student's OWN end-of-turn token appended to full
  examples (``<|eot_id|>``, ``<end_of_turn>``, ``<|end|>``...); prefix examples stay without one.

For a student with the source's tokenizer and template (Qwen3-1.7B / 4B from Qwen3-0.6B) the examples come
back id for id (tests/test_transfer.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from rsdlib import store
from rsdlib.prompts import PromptStyle, end_of_turn_ids, prompt_ids, turn_end_id


def transfer_examples(examples: list[dict], source_tokenizer, target_tokenizer, problems: dict,
                      style: PromptStyle) -> list[dict]:
    """``examples`` (source student ids) -> the same examples in the target student's ids and template.

    ``problems``: problem id -> ``rsdlib.data.Problem`` (the prompt is rebuilt from it)."""
    source_ends = set(end_of_turn_ids(source_tokenizer))
    target_end = turn_end_id(target_tokenizer)
    out = []
    for ex in examples:
        problem = problems.get(ex["problem_id"])
        if problem is None:
            raise ValueError(f"example {ex.get('id')!r}: problem {ex['problem_id']!r} is not among the trace problems")
        ids = list(ex["completion_ids"])
        full = ex["kind"] == "full"
        if full:
            if not ids or ids[-1] not in source_ends:
                raise ValueError(f"example {ex.get('id')!r}: a full example must end with the source's end of turn")
            ids = ids[:-1]
        text = source_tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        completion = list(target_tokenizer(text, add_special_tokens=False)["input_ids"])
        completion += [target_end] if full else []
        out.append({**ex, "prompt_ids": prompt_ids(target_tokenizer, problem, style), "completion_ids": completion,
                    "transferred_from_tokens": len(ex["completion_ids"])})
    return out


def write_transfer_run(source_dir: Path, out_dir: Path, source_tokenizer, target_tokenizer, problems: dict,
                       style: PromptStyle, *, target: str, source: str) -> dict:
    """``out_dir/dataset.jsonl`` (+ ``summary.json``): ``source_dir``'s training set transferred to ``target``."""
    examples = [json.loads(line) for line in (source_dir / "dataset.jsonl").read_text().splitlines() if line.strip()]
    moved = transfer_examples(examples, source_tokenizer, target_tokenizer, problems, style)
    out_dir.mkdir(parents=True, exist_ok=True)
    store.write_jsonl_atomic(out_dir / "dataset.jsonl", moved)
    full = sum(e["kind"] == "full" for e in moved)
    full_tokens = sum(len(e["completion_ids"]) for e in moved if e["kind"] == "full")
    summary = {"method": out_dir.name, "transferred_from": source, "student": target, "problems": full,
               "solved": full, "samples": 0, "training_examples": len(moved), "full_examples": full,
               "prefix_examples": len(moved) - full, "prefix_only_problems": 0,
               "avg_tokens": full_tokens / full if full else None}
    store.write_json_atomic(out_dir / "summary.json", summary)
    return summary
