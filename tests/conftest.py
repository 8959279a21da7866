"""Suite-wide fixtures.

Every test runs with one torch intra-op thread (restored afterwards): the tensors in tests are
tiny, and on a small or busy machine OpenMP threads spin-waiting on each other make them
tens of times slower."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _shared_data_dir() -> Path:
    env = os.environ.get("RNNGUARD_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


SHARED_DATA = _shared_data_dir()


@pytest.fixture(scope="session")
def shared_root() -> Path:
    """The real data folder; tests that use it are skipped when it is absent."""
    if not (SHARED_DATA / "rt-polarity").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA.resolve()
