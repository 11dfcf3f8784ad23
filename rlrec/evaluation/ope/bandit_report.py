"""Bandit OPE end to end: logged feedback + evaluation policy -> estimates and errors.

This wires :mod:`rlrec.data.bandit` (the log), :mod:`rlrec.evaluation.ope.bandit_policies` (the
evaluation policy's action distribution), :mod:`rlrec.evaluation.ope.reward_model` (cross-fitted
reward model) and :mod:`rlrec.evaluation.ope.bandit` (estimators and bootstrap) into the report that
``rlrec ope bandit`` prints and ``scripts/obd_benchmark.py`` tabulates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlrec.data.bandit import BanditFeedback
from rlrec.evaluation.ope.bandit import (
    default_estimators,
    estimate_policy_value,
    prepare_rounds,
)
from rlrec.evaluation.ope.base import Estimate, relative_errors
from rlrec.evaluation.ope.bootstrap import bootstrap_note, bootstrap_summary
from rlrec.evaluation.ope.reward_model import (
    RewardModelConfig,
    RewardModelFit,
    cross_fit_reward_model,
)

__all__ = [
    "BanditOPEReport",
    "BanditOPESettings",
    "format_report",
    "run_bandit_ope",
]


@dataclass(frozen=True)
class BanditOPESettings:
    """Settings of one bandit OPE run.

    Attributes:
        n_bootstrap: Bootstrap resamples for the 95% intervals.
        seed: Seed of the folds and the bootstrap.
        switch_lambda: Switch-DR weight threshold.
        os_lambda: DR-OS shrinkage strength.
        reward_model: Reward-model selection and cross-fitting settings.
    """

    n_bootstrap: int = 200
    seed: int = 0
    switch_lambda: float = 100.0
    os_lambda: float = 10000.0
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)


@dataclass(frozen=True)
class BanditOPEReport:
    """The outcome of :func:`run_bandit_ope`.

    Attributes:
        n_rounds: Logged rounds used.
        policy: The evaluation policy's label.
        behavior_mean_reward: Mean logged reward (the behaviour policy's on-policy value).
        ground_truth: The evaluation policy's on-policy value, when known.
        estimates: Estimates by name.
        reward_model: The reward-model fit (None when no estimator needs it).
        seconds: Wall time of the reward model and of the estimators.
    """

    n_rounds: int
    policy: str
    behavior_mean_reward: float
    ground_truth: float | None
    estimates: dict[str, Estimate]
    reward_model: RewardModelFit | None
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of ``rlrec ope bandit --json``."""
        out: dict[str, Any] = {"n_rounds": self.n_rounds, "policy": self.policy}
        if self.ground_truth is not None:
            out["ground_truth"] = self.ground_truth
        out["behavior_mean_reward"] = self.behavior_mean_reward
        out["estimates"] = {name: e.to_dict() for name, e in self.estimates.items()}
        out["bootstrap"] = bootstrap_summary(self.estimates)
        if self.ground_truth is not None:
            out["relative_error"] = {
                k: (v if np.isfinite(v) else None)
                for k, v in relative_errors(self.estimates, self.ground_truth).items()
            }
        if self.reward_model is not None:
            out["reward_model"] = self.reward_model.summary()
        out["seconds"] = self.seconds
        return out


def run_bandit_ope(
    feedback: BanditFeedback,
    action_dist: np.ndarray,
    policy: str,
    ground_truth: float | None = None,
    settings: BanditOPESettings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BanditOPEReport:
    """Estimate an evaluation policy's value from logged feedback with all seven estimators.

    Args:
        feedback: The behaviour policy's log.
        action_dist: (n_rounds or 1, n_actions, len_list) evaluation policy.
        policy: Label for the report.
        ground_truth: The evaluation policy's true (or on-policy) value, if known.
        settings: Bootstrap, seeds, thresholds and reward model.
        progress: ``progress(done, total)`` during the reward-model fit (the slow part).

    Returns:
        The report.
    """
    settings = settings or BanditOPESettings()
    start = time.perf_counter()
    fit = cross_fit_reward_model(
        feedback, settings.reward_model, seed=settings.seed, progress=progress
    )
    fitted = time.perf_counter()
    rounds = prepare_rounds(
        reward=feedback.reward,
        action=feedback.action,
        position=feedback.position,
        pscore=feedback.pscore,
        action_dist=action_dist,
        estimated_rewards_by_reg_model=fit.estimated_rewards,
    )
    estimates = estimate_policy_value(
        rounds,
        default_estimators(settings.switch_lambda, settings.os_lambda),
        n_bootstrap=settings.n_bootstrap,
        seed=settings.seed,
    )
    done = time.perf_counter()
    return BanditOPEReport(
        n_rounds=feedback.n_rounds,
        policy=policy,
        behavior_mean_reward=feedback.mean_reward,
        ground_truth=ground_truth,
        estimates=estimates,
        reward_model=fit,
        seconds={"reward_model": fitted - start, "estimators": done - fitted},
    )


def format_report(report: BanditOPEReport) -> str:
    """A plain-text table of the report for the terminal."""
    lines = [
        f"policy {report.policy}  rounds {report.n_rounds}  "
        f"logged mean reward {report.behavior_mean_reward:.6g}",
    ]
    if report.ground_truth is not None:
        lines.append(f"ground truth (on-policy mean reward) {report.ground_truth:.6g}")
    errors = (
        relative_errors(report.estimates, report.ground_truth)
        if report.ground_truth is not None
        else {}
    )
    header = f"{'estimator':<10} {'value':>10} {'95% CI':>25}"
    if errors:
        header += f" {'rel. error':>11}"
    lines.append(header)
    for name, est in report.estimates.items():
        ci = f"[{est.ci95[0]:.6g}, {est.ci95[1]:.6g}]"
        row = f"{name:<10} {est.value:>10.6g} {ci:>25}"
        if errors:
            row += f" {errors[name]:>11.4f}"
        lines.append(row)
    lines.append(bootstrap_note(bootstrap_summary(report.estimates)))
    if report.reward_model is not None:
        fit = report.reward_model
        lines.append(
            f"reward model: logistic, {fit.features.describe()}, l2 {fit.l2:g}, "
            f"{fit.n_folds}-fold cross-fitted, CV log-loss {fit.cv_log_loss:.5f}"
        )
    return "\n".join(lines)
