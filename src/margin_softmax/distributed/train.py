"""Train a small backbone (DistributedDataParallel) with a class-sharded head.

    python -m margin_softmax.distributed.train --steps 100                  # one process
    torchrun --nproc_per_node=4 -m margin_softmax.distributed.train         # CPU: gloo
    torchrun --nproc_per_node=8 -m margin_softmax.distributed.train --device cuda  # NCCL
    torchrun --nproc_per_node=2 -m margin_softmax.distributed.train --loss adaface

``--loss``: PartialFC with one of MARGINS, or a sharded per-sample head (TARGET_HEADS), with
the margins of the single-process registry (registry.LOSSES: smaller than the papers', for
a small network and few classes) and ``--scale``.

Data: synthetic identities, a random centre per class in input space plus Gaussian noise;
each rank draws its own batch every step. ``--timeout`` bounds every wait on another rank
(init_process_group's timeout): a rank that never joins or dies ends the run with an error
instead of a hang.

``--save DIR`` writes a checkpoint that ``--resume DIR`` continues in any world size
(exactly in the same one; the batches depend on the rank), committed whole (a kill at any
moment leaves the previous save or the new one, commit.py): the head's shard files with
their rows of the momentum buffer (checkpoint.py), and trainer.pt from rank 0: the step
count, the backbone's weights and the optimizer's state_dict without the head's rows (the
backbone's replicas are equal on every rank). ``--keep-last`` committed saves are kept.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..cli.common import nonnegative_float, positive_float, positive_int, seed_int
from ..validation import check_scale
from .agreement import disagreement
from .checkpoint import (
    load_sharded,
    load_trainer_state,
    optimizer_state_without_head,
    save_sharded,
)
from .comm import all_gather_objects, object_gather
from .commit import check_keep_last, check_save_directory, on_every_rank
from .partial_fc import PartialFC
from .sampled_optimizer import SampledRowsOptimizer
from .sampling import check_sample_rate
from .sharded_head import ShardedHead
from .target_heads import (
    AdaCosPartialFC,
    AdaFacePartialFC,
    CurricularFacePartialFC,
    ElasticArcFacePartialFC,
    ElasticCosFacePartialFC,
    MagFacePartialFC,
    SubCenterArcFacePartialFC,
)

MARGINS = {  # (m1, m2, m3)
    "arcface": (1.0, 0.3, 0.0),
    "cosface": (1.0, 0.0, 0.3),
    "combined": (1.0, 0.2, 0.1),
    "normface": (1.0, 0.0, 0.0),
}
TARGET_HEADS = {  # name -> (sharded head, its margin keywords)
    "adacos": (AdaCosPartialFC, {}),
    "adaface": (AdaFacePartialFC, {"margin": 0.3}),
    "curricularface": (CurricularFacePartialFC, {"margin": 0.3}),
    "magface": (MagFacePartialFC, {}),
    "subcenter-arcface": (SubCenterArcFacePartialFC, {"margin": 0.3}),
    "elastic-arcface": (ElasticArcFacePartialFC, {"margin": 0.3}),
    "elastic-cosface": (ElasticCosFacePartialFC, {"margin": 0.3}),
}


def _checked(check, kind=float):
    """An argparse type: kind(text) that ``check`` accepts (its ValueError is the message)."""
    def convert(text: str):
        try:
            return check(kind(text))
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return convert


def device_name(text: str) -> str:
    """cpu or cuda, refused here when CUDA is missing (torch.cuda.set_device would fail with
    an AttributeError about torch._C on a CPU-only torch)."""
    if text not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu or cuda, got {text!r}")
    if text == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("CUDA is not available to this torch "
                                         f"({torch.__version__}); use --device cpu")
    return text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m margin_softmax.distributed.train",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=positive_int, default=1000)
    p.add_argument("--input-dim", type=positive_int, default=32)
    p.add_argument("--embedding-dim", type=positive_int, default=64)
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="samples per rank per step")
    p.add_argument("--steps", type=positive_int, default=100)
    p.add_argument("--lr", type=positive_float, default=0.05)
    p.add_argument("--loss", choices=sorted([*MARGINS, *TARGET_HEADS]), default="arcface")
    p.add_argument("--scale", type=_checked(check_scale), default=30.0,
                   help="the scale s; for adacos the starting scale, then adaptive")
    p.add_argument("--sample-rate", type=_checked(check_sample_rate), default=1.0)
    p.add_argument("--noise", type=nonnegative_float, default=0.5)
    p.add_argument("--device", type=device_name, default="cpu",
                   help="cpu or cuda (one GPU per rank)")
    p.add_argument("--backend", default="auto", help="auto (nccl on cuda, gloo on cpu)")
    p.add_argument("--timeout", type=positive_float, default=120.0,
                   help="seconds to wait for a rank")
    # below 2**63: torch.manual_seed(seed + 1 + rank) overflows past 2**64 - 1
    p.add_argument("--seed", type=functools.partial(seed_int, high=2**63 - 1), default=0)
    p.add_argument("--log-every", type=positive_int, default=10)
    p.add_argument("--save", default=None, help="checkpoint directory written at the end")
    p.add_argument("--keep-last", type=_checked(check_keep_last, int), default=1,
                   help="committed saves kept in --save (the previous one stays until the "
                   "new one is committed)")
    p.add_argument("--resume", default=None, help="checkpoint directory to continue from; "
                   "--steps counts from the start of the first run")
    return p.parse_args(argv)


def init_distributed(args) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Without torchrun's WORLD_SIZE (or with 1) no process
    group is made: world size 1 needs no NCCL, no GPU, no rendezvous."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world == 1:
        return 0, 1, device
    backend = args.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=args.timeout))
    return dist.get_rank(), world, device


def batch(centres: torch.Tensor, args, rank: int, step: int, device):
    """(x (B, input_dim), labels (B,)): this rank's batch of step ``step``."""
    g = torch.Generator().manual_seed(hash((args.seed, rank, step)) % (1 << 63))
    labels = torch.randint(centres.shape[0], (args.batch_size,), generator=g)
    x = centres[labels] + args.noise * torch.randn(args.batch_size, centres.shape[1], generator=g)
    return x.to(device), labels.to(device)


