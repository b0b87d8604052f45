"""The benchmark harness on a tiny problem: every variant runs in its own process and lands
in the CSV with its ratios, the floor's own ratios are 1, and a variant that cannot run at a
size is skipped with a note instead of failing the run (the GPU script relies on all that);
and benchmarks/gpu.sh's dry run goes through every step of the script."""

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GPU_SH = ROOT / "benchmarks" / "gpu.sh"


def test_benchmark_writes_every_variant_with_its_ratios(tmp_path):
    command = [sys.executable, "-m", "benchmarks", "--sizes", "64x32x1000,16x8x300000",
               "--impls", "floor,auto,eager,insightface", "--repeats", "1", "--pairs", "2",
               "--max-logits-gb", "0.01", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "results.csv") as handle:
        rows = {(r["variant"], r["c"]): r for r in csv.DictReader(handle)}
    assert (tmp_path / "results.png").stat().st_size > 0
    assert set(rows) == {(v, c) for v in ("floor", "auto", "eager", "insightface")
                         for c in ("1000", "300000")}
    for (variant, c), row in rows.items():
        if variant in ("eager", "insightface") and c == "300000":  # 16 x 300k floats > 0.01 GB
            assert row["median_s"] == "" and row["note"].startswith("skipped"), row
            continue
        assert float(row["median_s"]) > 0 and float(row["peak_mb"]) > 0, row
        assert float(row["time_ratio"]) > 0 and float(row["memory_ratio"]) >= 0.5, row
        if variant == "floor":
            assert float(row["time_ratio"]) == 1.0 and float(row["memory_ratio"]) == 1.0
            assert row["interleaved_ratio"] == ""
        else:
            assert math.isfinite(float(row["interleaved_ratio"])), row
            assert float(row["interleaved_ratio"]) > 0
    assert "same proc" in done.stdout


def test_a_run_killed_midway_keeps_the_rows_measured_so_far(tmp_path, monkeypatch):
    """gpu.sh kills the benchmark at its time limit: the CSV must hold what was measured."""
    from benchmarks import __main__ as bench

    def child(variant, size, args):
        if variant == "eager":
            raise KeyboardInterrupt  # what the outer timeout's signal amounts to
        return {"median_s": 0.5 if variant == "floor" else 0.6, "peak_mb": 100.0,
                "floor_mb": 90.0}

    monkeypatch.setattr(bench, "run_child", child)
    try:
        bench.main(["--sizes", "8x4x100", "--impls", "floor,auto,eager", "--out",
                    str(tmp_path)])
    except KeyboardInterrupt:
        pass
    with open(tmp_path / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["variant"] for r in rows] == ["floor", "auto"]
    assert float(rows[1]["time_ratio"]) == 1.2


