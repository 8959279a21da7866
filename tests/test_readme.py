"""The README's Python quick start runs as written (guards against docs drift)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quick_start_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], "README quick start", "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert result.certified.shape == (4,) and result.margin_lower.shape == (4, 1)


def test_readme_commands_match_ci():
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q" in README.read_text(encoding="utf-8")
    assert ci.strip().splitlines()[-1] == "python -m pytest -q"
