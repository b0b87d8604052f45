"""The ahead-of-time compile check of the kernels (scripts/kernel_resources.py --check, run by
`make kernels` in CI): a kernel that does not compile, or that spills more than
docs/kernel_spills.json records, is named and fails it. The script compiles for a GPU, so
it turns the interpreter off in its own process: these checks run in a subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed")

ROOT = Path(__file__).resolve().parent.parent
PROBE = '''
import json, sys
sys.path.insert(0, "scripts")
import kernel_resources as kr  # before triton: it turns the interpreter off
import triton
import triton.language as tl


@triton.jit
def broken(X, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(X + offsets, tl.load(X + offsets) + not_defined)


kr.FUNCTIONS["broken"] = broken
found = {"broken": kr.measure(kr.Job(90, "bf16", "broken", "broken", {"BLOCK": 16}, 4, 3, {}))}
norms = [job for job in kr.jobs(90, 512, "bf16") if job.label == "norms"][0]
found["norms"] = kr.measure(norms)
found["labels"] = {f"sm_{arch}": sorted(job.label for job in kr.jobs(arch, 512, "bf16"))
                   for arch in kr.CHECKED_ARCHS}
found["problems"] = kr.spill_problems(
    [("sm_90", "forward a", {"spilled": 16}, None), ("sm_90", "gradients b", {"spilled": 0}, None),
     ("sm_80", "backward c", {"spilled": 8}, None)],
    {"sm_90": {"forward a": 8, "gradients b": 4, "forward d": 0}})
kr.measure_all = lambda archs, dim, dtype: [("sm_90", "forward a", None, "PTXASError: boom"),
                                            ("sm_80", "backward c", {"shared": 1, "registers": 9,
                                                                     "spilled": 9}, None)]
sys.argv = ["kernel_resources.py", "--check"]
try:
    kr.main()
except SystemExit as exit:
    found["exit"] = exit.code
print(json.dumps(found))
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    script = tmp_path_factory.mktemp("probe") / "probe.py"
    script.write_text(PROBE)
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_a_kernel_that_does_not_compile_is_named_with_the_reason(probe):
    found, stderr = probe
    resources, failure = found["broken"]
    assert resources is None and "not_defined" in failure
    assert found["exit"] == 1
    assert "FAILED sm_90 forward a: does not compile: PTXASError: boom" in stderr


def test_a_real_kernel_compiles_for_hopper_without_a_gpu(probe):
    resources, failure = probe[0]["norms"]
    assert failure is None and 0 < resources["registers"] <= 255 and resources["spilled"] == 0


def test_spills_over_the_record_or_unrecorded_fail(probe):
    found, stderr = probe
    assert found["problems"] == [
        "sm_90 forward a: spills 16 B, more than the 8 B kernel_spills.json records",
        "sm_80 backward c: spills 8 B and kernel_spills.json records no bound for it "
        "(--record)",
        "sm_90 forward d: recorded in kernel_spills.json but no longer a candidate",
    ]
    assert "FAILED sm_80 backward c: spills 9 B" in stderr


def test_the_record_covers_every_kernel_and_candidate(probe):
    recorded = json.loads((ROOT / "docs" / "kernel_spills.json").read_text())
    assert {gpu: sorted(labels) for gpu, labels in recorded["spilled_bytes"].items()} == (
        probe[0]["labels"])
