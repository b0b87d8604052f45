"""The LLR metrics as one dict (what ``eval --llr`` prints), and the same after calibrating
on a development set (what ``compare`` can report per loss)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .cllr import cllr, min_cllr
from .dcf import act_dcf
from .linear import fit


def llr_summary(llr: Any, labels: Any, p_targets: Sequence[float] = (0.01, 0.05)) -> dict:
    """{"cllr", "min_cllr", "act_dcf" (at the first p_target), "act_dcf_<p>" for each p}
    of LLRs (n,) and labels (n,); C_llr in bits, actDCF normalised (c_miss = c_fa = 1)."""
    out = {"cllr": cllr(llr, labels), "min_cllr": min_cllr(llr, labels)}
    for k, p in enumerate(p_targets):
        value = act_dcf(llr, labels, p_target=p)
        if k == 0:
            out["act_dcf"] = value
        out[f"act_dcf_{p:g}"] = value
    return out


def calibrated_summary(
    dev_scores: Any,
    dev_labels: Any,
    eval_scores: Any,
    eval_labels: Any,
    p_targets: Sequence[float] = (0.01, 0.05),
    fit_prior: float = 0.5,
) -> dict:
    """``llr_summary`` of the evaluation scores (N,) or (N, K) after ``fit`` on the
    development scores at ``fit_prior``, with the fitted "weights" (a list) and "offset"."""
    calibration = fit(dev_scores, dev_labels, p_target=fit_prior)
    out = llr_summary(calibration.apply(eval_scores), eval_labels, p_targets)
    out.update(weights=calibration.weights.tolist(), offset=calibration.offset)
    return out
