"""``rlrec env``: build an env preset's artifacts, and check and roll out the simulator."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rlrec.cli.parsing import HelpFormatter
from rlrec.errors import UserError

__all__ = [
    "register",
]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec env`` and its verbs."""
    parser = sub.add_parser(
        "env",
        help="build, check and roll out the interest-drift simulator",
        formatter_class=HelpFormatter,
    )
    verbs = parser.add_subparsers(dest="env_command", metavar="VERB", required=True)

    build = verbs.add_parser(
        "build",
        help="build (or reuse) a preset's PreparedDataset and SimModel",
        description=(
            "Build the dataset and the fitted SimModel that an env preset names, or reuse them "
            "from the cache, where they are keyed by a hash of their configuration."
        ),
        formatter_class=HelpFormatter,
    )
    build.add_argument("preset", metavar="PRESET", help="bundled name (synthetic, taobao) or YAML")
    build.add_argument("--cache", default="logs/cache", help="cache directory")
    build.add_argument("--json", action="store_true", help="print the paths as JSON")
    build.set_defaults(handler=_build)

    rollout = verbs.add_parser(
        "rollout",
        help="roll out a simple policy in the batched simulator and report returns",
        description=(
            "Simulate episodes of a preset's env (built or reused first) under a simple policy: "
            "random (uniform over the catalog) or popular (always the most popular item), and "
            "report the mean episode return, length and engagement rate."
        ),
        formatter_class=HelpFormatter,
    )
    rollout.add_argument("preset", metavar="PRESET", help="bundled name or YAML")
    rollout.add_argument("--cache", default="logs/cache", help="cache directory")
    rollout.add_argument(
        "--policy",
        choices=("random", "popular"),
        default="random",
        help="uniform over the catalog, or always the most popular item",
    )
    rollout.add_argument("--episodes", type=int, default=10_000, help="episodes to finish")
    rollout.add_argument("--users", type=int, default=1024, help="simultaneous users")
    rollout.add_argument("--seed", type=int, default=0, help="seed of the rollout")
    rollout.add_argument("--json", action="store_true", help="print the report as JSON")
    rollout.set_defaults(handler=_rollout)


def _build(args: argparse.Namespace) -> int:
    from rlrec.envs.presets import build_artifacts, load_env_preset

    preset = load_env_preset(args.preset)
    started = time.perf_counter()
    artifacts = build_artifacts(preset, args.cache)
    report = {
        "preset": preset.name,
        "dataset_dir": str(artifacts.dataset_dir),
        "sim_dir": str(artifacts.sim_dir),
        "reused": list(artifacts.reused),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"dataset:   {report['dataset_dir']}")
        print(f"sim model: {report['sim_dir']}")
        print(f"reused:    {', '.join(artifacts.reused) or 'nothing'} ({report['seconds']} s)")
    return 0


def _rollout(args: argparse.Namespace) -> int:
    import numpy as np

    from rlrec.envs.batched import make_batched_env
    from rlrec.envs.presets import build_artifacts, load_env_preset

    if args.episodes < 1 or args.users < 1:
        raise UserError("--episodes and --users must be >= 1")
    preset = load_env_preset(args.preset)
    artifacts = build_artifacts(preset, args.cache)
    env = make_batched_env(artifacts.spec(num_envs=args.users))
    rng = np.random.default_rng(args.seed)
    n_actions = env.dynamics.n_actions
    returns: list[float] = []
    lengths: list[int] = []
    engaged = steps = 0
    # Rounds of one whole episode per user slot: counting episodes as they end would favour
    # short ones (long episodes still running at the stop would be left out).
    for round_index in range(-(-args.episodes // args.users)):
        env.reset(seed=args.seed + round_index)
        active = np.arange(args.users) < args.episodes - len(returns)  # (users,) counted slots
        total = np.zeros(args.users)
        length = np.zeros(args.users, dtype=np.int64)
        while active.any():
            if args.policy == "random":
                actions = rng.integers(0, n_actions, args.users)
            else:  # catalog item 0 is the most popular
                actions = np.zeros(args.users, dtype=np.int64)
            _, reward, terminated, truncated, info = env.step(actions)
            total += np.where(active, reward, 0.0)
            length += active
            engaged += int(info["engaged"][active].sum())
            steps += int(active.sum())
            done = active & (terminated | truncated)
            returns.extend(total[done].tolist())
            lengths.extend(length[done].tolist())
            active &= ~done
    report: dict[str, Any] = {
        "preset": preset.name,
        "policy": args.policy,
        "episodes": len(returns),
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_episode_length": float(np.mean(lengths)),
        "engagement_rate": engaged / steps,
        "seed": args.seed,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{report['policy']} policy over {report['episodes']} episodes: return "
            f"{report['mean_return']:.3f} +- {report['std_return']:.3f}, length "
            f"{report['mean_episode_length']:.2f}, engagement {report['engagement_rate']:.3%}"
        )
    return 0
