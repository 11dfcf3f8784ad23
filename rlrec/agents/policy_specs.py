"""Policies named on the command line: SPEC parsing and building them for OPE.

This is where the baselines and trained agents of ``rlrec.agents`` meet the estimators of
``rlrec.evaluation`` (which never imports ``rlrec.agents``); the CLI only parses arguments and
prints.

Policy SPEC: ``BASE[,tau=T][,eps=E]``, the policy ``(1 - E) softmax(scores / T) + E uniform``
(:class:`rlrec.evaluation.ope.stochastic_policies.SoftenedPolicy`), where BASE is

* ``random``: uniform over the catalog;
* ``popular``: the most popular item (with ``eps``: epsilon-greedy over popularity);
* ``popularity``: scores = log of the items' logged counts (``tau=1``: sample by popularity);
* ``category_markov``: the top item of the likeliest next category (needs a SimModel);
* ``greedy_supervised``: the pretrained encoder's next-item scores (the preset's encoder,
  built or reused from the cache, or the run's);
* ``ppo``: the trained agent of ``--simulate RUN_DIR`` (or ``run:RUN_DIR``), its action
  probabilities as scores' softmax (``tau=1`` leaves them unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlrec.errors import UserError

__all__ = [
    "BASES",
    "ItemSpacePolicy",
    "PolicySpec",
    "SimulatorContext",
    "TopItemPolicy",
    "data_policy",
    "parse_policy_spec",
    "run_simulated_check",
    "simulator_context",
]

BASES = ("random", "popular", "popularity", "category_markov", "greedy_supervised", "ppo")


@dataclass(frozen=True)
class PolicySpec:
    """A parsed policy SPEC.

    Attributes:
        base: One of :data:`BASES`.
        temperature: Softmax temperature.
        epsilon: Uniform mixture weight.
        run_dir: The run directory of ``run:DIR`` (a PPO base), else None.
        text: The SPEC as given (the report's name).
    """

    base: str
    temperature: float = 1.0
    epsilon: float = 0.0
    run_dir: str | None = None
    text: str = ""


def parse_policy_spec(spec: str) -> PolicySpec:
    """Parse ``BASE[,tau=T][,eps=E]`` (see the module docstring).

    Raises:
        UserError: Naming the SPEC and what is wrong with it.
    """
    parts = [p.strip() for p in spec.split(",")]
    base, run_dir = parts[0], None
    if base.startswith("run:"):
        base, run_dir = "ppo", base[4:]
    if base not in BASES:
        raise UserError(
            f"policy {spec!r}: unknown base {base!r}; expected one of {', '.join(BASES)} or "
            "run:RUN_DIR, optionally followed by ,tau=T and ,eps=E"
        )
    values = {"tau": 1.0, "eps": 0.0}
    for option in parts[1:]:
        key, sep, raw = option.partition("=")
        if not sep or key not in values:
            raise UserError(f"policy {spec!r}: option {option!r} is not tau=T or eps=E")
        try:
            values[key] = float(raw)
        except ValueError:
            raise UserError(f"policy {spec!r}: {key}={raw!r} is not a number") from None
    if not values["tau"] > 0:
        raise UserError(f"policy {spec!r}: tau must be > 0")
    if not 0.0 <= values["eps"] <= 1.0:
        raise UserError(f"policy {spec!r}: eps must lie in [0, 1]")
    return PolicySpec(base, values["tau"], values["eps"], run_dir, spec)


@dataclass
class SimulatorContext:
    """What building policies and envs for ``--simulate`` needs.

    Attributes:
        sim_model: The env's SimModel.
        dataset: Its PreparedDataset.
        env_config: The env settings.
        encoder_loader: Returns the supervised encoder (built or loaded on first use).
        run: A loaded run (``--simulate RUN_DIR``), else None.
    """

    sim_model: Any
    dataset: Any
    env_config: Any
    encoder_loader: Any
    run: Any = None
    _encoder: Any = None
    _bases: dict[str, Any] | None = None

    @property
    def n_actions(self) -> int:
        """A, the env's action count."""
        return int(min(self.env_config.catalog_size, self.sim_model.n_items))

    def make_env(self, n: int) -> Any:
        """A batched env with ``n`` users."""
        from rlrec.envs.batched import BatchedInterestDrift

        return BatchedInterestDrift(n, self.sim_model, self.dataset, self.env_config)

    def encoder(self) -> Any:
        """The supervised encoder (loaded once)."""
        if self._encoder is None:
            self._encoder = self.encoder_loader()
        return self._encoder

    def base(self, spec: PolicySpec) -> Any:
        """The base policy of ``spec`` (shared between specs, encoder scores cached)."""
        from rlrec.agents.baselines import (
            CategoryMarkovPolicy,
            GreedySupervisedPolicy,
            PopularPolicy,
            RandomPolicy,
        )
        from rlrec.evaluation.ope.stochastic_policies import CachedScores, ScorePolicy

        if self._bases is None:
            self._bases = {}
        key = spec.base if spec.run_dir is None else f"run:{spec.run_dir}"
        if key in self._bases:
            return self._bases[key]
        a = self.n_actions
        if spec.base == "random":
            base: Any = RandomPolicy(a)
        elif spec.base == "popular":
            base = PopularPolicy(a)
        elif spec.base == "popularity":
            counts = self.dataset.items["count"].to_numpy(np.float64)
            base = ScorePolicy(np.log(np.maximum(counts[self.sim_model.item_ids[:a]], 1.0)), key)
        elif spec.base == "category_markov":
            base = CategoryMarkovPolicy.from_sim_model(self.sim_model, a)
        elif spec.base == "greedy_supervised":
            base = CachedScores(GreedySupervisedPolicy(self.encoder(), self.sim_model.item_ids[:a]))
        else:
            from rlrec.agents.train import load_run, require_stateless

            run = self.run
            if spec.run_dir is not None:
                run = load_run(spec.run_dir)
            if run is None:
                raise UserError(
                    "policy ppo: no trained run; pass --simulate RUN_DIR or run:RUN_DIR"
                )
            require_stateless(run, f"policy {spec.text}")
            if getattr(run.policy, "n_actions", a) != a:
                raise UserError(f"policy {spec.text}: the run's action space is not this env's")
            base = run.policy
        self._bases[key] = base
        return base

    def policy(self, spec: PolicySpec, seed: int) -> Any:
        """The stochastic policy of ``spec``."""
        from rlrec.evaluation.ope.stochastic_policies import SoftenedPolicy

        return SoftenedPolicy(self.base(spec), spec.text, spec.temperature, spec.epsilon, seed)


def simulator_context(source: str, cache_dir: str) -> SimulatorContext:
    """A context from an env preset (name or YAML) or a run directory of ``rlrec train``."""
    from rlrec.data.dataset import load_dataset
    from rlrec.models.sim_model import load_sim_model

    path = Path(source)
    if path.is_dir() and (path / "config.yaml").is_file():
        from rlrec.agents.train import load_run

        run = load_run(path)
        return SimulatorContext(
            sim_model=run.sim_model,
            dataset=run.dataset,
            env_config=run.config.env,
            encoder_loader=lambda: run.encoder,
            run=run,
        )
    from rlrec.envs.presets import build_artifacts, load_env_preset

    preset = load_env_preset(source)
    artifacts = build_artifacts(preset, cache_dir)
    dataset = load_dataset(artifacts.dataset_dir)

    def load() -> Any:
        from rlrec.agents.train import build_encoder
        from rlrec.models.checkpoint import load_encoder

        enc_dir, _ = build_encoder(preset, artifacts.dataset_dir, cache_dir)
        return load_encoder(enc_dir, dataset)[0]

    return SimulatorContext(
        sim_model=load_sim_model(artifacts.sim_dir),
        dataset=dataset,
        env_config=preset.env,
        encoder_loader=load,
    )


def run_simulated_check(
    source: str,
    behaviour: str,
    targets: list[str],
    sessions: int,
    truth_sessions: int,
    seed: int,
    n_bootstrap: int = 200,
    n_folds: int = 2,
    cache_dir: str = "logs/cache",
    progress: Any = None,
    ratio_power: float = 0.0,
) -> dict[str, Any]:
    """The ``rlrec ope sessions --simulate`` report (also used by the benchmark).

    ``ratio_power`` weighs FQE's regressions by the steps' ratios to that power
    (:attr:`~rlrec.evaluation.ope.fqe.FQEConfig.ratio_power`; 0: unweighted).
    """
    from rlrec.evaluation.ope.fqe import FQEConfig
    from rlrec.evaluation.ope.simulated_check import SimulatedCheckSettings, simulated_ope_check

    b_spec = parse_policy_spec(behaviour)
    t_specs = [parse_policy_spec(t) for t in targets]
    if len({t.text for t in t_specs}) != len(t_specs):
        raise UserError("--target: each target SPEC may be given once")
    ctx = simulator_context(source, cache_dir)
    settings = SimulatedCheckSettings(
        n_sessions=sessions,
        truth_sessions=truth_sessions,
        seed=seed,
        n_bootstrap=n_bootstrap,
        fqe=FQEConfig(n_folds=n_folds, seed=seed, ratio_power=ratio_power),
    )
    behaviour_policy = ctx.policy(b_spec, seed + 101)
    target_policies = {t.text: ctx.policy(t, seed + 202 + i) for i, t in enumerate(t_specs)}
    report = simulated_ope_check(
        ctx.make_env, behaviour_policy, target_policies, settings, progress=progress
    )
    return {
        "source": source,
        "behaviour": behaviour,
        "propensities": "known (logged by the behaviour policy)",
        **report,
    }


class ItemSpacePolicy:
    """A catalog policy's probabilities scattered onto all dataset items (0 elsewhere)."""

    def __init__(self, base: Any, item_ids: np.ndarray, n_items: int) -> None:
        self.base = base
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.n_items = n_items

    def action_probabilities(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, n_items) the base policy's catalog probabilities placed at the catalog items."""
        p = np.asarray(self.base.action_probabilities(obs), dtype=np.float64)
        out = np.zeros((p.shape[0], self.n_items))
        out[:, self.item_ids] = p
        return out


class TopItemPolicy:
    """Always the most logged item (dataset indices are not ordered by popularity)."""

    def __init__(self, counts: np.ndarray) -> None:
        self.top = int(np.argmax(counts))
        self.n_items = len(counts)

    def action_probabilities(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, n_items) one-hot on the most logged item."""
        out = np.zeros((np.asarray(obs["item_history"]).shape[0], self.n_items))
        out[:, self.top] = 1.0
        return out


def data_policy(spec: PolicySpec, dataset: Any, encoder_dir: str | None, seed: int) -> Any:
    """A stochastic policy over all of ``dataset``'s items for ``--data`` and replay.

    Returns:
        The policy and the history length it reads (the run's for a PPO policy, else 20).
    """
    from rlrec.agents.baselines import GreedySupervisedPolicy, RandomPolicy
    from rlrec.evaluation.ope.stochastic_policies import ScorePolicy, SoftenedPolicy

    n = dataset.n_items
    counts = dataset.items["count"].to_numpy(np.float64)
    history = 20
    if spec.base == "random":
        base: Any = RandomPolicy(n)
    elif spec.base == "popular":
        base = TopItemPolicy(counts)
    elif spec.base == "popularity":
        base = ScorePolicy(np.log(np.maximum(counts, 1.0)), "popularity")
    elif spec.base == "greedy_supervised":
        if encoder_dir is None:
            raise UserError(
                f"policy {spec.text}: pass --encoder DIR (an encoder checkpoint trained on "
                "this dataset, e.g. from 'rlrec pretrain')"
            )
        from rlrec.models.checkpoint import load_encoder

        encoder, _ = load_encoder(encoder_dir, dataset)
        base = GreedySupervisedPolicy(encoder, np.arange(n))
    elif spec.base == "ppo":
        if spec.run_dir is None:
            raise UserError(f"policy {spec.text}: with --data name the run as run:RUN_DIR")
        from rlrec.agents.train import load_run, require_stateless

        run = load_run(spec.run_dir)
        require_stateless(run, f"policy {spec.text}")
        if run.dataset.n_items != n:
            raise UserError(
                f"policy {spec.text}: the run was trained on a dataset with "
                f"{run.dataset.n_items} items, this one has {n}; pass the run's dataset"
            )
        history = run.config.env.history_length
        a = getattr(run.policy, "n_actions", None) or int(
            min(run.config.env.catalog_size, run.sim_model.n_items)
        )
        base = ItemSpacePolicy(run.policy, run.sim_model.item_ids[:a], n)
    else:
        raise UserError(
            f"policy {spec.text}: {spec.base} needs the simulator's user model; with --data use "
            "random, popular, popularity, greedy_supervised or run:RUN_DIR"
        )
    return SoftenedPolicy(base, spec.text, spec.temperature, spec.epsilon, seed), history
