"""The ```python blocks of the docs pages run as written and do what their text says.

tests/test_readme.py runs README.md's block and tests/test_migrating.py docs/migrating.md's;
this file runs every other page's blocks, top to bottom in one namespace per page, as a
reader would, after a preamble that defines the names a page leaves to the reader (x,
weight, labels, ...). The value of each bare expression (`head.scale`, ...) is kept, and a
check per page asserts what the page's text and comments say about it. The loss and head
pages show each constructor with its defaults: those values are checked against the class."""

import ast
import doctest
import inspect
import math
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import margin_softmax as ms
from margin_softmax import reference

DOCS = Path(__file__).resolve().parents[1] / "docs"
N, D, C = 8, 192, 50  # D = 192: seed.md and index.md build heads of that width


def python_blocks(page: Path) -> list[str]:
    """Every ```python block, padded with newlines so that tracebacks give page lines."""
    text = page.read_text()
    return ["\n" * text.count("\n", 0, m.start(1)) + m.group(1)
            for m in re.finditer(r"^```python\n(.*?)^```$", text, flags=re.M | re.S)]


def run_block(code: str, page: Path, namespace: dict) -> list:
    """exec the block statement by statement; returns the values of its bare expressions.
    A block of '>>>' lines runs as a doctest instead (its printed output is the check)."""
    if ">>>" in code:
        test = doctest.DocTestParser().get_doctest(code, namespace, page.name, str(page), 0)
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        runner.run(test, clear_globs=False)
        assert runner.summarize(verbose=False).failed == 0, f"{page.name}: doctest failed"
        return []
    values = []
    for node in ast.parse(code).body:
        if isinstance(node, ast.Expr):
            values.append(eval(compile(ast.Expression(node.value), str(page), "eval"), namespace))
        else:
            exec(compile(ast.Module([node], []), str(page), "exec"), namespace)
    return values


def reader_names() -> dict:
    """What the pages assume the reader has: N float32 embeddings of width D, C classes."""
    torch.manual_seed(0)
    x = torch.randn(N, D)
    weight = torch.randn(C, D)
    labels = torch.randint(0, C, (N,))
    Z = np.random.default_rng(0).normal(size=(N, C))
    return {
        "torch": torch, "ms": ms, "reference": reference,
        "embedding_dim": D, "num_classes": C, "n_class": C, "n": N, "m": 0.2, "s": 30.0,
        "x": x, "embeddings": x.clone(), "weight": weight, "labels": labels,
        "X": x.double().numpy(), "W": weight.double().numpy(), "y": labels.numpy(),
        "Z": Z, "P": reference.softmax(Z),
    }


def same_loss(head, names, value):
    """head's loss on the reader's x, weight, labels equals ``value`` (float32 rounding)."""
    head.weight.data.copy_(names["weight"])
    torch.testing.assert_close(head(names["x"], names["labels"]), value, rtol=1e-5, atol=1e-6)


def check_softmax(names, values):
    (functional,) = values  # bias=None: the head's zero bias gives the same loss
    same_loss(names["head"], names, functional)
    assert names["head"].bias.shape == (C,)


def check_same_as_functional(names, values):
    (functional,) = values
    same_loss(names["head"], names, functional)


def check_same_three_ways(names, values):
    """The head, the functional line and the reference line of the page give one loss."""
    (functional,) = values
    same_loss(names["head"], names, functional)
    assert names["loss"] == pytest.approx(float(functional), rel=1e-5)
    assert names["dX"].shape == (N, D) and names["dW"].shape == (C, D)


def check_adacos(names, values):
    scale, _ = values
    assert scale == pytest.approx(math.sqrt(2) * math.log(C - 1))  # "the fixed formula"
    assert names["head"].scale != scale  # the dynamic update moved it


def check_adaface(names, values):
    ((mean, std),) = values
    assert (mean.dim(), mean.dtype, std.dim(), std.dtype) == (0, torch.float64, 0, torch.float64)


def check_curricularface(names, values):
    (t,) = values
    assert t.dim() == 0 and t.dtype == torch.float64 and float(t) == 0.0


def check_elastic(names, values):
    (draws,) = values
    assert draws.shape == (N,) and draws.dtype == torch.float64 and draws.device.type == "cpu"
    assert names["head"].plus and names["head"].std == 0.0175


def check_magface(names, values):
    total, extra, bound = values
    assert total.dim() == 0 and extra.dim() == 0
    assert round(bound, 1) == 22.6  # "22.6 for the defaults"


def check_margin_scheduler(names, values):
    steps = names["epochs"] * len(names["batches"])
    assert names["checkpoint"] == {"margin_scheduler": {"iteration": steps}}
    assert names["head"].margin == 0.2  # final_margin from fix_start_epoch on


def check_subcenter(names, values):
    found = names["found"]
    assert found.dominant.shape == (C,) and found.angle.shape == (N,)
    assert names["arcface_weight"].shape == (C, D)  # "(num_classes, embedding_dim)"


def check_scale(names, values):
    from margin_softmax.chunked import plan

    assert plan.plan_blocks(512, 100_000) == [256, 256]  # "2 blocks of 256 rows"


def check_seed(names, values):
    aam, prec1 = names["aam"], names["prec1"]
    assert isinstance(prec1, float)
    unit = torch.nn.functional.normalize  # "plain cosine": the argmax of cos, no margin
    nearest = (unit(names["x"]) @ unit(aam.weight.detach()).t()).argmax(1)
    assert prec1 == pytest.approx(100 * (nearest == names["labels"]).float().mean().item())


