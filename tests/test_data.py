"""rsdlib.data: the shipped copies (checksums, overrides, the hub source), s1K gold extraction, GPQA
shuffling and privacy (the password zip, decrypted in memory only), errors."""

from __future__ import annotations

import builtins
import collections
import datetime
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

import rsdlib.data as data
from rsdlib.data import (
    BENCHMARKS,
    DatasetUnavailableError,
    Problem,
    ShippedDataError,
    answer_checkable,
    easiest,
    extract_gold,
    load_benchmark,
    shuffle_choices,
    split_by_hash,
)
from rsdlib.grading import CHOICE_LETTERS

REPO = Path(__file__).resolve().parents[1]
COUNTS = {"math500": 500, "aime24": 30, "aime25": 30, "gpqa_diamond": 198, "s1k": 1000}
# sha256 of the original files as their provenance record lists them (copied by hand from the
# workplace's PROVENANCE.md, not from rsdlib): the shipped copies must decompress to these bytes
PROVENANCE_SHA256 = {
    "math500": "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
    "aime24": "66ccede21ab71f1170c8d0d575603d6f82989a5d8e26952f9d1d4324b2e526d8",
    "aime25": "d8538a5a10c511a03558a2d6cef8d5a0e3012d0505a45c06f9caab715c966ca3",
    "gpqa_diamond": "a783322254b5ab9c436a286e2cd964d9848c77eabeab8afb813edc7478ce1f51",
    "s1k": "1edd685af28743cab508e891d6abe22f174edec61dc3a66895673b2a41b51cf5",
}
SHIPPED_DIR = REPO / "rsdlib" / "benchmark_data"


@pytest.fixture(scope="module")
def loaded():
    return {name: load_benchmark(name) for name in COUNTS}  # the default: the shipped copies


@pytest.mark.parametrize("name", list(COUNTS))
def test_shipped_loader_counts_and_fields(loaded, name):
    problems = loaded[name]
    assert len(problems) == COUNTS[name]
    assert len({p.id for p in problems}) == len(problems), "ids must be unique"
    assert all(p.source == name and p.question.strip() for p in problems)
    assert all(p.meta["loaded_from"] == f"shipped:{BENCHMARKS[name].local_file}" for p in problems)


@pytest.mark.parametrize("name", list(COUNTS))
def test_shipped_checksums_match_provenance_and_data_card(name):
    shipped = BENCHMARKS[name].shipped
    blob = (SHIPPED_DIR / shipped.name).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == shipped.archive_sha256
    assert shipped.sha256 == PROVENANCE_SHA256[name]
    assert hashlib.sha256(data.shipped_bytes(name)).hexdigest() == PROVENANCE_SHA256[name]
    card = (REPO / "DATA.md").read_text()
    row = next((line for line in card.splitlines() if line.startswith(f"| {name} |")), None)
    assert row is not None, f"DATA.md has no table row for {name}"
    assert shipped.sha256 in row and shipped.archive_sha256 in row and shipped.name in row
    assert f"| {COUNTS[name]} |" in row


def test_an_altered_shipped_copy_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "benchmark_data"
    shutil.copytree(SHIPPED_DIR, folder)
    raw = gzip.decompress((folder / "aime25.jsonl.gz").read_bytes())
    (folder / "aime25.jsonl.gz").write_bytes(gzip.compress(raw.replace(b'"answer"', b'"answer" ', 1), mtime=0))
    (folder / "aime24.jsonl.gz").write_bytes(b"not gzip")
    (folder / "math500.jsonl.gz").unlink()
    monkeypatch.setattr(data, "SHIPPED_ROOT", folder)
    with pytest.raises(ShippedDataError, match=r"aime25.jsonl.gz.*sha256 of the original aime25.jsonl is [0-9a-f]{64}, "
                                               r"expected d8538a5a") as info:
        load_benchmark("aime25")
    assert isinstance(info.value, DatasetUnavailableError)
    with pytest.raises(ShippedDataError, match="aime24.jsonl.gz of 'aime24' cannot be read: BadGzipFile"):
        load_benchmark("aime24")
    with pytest.raises(ShippedDataError, match="math500.jsonl.gz of 'math500' is missing.*source='hub'"):
        load_benchmark("math500")
    assert len(load_benchmark("gpqa_diamond")) == 198  # the untouched files still load


