"""Evaluation policies for bandit OPE, and the ``--policy SPEC`` parser.

An evaluation policy is given to the estimators as its action distribution over items and
slate positions, shape (n_rounds or 1, n_actions, len_list). Context-free policies (uniform
random, Bernoulli Thompson Sampling with a fixed prior) have one distribution for every
round and return shape (1, n_actions, len_list), which the estimators broadcast.

SPEC forms (see :func:`parse_policy_spec`):

- ``random``: uniform over items at every position (OBP's ``Random``);
- ``bts:PRIOR.json`` or ``bts:PRIOR.json#CAMPAIGN``: Bernoulli Thompson Sampling with the
  Beta prior in the file (OBP's ``BernoulliTS`` with ``is_zozotown_prior=True`` before any
  update), its distribution computed by seeded Monte Carlo;
- a run directory of a trained rlrec policy (``policy.json``, ``config.yaml`` or an older
  ``policy.zip`` inside).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from rlrec.data.bandit import BanditFeedback
from rlrec.errors import UserError

__all__ = [
    "RUN_DIRECTORY_MARKERS",
    "RUN_POLICY_ACTION_DIST",
    "BanditEvaluationPolicy",
    "BernoulliTSPolicy",
    "RunDirectoryPolicy",
    "RunPolicyActionDist",
    "UniformRandomPolicy",
    "bts_action_dist",
    "load_bts_prior",
    "parse_policy_spec",
    "uniform_action_dist",
]

RUN_DIRECTORY_MARKERS = ("policy.json", "policy.zip", "config.yaml")
"""Files that make a directory an rlrec run directory (see DESIGN.md, "Run directory")."""


class BanditEvaluationPolicy(Protocol):
    """What bandit OPE needs from an evaluation policy."""

    @property
    def name(self) -> str:
        """A label for reports."""
        ...

    def action_dist(self, feedback: BanditFeedback) -> np.ndarray:
        """(n_rounds or 1, n_actions, len_list) probabilities, summing to 1 over actions."""
        ...


def uniform_action_dist(n_actions: int, len_list: int) -> np.ndarray:
    """The uniform random slate policy's marginal distribution.

    A uniformly random slate without repetition shows each item at each position with
    probability ``1 / n_actions``.

    Returns:
        (1, n_actions, len_list) float64.
    """
    return np.full((1, n_actions, len_list), 1.0 / n_actions)


def bts_action_dist(
    alpha: np.ndarray,
    beta: np.ndarray,
    len_list: int,
    n_sim: int = 100_000,
    seed: int = 12345,
    chunk: int = 10_000,
) -> np.ndarray:
    """Bernoulli Thompson Sampling's slate distribution by Monte Carlo.

    As OBP 0.5.7's ``BernoulliTS.compute_batch_action_dist`` (before any update, so the
    posterior is the prior): each simulation draws ``theta_a ~ Beta(alpha_a, beta_a)`` for
    every item, ranks items by ``theta`` in decreasing order and shows the top ``len_list``;
    the distribution at position ``k`` is the frequency with which each item was ranked
    ``k``-th. The draws differ from OBP's (numpy ``Generator`` instead of ``RandomState``),
    so values agree with OBP's up to Monte Carlo error (about ``sqrt(p / n_sim)``).

    Args:
        alpha: (n_actions,) Beta prior successes, > 0.
        beta: (n_actions,) Beta prior failures, > 0.
        len_list: Slots per slate (<= n_actions).
        n_sim: Monte Carlo simulations.
        seed: Seed of the simulations; same seed, same distribution.
        chunk: Simulations drawn at once (bounds memory at chunk x n_actions).

    Returns:
        (1, n_actions, len_list) float64 frequencies; each position's column sums to 1.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    n_actions = alpha.shape[0]
    if not 1 <= len_list <= n_actions:
        raise UserError(f"bts: len_list must lie in [1, {n_actions}], got {len_list}")
    if n_sim < 1:
        raise UserError(f"bts: n_sim must be >= 1, got {n_sim}")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_actions, len_list), dtype=np.int64)
    for start in range(0, n_sim, chunk):
        b = min(chunk, n_sim - start)
        theta = rng.beta(alpha, beta, size=(b, n_actions))  # (b, A)
        # Top len_list items, best first (argpartition then sort only those few).
        top = np.argpartition(-theta, len_list - 1, axis=1)[:, :len_list]  # (b, L) unordered
        order = np.argsort(-np.take_along_axis(theta, top, axis=1), axis=1)
        ranked = np.take_along_axis(top, order, axis=1)  # (b, L)
        for k in range(len_list):
            counts[:, k] += np.bincount(ranked[:, k], minlength=n_actions)
    return (counts / n_sim)[None, :, :]