def check_index(names, values):
    assert names["head"].weight.shape == (5994, 192)
    assert math.isfinite(names["loss"].item()) and 0 <= names["prec1"] <= 100


def distributed_names(names: dict) -> dict:
    """distributed.md's first block needs NCCL and GPUs; its names at world size 1."""
    from margin_softmax.distributed import PartialFC, SampledRowsOptimizer

    backbone = types.SimpleNamespace(module=torch.nn.Linear(D, 512))
    head = PartialFC(512, 11, m2=0.5, scale=64.0)
    optimizer = SampledRowsOptimizer(torch.optim.SGD(
        [*backbone.module.parameters(), *head.parameters()], lr=0.1, momentum=0.9), head)
    head(backbone.module(names["x"]), names["labels"] % 11).backward()
    optimizer.step()
    return {"backbone": backbone, "head": head, "head3": PartialFC(512, 11, m2=0.5),
            "optimizer": optimizer, "rank": 0, "C": 11,
            "momentum": optimizer.state[head.weight]["momentum_buffer"].clone(),
            "local_embeddings": backbone.module(names["x"]).detach(),
            "local_labels": names["labels"] % 11}


def check_distributed(names, values):
    head = names["head"]
    assert torch.equal(names["head3"].weight, head.weight)
    assert torch.equal(names["single"].weight, head.weight)
    assert torch.equal(names["optimizer"].state[head.weight]["momentum_buffer"],
                       names["momentum"])  # the resume restored the head's momentum rows
    # the per-sample heads: AdaFace equals the single-device head on the same batch (both
    # fresh, one training step), and the EMAs that step moved went through the checkpoint
    adaface, ada = names["adaface"], names["ada"]
    single = ms.AdaFace(512, 11)
    single.weight.data.copy_(adaface.weight)
    expected = single(names["local_embeddings"], names["local_labels"])
    torch.testing.assert_close(names["loss"], expected, rtol=1e-5, atol=1e-6)
    assert adaface.batch_mean == single.batch_mean != 20.0
    assert (ada.batch_mean, ada.batch_std) == (adaface.batch_mean, adaface.batch_std)


def scheduler_names(names: dict) -> dict:
    return {"head": ms.ArcFace(D, C, margin=0.2, scale=30.0), "model": torch.nn.Identity(),
            "batches": [(names["x"], names["labels"])], "epochs": 41, "checkpoint": {}}


# page -> (extra preamble names, blocks to skip, the check)
PAGES = {
    "index.md": (None, (), check_index),
    "losses/softmax.md": (None, (), check_softmax),
    "losses/normface.md": (None, (), check_same_three_ways),
    "losses/cosface.md": (None, (), check_same_as_functional),  # the reference: s = 30
    "losses/arcface.md": (None, (), check_same_as_functional),  # the reference: s=30, m=0.2
    "losses/sphereface.md": (None, (), check_same_three_ways),
    "losses/combined.md": (None, (), check_same_three_ways),
    "heads/adacos.md": (None, (), check_adacos),
    "heads/adaface.md": (None, (), check_adaface),
    "heads/curricularface.md": (None, (), check_curricularface),
    "heads/elastic.md": (None, (), check_elastic),
    "heads/magface.md": (None, (), check_magface),
    "heads/margin_scheduler.md": (scheduler_names, (), check_margin_scheduler),
    "heads/subcenter.md": (None, (), check_subcenter),
    "scale.md": (None, (), check_scale),
    "seed.md": (None, (), check_seed),
    "distributed.md": (distributed_names, (0,), check_distributed),
}


def constructor_calls(code: str) -> list[tuple[str, dict]]:
    """(class name, keyword values) of every `ms.Head(embedding_dim, num_classes, ...)` call:
    the form in which the loss and head pages show a constructor with its defaults."""
    calls = []
    for node in ast.walk(ast.parse(code if ">>>" not in code else "")):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and [getattr(a, "id", None) for a in node.args] == ["embedding_dim",
                                                                    "num_classes"]):
            keywords = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            calls.append((node.func.attr, keywords))
    return calls


SIGNATURE_PAGES = sorted(name for name in PAGES if name.startswith(("losses/", "heads/")))


@pytest.mark.parametrize("name", SIGNATURE_PAGES)
def test_constructor_shown_with_its_defaults(name):
    calls = [call for code in python_blocks(DOCS / name) for call in constructor_calls(code)]
    if name == "heads/margin_scheduler.md":
        assert not calls
        return
    assert calls, name
    for head, keywords in calls:
        defaults = inspect.signature(getattr(ms, head)).parameters
        assert {k: defaults[k].default for k in keywords} == keywords, head


def test_every_page_with_python_is_run_somewhere():
    covered = {*PAGES, "migrating.md"}
    with_python = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if python_blocks(p)}
    assert with_python <= covered, sorted(with_python - covered)


@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_blocks(name, tmp_path, monkeypatch):
    from margin_softmax.chunked import plan

    monkeypatch.setattr(plan, "KEEP_BYTES", plan.KEEP_BYTES)  # scale.md raises it
    monkeypatch.chdir(tmp_path)  # distributed.md writes checkpoints
    extra, skip, check = PAGES[name]
    page = DOCS / name
    names = reader_names()
    names.update(extra(names) if extra else {})
    blocks = python_blocks(page)
    assert blocks, f"{name} has no python block"
    values = []
    for i, code in enumerate(blocks):
        if i not in skip:
            values += run_block(code, page, names)
    check(names, values)
