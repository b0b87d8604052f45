"""The README's usage example runs as written and does what it says."""

import math
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    loss, prec1, embeddings = namespace["loss"], namespace["prec1"], namespace["embeddings"]
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert 0.0 <= prec1 <= 100.0
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
