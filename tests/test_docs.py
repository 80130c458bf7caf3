"""The code in docs/growing.md and in the README's "Grow from your own training loop" runs as written.

The ```python blocks of a page run in order in one namespace, from the repository root (as a reader
pasting them into one session would), so a later block may use what an earlier one defined.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)


def python_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def run_blocks(blocks: list[str], where: str) -> None:
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for number, code in enumerate(blocks, 1):
        try:
            exec(compile(code, f"{where} block {number}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{where}, python block {number} failed: {exc!r}\n{code}") from exc


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_blocks_are_found_and_a_failing_block_fails():
    assert python_blocks("```python\nx = 1\n```\ntext\n```bash\nls\n```\n") == ["x = 1\n"]
    with pytest.raises(AssertionError, match="block 2 failed"):
        run_blocks(["x = 1\n", "assert x == 2\n"], "example")


def test_growing_guide_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    blocks = python_blocks((ROOT / "docs" / "growing.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 9, "docs/growing.md lost its code blocks"
    run_blocks(blocks, "docs/growing.md")


def test_readme_own_loop_section_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    text = section((ROOT / "README.md").read_text(encoding="utf-8"), "Grow from your own training loop")
    blocks = python_blocks(text)
    assert len(blocks) == 1
    run_blocks(blocks, "README.md")
