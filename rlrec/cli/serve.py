"""``rlrec export`` and ``rlrec serve``: a trained policy behind HTTP; ``rlrec ope served``."""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import os
import socket
import sys
from pathlib import Path

from rlrec.cli.parsing import HelpFormatter
from rlrec.errors import UserError

__all__ = [
    "add_served_parser",
    "register",
]

SERVE_EXTRA = "pip install 'rlrec[serve]'"
KEEP_ALIVE_S = 30
"""Seconds an idle keep-alive connection stays open (uvicorn's default of 5 closes pooled
client connections under them while a slow batch is answered elsewhere: a spurious
connection error on the client's next request)."""
WORKER_START_S = 300
"""Seconds a new worker may take to import torch and load its model when uvicorn's parent
replaces the workers on SIGHUP; uvicorn's default of 5 s aborts the replacement (the old
workers keep serving the old model) whenever loading takes longer."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec export`` and ``rlrec serve``."""
    export = sub.add_parser(
        "export",
        help="write what serving a finished run's policy needs (no executable content)",
        description=(
            "Copies a finished run's policy (safetensors + JSON), its encoder, the item and "
            "category vocabularies and the scoring settings into DIR, with a manifest of "
            "SHA-256 checksums that 'rlrec serve' checks. Refuses a run without its final "
            "policy, one being trained, or one in the old pickle format."
        ),
        formatter_class=HelpFormatter,
    )
    export.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of 'rlrec train'")
    export.add_argument("--out", required=True, metavar="DIR", help="the export directory")
    export.add_argument(
        "--model-version", default=None, help="version the server reports (default: derived)"
    )
    export.add_argument("--force", action="store_true", help="replace an earlier export at DIR")
    export.add_argument("--json", action="store_true", help="print what was written as JSON")
    export.set_defaults(handler=_export)

    serve = sub.add_parser(
        "serve",
        help="serve an export over HTTP (FastAPI + uvicorn; needs rlrec[serve])",
        description=(
            "POST /recommend and /recommend/batch answer slates with raw ids, scores, "
            "categories and propensities; GET /health, /ready, /metadata; OpenAPI at /docs. "
            "--log appends what was served (and POST /feedback rewards) for 'rlrec ope "
            "served'. A new export is swapped in without a failed request by POST "
            "/admin/reload (loopback clients; X-Admin-Token when a token is set) or SIGHUP."
        ),
        formatter_class=HelpFormatter,
    )
    serve.add_argument("export_dir", metavar="DIR", help="an export of 'rlrec export'")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    serve.add_argument("--port", type=int, default=8000, help="TCP port")
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument("--log", default=None, metavar="FILE", help="traffic log (JSONL) to append")
    serve.add_argument(
        "--admin-token",
        default=None,
        help="token /admin/reload requires (default: $RLREC_SERVE_ADMIN_TOKEN, else none)",
    )
    serve.add_argument("--seed", type=int, default=0, help="seed of 'sample' draws")
    serve.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    serve.add_argument(
        "--max-batch", type=int, default=64, help="requests scored in one forward pass at most"
    )
    serve.add_argument(
        "--json", action="store_true", help="print the startup record (version, URL) as JSON"
    )
    serve.set_defaults(handler=_serve)


