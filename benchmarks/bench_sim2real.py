"""Sim-to-real benchmark: train in the simulator fitted from a log, evaluate in the log's world.

Usage::

    python benchmarks/bench_sim2real.py --out bench_sim2real.json           # 8 truth worlds
    python benchmarks/bench_sim2real.py --quick --out /tmp/s2r.json         # 2 small worlds
    python benchmarks/bench_sim2real.py --worlds 4 --agent agents/ppo_frozen.yaml --out F
    python benchmarks/bench_sim2real.py --quick --ray --out F      # worlds in parallel on Ray

For each of K truth worlds: a synthetic world with its own organic parameters (generator seed
``100 + w``) and its response to recommendations drawn from the prior
(:data:`rlrec.models.prior.RESPONSE_PRIOR`, which the fit never sees: the organic log does not
show it); generate the organic log, prepare it, fit the user model, pretrain the encoder and
train the default agent on the *fitted* simulator (``rlrec train``); fit the baselines from
the same log; evaluate every policy in the fitted simulator and in the truth world
(``rlrec evaluate --world truth``) on the same seeded users.

Targets (issue 13): ``worst_ratio`` >= 0.98 and ``mean_ratio`` >= 1.10 over 8 worlds, where a
world's ratio is the agent's mean return in the truth world over the best non-oracle
baseline's there.

Keys (flat, unit-named): per world ``world_W_ratio`` (truth), ``world_W_ratio_ci95_lo/hi``,
``world_W_win`` (the agent's 95% interval above the best baseline's), ``world_W_best_baseline``,
``world_W_fitted_ratio``, ``world_W_train_s`` and the drawn response parameters; then
``win_rate``, ``mean_ratio``, ``worst_ratio``, ``fitted_mean_ratio``, ``never_lose_rate`` (share
of worlds with ratio >= 0.98), ``train_s_mean``, the agent preset and the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlrec.agents.config import load_agent_config  # noqa: E402
from rlrec.agents.train import train_agent  # noqa: E402
from rlrec.data.dataset import write_json_atomic  # noqa: E402
from rlrec.models.prior import RESPONSE_PARAMETERS, prior_draws  # noqa: E402
from rlrec.models.synthetic import SyntheticConfig, true_model  # noqa: E402
from rlrec.workflows.evaluate import evaluate_run  # noqa: E402


def draw_response(world: int, rng: np.random.Generator) -> dict[str, float]:
    """Truth world ``world``'s response parameters: every one drawn from the prior."""
    truth = true_model(SyntheticConfig(seed=100 + world))
    draw = prior_draws(truth, 1, rng, RESPONSE_PARAMETERS)[0]
    return dict(zip(RESPONSE_PARAMETERS, (float(v) for v in draw), strict=True))


# Lifecycle worlds (--lifecycle): the truth's return process varies too, each parameter drawn
# uniformly from these ranges around the generator's default (rlrec.models.ground_truth).
RETURN_PRIOR: dict[str, tuple[float, float]] = {
    "churn_intercept": (-4.0, -3.0),
    "churn_slope": (0.5, 1.5),
    "satisfaction_effect": (0.25, 0.75),
    "activity_shape": (1.5, 3.0),
    "gap_shape": (0.7, 1.0),
}


def draw_returns(rng: np.random.Generator) -> dict[str, float]:
    """A truth world's return process: every parameter of :data:`RETURN_PRIOR` drawn."""
    return {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in RETURN_PRIOR.items()}


