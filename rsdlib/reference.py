"""The paper's published numbers, kept once, as data (Kim, Seo, Lee, arXiv 2509.22230).

Every table notebook prints the paper's value beside ours from here; nothing else in the repository
copies these numbers. Transcribed from the paper text (Tables 1-6, Section 4.2, Appendices C-F);
Figure 1 (right) and Figure 4 are bar charts of Table 1 / Table 4 averages, so their bars are
derived from those tables rather than typed twice.

Row ``key``s are the names rsdlib uses for trace generators and trained models, so a table notebook
can join our results to the paper's rows:

- ``base``: the untrained student; ``s1k-1.1``: trained on the DeepSeek-R1 traces of s1K-1.1;
- ``teacher``: teacher-generated traces; ``self-distill``: student-generated traces (16 attempts);
- ``self-distill-203``: compute-equivalent self-distill (Table 3, 203 attempts);
- ``skd``: SKD-inspired (student proposes, teacher approves at 1%);
- ``rsd-p10``, ``rsd-p3``, ``rsd-p1``, ``rsd-p0.3``: RSD at p_th = 10%, 3%, 1%, 0.3%;
- ``rsd-p1-3step``: multi-step RSD (Table 5).

Accuracies are percentages; ``None`` marks a cell the paper does not report.
"""

from __future__ import annotations

BENCHMARKS = ("AIME24", "AIME25", "GPQA Diamond", "MATH500")  # the paper's column order
BENCHMARK_KEYS = {"AIME24": "aime24", "AIME25": "aime25", "GPQA Diamond": "gpqa_diamond", "MATH500": "math500"}
METRICS = {"AIME24": "avg@64", "AIME25": "avg@64", "GPQA Diamond": "avg@8", "MATH500": "pass@1"}  # Appendix B
SAMPLES = {"AIME24": 64, "AIME25": 64, "GPQA Diamond": 8, "MATH500": 1}  # samples per problem of METRICS

PAPER = {
    "title": "In Their Own Words: Reasoning Traces Tailored for Small Models Make Them Better Reasoners",
    "arxiv": "2509.22230",
    "teacher": "simplescaling/s1.1-7B",
    "student": "Qwen/Qwen3-0.6B",
    "temperature": 0.7,
    "samples_per_problem": 16,
    "context": 8192,
    "thresholds": (0.10, 0.03, 0.01, 0.003),
}


def _acc(key: str, label: str, aime24, aime25, gpqa, math500, average) -> dict:
    return {"key": key, "label": label, "AIME24": aime24, "AIME25": aime25, "GPQA Diamond": gpqa,
            "MATH500": math500, "Average": average}


# Table 1: methods x benchmarks for Qwen3-0.6B (Section 4.2)
TABLE1 = [
    _acc("base", "Qwen3-0.6B", 2.71, 10.94, 24.75, 65.40, 25.95),
    _acc("s1k-1.1", "+ s1K-1.1", 1.93, 9.53, 12.88, 58.20, 20.64),
    _acc("teacher", "+ Teacher-generated", 1.35, 8.91, 12.31, 58.80, 20.34),
    _acc("self-distill", "+ Self-distill", 2.66, 10.78, 21.97, 67.80, 25.80),
    _acc("skd", "+ SKD-inspired", 2.40, 11.56, 4.17, 65.40, 20.88),
    _acc("rsd-p10", "+ RSD-generated (p_th=10%)", 3.33, 11.25, 24.87, 66.20, 26.41),
    _acc("rsd-p3", "+ RSD-generated (p_th=3%)", 2.97, 11.56, 24.24, 66.80, 26.39),
    _acc("rsd-p1", "+ RSD-generated (p_th=1%)", 3.28, 12.60, 26.77, 66.20, 27.21),
    _acc("rsd-p0.3", "+ RSD-generated (p_th=0.3%)", 1.41, 9.53, 23.04, 63.80, 24.45),
]


def _ds(key: str, label: str, solved: int, of: int, fallback, sub1) -> dict:
    return {"key": key, "label": label, "solved": solved, "of": of, "Correctly solved": f"{solved}/{of}",
            "Fallback rate (%)": fallback, "Sub-1% tokens (%)": sub1}


# Table 2: dataset characteristics per trace generator (fallback None = "Not Applicable")
TABLE2 = [
    _ds("s1k-1.1", "s1K-1.1", 1000, 1000, None, 6.70),
    _ds("teacher", "Teacher-generated", 234, 1000, None, 2.98),
    _ds("self-distill", "Self-distill", 122, 234, None, 0.00),
    _ds("skd", "SKD-inspired", 184, 234, 0.68, 0.72),
    _ds("rsd-p10", "RSD-generated (p_th=10%)", 161, 234, 2.71, 0.06),
    _ds("rsd-p3", "RSD-generated (p_th=3%)", 171, 234, 1.28, 0.04),
    _ds("rsd-p1", "RSD-generated (p_th=1%)", 180, 234, 0.64, 0.09),
    _ds("rsd-p0.3", "RSD-generated (p_th=0.3%)", 177, 234, 0.35, 2.02),
]
TABLE2[0]["Correctly solved"] = "1000"  # the paper prints s1K-1.1's count without a denominator

