"""Summary tables of experiment rows: markdown text and rich terminal output.

A row is a flat ``dict`` (e.g. one certification run: domain, eps, certified %, ...).  Columns
are the union of the rows' keys in first-seen order; missing cells are left blank.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Sequence

__all__ = ["format_value", "summary_table", "print_summary", "to_jsonable", "write_text_atomic", "write_json",
           "default_file_mode"]


def format_value(value: Any) -> str:
    """Compact, human-readable text for one cell (floats to 4 significant digits)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0:
            return "0"
        if abs(v) >= 1e4:
            return f"{v:.0f}"
        if abs(v) < 1e-3:
            return f"{v:.2e}"
        return f"{v:.4g}"
    return str(value)


def _columns(rows: Sequence[dict]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        if not isinstance(row, dict):
            raise TypeError(f"each row must be a dict, got {type(row).__name__}")
        for key in row:
            if key not in cols:
                cols.append(key)
    return cols


def _is_numeric_column(rows: Sequence[dict], col: str) -> bool:
    values = [r[col] for r in rows if r.get(col) is not None]
    return bool(values) and all(isinstance(v, Real) and not isinstance(v, bool) for v in values)


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def summary_table(rows: Sequence[dict]) -> str:
    """A GitHub-flavoured markdown table of ``rows`` (numeric columns right-aligned).

    Returns ``""`` for no rows.  The text ends with a newline."""
    rows = list(rows)
    if not rows:
        return ""
    cols = _columns(rows)
    cells = [[_md_escape(format_value(r.get(c))) for c in cols] for r in rows]
    header = [_md_escape(str(c)) for c in cols]
    numeric = [_is_numeric_column(rows, c) for c in cols]
    widths = [max(len(header[j]), 3, *(len(row[j]) for row in cells)) for j in range(len(cols))]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if num else v.ljust(w)
                                 for v, w, num in zip(values, widths, numeric)) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric)) + " |"
    return "\n".join([line(header), rule, *(line(r) for r in cells)]) + "\n"


def print_summary(rows: Sequence[dict], *, title: str | None = None, console: Any = None) -> None:
    """Print ``rows`` as a rich table (to ``console``, default a new stdout console)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    rows = list(rows)
    if not rows:
        console.print("(no rows)")
        return
    cols = _columns(rows)
    table = Table(title=Text(title) if title is not None else None, header_style="bold")
    for c in cols:
        table.add_column(Text(str(c)), justify="right" if _is_numeric_column(rows, c) else "left", no_wrap=True)
    for r in rows:
        table.add_row(*(Text(format_value(r.get(c))) for c in cols))
    console.print(table)


def to_jsonable(obj: Any) -> Any:
    """``obj`` with tensors/numpy values turned into lists/numbers and non-finite floats into the
    strings ``"inf"``, ``"-inf"``, ``"nan"`` (so the output is strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # torch tensors, numpy arrays and scalars
        return to_jsonable(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Integral):
        return int(obj)
    if isinstance(obj, Real):
        v = float(obj)
        if math.isfinite(v):
            return v
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def default_file_mode() -> int:
    """Permissions of a newly created regular file under the current umask (``0o666 & ~umask``);
    :func:`tempfile.mkstemp` creates ``0o600`` files, which atomic writers widen to this."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and :func:`os.replace` (creates parents)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``to_jsonable(obj)`` as indented strict JSON, atomically."""
    return write_text_atomic(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")
