"""The target-logit transform psi(cos) and its derivative, for every margin kind.

Every loss in the family is cross-entropy over ``s * cos_ij`` with only the target column
replaced by ``s * psi(cos_iy)``. With ``theta = arccos(cos)`` and ``t = m1 * theta + m2``:

    psi(cos) = cos(t) - m3                                    (the combined margin)

with m1 > 0, m2 in [0, pi) radians and m3 in [0, 2) (a cosine offset: at m3 = 2 no target
could beat any non-target).

| kind                 | m1 | m2 | m3 | fallback   |
| -------------------- | -- | -- | -- | ---------- |
| NormFace             | 1  | 0  | 0  | -          |
| CosFace / AM-Softmax | 1  | 0  | m  | -          |
| ArcFace / AAM        | 1  | m  | 0  | seed       |
| SphereFace           | m  | 0  | 0  | piecewise  |

``fallback`` says what happens where ``t > pi`` (there cos(t) turns back up and the loss
stops being monotonic in theta):

- ``"none"``: cos(t) - m3 as it is (InsightFace's PyTorch code).
- ``"seed"``: cos - m2*sin(m2) - m3 where t > pi (the seed, SpeechBrain, voxceleb_trainer,
  PyTorch Metric Learning). Defined for m1 == 1 only. Slightly discontinuous at t = pi.
- ``"continuous"``: cos - cos(theta_t) - 1 - m3 where t > pi, theta_t = (pi - m2) / m1; for
  ArcFace that is cos - (1 - cos m) (WeSpeaker, 3D-Speaker). Continuous, slope 1.
- ``"easy"``: no margin at all where cos <= 0 ("easy margin").
- ``"piecewise"``: (-1)^k cos(t) - 2k - m3 with k = floor(t / pi) (SphereFace's A-Softmax):
  continuous and monotonic for any m1.

``blend`` (SphereFace's lambda) mixes in the plain cosine: (blend * cos + psi) / (1 + blend).
``straight_through`` uses psi' := 1 in the backward (what InsightFace's PyTorch ArcFace does).
psi'(cos) = m1 * sin(t) / sin(theta) is infinite at cos = +-1 unless sin(t) -> 0 there too
(m2 = 0 at cos = 1, where it tends to m1^2; an integer m1 at cos = -1); cos is clamped to
+-(1 - eps) there, so an embedding equal to its class centre still gets a finite gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .validation import real_number

FALLBACKS = ("none", "seed", "continuous", "easy", "piecewise")
M3_MAX = 2.0  # m3 in [0, 2): below 2, a target at cos = 1 still beats a non-target at cos = -1


def check_m3(value, name: str = "m3") -> float:
    """The additive cosine margin (CosFace's margin, the combined margin's m3) as a float in
    [0, M3_MAX); the ValueError names ``name`` and the value."""
    value = real_number(name, value)
    if not 0 <= value < M3_MAX:
        raise ValueError(f"{name} (additive cosine margin) must be in [0, {M3_MAX:g}), "
                         f"got {value!r}")
    return value


def clamp_eps(dtype: torch.dtype) -> float:
    """How far from +-1 the cosine is kept when psi' is evaluated."""
    return 1e-10 if dtype == torch.float64 else 1e-6


