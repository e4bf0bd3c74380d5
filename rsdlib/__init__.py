"""rsdlib: Reverse Speculative Decoding (Kim, Seo, Lee, arXiv 2509.22230), reproducible.

Modules: `paths` (folders), `models` (loading, embedded pair), `bridge` (vocabulary bridge, App. A),
`decoding` (Algorithm 1 and its baselines), `data`, `prompts`, `grading`, `metrics`, `traces`,
`train`, `evaluate`, `plots`, `reproduce`, `cli`, `versions` (the version preflight).
"""

__version__ = "0.1.0"

# The oldest transformers rsdlib supports: 5.10.4, vLLM 0.30.0's own floor (the vllm extra's pin), on which
# the fast suite passes (`make test-floor`). The decoder's KV-cache API (``DynamicCache`` built from
# ``cache_utils.DynamicLayer`` subclasses, ``DynamicLayer.lazy_initialization(key_states, value_states)``)
# needs 5.0 (4.57.x fails); training runs on 5.10.4 through the old checkpointing keyword names
# (rsdlib.train.checkpointing_arguments). pyproject.toml's lower bound says the same
# (tests/test_requirements.py keeps them equal); its upper bound, <5.40, is the release that removes the
# ``past_key_values`` argument the engine passes (transformers' deprecation warning).
MIN_TRANSFORMERS = "5.10.4"
TRANSFORMERS_REQUIREMENT = "transformers>=5.10.4,<5.40"  # as in pyproject.toml


def _release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version string: "5.0.0rc1" -> (5, 0, 0), "4.57.6" -> (4, 57, 6)."""
    import re

    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def check_transformers(installed: str | None = None) -> None:
    """Raise ImportError naming both versions when the installed transformers is older than MIN_TRANSFORMERS.

    Reads the installed version from package metadata (transformers itself is not imported); a missing
    transformers is left to its own ImportError where it is first imported.
    """
    if installed is None:
        from importlib import metadata

        try:
            installed = metadata.version("transformers")
        except metadata.PackageNotFoundError:
            return
    need = _release(MIN_TRANSFORMERS)
    have = _release(installed)
    if have[: len(need)] + (0,) * (len(need) - len(have)) < need:
        raise ImportError(
            f"rsdlib needs transformers >= {MIN_TRANSFORMERS} (its KV-cache API: DynamicCache layers, "
            f"DynamicLayer.lazy_initialization(key_states, value_states)), but transformers {installed} is "
            f"installed. Upgrade it: pip install '{TRANSFORMERS_REQUIREMENT}'"
        )


check_transformers()
