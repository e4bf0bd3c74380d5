"""House style for figures and tables: one look, PDF+PNG figures, tables with the paper's value beside ours.

- ``set_style()``: the one matplotlib style every figure notebook uses (white grid, readable sizes)
  and ``METHOD_COLORS``/``method_color``: a fixed colour per trace generator across all figures.
- ``save_figure(fig, name, profile)``: ``<figures>/<name>.pdf`` and ``.png`` (no timestamps in the
  files, so a rerun with the same data gives the same bytes), returns both paths.
- ``comparison_rows(ours, paper, columns)``: joins our rows to the paper's by ``key``: one output row
  per method (paper order first, then ours the paper lacks), and for each column ``<col> (ours)``
  beside ``<col> (paper)``.
- ``write_table(rows, name, profile, title=..., notes=...)``: the same rows as Markdown (title line
  naming the profile, the table, further ``sections``, notes) and CSV (``csv_columns``: the CSV can
  carry more columns than the Markdown, e.g. numeric interval bounds behind an "estimate [low, high]"
  cell). ``markdown_table`` renders without extra packages.
- ``interval_cell(interval)``: "estimate [low, high]" (issue 16: every number with its 95% interval),
  "*" appended to a difference whose interval excludes 0; ``error_bar``: the (2, n) yerr matplotlib
  wants for a list of intervals.

Where ``<figures>`` is ``rsdlib.paths.figures_dir(profile)`` (``<repo>/figures/<profile>``), or
``$RSDLIB_FIGURES/<profile>`` when that variable is set (the tests write their smoke run elsewhere).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rsdlib import paths
from rsdlib.store import read_json

MISSING = "—"  # shown where a value does not exist (the paper does not report it, or we did not run it)

METHOD_COLORS = {
    "base": "#7f7f7f",
    "s1k-1.1": "#d62728",
    "reference": "#d62728",
    "teacher": "#ff7f0e",
    "self-distill": "#2ca02c",
    "student": "#2ca02c",
    "skd": "#9467bd",
    "rsd-p10": "#9ecae1",
    "rsd-p3": "#4292c6",
    "rsd-p1": "#08519c",
    "rsd-p0.3": "#08306b",
}
PAPER_COLOR = "#bdbdbd"  # bars/markers that show the paper's number


def method_color(method: str, index: int = 0) -> str:
    """Fixed colour of a method; RSD variants not listed get a blue, others a tab10 colour."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    if method.startswith("rsd"):
        return "#2171b5"
    import matplotlib

    return matplotlib.colormaps["tab10"](index % 10)


def set_style() -> None:
    """The house style (call once per notebook, before plotting)."""
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 3.6),
            "figure.dpi": 110,
            # unhinted glyph advances: monospace text is exactly MONO_ADVANCE em wide at every size and
            # dpi, so draw_tokens' highlights sit under their tokens (hinting rounds advances to pixels)
            "text.hinting": "none",
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "legend.frameon": False,
            "legend.fontsize": 9,
            "pdf.fonttype": 42,  # TrueType in PDFs (editable text)
            "svg.hashsalt": "rsdlib",
        }
    )


def save_figure(fig, name: str, profile: str, *, close: bool = False) -> list[Path]:
    """Save ``fig`` as ``<name>.pdf`` and ``<name>.png`` in the profile's figures folder."""
    folder = paths.figures_dir(profile)
    out = []
    for ext, meta in (("pdf", {"CreationDate": None, "ModDate": None, "Creator": "rsdlib"}),
                      ("png", {"Software": "rsdlib"})):
        path = folder / f"{name}.{ext}"
        fig.savefig(path, metadata=meta)
        out.append(path)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return out


