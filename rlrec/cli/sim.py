"""``rlrec fit`` (fit the user model) and ``rlrec sim validate`` (simulator fidelity)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from rlrec.cli.parsing import HelpFormatter, add_force, check_out_dir
from rlrec.errors import UserError

__all__ = [
    "register",
]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec fit`` and ``rlrec sim`` with its verbs."""
    fit = sub.add_parser(
        "fit",
        help="fit the user model (interest migration, saturation, leave, response) from data",
        description=(
            "Fit the user model from the train split of a PreparedDataset: the category switch "
            "matrix (smoothing chosen on the valid split), the stay-by-streak saturation curve, "
            "the leave hazard, initial categories, the top-N item catalog with within-category "
            "popularity and the cart/buy funnel. Every parameter's provenance is saved in "
            "SIM_DIR/sim_model.json."
        ),
        formatter_class=HelpFormatter,
    )
    fit.add_argument("data_dir", metavar="DATA_DIR", help="a PreparedDataset directory")
    fit.add_argument("--out", required=True, metavar="SIM_DIR", help="where to write the model")
    fit.add_argument("--top-k", type=int, default=50, help="categories kept; the rest fold")
    fit.add_argument("--catalog-size", type=int, default=1000, help="top-N items in the catalog")
    fit.add_argument("--max-streak", type=int, default=20, help="most stay-by-streak bins")
    fit.add_argument("--max-steps", type=int, default=50, help="most leave-hazard bins")
    fit.add_argument(
        "--engage-base-rate",
        type=float,
        default=None,
        help="engagement base rate for logs with only positive events (default 0.1)",
    )
    add_force(fit, "SimModel")
    fit.add_argument("--json", action="store_true", help="print a JSON summary")
    fit.set_defaults(handler=_fit)

    sim = sub.add_parser(
        "sim", help="inspect and validate a fitted simulator", formatter_class=HelpFormatter
    )
    verbs = sim.add_subparsers(dest="sim_command", metavar="VERB", required=True)
    validate = verbs.add_parser(
        "validate",
        help="compare organic simulated sessions with the held-out test sessions",
        description=(
            "Simulate sessions under the organic policy and compare them with the test split: "
            "Jensen-Shannon divergence of category transitions, KS distances of session and "
            "category-streak lengths, and the step-outcome mix. On synthetic data the fitted "
            "parameters are also compared with the generator's ground truth."
        ),
        formatter_class=HelpFormatter,
    )
    validate.add_argument("sim_dir", metavar="SIM_DIR", help="a SimModel directory")
    validate.add_argument("--data", required=True, metavar="DATA_DIR", help="its PreparedDataset")
    validate.add_argument("--sessions", type=int, default=20_000, help="sessions to simulate")
    validate.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    validate.add_argument(
        "--json",
        action="store_true",
        help="print the report as JSON, with the distributions that 'rlrec report' plots",
    )
    validate.set_defaults(handler=_validate)


def _fit(args: argparse.Namespace) -> int:
    from rlrec.data.dataset import load_dataset
    from rlrec.fsutil import output_lock
    from rlrec.models.transition import FitConfig, fit_sim_model

    for flag, value in (
        ("--top-k", args.top_k),
        ("--catalog-size", args.catalog_size),
        ("--max-streak", args.max_streak),
        ("--max-steps", args.max_steps),
    ):
        if value < 1:
            raise UserError(f"{flag}: expected an integer >= 1, got {value}")
    rate = args.engage_base_rate
    if rate is not None and not 0 < rate < 1:
        raise UserError(f"--engage-base-rate: expected a number in (0, 1), got {rate}")
    check_out_dir(args.out, "sim", args.force)
    config = FitConfig(
        top_k_categories=args.top_k,
        catalog_size=args.catalog_size,
        max_streak=args.max_streak,
        max_steps=args.max_steps,
        engage_base_rate=rate,
    )
    # The lock before the fit: a second writer of the same --out fails at once.
    with output_lock(args.out):
        model = fit_sim_model(load_dataset(args.data_dir), config)
        out = model.save(args.out, force=args.force)
    summary = {
        "sim_dir": str(out),
        "categories": model.n_categories,
        "catalog_items": model.n_items,
        "stay_bins": len(model.stay_by_streak),
        "hazard_bins": len(model.leave_hazard),
        "switch_smoothing": model.info.get("switch_smoothing"),
        "provenance": {
            k: {"source": p.source, "detail": p.detail} for k, p in model.provenance.items()
        },
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"wrote {out}")
    print(
        f"{model.n_categories} categories, {model.n_items} catalog items, "
        f"{len(model.stay_by_streak)} streak bins, {len(model.leave_hazard)} hazard bins, "
        f"switch smoothing alpha={model.info.get('switch_smoothing')}"
    )
    width = max(len(k) for k in model.provenance)
    for name, prov in model.provenance.items():
        print(f"  {name:<{width}}  {prov.source:<8} {prov.detail}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from rlrec.data.dataset import load_dataset
    from rlrec.evaluation.fidelity import format_fidelity, validate_fidelity
    from rlrec.models.sim_model import load_sim_model

    if args.sessions < 1:
        raise UserError(f"--sessions: expected an integer >= 1, got {args.sessions}")
    model = load_sim_model(args.sim_dir)
    dataset = load_dataset(args.data)
    report = validate_fidelity(model, dataset, args.sessions, args.seed)
    if args.json:
        from rlrec.evaluation.fidelity import fidelity_distributions

        # The distributions behind the report's fidelity plot, so that this output saved as
        # fidelity.json beside a run directory is what `rlrec report` reads (as the
        # quickstart's fidelity.json).
        report["distributions"] = fidelity_distributions(model, dataset, args.sessions, args.seed)
        print(json.dumps(_json_safe(report), indent=2))
    else:
        print(format_fidelity(report))
    return 0


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null, so the output is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