def test_gpu_script_dry_run_goes_through_every_step(tmp_path):
    """GPU_SH_DRY_RUN=1 runs gpu.sh's own command lines on the CPU at a tiny size (Triton
    interpreted, the tests only collected): a broken step fails here, not on a lent GPU."""
    env = dict(os.environ, GPU_SH_DRY_RUN="1", PYTHON=sys.executable)
    done = subprocess.run(["bash", str(GPU_SH), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    impls = re.search(r"--impls (\S+)", GPU_SH.read_text()).group(1).split(",")
    with open(tmp_path / "results.csv") as handle:
        rows = {r["variant"]: r for r in csv.DictReader(handle)}
    assert list(rows) == impls
    for row in rows.values():  # a time, or a skip the harness chose (not a failure)
        assert (row["median_s"] and float(row["median_s"]) > 0) or row["note"].startswith(
            "skipped"), row
    assert re.search(r"-> keep (gemm|fused)$", done.stdout, re.MULTILINE), done.stdout
    assert "forward + backward" in done.stdout and "Self CPU time total" in done.stdout
    assert re.search(r"^tuned lse_kernel ", done.stdout, re.MULTILINE), done.stdout
    collected = {}
    for log in ("tests-triton.log", "tests-gpu.log"):
        text = (tmp_path / log).read_text()
        collected[log] = dict(re.findall(r"^tests/(\S+\.py): (\d+)$", text, re.MULTILINE))
    assert set(collected["tests-triton.log"]) == {"test_triton.py", "test_triton_property.py"}
    assert int(collected["tests-gpu.log"].get("test_triton.py", 0)) > 0, collected


def test_weak_scaling_keeps_the_classes_per_rank_fixed(monkeypatch):
    """benchmarks.distributed_scaling, AdaFacePartialFC on 1 and 2 gloo ranks: a rank of
    the sharded head holds C_r x D weights and its B x D rows at every W, while the
    one-process baselines hold all W C_r classes and the W B rows."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import distributed_scaling

    dim, per_rank, batch = 8, 300, 4
    rows = distributed_scaling.run(worlds=(1, 2), classes_per_rank=per_rank, dim=dim,
                                   batch=batch, steps=1, head="adaface")
    found = {(r["variant"], r["W"]): r for r in rows}
    assert set(found) == {(v, w) for w in (1, 2) for v in
                          (f"AdaFacePartialFC x{w}", "1 process eager", "1 process chunked")}
    for (variant, world), row in found.items():
        held = (per_rank + batch) * dim if variant.startswith("AdaFace") else \
            world * (per_rank + batch) * dim
        assert row["weight_and_data_mib_per_rank"] * 2**20 / 4 == held
        assert row["step_ms"] > 0 and row["classes"] == world * per_rank
    assert found[("AdaFacePartialFC x1", 1)]["step_vs_W1"] == 1.0


def test_under_load_ratio_is_the_chunked_slowdown_over_the_floors():
    """benchmarks.under_load: medians per phase and variant, slowdown = loaded / quiet, and
    the ratio issue 13 bounds by 1.5: slowdown(chunked) / slowdown(floor)."""
    from benchmarks import under_load

    quiet = [(1.0, 1.3), (1.2, 1.2), (0.9, 1.4)]  # (floor s, chunked s): medians 1.0, 1.3
    loaded = [(2.5, 3.9), (2.0, 5.0), (1.5, 3.0)]  # medians 2.0, 3.9
    summary = under_load.summarize(quiet, loaded)
    assert summary["medians"]["quiet", "auto"] == 1.3
    assert summary["slowdown"] == {"floor": 2.0, "auto": pytest.approx(3.0)}
    assert summary["ratio"] == pytest.approx(1.5)


def test_under_load_prints_both_phases_and_the_ratio_it_computed(capsys):
    """A tiny run of the command the lead reruns: one row per phase and the ratio as
    summarize computed it (the timings themselves are not checked)."""
    from benchmarks import under_load

    summary = under_load.main(["--size", "32x8x2000", "--pairs", "1", "--busy", "2"])
    out = capsys.readouterr().out
    number = r" +[\d.]+"
    assert re.search(rf"^quiet{number * 3}$", out, re.MULTILINE), out
    assert re.search(rf"^2 busy processes{number * 3}$", out, re.MULTILINE), out
    assert re.search(rf"^slowdown \(loaded / quiet\){number * 2}$", out, re.MULTILINE), out
    assert f"slowdown(chunked) / slowdown(floor) = {summary['ratio']:.2f}" in out


def test_busy_processes_run_until_the_block_ends():
    from benchmarks import under_load

    with under_load.busy_processes(2) as spinners:
        assert len(spinners) == 2 and all(s.poll() is None for s in spinners)
    assert all(s.poll() is not None for s in spinners)


def test_op_counts_count_computing_ops_on_large_tensors():
    """Large ops (those that may run in parallel): computing on >= GRAIN_SIZE elements; a
    view or a small op is counted as a call only."""
    from benchmarks.op_counts import GRAIN_SIZE, count_ops

    big, small = torch.ones(GRAIN_SIZE), torch.ones(8)

    def step():
        big.mul_(2)
        small.mul_(2)
        big.view(2, -1)

    counts = count_ops(step)
    assert counts.calls == {"mul_": 2, "view": 1}
    assert counts.large == {"mul_": 1}