def profile_note(profile: str, fig, *, extra: str = "") -> None:
    """A small grey footer naming the profile that produced ``fig`` (every figure carries one)."""
    text = f"rsdlib reproduction, profile: {profile}" + (f" — {extra}" if extra else "")
    fig.text(0.995, -0.005, text, ha="right", va="top", fontsize=7, color="#777777")  # below the axes


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(value: Any, digits: int = 2) -> str:
    """Display form: floats with ``digits`` decimals, missing as an em dash, the rest as text."""
    if _is_missing(value):
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def comparison_rows(
    ours: Sequence[Mapping],
    paper: Sequence[Mapping],
    columns: Sequence[str],
    *,
    key: str = "key",
    label: str = "label",
    include_paper_only: bool = True,
    label_as: str | None = None,
) -> list[dict]:
    """Rows with ``<col> (ours)`` beside ``<col> (paper)`` for each of ``columns``, joined on ``key``.

    Row order: the paper's rows (those we did not produce keep a missing "ours"), then our rows the
    paper has no counterpart for (missing "paper"). The label is the paper's where it has the row;
    ``label_as`` renames the label column (e.g. "Datasets" or "Models", as in the paper's tables).
    """
    out = _comparison(ours, paper, columns, key, label, include_paper_only)
    if label_as and label_as != label:
        out = [{(label_as if k == label else k): v for k, v in r.items()} for r in out]
    return out


def _comparison(ours, paper, columns, key, label, include_paper_only) -> list[dict]:
    ours_by_key = {r[key]: r for r in ours}
    paper_keys = [r[key] for r in paper]
    out = []
    for p in paper:
        mine = ours_by_key.get(p[key])
        if mine is None and not include_paper_only:
            continue
        entry = {"key": p[key], label: p.get(label, p[key])}
        for col in columns:
            entry[f"{col} (ours)"] = None if mine is None else mine.get(col)
            entry[f"{col} (paper)"] = p.get(col)
        out.append(entry)
    for r in ours:
        if r[key] in paper_keys:
            continue
        entry = {"key": r[key], label: r.get(label, r[key])}
        for col in columns:
            entry[f"{col} (ours)"] = r.get(col)
            entry[f"{col} (paper)"] = None
        out.append(entry)
    return out


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None, digits: int = 2) -> str:
    """A GitHub Markdown table of ``rows`` (``columns`` default: the keys of the first row)."""
    if not rows:
        return "_(no rows)_\n"
    columns = list(columns or rows[0].keys())
    cells = [[format_value(r.get(c), digits).replace("|", "\\|") for c in columns] for r in rows]
    header = "| " + " | ".join(columns) + " |"
    numeric = [all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)
                   for r in rows if not _is_missing(r.get(c))) for c in columns]
    rule = "|" + "|".join("---:" if num and i > 0 else "---" for i, num in enumerate(numeric)) + "|"
    body = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([header, rule, *body]) + "\n"


def interval_cell(interval, digits: int = 2, *, mark: bool = False, signed: bool = False) -> str:
    """"estimate [low, high]" of an ``rsdlib.metrics.Interval`` (None or NaN: the missing mark).

    ``mark``: append " *" when the interval excludes 0 (a difference the data can tell from none);
    ``signed``: show the estimate's sign (differences).
    """
    if interval is None or _is_missing(interval.estimate):
        return MISSING
    est = f"{interval.estimate:+.{digits}f}" if signed else f"{interval.estimate:.{digits}f}"
    if _is_missing(interval.low):
        return est
    cell = f"{est} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"
    return cell + (" *" if mark and interval.excludes_zero else "")


def error_bar(intervals: Sequence) -> list[list[float]]:
    """The (2, n) ``yerr`` of ``ax.errorbar``/``ax.bar`` for intervals around their estimates (0 where missing)."""
    below, above = [], []
    for iv in intervals:
        ok = iv is not None and not _is_missing(iv.estimate) and not _is_missing(iv.low)
        below.append(iv.estimate - iv.low if ok else 0.0)
        above.append(iv.high - iv.estimate if ok else 0.0)
    return [below, above]


def write_table(
    rows: Sequence[Mapping],
    name: str,
    profile: str,
    *,
    title: str,
    columns: Sequence[str] | None = None,
    notes: Iterable[str] = (),
    digits: int = 2,
    csv_columns: Sequence[str] | None = None,
    sections: Iterable[tuple[str, Sequence[Mapping], Sequence[str]]] = (),
) -> list[Path]:
    """Write ``<name>.md`` (title naming the profile, table, ``sections``, notes) and ``<name>.csv``.

    ``csv_columns`` (default ``columns``): the CSV's columns, from the same rows. ``sections``: further
    Markdown tables, each (heading, rows, columns), after the main one (e.g. paired differences).
    Returns both paths.
    """
    folder = paths.figures_dir(profile)
    rows = list(rows)
    columns = list(columns or (rows[0].keys() if rows else []))
    md = [f"# {title}", "", f"Ours: rsdlib reproduction, profile **{profile}**. Paper: arXiv 2509.22230.", ""]
    md.append(markdown_table(rows, columns, digits))
    for heading, section_rows, section_columns in sections:
        md += ["", f"## {heading}", "", markdown_table(section_rows, section_columns, digits)]
    notes = [n for n in notes if n]
    if notes:
        md += [""] + [f"- {n}" for n in notes]
    md_path = folder / f"{name}.md"
    md_path.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    csv_path = folder / f"{name}.csv"
    csv_columns = list(csv_columns or columns)
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["profile", *csv_columns])
        for r in rows:
            writer.writerow([profile, *("" if _is_missing(r.get(c)) else r.get(c) for c in csv_columns)])
    return [md_path, csv_path]


