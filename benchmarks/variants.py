"""The benchmarked variants: each builds its inputs and returns one training step of the head
(forward + backward). ArcFace with m = 0.5 rad and s = 64 wherever a margin applies;
linear_cross_entropy has no margins, so it runs the NormFace case (m = 0).

- floor: the three bare matmuls of the same shapes, x W^T, G W and G^T x (no softmax).
- auto, chunked, eager, triton: margin_softmax.margin_cross_entropy with that impl;
  triton_fused: impl="triton" with the fused schedule (v in the forward kernel, dW in one
  kernel) instead of the default GEMM schedule (kernels/config.py).
- insightface: InsightFace's eager recipe (arcface_torch): a normalised linear, the target
  logit edited under no_grad (straight-through), F.cross_entropy over the materialised logits.
- pml: PyTorch Metric Learning's ArcFaceLoss (margin in degrees, its own (D, C) weight).
- linear_ce: torch.nn.functional.linear_cross_entropy on normalised inputs, chunked with
  LinearCrossEntropyOptions() (the per-device "auto" chunking and accumulation policy).
- partial_fc: margin_softmax.distributed.ArcFacePartialFC at world size 1 (no process group),
  i.e. the sharded head's primitives on one device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCALE, MARGIN = 64.0, 0.5
VARIANTS = ("floor", "auto", "chunked", "eager", "triton", "triton_fused", "insightface", "pml",
            "linear_ce", "partial_fc")
HOLDS_LOGITS = ("eager", "insightface", "pml")  # materialise several (N, C) tensors


def make_inputs(n: int, d: int, c: int, device: str, dtype: torch.dtype, seed: int = 0):
    """embeddings (N, D) and weight (C, D) as leaves that want gradients, labels (N,).
    Drawn in their dtype: a float32 draw cast to half would set the CPU's peak memory."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype).to(device).requires_grad_()
    w = torch.randn(c, d, generator=g, dtype=dtype).to(device).requires_grad_()
    y = torch.randint(0, c, (n,), generator=g).to(device)
    return x, w, y


def _ours(impl, schedule=None):
    def build(x, w, y):
        from margin_softmax import margin_cross_entropy

        if schedule is not None:  # the Triton path's schedule (kernels/config.py)
            from margin_softmax.kernels import config

            config.SCHEDULE = schedule
        return lambda: margin_cross_entropy(x, w, y, scale=SCALE, m2=MARGIN, impl=impl).backward()

    return build


def _floor(x, w, y):
    g = torch.randn(x.shape[0], w.shape[0], device=x.device, dtype=x.dtype)  # (N, C)
    xd, wd = x.detach(), w.detach()

    def step():
        xd @ wd.t(), g @ wd, g.t() @ xd

    return step


def _insightface(x, w, y):
    """InsightFace's arcface_torch recipe for ArcFace (m1 = 1, m3 = 0): under no_grad it takes
    arccos of the whole (N, C) logits, adds m to the target angle and takes cos back, so the
    gradient is straight-through; then scales and calls cross-entropy."""
    rows = torch.arange(x.shape[0], device=x.device)

    def step():
        logits = F.linear(F.normalize(x), F.normalize(w)).clamp(-1, 1)  # (N, C)
        with torch.no_grad():
            target_angle = logits[rows, y].arccos()
            logits.arccos_()
            logits[rows, y] = target_angle + MARGIN
            logits.cos_()
        F.cross_entropy(logits * SCALE, y).backward()

    return step


def _pml(x, w, y):
    from pytorch_metric_learning.losses import ArcFaceLoss

    loss = ArcFaceLoss(w.shape[0], w.shape[1], margin=math.degrees(MARGIN), scale=SCALE)
    loss = loss.to(x.device, x.dtype)
    w.data = w.data[:0]  # PML owns its (D, C) weight: free ours
    return lambda: loss(x, y).backward()


def _linear_ce(x, w, y):
    options = torch.nn.LinearCrossEntropyOptions()

    def step():
        inputs, centres = SCALE * F.normalize(x), F.normalize(w)
        F.linear_cross_entropy(inputs, centres, y, options=options).backward()

    return step


def _partial_fc(x, w, y):
    """The class-sharded ArcFace head at world size 1 (its primitives: impl="auto"), holding
    w itself as its weight (built on the meta device: no second copy)."""
    from margin_softmax.distributed import ArcFacePartialFC

    with torch.device("meta"):
        head = ArcFacePartialFC(w.shape[1], w.shape[0], margin=MARGIN, scale=SCALE,
                                fallback="none")
    head.weight = torch.nn.Parameter(w.detach())  # the same storage as w
    head.step = torch.zeros((), dtype=torch.long, device=w.device)

    def step():
        head.weight.grad = None
        head(x, y).backward()

    return step


BUILDERS = {
    "floor": _floor,
    "auto": _ours("auto"),
    "chunked": _ours("chunked"),
    "eager": _ours("eager"),
    "triton": _ours("triton"),
    "triton_fused": _ours("triton", schedule="fused"),
    "insightface": _insightface,
    "pml": _pml,
    "linear_ce": _linear_ce,
    "partial_fc": _partial_fc,
}
