"""``rlrec quickstart``: the main job on the embedded synthetic default, end to end.

Each stage calls the library exactly as its own verb does and writes its artifact under
``--out``; the printed summary says where everything is. Stages that exist so far: generate
and prepare the synthetic log, summarize it, fit the user model, validate its fidelity.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rlrec.errors import UserError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec quickstart``."""
    p = sub.add_parser(
        "quickstart",
        help="run the whole pipeline on the embedded synthetic default",
        description=(
            "Generate and prepare the synthetic log (with ground truth), print its statistics, "
            "fit the user model and validate the simulator's fidelity against held-out "
            "sessions and against the generator's true parameters."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("logs/quickstart"), help="output directory")
    p.add_argument("--tiny", action="store_true", help="a small world, for a smoke test")
    p.add_argument("--seed", type=int, default=0, help="random seed of every stage")
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    p.set_defaults(handler=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from rlrec.cli.data import format_stats
    from rlrec.data.dataset import load_dataset
    from rlrec.data.stats import dataset_stats
    from rlrec.evaluation.fidelity import format_fidelity, validate_fidelity
    from rlrec.models.synthetic import SyntheticConfig, generate_dataset
    from rlrec.models.transition import FitConfig, fit_sim_model

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory; choose another path")
    say = _Narrator(quiet=args.json)
    summary: dict[str, Any] = {"out": str(out)}

    with say.stage("generate and prepare the synthetic log"):
        config = SyntheticConfig(seed=args.seed, n_users=200 if args.tiny else 2000)
        data_dir = generate_dataset(out / "data", config)
        ds = load_dataset(data_dir)
        stats = dataset_stats(ds)
        summary["data_dir"] = str(data_dir)
        summary["stats"] = stats
    say.show(format_stats(stats))

    with say.stage("fit the user model"):
        model = fit_sim_model(ds, FitConfig())
        sim_dir = model.save(out / "sim")
        summary["sim_dir"] = str(sim_dir)

    with say.stage("validate the simulator's fidelity"):
        report = validate_fidelity(
            model, ds, n_sessions=2000 if args.tiny else 20000, seed=args.seed
        )
        summary["fidelity"] = report
    say.show(format_fidelity(report))

    if args.json:
        print(json.dumps(summary, indent=2, default=_json_default))
    else:
        print(f"\ndone: dataset {data_dir}, simulator {sim_dir}")
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class _Narrator:
    """Prints one line per stage with its duration (to stdout unless JSON is asked for)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def show(self, text: str) -> None:
        if not self.quiet:
            print(text)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        self.show(f"==> {name} ...")
        yield
        self.show(f"    {name}: {time.perf_counter() - start:.1f} s")