# ----------------------------------------------------------------------------------------------
# Trace text rendered as an image (Figures 5 and 7)
# ----------------------------------------------------------------------------------------------
MONO_ADVANCE = 0.602  # advance width of DejaVu Sans Mono, in em


def token_lines(tokens: Sequence[str], width: int) -> list[list[tuple[int, str]]]:
    """Lay out token texts on lines of ``width`` characters: [(token index, shown text), ...] per line.

    A newline inside a token is shown as a literal ``\\n`` (as in the paper's excerpts) and ends the
    line; tabs become spaces; a token that does not fit starts a new line.
    """
    lines: list[list[tuple[int, str]]] = [[]]
    col = 0
    for i, tok in enumerate(tokens):
        parts = tok.replace("\t", " ").replace("\r", "").split("\n")
        for k, part in enumerate(parts):
            shown = part + ("\\n" if k < len(parts) - 1 else "")
            if not shown:
                continue
            if col + len(shown) > width and col > 0:
                lines.append([])
                col = 0
                shown = shown.lstrip(" ") or shown
            lines[-1].append((i, shown))
            col += len(shown)
            if k < len(parts) - 1:
                lines.append([])
                col = 0
    return [ln for ln in lines if ln] or [[]]


def draw_tokens(ax, tokens: Sequence[str], highlight: Sequence[bool], *, fontsize: float = 7.0,
                max_lines: int | None = None, color: str = "#d62728", title: str | None = None) -> int:
    """Draw a trace's tokens in monospace on ``ax``, highlighted ones on a coloured background.

    The line width follows the axes width; returns the number of lines drawn (cut at ``max_lines``).
    Use it under ``set_style()`` (unhinted text), or the highlights drift at some font sizes.
    """
    fig = ax.figure
    fig.canvas.draw_idle()
    bbox = ax.get_window_extent()
    width_pt = bbox.width / fig.dpi * 72
    height_pt = bbox.height / fig.dpi * 72
    char_pt = MONO_ADVANCE * fontsize
    line_pt = 1.45 * fontsize
    width = max(10, int(width_pt / char_pt) - 1)
    lines = token_lines(tokens, width)
    fit = max(1, int(height_pt / line_pt) - (1 if title else 0))
    limit = min(len(lines), fit, max_lines or len(lines))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    from matplotlib.patches import Rectangle
    from matplotlib.transforms import ScaledTranslation

    # Everything is placed in inches from the axes' top-left corner (not in axes fractions), so the
    # highlights stay under their tokens even if a later layout step resizes the axes.
    at = fig.dpi_scale_trans + ScaledTranslation(0, 1, ax.transAxes)
    mono = {"fontsize": fontsize, "family": "DejaVu Sans Mono", "parse_math": False, "va": "top", "ha": "left",
            "transform": at}
    top_pt = 0.0
    if title:
        ax.text(0, 0, title, fontsize=fontsize + 1.5, fontweight="bold", va="top", ha="left", transform=at,
                parse_math=False)
        top_pt = line_pt * 1.3
    for n, line in enumerate(lines[:limit]):
        y_pt = top_pt + n * line_pt
        col = 0
        for i, shown in line:  # highlights behind the text, one box per highlighted token
            if highlight[i]:
                ax.add_patch(Rectangle((col * char_pt / 72, -(y_pt + 1.2 * fontsize) / 72),
                                       len(shown) * char_pt / 72, 1.3 * fontsize / 72,
                                       transform=at, facecolor=color, alpha=0.35, edgecolor="none"))
            col += len(shown)
        # the whole line in one call: the font's own advance widths, no drift between tokens
        ax.text(0, -y_pt / 72, "".join(shown for _, shown in line), **mono)
    if limit < len(lines):
        ax.text(0, -(top_pt + limit * line_pt) / 72, "[...]", color="#777777", **mono)
    return limit


