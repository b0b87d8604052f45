"""SubCenterArcFace against PyTorch Metric Learning's SubCenterArcFaceLoss (same weights,
degrees converted, W transposed), its inter-top-k penalty against a NumPy transcription of
WeSpeaker's formula, and the cleaning helper against PML's get_outliers."""

import math

import numpy as np
import pytest
import torch

import margin_softmax as ms

SubCenterArcFaceLoss = pytest.importorskip("pytorch_metric_learning.losses").SubCenterArcFaceLoss

D, C, K = 6, 8, 3


def problem(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=torch.float64), torch.randint(0, C, (n,),
                                                                                generator=g)


def pml_loss(weight, margin, scale, k):
    loss = SubCenterArcFaceLoss(num_classes=C, embedding_size=D, margin=math.degrees(margin),
                                scale=scale, sub_centers=k)
    loss.W.data = weight.detach().t().clone()
    return loss


@pytest.mark.parametrize("margin, scale, k", [(0.5, 64.0, 3), (0.2, 32.0, 2), (1.2, 30.0, 4)])
def test_matches_pytorch_metric_learning(margin, scale, k):
    head = ms.SubCenterArcFace(D, C, margin=margin, scale=scale, sub_centers=k).double()
    peer = pml_loss(head.weight, margin, scale, k)
    x, y = problem(seed=k)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = head(xa, y), peer(xb, y)
    ours.backward()
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(head.weight.grad, peer.W.grad.t(), rtol=1e-10, atol=1e-13)


def test_inter_top_k_penalty_matches_wespeakers_formula():
    m, s, mp, top = 0.2, 32.0, 0.06, 3
    head = ms.SubCenterArcFace(D, C, margin=m, scale=s, sub_centers=K, fallback="continuous",
                               hard_margin=mp, top_k=top).double()
    x, y = problem(seed=4)
    xn = (x / x.norm(dim=1, keepdim=True)).numpy()
    w = head.weight.detach().numpy()
    cos = (xn @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T).reshape(len(y), C, K).max(2)
    rows, yn = np.arange(len(y)), y.numpy()
    theta = np.arccos(np.clip(cos, -1, 1))
    logits = cos.copy()
    for i in rows:
        order = [j for j in np.argsort(-cos[i]) if j != yn[i]][:top]
        logits[i, order] = np.cos(theta[i, order] - mp)
    ty = theta[rows, yn]
    logits[rows, yn] = np.where(ty + m < np.pi, np.cos(ty + m), cos[rows, yn] - (1 - np.cos(m)))
    z = s * logits
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    with torch.no_grad():
        assert head(x, y).item() == pytest.approx(np.mean(lse - z[rows, yn]), rel=1e-10)


def test_predict_and_accuracy_pool_the_sub_centres():
    head = ms.SubCenterArcFace(D, C, sub_centers=K).double()
    y = torch.arange(C)
    x = head.weight.detach()[y * K + 2] * 3  # each sample on its class's third sub-centre
    assert torch.equal(head.predict(x), y)
    assert head.accuracy(x, y) == 100.0
    assert torch.equal(head.logits(x).argmax(1), y)


def clustered(seed=0, per_class=12):
    """Samples near one chosen sub-centre per class, with a few far-away ones."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C * K, D, generator=g, dtype=torch.float64)
    labels = torch.arange(C).repeat_interleave(per_class)
    chosen = torch.randint(0, K, (C,), generator=g)
    x = w[labels * K + chosen[labels]] / w[labels * K + chosen[labels]].norm(dim=1, keepdim=True)
    x = x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    far = torch.rand(len(labels), generator=g) < 0.2
    x[far] = torch.randn(int(far.sum()), D, generator=g, dtype=torch.float64)
    keep = labels != C - 1  # one class without samples
    return w, x[keep], labels[keep], chosen


@pytest.mark.parametrize("threshold", [45.0, 75.0])
def test_cleaning_matches_pytorch_metric_learning(threshold):
    w, x, y, chosen = clustered()
    head = ms.SubCenterArcFace(D, C, sub_centers=K).double()
    head.weight.data.copy_(w)
    found = head.find_outliers(x, y, threshold_degrees=threshold)
    peer = pml_loss(w, 0.5, 64.0, K)
    outliers, dominant_rows = peer.get_outliers(x, y, threshold=threshold)
    assert found.outlier_indices.tolist() == sorted(outliers.tolist())
    assert 0 < len(outliers) < len(y)
    present = found.dominant >= 0
    assert present.sum() == C - 1 and found.dominant[C - 1] == -1
    assert torch.equal(found.dominant[present], chosen[present])  # the planted sub-centres
    centres = head.dominant_weight(found.dominant)
    torch.testing.assert_close(centres[present], dominant_rows.t()[present], rtol=0, atol=0)
    cos = torch.nn.functional.cosine_similarity(x, centres[y])
    torch.testing.assert_close(found.angle, torch.acos(cos), rtol=1e-12, atol=1e-12)


def test_cleaning_in_blocks_equals_one_pass_and_checks_inputs():
    w, x, y, _ = clustered(seed=1)
    one = ms.find_outliers(w, x, y, sub_centers=K)
    blocks = ms.find_outliers(w, x, y, sub_centers=K, block_size=5)
    assert torch.equal(one.outliers, blocks.outliers) and torch.equal(one.dominant, blocks.dominant)
    with pytest.raises(ValueError, match="threshold_degrees.*200"):
        ms.find_outliers(w, x, y, sub_centers=K, threshold_degrees=200)
    with pytest.raises(ValueError, match="sub_centers=5"):
        ms.find_outliers(w, x, y, sub_centers=5)
