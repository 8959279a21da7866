"""Fixtures for the data-layer tests: the shared data folder and one GloVe load per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _shared_data_dir() -> Path:
    env = os.environ.get("RNNGUARD_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


SHARED_DATA = _shared_data_dir()


@pytest.fixture(scope="session")
def shared_root() -> Path:
    """The real data folder; tests that use it are skipped when it is absent."""
    if not (SHARED_DATA / "rt-polarity").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def glove(shared_root: Path):
    """The real glove.6B.50d table, loaded once (load_glove also caches in-process)."""
    from rnnguard.data import load_glove

    return load_glove(shared_root, dim=50, download=False)


@pytest.fixture()
def tiny_glove():
    """A 4-word, 3-d table for fast embedding tests that need no files."""
    import numpy as np

    from rnnguard.data import GloVe

    words = ["the", "cat", "sat", "mat"]
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3) + 1.0  # no zero rows
    return GloVe.from_arrays(words, vectors, source="tiny")
