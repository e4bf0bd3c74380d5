"""Shared test setup: no hub access; benchmarks come from the copies shipped in rsdlib (or from the
temporary folders a test writes), never from a folder outside the repository."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RSDLIB_CPU_BF16", "0")  # dtype "auto" = float32 on every CPU in tests (same numbers everywhere)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# the tests check the shipped copies: a user's own benchmark folder must not replace them here
os.environ.pop("RSDLIB_DATA_DIR", None)