def add_served_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec ope served`` (evaluate a policy from a server's traffic log)."""
    served = verbs.add_parser(
        "served",
        help="estimate an exported policy's value from 'rlrec serve --log' traffic",
        description=(
            "Reads a traffic log of 'rlrec serve --log' (sample-mode requests, with rewards "
            "from POST /feedback) and estimates the first-item value of the policy in "
            "--policy (an export) with IPW and self-normalised IPW, bootstrap intervals. The "
            "behaviour propensities are the ones logged; greedy traffic is skipped."
        ),
        formatter_class=HelpFormatter,
    )
    served.add_argument("--log", required=True, metavar="FILE", help="the traffic log")
    served.add_argument("--policy", required=True, metavar="DIR", help="the target's export")
    served.add_argument(
        "--mode", choices=("sample", "greedy"), default="sample", help="the target's mode"
    )
    served.add_argument(
        "--missing-reward",
        default="0",
        help="reward of a request without feedback: a number, or 'drop' to leave it out",
    )
    served.add_argument("--n-bootstrap", type=int, default=200, help="bootstrap resamples")
    served.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    served.add_argument("--json", action="store_true", help="print the report as JSON")
    served.set_defaults(handler=_ope_served)


def _export(args: argparse.Namespace) -> int:
    from rlrec.serving.export import export_run

    result = export_run(args.run_dir, args.out, args.force, args.model_version)
    if args.json:
        payload = {"out": str(result.out), "model_version": result.model_version}
        json.dump({**payload, "files": result.files}, sys.stdout, indent=2)
        print()
    else:
        size = sum(result.files.values())
        print(
            f"exported {result.model_version} to {result.out} "
            f"({len(result.files)} files, {size / 1e6:.1f} MB)"
        )
    return 0


def _check_port(host: str, port: int) -> None:
    """A clear error for a port that is taken, before uvicorn logs its own."""
    if not 0 < port < 65536:
        raise UserError(f"--port: {port}, expected 1..65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"--port {port}: already in use on {host}; choose another"
                ) from None
            raise UserError(
                f"--host {host} --port {port}: cannot listen ({exc.strerror})"
            ) from None


def _serve(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise UserError(f"rlrec serve needs the serve extra: {SERVE_EXTRA}")
    for name in ("workers", "threads", "max_batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    import uvicorn

    from rlrec.serving.app import CONFIG_ENV, ServeConfig, config_to_env, create_app
    from rlrec.serving.scorer import Scorer

    # Load once here so that a broken export is one line and exit 2, not a worker's crash.
    scorer = Scorer.load(args.export_dir)
    if args.log is not None:
        from rlrec.serving.traffic_log import TrafficLogWriter

        TrafficLogWriter(args.log).close()  # a log that cannot be appended to fails now
    _check_port(args.host, args.port)
    config = ServeConfig(
        export_dir=str(Path(args.export_dir).resolve()),
        log_path=None if args.log is None else str(Path(args.log).resolve()),
        admin_token=args.admin_token,
        seed=args.seed,
        threads=args.threads,
        max_batch=args.max_batch,
        background_load=args.workers == 1,
    )
    url = f"http://{args.host}:{args.port}"
    if args.json:
        record = {"model_version": scorer.model_version, "url": url, "workers": args.workers}
        print(json.dumps({**record, "export_dir": config.export_dir}), flush=True)
    else:
        print(
            f"rlrec serve: {scorer.model_version} from {args.export_dir} on {url} "
            f"({args.workers} worker(s); API docs at {url}/docs)",
            file=sys.stderr,
            flush=True,
        )
    del scorer
    if args.workers == 1:
        uvicorn.run(
            create_app(config),
            host=args.host,
            port=args.port,
            access_log=False,
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    else:
        # Workers are separate processes: they read the configuration from the environment.
        os.environ[CONFIG_ENV] = config_to_env(config)
        uvicorn.run(
            "rlrec.serving.app:create_app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            access_log=False,
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_worker_healthcheck=WORKER_START_S,
        )
    return 0


def _ope_served(args: argparse.Namespace) -> int:
    from rlrec.serving.scorer import Scorer
    from rlrec.serving.traffic_log import evaluate_traffic, read_traffic_log

    if args.n_bootstrap < 0:
        raise UserError(f"--n-bootstrap: expected >= 0, got {args.n_bootstrap}")
    missing: float | None
    if args.missing_reward == "drop":
        missing = None
    else:
        try:
            missing = float(args.missing_reward)
        except ValueError:
            raise UserError(
                f"--missing-reward: {args.missing_reward!r:.40} is neither a number nor 'drop'"
            ) from None
    log = read_traffic_log(args.log)
    target = Scorer.load(args.policy)
    report = evaluate_traffic(log, target, args.mode, missing, args.n_bootstrap, args.seed)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    counts = report["counts"]
    print(
        f"target {report['target']['model_version']} ({args.mode}) from {report['n_decisions']} "
        f"sample-mode decisions of {args.log} (behaviour {', '.join(report['behaviour_versions'])})"
    )
    print(
        f"  skipped: {counts['greedy_skipped']} greedy, {counts['empty_slate']} empty slates; "
        f"{counts['no_feedback']} without feedback; {counts['torn_lines']} torn lines"
    )
    print(f"  behaviour mean reward {report['behaviour_mean_reward']:.4f}")
    for name, est in report["estimates"].items():
        low, high = est["ci95"]
        interval = "" if low is None else f"  95% CI [{low:.4f}, {high:.4f}]"
        value = "undefined" if est["value"] is None else f"{est['value']:.4f}"
        print(f"  {name:6s} {value}{interval}")
    print(
        f"  effective sample size {report['effective_sample_size']:.1f}, "
        f"max weight {report['max_weight']:.2f}"
    )
    return 0