def world_preset(
    world: int,
    response: dict[str, float],
    n_users: int,
    returns: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The env preset of truth world ``world``: the bundled synthetic one, another world."""
    name = "synthetic_lifecycle.yaml" if returns is not None else "synthetic.yaml"
    base = yaml.safe_load((ROOT / "envs" / name).read_text())
    base["data"]["synthetic"].update(seed=100 + world, n_users=n_users, response=response)
    if returns is not None:
        base["data"]["synthetic"]["returns"] = returns
    return base


def train_and_evaluate(
    args: argparse.Namespace, agent: Any, work: Path, w: int
) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """Train on world ``w``'s fitted simulator; evaluate there and in its truth world."""
    run_dir = work / f"run{w}"
    t0 = time.perf_counter()
    train_agent(
        work / f"world{w}.yaml",
        agent,
        run_dir,
        timesteps=args.timesteps,
        seed=w,
        cache_dir=work / "cache",
    )
    seconds = time.perf_counter() - t0
    fit = evaluate_run(run_dir, args.episodes, seed=12345 + w, world="fitted")
    truth = evaluate_run(run_dir, args.episodes, seed=12345 + w, world="truth")
    return seconds, fit, truth


def ray_worlds(args: argparse.Namespace, agent: Any, work: Path) -> list[Any]:
    """The worlds through rlrec sweep's engine: one Ray Tune trial (1 CPU) per world."""
    from rlrec.workflows.sweep import parallel_map

    outcomes = parallel_map(
        lambda w: train_and_evaluate(args, agent, work, w),
        list(range(args.worlds)),
        address=args.ray_address,
    )
    failed = [f"world {o.index}: {o.error}" for o in outcomes if o.error]
    if failed:
        raise SystemExit("; ".join(failed))
    return [o.value for o in outcomes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=8, help="truth worlds K")
    parser.add_argument("--quick", action="store_true", help="2 worlds of 600 users, 20k steps")
    parser.add_argument(
        "--agent", default=None, help="agent preset (ppo_frozen; ppo_lifecycle with --lifecycle)"
    )
    parser.add_argument(
        "--lifecycle",
        action="store_true",
        help="lifecycle worlds (envs/synthetic_lifecycle.yaml), their return process drawn too",
    )
    parser.add_argument("--timesteps", type=int, default=None, help="override training steps")
    parser.add_argument("--episodes", type=int, default=2000, help="users per evaluation")
    parser.add_argument("--users", type=int, default=2000, help="synthetic users per world")
    parser.add_argument("--seed", type=int, default=0, help="seed of the response draws")
    parser.add_argument("--work", default=None, help="keep runs here (default: a temp dir)")
    parser.add_argument("--out", required=True, help="result JSON")
    parser.add_argument(
        "--ray", action="store_true", help="run the worlds in parallel on Ray (rlrec[ray])"
    )
    parser.add_argument("--ray-address", help="a Ray cluster for --ray (default: a local Ray)")
    args = parser.parse_args()
    args.agent = args.agent or ("ppo_lifecycle" if args.lifecycle else "ppo_frozen")
    if args.quick:
        args.worlds, args.users, args.episodes = 2, 600, 1000
        args.timesteps = args.timesteps or 20_000
    agent = load_agent_config(args.agent)
    if args.quick:
        agent = dataclasses.replace(agent, selection_episodes=500, selection_draws=4)
    rng = np.random.default_rng(args.seed)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sim2real-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "agent_preset": args.agent,
        "lifecycle": args.lifecycle,
        "worlds": args.worlds,
        "users_per_world": args.users,
        "episodes": args.episodes,
        "timesteps": args.timesteps or agent.total_timesteps,
    }
    ratios, fitted, wins, train_s = [], [], [], []
    started = time.perf_counter()
    responses = [draw_response(w, rng) for w in range(args.worlds)]  # the draws, in order
    draws = [draw_returns(rng) if args.lifecycle else None for _ in range(args.worlds)]
    for w, response in enumerate(responses):
        preset_file = work / f"world{w}.yaml"
        preset_file.write_text(yaml.safe_dump(world_preset(w, response, args.users, draws[w])))
    ray_done = ray_worlds(args, agent, work) if args.ray else None
    for w in range(args.worlds):
        response, returns = responses[w], draws[w]
        run_dir = work / f"run{w}"
        seconds, fit, truth = (
            ray_done[w] if ray_done is not None else train_and_evaluate(args, agent, work, w)
        )
        train_s.append(seconds)
        ratios.append(truth["ratio_to_best_baseline"])
        fitted.append(fit["ratio_to_best_baseline"])
        wins.append(truth["win"])
        prefix = f"world_{w}_"
        result.update(
            {
                prefix + "ratio": truth["ratio_to_best_baseline"],
                prefix + "ratio_ci95_lo": truth["ratio_ci95"][0],
                prefix + "ratio_ci95_hi": truth["ratio_ci95"][1],
                prefix + "win": truth["win"],
                prefix + "best_baseline": truth["best_baseline"],
                prefix + "ppo_return": truth["policies"]["ppo"]["return_mean"],
                prefix + "fitted_ratio": fit["ratio_to_best_baseline"],
                prefix + "train_s": round(train_s[-1], 1),
                **{prefix + name: value for name, value in response.items()},
                **{prefix + "returns_" + name: value for name, value in (returns or {}).items()},
            }
        )
        if args.lifecycle:
            for key in ("sessions_per_user", "retention_d30"):
                result[prefix + "ppo_" + key] = truth["policies"]["ppo"][key]
                best = truth["policies"][truth["best_baseline"]]
                result[prefix + "best_baseline_" + key] = best[key]
        robust = json.loads((run_dir / "robust.json").read_text())
        result[prefix + "kept"] = robust.get("final", {}).get("kept", "")
        result[prefix + "plan"] = robust["plan"]["chosen"]
        print(
            f"world {w}: truth ratio {ratios[-1]:.3f} "
            f"[{truth['ratio_ci95'][0]:.3f}, {truth['ratio_ci95'][1]:.3f}] vs "
            f"{truth['best_baseline']}, fitted {fitted[-1]:.3f}, boredom "
            f"{response['leave_streak_factor']:.2f}, train {train_s[-1]:.0f} s",
            flush=True,
        )
    result.update(
        {
            "win_rate": float(np.mean(wins)),
            "mean_ratio": float(np.mean(ratios)),
            "worst_ratio": float(np.min(ratios)),
            "never_lose_rate": float(np.mean(np.array(ratios) >= 0.98)),
            "fitted_mean_ratio": float(np.mean(fitted)),
            "train_s_mean": float(np.mean(train_s)),
            "wall_s": round(time.perf_counter() - started, 1),
            "ray": args.ray,
            "target_worst_met": bool(np.min(ratios) >= 0.98),
            "target_mean_met": bool(np.mean(ratios) >= 1.10),
            "cpu_count": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "machine": platform.processor() or platform.machine(),
        }
    )
    write_json_atomic(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("world_")}, indent=2))


if __name__ == "__main__":
    main()
