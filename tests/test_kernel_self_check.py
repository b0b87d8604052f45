"""impl="auto" runs the Triton kernels only after their self-check (kernels/self_check.py).
No GPU is needed: CPU tensors stand in for a GPU the kernels are built for (the device test
answers yes), the kernels run in Triton's interpreter, and a compile error or a wrong result
is simulated by replacing a kernel launch."""

import os
import warnings

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

from margin_softmax import functional, kernels, margin_cross_entropy  # noqa: E402
from margin_softmax.distributed.sharded_loss import use_triton  # noqa: E402
from margin_softmax.kernels import config, forward, function, self_check  # noqa: E402

if not config.interpreted():
    pytest.skip("CPU tensors stand in for a GPU only under TRITON_INTERPRET=1",
                allow_module_level=True)


@pytest.fixture
def checks(monkeypatch):
    """CPU tensors count as a GPU the kernels are built for; verdicts start empty; the check
    is small (20 rows, 40 classes) and its runs are recorded (the list returned); auto's size
    rule sends every problem without the kernels to chunked."""
    monkeypatch.setattr(kernels, "gpu_runs_kernels", lambda device: True)
    monkeypatch.setattr(self_check, "_verdicts", {})
    monkeypatch.setattr(self_check, "ROWS", 20)
    monkeypatch.setattr(self_check, "CLASSES", 40)
    monkeypatch.setattr(functional, "AUTO_CHUNK_ELEMENTS_CPU", 0)
    monkeypatch.setattr(config, "SCHEDULE", "gemm")
    monkeypatch.delenv(self_check.ENV, raising=False)
    runs, check = [], self_check.failure
    monkeypatch.setattr(self_check, "failure", lambda *key: runs.append(key) or check(*key))
    return runs


def compile_error(monkeypatch):
    """The forward kernel's launch raises, as a kernel that does not compile does."""

    def launch(*args, **kwargs):
        raise RuntimeError("PTXASError: ptxas fatal: Unresolved extern function 'exp2f'")

    monkeypatch.setattr(forward.lse_kernel, "run", launch)


def wrong_result(monkeypatch, what: str):
    """The kernels return a loss 0.05 too large, or dL/dW 1% too large."""
    if what == "loss":
        original = function.non_target_softmax

        def shifted(*args):
            lse_other, cbar, v = original(*args)
            return lse_other + 0.05, cbar, v

        monkeypatch.setattr(function, "non_target_softmax", shifted)
    else:
        original = function.gradients

        def scaled(*args):
            dx, dw = original(*args)
            return dx, dw * 1.01

        monkeypatch.setattr(function, "gradients", scaled)


def problem(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 8, generator=g, dtype=dtype)
    w = torch.randn(30, 8, generator=g, dtype=dtype)
    return x, w, torch.randint(0, 30, (6,), generator=g)


def loss_and_grads(impl: str, dtype=torch.float32) -> list[torch.Tensor]:
    x, w, y = problem(dtype)
    x.requires_grad_(), w.requires_grad_()
    loss = margin_cross_entropy(x, w, y, scale=30.0, m2=0.5, impl=impl)
    loss.backward()
    return [loss.detach(), x.grad, w.grad]


