"""Table writer (the paper's value beside ours), figure saving, the token layout of Figures 5/7, and
the transcription of the paper's numbers in rsdlib.reference."""

from __future__ import annotations

import csv

import pytest

from rsdlib import plots, reference


@pytest.fixture
def figdir(tmp_path, monkeypatch):
    monkeypatch.setenv("RSDLIB_FIGURES", str(tmp_path))
    return tmp_path


def test_comparison_rows_put_the_paper_beside_ours():
    paper = [{"key": "base", "label": "Qwen3-0.6B", "MATH500": 65.4},
             {"key": "rsd-p1", "label": "+ RSD", "MATH500": 66.2}]
    ours = [{"key": "rsd-p1", "label": "ours rsd", "MATH500": 40.0},
            {"key": "extra", "label": "only ours", "MATH500": 1.0}]
    rows = plots.comparison_rows(ours, paper, ["MATH500"])
    assert [r["key"] for r in rows] == ["base", "rsd-p1", "extra"]  # paper order, then ours the paper lacks
    assert list(rows[0]) == ["key", "label", "MATH500 (ours)", "MATH500 (paper)"]
    assert rows[0]["MATH500 (ours)"] is None and rows[0]["MATH500 (paper)"] == 65.4
    assert rows[1]["label"] == "+ RSD" and rows[1]["MATH500 (ours)"] == 40.0 and rows[1]["MATH500 (paper)"] == 66.2
    assert rows[2]["MATH500 (paper)"] is None and rows[2]["label"] == "only ours"
    rows = plots.comparison_rows(ours, paper, ["MATH500"], include_paper_only=False)
    assert [r["key"] for r in rows] == ["rsd-p1", "extra"]


def test_write_table_markdown_and_csv(figdir):
    rows = plots.comparison_rows([{"key": "rsd-p1", "Sub-1% tokens (%)": 0.1234}], reference.TABLE2,
                                 ["Sub-1% tokens (%)"])
    md, csv_path = plots.write_table(rows, "tab_x", "demo", title="Table X",
                                     columns=["label", "Sub-1% tokens (%) (ours)", "Sub-1% tokens (%) (paper)"],
                                     notes=["a note | with a bar"])
    assert md == figdir / "demo" / "tab_x.md" and csv_path.suffix == ".csv"
    text = md.read_text()
    assert text.startswith("# Table X\n") and "profile **demo**" in text
    assert "| label | Sub-1% tokens (%) (ours) | Sub-1% tokens (%) (paper) |" in text
    assert "| RSD-generated (p_th=1%) | 0.12 | 0.09 |" in text
    assert "| s1K-1.1 | — | 6.70 |" in text  # not run by us: an em dash, never a made-up number
    assert "- a note | with a bar" in text
    table = list(csv.reader(csv_path.open()))
    assert table[0] == ["profile", "label", "Sub-1% tokens (%) (ours)", "Sub-1% tokens (%) (paper)"]
    rsd = next(r for r in table if r[1] == "RSD-generated (p_th=1%)")
    assert rsd == ["demo", "RSD-generated (p_th=1%)", "0.1234", "0.09"]  # full precision in the CSV
    assert next(r for r in table if r[1] == "s1K-1.1")[2] == ""


def test_markdown_escapes_bars_and_formats_values():
    text = plots.markdown_table([{"a": "x|y", "b": 1.5, "c": None, "d": 3}], digits=1)
    assert "| x\\|y | 1.5 | — | 3 |" in text
    assert plots.markdown_table([]) == "_(no rows)_\n"


def test_save_figure_writes_pdf_and_png(figdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.set_style()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0], color=plots.method_color("rsd-p1"))
    plots.profile_note("smoke", fig)
    paths = plots.save_figure(fig, "figx", "smoke", close=True)
    assert [p.name for p in paths] == ["figx.pdf", "figx.png"]
    assert paths[0].read_bytes()[:4] == b"%PDF" and paths[1].read_bytes()[:4] == b"\x89PNG"
    assert b"CreationDate" not in paths[0].read_bytes()  # no timestamp: same data, same bytes


