"""Suite-wide fixtures.

Every test runs with one torch intra-op thread (restored afterwards): the tensors in tests are
tiny, and on a small or busy machine OpenMP threads spin-waiting on each other make them
tens of times slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