# Table 3: compute-equivalent self-distill (Appendix C); solved counts from Section 5.6
TABLE3 = [
    _acc("base", "Qwen3-0.6B", 2.71, 10.94, 24.75, 65.40, 25.95),
    _acc("self-distill", "+ Self-distill (16 rejection sampling attempts)", 2.66, 10.78, 21.97, 67.80, 25.80),
    _acc("self-distill-203", "+ Self-distill (203 rejection sampling attempts)", 2.55, 11.09, 23.30, 66.80, 25.94),
    _acc("rsd-p1", "+ RSD-generated (p_th=1%)", 3.28, 12.60, 26.77, 66.20, 27.21),
]
# self-distill (16 attempts) is Table 2's Self-distill row (122/234); 189 and 180 are Section 5.6 / Appendix C's
TABLE3_SOLVED = {"self-distill": (122, 234), "self-distill-203": (189, 234), "rsd-p1": (180, 234)}
COMPUTE_EQUIVALENT_ATTEMPTS = {"formula": "((7 / 0.6) + 1) x 16", "value": 203, "samples": 16,
                               "teacher_params_b": 7.0, "student_params_b": 0.6}


def compute_equivalent_attempts(teacher_params: float, student_params: float, samples: int = 16) -> int:
    """Appendix C's budget: (teacher/student + 1) x samples attempts (7B / 0.6B, 16 -> 203)."""
    return round((teacher_params / student_params + 1) * samples)


# Table 4: cross-model evaluation (Appendix D); "setting" says how the traces relate to the model
def _x(student: str, setting: str, label: str, *values) -> dict:
    row = _acc(f"{student}/{setting}", label, *values)
    row.update(student=student, setting=setting)
    return row


TABLE4 = [
    _x("Qwen3-0.6B", "base", "Qwen3-0.6B", 2.71, 10.94, 24.75, 65.40, 25.95),
    _x("Qwen3-0.6B", "s1k-1.1", "+ s1K-1.1", 1.93, 9.53, 12.88, 58.20, 20.64),
    _x("Qwen3-0.6B", "tailored", "+ RSD-generated (Tailored)", 3.28, 12.60, 26.77, 66.20, 27.21),
    _x("Llama-3.2-1B-Instruct", "base", "Llama-3.2-1B-Instruct", 0.99, 0.05, 6.94, 26.00, 8.50),
    _x("Llama-3.2-1B-Instruct", "s1k-1.1", "+ s1K-1.1", 0.57, 0.05, 9.47, 10.00, 5.02),
    _x("Llama-3.2-1B-Instruct", "transferred", "+ RSD-generated (Transferred)", 0.42, 0.05, 9.97, 20.40, 7.71),
    _x("Llama-3.2-1B-Instruct", "tailored", "+ RSD-generated (Tailored)", 1.04, 0.10, 6.82, 26.40, 8.59),
    _x("Gemma-3-1B-IT", "base", "Gemma-3-1B-IT", 0.73, 0.52, 3.60, 41.00, 11.46),
    _x("Gemma-3-1B-IT", "s1k-1.1", "+ s1K-1.1", 0.00, 0.00, 2.53, 13.20, 3.93),
    _x("Gemma-3-1B-IT", "transferred", "+ RSD-generated (Transferred)", 0.10, 0.00, 3.72, 17.00, 5.21),
    _x("Phi-4-Mini", "base", "Phi-4-Mini", 2.66, 1.41, 16.79, 53.80, 18.66),
    _x("Phi-4-Mini", "s1k-1.1", "+ s1K-1.1", 5.52, 3.80, 16.48, 51.20, 19.25),
    _x("Phi-4-Mini", "transferred", "+ RSD-generated (Transferred)", 5.89, 4.22, 18.62, 57.20, 21.48),
    _x("Phi-4-Mini-Reasoning", "base", "Phi-4-Mini-Reasoning", 24.90, 21.15, 44.13, 73.60, 40.95),
    _x("Phi-4-Mini-Reasoning", "s1k-1.1", "+ s1K-1.1", 20.94, 19.84, 28.54, 79.60, 37.23),
    _x("Phi-4-Mini-Reasoning", "transferred", "+ RSD-generated (Transferred)", 15.00, 17.34, 26.20, 75.00, 33.39),
    _x("Qwen3-1.7B", "base", "Qwen3-1.7B", 14.69, 21.35, 38.32, 82.80, 39.29),
    _x("Qwen3-1.7B", "s1k-1.1", "+ s1K-1.1", 11.04, 17.19, 32.26, 78.20, 34.67),
    _x("Qwen3-1.7B", "transferred", "+ RSD-generated (Transferred)", 10.62, 16.67, 35.29, 76.80, 34.84),
    _x("Qwen3-1.7B", "tailored", "+ RSD-generated (Tailored)", 21.51, 20.78, 41.92, 83.00, 41.80),
    _x("Qwen3-4B", "base", "Qwen3-4B", 20.05, 20.52, 45.08, 86.80, 43.11),
    _x("Qwen3-4B", "s1k-1.1", "+ s1K-1.1", 22.76, 26.88, 43.56, 86.60, 44.95),
    _x("Qwen3-4B", "transferred", "+ RSD-generated (Transferred)", 17.60, 22.55, 43.12, 84.80, 42.02),
]
TABLE4_TEACHERS = {  # Section 5.2: the teacher each tailored student was paired with
    "Qwen3-0.6B": "simplescaling/s1.1-7B",
    "Qwen3-1.7B": "simplescaling/s1.1-7B",
    "Llama-3.2-1B-Instruct": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
}

