"""The sharded heads with a rule of their own (AdaFace, MagFace, ElasticFace, CurricularFace,
AdaCos) on 2 and 3 gloo processes against the single-process heads on the global batch
(float64, eager).

Each case runs two training steps and one eval step on the same head (the running state
and the draws carry over), then the tests compare every step's loss and gradients, and the
final running state, with a single-process head fed the same steps.
"""

from __future__ import annotations

import os
import zlib
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from gloo_processes import run_ranks
from sharded_heads import rows_of

import margin_softmax as ms
from margin_softmax.distributed import (
    AdaCosPartialFC,
    AdaFacePartialFC,
    CurricularFacePartialFC,
    ElasticArcFacePartialFC,
    ElasticCosFacePartialFC,
    MagFacePartialFC,
    PartialFC,
    SubCenterArcFacePartialFC,
    class_range,
    load_full,
    load_rows,
    load_sharded,
    load_state,
    save_full,
    save_sharded,
)
from margin_softmax.distributed.checkpoint import running_state, shard_record, write_save

DIM = 6
TOL = {"atol": 1e-9, "rtol": 0.0}
MODES = ("train", "train", "eval")  # one head, three steps
HEADS = {  # name -> (single-process head, sharded head, keywords of both)
    "adaface": (ms.AdaFace, AdaFacePartialFC, {"t_alpha": 0.3}),
    "magface": (ms.MagFace, MagFacePartialFC, {"fallback": "seed"}),
    "elastic_arc_plus": (ms.ElasticArcFace, ElasticArcFacePartialFC,
                         {"std": 0.2, "plus": True, "fallback": "seed", "seed": 5}),
    "elastic_cos": (ms.ElasticCosFace, ElasticCosFacePartialFC, {"std": 0.2, "seed": 7}),
    "curricularface": (ms.CurricularFace, CurricularFacePartialFC, {"momentum": 0.3}),
    "adacos": (ms.AdaCos, AdaCosPartialFC, {}),
    "subcenter": (ms.SubCenterArcFace, SubCenterArcFacePartialFC,
                  {"sub_centers": 3, "margin": 0.3, "fallback": "none"}),
}
# world -> case -> (head, num_classes, batch size of each rank, sharding keywords, labels below)
CASES = {
    2: {
        "adaface": ("adaface", 11, [5, 3], {}, None),
        "magface": ("magface", 11, [2, 7], {}, None),
        "elastic_arc_plus": ("elastic_arc_plus", 11, [4, 4], {}, None),
        "elastic_cos_sampled": ("elastic_cos", 23, [6, 5], {"sample_rate": 0.4, "seed": 7}, None),
        "curricularface": ("curricularface", 11, [3, 6], {}, None),
        "adacos": ("adacos", 11, [4, 5], {}, None),
        "subcenter_sampled": ("subcenter", 13, [5, 4], {"sample_rate": 0.5}, None),
    },
    3: {
        "adaface": ("adaface", 10, [4, 0, 6], {}, None),  # rank 1 holds no sample
        "magface": ("magface", 10, [1, 5, 3], {}, 7),  # no sample of rank 2's classes
        "elastic_arc_plus": ("elastic_arc_plus", 17, [3, 4, 2], {}, None),
        "adaface_sampled": ("adaface", 25, [4, 2, 5], {"sample_rate": 0.3}, None),
        "curricularface_sampled": ("curricularface", 19, [2, 4, 3], {"sample_rate": 0.5}, None),
        "adacos": ("adacos", 10, [3, 0, 4], {}, 7),
        "subcenter": ("subcenter", 11, [2, 5, 3], {}, None),
    },
}


def rows_per_class(head: str) -> int:
    return HEADS[head][2].get("sub_centers", 1)


def class_rows(classes: torch.Tensor, k: int) -> torch.Tensor:
    """The weight rows (M K,) of classes (M,), K rows per class."""
    return (classes[:, None] * k + torch.arange(k)).view(-1)


