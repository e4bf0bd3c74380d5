"""Token-for-token identity check of the decoder: one md5 over the traces of a fixed set of cases.

Run it on two checkouts (e.g. before and after a refactoring of the engine) and compare the printed
lines; any change in a sampled token, a recorded probability (bit for bit), a fallback flag, a source,
a finish reason or the speculative counters changes the digest::

    PYTHONPATH=/path/to/old python benchmarks/check_decoder_identity.py
    PYTHONPATH=/path/to/new python benchmarks/check_decoder_identity.py

The cases cover the four modes (rsd, skd, teacher, student), trials 1 and 5, the raw threshold test,
top-p, greedy single-model decoding, ``record_both``, lockstep and speculative RSD (draft_tokens 0, 1,
3), batch sizes 1 to 4 with and without refill, different stop ids, a model steered through
``rsdlib_steer`` (as the stand-ins are), and a bridged pair with mismatched vocabularies (padded teacher
rows, a student-only ``</think>`` spelled by three teacher tokens; SKD scores it by look-ahead). Models
are tiny random Qwen2 LMs (built as in tests/test_decoding.py), CPU, float32, one thread: a few seconds
on an idle core. Only public names of ``rsdlib.decoding`` and ``rsdlib.bridge`` are used, so the same
script runs on every version.
"""

from __future__ import annotations

import argparse
import hashlib
import struct

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rsdlib.bridge import VocabBridge
from rsdlib.decoding import Decoder, DecodingConfig

PROMPTS = [[5, 9, 13, 2, 7, 30, 31], [4, 8], [11, 12, 13, 14], [40, 41, 42, 43, 44, 45, 46, 20, 21, 22, 3],
           [6, 6, 6], [17, 3, 25, 1, 9]]


def lm(vocab: int, seed: int, layers: int = 2, init: float = 0.6):
    """A tiny random Qwen2 LM with peaked next-token distributions (as tests/test_decoding.py's ``tiny_lm``)."""
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      initializer_range=init, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1)
    return Qwen2ForCausalLM(cfg).eval()


class BigramSteer:
    """An ``rsdlib_steer`` hook (the stand-ins' interface): +bias on token (last id * 7 + 3) % V."""

    def __init__(self, bias: float):
        self.bias = bias

    def __call__(self, logits, rows, to_model_ids):
        logits = logits.clone()
        for b, (prompt, generated) in enumerate(rows):
            last = (list(prompt) + list(generated))[-1]
            last = to_model_ids([last])[-1] if to_model_ids is not None else last
            logits[b, (last * 7 + 3) % logits.shape[-1]] += self.bias
        return logits


def identity_pair():
    return lm(48, seed=1, layers=3), lm(48, seed=2), VocabBridge.identity(48)


def bridged_pair():
    """Student id 39 is a student-only `</think>` spelled [7, 8, 9]; the teacher has 128 padded rows."""
    v_s, v_t = 40, 40 + 128
    teacher, student = lm(v_t, seed=5), lm(v_s, seed=6)
    with torch.no_grad():
        teacher.lm_head.weight[7] *= 3
        teacher.lm_head.weight[v_s:] *= 8
        student.lm_head.weight[v_s - 1] *= 4
    mask = torch.zeros(v_t, dtype=torch.bool)
    mask[v_s - 1:] = True
    bridge = VocabBridge(teacher_vocab_size=v_t, student_vocab_size=v_s, teacher_mask=mask,
                         student_mask=torch.zeros(v_s, dtype=torch.bool), student_only={v_s - 1: [7, 8, 9]})
    return teacher, student, bridge