def test_token_lines_wrap_and_show_newlines():
    lines = plots.token_lines(["Hello", " world", "\n", "next", " line", "!"], width=11)
    shown = ["".join(t for _, t in line) for line in lines]
    assert shown == ["Hello world", "\\n", "next line!"]
    assert [i for i, _ in lines[2]] == [3, 4, 5]  # token indices survive the layout (for highlighting)
    long = plots.token_lines(["a" * 5] * 3, width=8)
    assert ["".join(t for _, t in ln) for ln in long] == ["aaaaa", "aaaaa", "aaaaa"]


# ----------------------------------------------------------------------------------------------
# The paper's numbers
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["table1", "table3", "table4", "table5"])
def test_accuracy_tables_average_their_four_benchmarks(name):
    """A transcription check: the paper's Average column is the mean of its four benchmarks."""
    for row in reference.TABLES[name]:
        mean = sum(row[b] for b in reference.BENCHMARKS) / 4
        assert abs(mean - row["Average"]) <= 0.006, row


def test_reference_values_spot_checks():
    assert reference.row(reference.TABLE1, "rsd-p1")["Average"] == 27.21
    assert reference.row(reference.TABLE1, "s1k-1.1")["GPQA Diamond"] == 12.88
    assert reference.row(reference.TABLE2, "teacher")["Correctly solved"] == "234/1000"
    assert reference.row(reference.TABLE2, "rsd-p0.3")["Sub-1% tokens (%)"] == 2.02
    assert reference.row(reference.TABLE2, "self-distill")["Fallback rate (%)"] is None  # Not Applicable
    assert reference.row(reference.TABLE6, "rsd-p1-llama")["Average token count"] == 1081
    assert reference.compute_equivalent_attempts(7, 0.6, 16) == 203
    assert [b["Average"] for b in reference.FIGURE1_BARS] == [25.95, 20.64, 27.21]
    bars = reference.figure4_bars()
    assert {b["panel"] for b in bars} == set(reference.FIGURE4_PANELS)
    tailored = [b for b in bars if b["setting"] == "tailored"]
    assert [(b["student"], b["Average"]) for b in tailored] == [
        ("Qwen3-0.6B", 27.21), ("Qwen3-1.7B", 41.80), ("Llama-3.2-1B-Instruct", 8.59)]
    # Table 4's first rows repeat Table 1
    tailored = reference.row(reference.TABLE4, "Qwen3-0.6B/tailored")
    assert tailored["Average"] == reference.row(reference.TABLE1, "rsd-p1")["Average"]


def test_draw_tokens_renders_tex_that_mathtext_cannot_parse(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = ["We", " get", " $2^3", "\\cdot3^x", "=72", " \\implies", " 8", " \\cdot", " 3^x", " =", " 72$", "."]
    fig, ax = plt.subplots(figsize=(6, 2))
    lines = plots.draw_tokens(ax, tokens, [t == " \\implies" for t in tokens], title="a $x \\implies y$ title")
    fig.savefig(tmp_path / "tokens.png")  # mathtext would raise ValueError on \implies
    plt.close(fig)
    assert lines >= 1 and (tmp_path / "tokens.png").stat().st_size > 0


def test_house_style_monospace_advance_matches_the_layout_constant():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.set_style()
    for fontsize in (6.5, 7.5, 9.0):
        fig = plt.figure(dpi=150)
        text = fig.text(0, 0, "x" * 100, fontsize=fontsize, family="DejaVu Sans Mono")
        fig.canvas.draw()
        advance = text.get_window_extent().width / 150 * 72 / 100 / fontsize
        plt.close(fig)
        assert abs(advance - plots.MONO_ADVANCE) < 0.005, (fontsize, advance)
