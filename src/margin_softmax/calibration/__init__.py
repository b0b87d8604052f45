"""Calibration: turning scores into log-likelihood ratios (LLRs), and the metrics that judge
LLRs as the NIST speaker recognition evaluations do (see docs/evaluation.md).

An LLR is log p(score | target) / p(score | non-target). With LLRs, the decision that costs
least at a target prior p and costs c_miss, c_fa is a fixed threshold,
-log(c_miss p / (c_fa (1 - p))); no threshold needs tuning on the evaluation data.

- ``cllr``, ``min_cllr``, ``pav_llr``: the log-likelihood-ratio cost in bits, and its minimum
  over monotone maps of the scores (the pool-adjacent-violators algorithm).
- ``act_dcf``, ``bayes_error_rates``: the detection cost at the Bayes threshold, normalised as
  ``metrics.min_dcf`` is, at one prior or over a range of prior log-odds.
- ``fit``, ``LinearCalibration``: prior-weighted linear logistic regression; with several
  columns of scores it is a fusion (one weight per system or quality measure, one offset).
- ``llr_summary``, ``calibrated_summary``: the metrics above as one dict, for ``eval`` and
  ``compare``.

PAV and the logistic regression come from scikit-learn (the ``cli`` extra).
"""

from .cllr import cllr, min_cllr, pav_llr
from .dcf import act_dcf, bayes_error_rates
from .linear import REGULARISATION, LinearCalibration, fit
from .summary import calibrated_summary, llr_summary

__all__ = ["REGULARISATION", "LinearCalibration", "act_dcf", "bayes_error_rates",
           "calibrated_summary", "cllr", "fit", "llr_summary", "min_cllr", "pav_llr"]
