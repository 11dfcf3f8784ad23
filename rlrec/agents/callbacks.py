"""Training callbacks: recommendation metrics for TensorBoard, the hparams table, checkpoints.

TensorBoard tags (under the run directory's ``tensorboard/``):

* ``charts/``: ``episode_return``, ``session_length``, ``engage_rate``, ``buys_per_session``,
  ``category_coverage`` (distinct categories recommended per session / K) and
  ``recommendation_entropy`` (entropy in nats of the categories recommended during the
  rollout), over the episodes that ended in each rollout;
* SB3's own: ``train/`` (``policy_gradient_loss``, ``value_loss``, ``entropy_loss``,
  ``approx_kl``, ``clip_fraction``, ``explained_variance``, ``loss``), ``time/fps``;
* the ``hparams`` table (the agent configuration, with the mean return as its metric).

Checkpoints: ``checkpoints/step_<N>.safetensors`` + ``step_<N>.json`` every
``checkpoint_every`` env steps, in the safe policy format of :mod:`rlrec.agents.artifacts`
(each file synced and renamed into place, the JSON last, so a crash never leaves a checkpoint
that loads half-written); the oldest beyond ``keep_checkpoints``, by the step stored inside,
are removed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HParam

from rlrec.agents.artifacts import checkpoint_files, save_policy
from rlrec.envs.dynamics import OUTCOMES
from rlrec.envs.sb3_vec_env import BatchedVecEnv
from rlrec.errors import UserError

_BUY = OUTCOMES.index("buy")
__all__ = ["AtomicCheckpoint", "RecommendationMetrics", "TqdmProgress", "checkpoint_files"]


class RecommendationMetrics(BaseCallback):
    """Log per-session recommendation metrics under ``charts/`` at the end of each rollout.

    Reads what each step did from the simulator (``BatchedVecEnv.last_step``) beneath any
    wrappers, and the actions PPO took.

    Args:
        hparams: The hyperparameters for TensorBoard's hparams table (flat scalars/strings).
    """

    def __init__(self, hparams: dict[str, Any] | None = None) -> None:
        super().__init__(verbose=0)
        self.hparams = hparams or {}
        self._sim: BatchedVecEnv | None = None

    def _on_training_start(self) -> None:
        base = self.training_env.unwrapped
        if not isinstance(base, BatchedVecEnv):
            raise UserError("RecommendationMetrics needs the rlrec BatchedVecEnv")
        self._sim = base
        dyn = base.env.dynamics
        self._item_category = dyn.item_category
        self._k = dyn.n_categories
        n = base.num_envs
        self._return = np.zeros(n)
        self._length = np.zeros(n, dtype=np.int64)
        self._engaged = np.zeros(n, dtype=np.int64)
        self._buys = np.zeros(n, dtype=np.int64)
        self._seen = np.zeros((n, self._k), dtype=bool)
        self._reset_rollout()
        if self.hparams:
            self.logger.record(
                "hparams",
                HParam(self.hparams, {"charts/episode_return": 0.0, "train/value_loss": 0.0}),
                exclude=("stdout", "log", "json", "csv"),
            )

    def _reset_rollout(self) -> None:
        self._episodes: list[tuple[float, int, int, int, int]] = []
        self._category_counts = np.zeros(self._k, dtype=np.int64)

    def _on_step(self) -> bool:
        assert self._sim is not None
        result = self._sim.last_step
        if result is None:
            return True
        actions = np.asarray(self.locals["actions"], dtype=np.int64).reshape(-1)
        categories = self._item_category[actions]
        rows = np.arange(len(actions))
        self._return += result.reward
        self._length += 1
        self._engaged += result.engaged
        self._buys += result.outcome == _BUY
        self._seen[rows, categories] = True
        self._category_counts += np.bincount(categories, minlength=self._k)
        for i in np.flatnonzero(result.terminated | result.truncated).tolist():
            self._episodes.append(
                (
                    float(self._return[i]),
                    int(self._length[i]),
                    int(self._engaged[i]),
                    int(self._buys[i]),
                    int(self._seen[i].sum()),
                )
            )
            self._return[i] = 0.0
            self._length[i] = self._engaged[i] = self._buys[i] = 0
            self._seen[i] = False
        return True

    def _on_rollout_end(self) -> None:
        counts = self._category_counts
        if counts.sum():
            p = counts[counts > 0] / counts.sum()
            self.logger.record("charts/recommendation_entropy", float(-(p * np.log(p)).sum()))
        if self._episodes:
            ep = np.asarray(self._episodes, dtype=np.float64)  # (E, 5)
            self.logger.record("charts/episode_return", float(ep[:, 0].mean()))
            self.logger.record("charts/session_length", float(ep[:, 1].mean()))
            self.logger.record("charts/engage_rate", float((ep[:, 2] / ep[:, 1]).mean()))
            self.logger.record("charts/buys_per_session", float(ep[:, 3].mean()))
            self.logger.record("charts/category_coverage", float(ep[:, 4].mean() / self._k))
            self.logger.record("charts/episodes", len(ep))
        self._reset_rollout()


class AtomicCheckpoint(BaseCallback):
    """Save the model every ``every`` env steps as ``checkpoints/step_<N>.*``, atomically.

    Args:
        directory: The checkpoint folder.
        every: Env steps between checkpoints (counted over all users).
        keep: Most recent checkpoints kept.
    """

    def __init__(self, directory: str | os.PathLike[str], every: int, keep: int = 3) -> None:
        super().__init__(verbose=0)
        self.directory = Path(directory)
        self.every = every
        self.keep = keep
        self._next = 0

    def _on_training_start(self) -> None:
        # Continue the schedule of a resumed run instead of saving at once.
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self.save()
            while self._next <= self.num_timesteps:
                self._next += self.every
        return True

    def save(self) -> Path:
        """Write a checkpoint now and prune old ones."""
        path = save_policy(self.model, self.directory, f"step_{self.num_timesteps}")
        for _, old in checkpoint_files(self.directory)[: -self.keep]:
            # The descriptor first: a crash in between leaves weights no one lists.
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)
        return path


class TqdmProgress(BaseCallback):
    """A tqdm progress bar over env steps (SB3's own bar needs ``rich``, not a dependency).

    Args:
        total: Env steps this ``learn`` call will take.
    """

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self._bar: Any = None
        self._start = 0

    def _on_training_start(self) -> None:
        from tqdm.auto import tqdm

        self._start = self.num_timesteps
        self._bar = tqdm(total=self.total, unit="step", desc="PPO", dynamic_ncols=True)

    def _on_step(self) -> bool:
        # Called once per vectorized step: set the bar to the steps done (n_envs each).
        self._bar.n = min(self.num_timesteps - self._start, self.total)
        self._bar.refresh()
        return True

    def _on_training_end(self) -> None:
        if self._bar is not None:
            self._bar.close()
