"""The values of psi and psi' that the loss pages quote are what margins.Margin computes, to
the digits the page shows. Each case is a pattern that finds the numbers in the page's text
and the Margin the page is about."""

import re
from pathlib import Path

import pytest
import torch

from margin_softmax.margins import Margin

LOSSES = Path(__file__).resolve().parents[1] / "docs" / "losses"
TUPLE = r"\(([^)]*)\)"
ARC, SPHERE, COMBINED = Margin(m2=0.5), Margin(m1=4.0, fallback="piecewise"), Margin(1, 0.3, 0.2)


def numbers(text: str) -> list[str]:
    """'(−0.5, 0, 0.3)' -> ['-0.5', '0', '0.3'] (the pages write the minus sign as U+2212)."""
    return [part.strip().replace("\u2212", "-") for part in text.split(",")]


def quoted(page: str, pattern: str) -> tuple[str, ...]:
    match = re.search(pattern, (LOSSES / page).read_text())
    assert match, f"{page}: no text matches {pattern!r}"
    return match.groups()


def assert_shown(values: torch.Tensor, shown: list[str]):
    """values agree with the decimals as printed: within half a unit of the last digit."""
    for value, text in zip(values.tolist(), shown, strict=True):
        digits = len(text.partition(".")[2])
        assert abs(value - float(text)) <= 0.5 * 10**-digits + 1e-12, (value, text)


def psi_and_grad(margin: Margin, cosines, dtype=torch.float64):
    return margin.psi_and_grad(torch.tensor([float(c) for c in cosines], dtype=dtype))


# page, pattern (groups: cosines, then psi and/or psi'), margin, which values the groups hold
TABLES = [
    ("arcface.md", rf"ψ' at\s+c = {TUPLE} is {TUPLE}", ARC, ("grad",)),
    ("sphereface.md", rf"c = {TUPLE}: ψ = {TUPLE}\s+and ψ' = {TUPLE}", SPHERE, ("psi", "grad")),
    ("combined.md", rf"at c = {TUPLE}: ψ = {TUPLE} and\s+ψ' = {TUPLE}", COMBINED, ("psi", "grad")),
]


@pytest.mark.parametrize("page, pattern, margin, kinds", TABLES, ids=[t[0] for t in TABLES])
def test_quoted_psi_and_slope(page, pattern, margin, kinds):
    cosines, *shown = quoted(page, pattern)
    psi, grad = psi_and_grad(margin, numbers(cosines))
    for kind, text in zip(kinds, shown, strict=True):
        assert_shown(psi if kind == "psi" else grad, numbers(text))


def test_arcface_fallback_table():
    """The psi(-0.99) column of arcface.md's fallback table, m = 0.5."""
    rows = re.findall(r'^\| `"(\w+)"`[^|]*\|[^|]*\|[^|]*\| (\S+) \|', (LOSSES / "arcface.md")
                      .read_text(), flags=re.M)
    assert [name for name, _ in rows] == ["seed", "continuous", "none", "easy"]
    for fallback, text in rows:
        psi, _ = psi_and_grad(Margin(m2=0.5, fallback=fallback), [-0.99])
        assert_shown(psi, numbers(text))
    (shown,) = quoted("arcface.md", r"no fallback, ψ'\(−0.99\) = (\S+) for m = 0.5")
    assert_shown(psi_and_grad(ARC, [-0.99])[1], numbers(shown))


def test_slopes_at_the_poles():
    """psi' at cos = +-1 (evaluated at the clamped cosine) in float64 and float32."""
    f64, f32 = quoted("arcface.md", r"ψ'\(1\) = (\S+) in float64 and (\S+)\s+in float32")
    assert_shown(psi_and_grad(ARC, [1])[1], [f64])
    assert_shown(psi_and_grad(ARC, [1], torch.float32)[1], [f32])
    f64, f32 = quoted("sphereface.md", r"\((\S+) in float64, (\S+) in float32\)")
    assert_shown(psi_and_grad(SPHERE, [1])[1], [f64])
    assert_shown(psi_and_grad(SPHERE, [1], torch.float32)[1], [f32])
    pattern = (r"(\S+) at c = 1 and\s+(\S+) at c = −1 in float64 \((\S+) and (\S+) in float32\)"
               r" for \(1, 0.3, 0.2\)")
    hi64, lo64, hi32, lo32 = numbers(",".join(quoted("combined.md", pattern)))
    assert_shown(psi_and_grad(COMBINED, [1, -1])[1], [hi64, lo64])
    assert_shown(psi_and_grad(COMBINED, [1, -1], torch.float32)[1], [hi32, lo32])
    (pole,) = quoted("combined.md", r"\(it is (\S+) in float64\s+for \(1.5, 0, 0\)\)")
    assert_shown(psi_and_grad(Margin(1.5, 0, 0), [-1])[1], numbers(pole))
