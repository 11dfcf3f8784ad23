"""Off-policy evaluation: bandit and sequential estimators on one base and one bootstrap.

Modules, by job:

* :mod:`~rlrec.evaluation.ope.base`: :class:`Estimate`, the :class:`Estimator` base (per-unit
  terms whose column sums combine into the estimate), :func:`ratio`, relative errors;
* :mod:`~rlrec.evaluation.ope.bootstrap`: the one shared bootstrap (resampled column sums,
  percentile intervals, the count of non-finite resamples);
* bandit OPE: :mod:`~rlrec.evaluation.ope.bandit` (estimators),
  :mod:`~rlrec.evaluation.ope.reward_model` (cross-fitted reward model),
  :mod:`~rlrec.evaluation.ope.bandit_policies` (evaluation policies' action distributions),
  :mod:`~rlrec.evaluation.ope.bandit_report` (the ``rlrec ope bandit`` run and report);
* sequential OPE: :mod:`~rlrec.evaluation.ope.sequential` (estimators),
  :mod:`~rlrec.evaluation.ope.fqe` (fitted Q evaluation),
  :mod:`~rlrec.evaluation.ope.refit_bootstrap` (intervals that refit the Q-model per
  resample), :mod:`~rlrec.evaluation.ope.high_confidence` (HCOPE lower bounds),
  :mod:`~rlrec.evaluation.ope.session_verdict` (estimates, bound and verdict of a target),
  :mod:`~rlrec.evaluation.ope.q_features` (its hand features),
  :mod:`~rlrec.evaluation.ope.stochastic_policies` (softened logging and target policies),
  :mod:`~rlrec.evaluation.ope.simulated_logging` (simulated logs and true values),
  :mod:`~rlrec.evaluation.ope.simulated_check` (the built-in check against the truth),
  :mod:`~rlrec.evaluation.ope.logged_sessions` (real logged sessions).
"""

from rlrec.evaluation.ope.base import (
    Estimate,
    Estimator,
    column_sums,
    ratio,
    relative_error,
    relative_errors,
)
from rlrec.evaluation.ope.bootstrap import (
    bootstrap_column_sums,
    bootstrap_estimates,
    estimate_values,
)

__all__ = [
    "Estimate",
    "Estimator",
    "bootstrap_column_sums",
    "bootstrap_estimates",
    "column_sums",
    "estimate_values",
    "ratio",
    "relative_error",
    "relative_errors",
]
