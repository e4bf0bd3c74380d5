"""Evaluation: budget forcing on token ids, resumption, the estimators on a hand-made file, clear errors.

Models are tiny (tests/_tiny.py); "scripted" ones have a constant lm_head bias, so greedy decoding
emits one chosen token forever and every token id of a run is known in advance.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from _tiny import tiny_model, tiny_tokenizer

import rsdlib.evaluate as ev
from rsdlib.data import DatasetUnavailableError
from rsdlib.decoding import Decoder
from rsdlib.evaluate import EvalConfig, RunConflictError, SampleJob, evaluate, generate_with_budget, summarize_rows
from rsdlib.store import append_jsonl, read_jsonl_resumable

MATH = [
    {"problem": "What is 1+1?", "answer": "2", "level": 1, "unique_id": "test/a/1.json"},
    {"problem": "What is 2+3?", "answer": "5", "level": 2, "unique_id": "test/a/2.json"},
    {"problem": "What is 3+3?", "answer": "6", "level": 1, "unique_id": "test/a/3.json"},
]
SECRET = "ZQXJ-SECRET"  # stands for GPQA text that must never be written


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MATH))
    gpqa = [{"Question": f"{SECRET} question {i}?", "Correct Answer": f"{SECRET} right {i}",
             **{f"Incorrect Answer {j}": f"{SECRET} wrong {i}.{j}" for j in (1, 2, 3)}} for i in range(2)]
    (folder / "gpqa_diamond.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gpqa))
    return folder


def scripted_model(tok, token: str):
    """A tiny model whose logits favour ``token`` at every position (greedy: emits only it)."""
    model = tiny_model(tok)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    head.weight.data.zero_()
    head.bias.data.zero_()
    head.bias.data[tok.convert_tokens_to_ids(token)] = 10.0
    model.lm_head = head
    return model


class RecordingDecoder(Decoder):
    """The real decoder, recording every generate call's prompts and budget."""

    calls: list = []

    def generate(self, prompts, seeds, **kw):
        RecordingDecoder.calls.append({"prompts": [list(p) for p in prompts],
                                       "max_new_tokens": self.config.max_new_tokens})
        return super().generate(prompts, seeds, **kw)


@pytest.fixture
def recorder(monkeypatch):
    RecordingDecoder.calls = []
    monkeypatch.setattr(ev, "Decoder", RecordingDecoder)
    return RecordingDecoder.calls


def cfg_for(data_dir, **kw):
    base = dict(benchmarks=("math500",), samples={"math500": 1}, max_tokens={"math500": 12},
                think_budget={"math500": 5}, temperature=0.0, limit=1, batch_size=4, data_dir=str(data_dir))
    return EvalConfig(**{**base, **kw})


def rows_of(out, bench="math500"):
    return read_jsonl_resumable(Path(out) / bench / "samples.jsonl")


# ----------------------------------------------------------------------------------------------
# Budget forcing
# ----------------------------------------------------------------------------------------------
def test_budget_forcing_inserts_the_delimiter_when_the_budget_runs_out(tok, data_dir, tmp_path, recorder):
    model = scripted_model(tok, "a")  # never closes its thinking, never ends its turn
    cfg = cfg_for(data_dir)
    summary = evaluate(model, cfg, tmp_path / "out", tokenizer=tok, progress=False)["math500"]
    a = tok.convert_tokens_to_ids("a")
    delim = tok("\n</think>\n\n", add_special_tokens=False)["input_ids"]
    assert len(delim) == 4  # "\n", "</think>", "\n", "\n"
    first, second = recorder
    assert first["max_new_tokens"] == 5
    prompt = first["prompts"][0]
    assert second["prompts"] == [prompt + [a] * 5 + delim]  # pass 2 continues from the delimiter
    assert second["max_new_tokens"] == 12 - 5 - 4
    [row] = rows_of(tmp_path / "out")
    assert row["forced"] and row["continued"] and row["finish_reason"] == "length"
    assert row["n_tokens"] == 12 and row["response"] == "aaaaa\n</think>\n\naaa"
    assert summary["forced_rate"] == 1.0 and summary["mean_output_tokens"] == 12