def cases():
    """(name, pair builder, DecodingConfig kwargs, generate kwargs, number of prompts)."""
    base = dict(temperature=0.9, threshold=0.05, max_new_tokens=12)
    out = []
    for mode in ("rsd", "skd", "teacher", "student"):
        for trials in (1, 5):
            out.append((f"{mode}-t{trials}", identity_pair, dict(base, mode=mode, trials=trials, stop_ids=(1,)),
                        dict(batch_size=3), 6))
    out += [
        ("rsd-raw-topp", identity_pair, dict(base, mode="rsd", threshold_on="raw", top_p=0.9, stop_ids=(0, 3)),
         dict(batch_size=4), 6),
        ("skd-raw-t2", identity_pair, dict(base, mode="skd", threshold_on="raw", trials=2, stop_ids=(5,)),
         dict(batch_size=2), 5),
        ("teacher-record-both", identity_pair, dict(base, mode="teacher", record_both=True, stop_ids=(2,)),
         dict(batch_size=2), 4),
        ("student-greedy", identity_pair, dict(base, mode="student", temperature=0.0, record_both=True),
         dict(batch_size=3), 4),
        ("teacher-greedy", identity_pair, dict(base, mode="teacher", temperature=0.0), dict(batch_size=1), 3),
        ("rsd-no-refill", identity_pair, dict(base, mode="rsd", stop_ids=(1, 2)), dict(batch_size=4, refill=False),
         6),
        ("rsd-batch1", identity_pair, dict(base, mode="rsd", max_new_tokens=8), dict(batch_size=1), 3),
        ("rsd-tau0", identity_pair, dict(base, mode="rsd", threshold=0.0), dict(batch_size=3), 3),
        ("rsd-tau2", identity_pair, dict(base, mode="rsd", threshold=2.0), dict(batch_size=3), 3),
        ("rsd-steered", lambda: steered(identity_pair()), dict(base, mode="rsd", stop_ids=(1,)),
         dict(batch_size=3), 5),
        ("skd-steered", lambda: steered(identity_pair()), dict(base, mode="skd"), dict(batch_size=2), 3),
    ]
    for k in (1, 3):
        for trials in (1, 5):
            out.append((f"spec-k{k}-t{trials}", identity_pair,
                        dict(base, mode="rsd", trials=trials, draft_tokens=k, max_new_tokens=16, stop_ids=(0,)),
                        dict(batch_size=3), 6))
    out += [
        ("spec-k2-no-refill-raw", identity_pair,
         dict(base, mode="rsd", draft_tokens=2, threshold_on="raw", stop_ids=(1, 4)), dict(batch_size=4, refill=False),
         6),
        ("spec-k3-batch1", identity_pair, dict(base, mode="rsd", draft_tokens=3), dict(batch_size=1), 2),
        ("bridged-rsd", bridged_pair, dict(base, mode="rsd", temperature=1.0, threshold=0.02, max_new_tokens=16),
         dict(batch_size=3), 5),
        ("bridged-skd-t2", bridged_pair,
         dict(base, mode="skd", temperature=1.0, threshold=0.05, trials=2, max_new_tokens=14, stop_ids=(1,)),
         dict(batch_size=2), 5),
        ("bridged-skd-raw", bridged_pair,
         dict(base, mode="skd", temperature=1.0, threshold=0.05, threshold_on="raw", max_new_tokens=10),
         dict(batch_size=3), 4),
        ("bridged-spec-k3", bridged_pair,
         dict(base, mode="rsd", temperature=1.0, threshold=0.03, max_new_tokens=20, draft_tokens=3),
         dict(batch_size=3), 5),
        ("bridged-student-record-both", bridged_pair, dict(base, mode="student", record_both=True),
         dict(batch_size=2), 3),
    ]
    return out


def steered(pair):
    teacher, student, bridge = pair
    teacher.rsdlib_steer = BigramSteer(4.0)
    student.rsdlib_steer = BigramSteer(2.0)
    return teacher, student, bridge


def trace_bytes(trace) -> bytes:
    """Every per-token field of a trace, floats bit for bit (NaN as its bit pattern)."""
    parts = [struct.pack(f"<{len(trace.token_ids)}q", *trace.token_ids),
             struct.pack(f"<{len(trace.source)}q", *trace.source),
             bytes(int(f) for f in trace.fallback)]
    for name in ("teacher_prob", "student_prob", "student_prob_raw", "student_entropy"):
        values = getattr(trace, name)
        parts.append(struct.pack(f"<{len(values)}d", *values))
    parts.append(f"{trace.seed}|{trace.finish_reason}|{trace.prompt_ids}|{sorted(trace.config.items())}".encode())
    return b"\x00".join(parts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verbose", action="store_true", help="one md5 per case as well")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    total, n_traces, n_tokens = hashlib.md5(), 0, 0
    for name, make_pair, cfg_kwargs, gen_kwargs, n_prompts in cases():
        teacher, student, bridge = make_pair()
        cfg = DecodingConfig(**cfg_kwargs)
        dec = Decoder(teacher if cfg.needs_teacher else None, student if cfg.needs_student else None, bridge, cfg)
        prompts = PROMPTS[:n_prompts]
        if bridge.student_vocab_size < 48:  # keep the bridged pair's prompts inside its vocabulary
            prompts = [[t % 39 for t in p] for p in prompts]
        traces = dec.generate(prompts, [100 + i for i in range(len(prompts))], **gen_kwargs)
        case = hashlib.md5(name.encode())
        for trace in traces:
            case.update(trace_bytes(trace))
        spec = {k: v for k, v in getattr(dec, "stats", {}).items() if k != "batch"}
        case.update(repr(sorted(spec.items())).encode())
        total.update(case.digest())
        n_traces += len(traces)
        n_tokens += sum(len(t.token_ids) for t in traces)
        if args.verbose:
            print(f"{name:30s} {case.hexdigest()} {sum(len(t.token_ids) for t in traces)} tokens {spec or ''}")
    print(f"decoder identity: {len(cases())} cases, {n_traces} traces, {n_tokens} tokens, md5 {total.hexdigest()}")


if __name__ == "__main__":
    main()
