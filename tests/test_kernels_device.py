"""Which GPUs the Triton kernels run on, and how their candidates fit a GPU's shared memory.
No GPU is needed: the CUDA queries are replaced by a GPU described in each test (a stand-in
tensor that says it is on cuda:0)."""

import os
from types import SimpleNamespace

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

triton = pytest.importorskip("triton", reason="triton is not installed")

from margin_softmax import functional, kernels  # noqa: E402
from margin_softmax.distributed.sharded_loss import use_triton  # noqa: E402
from margin_softmax.kernels import config  # noqa: E402

CUDA0 = torch.device("cuda", 0)


@pytest.fixture
def gpu(monkeypatch):
    """gpu(name, capability, hip=None): the CUDA queries describe that GPU."""

    def describe(name: str, capability: tuple[int, int], hip: str | None = None) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.version, "hip", hip)

    return describe


def on_cuda(*shape: int, dtype=torch.float32) -> SimpleNamespace:
    """What the dispatch reads of a CUDA tensor, without one."""
    return SimpleNamespace(is_cuda=True, device=CUDA0, shape=shape, dtype=dtype)


@pytest.mark.parametrize("capability", [(7, 0), (7, 5)])
def test_gpus_older_than_ampere_get_the_chunked_path_or_a_clear_error(gpu, capability):
    gpu("Tesla T4", capability)
    version = f"{capability[0]}.{capability[1]}"
    assert version in kernels.device_unsupported(CUDA0)
    assert not kernels.gpu_runs_kernels(CUDA0)
    big, small = on_cuda(1024, 64), on_cuda(4, 64)
    assert functional.resolve_impl("auto", big, 100_000) == "chunked"
    assert functional.resolve_impl("auto", small, 10) == "eager"
    assert not use_triton("auto", on_cuda(10, 64))
    for call in (lambda: kernels.check_runnable(big), lambda: use_triton("triton", big)):
        with pytest.raises(ValueError, match=f"Tesla T4.*{version}.*8.0.*impl='chunked'"):
            call()


@pytest.mark.parametrize("capability", [(8, 0), (8, 9), (9, 0), (10, 0)])
def test_ampere_and_newer_run_the_kernels_under_auto(gpu, capability, monkeypatch):
    gpu("NVIDIA H200", capability)
    monkeypatch.setenv("MARGIN_SOFTMAX_TRITON", "on")  # no self-check: there is no GPU here
    assert kernels.device_unsupported(CUDA0) is None
    assert kernels.gpu_runs_kernels(CUDA0)
    assert functional.resolve_impl("auto", on_cuda(4, 64), 10) == "triton"
    assert functional.resolve_impl("auto", on_cuda(4, 64), 10, plain=True) == "eager"
    assert use_triton("auto", on_cuda(10, 64))
    assert not use_triton("auto", on_cuda(10, 64, dtype=torch.float64))  # kernels_fit


def test_auto_leaves_rocm_and_a_missing_triton_to_the_chunked_path(gpu, monkeypatch):
    gpu("AMD Instinct MI300X", (9, 4), hip="6.2")
    assert kernels.device_unsupported(CUDA0) is None  # impl="triton" may try
    assert not kernels.gpu_runs_kernels(CUDA0)
    gpu("NVIDIA A100", (8, 0))
    assert kernels.gpu_runs_kernels(CUDA0)
    monkeypatch.setattr(kernels.importlib.util, "find_spec", lambda name: None)
    assert not kernels.gpu_runs_kernels(CUDA0)
    assert functional.resolve_impl("auto", on_cuda(1024, 64), 100_000) == "chunked"
    assert not kernels.gpu_runs_kernels(torch.device("cpu"))


@pytest.fixture
def shared_memory(monkeypatch):
    """shared_memory(max_bytes): the GPU reports that much shared memory per block."""

    def report(max_bytes: int) -> None:
        properties = {"max_shared_mem": max_bytes}
        utils = SimpleNamespace(get_device_properties=lambda index: properties)
        monkeypatch.setattr(triton.runtime, "driver",
                            SimpleNamespace(active=SimpleNamespace(utils=utils)))
        config.shared_memory_bytes.cache_clear()

    yield report
    config.shared_memory_bytes.cache_clear()


def gemm_candidates() -> list:
    return [triton.Config({"BLOCK_N": n, "BLOCK_C": c, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for n, c, k, w, s in config.GEMM_CANDIDATES]


def test_gemm_candidates_are_pruned_to_the_gpus_shared_memory(shared_memory):
    """Each kept candidate's pipelined operands, stages x (BLOCK_N + BLOCK_C) x BLOCK_K x 2
    bytes in bfloat16, fit in 7/8 of what the GPU reports; a smaller GPU keeps a strict
    subset, never nothing."""
    weight = SimpleNamespace(device=CUDA0, element_size=lambda: 2)
    kept = {}
    for name, max_bytes in (("H200", 232_448), ("A100", 166_912), ("RTX 4090", 101_376),
                            ("tiny", 4_096)):
        shared_memory(max_bytes)
        kept[name] = config.gemm_prune(gemm_candidates(), {"W": weight})
        assert kept[name]
        if name == "tiny":
            break
        for c in kept[name]:
            k = c.kwargs
            assert c.num_stages * (k["BLOCK_N"] + k["BLOCK_C"]) * k["BLOCK_K"] * 2 <= (
                max_bytes * 7 // 8)
    configs = [[str(c) for c in kept[name]] for name in ("H200", "A100", "RTX 4090")]
    assert set(configs[2]) < set(configs[1]) < set(configs[0])
    assert len(kept["tiny"]) == 1  # the smallest candidate, as a last resort


def test_accumulator_candidates_are_pruned_to_the_gpus_shared_memory(shared_memory):
    """The fused schedule's forward kernel with its (BLOCK_N, DV) accumulator at D = 512
    bfloat16: fewer candidates fit a 99 KiB GPU than a 227 KiB one, and those that do fit its
    7/8."""
    prune = config.pruner("BLOCK_N", "BLOCK_C", "WITH_V")["early_config_prune"]
    weight = SimpleNamespace(device=CUDA0, element_size=lambda: 2)
    candidates = [triton.Config({"BLOCK_N": n, "BLOCK_C": c, "BLOCK_K": k, "RESIDENT": r},
                                num_warps=w, num_stages=s)
                  for n, c, k, w, s, r in config.CANDIDATES]
    kept = []
    for max_bytes in (232_448, 101_376):
        shared_memory(max_bytes)
        kept.append(prune(candidates, {"W": weight}, DV=512, WITH_V=True))
        for c in kept[-1]:
            assert config.fits_on_chip(c, 512, 2, "BLOCK_N", "BLOCK_C", max_bytes * 7 // 8)
    assert 0 < len(kept[1]) < len(kept[0])
