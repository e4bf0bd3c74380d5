"""rsdlib.data: local loaders on ../shared/data, s1K gold extraction, GPQA shuffling and privacy, errors."""

from __future__ import annotations

import collections
import datetime
import logging

import pytest

from rsdlib.data import (
    BENCHMARKS,
    DatasetUnavailableError,
    Problem,
    answer_checkable,
    easiest,
    extract_gold,
    load_benchmark,
    shuffle_choices,
    split_by_hash,
)
from rsdlib.grading import CHOICE_LETTERS

COUNTS = {"math500": 500, "aime24": 30, "aime25": 30, "gpqa_diamond": 198, "s1k": 1000}


@pytest.fixture(scope="module")
def loaded(shared_data):
    return {name: load_benchmark(name, local_dir=shared_data) for name in COUNTS}


@pytest.mark.parametrize("name", list(COUNTS))
def test_local_loader_counts_and_fields(loaded, name):
    problems = loaded[name]
    assert len(problems) == COUNTS[name]
    assert len({p.id for p in problems}) == len(problems), "ids must be unique"
    assert all(p.source == name and p.question.strip() for p in problems)
    assert all(p.meta["loaded_from"].endswith(BENCHMARKS[name].local_file) for p in problems)


def test_math500_fields(loaded):
    ps = loaded["math500"]
    first = ps[0]
    assert first.id == "math500/test/precalculus/807.json"
    assert first.gold == "\\left( 3, \\frac{\\pi}{2} \\right)" and first.kind == "math"
    assert first.meta["level"] == 2 and first.meta["subject"] == "Precalculus"
    assert collections.Counter(p.meta["level"] for p in ps) == collections.Counter(
        {5: 134, 4: 128, 3: 105, 2: 90, 1: 43}
    )
    assert all(p.kind == "integer" for p in ps if p.gold.lstrip("-").isdigit())


def test_aime_golds_are_integers_without_leading_zeros(loaded):
    for name in ("aime24", "aime25"):
        ps = loaded[name]
        assert all(p.kind == "integer" and p.gold == str(int(p.gold)) and 0 <= int(p.gold) <= 999 for p in ps)
    a24 = {p.id: p.gold for p in loaded["aime24"]}
    assert a24["aime24-60"] == "204" and a24["aime24-67"] == "25"  # "025" in the file
    assert loaded["aime25"][0].gold == "70"


def test_s1k_gold_extraction_counts(loaded, capsys):
    ps = loaded["s1k"]
    checkable, unextractable = answer_checkable(ps)
    rules = collections.Counter(p.meta["gold_rule"] for p in ps)
    with capsys.disabled():
        print(f"\ns1K gold extraction: {len(checkable)} checkable, {len(unextractable)} unextractable; {dict(rules)}")
    assert len(checkable) + len(unextractable) == 1000
    assert rules["short"] == 373  # PROVENANCE.md: 373 short final answers
    assert rules["boxed"] >= 250
    assert 780 <= len(checkable) <= 860
    assert all(p.gold == "" and p.meta["gold_extracted"] is False for p in unextractable)
    assert all(p.gold and p.meta["gold_extracted"] for p in checkable)
    kinds = collections.Counter(p.kind for p in checkable)
    assert kinds["integer"] > 300 and kinds["choice"] > 50
    assert all(p.gold.lstrip("-").isdigit() for p in checkable if p.kind == "integer")


@pytest.mark.parametrize(
    "solution,gold,rule",
    [
        ("so the answer is \\boxed{\\frac{1}{2}}. Check: \\boxed{7} hmm", "7", "boxed"),
        ("We get $x = \\boxed{\\{1, 2\\}}$.", "\\{1, 2\\}", "boxed"),
        ("128", "128", "short"),
        ("$\\frac{3}{4}$", "\\frac{3}{4}", "short"),
        ("Long chemistry reasoning here.\nSum of coefficients = 6\n\nAnswer: C", "C", "answer_line"),
        ("Counting cases carefully.\nso the answer is $8+1=9$.", "9", "answer_line"),
        ("Energy balance.\n\n$$\nt=\\frac{4 \\rho r c \\Delta T}{3 E \\Phi}=1 \\times 10^{14} \\mathrm{~s}\n$$", "1 \\times 10^{14} \\mathrm{~s}", "last_equals"),
        ("Adding up the branches. In total, $N=9+3+13+10+14=49$.", "49", "last_equals"),
        ("By induction the claim holds for all n.\n\n$\\blacksquare$", "", "none"),
        ("Thus f is monotone, as required. \\(\\blacksquare\\)", "", "none"),
        ("Inputting the ansatz, we get $c_{1}=-2 k$ and $c_{2}=-4 \\pi^{2}$.", "", "none"),
        ("Hence the state is good and therefore Sara can force a win.", "", "none"),
        ("The total comes out as $x=5$ apples, which is plenty for everyone.", "", "none"),
    ],
)
def test_extract_gold_rules(solution, gold, rule):
    assert extract_gold(solution) == (gold, rule)