def test_closed_thinking_at_the_budget_continues_without_delimiter(tok, data_dir, tmp_path, recorder):
    model = scripted_model(tok, "</think>")  # closes its thinking at once but never ends its turn
    evaluate(model, cfg_for(data_dir), tmp_path / "out", tokenizer=tok, progress=False)
    close = tok.convert_tokens_to_ids("</think>")
    first, second = recorder
    assert second["prompts"] == [first["prompts"][0] + [close] * 5]
    assert second["max_new_tokens"] == 7
    [row] = rows_of(tmp_path / "out")
    assert not row["forced"] and row["continued"] and row["n_tokens"] == 12


def test_a_sample_that_ends_its_turn_gets_one_pass(tok, data_dir, tmp_path, recorder):
    model = scripted_model(tok, "<|im_end|>")
    summary = evaluate(model, cfg_for(data_dir), tmp_path / "out", tokenizer=tok, progress=False)["math500"]
    assert len(recorder) == 1
    [row] = rows_of(tmp_path / "out")
    assert row["finish_reason"] == "stop" and not row["forced"] and not row["continued"] and row["n_tokens"] == 1
    assert row["status"] == "no_answer" and summary["no_answer_rate"] == 1.0


def test_no_think_budget_means_one_pass_of_max_tokens(tok, data_dir, tmp_path, recorder):
    model = scripted_model(tok, "a")
    evaluate(model, cfg_for(data_dir, think_budget={}), tmp_path / "out", tokenizer=tok, progress=False)
    assert [c["max_new_tokens"] for c in recorder] == [12]
    assert not rows_of(tmp_path / "out")[0]["forced"]


def test_generate_with_budget_on_scripted_samples():
    """Four samples with known outputs: stops early, closes then runs out, never closes, no room left."""
    close, eot, x, delim = 9, 0, 5, [8, 9, 8]
    scripts = {  # pass-1 prompt -> tokens it emits
        (1,): [x, close, 7, eot],  # closes and ends its turn within the budget
        (2,): [x, close, 7, 7, 7, 7],  # closes, then hits the budget
        (3,): [x, x, x, x, x, x],  # never closes
    }
    calls = []

    def generate(prompts, seeds, max_new_tokens, on_finish):
        calls.append((prompts, list(seeds), max_new_tokens))
        for i, p in enumerate(prompts):
            out = (scripts.get(tuple(p)) or [6] * 100)[:max_new_tokens]
            on_finish(i, out, "stop" if out[-1] == eot else "length")

    jobs = [SampleJob(("p", k), [k + 1], seed=10 + k, answer_seed=20 + k) for k in range(3)]
    done, pending = {}, []
    generate_with_budget(generate, jobs, max_tokens=12, think_budget=4, delimiter_ids=delim,
                         thinking_closed=lambda ids: close in ids,
                         on_done=lambda j, ids, fin, forced, cont: done.__setitem__(j.key[1], (ids, fin, forced, cont)),
                         on_pending=lambda j, ids, forced: pending.append((j.key[1], ids, forced)))
    assert calls[0] == ([[1], [2], [3]], [10, 11, 12], 4)
    assert done[0] == ([x, close, 7, eot], "stop", False, False)
    assert done[1] == ([x, close, 7, 7] + [6] * 8, "length", False, True)  # no delimiter, 8 more tokens
    assert done[2] == ([x] * 4 + delim + [6] * 5, "length", True, True)  # delimiter, then 12 - 7 tokens
    assert sorted(c[2] for c in calls[1:]) == [5, 8]
    second = {tuple(c[0][0]): (c[1], c[2]) for c in calls[1:]}
    assert second[(3, x, x, x, x, *delim)] == ([22], 5)  # prompt + pass 1 + delimiter, the answer seed
    assert second[(2, x, close, 7, 7)] == ([21], 8)
    assert [p[0] for p in pending] == [1, 2]

    # the delimiter leaves no room: done right after pass 1, forced, nothing generated
    done.clear()
    calls.clear()
    generate_with_budget(generate, jobs[2:], max_tokens=6, think_budget=4, delimiter_ids=delim,
                         thinking_closed=lambda ids: close in ids,
                         on_done=lambda j, ids, fin, forced, cont: done.__setitem__(j.key[1], (ids, fin, forced, cont)))
    assert len(calls) == 1 and done[2] == ([x] * 4 + delim, "length", True, False)


