"""Shared data folder for the CLI tests (None when ../shared/data is absent)."""

from __future__ import annotations

import os
from pathlib import Path


def find_shared_data() -> Path | None:
    env = os.environ.get("RNNGUARD_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "data")
    for c in candidates:
        if (c / "rt-polarity").is_dir() and (c / "glove").is_dir():
            return c
    return None


SHARED_DATA = find_shared_data()