def token_block_height(tokens: Sequence[str], axes_width_in: float, fontsize: float = 7.0, title: bool = True) -> float:
    """Inches of axes height that ``draw_tokens`` needs to show ``tokens`` in an axes this wide."""
    width = max(10, int(axes_width_in * 72 / (MONO_ADVANCE * fontsize)) - 1)
    n_lines = len(token_lines(tokens, width)) + (1.3 if title else 0) + 0.5
    return n_lines * 1.45 * fontsize / 72


def plot_loss_curves(trained: Mapping[str, Mapping], models_dir: Path, profile: str):
    """Training loss per optimizer step of each trained model (``train_log.json``): a check, not a paper figure."""

    import matplotlib.pyplot as plt

    set_style()
    fig, ax = plt.subplots()
    for i, (name, info) in enumerate(trained.items()):
        log_path = Path(models_dir) / name / "train_log.json"
        if info["final"] and log_path.is_file():
            points = [(r["step"], r["loss"]) for r in read_json(log_path) if "loss" in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=name, color=method_color(info["method"], i))
    ax.set(xlabel="optimizer step", ylabel="training loss", title=f"Training loss per dataset ({profile})")
    ax.legend()
    return fig


# ----------------------------------------------------------------------------------------------
# Figures 5 and 7: a teacher-written trace beside the RSD trace of the same problem
# ----------------------------------------------------------------------------------------------
def pick_excerpt_pair(scores, left: Sequence[str], right: str):
    """(left row, right row) of notebook 20's scores: same problem, kept traces preferred, the ``left``
    methods in the given order; without a common problem, any left trace."""
    rights = scores[scores["method"] == right].sort_values("kept", ascending=False)
    for want_kept in (True, False):
        for _, r in rights.iterrows():
            if want_kept and not r["kept"]:
                continue
            for m in left:
                cand = scores[(scores["method"] == m) & (scores["problem_id"] == r["problem_id"])]
                cand = cand.sort_values("kept", ascending=False)
                if len(cand) and (cand.iloc[0]["kept"] or not want_kept):
                    return cand.iloc[0], r
    for m in left:  # no common problem: any left trace
        cand = scores[scores["method"] == m]
        if len(cand):
            return cand.sort_values("kept", ascending=False).iloc[0], rights.iloc[0]
    raise ValueError(f"no scored trace of any of {left}")


def render_excerpts(rows: Sequence, n_tokens: int, name: str, fontsize: float, title: str, *, threshold: float,
                    profile: str, run: str, width: float = 12.0):
    """Two traces side by side, their first ``n_tokens`` tokens, those below ``threshold`` in red; saved."""
    import matplotlib.pyplot as plt

    log_th = math.log(threshold)

    def side_title(row, n):
        low = sum(lp < log_th for lp in row["token_logprobs"][:n])
        kept = "" if row["kept"] else ", not a kept trace"
        return (f"{row['method']} (sample {row['sample_index']}{kept}): {low} of {min(n, row['n_tokens'])} tokens "
                f"< {threshold:g}")

    left_row, right_row = rows
    set_style()
    need = max(token_block_height(list(r["tokens"][:n_tokens]), width * 0.46, fontsize) for r in rows)
    fig, axes = plt.subplots(1, 2, figsize=(width, min(24.0, need + 0.9)))
    same = left_row["problem_id"] == right_row["problem_id"]
    problem = left_row["problem_id"] if same else f"{left_row['problem_id']} / {right_row['problem_id']}"
    fig.suptitle(f"{title}: {problem} (red: probability < {threshold:g} under the student)", fontsize=10)
    fig.tight_layout()  # before drawing: the token layout follows the final axes size
    for ax, row in zip(axes, rows):
        toks = list(row["tokens"][:n_tokens])
        hl = [lp < log_th for lp in row["token_logprobs"][:n_tokens]]
        draw_tokens(ax, toks, hl, fontsize=fontsize, title=side_title(row, n_tokens))
    profile_note(profile, fig, extra=f"pair {run}")
    save_figure(fig, name, profile)
    return fig


