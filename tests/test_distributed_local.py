"""The sharded head's parts in one process (world size 1, no process group): sharding,
sampling, the sampled-rows optimizer, checkpoints, input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import margin_softmax as ms
from margin_softmax.distributed import (
    AdaFacePartialFC,
    ArcFacePartialFC,
    CosFacePartialFC,
    PartialFC,
    SampledRowsOptimizer,
    class_range,
    class_ranges,
    load_full,
    load_rows,
    load_sharded,
    save_full,
    save_sharded,
)
from margin_softmax.distributed.checkpoint import shard_record, write_save
from margin_softmax.distributed.sampling import remap_targets, sample_rows, step_generator

TOL = {"atol": 1e-10, "rtol": 0.0}


@pytest.mark.parametrize("num_classes,world", [(1, 1), (10, 3), (11, 2), (7, 7), (3, 5)])
def test_class_ranges_split_like_array_split(num_classes, world):
    expected = [(int(b[0]), int(b[-1]) + 1) if len(b) else None
                for b in np.array_split(np.arange(num_classes), world)]
    ranges = class_ranges(num_classes, world)
    for got, want in zip(ranges, expected, strict=True):
        assert want is None and got[0] == got[1] or got == want
    assert ranges[0][0] == 0 and ranges[-1][1] == num_classes


@pytest.mark.parametrize("args", [(0, 1, 0), (5, 0, 0), (5, 2, 2), (5, 2, -1), (5.0, 1, 0)])
def test_class_range_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        class_range(*args)


def _data(n=9, c=13, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, torch.randint(0, c, (n,), generator=g), torch.randn(c, d, generator=g,
                                                                  dtype=torch.float64)


def _grads(head_or_fn, x, weight_param):
    x = x.clone().requires_grad_()
    loss = head_or_fn(x)
    loss.backward()
    return loss.detach(), x.grad, weight_param.grad


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda: ArcFacePartialFC(5, 13, margin=0.5, scale=64.0),
         lambda: ms.ArcFace(5, 13, margin=0.5, scale=64.0, impl="eager")),
        (lambda: CosFacePartialFC(5, 13, margin=0.35, scale=30.0),
         lambda: ms.CosFace(5, 13, margin=0.35, scale=30.0, impl="eager")),
        (lambda: PartialFC(5, 13, m1=0.9, m2=0.4, m3=0.15, scale=64.0),
         lambda: ms.CombinedMargin(5, 13, m1=0.9, m2=0.4, m3=0.15, scale=64.0, impl="eager")),
    ],
)
def test_world_size_one_equals_the_single_process_head(ours, theirs):
    x, labels, weight = _data()
    ours, theirs = ours().double(), theirs().double()
    for head in (ours, theirs):
        with torch.no_grad():
            head.weight.copy_(weight)
    loss, dx, dw = _grads(lambda e: ours(e, labels), x, ours.weight)
    ref_loss, ref_dx, ref_dw = _grads(lambda e: theirs(e, labels), x, theirs.weight)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(dx, ref_dx, **TOL)
    torch.testing.assert_close(dw, ref_dw, **TOL)


def test_empty_global_batch_is_a_zero_loss_with_zero_gradients():
    head = PartialFC(5, 13, m2=0.5)
    x = torch.zeros(0, 5, requires_grad=True)
    loss = head(x, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(head.weight.grad) == 0


def test_bad_inputs_raise_clear_errors():
    head = PartialFC(5, 13, m2=0.5)
    x = torch.randn(3, 5)
    with pytest.raises(ValueError, match=r"rank 0: labels must be in \[0, 13\), got label 13"):
        head(x, torch.tensor([0, 13, 2]))
    with pytest.raises(TypeError, match="labels must be integer"):
        head(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="size 4 in dim 1"):
        head(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(5, 13, sample_rate=0.0)
    with pytest.raises(ValueError, match="not initialised"):
        PartialFC(5, 13, group=object())


def test_sampling_keeps_positives_is_seeded_and_changes_every_step():
    target = torch.tensor([3, -1, 7, 3, -1, 0])  # rows of this block, -1: another rank's class
    draws = [sample_rows(target, 40, 0.25, step_generator(5, step, 120, torch.device("cpu")))
             for step in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    for rows in draws:
        assert len(rows) == 10 and torch.equal(rows, rows.unique())  # sorted, distinct
        assert {0, 3, 7} <= set(rows.tolist())
        remapped = remap_targets(target, rows)
        assert torch.equal(torch.where(target >= 0, rows[remapped.clamp_min(0)], -1), target)
    many = torch.arange(30) % 20  # 20 positives > 0.25 * 40: keep them all, nothing else
    assert torch.equal(sample_rows(many, 40, 0.25, step_generator(0, 0, 0, "cpu")),
                       torch.arange(20))


def test_partial_fc_loss_equals_the_loss_over_the_sampled_classes():
    x, labels, weight = _data(n=6, c=40)
    head = PartialFC(5, 40, m2=0.5, scale=30.0, sample_rate=0.3).double()
    with torch.no_grad():
        head.weight.copy_(weight)
    loss, dx, dw = _grads(lambda e: head(e, labels), x, head.weight)
    rows = head.sampled_rows
    assert len(rows) == 12 and int(head.step) == 1
    sub = weight[rows].clone().requires_grad_()
    ref_loss, ref_dx, ref_dsub = _grads(
        lambda e: ms.margin_cross_entropy(e, sub, torch.searchsorted(rows, labels), scale=30.0,
                                          margin=head.margin, impl="eager"), x, sub)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(dx, ref_dx, **TOL)
    ref_dw = torch.zeros_like(weight)
    ref_dw[rows] = ref_dsub
    torch.testing.assert_close(dw, ref_dw, **TOL)
    head.eval()  # evaluation uses every class
    assert head(x, labels).item() > loss.item() and head.sampled_rows is None


def test_sampled_rows_optimizer_moves_only_sampled_rows_with_their_own_momentum():
    """SGD with momentum and weight decay, checked against the update written out per row."""
    lr, mu, wd = 0.1, 0.9, 0.01
    x, labels, _ = _data(n=6, c=40)
    head = PartialFC(5, 40, m2=0.5, scale=30.0, sample_rate=0.25).double()
    optimizer = SampledRowsOptimizer(torch.optim.SGD(head.parameters(), lr=lr, momentum=mu,
                                                     weight_decay=wd), head)
    expected, momentum = head.weight.detach().clone(), {}
    for step in range(3):
        optimizer.zero_grad()
        head(x, (labels + 7 * step) % 40).backward()
        rows, grad = head.sampled_rows, head.weight.grad.clone()
        optimizer.step()
        for row in rows.tolist():  # torch's SGD: buf = mu buf + g + wd w (buf = that at first)
            g = grad[row] + wd * expected[row]
            momentum[row] = mu * momentum[row] + g if row in momentum else g
            expected[row] -= lr * momentum[row]
        torch.testing.assert_close(head.weight.detach(), expected, atol=1e-14, rtol=0)
    buffer = optimizer.state[head.weight]["momentum_buffer"]
    never = [r for r in range(40) if r not in momentum]
    assert never and torch.count_nonzero(buffer[never]) == 0
    for row, value in momentum.items():
        torch.testing.assert_close(buffer[row], value, atol=1e-14, rtol=0)


def test_sampled_rows_optimizer_leaves_adamw_state_of_other_rows_alone():
    x, labels, _ = _data(n=6, c=40)
    head = PartialFC(5, 40, m3=0.3, scale=30.0, sample_rate=0.25)
    optimizer = SampledRowsOptimizer(torch.optim.AdamW(head.parameters(), lr=0.01), head)
    for step in range(2):
        optimizer.zero_grad()
        head(x.float(), (labels + step) % 40).backward()
        before = head.weight.detach().clone()
        state = {k: v.clone() for k, v in optimizer.state[head.weight].items()}
        optimizer.step()
        others = torch.ones(40, dtype=torch.bool)
        others[head.sampled_rows] = False
        assert torch.equal(head.weight.detach()[others], before[others])
        assert not torch.equal(head.weight.detach()[~others], before[~others])
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                assert torch.equal(optimizer.state[head.weight][key][others], state[key][others])
    with pytest.raises(ValueError, match="not among"):
        SampledRowsOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1), head)


def test_checkpoint_round_trip_with_a_single_process_head(tmp_path):
    single = ms.ArcFace(5, 13, margin=0.5)
    save_full(tmp_path / "full", single.weight)
    head = PartialFC(5, 13, m2=0.5)
    load_sharded(tmp_path / "full", head)
    assert torch.equal(head.weight, single.weight)
    save_sharded(tmp_path / "sharded", head)
    assert torch.equal(load_full(tmp_path / "sharded"), single.weight.detach())
    assert torch.equal(load_rows(tmp_path / "sharded", 4, 9), single.weight.detach()[4:9])
    with pytest.raises(ValueError, match="13 classes, the head has 12"):
        load_sharded(tmp_path / "full", PartialFC(5, 12))
    write_save(tmp_path / "both", [shard_record(single.weight, 0, 13),
                                   shard_record(single.weight[:4], 0, 13)])  # overlapping
    with pytest.raises(ValueError, match="exactly once"):
        load_full(tmp_path / "both")


def test_autocast_takes_half_embeddings_from_the_backbone_and_returns_a_float32_loss():
    x, labels, weight = _data()
    backbone = torch.nn.Linear(5, 5)
    head, single = ArcFacePartialFC(5, 13), ms.ArcFace(5, 13, impl="chunked")
    for h in (head, single):
        with torch.no_grad():
            h.weight.copy_(weight.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = backbone(x.float())  # bfloat16; the head's weight is float32
        loss, ref = head(embeddings, labels), single(embeddings, labels)
    assert embeddings.dtype == torch.bfloat16 and loss.dtype == torch.float32
    # the float32 loss, not its bfloat16 rounding (2^-9 relative), as the single-device head
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=0)
    loss.backward()
    assert head.weight.grad.dtype == torch.float32 and backbone.weight.grad is not None


@pytest.mark.gpu
def test_cuda_world_size_one_equals_the_eager_head():
    x, labels, weight = _data(n=64, c=3000, d=32)
    head = PartialFC(32, 3000, m1=0.9, m2=0.4, m3=0.15, scale=64.0).double().cuda()
    with torch.no_grad():
        head.weight.copy_(weight)
    loss, dx, dw = _grads(lambda e: head(e, labels.cuda()), x.cuda(), head.weight)
    w = weight.cuda().requires_grad_()
    ref_loss, ref_dx, ref_dw = _grads(
        lambda e: ms.margin_cross_entropy(e, w, labels.cuda(), scale=64.0, margin=head.margin,
                                          impl="eager"), x.cuda(), w)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(dx, ref_dx, **TOL)
    torch.testing.assert_close(dw, ref_dw, **TOL)


def test_confident_rows_keep_their_small_loss_and_gradients_in_float32():
    """The loss was lse - t from the global lse ~ t, which keeps nothing of a loss below
    ulp(t) (~4e-6 at s = 64), and p_t - 1 was expm1(t - lse): in float32 a confident batch
    gave loss 0 and gradients far off. Float32 against the float64 single-process head."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 64, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 40, (12,), generator=g)
    x = torch.nn.functional.normalize(weight, dim=1)[labels] + 0.3 * torch.randn(
        12, 64, generator=g, dtype=torch.float64) / 8  # near its centre: loss 1e-9 to 1e-5
    results = []
    for head in (ArcFacePartialFC(64, 40, margin=0.5, scale=64.0),
                 ms.ArcFace(64, 40, margin=0.5, scale=64.0, impl="eager").double()):
        with torch.no_grad():
            head.weight.copy_(weight)
        results.append(_grads(lambda e, h=head: h(e.to(h.weight.dtype), labels), x,
                              head.weight))
    (loss, dx, dw), (ref_loss, ref_dx, ref_dw) = results
    assert 0 < ref_loss < 1e-4
    for got, want in ((loss, ref_loss), (dx, ref_dx), (dw, ref_dw)):
        assert float((got.double() - want).norm() / want.norm()) < 1e-4


@pytest.mark.parametrize("head", [PartialFC(4, 3), AdaFacePartialFC(4, 3)],
                         ids=["PartialFC", "AdaFacePartialFC"])
def test_sharded_heads_name_bad_inputs(head):
    """Non-tensors are a TypeError naming the argument; labels on another device (meta
    stands in for a GPU) a ValueError naming both devices, not Tensor.item()'s error."""
    with pytest.raises(TypeError, match="embeddings must be a torch.Tensor, got numpy.ndarray"):
        head(np.zeros((2, 4), np.float32), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="labels must be a torch.Tensor, got list"):
        head(torch.zeros(2, 4), [0, 1])
    with pytest.raises(ValueError, match="labels are on meta but the embeddings are on cpu"):
        head(torch.randn(2, 4), torch.tensor([0, 1]).to("meta"))