def load_bts_prior(
    path: str | os.PathLike[str], campaign: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a Beta prior file.

    Accepted layouts: ``{"alpha": [...], "beta": [...]}`` or, as in OBP's
    ``prior_bts.yaml``, ``{"CAMPAIGN": {"alpha": [...], "beta": [...]}, ...}`` (a single
    campaign is used as is; with several, name one).

    Returns:
        (alpha (n_actions,), beta (n_actions,)) float64, all > 0.

    Raises:
        UserError: For a missing or malformed file or an unknown campaign.
    """
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{file}: no such prior file; pass bts:PRIOR.json with a Beta prior")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: not valid JSON ({exc}); fix the prior file") from None
    if not isinstance(data, dict):
        raise UserError(f"{file}: expected a JSON object with alpha and beta")
    if "alpha" not in data:
        campaigns = sorted(k for k, v in data.items() if isinstance(v, dict) and "alpha" in v)
        if campaign is None:
            if len(campaigns) != 1:
                raise UserError(
                    f"{file}: expected alpha and beta, or one campaign holding them; found "
                    f"campaigns {campaigns}; pick one with bts:{file}#CAMPAIGN"
                )
            campaign = campaigns[0]
        if campaign not in campaigns:
            raise UserError(f"{file}: no campaign {campaign!r}; known: {', '.join(campaigns)}")
        data = data[campaign]
    elif campaign is not None:
        raise UserError(f"{file}: holds a single prior, but campaign {campaign!r} was asked for")
    try:
        alpha = np.asarray(data["alpha"], dtype=np.float64)
        beta = np.asarray(data["beta"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{file}: alpha and beta must be lists of positive numbers") from None
    if alpha.ndim != 1 or alpha.shape != beta.shape or alpha.size == 0:
        raise UserError(
            f"{file}: alpha and beta must be equally long lists, got {alpha.shape} and {beta.shape}"
        )
    if not (np.all(np.isfinite(alpha)) and np.all(np.isfinite(beta))):
        raise UserError(f"{file}: alpha and beta must be finite")
    if alpha.min() <= 0 or beta.min() <= 0:
        raise UserError(f"{file}: alpha and beta must be > 0 (Beta distribution parameters)")
    return alpha, beta


@dataclass(frozen=True)
class UniformRandomPolicy:
    """Uniformly random slates: every item equally likely at every position."""

    @property
    def name(self) -> str:
        """``random``."""
        return "random"

    def action_dist(self, feedback: BanditFeedback) -> np.ndarray:
        """(1, n_actions, len_list) uniform probabilities."""
        return uniform_action_dist(feedback.n_actions, feedback.len_list)


@dataclass(frozen=True)
class BernoulliTSPolicy:
    """Bernoulli Thompson Sampling with a fixed Beta prior (context-free).

    Attributes:
        alpha: (n_actions,) prior successes.
        beta: (n_actions,) prior failures.
        n_sim: Monte Carlo simulations for the action distribution.
        seed: Seed of the simulations.
        label: Name for reports.
    """

    alpha: np.ndarray
    beta: np.ndarray
    n_sim: int = 100_000
    seed: int = 12345
    label: str = "bts"

    @property
    def name(self) -> str:
        """The label given at construction."""
        return self.label

    def action_dist(self, feedback: BanditFeedback) -> np.ndarray:
        """(1, n_actions, len_list) Monte Carlo slate distribution."""
        if self.alpha.shape[0] != feedback.n_actions:
            raise UserError(
                f"{self.label}: the prior has {self.alpha.shape[0]} items but "
                f"{feedback.source} has {feedback.n_actions} actions"
            )
        return bts_action_dist(self.alpha, self.beta, feedback.len_list, self.n_sim, self.seed)


@dataclass(frozen=True)
class RunDirectoryPolicy:
    """A trained rlrec policy in a run directory (``policy.json`` / ``config.yaml``).

    A run's policy exposes ``action_probabilities(obs) -> (n, n_actions)`` over *session
    observations* (recent history), while a bandit round carries hashed user features.
    Loading the run and mapping rounds to observations and item probabilities to a slate
    distribution belong to ``rlrec.agents`` (which this package never imports):
    ``loader`` (else the module hook :data:`RUN_POLICY_ACTION_DIST`) is that function,
    ``(run_dir, feedback) -> (n_rounds or 1, n_actions, len_list)``; ``rlrec ope bandit``
    passes ``rlrec.agents.bandit_policy.run_action_dist``.

    Attributes:
        path: The run directory.
        loader: The run's action distribution function, or None for the module hook.
    """

    path: Path
    loader: RunPolicyActionDist | None = None

    @property
    def name(self) -> str:
        """The run directory."""
        return str(self.path)

    def action_dist(self, feedback: BanditFeedback) -> np.ndarray:
        """The run policy's action distribution, via ``loader`` or the module hook."""
        loader = self.loader or RUN_POLICY_ACTION_DIST
        if loader is None:
            raise UserError(
                f"{self.path}: no loader for run-directory policies (pass loader=, as rlrec "
                "ope bandit does with rlrec.agents.bandit_policy.run_action_dist); use "
                "--policy random or bts:PRIOR.json"
            )
        return loader(self.path, feedback)


class RunPolicyActionDist(Protocol):
    """``(run_dir, feedback) -> (n_rounds, n_actions, len_list)`` action distribution."""

    def __call__(self, run_dir: Path, feedback: BanditFeedback) -> np.ndarray: ...  # noqa: D102


RUN_POLICY_ACTION_DIST: RunPolicyActionDist | None = None
"""Default loader for run-directory policies without their own ``loader`` (None: none)."""


def parse_policy_spec(spec: str, n_sim: int = 100_000, seed: int = 12345) -> BanditEvaluationPolicy:
    """Turn a ``--policy`` SPEC into an evaluation policy.

    Args:
        spec: ``random``, ``bts:PRIOR.json[#CAMPAIGN]`` or a run directory.
        n_sim: Monte Carlo simulations for BTS.
        seed: Seed of the BTS simulations.

    Raises:
        UserError: For an unknown form, a missing prior file, or a directory that is not a
            run directory.
    """
    if spec == "random":
        return UniformRandomPolicy()
    if spec.startswith("bts:"):
        rest = spec[len("bts:") :]
        file, _, campaign = rest.partition("#")
        if not file:
            raise UserError("--policy bts: needs a prior file, as in bts:PRIOR.json")
        alpha, beta = load_bts_prior(file, campaign or None)
        return BernoulliTSPolicy(alpha=alpha, beta=beta, n_sim=n_sim, seed=seed, label=spec)
    path = Path(spec)
    if path.is_dir():
        if not any((path / marker).exists() for marker in RUN_DIRECTORY_MARKERS):
            raise UserError(
                f"{path}: not a run directory (no {' or '.join(RUN_DIRECTORY_MARKERS)} inside); "
                "pass a directory written by rlrec train, random, or bts:PRIOR.json"
            )
        return RunDirectoryPolicy(path=path)
    raise UserError(
        f"--policy {spec!r}: expected 'random', 'bts:PRIOR.json' or a run directory "
        "(no such directory)"
    )
