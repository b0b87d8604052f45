"""Every ```python block of docs/migrating.md runs: each builds a peer's head (the installed
package, or an oracle written from the peer's formulas) and ours, and asserts that the loss
and the gradients agree. One test per block, named by its section."""

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "migrating.md"


def python_blocks(text: str) -> list[tuple[str, str]]:
    """(section slug, code) of every ```python block; the slug comes from the last '## '
    heading above it, and the code keeps its line numbers in the page for tracebacks."""
    blocks, section = [], "intro"
    for match in re.finditer(r"^## ([^\n]*)$|^```python\n(.*?)^```$", text, flags=re.M | re.S):
        if match.group(1) is not None:
            section = re.sub(r"[^a-z0-9]+", "_", match.group(1).lower()).strip("_")
        else:
            line = text.count("\n", 0, match.start(2))
            blocks.append((section, "\n" * line + match.group(2)))
    return blocks


BLOCKS = python_blocks(PAGE.read_text())


def test_every_peer_section_has_one_block():
    sections = [section for section, _ in BLOCKS]
    assert len(sections) == len(set(sections)) >= 5, sections


@pytest.mark.parametrize("code", [c for _, c in BLOCKS], ids=[s for s, _ in BLOCKS])
def test_block_runs(code):
    exec(compile(code, str(PAGE), "exec"), {"__name__": "migrating"})
