"""The check the Triton kernels pass before impl="auto" runs them (docs/triton.md, "The
self-check"). Importing this module never imports triton.

Once per process, device, dtype and schedule (config.SCHEDULE), at the first "auto" call
that would run the kernels: a small ArcFace problem (N = 80, C = 272, the caller's D, so that
every tile size ends in a partial block) goes through the kernels, forward and backward,
once per pruned tuning candidate of each autotuned kernel, and through the chunked path:

    error(path) = max over loss, dL/dx, dL/dW of  max|path - exact| / max|exact|
    (exact: the chunked path in float64 on the same inputs)
    passes when  error(triton) <= 4 error(chunked in the dtype) + 4 eps(dtype)

An exception (a compile error) or an error above that tolerance fails it: "auto" then
takes the path it takes without the kernels, and one RuntimeWarning names the cause.
MARGIN_SOFTMAX_TRITON=check (the default) runs the check, "on" trusts the kernels
unchecked, "off" never lets "auto" pick them. impl="triton" is never checked.
"""

from __future__ import annotations

import os
import warnings

import torch

from ..margins import Margin

ENV = "MARGIN_SOFTMAX_TRITON"
MODES = ("check", "on", "off")
ROWS, CLASSES = 80, 272  # a 256-wide tile ends in a 16-wide partial block
SCALE, MARGIN = 30.0, Margin(m2=0.5)
_verdicts: dict[tuple[str, torch.dtype, str], bool] = {}


def mode() -> str:
    """MARGIN_SOFTMAX_TRITON: "check" (unset), "on" or "off"; any other value a ValueError."""
    value = os.environ.get(ENV, "check")
    if value.strip().lower() not in MODES:
        raise ValueError(f"{ENV} must be one of {', '.join(MODES)}, got {value!r}")
    return value.strip().lower()


def kernels_pass(device: torch.device, dtype: torch.dtype, dim: int) -> bool:
    """The cached verdict of the check for (device, dtype, schedule), run on first use with
    embedding size `dim`; a failure warns once, naming the cause."""
    from . import config

    key = (str(device), dtype, config.SCHEDULE)
    if key not in _verdicts:
        cause = torch.compiler.disable(failure)(device, dtype, dim)
        if cause is not None:
            warnings.warn(
                f"margin_softmax: the Triton kernels failed their self-check on {device} for "
                f"{dtype} ({cause}); impl='auto' takes the PyTorch path there instead. "
                f"{ENV}=on uses them anyway; please report this.", RuntimeWarning, stacklevel=2)
        _verdicts[key] = cause is None
    return _verdicts[key]


def failure(device: torch.device, dtype: torch.dtype, dim: int) -> str | None:
    """Why the kernels fail the check on this device and dtype, or None when they pass: an
    exception (a compile error; its type, first and last line) or a mismatch."""
    try:
        with torch.inference_mode(False), torch.enable_grad(), \
                torch.autocast(device.type, enabled=False):
            return _mismatch(device, dtype, dim)
    except Exception as exception:
        return describe(exception)


def describe(exception: Exception) -> str:
    """Its type, first and last line: where Triton's compile errors put the place and the
    reason (the lines between are the source)."""
    lines = [line for line in str(exception).splitlines() if line.strip()] or ["?"]
    where = f"{lines[0][:200]} ... " if len(lines) > 1 else ""
    return f"{type(exception).__name__}: {where}{lines[-1][:300]}"


def _mismatch(device: torch.device, dtype: torch.dtype, dim: int) -> str | None:
    """The error of the kernels against the tolerance where it is above it, else None."""
    from ..chunked import chunked_margin_cross_entropy
    from . import triton_margin_cross_entropy

    generator = torch.Generator().manual_seed(0)  # leaves the user's random state alone
    x = torch.randn(ROWS, dim, generator=generator, dtype=torch.float64) * 2
    w = torch.randn(CLASSES, dim, generator=generator, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (ROWS,), generator=generator).to(device)
    upstream = (torch.rand(ROWS, generator=generator, dtype=torch.float64) + 0.5).to(device)
    x, w = x.to(dtype).to(device), w.to(dtype).to(device)
    exact = _loss_and_grads(chunked_margin_cross_entropy, x.double(), w.double(), y, upstream)
    chunked = _error(_loss_and_grads(chunked_margin_cross_entropy, x, w, y, upstream), exact)
    tolerance = 4 * chunked + 4 * torch.finfo(dtype).eps
    index, longest = 0, 1
    while index < longest:
        with PinnedCandidates(index) as pinned:
            error = _error(_loss_and_grads(triton_margin_cross_entropy, x, w, y, upstream),
                           exact)
        if not error <= tolerance:  # NaN fails too
            return (f"max relative error {error:.3g} > tolerance {tolerance:.3g} against the "
                    f"chunked path{pinned.described()}")
        index, longest = index + 1, max(longest, pinned.longest)
    return None


def _loss_and_grads(loss_fn, x, w, y, upstream) -> list[torch.Tensor]:
    """[loss (N,), dL/dx (N, D), dL/dW (C, D)] of sum_i upstream_i loss_i, in float64."""
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    loss = loss_fn(x, w, y, SCALE, MARGIN, None, "none")
    dx, dw = torch.autograd.grad(loss, (x, w), upstream.to(loss.dtype))
    return [t.detach().double() for t in (loss, dx, dw)]


def _error(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """max over the pairs of max|a - e| / max|e| (NaN where a holds NaN)."""
    return max(float((a - e).abs().max() / e.abs().max().clamp_min(1e-30))
               for a, e in zip(actual, expected, strict=True))


class PinnedCandidates:
    """Within the block each autotuned kernel runs the index-th of its pruned candidates
    (cycled) and tunes nothing: the autotuner's choice, in memory and on disk, is left to
    the first real call. `longest`: the most candidates a kernel had (1 where a kernel has
    one config and is not pruned, as under the interpreter)."""

    def __init__(self, index: int):
        self.index, self.longest, self.used = index, 1, {}

    def __enter__(self) -> PinnedCandidates:
        from .backward import weight_grad_kernel
        from .forward import lse_kernel
        from .gradient_tiles import gradient_tile_kernel

        self.tuners = [(tuner, tuner.cache) for tuner in
                       (lse_kernel, weight_grad_kernel, gradient_tile_kernel)]
        for tuner, _ in self.tuners:
            tuner.cache = {}  # a choice made here is dropped on exit
            tuner.prune_configs = self._pick(tuner, tuner.prune_configs)
        return self

    def _pick(self, tuner, prune):
        def pick(kwargs):
            kept = prune(kwargs)
            self.longest = max(self.longest, len(kept))
            self.used[tuner.base_fn.__name__] = kept[self.index % len(kept)]
            return [self.used[tuner.base_fn.__name__]]  # one config: nothing benchmarked

        return pick

    def __exit__(self, *exc_info) -> None:
        for tuner, cache in self.tuners:
            tuner.cache = cache
            del tuner.prune_configs  # the class's method again

    def described(self) -> str:
        return "".join(f"; {name}: {config}" for name, config in self.used.items())
