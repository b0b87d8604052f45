"""The chunked step runs few large ops. Each op on a large tensor is one parallel region of the
intra-op threads, and on a machine shared with other processes every region can wait a
scheduler time slice for a thread that is not running (issue 13, item 6). Counted, not timed:
the ops of a step are the same on every run."""

import torch

from benchmarks.op_counts import count_ops
from benchmarks.variants import BUILDERS, make_inputs


def test_default_arcface_step_makes_few_large_ops():
    """ArcFace at the benchmark's N = 512, C = 100k (D = 16: the same blocks of rows and
    tiles of classes, cheaper GEMMs): 7 blocks, 8 sweeps over 4 tiles, 282 large ops (GEMMs
    and passes over tiles). Before: 8 sweeps over 21 tiles, 1550 large ops."""
    x, w, y = make_inputs(512, 16, 100_000, "cpu", torch.float32)
    step = BUILDERS["chunked"](x, w, y)
    step()  # warm-up
    x.grad = w.grad = None
    counts = count_ops(step)
    assert counts.total("large") <= 320, counts.large
    assert counts.calls["index_add_"] == 0  # several regions for a handful of rows