# ----------------------------------------------------------------------------------------------
# Figure 1: the RSD loop, and the average accuracy bars
# ----------------------------------------------------------------------------------------------
def draw_rsd_loop(ax) -> None:
    """Figure 1, left: the teacher proposes, the student keeps the token or samples its own (Algorithm 1)."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    def box(xy, w, h, text, color):
        ax.add_patch(FancyBboxPatch(xy, w, h, boxstyle="round,pad=0.02,rounding_size=0.03", fc=color, ec="#333333",
                                    lw=1))
        ax.text(xy[0] + w / 2, xy[1] + h / 2, text, ha="center", va="center", fontsize=8.5, wrap=True)

    def arrow(a, b, text="", color="#333333", offset=(0, 0), rad=0.0):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, lw=1.2, color=color,
                                     connectionstyle=f"arc3,rad={rad}"))
        if text:
            ax.text((a[0] + b[0]) / 2 + offset[0], (a[1] + b[1]) / 2 + offset[1], text, fontsize=7.5,
                    ha="center", va="center", color=color)

    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    box((0.02, 0.72), 0.26, 0.18, "Teacher\n(large model)\nproposes y ~ P_t", "#fde0c5")
    box((0.38, 0.72), 0.28, 0.18, "Student checks\nP_s(y) ≥ p_th ?", "#dbe9f6")
    box((0.74, 0.72), 0.24, 0.18, "keep the\nteacher's token y", "#d9f0d3")
    box((0.38, 0.34), 0.28, 0.18, "fallback:\nstudent samples\ny ~ P_s", "#e7e1ef")
    box((0.38, 0.02), 0.60, 0.16, "context ← context + y   (stop at end of turn)\n"
        "rejection sampling keeps a correct trace per problem", "#f0f0f0")
    arrow((0.28, 0.81), (0.38, 0.81), "y", offset=(0, 0.035))
    arrow((0.66, 0.81), (0.74, 0.81), "yes", color="#238b45", offset=(0, 0.035))
    arrow((0.52, 0.72), (0.52, 0.52), "no: improbable\nfor the student", color="#cb181d", offset=(0.12, 0))
    arrow((0.86, 0.72), (0.86, 0.18))
    arrow((0.52, 0.34), (0.52, 0.18))
    arrow((0.38, 0.10), (0.15, 0.72), "next\nstep", rad=-0.25, offset=(-0.11, -0.02))
    ax.set_title("Reverse Speculative Decoding: teacher proposes, student decides", fontsize=10)


def draw_accuracy_bars(ax, ours: Mapping[str, float], intervals: Mapping, rsd_method: str, profile: str) -> None:
    """Figure 1, right: the paper's average accuracy bars, ours beside them (with 95% intervals) when evaluated."""
    from rsdlib import reference

    labels = [b["label"] for b in reference.FIGURE1_BARS]
    keys = [b["key"] for b in reference.FIGURE1_BARS]
    xs = range(len(keys))
    width = 0.38 if ours else 0.6
    paper_x = [x - width / 2 for x in xs] if ours else list(xs)
    bars = ax.bar(paper_x, [b["Average"] for b in reference.FIGURE1_BARS], width=width, color=PAPER_COLOR,
                  edgecolor="#555555", label="paper (Qwen3-0.6B)")
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    if ours:
        ours_bars = ax.bar([x + width / 2 for x in xs], [ours.get(k, 0) for k in keys], width=width,
                           color=[method_color({"rsd-p1": rsd_method}.get(k, k)) for k in keys],
                           label=f"ours ({profile})", yerr=error_bar([intervals.get(k) for k in keys]), capsize=4,
                           error_kw={"elinewidth": 1, "ecolor": "#333333"})
        ax.bar_label(ours_bars, labels=[f"{ours[k]:.2f}" if k in ours else "not run" for k in keys], fontsize=8)
    else:
        ax.text(0.98, 0.98, "ours: no evaluation results\nfor this profile yet\n(evaluation stage not run)",
                transform=ax.transAxes, ha="right", va="top", fontsize=8, color="#cb181d")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("average accuracy (%)")
    ax.set_ylim(0, max([b["Average"] * 1.35 for b in reference.FIGURE1_BARS]
                       + [iv.high * 1.1 for iv in intervals.values() if iv is not None]))
    ax.set_title("Average of AIME24, AIME25, GPQA Diamond, MATH500", fontsize=10)
    ax.legend(loc="upper left")
