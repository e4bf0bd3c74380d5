"""Shared test setup: no hub access, local benchmark data from ../shared/data when present."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RSDLIB_CPU_BF16", "0")  # dtype "auto" = float32 on every CPU in tests (same numbers everywhere)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if SHARED_DATA.is_dir():
    os.environ.setdefault("RSDLIB_DATA_DIR", str(SHARED_DATA))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside the repository")
    return SHARED_DATA