def auto_twice() -> tuple[list, list]:
    """Two "auto" steps, and the RuntimeWarnings they raised (every warning shown)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        steps = [loss_and_grads("auto"), loss_and_grads("auto")]
    return steps, [str(w.message) for w in caught if w.category is RuntimeWarning]


def test_a_compile_error_sends_auto_to_chunked_with_one_warning(checks, monkeypatch):
    compile_error(monkeypatch)
    steps, warned = auto_twice()
    chunked = loss_and_grads("chunked")
    for step in steps:
        assert all(torch.equal(a, b) for a, b in zip(step, chunked, strict=True))
    assert len(warned) == 1
    assert "RuntimeError: PTXASError: ptxas fatal" in warned[0]
    assert "cpu" in warned[0] and "torch.float32" in warned[0]
    assert len(checks) == 1
    x, w, _ = problem()
    assert not use_triton("auto", w)  # the sharded heads: the same verdict, no new check
    assert functional.resolve_impl("auto", x, 30) == "chunked"
    assert len(checks) == 1


@pytest.mark.parametrize("what", ["loss", "gradient"])
def test_a_wrong_result_sends_auto_to_chunked_with_one_warning(checks, monkeypatch, what):
    wrong_result(monkeypatch, what)
    steps, warned = auto_twice()
    chunked = loss_and_grads("chunked")
    for step in steps:
        assert all(torch.equal(a, b) for a, b in zip(step, chunked, strict=True))
    assert len(warned) == 1
    assert "max relative error" in warned[0] and "> tolerance" in warned[0]
    assert len(checks) == 1


def test_a_passing_check_lets_auto_run_the_kernels_once_checked_per_dtype(checks):
    steps, warned = auto_twice()
    assert warned == []
    triton = loss_and_grads("triton")
    for step in steps:
        assert all(torch.equal(a, b) for a, b in zip(step, triton, strict=True))
    x, w, _ = problem()
    assert functional.resolve_impl("auto", x, 30) == "triton"
    assert use_triton("auto", w)
    assert checks == [(torch.device("cpu"), torch.float32, 8)]
    x16, w16, _ = problem(torch.bfloat16)
    assert functional.resolve_impl("auto", x16, 30) == "triton"
    assert use_triton("auto", w16)
    assert [key[1] for key in checks] == [torch.float32, torch.bfloat16]


def test_a_first_call_under_inference_mode_checks_with_gradients(checks):
    """An evaluation may come first: the check still runs the backward, and passes."""
    x, _, _ = problem()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert functional.resolve_impl("auto", x, 30) == "triton"
    assert len(checks) == 1


def test_the_environment_variable_forces_either_path(checks, monkeypatch):
    x, w, _ = problem()
    monkeypatch.setenv(self_check.ENV, "off")
    assert functional.resolve_impl("auto", x, 30) == "chunked" and not use_triton("auto", w)
    compile_error(monkeypatch)
    monkeypatch.setenv(self_check.ENV, "on")
    assert functional.resolve_impl("auto", x, 30) == "triton" and use_triton("auto", w)
    assert checks == []
    monkeypatch.setenv(self_check.ENV, "yes")
    with pytest.raises(ValueError, match="MARGIN_SOFTMAX_TRITON must be one of check, on, "
                                         "off, got 'yes'"):
        functional.resolve_impl("auto", x, 30)


def test_an_explicit_triton_impl_is_not_checked(checks, monkeypatch):
    """The user asked for the kernels: they run, wrong or not, and nothing warns."""
    wrong_result(monkeypatch, "loss")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = loss_and_grads("triton")[0]
    assert checks == []
    assert float(loss) > float(loss_and_grads("chunked")[0]) + 0.04


def test_the_check_runs_every_candidate_and_leaves_the_autotuner_alone(monkeypatch):
    """Each pruned candidate of an autotuned kernel runs once, pinned: the autotuner's
    cache (its choice for the real shapes) is as it was, and its method is its own again."""
    monkeypatch.setattr(self_check, "ROWS", 20)
    monkeypatch.setattr(self_check, "CLASSES", 40)
    monkeypatch.setattr(config, "SCHEDULE", "gemm")
    tuner = forward.lse_kernel
    monkeypatch.setattr(tuner, "configs", [config.interpreter_config(resident=False),
                                           config.interpreter_config(resident=True)])
    launched, launch = [], tuner.fn.run
    monkeypatch.setattr(tuner.fn, "run", lambda *a, **k: launched.append(k["RESIDENT"])
                        or launch(*a, **k))
    cache = tuner.cache
    assert self_check.failure(torch.device("cpu"), torch.float32, 8) is None
    assert launched == [False, True]
    assert tuner.cache is cache and "prune_configs" not in vars(tuner)
