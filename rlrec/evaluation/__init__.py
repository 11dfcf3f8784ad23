"""Evaluation: rollouts, offline policy evaluation, ranking metrics, fidelity, reports.

Every name loads on first use (the report imports matplotlib and Jinja2; the OPE run of a
trained policy imports torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlrec.lazy import lazy_exports

if TYPE_CHECKING:
    from rlrec.evaluation.churn import ChurnConfig, evaluate_churn, predict_churn
    from rlrec.evaluation.fidelity import fidelity_distributions, validate_fidelity
    from rlrec.evaluation.ope.bandit import (
        LoggedRounds,
        estimate_policy_value,
        prepare_rounds,
    )
    from rlrec.evaluation.ope.bandit_report import run_bandit_ope
    from rlrec.evaluation.ope.base import Estimate
    from rlrec.evaluation.ope.fqe import fitted_q_evaluation
    from rlrec.evaluation.ope.high_confidence import hcope_lower_bound
    from rlrec.evaluation.ope.refit_bootstrap import refit_bootstrap
    from rlrec.evaluation.ope.sequential import (
        LoggedSessions,
        estimate_session_value,
        prepare_sessions,
    )
    from rlrec.evaluation.ope.session_verdict import session_estimates
    from rlrec.evaluation.ranking import BaselineConfig, evaluate_next_step
    from rlrec.evaluation.report import write_report
    from rlrec.evaluation.rollout import EpisodeStats, evaluate_policies, summarize

# Name -> module of every public name. A name that is also a submodule's (``rollout``, the
# function) is left out: importing the submodule would rebind it on the package.
_LAZY: dict[str, str] = {
    "ChurnConfig": "rlrec.evaluation.churn",
    "evaluate_churn": "rlrec.evaluation.churn",
    "predict_churn": "rlrec.evaluation.churn",
    "fidelity_distributions": "rlrec.evaluation.fidelity",
    "validate_fidelity": "rlrec.evaluation.fidelity",
    "LoggedRounds": "rlrec.evaluation.ope.bandit",
    "estimate_policy_value": "rlrec.evaluation.ope.bandit",
    "prepare_rounds": "rlrec.evaluation.ope.bandit",
    "run_bandit_ope": "rlrec.evaluation.ope.bandit_report",
    "Estimate": "rlrec.evaluation.ope.base",
    "fitted_q_evaluation": "rlrec.evaluation.ope.fqe",
    "hcope_lower_bound": "rlrec.evaluation.ope.high_confidence",
    "refit_bootstrap": "rlrec.evaluation.ope.refit_bootstrap",
    "LoggedSessions": "rlrec.evaluation.ope.sequential",
    "estimate_session_value": "rlrec.evaluation.ope.sequential",
    "prepare_sessions": "rlrec.evaluation.ope.sequential",
    "BaselineConfig": "rlrec.evaluation.ranking",
    "session_estimates": "rlrec.evaluation.ope.session_verdict",
    "evaluate_next_step": "rlrec.evaluation.ranking",
    "write_report": "rlrec.evaluation.report",
    "EpisodeStats": "rlrec.evaluation.rollout",
    "evaluate_policies": "rlrec.evaluation.rollout",
    "summarize": "rlrec.evaluation.rollout",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "BaselineConfig",
    "ChurnConfig",
    "EpisodeStats",
    "Estimate",
    "LoggedRounds",
    "LoggedSessions",
    "estimate_policy_value",
    "estimate_session_value",
    "evaluate_churn",
    "evaluate_next_step",
    "evaluate_policies",
    "fidelity_distributions",
    "fitted_q_evaluation",
    "hcope_lower_bound",
    "predict_churn",
    "prepare_rounds",
    "prepare_sessions",
    "refit_bootstrap",
    "run_bandit_ope",
    "session_estimates",
    "summarize",
    "validate_fidelity",
    "write_report",
]
