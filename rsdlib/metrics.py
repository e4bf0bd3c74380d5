"""Evaluation estimators and trace metrics.

Estimators (paper section 4, Appendix B; field notes section 6):

- ``pass_at_k(n, c, k)``: unbiased pass@k = 1 - C(n-c, k) / C(n, k), computed as the stable product
  1 - prod_{i=n-c+1..n} (1 - k/i).
- ``avg_at_k(correct)``: mean over problems of (correct samples / k) (the paper's avg@64 and avg@8).
- ``maj_at_k(answers, golds)``: majority-vote accuracy.

Trace metrics under a scoring model, usually the student (paper section 3.2, Figures 2-3, Table 2):

- surprisal s_i = -log P_s(y_i | y_<i), entropy H_i = -sum_y P_s(y | y_<i) log P_s(y | y_<i) (nats),
  perplexity PPL = exp(mean_i s_i), sub-threshold ratio = share of tokens with P_s(y_i) < 1%;
- ``token_logprobs_and_entropy``, ``surprisal``, ``perplexity``, ``sub_threshold_ratio``: pure tensor
  functions;
- ``score_traces(model, prompts, completions)``: batched teacher-forced forwards (one forward per
  batch of traces, right padding, attention mask), completion tokens scored with the prompt as
  context; the vocabulary projection runs in chunks of positions so 8k-token traces with a 152k
  vocabulary fit in memory.
- ``summarize_dataset(records)``: the columns of Table 2 (correctly solved, fallback rate, sub-1%
  tokens) and Table 6 (average token count) for one trace dataset.

Uncertainty (issue 16; the paper reports none). Every function is pure and seeded (``seed``: the same
inputs give the same interval), returns an ``Interval`` (estimate, 95% bounds) and is vectorised
(one (resamples, units) index draw, no Python loop over resamples):

- ``wilson_interval(successes, n)``: solved counts and rates (Table 2, Table 3's "Correctly solved");
- ``bootstrap_accuracy(correct)``: avg@k / pass@1 of one benchmark, percentile bootstrap over
  PROBLEMS, each problem resampled with all its samples (the problem is the unit of independence);
  ``bootstrap_average_accuracy({benchmark: correct})``: the across-benchmark average, each benchmark's
  problems resampled within the same replicate;
- ``paired_accuracy_difference(model, base)``: model - base on the same problems, problems resampled
  jointly (``Interval.excludes_zero`` marks a difference the data can tell from 0);
- where every problem has the same score (0/6 solved, or two models equal on every problem) the
  percentile bootstrap collapses to a zero-width interval, which would claim certainty that a
  handful of problems cannot give (issue 33). An accuracy then gets Wilson's score interval with
  the common score as the share (method "wilson (no variation; bootstrap)"); a paired difference of
  0 on every problem gets the discordant-pair bound (McNemar's view: only problems on which the two
  models disagree move the difference, and none did): -/+ the Wilson upper limit for 0 of n
  ("wilson (no variation; discordant pairs)"); another common difference c gets Wilson's interval
  of (c + 1) / 2 rescaled to [-1, 1];
- the Averages (of accuracies, and of paired differences) keep every benchmark's uncertainty: a
  replicate averages one bootstrap replicate of each benchmark that varies and, for each that does
  not, one draw of its Wilson interval's confidence distribution (the bound at a standard normal
  score, stratified), so a benchmark with one problem still counts its binomial uncertainty and one
  more correct answer elsewhere cannot narrow the Average below that benchmark's share of it
  (method "bootstrap + wilson (no variation: <benchmarks>)");
- ``bootstrap_mean`` / ``bootstrap_ratio``: trace-level statistics resampled over TRACES (tokens
  within a trace are not independent): trace length and perplexity are means over traces, the
  sub-1% share and the fallback rate pooled ratios sum(numerators) / sum(denominators);
  ``paired_ratio_difference``: the difference of two pooled ratios, units (problems) resampled
  jointly (Table 2: teacher vs RSD sub-1% share);
- ``minimum_detectable_effect(se)``: the smallest true difference a two-sided 5% test detects with
  80% power, (z_0.975 + z_0.8) * se = 2.80 se; ``accuracy_difference_se(problems)`` the standard error
  of a paired accuracy difference at the worst-case variance (p = 0.5, uncorrelated outcomes).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "pass_at_k",
    "avg_at_k",
    "maj_at_k",
    "majority_answer",
    "token_logprobs_and_entropy",
    "surprisal",
    "perplexity",
    "sub_threshold_ratio",
    "score_traces",
    "summarize_dataset",
    "Interval",
    "wilson_interval",
    "bootstrap_mean",
    "bootstrap_ratio",
    "paired_ratio_difference",
    "bootstrap_accuracy",
    "bootstrap_average_accuracy",
    "paired_accuracy_difference",
    "minimum_detectable_effect",
    "accuracy_difference_se",
]


# ----------------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct (Chen et al. 2021)."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _rows(correct: Any) -> list[list[bool]]:
    if isinstance(correct, torch.Tensor):
        correct = correct.tolist()
    elif hasattr(correct, "tolist"):  # numpy arrays
        correct = correct.tolist()
    return [[bool(x) for x in row] for row in correct]


def avg_at_k(correct: Any, k: int | None = None) -> float:
    """avg@k: mean over problems of (correct samples among the first k) / k.

    ``correct``: one row of per-sample booleans per problem (list of lists, or a (P, n) array).
    ``k=None`` uses every sample of each row (rows may then differ in length); a row shorter than an
    explicit ``k`` is an error (the estimate would silently change meaning).
    """
    return float(_problem_scores(correct, k, what="avg_at_k").mean())


def mean_pass_at_k(correct: Any, k: int) -> float:
    """Mean over problems of the unbiased pass@k, from per-sample correctness rows."""
    rows = _rows(correct)
    return sum(pass_at_k(len(r), sum(r), k) for r in rows) / len(rows)


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """Most common non-None answer (after stripping whitespace); ties go to the answer seen first."""
    votes = [a.strip() for a in answers if a is not None and a.strip()]
    if not votes:
        return None
    counts = Counter(votes)
    best = max(counts.values())
    return next(a for a in votes if counts[a] == best)


def maj_at_k(
    answers: Sequence[Sequence[str | None]],
    golds: Sequence[str] | None = None,
    *,
    correct: Any = None,
    k: int | None = None,
    is_equivalent: Callable[[str, str], bool] | None = None,
) -> float:
    """maj@k: fraction of problems whose majority answer (over the first k samples) is correct.

    ``answers``: per problem, the extracted answer of each sample (None = no answer; it casts no
    vote; a problem with no vote counts as wrong). Votes group identical strings (whitespace
    stripped); ties go to the answer that appears first in sample order.
    The winner is judged either against ``golds`` with ``is_equivalent(answer, gold)`` (default:
    string equality after stripping), or, when ``correct`` (per-sample booleans, same shape as
    ``answers``) is given instead, by the correctness of the winner's first sample.
    """
    if (golds is None) == (correct is None):
        raise ValueError("maj_at_k: give exactly one of golds or correct")
    rows_correct = _rows(correct) if correct is not None else None
    equal = is_equivalent or (lambda a, g: a.strip() == str(g).strip())
    if not answers:
        raise ValueError("maj_at_k: no problems")
    hits = 0
    for i, row in enumerate(answers):
        kk = len(row) if k is None else k
        if len(row) < kk:
            raise ValueError(f"maj_at_k: problem {i} has {len(row)} samples, need k={kk}")
        window = list(row[:kk])
        winner = majority_answer(window)
        if winner is None:
            continue
        if rows_correct is not None:
            first = next(j for j, a in enumerate(window) if a is not None and a.strip() == winner)
            hits += bool(rows_correct[i][first])
        else:
            hits += bool(equal(winner, golds[i]))
    return hits / len(answers)


# ----------------------------------------------------------------------------------------------
# Token metrics (pure functions on tensors)
# ----------------------------------------------------------------------------------------------
def token_logprobs_and_entropy(
    logits: torch.Tensor, target_ids: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target token and the entropy of each next-token distribution.

    logits: (..., T, V) next-token logits, position t predicting ``target_ids[..., t]``;
    target_ids: (..., T). Returns (logprobs (..., T), entropy (..., T)), float32, natural log.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (..., T, V)
    token_logprobs = logp.gather(-1, target_ids.long().unsqueeze(-1)).squeeze(-1)  # (..., T)
    entropy = -(logp.exp() * logp).nan_to_num(0.0).sum(-1)  # (..., T); 0 * log 0 = 0
    return token_logprobs, entropy


def surprisal(logprobs: torch.Tensor) -> torch.Tensor:
    """s_i = -log P(y_i | y_<i), same shape as ``logprobs``."""
    return -logprobs


def _masked(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return values if mask is None else values[mask.bool()]


def perplexity(logprobs: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PPL = exp(mean surprisal) over the (masked) tokens; NaN for zero tokens."""
    vals = _masked(logprobs, mask).double()
    return float(torch.exp(-vals.mean())) if vals.numel() else float("nan")


