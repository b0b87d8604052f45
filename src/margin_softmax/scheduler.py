"""MarginScheduler: WeSpeaker's margin schedule (wespeaker/utils/schedulers.py), per iteration.

With k the iteration (0-based), E the iterations per epoch, epochs counted from 1:

    start = (increase_start_epoch - 1) * E,    end = (fix_start_epoch - 1) * E
    margin(k) = initial_margin                                      k < start
              = initial_margin + (final_margin - initial_margin) * r   start <= k < end
              = final_margin                                        k >= end
    r = (k - start) / (end - start)                                 increase_type="linear"
    r = 1 - exp((k - start) / (end - start) * log(1e-3 / (1 + 1e-6)))   "exp" (WeSpeaker's)

The exponential ramp rises fast and flattens: r = 1 - 1e-3 ** u (up to WeSpeaker's 1e-6),
u = (k - start) / (end - start), so r is 0.97 half way and 0.999 just before ``end``, where
the margin steps to final_margin. WeSpeaker's recipes use initial 0.0, final 0.2,
increase_start_epoch 20, fix_start_epoch 40, "exp".
"""

from __future__ import annotations

import math

from torch import nn

from .validation import check_positive_int, real_number

INCREASE_TYPES = ("exp", "linear")


class MarginScheduler:
    """Sets ``head.<attribute>`` (default ``margin``) to margin(k) on each ``step()``.

    Call ``step()`` once per training iteration, before the forward (WeSpeaker's order), or
    ``step(k)`` to jump to iteration k. Works with any head whose margin is an attribute
    read at each forward (ArcFace, CosFace, SubCenterArcFace, CurricularFace, AdaFace, the
    Elastic heads' mean margin; ``attribute="u_margin"`` for MagFace). The constructor sets
    the initial margin at once, as WeSpeaker's does."""

    def __init__(
        self,
        head: nn.Module,
        *,
        iterations_per_epoch: int,
        increase_start_epoch: int,
        fix_start_epoch: int,
        initial_margin: float = 0.0,
        final_margin: float = 0.2,
        increase_type: str = "exp",
        attribute: str = "margin",
    ) -> None:
        if not hasattr(head, attribute):
            raise ValueError(f"head {type(head).__name__} has no attribute {attribute!r}")
        iterations_per_epoch = check_positive_int("iterations_per_epoch", iterations_per_epoch)
        increase_start_epoch = check_positive_int("increase_start_epoch", increase_start_epoch)
        fix_start_epoch = check_positive_int("fix_start_epoch", fix_start_epoch)
        if fix_start_epoch < increase_start_epoch:
            raise ValueError(
                f"fix_start_epoch ({fix_start_epoch}) must be >= increase_start_epoch "
                f"({increase_start_epoch})"
            )
        if increase_type not in INCREASE_TYPES:
            raise ValueError(f"increase_type must be one of {INCREASE_TYPES}, "
                             f"got {increase_type!r}")
        for name, value in (("initial_margin", initial_margin), ("final_margin", final_margin)):
            if not math.isfinite(real_number(name, value, "a finite float")):
                raise ValueError(f"{name} must be a finite float, got {value!r}")
        self.head, self.attribute = head, attribute
        self.increase_start = (increase_start_epoch - 1) * iterations_per_epoch
        self.fix_start = (fix_start_epoch - 1) * iterations_per_epoch
        self.initial_margin, self.final_margin = float(initial_margin), float(final_margin)
        self.increase_type = increase_type
        self.iteration = 0  # the iteration the next step() sets the margin for
        setattr(head, attribute, self.initial_margin)

    def margin_at(self, iteration: int) -> float:
        """margin(k), the schedule as a pure function of the iteration."""
        if iteration >= self.fix_start:
            return self.final_margin
        if iteration < self.increase_start:
            return self.initial_margin
        u = (iteration - self.increase_start) / (self.fix_start - self.increase_start)
        if self.increase_type == "exp":
            ratio = 1.0 - math.exp(u * math.log(1e-3 / (1.0 + 1e-6)))
        else:
            ratio = u
        return self.initial_margin + (self.final_margin - self.initial_margin) * ratio

    def step(self, iteration: int | None = None) -> float:
        """Set the head's margin for this iteration (or for ``iteration``) and move on one;
        returns the margin set."""
        if iteration is not None:
            self.iteration = iteration
        margin = self.margin_at(self.iteration)
        setattr(self.head, self.attribute, margin)
        self.iteration += 1
        return margin

    @property
    def margin(self) -> float:
        """The head's current margin."""
        return getattr(self.head, self.attribute)

    def state_dict(self) -> dict:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        """Resume: restore the iteration and the head's margin as of the last step."""
        self.iteration = int(state["iteration"])
        last = self.iteration - 1
        setattr(self.head, self.attribute,
                self.margin_at(last) if last >= 0 else self.initial_margin)