# Table 5: multi-step RSD (Appendix E)
TABLE5 = [
    _acc("base", "Qwen3-0.6B", 2.71, 10.94, 24.75, 65.40, 25.95),
    _acc("rsd-p1", "+ RSD-generated (p_th=1%, single step, 15 epochs)", 3.28, 12.60, 26.77, 66.20, 27.21),
    _acc("rsd-p1-3step", "+ RSD-generated (p_th=1%, three steps, 5 epochs each)", 1.93, 9.06, 22.22, 61.60, 23.70),
]

# Table 6: average token counts of RSD traces (Appendix F)
TABLE6 = [
    {"key": "rsd-p10", "label": "RSD-generated (p_th=10%, tailored for Qwen3-0.6B)", "student": "Qwen3-0.6B",
     "threshold": 0.10, "Average token count": 4156},
    {"key": "rsd-p3", "label": "RSD-generated (p_th=3%, tailored for Qwen3-0.6B)", "student": "Qwen3-0.6B",
     "threshold": 0.03, "Average token count": 4211},
    {"key": "rsd-p1", "label": "RSD-generated (p_th=1%, tailored for Qwen3-0.6B)", "student": "Qwen3-0.6B",
     "threshold": 0.01, "Average token count": 4266},
    {"key": "rsd-p0.3", "label": "RSD-generated (p_th=0.3%, tailored for Qwen3-0.6B)", "student": "Qwen3-0.6B",
     "threshold": 0.003, "Average token count": 4396},
    {"key": "rsd-p1-llama", "label": "RSD-generated (p_th=1%, tailored for Llama-3.2-1B-Instruct)",
     "student": "Llama-3.2-1B-Instruct", "threshold": 0.01, "Average token count": 1081},
]

# Section 4.2 in words: relative changes of the average accuracy quoted in the abstract
HEADLINE = {"s1k-1.1_relative_change_pct": -20.5, "rsd-p1_relative_change_pct": +4.9}


def row(table: list[dict], key: str) -> dict:
    """The row of ``table`` with ``key`` (KeyError naming the known keys otherwise)."""
    for r in table:
        if r["key"] == key:
            return r
    raise KeyError(f"no row {key!r}; known: {', '.join(r['key'] for r in table)}")


# Figure 1 (right): average accuracy of base, + s1K-1.1, + RSD (Table 1's Average column)
FIGURE1_BARS = [
    {"key": k, "label": lab, "Average": row(TABLE1, k)["Average"]}
    for k, lab in (("base", "Qwen3-0.6B"), ("s1k-1.1", "+ s1K-1.1"), ("rsd-p1", "+ RSD"))
]

# Figure 4: cross-model average accuracy, three panels (Table 4's Average column)
FIGURE4_PANELS = {
    "Within-family (transferred)": ["Qwen3-1.7B", "Qwen3-4B"],
    "Inter-family (transferred)": ["Llama-3.2-1B-Instruct", "Gemma-3-1B-IT", "Phi-4-Mini", "Phi-4-Mini-Reasoning"],
    "Tailored": ["Qwen3-0.6B", "Qwen3-1.7B", "Llama-3.2-1B-Instruct"],
}
FIGURE4_SETTINGS = {
    "Within-family (transferred)": ("base", "s1k-1.1", "transferred"),
    "Inter-family (transferred)": ("base", "s1k-1.1", "transferred"),
    "Tailored": ("base", "s1k-1.1", "tailored"),
}


def figure4_bars() -> list[dict]:
    """One dict per bar of Figure 4: panel, student, setting, average accuracy (from Table 4)."""
    out = []
    for panel, students in FIGURE4_PANELS.items():
        for student in students:
            for setting in FIGURE4_SETTINGS[panel]:
                key = f"{student}/{setting}"
                if any(r["key"] == key for r in TABLE4):
                    out.append({"panel": panel, "student": student, "setting": setting,
                                "Average": row(TABLE4, key)["Average"]})
    return out


TABLES = {"table1": TABLE1, "table2": TABLE2, "table3": TABLE3, "table4": TABLE4, "table5": TABLE5, "table6": TABLE6}
