"""``rlrec sweep``: train + evaluate a grid of configurations over seeds, in parallel on Ray."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rlrec.cli.parsing import HelpFormatter, add_force

__all__ = [
    "register",
]

# Sweep-defining options: on --resume, an option left out takes the sweep's recorded value.
_DEFAULTS: dict[str, Any] = {
    "env": "synthetic",
    "agent": "ppo_frozen",
    "seeds": "0",
    "grid": [],
    "samples": None,
    "sample_seed": 0,
    "timesteps": None,
    "episodes": 1000,
    "eval_seed": 12345,
    "world": "fitted",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec sweep``."""
    p = sub.add_parser(
        "sweep",
        help="hyperparameter sweeps and multi-seed runs on Ray (one machine or a cluster)",
        description=(
            "Runs one trial per configuration of --grid (or --samples of them, drawn at "
            "random) and per seed: each a full 'rlrec train' + 'rlrec evaluate', run by Ray "
            "Tune on a local Ray (default) or the cluster at --address, one CPU and one torch "
            "thread per trial. Writes DIR/results.csv and results.md (per configuration, the "
            "mean over seeds of the agent's ratio to the best non-oracle baseline with a 95% "
            "interval), trials.csv, best_agent.yaml (the best configuration as an agent "
            "preset) and each trial's run directory with its TensorBoard logs under "
            "DIR/trials. A failed trial is reported and the others go on; --resume reruns "
            "only the trials without a completion record. Exit 1 when a trial failed or did "
            "not finish."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--env", help="env preset: a YAML path or a bundled name (default: synthetic)")
    p.add_argument(
        "--agent", help="agent preset: a YAML path or a bundled name (default: ppo_frozen)"
    )
    p.add_argument("--seeds", help="comma-separated training seeds (default: 0)")
    p.add_argument(
        "--grid",
        nargs="+",
        action="extend",
        metavar="KEY=V1,V2",
        help="values of a setting: an agent field (learning_rate=1e-3,3e-4) or env.FIELD "
        "(env.max_steps=50,100); the configurations are every combination",
    )
    p.add_argument(
        "--samples", type=int, help="run this many configurations drawn at random from the grid"
    )
    p.add_argument("--sample-seed", type=int, help="seed of the --samples draw (default: 0)")
    p.add_argument(
        "--timesteps", type=int, help="training steps per trial (default: the agent preset's)"
    )
    p.add_argument("--episodes", type=int, help="evaluation users per policy (default: 1000)")
    p.add_argument("--eval-seed", type=int, help="seed of the evaluation users (default: 12345)")
    p.add_argument(
        "--world",
        choices=("fitted", "truth"),
        help="evaluate in the fitted simulator (default) or the log's true world (synthetic)",
    )
    p.add_argument(
        "--address",
        help="a running Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start a "
        "local Ray for the sweep)",
    )
    p.add_argument(
        "--num-cpus",
        type=int,
        help="CPUs of the local Ray, or the most a cluster sweep uses (default: all)",
    )
    p.add_argument("--cpus-per-trial", type=int, default=1, help="CPUs and torch threads per trial")
    p.add_argument("--cache-dir", default="logs/cache", help="artifact cache")
    p.add_argument(
        "--resume", action="store_true", help="continue the sweep in --out (finished trials kept)"
    )
    add_force(p, "sweep")
    p.add_argument("--out", required=True, help="the sweep directory")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_sweep)


def _seeds(text: str) -> tuple[int, ...]:
    from rlrec.errors import UserError

    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected integers separated by commas") from None


def _config(args: argparse.Namespace) -> Any:
    from rlrec.workflows.sweep import SweepConfig, load_sweep_config, parse_grid

    given: dict[str, Any] = {}
    for name in _DEFAULTS:
        value = getattr(args, name)
        if value is not None and value != []:
            given[name] = value
    fields: dict[str, Any] = {}
    if args.resume:
        stored = load_sweep_config(args.out)
        fields = {
            "env": stored.env_preset,
            "agent": stored.agent_preset,
            "seeds": stored.seeds,
            "grid": stored.grid,
            "samples": stored.samples,
            "sample_seed": stored.sample_seed,
            "timesteps": stored.timesteps,
            "episodes": stored.episodes,
            "eval_seed": stored.eval_seed,
            "world": stored.world,
        }
    else:
        fields = dict(_DEFAULTS)
    fields.update(given)  # run_sweep refuses a --resume whose given options differ
    seeds = _seeds(fields["seeds"]) if isinstance(fields["seeds"], str) else fields["seeds"]
    grid = parse_grid(fields["grid"]) if isinstance(fields["grid"], list) else fields["grid"]
    return SweepConfig(
        env_preset=fields["env"],
        agent_preset=fields["agent"],
        seeds=tuple(seeds),
        grid=grid,
        samples=fields["samples"],
        sample_seed=fields["sample_seed"],
        timesteps=fields["timesteps"],
        episodes=fields["episodes"],
        eval_seed=fields["eval_seed"],
        world=fields["world"],
    )


def _sweep(args: argparse.Namespace) -> int:
    from rlrec.errors import UserError
    from rlrec.workflows.sweep import RESULTS_MD, run_sweep

    if args.resume and args.force:
        raise UserError("--resume and --force: pick one (continue the sweep, or start over)")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise UserError(f"--num-cpus: {args.num_cpus}, expected >= 1")
    config = _config(args)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_sweep(
        config,
        args.out,
        cache_dir=args.cache_dir,
        resume=args.resume,
        force=args.force,
        address=args.address,
        num_cpus=args.num_cpus,
        cpus_per_trial=args.cpus_per_trial,
        log=None if args.json else log,
    )
    summary = {
        "out": str(result.out),
        "trials": result.trials,
        "ran": result.ran,
        "ok": result.ok,
        "failed": result.failed,
        "unfinished": result.unfinished,
        "best": result.best,
        "seconds": round(result.seconds, 1),
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print((result.out / RESULTS_MD).read_text(), end="")
        print(
            f"{result.ok} of {result.trials} trials done ({result.ran} run now) in "
            f"{result.seconds:.0f} s; results in {result.out}"
        )
        if result.best is not None:
            print(f"best configuration: {result.out / 'best_agent.yaml'}")
        if result.failed:
            print(
                f"{len(result.failed)} trial(s) failed (errors in results.md and each "
                f"trials/<trial>/result.json); rerun them with --resume"
            )
        if result.unfinished:
            print(
                f"{len(result.unfinished)} trial(s) did not finish (interrupted); run them "
                "with --resume"
            )
    return 1 if result.failed or result.unfinished else 0