# ----------------------------------------------------------------------------------------------
# Resumption and the stored config
# ----------------------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


def test_resumption_after_an_interruption_gives_the_same_rows_and_summary(tok, data_dir, tmp_path, monkeypatch,
                                                                           recorder):
    model = tiny_model(tok, seed=3)
    cfg = cfg_for(data_dir, samples={"math500": 3}, limit=2, temperature=0.7, max_tokens={"math500": 10},
                  think_budget={"math500": 4})
    reference = evaluate(model, cfg, tmp_path / "ref", tokenizer=tok, progress=False)["math500"]
    ref_rows = {(r["problem_id"], r["sample_index"]): r for r in rows_of(tmp_path / "ref")}
    assert len(ref_rows) == 6 and sum(r["continued"] for r in ref_rows.values()) >= 3

    written = []

    def failing_append(path, record):
        if Path(path).name == "samples.jsonl" and len(written) == 2:
            raise Interrupt
        append_jsonl(path, record)
        if Path(path).name == "samples.jsonl":
            written.append(record)

    monkeypatch.setattr(ev, "append_jsonl", failing_append)
    with pytest.raises(Interrupt):
        evaluate(model, cfg, tmp_path / "run", tokenizer=tok, progress=False)
    assert len(rows_of(tmp_path / "run")) == 2
    finished = {(r["problem_id"], r["sample_index"]) for r in rows_of(tmp_path / "run")}
    pending_rows = read_jsonl_resumable(tmp_path / "run" / "math500" / "pending.jsonl")
    pending = {(r["problem_id"], r["sample_index"]) for r in pending_rows}
    resumable = pending - finished
    assert resumable  # the interruption came during the answer pass
    monkeypatch.setattr(ev, "append_jsonl", append_jsonl)
    recorder.clear()
    again = evaluate(model, cfg, tmp_path / "run", tokenizer=tok, progress=False)["math500"]
    rows = rows_of(tmp_path / "run")
    keys = [(r["problem_id"], r["sample_index"]) for r in rows]
    assert len(keys) == 6 == len(set(keys))
    for r in rows:
        assert r["response"] == ref_rows[(r["problem_id"], r["sample_index"])]["response"]
    strip = lambda s: {k: v for k, v in s.items() if k not in ("model", "ranks")}  # noqa: E731  (ranks: timing)
    assert strip(again) == strip(reference)
    # pending samples resumed at their answer pass: the thinking pass ran only for the others
    thinking_prompts = sum(len(c["prompts"]) for c in recorder if c["max_new_tokens"] == 4)
    assert thinking_prompts == 6 - len(finished) - len(resumable)
    assert not (tmp_path / "run" / "math500" / "pending.jsonl").exists()


def test_a_rerun_with_another_config_is_refused(tok, data_dir, tmp_path):
    model = scripted_model(tok, "<|im_end|>")
    evaluate(model, cfg_for(data_dir), tmp_path / "out", tokenizer=tok, progress=False)
    evaluate(model, cfg_for(data_dir, batch_size=2), tmp_path / "out", tokenizer=tok, progress=False)  # same samples
    with pytest.raises(RunConflictError, match="different config"):
        evaluate(model, cfg_for(data_dir, temperature=0.5), tmp_path / "out", tokenizer=tok, progress=False)
    evaluate(model, cfg_for(data_dir, temperature=0.5), tmp_path / "out", tokenizer=tok, progress=False, force=True)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["config"]["temperature"] == 0.5


# ----------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------
def row(pid, k, status, vote, n_tokens=10, forced=False, finish="stop"):
    return {"problem_id": pid, "sample_index": k, "status": status, "vote": vote, "n_tokens": n_tokens,
            "forced": forced, "finish_reason": finish}