def build_head(args) -> ShardedHead:
    """The sharded head that ``--loss`` names, with --scale, --sample-rate and --seed."""
    common = {"scale": args.scale, "sample_rate": args.sample_rate, "seed": args.seed}
    if args.loss in MARGINS:
        m1, m2, m3 = MARGINS[args.loss]
        return PartialFC(args.embedding_dim, args.classes, m1=m1, m2=m2, m3=m3, **common)
    kind, margins = TARGET_HEADS[args.loss]
    return kind(args.embedding_dim, args.classes, **margins, **common)


def check_same_options(args, world: int) -> None:
    """The same ValueError on every rank when the ranks were given different options (a
    --loss, --scale, --seed or --sample-rate per rank): each rank would train another head."""
    if world > 1:
        options = {key: value for key, value in vars(args).items() if key != "log_every"}
        problem = disagreement(all_gather_objects(options), "options")
        if problem:
            raise ValueError(problem)


def train(args) -> list[float]:
    rank, world, device = init_distributed(args)
    check_same_options(args, world)
    torch.manual_seed(args.seed)  # the same backbone on every rank (DDP also broadcasts it)
    centres = torch.randn(args.classes, args.input_dim,
                          generator=torch.Generator().manual_seed(args.seed))
    backbone = nn.Sequential(nn.Linear(args.input_dim, 128), nn.ReLU(),
                             nn.Linear(128, args.embedding_dim)).to(device)
    if world > 1:
        backbone = DistributedDataParallel(backbone)
    torch.manual_seed(args.seed + 1 + rank)  # a different draw for each shard of the head
    head = build_head(args).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    sgd = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4)
    optimizer = SampledRowsOptimizer(sgd, head)
    first = resume(args.resume, backbone, head, optimizer) if args.resume else 0
    if args.save:  # before training, not after it
        on_every_rank(lambda: check_save_directory(args.save), object_gather(head.group))
    losses, start = [], time.perf_counter()
    for step in range(first, args.steps):
        x, labels = batch(centres, args, rank, step, device)
        loss = head(backbone(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if rank == 0 and (step % args.log_every == 0 or step == args.steps - 1):
            ms = 1000 * (time.perf_counter() - start) / (step + 1 - first)
            print(f"step {step:5d}  loss {losses[-1]:.4f}  {ms:.1f} ms/step  world {world}",
                  flush=True)
    if args.save:
        save(args.save, backbone, head, optimizer, max(first, args.steps), args.keep_last)
    return losses


def _unwrapped(backbone: nn.Module) -> nn.Module:
    return backbone.module if isinstance(backbone, DistributedDataParallel) else backbone


def save(directory: str, backbone, head: ShardedHead, optimizer, step: int,
         keep_last: int = 1) -> None:
    """One committed save (checkpoint.py): every rank's shard, and rank 0's trainer.pt with
    the step count, the backbone and the optimizer without the head's rows."""
    trainer = None
    if head.rank == 0:
        trainer = {"step": step, "backbone": _unwrapped(backbone).state_dict(),
                   "optimizer": optimizer_state_without_head(optimizer, head)}
    save_sharded(directory, head, optimizer, trainer_state=trainer, keep_last=keep_last)


def resume(directory: str, backbone, head: ShardedHead, optimizer) -> int:
    """Load a checkpoint written by save() in any world size; returns the next step. A
    missing, torn or changed checkpoint on any rank is the same ValueError on every rank."""
    saved = on_every_rank(lambda: load_trainer_state(directory), object_gather(head.group))
    _unwrapped(backbone).load_state_dict(saved["backbone"])
    optimizer.load_state_dict(saved["optimizer"])  # replaces all state: before the head's
    load_sharded(directory, head, optimizer)
    return saved["step"]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except Exception as error:  # one line naming the rank, then a non-zero exit
        rank = os.environ.get("RANK", "0")
        print(f"rank {rank}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
