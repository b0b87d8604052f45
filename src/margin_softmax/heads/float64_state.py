"""Running state (a scale, EMAs) that stays float64 whatever dtype its head is moved to.

``head.to(torch.bfloat16)``, ``.half()`` or ``.float()`` convert every floating buffer; a
float64 EMA or scale rounded to bfloat16 (AdaCos's s = 12.917 becomes 12.875) would stay
rounded for the rest of training. The buffers named in ``FLOAT64_BUFFERS`` follow the
module's device and keep their dtype and value.

Their updates run outside torch.compile's graphs (``state_update``): AOT autograd (the
"aot_eager" and "inductor" backends, torch 2.13) drops in-place updates of 0-dim float64
buffers (fill_, or the add_ of mul_().add_()), so a compiled head kept stale state.
"""

from __future__ import annotations

import functools
import sys

import torch


def state_update(method):
    """Decorator: run ``method`` (an in-place update of float64 state) eagerly, a graph break
    under torch.compile instead of an update the compiled graph would lose. The compiler's
    disable is taken only once torch._dynamo is loaded (nothing compiles before): taking it
    at import would load dynamo, and with it triton, for every user of the package."""
    disabled = None

    @functools.wraps(method)
    def update(*args, **kwargs):
        nonlocal disabled
        if "torch._dynamo" not in sys.modules:
            return method(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(method)
        return disabled(*args, **kwargs)

    return update


class Float64State(torch.nn.Module):
    """Mixin: list the float64 buffers in ``FLOAT64_BUFFERS``; put it before the head's base
    class (``class AdaCos(Float64State, MarginHead)``)."""

    FLOAT64_BUFFERS: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        before = {name: self._buffers.get(name) for name in self.FLOAT64_BUFFERS}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers.get(name)
            if old is not None and new is not None and new.dtype != torch.float64:
                self._buffers[name] = old.to(new.device)  # the float64 value, moved only
        return self
