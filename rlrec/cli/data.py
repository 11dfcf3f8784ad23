"""``rlrec data``: synth, prepare and stats."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from rlrec.cli.parsing import HelpFormatter, add_force, check_out_dir
from rlrec.errors import UserError

__all__ = [
    "format_stats",
    "parse_duration",
    "register",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, flag: str = "--session-gap") -> float:
    """Parse a duration such as ``30m``, ``45s``, ``2h``, ``1d`` or ``1.5h`` into seconds.

    Raises:
        UserError: If the text is not a positive number followed by a unit.
    """
    match = _DURATION.match(text)
    if not match:
        raise UserError(
            f"{flag} {text!r}: expected a number with a unit (ms, s, m, h or d), e.g. 30m or 45s"
        )
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise UserError(f"{flag} {text!r}: expected a positive duration")
    return seconds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec data`` and its verbs."""
    parser = sub.add_parser(
        "data", help="generate, prepare and inspect event logs", formatter_class=HelpFormatter
    )
    verbs = parser.add_subparsers(dest="data_command", metavar="VERB", required=True)
    _register_prepare(verbs)
    _register_stats(verbs)
    _register_synth(verbs)


def _register_prepare(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from rlrec.data.readers import PRESETS

    p = verbs.add_parser(
        "prepare",
        help="turn an event log (CSV/Parquet) into a PreparedDataset",
        description=(
            "Read an event log through a preset (or a column map), validate it, sessionize "
            "it, split it by time and write a PreparedDataset directory (atomically)."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--preset", required=True, choices=PRESETS, help="input format")
    p.add_argument("--input", required=True, nargs="+", type=Path, metavar="PATH", help="log files")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset directory")
    p.add_argument(
        "--session-gap",
        default="30m",
        metavar="DURATION",
        help="inactivity gap that starts a new session (e.g. 30m, 45s, 2h); unused when the "
        "log has session ids",
    )
    p.add_argument("--min-item-count", type=int, default=0, metavar="N", help="drop rarer items")
    p.add_argument(
        "--min-session-length", type=int, default=1, metavar="N", help="drop shorter sessions"
    )
    p.add_argument(
        "--split",
        default="0.8,0.1,0.1",
        metavar="TRAIN,VALID,TEST",
        help="shares of events by global time quantile",
    )
    p.add_argument(
        "--derive-categories",
        action="store_true",
        help="derive categories from item co-occurrence (for logs without categories)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the category derivation")
    p.add_argument(
        "--columns",
        metavar="MAP",
        help="generic preset: user=COL,time=COL[,item=COL,category=COL,event=COL,session=COL,"
        "value=COL,position=COL,propensity=COL,reward=COL] or a YAML file with the same "
        "mapping; without item=COL the dataset has no items (for rlrec churn); value: a "
        "monetary amount (empty or NaN: unknown; negative: refused)",
    )
    p.add_argument(
        "--time-unit",
        choices=("s", "ms", "iso"),
        help="unit of the time column: Unix s or ms, or iso (ISO 8601 date or date-time, "
        "or a basic-format date such as 19970101; offsets respected, none means UTC, a date "
        "is midnight UTC)",
    )
    p.add_argument("--delimiter", help="CSV delimiter (e.g. ',', ';', tab)")
    p.add_argument("--no-header", action="store_true", help="CSV files have no header line")
    p.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    p.add_argument("--memory-limit-mb", type=int, default=2048, help="DuckDB memory limit")
    add_force(p, "PreparedDataset")
    p.add_argument("--json", action="store_true", help="print the dataset's meta.json")
    p.set_defaults(handler=_prepare)


def _register_stats(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = verbs.add_parser(
        "stats",
        help="summary statistics of a PreparedDataset",
        description="Counts, session lengths, event mix, top categories, category continuation.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("dataset", type=Path, metavar="DIR", help="a PreparedDataset directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_stats)


def _register_synth(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = verbs.add_parser(
        "synth",
        help="generate a synthetic PreparedDataset with its ground truth",
        description=(
            "Draw a log from the user model with known parameters and write it as a "
            "PreparedDataset, with the ground truth (ground_truth.json / .npz) beside it."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset directory")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--users", type=int, metavar="N", help="number of users")
    size.add_argument("--events", type=int, metavar="N", help="approximate number of events")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    add_force(p, "PreparedDataset")
    p.add_argument("--json", action="store_true", help="print the dataset's stats as JSON")
    p.set_defaults(handler=_synth)


def _prepare(args: argparse.Namespace) -> int:
    from rlrec.data.prepare import PrepareConfig, prepare
    from rlrec.data.readers import ReadOptions, load_column_map, parse_columns

    columns: dict[str, str] | None = None
    file_options = ReadOptions()
    if args.columns:
        spec = args.columns
        if spec.endswith((".yaml", ".yml")) or ("=" not in spec and _is_file(spec)):
            columns, file_options = load_column_map(spec)
        else:
            columns = parse_columns(spec)
    delimiter = args.delimiter
    if delimiter in ("\\t", "tab", "TAB"):
        delimiter = "\t"
    options = ReadOptions(
        time_unit=args.time_unit or file_options.time_unit,
        delimiter=delimiter or file_options.delimiter,
        header=False if args.no_header else file_options.header,
    )
    check_out_dir(args.out, "dataset", args.force)
    config = PrepareConfig(
        session_gap_seconds=parse_duration(args.session_gap),
        min_item_count=args.min_item_count,
        min_session_length=args.min_session_length,
        split_fractions=_parse_split(args.split),
        derive_categories=args.derive_categories,
        seed=args.seed,
        threads=args.threads,
        memory_limit_mb=args.memory_limit_mb,
    )
    from tqdm import tqdm

    from rlrec.data.prepare import STAGES

    # A stage bar on a terminal only: piped output stays clean for scripts.
    with tqdm(
        total=len(STAGES),
        desc="prepare",
        unit="stage",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        leave=False,
    ) as bar:

        def progress(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.n = STAGES.index(stage)
            bar.refresh()

        out = prepare(
            args.input,
            args.preset,
            args.out,
            config,
            columns=columns,
            read_options=options,
            progress=progress,
            force=args.force,
        )
    meta = json.loads((out / "meta.json").read_text())
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    rows, vocab = meta["rows"], meta["vocab"]
    dropped = ", ".join(f"{k} {v}" for k, v in rows["dropped"].items() if v) or "none"
    content = meta.get("content") or {}
    has = (
        f"{vocab['items']:,} items, {vocab['categories']:,} categories"
        if content.get("items", True)
        else "no items or categories (user and time only: for rlrec churn)"
    )
    if "value" in meta:
        has += f"; value sum {meta['value']['sum']:,.2f} ({meta['value']['missing']:,} missing)"
    print(
        f"{out}: {rows['kept']:,} events kept of {rows['read']:,} read (dropped: {dropped}); "
        f"{vocab['users']:,} users, {vocab['sessions']:,} sessions, {has} "
        f"({meta['prepare_seconds']:.1f} s)"
    )
    values = meta.get("category_values") or {}
    if any(values.values()):
        # Said here too: a category column that is mostly unreadable is likely the wrong one.
        print(
            f"category values: {values.get('missing', 0):,} missing, "
            f"{values.get('unparseable', 0):,} unparseable (those events get the unknown "
            "category; see meta.json)"
        )
    return 0


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long for the OS, or one with a NUL byte
        return False


def _parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3:
        raise UserError(
            f"--split {text!r}: expected three shares TRAIN,VALID,TEST, e.g. 0.8,0.1,0.1"
        )
    return parts[0], parts[1], parts[2]


def _stats(args: argparse.Namespace) -> int:
    from rlrec.data.dataset import load_dataset
    from rlrec.data.stats import dataset_stats

    stats = dataset_stats(load_dataset(args.dataset))
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(format_stats(stats))
    return 0


def format_stats(stats: dict[str, Any]) -> str:
    """A human-readable table of :func:`rlrec.data.stats.dataset_stats`."""
    lines = [f"dataset  {stats['path']}  (preset {stats.get('preset')})"]
    itemless = not stats.get("has_items", True)
    keys = ("rows_read", "rows_dropped", "events", "users", "sessions")
    for key in keys if itemless else (*keys, "items", "categories"):
        lines.append(f"  {key:<28}{stats[key]:>14,}")
    for reason, n in stats.get("dropped", {}).items():
        if n:
            lines.append(f"    dropped: {reason:<19}{n:>14,}")
    span = stats.get("time_range")
    if span:
        lines.append(f"  {'time_range':<28}{span[0]} .. {span[1]}")
    value = stats.get("value")
    if value:
        lines.append(
            f"  {'value':<28}sum {value['sum']:,.2f}, mean {value['mean']:,.2f} over "
            f"{value['events_with_value']:,} events ({value['missing']:,} missing)"
        )
    if itemless:
        lines.append("  no items or categories (user and time only): fit, pretrain, train and")
        lines.append("  ope sessions refuse it; rlrec churn reads it")
    else:
        rate = stats["category_continuation_rate"]
        rate_text = "n/a (no known categories)" if rate is None else f"{rate:.3f}"
        lines.append(f"  {'category_continuation_rate':<28}{rate_text:>14}")
    sl = stats["session_length"]
    if sl:
        parts = "  ".join(f"{k} {v:g}" for k, v in sl.items())
        lines.append(f"  session_length               {parts}")
    if not itemless:
        mix = "  ".join(f"{k} {v:.1%}" for k, v in stats["event_mix"].items())
        lines.append(f"  event_mix                    {mix}")
    for name, split in stats["splits"].items():
        lines.append(
            f"  split {name:<22}{split['events']:>14,} events {split['sessions']:>10,} sessions"
        )
    if itemless:
        return "\n".join(lines)
    lines.append("  top categories (raw id: events, share)")
    for top in stats["top_categories"]:
        lines.append(f"    {top['raw_id']:<24}{top['events']:>12,}  {top['share']:.1%}")
    return "\n".join(lines)


def _synth(args: argparse.Namespace) -> int:
    from rlrec.models.synthetic import SyntheticConfig, generate_dataset

    for flag, value in (("--users", args.users), ("--events", args.events)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: expected a positive number")
    sizes: dict[str, Any] = {}
    if args.users is not None:
        sizes["n_users"] = args.users
    if args.events is not None:
        sizes["n_events"] = args.events
    check_out_dir(args.out, "dataset", args.force)
    config = SyntheticConfig(seed=args.seed, **sizes)
    out = generate_dataset(args.out, config, force=args.force)
    if args.json:
        from rlrec.data.dataset import load_dataset
        from rlrec.data.stats import dataset_stats

        print(json.dumps(dataset_stats(load_dataset(out)), indent=2))
    else:
        meta = json.loads((Path(out) / "meta.json").read_text())
        vocab = meta["vocab"]
        print(
            f"{out}: {meta['rows']['kept']:,} events, {vocab['users']:,} users, "
            f"{vocab['sessions']:,} sessions, {vocab['items']:,} items, "
            f"{vocab['categories']:,} categories; ground truth beside it",
            file=sys.stdout,
        )
    return 0
