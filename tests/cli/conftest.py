"""Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP spin-waiting
makes them orders of magnitude slower: run each test single-threaded, then restore."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