def test_summary_numbers_on_a_hand_made_results_file(tmp_path):
    path = tmp_path / "samples.jsonl"
    hand = [
        row("p1", 0, "correct", "5", 10), row("p1", 1, "wrong", "7", 20), row("p1", 2, "correct", "5", 30),
        row("p1", 3, "no_answer", None, 40, forced=True, finish="length"),
        row("p2", 2, "wrong", "4", 50), row("p2", 0, "wrong", "3", 60), row("p2", 1, "wrong", "3", 70),
        row("p2", 3, "no_answer", None, 80, forced=True),
    ]
    for r in hand:
        append_jsonl(path, r)
    s = summarize_rows(read_jsonl_resumable(path), 4)
    assert s["n_problems"] == 2 and s["n_samples"] == 8 and s["paper_metric"] == "avg@4"
    assert s["avg_at_k"] == pytest.approx((2 / 4 + 0 / 4) / 2) == s["score"]
    assert s["pass_at_1"] == pytest.approx(0.25)
    assert s["pass_at_k"] == pytest.approx(0.5)  # p1 has a correct sample among 4, p2 none
    assert s["maj_at_k"] == pytest.approx(0.5)  # p1: "5" wins (correct); p2: "3" wins (wrong)
    assert s["no_answer_rate"] == pytest.approx(2 / 8) and s["forced_rate"] == pytest.approx(2 / 8)
    assert s["truncated_rate"] == pytest.approx(1 / 8) and s["mean_output_tokens"] == pytest.approx(45)
    assert s["correct_samples"] == 2

    single = summarize_rows([row("q", 0, "correct", "1"), row("r", 0, "wrong", "2")], 1)
    assert single["paper_metric"] == "pass@1" and single["score"] == 0.5
    with pytest.raises(ValueError, match="expected 0..3"):
        summarize_rows(hand[:-1], 4)
    with pytest.raises(ValueError, match="duplicate"):
        summarize_rows(hand + hand[:1], 4)


def test_gpqa_votes_count_the_option_not_the_letter():
    # sample 0 shows the correct option at B, sample 1 at D: "B" and "D" are the same vote
    assert ev.vote_key("B", "choice", [2, 0, 3, 1]) == ev.vote_key("(D)", "choice", [1, 3, 2, 0]) == "option0"
    assert ev.vote_key("A", "choice", [2, 0, 3, 1]) == "option2"
    assert ev.vote_key("0033", "integer") == ev.vote_key(" 33 ", "integer") == "33"
    assert ev.vote_key("\\frac{1}{2}", "math") == ev.vote_key("\\frac{1} {2}", "math")
    assert ev.vote_key(None, "math") is None


def test_gpqa_rows_hold_the_letter_order_but_no_question_text(tok, data_dir, tmp_path):
    model = scripted_model(tok, "<|im_end|>")
    cfg = EvalConfig(benchmarks=("gpqa_diamond",), samples={"gpqa_diamond": 3}, max_tokens={"gpqa_diamond": 6},
                     think_budget={"gpqa_diamond": 3}, temperature=0.0, data_dir=str(data_dir))
    summary = evaluate(model, cfg, tmp_path / "out", tokenizer=tok, progress=False)["gpqa_diamond"]
    rows = rows_of(tmp_path / "out", "gpqa_diamond")
    assert len(rows) == 6 and summary["paper_metric"] == "avg@3"
    orders = set()
    for r in rows:
        assert sorted(r["option_order"]) == [0, 1, 2, 3] and r["gold"] == "ABCD"[r["option_order"].index(0)]
        orders.add(tuple(r["option_order"]))
    assert len(orders) > 1  # options are shuffled per sample
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(), path


# ----------------------------------------------------------------------------------------------
# Subsets, config, errors
# ----------------------------------------------------------------------------------------------
def test_subsets_split_easiest_and_limit(data_dir):
    cfg = EvalConfig(benchmarks=("math500",), data_dir=str(data_dir), math500_easiest=2)
    name, problems = ev.eval_problems("math500", cfg)
    assert name == "math500" and [p.meta["level"] for p in problems] == [1, 1]
    a, b = (ev.eval_problems("math500", EvalConfig(data_dir=str(data_dir), split_fraction=0.5, split_salt="s",
                                                   split_part=part))[1] for part in "ab")
    assert {p.id for p in a} | {p.id for p in b} == {"math500/" + r["unique_id"] for r in MATH}
    assert not {p.id for p in a} & {p.id for p in b}
    assert len(ev.eval_problems("math500", EvalConfig(data_dir=str(data_dir), limit=1))[1]) == 1