def test_gpqa_shuffle_determinism_and_letter(loaded):
    ps = loaded["gpqa_diamond"]
    assert all(p.kind == "choice" and len(p.options) == 4 for p in ps)
    # the gold letter points at the correct option (first of meta["answer_options"]) in every sample
    for p in ps[:50]:
        for s in range(6):
            q = shuffle_choices(p, s)
            assert q.gold in CHOICE_LETTERS[:4]
            assert q.options[CHOICE_LETTERS.index(q.gold)] == p.meta["answer_options"][0]
            assert sorted(q.options) == sorted(p.meta["answer_options"])
            assert q.meta["sample_index"] == s
            # same (question, sample) -> same order, whatever order the input had
            assert shuffle_choices(shuffle_choices(p, 9), s).options == q.options
    # orders vary across samples, and letters are spread over A-D (not all "A")
    p = ps[0]
    assert len({tuple(shuffle_choices(p, s).options) for s in range(24)}) > 6
    assert set(collections.Counter(q.gold for q in ps)) == set("ABCD")
    # loading again gives the same sample-0 order; another seed salt changes it
    again = load_benchmark("gpqa_diamond", limit=20)
    assert [q.options for q in again] == [q.options for q in ps[:20]]
    other = load_benchmark("gpqa_diamond", limit=20, seed=1)
    assert [q.options for q in other] != [q.options for q in ps[:20]]
    assert [q.id for q in other] == [q.id for q in ps[:20]]


def test_gpqa_text_never_in_repr_or_logs(loaded, caplog):
    caplog.set_level(logging.DEBUG)
    ps = load_benchmark("gpqa_diamond", limit=5)
    for p in ps + loaded["gpqa_diamond"][:20]:
        r, s = repr(p), str(p)
        assert p.question[:30] not in r and p.question[:30] not in s
        assert all(opt[:20] not in r for opt in p.options if len(opt) >= 8)
        assert "<hidden>" in r and p.id in r
    assert repr(ps) and all(p.question[:30] not in repr(ps) for p in ps)
    logged = caplog.text
    assert all(p.question[:30] not in logged for p in ps)
    # a non-private benchmark shows (the start of) its question
    assert loaded["aime24"][0].question[:20] in repr(loaded["aime24"][0])


def test_problem_roundtrip_and_choice_format(loaded):
    for name in COUNTS:
        p = loaded[name][3]
        assert Problem.from_dict(p.to_dict()) == p
    g = loaded["gpqa_diamond"][0]
    text = g.question_with_options()
    assert text.startswith(g.question) and "(D) " + g.options[3] in text


def test_limit_split_and_easiest(loaded):
    ps = loaded["math500"]
    assert [p.id for p in load_benchmark("math500", limit=7)] == [p.id for p in ps[:7]]
    a, b = split_by_hash(ps, 0.3, salt="demo")
    assert {p.id for p in a}.isdisjoint({p.id for p in b}) and len(a) + len(b) == 500
    assert 100 < len(a) < 200
    a2, _ = split_by_hash(list(reversed(ps)), 0.3, salt="demo")
    assert {p.id for p in a2} == {p.id for p in a}  # order-independent
    a3, _ = split_by_hash(ps, 0.3, salt="other")
    assert {p.id for p in a3} != {p.id for p in a}
    assert split_by_hash(ps, 0.0)[0] == [] and split_by_hash(ps, 1.0)[1] == []
    e = easiest(ps, 50)
    assert len(e) == 50 and [p.meta["level"] for p in e] == [1] * 43 + [2] * 7
    assert [p.id for p in e[:43]] == [p.id for p in ps if p.meta["level"] == 1]  # ties keep file order
    with pytest.raises(ValueError, match="level"):
        easiest(loaded["aime24"], 3)


