"""``rlrec ope sessions`` and ``rlrec ope replay``: sequential OPE and replay ranking metrics.

Wiring only: policy specs are parsed here and the baselines / trained agents of
``rlrec.agents`` are built here (``rlrec.evaluation`` never imports ``rlrec.agents``).

Policy SPEC: ``BASE[,tau=T][,eps=E]``, the policy ``(1 - E) softmax(scores / T) + E uniform``
(:class:`rlrec.evaluation.session_logging.SoftenedPolicy`), where BASE is

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

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlrec.errors import UserError

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
        from rlrec.evaluation.session_logging import CachedScores, ScorePolicy

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
            run = self.run
            if spec.run_dir is not None:
                from rlrec.agents.train import load_run

                run = load_run(spec.run_dir)
            if run is None:
                raise UserError(
                    "policy ppo: no trained run; pass --simulate RUN_DIR or run:RUN_DIR"
                )
            if getattr(run.policy, "n_actions", a) != a:
                raise UserError(f"policy {spec.text}: the run's action space is not this env's")
            base = run.policy
        self._bases[key] = base
        return base

    def policy(self, spec: PolicySpec, seed: int) -> Any:
        """The stochastic policy of ``spec``."""
        from rlrec.evaluation.session_logging import SoftenedPolicy

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


def add_sessions_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec ope sessions``."""
    p = verbs.add_parser(
        "sessions",
        help="sequential OPE of a policy from logged sessions (simulator check or real logs)",
        description=(
            "Estimate a target policy's expected session return from logged sessions with "
            "trajectory-wise and per-decision importance sampling (IS, WIS, PDIS, WPDIS), the "
            "cross-fitted fitted-Q direct method (DM) and step-wise doubly robust estimators "
            "(DR, weighted DR), each with a session-bootstrap 95% interval. With --simulate, "
            "sessions are logged in the simulator under a known behaviour policy and every "
            "estimate is compared with the target's on-policy value (relative error, per-step "
            "KL). With --data, real logged sessions are used and the behaviour policy is "
            "estimated from the logs. SPEC: BASE[,tau=T][,eps=E] with BASE in "
            f"{', '.join(BASES)} or run:RUN_DIR."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--simulate",
        metavar="ENV_PRESET_OR_RUN_DIR",
        help="log sessions in this simulator (bundled preset, YAML, or a run directory)",
    )
    src.add_argument("--data", metavar="DATA_DIR", help="a PreparedDataset of real sessions")
    p.add_argument(
        "--behaviour",
        metavar="SPEC",
        default="greedy_supervised,tau=1,eps=0.3",
        help="known logging policy (--simulate only); greedy_supervised pretrains the preset's "
        "encoder on first use (cached under --cache-dir)",
    )
    p.add_argument(
        "--target", metavar="SPEC", action="append", required=True, help="target (repeatable)"
    )
    p.add_argument("--sessions", type=int, default=10_000, help="logged sessions (--simulate)")
    p.add_argument(
        "--truth-sessions", type=int, default=10_000, help="on-policy sessions per target"
    )
    p.add_argument("--split", default="test", help="split of real sessions (--data)")
    p.add_argument("--encoder", default=None, help="encoder checkpoint for greedy_supervised")
    p.add_argument("--seed", type=int, default=0, help="seed of the log, folds and bootstrap")
    p.add_argument("--n-bootstrap", type=int, default=200, help="bootstrap resamples")
    p.add_argument("--n-folds", type=int, default=2, help="FQE cross-fitting folds")
    p.add_argument("--cache-dir", default="logs/cache", help="artifact cache (--simulate)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_sessions)


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
) -> dict[str, Any]:
    """The ``rlrec ope sessions --simulate`` report (also used by the benchmark)."""
    from rlrec.evaluation.fqe import FQEConfig
    from rlrec.evaluation.session_logging import SimulatedCheckSettings, simulated_ope_check

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
        fqe=FQEConfig(n_folds=n_folds, seed=seed),
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


def format_simulated(report: dict[str, Any]) -> str:
    """A plain-text table of a ``--simulate`` report."""
    lines = [
        f"{report['sessions']} sessions ({report['logged_steps']} steps) logged in "
        f"{report['source']} by {report['behaviour']} (mean return "
        f"{report['behaviour_value']:.3f}); propensities {report['propensities']}",
    ]
    for name, t in report["targets"].items():
        lo, hi = t["true_ci95"]
        lines.append("")
        lines.append(
            f"target {name}: true value {t['true_value']:.3f} [{lo:.3f}, {hi:.3f}], KL per step "
            f"{t['kl_per_step']:.3f} nats, trajectory ESS {t['ess']:.0f}"
        )
        lines.append(f"  {'estimator':<10} {'estimate':>9} {'95% interval':>22} {'rel. error':>10}")
        for est, e in t["estimates"].items():
            ci = e["ci95"]
            ci_text = "-" if ci[0] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
            value = "nan" if e["value"] is None else f"{e['value']:.3f}"
            rel = t["relative_error"][est]
            mark = " (default)" if est == report["default_estimator"] else ""
            lines.append(f"  {est:<10} {value:>9} {ci_text:>22} {rel:>10.3f}{mark}")
    return "\n".join(lines)


def _sessions(args: argparse.Namespace) -> int:
    for flag in ("sessions", "truth_sessions"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}: expected >= 1")
    if args.n_bootstrap < 0:
        raise UserError(f"--n-bootstrap: expected >= 0, got {args.n_bootstrap}")
    if args.n_folds < 1:
        raise UserError(f"--n-folds: expected >= 1, got {args.n_folds}")

    def say(message: str) -> None:
        if sys.stderr.isatty():
            print(f"... {message}", file=sys.stderr)

    if args.simulate is not None:
        report = run_simulated_check(
            args.simulate,
            args.behaviour,
            args.target,
            args.sessions,
            args.truth_sessions,
            args.seed,
            args.n_bootstrap,
            args.n_folds,
            args.cache_dir,
            progress=say,
        )
        text = format_simulated(report)
    else:
        report = run_real_sessions(args)
        text = format_real(report)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(text)
    return 0


class _ItemSpacePolicy:
    """A catalog policy's probabilities scattered onto all dataset items (0 elsewhere)."""

    def __init__(self, base: Any, item_ids: np.ndarray, n_items: int) -> None:
        self.base = base
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.n_items = n_items

    def action_probabilities(self, obs: dict[str, Any]) -> np.ndarray:
        p = np.asarray(self.base.action_probabilities(obs), dtype=np.float64)
        out = np.zeros((p.shape[0], self.n_items))
        out[:, self.item_ids] = p
        return out


class _TopItemPolicy:
    """Always the most logged item (dataset indices are not ordered by popularity)."""

    def __init__(self, counts: np.ndarray) -> None:
        self.top = int(np.argmax(counts))
        self.n_items = len(counts)

    def action_probabilities(self, obs: dict[str, Any]) -> np.ndarray:
        out = np.zeros((np.asarray(obs["item_history"]).shape[0], self.n_items))
        out[:, self.top] = 1.0
        return out


def data_policy(spec: PolicySpec, dataset: Any, encoder_dir: str | None, seed: int) -> Any:
    """A stochastic policy over all of ``dataset``'s items for ``--data`` and replay.

    Returns:
        The policy and the history length it reads (the run's for a PPO policy, else 20).
    """
    from rlrec.agents.baselines import GreedySupervisedPolicy, RandomPolicy
    from rlrec.evaluation.session_logging import ScorePolicy, SoftenedPolicy

    n = dataset.n_items
    counts = dataset.items["count"].to_numpy(np.float64)
    history = 20
    if spec.base == "random":
        base: Any = RandomPolicy(n)
    elif spec.base == "popular":
        base = _TopItemPolicy(counts)
    elif spec.base == "popularity":
        base = ScorePolicy(np.log(np.maximum(counts, 1.0)), "popularity")
    elif spec.base == "greedy_supervised":
        if encoder_dir is None:
            raise UserError(
                f"policy {spec.text}: pass --encoder DIR (an encoder checkpoint trained on "
                "this dataset, e.g. from 'rlrec encoder train')"
            )
        from rlrec.models.checkpoint import load_encoder

        encoder, _ = load_encoder(encoder_dir, dataset)
        base = GreedySupervisedPolicy(encoder, np.arange(n))
    elif spec.base == "ppo":
        if spec.run_dir is None:
            raise UserError(f"policy {spec.text}: with --data name the run as run:RUN_DIR")
        from rlrec.agents.train import load_run

        run = load_run(spec.run_dir)
        if run.dataset.n_items != n:
            raise UserError(
                f"policy {spec.text}: the run was trained on a dataset with "
                f"{run.dataset.n_items} items, this one has {n}; pass the run's dataset"
            )
        history = run.config.env.history_length
        a = getattr(run.policy, "n_actions", None) or int(
            min(run.config.env.catalog_size, run.sim_model.n_items)
        )
        base = _ItemSpacePolicy(run.policy, run.sim_model.item_ids[:a], n)
    else:
        raise UserError(
            f"policy {spec.text}: {spec.base} needs the simulator's user model; with --data use "
            "random, popular, popularity, greedy_supervised or run:RUN_DIR"
        )
    return SoftenedPolicy(base, spec.text, spec.temperature, spec.epsilon, seed), history


def run_real_sessions(args: argparse.Namespace) -> dict[str, Any]:
    """The ``rlrec ope sessions --data`` report: one entry per target."""
    from rlrec.data.dataset import load_dataset
    from rlrec.evaluation.fqe import FQEConfig
    from rlrec.evaluation.logged_sessions import evaluate_real_sessions

    dataset = load_dataset(args.data)
    targets = {}
    for i, text in enumerate(args.target):
        policy, history = data_policy(parse_policy_spec(text), dataset, args.encoder, args.seed + i)
        targets[text] = evaluate_real_sessions(
            dataset,
            policy.action_probabilities,
            text,
            split=args.split,
            history_length=history,
            n_bootstrap=args.n_bootstrap,
            seed=args.seed,
            fqe=FQEConfig(n_folds=args.n_folds, seed=args.seed),
        )
    return {"data": str(args.data), "targets": targets}


def format_real(report: dict[str, Any]) -> str:
    """A plain-text table of a ``--data`` report."""
    lines = [f"real sessions of {report['data']}"]
    for name, t in report["targets"].items():
        lines += [
            "",
            f"target {name}: {t['sessions']} sessions, {t['decisions']} decisions of the "
            f"{t['split']} split; logged value {t['logged_value']:.3f}",
            f"  propensities: {t['propensities']}",
            f"  meaning: {t['meaning']}",
            f"  KL per step from the estimated behaviour {t['kl_per_step']:.3f} nats, "
            f"trajectory ESS {t['ess']:.1f}",
            f"  {'estimator':<10} {'estimate':>10} {'95% interval':>24}",
        ]
        for est, e in t["estimates"].items():
            ci = e["ci95"]
            ci_text = "-" if ci[0] is None else f"[{ci[0]:.4g}, {ci[1]:.4g}]"
            value = "nan" if e["value"] is None else f"{e['value']:.4g}"
            mark = " (default)" if est == t["default_estimator"] else ""
            lines.append(f"  {est:<10} {value:>10} {ci_text:>24}{mark}")
    return "\n".join(lines)


def add_replay_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec ope replay``."""
    p = verbs.add_parser(
        "replay",
        help="replay ranking metrics: HR@K and NDCG@K of a policy's top K vs the actual next item",
        description=(
            "Replay held-out real sessions: at every step after a session's first, rank all "
            "items by the policy's probabilities given the previous steps (full ranking, ties "
            "count half) and score the actual next item: HR@K, NDCG@K and MRR. SPEC: "
            "random, popular, popularity, greedy_supervised (with --encoder) or run:RUN_DIR, "
            "optionally with ,tau=T and ,eps=E."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True, metavar="DATA_DIR", help="a PreparedDataset")
    p.add_argument("--policy", required=True, metavar="SPEC", help="the policy to replay")
    p.add_argument("--k", type=int, default=10, help="cut-off of HR@K and NDCG@K")
    p.add_argument("--split", default="test", help="held-out split to replay")
    p.add_argument("--encoder", default=None, help="encoder checkpoint for greedy_supervised")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
    from rlrec.data.dataset import load_dataset
    from rlrec.evaluation.logged_sessions import replay_metrics

    dataset = load_dataset(args.data)
    policy, history = data_policy(parse_policy_spec(args.policy), dataset, args.encoder, 0)
    report = {
        "data": str(args.data),
        "policy": args.policy,
        **replay_metrics(dataset, policy.action_probabilities, args.split, history, args.k),
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        k = report["k"]
        print(
            f"{args.policy} on {report['decisions']} decisions of {report['sessions']} "
            f"{report['split']} sessions: HR@{k} {report[f'hr@{k}']:.4f}  "
            f"NDCG@{k} {report[f'ndcg@{k}']:.4f}  MRR {report['mrr']:.4f}"
        )
    return 0