def test_config_defaults_follow_the_paper_and_yaml_refuses_unknown_keys(tmp_path):
    cfg = EvalConfig(samples={"math500": 4})
    assert [cfg.samples_for(b) for b in ("aime24", "aime25", "gpqa_diamond", "math500")] == [64, 64, 8, 4]
    assert cfg.max_tokens_for("gpqa_diamond") == 16384 and cfg.max_tokens_for("aime24") == 8192
    assert cfg.think_budget_for("gpqa_diamond") == 15000 and cfg.think_budget_for("math500") is None
    assert cfg.forced_delimiter == "\n</think>\n\n"
    path = tmp_path / "eval.yaml"
    path.write_text("benchmarks: [math500]\nsamples: {math500: 2}\nprompt: {extra_instruction: x}\n")
    loaded = EvalConfig.from_yaml(path)
    assert loaded.benchmarks == ("math500",) and loaded.prompt.extra_instruction == "x"
    path.write_text("benchmark: [math500]\n")
    with pytest.raises(ValueError, match="unknown EvalConfig key"):
        EvalConfig.from_yaml(path)
    with pytest.raises(ValueError, match="unknown benchmark key"):
        EvalConfig(samples={"aime2024": 64})


def test_unknown_benchmark_name_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'aime2024'.*known benchmarks"):
        evaluate("no/such-model", EvalConfig(benchmarks=("aime2024",)), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # failed before loading a model or writing anything


def test_missing_dataset_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetUnavailableError, match="benchmark 'aime25' is unavailable.*aime25.jsonl"):
        evaluate("no/such-model", EvalConfig(benchmarks=("aime25",), data_dir=str(empty), source="hub"),
                 tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_the_shipped_copies_are_the_default_source_and_hub_is_a_choice(tmp_path, monkeypatch):
    import rsdlib.data as data

    calls = []
    monkeypatch.setattr(data, "_read_hub",
                        lambda hub_id, config, split: calls.append(hub_id) or [{"problem": "Hub?", "answer": "1"}])
    name, problems = ev.eval_problems("aime25", EvalConfig(benchmarks=("aime25",)))
    assert len(problems) == 30 and problems[0].meta["loaded_from"] == "shipped:aime25.jsonl" and calls == []
    empty = tmp_path / "empty"
    empty.mkdir()  # a data_dir without the file: the shipped copy
    assert len(ev.eval_problems("aime25", EvalConfig(benchmarks=("aime25",), data_dir=str(empty)))[1]) == 30
    hub = ev.eval_problems("aime25", EvalConfig(benchmarks=("aime25",), source="hub"))[1]
    assert calls == ["simplescaling/aime25_nofigures"] and [p.id for p in hub] == ["aime25-0"]
    # the source picks the same problems from another copy: it is not part of the sample hash
    assert EvalConfig(source="hub").hash() == EvalConfig().hash()
    with pytest.raises(ValueError, match="source must be one of"):
        EvalConfig(source="shared")


def test_vllm_asked_for_and_absent_is_a_clear_error(data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails even where it is installed
    cfg = EvalConfig(benchmarks=("math500",), backend="vllm", data_dir=str(data_dir), limit=1)
    with pytest.raises(ev.BackendUnavailableError, match="vLLM is not installed.*pip install vllm.*backend='hf'"):
        evaluate("no/such-model", cfg, tmp_path / "out", progress=False)


def test_lora_adapter_folder_loads_merged(tok, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny_model(tok, seed=1)
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(tiny_model(tok, seed=1), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                   init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = peft_model(input_ids=x).logits
        plain = base(input_ids=x).logits
    model, loaded_tok = ev.load_eval_model(tmp_path / "adapter", base_model=str(tmp_path / "base"), device="cpu")
    with torch.no_grad():
        got = model(input_ids=x).logits
    assert not torch.allclose(want, plain, atol=1e-4)  # the adapter changes the model
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert len(loaded_tok) == len(tok)
    (tmp_path / "adapter" / "adapter_model.safetensors").rename(tmp_path / "adapter" / "adapter_model.bin")
    with pytest.raises(Exception, match="adapter_model.safetensors"):
        ev.load_eval_model(tmp_path / "adapter", base_model=str(tmp_path / "base"), device="cpu")


def test_limit_per_benchmark(data_dir):
    from rsdlib.evaluate import eval_problems

    cfg = EvalConfig(benchmarks=("math500", "gpqa_diamond"), limit={"math500": 2}, data_dir=str(data_dir))
    assert len(eval_problems("math500", cfg)[1]) == 2
    assert len(eval_problems("gpqa_diamond", cfg)[1]) == 2  # unlisted: all (the file has 2)
    cfg = EvalConfig(benchmarks=("math500",), limit=1, data_dir=str(data_dir))
    assert len(eval_problems("math500", cfg)[1]) == 1
    with pytest.raises(ValueError, match="limit"):
        EvalConfig(limit={"math500": 0})


def test_empty_selection_is_refused_before_any_model_loads(data_dir, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ev, "load_eval_model", no_loading)
    cfg = cfg_for(data_dir, split_fraction=0.0, split_part="a")
    with pytest.raises(ValueError, match="no problems selected for math500"):
        evaluate("some/model", cfg, tmp_path / "out", progress=False, force=True)
    assert not (tmp_path / "out").exists()


def test_gpqa_response_quoting_the_question_is_not_stored_in_plain_text(tok, data_dir, tmp_path, monkeypatch):
    """A student restating the question (and boxing an option's text) must not put GPQA text in results/."""
    responses = [f"</think>The question asks: {SECRET} question 0? So \\boxed{{B}}",
                 f"</think>It is {SECRET} right 1, so \\boxed{{{SECRET} right 1}}"]

    def fake_backend(model, tokenizer, cfg, stop_ids):
        def generate(prompts, seeds, max_new_tokens, on_finish):
            for i, _ in enumerate(prompts):
                on_finish(i, tokenizer(responses[i % 2], add_special_tokens=False)["input_ids"] + [stop_ids[0]], "stop")
        return generate

    monkeypatch.setattr(ev, "hf_backend", fake_backend)
    cfg = EvalConfig(benchmarks=("gpqa_diamond",), samples={"gpqa_diamond": 2}, max_tokens={"gpqa_diamond": 400},
                     data_dir=str(data_dir))
    evaluate(tiny_model(tok), cfg, tmp_path / "out", tokenizer=tok, progress=False)
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(), path
    rows = rows_of(tmp_path / "out", "gpqa_diamond")
    assert len(rows) == 4 and all("response" not in r for r in rows)
    texts = [ev.reveal_response(r) for r in rows]
    assert sum(f"{SECRET} question 0?" in t for t in texts) == 2  # the stored form gives the response back
    quoted = [r for r in rows if r["sample_index"] == 1]
    assert all(r["answer"] is None and r["vote"].startswith("text:") and r["status"] == "wrong" for r in quoted)
    assert len({r["vote"] for r in quoted}) == 1  # equal free-text answers still vote together
    letters = [r for r in rows if r["sample_index"] == 0]
    assert all(r["answer"] == "B" and r["vote"].startswith("option") for r in letters)

# ----------------------------------------------------------------------------------------------
# Grading in evaluation (issue 19; issue 12 items 7 and 8)
# ----------------------------------------------------------------------------------------------
def test_vote_key_never_joins_separate_numbers():
    assert ev.vote_key("1,2", "integer") != ev.vote_key("12", "integer")
    assert ev.vote_key("3, 4", "integer") != ev.vote_key("34", "integer")
    assert ev.vote_key("1 2", "integer") != ev.vote_key("12", "integer")
    assert ev.vote_key("1 2", "math") != ev.vote_key("12", "math")
    assert ev.vote_key("1,000", "integer") == ev.vote_key("1000", "integer") == "1000"
    assert ev.vote_key("x + 1", "math") == ev.vote_key("x+1", "math")
    # two letters are not a vote for either option
    assert ev.vote_key("A and B", "choice", [0, 1, 2, 3]) not in ("option0", "option1")


def fake_backend(monkeypatch, tok, text: str, calls: list):
    """Replace the HF backend by one that answers every prompt with ``text`` and ends the turn."""
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]

    def backend(model, tokenizer, cfg, stop_ids):
        def generate(prompts, seeds, max_new_tokens, on_finish):
            calls.append(len(prompts))
            for i in range(len(prompts)):
                on_finish(i, list(ids), "stop")
        return generate

    monkeypatch.setattr(ev, "hf_backend", backend)


def test_unboxed_answers_count_and_a_rerun_regrades_without_generating(tok, data_dir, tmp_path, monkeypatch):
    calls: list = []
    fake_backend(monkeypatch, tok, "Let me see. 1+1 = 2.</think>\nThe final answer is 2.", calls)
    model = scripted_model(tok, "a")
    strict = evaluate(model, cfg_for(data_dir, answer_format="boxed"), tmp_path / "out", tokenizer=tok,
                      progress=False)["math500"]
    [row] = rows_of(tmp_path / "out")
    assert (row["status"], row["found"], row["answer_format"], row["answer_from"]) == \
        ("no_answer", "none", "boxed", "after_thinking")
    assert strict["score"] == 0.0 and strict["answers_found"]["none"] == 1.0 and calls == [1]
    # the standard reading is not part of the config hash: the same folder is re-graded, nothing regenerated
    standard = evaluate(model, cfg_for(data_dir), tmp_path / "out", tokenizer=tok, progress=False)["math500"]
    assert calls == [1]
    [row] = rows_of(tmp_path / "out")
    assert (row["status"], row["found"], row["answer"], row["vote"]) == ("correct", "stated", "2", "2")
    assert standard["score"] == 1.0 and standard["answers_found"]["stated"] == 1.0
    assert standard["answer_format"] == "standard" and standard["grading_version"] == ev.GRADING_VERSION


def test_a_model_that_does_not_think_is_read_whole(tok, data_dir, tmp_path, monkeypatch):
    calls: list = []
    fake_backend(monkeypatch, tok, "1+1 = 2, so the answer is $\\boxed{2}$.", calls)  # never writes </think>
    model = scripted_model(tok, "a")
    # auto, with a prompt that opens thinking: a thinking model that never closed its thinking
    auto = evaluate(model, cfg_for(data_dir), tmp_path / "auto", tokenizer=tok, progress=False)["math500"]
    assert auto["answer_from"] == "after_thinking" and auto["score"] == 0.0 and auto["no_answer_rate"] == 1.0
    whole = evaluate(model, cfg_for(data_dir, answer_from="whole"), tmp_path / "whole", tokenizer=tok,
                     progress=False)["math500"]
    assert whole["answer_from"] == "whole" and whole["score"] == 1.0 and whole["answers_found"]["boxed"] == 1.0
    # auto with a prompt that opens no thinking section, and a tokenizer with </think> as one token: thinking
    style = {"think_open": ""}
    assert ev._reading(cfg_for(data_dir, prompt=style), tok)["answer_from"] == "after_thinking"
    with pytest.raises(ValueError, match="answer_from"):
        cfg_for(data_dir, answer_from="all")
    with pytest.raises(ValueError, match="answer_format"):
        cfg_for(data_dir, answer_format="loose")


def _old_row(pid, k, response, gold, kind, status, answer, **extra):
    """A row as the boxed-only grader (grading version 1) wrote it: no found / answer_format / answer_from."""
    return {"benchmark": "b", "problem_id": pid, "sample_index": k, "n_tokens": 10, "finish_reason": "stop",
            "forced": False, "status": status, "answer": answer, "vote": answer, "gold": gold, "kind": kind,
            "timed_out": False, "response": response, **extra}


def test_regrade_a_stored_evaluation_folder(tmp_path):
    from rsdlib.config import config_to_dict

    cfg = EvalConfig(benchmarks=("math500", "gpqa_diamond"), samples={"math500": 1, "gpqa_diamond": 2})
    model_dir = tmp_path / "eval" / "student"
    model_dir.mkdir(parents=True)
    stored = {"hash": cfg.hash(), "model": "m", "config": config_to_dict(cfg)}
    (model_dir / "config.json").write_text(json.dumps(stored))
    math_rows = [
        _old_row("m1", 0, "x</think> So \\boxed{4}.", "4", "math", "correct", "4"),
        _old_row("m2", 0, "x</think> The final answer is 7", "7", "math", "no_answer", None),
        _old_row("m3", 0, "x</think> So \\boxed{1,2}.", "12", "integer", "correct", "1,2"),  # the old false positive
        _old_row("m4", 0, "never closes \\boxed{5}", "5", "integer", "no_answer", None),
    ]
    gpqa_rows = [
        _old_row("g1", 0, "x</think> Answer: C", "C", "choice", "no_answer", None, option_order=[1, 2, 0, 3]),
        _old_row("g1", 1, "x</think> \\boxed{A and B}", "A", "choice", "correct", "A and B", option_order=[0, 1, 2, 3]),
    ]
    for bench, rows, n in (("math500", math_rows, 1), ("gpqa_diamond", gpqa_rows, 2)):
        (model_dir / bench).mkdir()
        for r in rows:
            append_jsonl(model_dir / bench / "samples.jsonl", r)
        (model_dir / bench / "summary.json").write_text(json.dumps({"benchmark": bench, **summarize_rows(rows, n)}))

    report = ev.regrade(tmp_path / "eval", timeout=60)  # a folder of model folders
    math, gpqa = report["student"]["math500"], report["student"]["gpqa_diamond"]
    assert math["score_before"] == 0.5 and math["score_after"] == 0.5
    assert math["moved"] == {"no_answer -> correct": 1, "correct -> wrong": 1}
    assert gpqa["score_before"] == 0.5 and gpqa["score_after"] == 0.5
    assert gpqa["moved"] == {"no_answer -> correct": 1, "correct -> wrong": 1}
    rows = rows_of(model_dir, "math500")
    assert [r["found"] for r in rows] == ["boxed", "stated", "boxed", "none"]
    assert all(r["grading_version"] == ev.GRADING_VERSION and r["answer_from"] == "after_thinking" for r in rows)
    summary = json.loads((model_dir / "math500" / "summary.json").read_text())
    assert summary["answers_found"] == {"boxed": 0.5, "stated": 0.25, "last_expression": 0.0, "none": 0.25}
    g_rows = rows_of(model_dir, "gpqa_diamond")
    assert g_rows[0]["vote"] == "option0" and g_rows[1]["status"] == "wrong"

    # per model: the same folder read whole (a model that does not think) finds the box in m4
    again = ev.regrade(model_dir, answer_from="whole", timeout=60)
    assert again["math500"]["moved"] == {"no_answer -> correct": 1} and again["math500"]["score_after"] == 0.75
    with pytest.raises(FileNotFoundError, match="evaluation folder"):
        ev.regrade(tmp_path / "eval" / "student" / "math500")


def test_regrade_command_line(tmp_path, capsys):
    from rsdlib.cli import main
    from rsdlib.config import config_to_dict

    cfg = EvalConfig(benchmarks=("math500",), samples={"math500": 1})
    model_dir = tmp_path / "eval" / "base"
    (model_dir / "math500").mkdir(parents=True)
    stored = {"hash": cfg.hash(), "model": "m", "config": config_to_dict(cfg)}
    (model_dir / "config.json").write_text(json.dumps(stored))
    rows = [_old_row("m1", 0, "x</think> The final answer is 7", "7", "math", "no_answer", None),
            _old_row("m2", 0, "x</think> \\boxed{3}", "3", "math", "correct", "3")]
    for r in rows:
        append_jsonl(model_dir / "math500" / "samples.jsonl", r)
    (model_dir / "math500" / "summary.json").write_text(json.dumps(summarize_rows(rows, 1)))
    assert main(["regrade", str(tmp_path / "eval"), "--timeout", "60"]) == 0
    out = capsys.readouterr().out
    assert ("base/math500: 50.0% -> 100.0%; 2 rows; moved no_answer -> correct: 1; "
            "answers found boxed 50%, stated 50%") in out
    assert main(["regrade", str(tmp_path / "nowhere")]) == 1
    assert "rsdlib regrade: error" in capsys.readouterr().err


def test_regrade_reads_a_protected_gpqa_response_and_keeps_it_protected():
    row = _old_row("g1", 0, f"x</think> {SECRET} quoted. Answer: C", "C", "choice", "no_answer", None,
                   option_order=[1, 2, 0, 3])
    ev._protect_row(row)
    assert "response" not in row and SECRET not in json.dumps(row)
    assert ev.regrade_rows([row], timeout=60) == 1
    assert row["status"] == "correct" and row["answer"] == "C" and row["vote"] == "option0"
    assert "response" not in row and SECRET not in json.dumps(row)
    assert SECRET in ev.reveal_response(row)
