# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Figure 6 · Word cloud of the tokens the student finds improbable
#
# **Paper:** Figure 6 / Appendix G: the sub-1% probability tokens of the s1K(-1.1) traces under
# Qwen3-0.6B; mostly logical connectors and transition words ("Wait", "Alternatively", "But").
#
# **Reads:** `results/<profile>/analysis/low_tokens.json` (notebook 20: counts of sub-threshold tokens
# in each method's kept traces).
#
# **Writes:** `figures/<profile>/fig6_wordcloud.{pdf,png}`.
#
# **Time:** seconds.

# %%
import json
import re
from collections import Counter

import matplotlib.pyplot as plt
from wordcloud import WordCloud

from rsdlib import paths
from rsdlib.plots import profile_note, save_figure, set_style

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile> and figures/<profile>
sources: list = ["main/s1k-solutions", "main/reference", "main/teacher"]  # pair/method counted: the first non-empty
max_words: int = 120  # words in the cloud
min_letters: int = 2  # keep tokens with at least this many letters or digits

# %%
path = paths.input_file(profile, "analysis", "low_tokens.json")
low = json.loads(path.read_text())
if max_words < 1 or min_letters < 1:
    raise ValueError("max_words and min_letters must be >= 1")


def words(counts: dict) -> Counter:
    """Token texts -> words: stripped, with at least `min_letters` letters/digits."""
    out = Counter()
    for text, n in counts.items():
        word = text.strip()
        if len(re.findall(r"\w", word)) >= min_letters:
            out[word] += n
    return out


source, freq = None, Counter()
for name in sources:
    freq = words(low.get(name, {}))
    if freq:
        source = name
        break
print(f"source: {source}; {sum(freq.values())} low-probability tokens, {len(freq)} distinct words")
freq.most_common(20)

# %%
set_style()
fig, ax = plt.subplots(figsize=(8, 4.2))
ax.set_axis_off()
if freq:
    cloud = WordCloud(width=1600, height=820, background_color="white", max_words=max_words, colormap="viridis",
                      random_state=0, prefer_horizontal=0.9, collocations=False).generate_from_frequencies(freq)
    ax.imshow(cloud, interpolation="bilinear")
    ax.set_title(f"Tokens below {json.loads((path.parent / 'summary.json').read_text())['threshold']:g} "
                 f"probability under the student ({source} traces)")
else:
    ax.text(0.5, 0.5, "no sub-threshold word tokens in the kept traces of " + ", ".join(sources),
            ha="center", va="center", fontsize=11, transform=ax.transAxes)
profile_note(profile, fig)
save_figure(fig, "fig6_wordcloud", profile)
plt.show()