def sub_threshold_ratio(probs: torch.Tensor, threshold: float = 0.01, mask: torch.Tensor | None = None) -> float:
    """Share of (masked) tokens whose probability is below ``threshold``; NaN for zero tokens."""
    vals = _masked(probs, mask)
    return float((vals < threshold).double().mean()) if vals.numel() else float("nan")


# ----------------------------------------------------------------------------------------------
# Teacher-forced scoring of traces
# ----------------------------------------------------------------------------------------------
def _can_chunk(model) -> bool:
    """True when logits = lm_head(last hidden state) exactly (no soft-capping or logit scaling)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return False
    get_dec, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    if get_dec is None or get_head is None:
        return False
    try:
        decoder, head = get_dec(), get_head()
    except Exception:
        return False
    return decoder is not None and decoder is not model and isinstance(head, torch.nn.Linear)


@torch.inference_mode()
def score_traces(
    model,
    prompt_ids_list: Sequence[Sequence[int]],
    completion_ids_list: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    temperature: float = 1.0,
    threshold: float = 0.01,
    device: str | torch.device | None = None,
    chunk_tokens: int | None = 1024,
    progress: bool = False,
) -> list[dict]:
    """Score each completion under ``model`` with its prompt as context (paper section 3.2).

    One forward per batch of ``batch_size`` traces (sorted by length to limit padding; results come
    back in input order), right-padded with an attention mask. Only completion tokens are scored:
    the token at sequence position p is predicted by the logits at p-1, so every prompt needs at
    least one token. The vocabulary projection runs over ``chunk_tokens`` completion positions at a
    time (``None``: take the model's full logits, e.g. for models with logit soft-capping).

    Returns, per trace: ``token_logprobs``, ``token_entropy``, ``surprisal`` (lists of floats, one per
    completion token, nats), ``perplexity``, ``sub_threshold_ratio`` (probability < ``threshold``)
    and ``n_tokens``. ``temperature`` divides the logits first (1.0: the model's own distribution).
    """
    if len(prompt_ids_list) != len(completion_ids_list):
        raise ValueError("score_traces: as many prompts as completions are needed")
    for i, p in enumerate(prompt_ids_list):
        if len(p) == 0:
            raise ValueError(f"score_traces: prompt {i} is empty; the first completion token needs a context")
    if device is None:
        try:
            device = next(model.parameters()).device
        except (StopIteration, AttributeError):
            device = torch.device("cpu")
    device = torch.device(device)
    chunked = chunk_tokens is not None and _can_chunk(model)
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0

    order = sorted(range(len(prompt_ids_list)), key=lambda i: -(len(prompt_ids_list[i]) + len(completion_ids_list[i])))
    results: list[dict | None] = [None] * len(order)
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    iterator = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc="scoring traces", unit="batch", mininterval=5.0)
    for batch in iterator:
        seqs = [list(prompt_ids_list[i]) + list(completion_ids_list[i]) for i in batch]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, L)
        attention = torch.zeros((len(batch), width), dtype=torch.long)  # (B, L)
        for r, s in enumerate(seqs):
            input_ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            attention[r, : len(s)] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        # (row, position) of each predicting logit and the token it predicts, all completions flattened
        rows, positions, targets, owner = [], [], [], []
        for r, i in enumerate(batch):
            p_len, c_len = len(prompt_ids_list[i]), len(completion_ids_list[i])
            rows += [r] * c_len
            positions += list(range(p_len - 1, p_len + c_len - 1))
            targets += list(completion_ids_list[i])
            owner.append(c_len)
        rows_t = torch.tensor(rows, dtype=torch.long, device=device)  # (N,)
        pos_t = torch.tensor(positions, dtype=torch.long, device=device)  # (N,)
        tgt_t = torch.tensor(targets, dtype=torch.long, device=device)  # (N,)
        logprobs = torch.empty(len(targets), dtype=torch.float32, device=device)  # (N,)
        entropy = torch.empty(len(targets), dtype=torch.float32, device=device)  # (N,)
        if len(targets):
            if chunked:
                decoder = model.get_decoder()
                hidden = decoder(input_ids=input_ids, attention_mask=attention).last_hidden_state  # (B, L, H)
                head = model.get_output_embeddings()
                picked = hidden[rows_t, pos_t]  # (N, H)
                for s in range(0, len(targets), chunk_tokens):
                    logits = head(picked[s : s + chunk_tokens])  # (n, V)
                    lp, ent = token_logprobs_and_entropy(logits, tgt_t[s : s + chunk_tokens], temperature)
                    logprobs[s : s + chunk_tokens], entropy[s : s + chunk_tokens] = lp, ent
            else:
                logits = model(input_ids=input_ids, attention_mask=attention).logits  # (B, L, V)
                lp, ent = token_logprobs_and_entropy(logits[rows_t, pos_t], tgt_t, temperature)  # (N,)
                logprobs, entropy = lp, ent
        start = 0
        for i, c_len in zip(batch, owner):
            lp, ent = logprobs[start : start + c_len].cpu(), entropy[start : start + c_len].cpu()
            start += c_len
            results[i] = {
                "token_logprobs": lp.tolist(),
                "token_entropy": ent.tolist(),
                "surprisal": surprisal(lp).tolist(),
                "perplexity": perplexity(lp),
                "sub_threshold_ratio": sub_threshold_ratio(lp.exp(), threshold),
                "n_tokens": c_len,
            }
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Dataset summaries: Table 2 and Table 6
# ----------------------------------------------------------------------------------------------
def _in_dataset(records: Sequence[dict]) -> list[dict]:
    if any("kept" in r for r in records):
        return [r for r in records if r.get("kept")]
    return [r for r in records if r.get("status") == "correct"]


def _token_count(r: dict) -> int:
    if r.get("n_tokens") is not None:
        return int(r["n_tokens"])
    for key in ("token_ids", "student_prob_raw", "student_prob", "fallback"):
        if r.get(key) is not None:
            return len(r[key])
    raise ValueError("summarize_dataset: a record has no n_tokens, token_ids, student_prob or fallback field")


def summarize_dataset(
    records: Sequence[dict],
    *,
    name: str = "",
    n_problems: int | None = None,
    threshold: float = 0.01,
    prob_field: str | None = None,
    fallback_applicable: bool | None = None,
) -> dict:
    """One row of the paper's Table 2 (and Table 6) for a set of trace records.

    Expected record fields (one record per sample; extra fields are ignored):

    - ``problem_id`` (str) and ``status`` ("correct" | "wrong" | "no_answer");
    - ``kept`` (bool, optional): the sample is a training trace of the dataset. When no record has
      this field, the dataset is every record whose status is "correct";
    - ``student_prob_raw`` or ``student_prob`` (list of float, one per token): probability of each
      token under the student (Section 3.2 uses the student's own distribution; ``prob_field``
      picks the field, default ``student_prob_raw`` when present, else ``student_prob``). NaN
      entries (the student was not run) are not counted;
    - ``fallback`` (list of bool, one per token): the token came from the fallback model;
    - ``n_tokens`` (int, optional; else the length of the per-token lists);
    - ``config`` (dict, optional) with ``mode``: fallback is "Not Applicable" for "teacher" and
      "student" runs and for records without fallback lists (override: ``fallback_applicable``).

    Columns: "Correctly solved" = problems with a dataset trace (a kept sample; without ``kept``
    flags, at least one correct sample) / ``n_problems`` (default:
    distinct problem ids in ``records``); "Fallback rate (%)" = fallback tokens / tokens over the
    dataset traces; "Sub-1% tokens (%)" = tokens with probability < ``threshold`` / ALL tokens of
    the dataset traces (pooled, not a mean of per-trace ratios); "Average token count" (Table 6) =
    mean tokens per dataset trace. Raw counts are returned beside the display columns.
    """
    records = list(records)
    problem_ids = {r.get("problem_id") for r in records}
    traces = _in_dataset(records)
    solved = {r.get("problem_id") for r in traces}  # with `kept` flags: problems with a kept trace
    total = n_problems if n_problems is not None else len(problem_ids)

    if prob_field is None:
        prob_field = "student_prob_raw" if any(r.get("student_prob_raw") for r in traces) else "student_prob"
    n_scored = n_low = 0
    for r in traces:
        for p in r.get(prob_field) or []:
            if p is None or math.isnan(p):
                continue
            n_scored += 1
            n_low += p < threshold

    if fallback_applicable is None:
        modes = {(r.get("config") or {}).get("mode", r.get("mode")) for r in traces}
        has_lists = any(r.get("fallback") for r in traces)
        fallback_applicable = has_lists and not (modes and modes <= {"teacher", "student"})
    n_fb_tokens = n_fallback = 0
    if fallback_applicable:
        for r in traces:
            fb = r.get("fallback") or []
            n_fb_tokens += len(fb)
            n_fallback += sum(bool(x) for x in fb)

    token_counts = [_token_count(r) for r in traces]
    fallback_pct = 100.0 * n_fallback / n_fb_tokens if fallback_applicable and n_fb_tokens else None
    sub_pct = 100.0 * n_low / n_scored if n_scored else None
    avg_tokens = sum(token_counts) / len(token_counts) if token_counts else None
    return {
        "Datasets": name,
        "Correctly solved": f"{len(solved)}/{total}",
        "Fallback rate (%)": round(fallback_pct, 2) if fallback_pct is not None else "Not Applicable",
        f"Sub-{threshold * 100:g}% tokens (%)": round(sub_pct, 2) if sub_pct is not None else "Not Available",
        "Average token count": round(avg_tokens) if avg_tokens is not None else None,
        # raw values
        "n_solved": len(solved),
        "n_problems": total,
        "n_traces": len(traces),
        "n_tokens": sum(token_counts),
        "n_tokens_scored": n_scored,
        "n_sub_threshold": n_low,
        "fallback_rate": fallback_pct / 100.0 if fallback_pct is not None else None,
        "sub_threshold_ratio": sub_pct / 100.0 if sub_pct is not None else None,
        "avg_token_count": avg_tokens,
        "prob_field": prob_field,
        "threshold": threshold,
    }


# ----------------------------------------------------------------------------------------------
# Uncertainty: intervals, paired differences, minimum detectable effects (issue 16)
# ----------------------------------------------------------------------------------------------
CONFIDENCE = 0.95  # two-sided level of every interval
RESAMPLES = 2000  # bootstrap replicates
SEED = 0  # default seed of every bootstrap (the same data give the same interval)


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided interval: ``low <= estimate <= high`` (NaN when ``n`` is 0)."""

    estimate: float  # the statistic on the data as observed
    low: float  # lower bound
    high: float  # upper bound
    n: int  # independent units behind it (problems, traces, attempts)
    method: str  # "wilson" | "bootstrap" | "paired bootstrap"
    confidence: float = CONFIDENCE  # two-sided level
    se: float = float("nan")  # bootstrap standard error (NaN for Wilson)

    @property
    def excludes_zero(self) -> bool:
        """True when 0 lies outside [low, high]: the data tell the difference from none."""
        return not math.isnan(self.low) and (self.low > 0 or self.high < 0)

    def scaled(self, factor: float) -> "Interval":
        """The same interval in other units (e.g. factor 100: fractions -> %)."""
        return Interval(self.estimate * factor, self.low * factor, self.high * factor, self.n, self.method,
                        self.confidence, self.se * abs(factor))


def _nan_interval(n: int, method: str, confidence: float) -> Interval:
    nan = float("nan")
    return Interval(nan, nan, nan, n, method, confidence)


def _check_level(confidence: float, resamples: int = RESAMPLES) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 10:
        raise ValueError(f"resamples must be >= 10, got {resamples}")


def _z(confidence: float) -> float:
    """The normal quantile of (1 + confidence) / 2 (1.96 at 95%)."""
    return NormalDist().inv_cdf((1 + confidence) / 2)


def _wilson_bound(share: float, n: float, z: Any) -> np.ndarray:
    """Wilson's score bound(s) for a mean ``share`` of ``n`` values in [0, 1] at signed normal quantile(s) ``z``:
    (share + z^2 / 2n + z sqrt(share (1 - share) / n + z^2 / 4n^2)) / (1 + z^2 / n), clipped to [0, 1].

    z < 0 gives a lower bound, z > 0 an upper one, increasing in z (share at z = 0); z = -/+ z_{(1+c)/2} give the
    two-sided interval at confidence c. Drawn at z ~ N(0, 1) it is the interval's confidence distribution: its
    central 95% range is the 95% Wilson interval.
    """
    z = np.asarray(z, dtype=float)
    bound = (share + z * z / (2 * n) + z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    return np.clip(bound, 0.0, 1.0)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a proportion successes / n (solved counts and rates).

    centre = (p + z^2 / 2n) / (1 + z^2 / n), half-width = z sqrt(p(1-p)/n + z^2 / 4n^2) / (1 + z^2 / n),
    z = the normal quantile of (1 + confidence) / 2. Stays inside [0, 1] and is not degenerate at 0/n
    or n/n (unlike the Wald interval), which matters at the demo's handful of problems.
    """
    _check_level(confidence)
    if not (0 <= successes <= n):
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return _nan_interval(0, "wilson", confidence)
    p = successes / n
    low, high = _wilson_bound(p, n, [-_z(confidence), _z(confidence)])
    return Interval(p, float(low), float(high), n, "wilson", confidence)


def _draws(n_units: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_units) unit indices drawn with replacement, from a seeded generator."""
    return np.random.default_rng(seed).integers(0, n_units, size=(resamples, n_units))


def _percentile(estimate: float, replicates: np.ndarray, n: int, confidence: float, method: str) -> Interval:
    alpha = (1 - confidence) / 2
    reps = replicates[~np.isnan(replicates)]
    if reps.size == 0:
        return Interval(estimate, float("nan"), float("nan"), n, method, confidence)
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    # the percentile bounds of a skewed statistic can miss the estimate by rounding: keep low <= est <= high
    return Interval(float(estimate), float(min(low, estimate)), float(max(high, estimate)), n, method,
                    confidence, float(reps.std(ddof=1)) if reps.size > 1 else 0.0)


def bootstrap_mean(values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED,
                   confidence: float = CONFIDENCE) -> Interval:
    """Mean over units (traces) with a percentile bootstrap interval, units resampled with replacement."""
    _check_level(confidence, resamples)
    x = np.asarray(values, dtype=float)  # (n,)
    if x.size == 0:
        return _nan_interval(0, "bootstrap", confidence)
    reps = x[_draws(x.size, resamples, seed)].mean(axis=1)  # (resamples,)
    return _percentile(float(x.mean()), reps, x.size, confidence, "bootstrap")


def bootstrap_ratio(numerators: Sequence[float], denominators: Sequence[float], *, resamples: int = RESAMPLES,
                    seed: int = SEED, confidence: float = CONFIDENCE) -> Interval:
    """Pooled ratio sum(numerators) / sum(denominators) over units, units resampled with replacement.

    One unit per trace: e.g. sub-1% tokens / tokens of each trace (Table 2's pooled share), or
    fallback tokens / tokens. A trace's tokens stay together, since they are not independent.
    """
    _check_level(confidence, resamples)
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)  # (n,), (n,)
    if num.shape != den.shape:
        raise ValueError(f"bootstrap_ratio: {num.size} numerators but {den.size} denominators")
    if num.size == 0 or den.sum() <= 0:
        return _nan_interval(int(num.size), "bootstrap", confidence)
    idx = _draws(num.size, resamples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = num[idx].sum(1) / den[idx].sum(1)  # (resamples,); 0/0 (all-empty draw) -> NaN, dropped
    return _percentile(float(num.sum() / den.sum()), reps, num.size, confidence, "bootstrap")


def paired_ratio_difference(num_a: Sequence[float], den_a: Sequence[float], num_b: Sequence[float],
                            den_b: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED,
                            confidence: float = CONFIDENCE) -> Interval:
    """Pooled ratio of a minus pooled ratio of b, the units (aligned: unit i of a is unit i of b,
    e.g. one problem, its traces pooled; 0/0 where a method has no trace of it) resampled jointly."""
    _check_level(confidence, resamples)
    arrays = [np.asarray(v, dtype=float) for v in (num_a, den_a, num_b, den_b)]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError("paired_ratio_difference: the four arrays must be aligned on the same units")
    na, da, nb, db = arrays
    if na.size == 0 or da.sum() <= 0 or db.sum() <= 0:
        return _nan_interval(int(na.size), "paired bootstrap", confidence)
    idx = _draws(na.size, resamples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = na[idx].sum(1) / da[idx].sum(1) - nb[idx].sum(1) / db[idx].sum(1)  # (resamples,)
    return _percentile(float(na.sum() / da.sum() - nb.sum() / db.sum()), reps, na.size, confidence,
                       "paired bootstrap")


def _problem_scores(correct: Any, k: int | None = None, what: str = "bootstrap") -> np.ndarray:
    """(P,) per-problem avg@k (correct among the first k / k); with k = 1 sample it is pass@1."""
    rows = _rows(correct)
    if not rows:
        raise ValueError(f"{what}: no problems")
    out = []
    for i, row in enumerate(rows):
        kk = len(row) if k is None else k
        if kk < 1 or len(row) < kk:
            raise ValueError(f"{what}: problem {i} has {len(row)} samples, need k={kk} >= 1")
        out.append(sum(row[:kk]) / kk)
    return np.asarray(out, dtype=float)


@lru_cache(maxsize=8)
def _normal_grid(resamples: int) -> np.ndarray:
    """(resamples // 2,) the positive standard normal quantiles at (i + 1/2) / resamples, ascending."""
    nd = NormalDist()
    return np.array([nd.inv_cdf((i + 0.5) / resamples) for i in range((resamples + 1) // 2, resamples)])


def _normal_scores(resamples: int, seed: int) -> np.ndarray:
    """(resamples,) standard normal scores for the draws of a no-variation term: the quantiles at
    (i + 1/2) / resamples, i = 0 .. resamples - 1 (stratified, so the term has its exact percentiles up to the
    grid), the first half in a seeded random order and sign, the second half its negation (antithetic: an
    Average of terms that are odd in the score, such as zero differences, comes out symmetric about 0)."""
    rng = np.random.default_rng(seed)
    magnitudes = _normal_grid(resamples)  # (resamples // 2,)
    first = magnitudes[rng.permutation(magnitudes.size)] * rng.choice([-1.0, 1.0], size=magnitudes.size)
    return np.concatenate([first, -first, np.zeros(resamples % 2)])


def _constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


def _no_variation(value: float, n: int, z: Any, paired: bool) -> np.ndarray:
    """Bound(s) at signed normal quantile(s) ``z`` of a mean of ``n`` per-problem values that all equal ``value``
    (the bootstrap's zero-width interval would claim a certainty that a handful of problems cannot give).

    - accuracies (in [0, 1]): Wilson's bounds, share = the common score;
    - paired differences (in [-1, 1]) of 0 on every problem, the two models agreeing on each: the discordant-pair
      bound (McNemar's view of paired proportions: only problems on which the models disagree move the
      difference, and |difference| <= the share of such problems), that share's Wilson bound for 0 of n at a
      symmetric sign: -/+ the Wilson upper limit of 0/n (+-0.088 at n = 40, not the +-0.30 of a share of 0.5);
    - paired differences of another common value c (one model ahead on every problem alike): Wilson's bounds of
      the share (c + 1) / 2, rescaled to [-1, 1].
    """
    z = np.asarray(z, dtype=float)
    if not paired:
        return _wilson_bound(value, n, z)
    if value == 0:
        return np.sign(z) * _wilson_bound(0.0, n, np.abs(z))
    return 2 * _wilson_bound((value + 1) / 2, n, z) - 1


def _one_sided(values: np.ndarray) -> bool:
    """Paired differences that vary but never change sign (every disagreement favours the same model)."""
    return not _constant(values) and bool(np.all(values >= 0) or np.all(values <= 0))


def _one_sided_draws(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples,) draws of gain share - loss share for paired differences that never change sign, from the
    Jeffreys posterior of the (gain, loss, tie) shares: Dirichlet(gains + 1/2, losses + 1/2, ties + 1/2), where
    gains / losses sum the positive / negative per-problem differences (counts for pass@1, fractions for avg@k).

    Resampling problems cannot draw the side no problem shows (0 losses of n resample to 0 losses), so the
    percentile bootstrap never crosses 0 there: 1 gain and 0 losses in 6 gave [0, 50] points, and where the true
    difference is near 0 such intervals covered it 50-76% of the time (97% now, tests/test_intervals.py). The
    posterior keeps the unseen side's uncertainty (and the shares' negative covariance): 1 gain in 6 gives
    [-20.5, 50.2] points (Newcombe's square-and-add interval for paired proportions: [-24.7, 56.4])."""
    gains, losses = float(np.clip(values, 0, None).sum()), float(np.clip(-values, 0, None).sum())
    alpha = [gains + 0.5, losses + 0.5, values.size - gains - losses + 0.5]
    shares = np.random.default_rng(seed).dirichlet(alpha, size=resamples)  # (resamples, 3)
    return shares[:, 0] - shares[:, 1]


def _replicates(values: np.ndarray, resamples: int, seed: int, paired: bool) -> np.ndarray:
    """(resamples,) replicates of the mean of one benchmark's (P,) per-problem values (scores or paired differences):
    problems resampled with replacement where they vary; where they do not (always so for one problem) draws of
    ``_no_variation`` at stratified normal scores, whose 95% range is that benchmark's no-variation interval;
    paired differences that vary without changing sign: ``_one_sided_draws``."""
    if _constant(values):
        return _no_variation(float(values[0]), values.size, _normal_scores(resamples, seed), paired)
    if paired and _one_sided(values):
        return _one_sided_draws(values, resamples, seed)
    return values[_draws(values.size, resamples, seed)].mean(1)


def _benchmark_interval(values: np.ndarray, resamples: int, seed: int, confidence: float, paired: bool) -> Interval:
    """One benchmark's mean with its percentile bootstrap interval over problems, or, where every problem has the
    same value, the closed-form ``_no_variation`` interval (method "wilson (no variation; ...)"); paired differences
    that vary without changing sign, the percentile interval of ``_one_sided_draws`` (method "jeffreys
    (one-sided)")."""
    method = "paired bootstrap" if paired else "bootstrap"
    if paired and _one_sided(values):
        method = "jeffreys (one-sided)"
    if _constant(values):
        low, high = _no_variation(float(values[0]), values.size, [-_z(confidence), _z(confidence)], paired)
        kind = "discordant pairs" if paired and values[0] == 0 else method
        return Interval(float(values[0]), float(low), float(high), values.size, f"wilson (no variation; {kind})",
                        confidence, 0.0)
    return _percentile(float(values.mean()), _replicates(values, resamples, seed, paired), values.size, confidence,
                       method)


def _average_interval(per_benchmark: Mapping[str, np.ndarray], resamples: int, seed: int, confidence: float,
                      paired: bool) -> Interval:
    """The unweighted average over benchmarks of their means: each replicate averages one replicate of every
    benchmark (``_replicates``, benchmark b on its own stream seed + 7919 b), so a benchmark whose problems all
    score alike still adds its binomial uncertainty; percentile interval. ``n`` = problems over all benchmarks."""
    terms = [_replicates(v, resamples, seed + 7919 * b, paired) for b, v in enumerate(per_benchmark.values())]
    flat = [name for name, v in per_benchmark.items() if _constant(v)]
    sided = [name for name, v in per_benchmark.items() if paired and _one_sided(v)]
    method = ("paired bootstrap" if paired else "bootstrap") + (
        f" + wilson (no variation: {', '.join(flat)})" if flat else "") + (
        f" + jeffreys (one-sided: {', '.join(sided)})" if sided else "")
    estimate = float(np.mean([v.mean() for v in per_benchmark.values()]))
    return _percentile(estimate, np.mean(terms, axis=0), sum(v.size for v in per_benchmark.values()), confidence,
                       method)


def bootstrap_accuracy(correct: Any, k: int | None = None, *, resamples: int = RESAMPLES, seed: int = SEED,
                       confidence: float = CONFIDENCE) -> Interval:
    """avg@k (pass@1 with one sample) of one benchmark, as a fraction, with a bootstrap interval over
    problems: each replicate draws problems with replacement and keeps each drawn problem's samples
    together (the unit of independence is the problem; samples of one problem are correlated).
    Where every problem scores the same: Wilson's interval (``_no_variation``). The estimate equals
    ``avg_at_k(correct, k)``."""
    _check_level(confidence, resamples)
    return _benchmark_interval(_problem_scores(correct, k), resamples, seed, confidence, paired=False)


def bootstrap_average_accuracy(correct_by_benchmark: Mapping[str, Any], k: Mapping[str, int] | None = None, *,
                               resamples: int = RESAMPLES, seed: int = SEED,
                               confidence: float = CONFIDENCE) -> Interval:
    """The unweighted average over benchmarks of their avg@k (the paper's "Average" column), with a
    bootstrap interval: in each replicate every benchmark's problems are resampled (within that
    benchmark) and the replicate's benchmark means are averaged; a benchmark whose problems all score
    the same contributes draws from its Wilson interval instead (``_average_interval``), so one more
    correct answer elsewhere cannot make the Average surer than that benchmark alone.
    ``n`` = problems over all benchmarks."""
    _check_level(confidence, resamples)
    if not correct_by_benchmark:
        raise ValueError("bootstrap_average_accuracy: no benchmarks")
    scores = {b: _problem_scores(c, (k or {}).get(b)) for b, c in correct_by_benchmark.items()}
    return _average_interval(scores, resamples, seed, confidence, paired=False)


def _aligned_differences(model: Mapping[str, Any], base: Mapping[str, Any], k: int | None, where: str) -> np.ndarray:
    if set(model) != set(base):
        missing = sorted(set(model) ^ set(base))
        raise ValueError(f"{where}: the two models were not evaluated on the same problems (differ: {missing[:5]})")
    ids = sorted(model)
    return _problem_scores([model[i] for i in ids], k) - _problem_scores([base[i] for i in ids], k)


def paired_accuracy_difference(model: Mapping[str, Mapping[str, Any]], base: Mapping[str, Mapping[str, Any]], *,
                               k: int | None = None, resamples: int = RESAMPLES, seed: int = SEED,
                               confidence: float = CONFIDENCE) -> dict[str, Interval]:
    """Accuracy of ``model`` minus ``base`` on the same problems (fractions), per benchmark and averaged.

    ``model`` / ``base``: {benchmark: {problem_id: per-sample correctness}}; both must hold the same
    benchmarks and problem ids (a paired comparison, refused otherwise). Per benchmark, the per-problem
    differences are resampled (one draw of problems serves both models, so what the problems share
    cancels); where the two models agree on every problem, the discordant-pair bound (``_no_variation``); where
    they disagree on some but every disagreement favours the same model, the Jeffreys posterior of the gain and
    loss shares (``_one_sided_draws``).
    The "Average" entry averages the benchmarks' replicates (``_average_interval``).
    Returns {benchmark: Interval, ..., "Average": Interval}.
    """
    _check_level(confidence, resamples)
    if set(model) != set(base):
        raise ValueError(f"paired_accuracy_difference: benchmarks differ: {sorted(model)} vs {sorted(base)}")
    diffs = {b: _aligned_differences(model[b], base[b], k, f"paired difference on {b}") for b in base}
    out = {b: _benchmark_interval(d, resamples, seed + 7919 * i, confidence, paired=True)
           for i, (b, d) in enumerate(diffs.items())}
    if diffs:
        out["Average"] = _average_interval(diffs, resamples, seed, confidence, paired=True)
    return out


def minimum_detectable_effect(se: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true difference a two-sided level-``alpha`` test detects with probability ``power``,
    for an estimate with standard error ``se``: (z_{1 - alpha/2} + z_{power}) * se (= 2.80 se at the
    defaults). Same units as ``se``."""
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
    if se < 0:
        raise ValueError(f"se must be >= 0, got {se}")
    nd = NormalDist()
    return (nd.inv_cdf(1 - alpha / 2) + nd.inv_cdf(power)) * se


def accuracy_difference_se(problems: Sequence[int] | Mapping[str, int], p: float = 0.5) -> float:
    """Standard error (fraction) of a paired accuracy difference averaged over benchmarks with these
    problem counts, one sample per problem, at per-problem accuracy ``p`` for both models and no
    correlation between them (p = 0.5 is the worst case: no table's data can be noisier):
    sqrt(sum_b 2 p (1 - p) / n_b) / B."""
    counts = list(problems.values()) if isinstance(problems, Mapping) else list(problems)
    if not counts or any(n < 1 for n in counts):
        raise ValueError(f"accuracy_difference_se needs problem counts >= 1, got {counts}")
    return math.sqrt(sum(2 * p * (1 - p) / n for n in counts)) / len(counts)