@dataclass(frozen=True)
class Margin:
    """The parameters of psi (see the module docstring). The heads pass their family's
    fallback: ArcFace "seed", SphereFace "piecewise"; the bare default is the formula as is."""

    m1: float = 1.0
    m2: float = 0.0
    m3: float = 0.0
    fallback: str = "none"
    blend: float = 0.0
    straight_through: bool = False

    def __post_init__(self) -> None:
        check_m3(self.m3)
        for name in ("m1", "m2", "m3", "blend"):
            value = real_number(name, getattr(self, name))
            object.__setattr__(self, name, value)  # a Python float (frozen dataclass)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if self.m1 <= 0:
            raise ValueError(f"m1 must be > 0, got {self.m1!r}")
        if not 0 <= self.m2 < math.pi:
            raise ValueError(f"m2 (additive angular margin) must be in [0, pi), got {self.m2!r}")
        if self.blend < 0:
            raise ValueError(f"blend (SphereFace's lambda) must be >= 0, got {self.blend!r}")
        if not isinstance(self.straight_through, bool):  # "False" would be truthy
            raise TypeError(f"straight_through must be a bool, got {self.straight_through!r}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        if self.fallback == "seed" and self.m1 != 1:
            raise ValueError(f"fallback='seed' is defined for m1 == 1 only, got m1={self.m1!r}")

    @property
    def is_identity(self) -> bool:
        """True when psi(cos) == cos (NormFace, plain softmax)."""
        return self.m1 == 1 and self.m2 == 0 and self.m3 == 0

    @property
    def is_cosface(self) -> bool:
        """True when psi(cos) == cos - m3 exactly (no angle needed)."""
        return self.m1 == 1 and self.m2 == 0

    def psi(self, cos: torch.Tensor) -> torch.Tensor:
        """psi(cos), elementwise. cos: any shape, any float dtype."""
        value, _ = self.psi_and_grad(cos)
        return value

    def psi_and_grad(self, cos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """psi(cos) and dpsi/dcos (1 where straight_through), elementwise."""
        c = cos.clamp(-1.0, 1.0)
        if self.is_cosface:
            value, grad = c - self.m3, torch.ones_like(c)
        else:
            value, grad = self._angular(c)
        if self.blend:
            value = (self.blend * c + value) / (1 + self.blend)
            grad = (self.blend + grad) / (1 + self.blend)
        if self.straight_through:
            grad = torch.ones_like(grad)
        return value, grad

    def _angular(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m1, m2, m3 = self.m1, self.m2, self.m3
        eps = clamp_eps(c.dtype)
        cc = c.clamp(-1 + eps, 1 - eps)  # psi' is evaluated here: finite at the poles
        tc = m1 * torch.acos(cc) + m2  # t at the clamped cosine
        if m1 == 1:  # cos(theta + m2) without arccos: exact near +-1
            sin_theta = torch.sqrt((1 - c * c).clamp_min(0))  # sin(theta) >= 0
            cos_t = c * math.cos(m2) - sin_theta * math.sin(m2)
            grad = math.cos(m2) + math.sin(m2) * cc / torch.sqrt(1 - cc * cc)
            beyond = c <= math.cos(math.pi - m2)  # t >= pi, as the seed tests it
        else:
            t = m1 * torch.acos(c) + m2
            cos_t = torch.cos(t)
            grad = m1 * torch.sin(tc) / torch.sqrt(1 - cc * cc)
            beyond = t > math.pi
        value = cos_t - m3

        if self.fallback == "piecewise":
            t = m1 * torch.acos(c) + m2
            k = torch.floor(t / math.pi).clamp_min(0)
            value = (1 - 2 * torch.remainder(k, 2)) * cos_t - 2 * k - m3  # (-1)^k cos t - 2k
            k_c = torch.floor(tc / math.pi).clamp_min(0)  # the piece psi' is taken in
            grad = (1 - 2 * torch.remainder(k_c, 2)) * grad
        elif self.fallback == "seed":
            value = torch.where(beyond, c - m2 * math.sin(m2) - m3, value)
            grad = torch.where(beyond, torch.ones_like(grad), grad)
        elif self.fallback == "continuous":
            theta_t = (math.pi - m2) / m1
            value = torch.where(beyond, c - math.cos(theta_t) - 1 - m3, value)
            grad = torch.where(beyond, torch.ones_like(grad), grad)
        elif self.fallback == "easy":
            easy = c <= 0
            value = torch.where(easy, c, value)
            grad = torch.where(easy, torch.ones_like(grad), grad)
        return value, grad


class _TargetMargin(torch.autograd.Function):
    """psi applied to the (N,) target cosines, with psi' (or 1) in the backward."""

    @staticmethod
    def forward(ctx, cos_target: torch.Tensor, margin: Margin) -> torch.Tensor:
        value, grad = margin.psi_and_grad(cos_target)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad_out * grad, None


def apply_margin(cos_target: torch.Tensor, margin: Margin) -> torch.Tensor:
    """psi(cos_target) as a differentiable op whose backward is psi' (finite at +-1)."""
    return _TargetMargin.apply(cos_target, margin)
