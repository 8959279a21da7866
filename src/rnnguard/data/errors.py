"""Errors raised by the data layer."""

from __future__ import annotations

import os
from pathlib import Path

from rnnguard.errors import RnnGuardError

__all__ = ["DataFormatError"]


class DataFormatError(RnnGuardError, ValueError):
    """A data file does not have the expected format.

    Raised instead of silently skipping bad records, so that a corrupted or
    mis-identified file can never shrink a dataset unnoticed. ``path`` names the
    file and ``line`` the 1-based physical line where the bad record starts
    (``None`` when the problem concerns the whole file, e.g. an empty file).
    """

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = message
        where = f"{self.path}" if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {message}")