def case_data(name: str, world: int):
    """Per step: x (N, D) with norms spread over AdaFace's and MagFace's ranges, labels (N,);
    and the full weight (C K, D): the same in every process."""
    head, num_classes, sizes, sharding, label_high = CASES[world][name]
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}-{world}".encode()))
    weight = torch.randn(num_classes * rows_per_class(head), DIM, generator=g,
                         dtype=torch.float64)
    steps = []
    for _ in MODES:
        x = torch.randn(sum(sizes), DIM, generator=g, dtype=torch.float64)
        x = x * torch.empty(sum(sizes), 1, dtype=torch.float64).uniform_(5, 60, generator=g)
        steps.append((x, torch.randint(0, label_high or num_classes, (sum(sizes),), generator=g)))
    return head, weight, sizes, sharding, steps


def sharded_head(head: str, weight: torch.Tensor, group=None, **sharding):
    _, kind, keywords = HEADS[head]
    k = rows_per_class(head)
    model = kind(DIM, weight.shape[0] // k, group=group, **{**keywords, **sharding}).double()
    with torch.no_grad():
        model.weight.copy_(weight[model.start * k : model.stop * k])
    return model


def run_case(name: str, world: int, rank: int, frozen_rank: int | None = None) -> dict:
    head_name, weight, sizes, sharding, steps = case_data(name, world)
    head = sharded_head(head_name, weight, **sharding)
    out = []
    for mode, (x, labels) in zip(MODES, steps, strict=True):
        head.train(mode == "train")
        mine = x[rows_of(sizes, rank)].clone().requires_grad_(rank != frozen_rank)
        head.weight.grad = None
        loss = head(mine, labels[rows_of(sizes, rank)])
        loss.backward()
        out.append({"loss": loss.item(), "x_grad": mine.grad, "w_grad": head.weight.grad,
                    "rows": head.sampled_rows, "start": head.start})
    return {"steps": out, "state": running_state(head.state_dict())}


def run_seed_mismatch(rank: int, world: int) -> str:
    _, weight, sizes, _, steps = case_data("elastic_arc_plus", world)
    head = sharded_head("elastic_arc_plus", weight, seed=rank)  # a different seed per rank
    x, labels = steps[0]
    try:
        head(x[rows_of(sizes, rank)], labels[rows_of(sizes, rank)])
    except ValueError as error:
        return str(error)
    return "no error"


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=30))
    results = {name: run_case(name, world, rank) for name in CASES[world]}
    results["frozen_rank"] = run_case("magface", world, rank, frozen_rank=world - 1)
    results["seed_mismatch"] = run_seed_mismatch(rank, world)
    _, weight, sizes, _, steps = case_data("adaface", 2)  # 11 classes, saved by 2 ranks
    head = sharded_head("adaface", weight if world == 2 else torch.zeros_like(weight))
    if world == 2:  # two training steps, then save
        for x, labels in steps[:2]:
            head(x[rows_of(sizes, rank)], labels[rows_of(sizes, rank)])
        save_sharded(f"{out}/adaface2", head)
    else:  # load into 3 ranks, into the wrong kind of head, and from a single process
        load_sharded(f"{out}/adaface2", head)
        results["loaded"] = {"weight": head.weight.detach().clone(),
                             "state": running_state(head.state_dict())}
        try:
            load_sharded(f"{out}/adaface2", PartialFC(DIM, weight.shape[0]).double())
            results["wrong_kind"] = "no error"
        except ValueError as error:
            results["wrong_kind"] = str(error)
        load_sharded(f"{out}/single", head)
        results["from_single"] = running_state(head.state_dict())
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def spawn(world: int, out: str) -> list[dict]:
    run_ranks(worker, world, out, timeout=180.0)
    return [torch.load(f"{out}/rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("target_heads"))
    two = spawn(2, out)
    single = ms.AdaFace(DIM, 11, t_alpha=0.3).double()  # a single-process head's checkpoint
    single.batch_mean.fill_(33.0)
    single.batch_std.fill_(4.5)
    save_full(f"{out}/single", single.weight, single.state_dict())
    three = spawn(3, out)
    return {2: two, 3: three, "out": out}


def reference(head_name: str, weight, steps, sampled_per_step):
    """Every step of the single-process head on the global batch: (loss, x grad, weight
    grad over all C rows), and its final running state. A sampled step runs a head of the
    sampled rows with the running state carried over."""
    single, _, keywords = HEADS[head_name]
    k = rows_per_class(head_name)
    state, out = None, []
    for mode, (x, labels), sampled in zip(MODES, steps, sampled_per_step, strict=True):
        classes = torch.arange(weight.shape[0] // k) if sampled is None else sampled
        rows = class_rows(classes, k)
        head = single(DIM, len(classes), impl="eager", **keywords).double()
        head.load_state_dict({"weight": weight[rows], **(state or {})}, strict=state is not None)
        head.train(mode == "train")
        xs = x.clone().requires_grad_()
        loss = head(xs, torch.searchsorted(classes, labels))
        loss.backward()
        w_grad = torch.zeros_like(weight)
        w_grad[rows] = head.weight.grad  # rows not sampled get no gradient
        out.append((loss.item(), xs.grad, w_grad))
        state = running_state(head.state_dict())
    return out, state


def sampled_classes(results: list[dict], step: int, k: int):
    """The global class indices of a step's sample (S,), or None when not sampling; each
    sampled class's K weight rows were kept together."""
    if results[0]["steps"][step]["rows"] is None:
        return None
    found = []
    for r in results:
        rows = r["steps"][step]["rows"]  # (S_r K,) rows of this rank's weight
        classes = rows[::k] // k
        assert torch.equal(rows, class_rows(classes, k))
        found.append(r["steps"][step]["start"] + classes)
    return torch.cat(found)


def assert_states_equal(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        if key == "_extra_state":
            assert torch.equal(found[key]["generator"], value["generator"])
        else:
            torch.testing.assert_close(found[key], value, **TOL)


def check_against_single(results, world, name):
    head_name, weight, sizes, sharding, steps = case_data(name, world)
    k = rows_per_class(head_name)
    sampled = [sampled_classes(results, step, k) for step in range(len(MODES))]
    expected, state = reference(head_name, weight, steps, sampled)
    if "sample_rate" in sharding:
        assert sampled[0] is not None and sampled[2] is None  # eval mode samples nothing
        assert len(sampled[0]) < weight.shape[0] // k
        assert set(steps[0][1].tolist()) <= set(sampled[0].tolist())  # every positive kept
    for r, result in enumerate(results):
        start, stop = (k * b for b in class_range(weight.shape[0] // k, world, r))
        for step, (loss, x_grad, w_grad) in enumerate(expected):
            found = result["steps"][step]
            assert abs(found["loss"] - loss) < 1e-9, (r, step, found["loss"], loss)
            if found["x_grad"] is not None:  # the documented factor for DDP's average
                torch.testing.assert_close(found["x_grad"] / world,
                                           x_grad[rows_of(sizes, r)], **TOL)
            torch.testing.assert_close(found["w_grad"], w_grad[start:stop], **TOL)
        assert_states_equal(result["state"], state)


@pytest.mark.parametrize("world,name", [(w, n) for w in CASES for n in CASES[w]])
def test_loss_gradients_and_state_equal_single_process(runs, world, name):
    check_against_single([result[name] for result in runs[world]], world, name)


@pytest.mark.parametrize("world", [2, 3])
def test_a_rank_with_frozen_embeddings_neither_hangs_nor_changes_the_others(runs, world):
    results = [result["frozen_rank"] for result in runs[world]]
    assert all(step["x_grad"] is None for step in results[-1]["steps"])
    check_against_single(results, world, "magface")


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_with_different_draws_raise_on_every_rank(runs, world):
    for result in runs[world]:
        # the seeds differ: the handshake's agreement check names them before any draw
        assert "the ranks disagree on the head: seed [" in result["seed_mismatch"], \
            result["seed_mismatch"]


def test_running_state_moves_with_the_checkpoint(runs):
    """Saved by 2 ranks after two training steps, loaded by 3 ranks and by a single-process
    head: the weight and the EMAs of those two steps; refused by a head of another kind; a
    single-process head's EMAs load into the sharded head."""
    head_name, weight, _, _, steps = case_data("adaface", 2)
    _, after_two = reference(head_name, weight, steps[:2] + steps[:1], [None] * 3)
    for rank, result in enumerate(runs[3]):
        start, stop = class_range(weight.shape[0], 3, rank)
        torch.testing.assert_close(result["loaded"]["weight"], weight[start:stop], **TOL)
        assert_states_equal(result["loaded"]["state"], after_two)
        assert "saved from another kind of head" in result["wrong_kind"], result["wrong_kind"]
        assert_states_equal(result["from_single"], {
            "batch_mean": torch.tensor(33.0, dtype=torch.float64),
            "batch_std": torch.tensor(4.5, dtype=torch.float64)})
    single = ms.AdaFace(DIM, weight.shape[0], t_alpha=0.3).double()
    directory = f"{runs['out']}/adaface2"
    single.load_state_dict({"weight": load_full(directory), **load_state(directory)})
    torch.testing.assert_close(single.weight.detach(), weight, **TOL)
    assert_states_equal(running_state(single.state_dict()), after_two)


def test_sub_centre_checkpoints_keep_each_class_rows_together(tmp_path):
    """K = 3 rows per class: shards written as by 2 ranks read back whole, by class range,
    into the sharded head and into ms.SubCenterArcFace (the same row order); a head with
    another K refuses them."""
    k, num_classes = 3, 7
    weight = torch.randn(num_classes * k, DIM, dtype=torch.float64)
    write_save(tmp_path / "two", [shard_record(weight[start * k : stop * k], start,
                                               num_classes, rows_per_class=k)
                                  for start, stop in ((0, 4), (4, 7))])
    torch.testing.assert_close(load_full(tmp_path / "two"), weight, **TOL)
    torch.testing.assert_close(load_rows(tmp_path / "two", 2, 6), weight[2 * k : 6 * k], **TOL)
    head = SubCenterArcFacePartialFC(DIM, num_classes, sub_centers=k).double()
    load_sharded(tmp_path / "two", head)
    torch.testing.assert_close(head.weight.detach(), weight, **TOL)
    single = ms.SubCenterArcFace(DIM, num_classes, sub_centers=k).double()
    single.weight.data.copy_(load_full(tmp_path / "two"))
    save_full(tmp_path / "one", single.weight, rows_per_class=k)
    files = sorted(p.name for p in (tmp_path / "one" / "save-000001").iterdir())
    assert files == ["classes-0-7.pt", "manifest.json"]
    with pytest.raises(ValueError, match=r"3 weight row\(s\) per class .* the head has 1"):
        load_sharded(tmp_path / "one", PartialFC(DIM, num_classes))


@pytest.mark.gpu
@pytest.mark.parametrize("head_name", sorted(HEADS))
def test_cuda_world_size_one_equals_the_single_device_head(head_name):
    """On CUDA, one process, float32: the loss and gradients equal the single-device head's
    run eager in float64 on the same values (1e-4 relative: float32 sums over 3000 classes;
    impl="auto" puts AdaFace, MagFace and ElasticFace on the Triton primitives)."""
    k, g = rows_per_class(head_name), torch.Generator().manual_seed(0)
    weight = torch.randn(3000 * k, 32, generator=g, dtype=torch.float64)
    x = torch.randn(64, 32, generator=g, dtype=torch.float64) * 30
    labels = torch.randint(0, 3000, (64,), generator=g)
    single, sharded, keywords = HEADS[head_name]
    ours = sharded(32, 3000, **keywords).cuda()
    ours.weight.data.copy_(weight.float().cuda())
    theirs = single(32, 3000, impl="eager", **keywords).double()
    theirs.weight.data.copy_(weight)
    xs, x64 = x.float().cuda().requires_grad_(), x.clone().requires_grad_()
    found, expected = ours(xs, labels.cuda()), theirs(x64, labels)
    found.backward()
    expected.backward()
    for a, b in ((found, expected), (xs.grad, x64.grad), (ours.weight.grad, theirs.weight.grad)):
        a = a.detach().double().cpu()
        assert (a - b).abs().max() <= 1e-4 * b.abs().max(), head_name