def test_unknown_benchmark_lists_known_names():
    with pytest.raises(ValueError) as info:
        load_benchmark("aime2026")
    msg = str(info.value)
    assert "aime2026" in msg and all(name in msg for name in BENCHMARKS)


@pytest.mark.parametrize("name", ["aime24", "gpqa_diamond", "s1k-1.1"])
def test_missing_dataset_gives_one_clear_error(tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("RSDLIB_DATA_DIR", str(tmp_path))
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf", raising=False)
    t0 = datetime.datetime.now()
    with pytest.raises(DatasetUnavailableError) as info:
        load_benchmark(name)
    assert (datetime.datetime.now() - t0).total_seconds() < 30, "offline must fail fast"
    msg = str(info.value)
    hub_id = BENCHMARKS[name].hub[0][0]
    assert name in msg and hub_id in msg
    if BENCHMARKS[name].local_file:
        assert BENCHMARKS[name].local_file in msg and "RSDLIB_DATA_DIR" in msg
    else:
        assert "no local-file option" in msg
    assert isinstance(info.value, RuntimeError)


def test_hub_path_fallback_order_and_s1k11_traces(tmp_path, monkeypatch):
    """Without a local file the hub is read (datasets.load_dataset stubbed: no network in tests)."""
    import rsdlib.data as data

    calls = []

    def fake_hub(hub_id, config, split):
        calls.append((hub_id, config, split))
        if hub_id == "simplescaling/aime25_nofigures":
            raise ConnectionError("offline")
        if hub_id == "opencompass/AIME2025":
            return [{"question": "Find x.", "answer": "007"}, {"question": "Find y.", "answer": "12"}]
        if hub_id == "simplescaling/s1K-1.1":
            return [
                {"question": "What is 1+1?", "solution": "We add. \\boxed{2}", "deepseek_thinking_trajectory": "R1 thinks",
                 "deepseek_attempt": "So \\boxed{2}", "cot_type": "math", "source_type": "toy"},
                {"question": "Prove it.", "solution": "Obvious.\n\n$\\blacksquare$", "deepseek_thinking_trajectory": "t",
                 "deepseek_attempt": "a", "cot_type": "math", "source_type": "toy"},
            ]
        if hub_id == "Idavidrein/gpqa":
            return [{"Question": "Synthetic question one?", "Correct Answer": "right", "Incorrect Answer 1": "w1",
                     "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3", "Record ID": "rec1"}]
        raise AssertionError(hub_id)

    monkeypatch.setattr(data, "_read_hub", fake_hub)
    monkeypatch.setenv("RSDLIB_DATA_DIR", str(tmp_path))  # empty folder: no local file
    a25 = load_benchmark("aime25")
    assert [c[0] for c in calls] == ["simplescaling/aime25_nofigures", "opencompass/AIME2025"]
    assert [(p.id, p.gold, p.kind) for p in a25] == [("aime25-0", "7", "integer"), ("aime25-1", "12", "integer")]
    assert a25[0].meta["loaded_from"] == "hub:opencompass/AIME2025"

    s11 = load_benchmark("s1k-1.1", split="train")
    assert calls[-1] == ("simplescaling/s1K-1.1", None, "train")
    assert s11[0].meta["trace"] == "R1 thinks" and s11[0].meta["attempt"] == "So \\boxed{2}"
    assert s11[0].gold == "2" and s11[0].kind == "integer" and s11[0].id == "s1k-0"  # one id space with s1K (issue 12)
    checkable, unextractable = answer_checkable(s11)
    assert [p.id for p in unextractable] == ["s1k-1"] and s11[0].source == "s1k-1.1"

    g = load_benchmark("gpqa_diamond")
    assert calls[-1] == ("Idavidrein/gpqa", "gpqa_diamond", "train")
    assert g[0].options[CHOICE_LETTERS.index(g[0].gold)] == "right" and g[0].meta["record_id"] == "rec1"
    assert "Synthetic" not in repr(g[0])
