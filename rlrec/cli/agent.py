"""``rlrec train`` and ``rlrec evaluate``: train PPO on the simulator; compare it with baselines."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rlrec.cli.parsing import HelpFormatter

__all__ = [
    "DEFAULT_LOG_DIR",
    "format_table",
    "register",
]

DEFAULT_LOG_DIR = "logs"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec train`` and ``rlrec evaluate``."""
    fmt = HelpFormatter
    train = sub.add_parser(
        "train",
        help="train a PPO recommender on the simulator (builds missing artifacts first)",
        description=(
            "Builds or reuses the env preset's dataset, user model and encoder (cached by "
            "configuration under --cache-dir), then trains stable-baselines3 PPO on the "
            "batched simulator. Writes logs/<run-name>/ with config.yaml, TensorBoard logs, "
            "checkpoints/ and policy.safetensors + policy.json (a format that runs no code "
            "when opened)."
        ),
        formatter_class=fmt,
    )
    train.add_argument(
        "--env", default="synthetic", help="env preset: a YAML path or a bundled name"
    )
    train.add_argument("--agent", default="ppo", help="agent preset: a YAML path or a bundled name")
    train.add_argument("--timesteps", type=int, help="env steps (default: the agent preset's)")
    train.add_argument("--seed", type=int, default=0, help="seed of the policy and the users")
    train.add_argument("--run-name", help="run directory name under --log-dir")
    train.add_argument("--log-dir", default=DEFAULT_LOG_DIR, help="parent of run directories")
    train.add_argument("--cache-dir", default="logs/cache", help="artifact cache")
    train.add_argument(
        "--resume", action="store_true", help="continue --run-name from its newest checkpoint"
    )
    train.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: when stderr is a terminal)",
    )
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.set_defaults(handler=_train)

    ev = sub.add_parser(
        "evaluate",
        help="evaluate a trained run and every baseline on the same seeded users",
        description=(
            "Rolls out the run's policy and the baselines (greedy supervised, random, "
            "popular, category-Markov, oracle-myopic) on the same seeded simulated users; "
            "mean return, session length, engage rate, buys and category coverage with 95% "
            "confidence intervals, and the agent's ratio to the best non-oracle baseline. "
            "Writes RUN_DIR/eval.json, or RUN_DIR/eval_truth.json with --world truth."
        ),
        formatter_class=fmt,
    )
    ev.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of 'rlrec train'")
    ev.add_argument("--episodes", type=int, default=1000, help="simulated users per policy")
    ev.add_argument("--seed", type=int, default=12345, help="seed of the users")
    ev.add_argument(
        "--stochastic", action="store_true", help="sample the agent's actions (default: mode)"
    )
    ev.add_argument(
        "--world",
        choices=("fitted", "truth"),
        default="fitted",
        help="fitted: the run's simulator; truth: the world that produced the log "
        "(synthetic data only: the sim-to-real check)",
    )
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.set_defaults(handler=_evaluate)


def _train(args: argparse.Namespace) -> int:
    from rlrec.agents.artifacts import check_run_name
    from rlrec.agents.config import load_agent_config
    from rlrec.agents.train import default_run_name, train_agent
    from rlrec.errors import UserError

    if args.timesteps is not None and args.timesteps < 1:
        raise UserError(f"--timesteps: {args.timesteps}, expected >= 1")
    if args.resume and not args.run_name:
        raise UserError("--resume needs --run-name NAME (the run directory to continue)")
    if Path(args.log_dir).exists() and not Path(args.log_dir).is_dir():
        raise UserError(f"--log-dir {args.log_dir}: is a file; pass the folder for run directories")
    if args.run_name is not None:
        check_run_name(args.run_name)  # the run stays inside --log-dir
    agent = load_agent_config(args.agent)
    name = args.run_name or default_run_name(args.env, args.agent, args.seed)
    run_dir = Path(args.log_dir) / name
    result = train_agent(
        args.env,
        agent,
        run_dir,
        timesteps=args.timesteps,
        seed=args.seed,
        resume=args.resume,
        cache_dir=args.cache_dir,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
    )
    summary = {
        "run_dir": str(result.run_dir),
        "policy": str(result.policy_path),
        "timesteps": result.timesteps,
        "seconds": round(result.seconds, 3),
        "fps": round(result.fps, 1),
        "resumed_from": result.resumed_from,
        "reused": list(result.reused),
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        resumed = (
            f", resumed from step {result.resumed_from}" if result.resumed_from is not None else ""
        )
        print(
            f"trained {result.timesteps} steps in {result.seconds:.1f} s "
            f"({result.fps:.0f} steps/s{resumed}); run directory {result.run_dir}"
        )
        print(f"evaluate with: rlrec evaluate {result.run_dir}")
        print(f"curves with:   tensorboard --logdir {result.run_dir / 'tensorboard'}")
    return 0


def format_table(payload: dict[str, Any]) -> str:
    """A plain-text table of an evaluation payload."""
    lines = [
        f"{payload['episodes']} users per policy, seed {payload['seed']}, "
        f"{payload.get('world', 'fitted')} world (95% intervals)",
        f"{'policy':<18} {'return':>22} {'length':>7} {'engage':>7} {'buys':>6} {'coverage':>8}",
    ]
    lifecycle = any("sessions_per_user" in r for r in payload["policies"].values())
    if lifecycle:
        lines[1] += f" {'sessions':>8} {'ret_d7':>6} {'ret_d30':>7}"
    for name, r in payload["policies"].items():
        lo, hi = r["return_ci95"]
        line = (
            f"{name:<18} {r['return_mean']:>8.3f} [{lo:>5.2f}, {hi:>5.2f}] "
            f"{r['session_length_mean']:>7.2f} {r['engage_rate']:>7.3f} {r['buys_mean']:>6.3f} "
            f"{r['coverage']:>8.4f}"
        )
        if lifecycle:
            line += (
                f" {r['sessions_per_user']:>8.3f} {_share(r.get('retention_d7')):>6}"
                f" {_share(r.get('retention_d30')):>7}"
            )
        lines.append(line)
    if payload.get("ratio_to_best_baseline") is not None:
        ci = payload.get("ratio_ci95")
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        lines.append(
            f"ppo / best non-oracle baseline ({payload['best_baseline']}): "
            f"{payload['ratio_to_best_baseline']:.3f}{interval}"
            + ("; intervals apart" if payload["win"] else "")
        )
    if payload.get("agent_acts_by") == "adaptive_plan":
        lines.append(
            "the ppo row is the run's adaptive plan: its never-lose check preferred it to "
            "PPO's training (robust.json)"
        )
    return "\n".join(lines)


def _share(value: float | None) -> str:
    """A retention share for the table; ``-`` where the horizon does not reach that day."""
    return "-" if value is None else f"{value:.3f}"


def _evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rlrec.workflows.evaluate import evaluate_run

    # A bar over the policies (a minute or more at the default 1000 users), on a terminal
    # only, so that piped and --json output stays clean.
    with tqdm(
        desc="evaluate",
        unit="policy",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        leave=False,
    ) as bar:
        started: list[str] = []

        def progress(name: str) -> None:
            if started:  # called before each policy: the previous one is done
                bar.update(1)
            started.append(name)
            bar.set_postfix_str(name)

        payload = evaluate_run(
            args.run_dir, args.episodes, args.seed, not args.stochastic, progress, args.world
        )
    if args.json:
        json.dump(payload, sys.stdout, indent=2)
        print()
    else:
        print(format_table(payload))
        name = "eval.json" if args.world == "fitted" else "eval_truth.json"
        print(f"written to {Path(args.run_dir) / name}")
    return 0