def test_local_dir_and_env_override_the_shipped_copy(tmp_path, monkeypatch, caplog):
    rows = [{"problem": "What is 2+3?", "answer": "5", "unique_id": "mine/1.json", "level": 1, "subject": "Toy"}]
    (tmp_path / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mine = load_benchmark("math500", local_dir=tmp_path)
    assert [(p.id, p.gold) for p in mine] == [("math500/mine/1.json", "5")]
    assert mine[0].meta["loaded_from"] == str(tmp_path / "math500.jsonl")
    assert [p.id for p in load_benchmark("math500", local_dir=tmp_path, source="hub")] == ["math500/mine/1.json"]
    monkeypatch.setenv("RSDLIB_DATA_DIR", str(tmp_path))
    assert [p.id for p in load_benchmark("math500")] == ["math500/mine/1.json"]
    # a folder without the benchmark's file: the shipped copy, and the log says why
    caplog.set_level(logging.INFO, logger="rsdlib.data")
    a24 = load_benchmark("aime24")
    assert len(a24) == 30 and a24[0].meta["loaded_from"] == "shipped:aime24.jsonl"
    assert f"no local file {tmp_path / 'aime24.jsonl'}" in caplog.text


def test_source_hub_reads_the_hub_and_the_default_never_does(monkeypatch):
    calls = []

    def fake_hub(hub_id, config, split):
        calls.append(hub_id)
        return [{"problem": "Hub problem?", "answer": "3", "unique_id": "hub/1.json", "level": 2}]

    monkeypatch.setattr(data, "_read_hub", fake_hub)
    assert len(load_benchmark("math500")) == 500 and calls == []
    hub = load_benchmark("math500", source="hub")
    assert calls == ["HuggingFaceH4/MATH-500"] and [p.id for p in hub] == ["math500/hub/1.json"]
    assert hub[0].meta["loaded_from"] == "hub:HuggingFaceH4/MATH-500"
    with pytest.raises(ValueError, match="source must be one of .*'local'"):
        load_benchmark("math500", source="local")


def test_math500_problems_carry_their_worked_solution(loaded):
    p = loaded["math500"][0]
    assert p.meta["solution"].startswith("We have that $r = \\sqrt{0^2 + 3^2} = 3.$")
    assert all(q.meta["solution"].strip() for q in loaded["math500"])


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
    assert rules["short"] == 373  # DATA.md: 373 short final answers
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
        ("Energy balance.\n\n$$\nt=\\frac{4 \\rho r c \\Delta T}{3 E \\Phi}=1 \\times 10^{14} \\mathrm{~s}\n$$",
         "1 \\times 10^{14} \\mathrm{~s}", "last_equals"),
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


def _gpqa_snippets(problems) -> list[str]:
    return [p.question[:60] for p in problems if len(p.question) >= 60]


def test_gpqa_ships_only_as_its_authors_password_zip(loaded):
    shipped = BENCHMARKS["gpqa_diamond"].shipped
    assert shipped.password == "deserted-untie-orchid" == data.GPQA_ZIP_PASSWORD  # the official release's
    assert not [p.name for p in SHIPPED_DIR.iterdir() if "gpqa" in p.name and p.name != shipped.name]
    with zipfile.ZipFile(SHIPPED_DIR / shipped.name) as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == ["gpqa_diamond.jsonl"]
        assert all(i.flag_bits & 0x1 for i in infos), "every member must be encrypted"
        with pytest.raises(RuntimeError, match="[Pp]assword"):
            archive.read("gpqa_diamond.jsonl")  # no password, no text
    blob = (SHIPPED_DIR / shipped.name).read_bytes()
    snippets = _gpqa_snippets(loaded["gpqa_diamond"])
    assert len(snippets) > 150
    assert not [s for s in snippets if s.encode() in blob or s[:30].encode() in blob]


def test_no_gpqa_text_in_any_file_of_the_repository(loaded):
    """The decrypted questions appear in no committed or untracked file (code, docs, figures, tables)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    files = [REPO / f for f in listed if f and (REPO / f).is_file()]
    assert len(files) > 50
    snippets = [s.encode() for s in _gpqa_snippets(loaded["gpqa_diamond"])]
    options = [o.encode() for p in loaded["gpqa_diamond"] for o in p.options if len(o) >= 40]
    leaked = [str(f.relative_to(REPO)) for f in files
              if any(s in f.read_bytes() for s in snippets + options)]
    assert not leaked


def test_gpqa_is_decrypted_in_memory_and_never_written(monkeypatch, tmp_path, caplog):
    """Loading GPQA opens no file for writing (no temporary plain copy) and logs no question text."""
    writes = []
    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            writes.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            writes.append(str(path))
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    problems = load_benchmark("gpqa_diamond")
    raw = data.shipped_bytes("gpqa_diamond")
    monkeypatch.undo()
    assert writes == [] and list(tmp_path.iterdir()) == []
    assert len(problems) == 198 and hashlib.sha256(raw).hexdigest() == PROVENANCE_SHA256["gpqa_diamond"]
    logged = caplog.text
    assert "loaded 198 gpqa_diamond problems from shipped:gpqa_diamond.jsonl" in logged
    assert not [s for s in _gpqa_snippets(problems) if s[:30] in logged]


def test_a_wrong_gpqa_password_is_a_clear_error_without_text(monkeypatch):
    spec = BENCHMARKS["gpqa_diamond"]
    monkeypatch.setitem(BENCHMARKS, "gpqa_diamond", replace(spec, shipped=replace(spec.shipped, password="wrong")))
    bad_password = r"gpqa_diamond.zip of 'gpqa_diamond' cannot be read: RuntimeError: Bad password"
    with pytest.raises(ShippedDataError, match=bad_password):
        load_benchmark("gpqa_diamond")


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
        load_benchmark(name, source="hub")  # s1K-1.1: also with the default source (it has no shipped copy)
    assert (datetime.datetime.now() - t0).total_seconds() < 30, "offline must fail fast"
    msg = str(info.value)
    hub_id = BENCHMARKS[name].hub[0][0]
    assert name in msg and hub_id in msg
    assert BENCHMARKS[name].local_file in msg and "RSDLIB_DATA_DIR" in msg  # s1K-1.1 too (the dry run's stand-in file)
    if BENCHMARKS[name].shipped:
        assert "source='shipped', the default" in msg
    else:  # s1K-1.1 ships no copy: the default source fails the same way, never naming a shipped one
        assert "shipped" not in msg
        with pytest.raises(DatasetUnavailableError, match="s1K-1.1") as default:
            load_benchmark(name)
        assert "shipped" not in str(default.value)
    assert isinstance(info.value, RuntimeError)


def test_hub_path_fallback_order_and_s1k11_traces(tmp_path, monkeypatch):
    """source="hub" without a local file reads the hub (datasets.load_dataset stubbed: no network in tests)."""
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
                {"question": "What is 1+1?", "solution": "We add. \\boxed{2}",
                 "deepseek_thinking_trajectory": "R1 thinks",
                 "deepseek_attempt": "So \\boxed{2}", "cot_type": "math", "source_type": "toy"},
                {"question": "Prove it.", "solution": "Obvious.\n\n$\\blacksquare$",
                 "deepseek_thinking_trajectory": "t",
                 "deepseek_attempt": "a", "cot_type": "math", "source_type": "toy"},
            ]
        if hub_id == "Idavidrein/gpqa":
            return [{"Question": "Synthetic question one?", "Correct Answer": "right", "Incorrect Answer 1": "w1",
                     "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3", "Record ID": "rec1"}]
        raise AssertionError(hub_id)

    monkeypatch.setattr(data, "_read_hub", fake_hub)
    monkeypatch.setenv("RSDLIB_DATA_DIR", str(tmp_path))  # empty folder: no local file
    a25 = load_benchmark("aime25", source="hub")
    assert [c[0] for c in calls] == ["simplescaling/aime25_nofigures", "opencompass/AIME2025"]
    assert [(p.id, p.gold, p.kind) for p in a25] == [("aime25-0", "7", "integer"), ("aime25-1", "12", "integer")]
    assert a25[0].meta["loaded_from"] == "hub:opencompass/AIME2025"

    s11 = load_benchmark("s1k-1.1", split="train")
    assert calls[-1] == ("simplescaling/s1K-1.1", None, "train")
    assert s11[0].meta["trace"] == "R1 thinks" and s11[0].meta["attempt"] == "So \\boxed{2}"
    assert s11[0].gold == "2" and s11[0].kind == "integer" and s11[0].id == "s1k-0"  # one id space with s1K (issue 12)
    checkable, unextractable = answer_checkable(s11)
    assert [p.id for p in unextractable] == ["s1k-1"] and s11[0].source == "s1k-1.1"

    g = load_benchmark("gpqa_diamond", source="hub")
    assert calls[-1] == ("Idavidrein/gpqa", "gpqa_diamond", "train")
    assert g[0].options[CHOICE_LETTERS.index(g[0].gold)] == "right" and g[0].meta["record_id"] == "rec1"
    assert "Synthetic" not in repr(g[0])


@pytest.mark.parametrize("file_name", ["math500.jsonl", "s1k.json"])
def test_malformed_local_file_names_file_and_line(tmp_path, file_name):
    good = json.dumps({"problem": "What is 1+1?", "answer": "2", "level": 1, "unique_id": "test/a/1.json"})
    if file_name.endswith("jsonl"):
        text = f"{good}\n{good}\n{{\"problem\": \"x\", \"answer\": }}\n"
    else:
        text = "[\n{\"a\": 1},\n{\"a\": }\n]"
    (tmp_path / file_name).write_text(text)
    with pytest.raises(ValueError, match=rf"{tmp_path / file_name}, line 3: not valid JSON"):
        load_benchmark(file_name.split(".")[0], local_dir=tmp_path)
