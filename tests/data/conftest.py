"""Fixtures for the data-layer tests: one GloVe load per session (``shared_root``: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


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
