"""Benchmark: generate a synthetic log, prepare it, fit the user model, validate its fidelity.

Writes flat, unit-named keys to ``--out``: sizes and timings, the ground-truth recovery errors
(target: ``transition_tv`` <= 0.03 at 1M events) and the fidelity figures on the synthetic test
split and on the real Taobao sample (``taobao_*``; null when ``../shared/data`` is absent).

    python benchmarks/bench_fit.py --out bench_fit.json            # 1M events
    python benchmarks/bench_fit.py --out bench_fit.json --quick    # 200k events
    python benchmarks/bench_fit.py --out bench_10m.json --events 10000000
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rlrec.data.dataset import load_dataset, write_json_atomic
from rlrec.data.prepare import prepare
from rlrec.evaluation.fidelity import validate_fidelity
from rlrec.models.synthetic import SyntheticConfig, generate_dataset, generate_events
from rlrec.models.transition import fit_sim_model

TAOBAO = Path(__file__).resolve().parents[1].parent / "shared/data/taobao_sample/UserBehavior.csv"
TARGET_TRANSITION_TV = 0.03
FIDELITY_KEYS = (
    "js_category_transition",
    "js_category_transition_floor",
    "ks_session_length",
    "ks_streak_length",
    "event_mix_max_abs_diff",
    "test_sessions",
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run(n_events: int, seed: int, n_sessions: int, work: Path) -> dict[str, Any]:
    config = SyntheticConfig(n_events=n_events, seed=seed)
    started = time.perf_counter()
    frame, _ = generate_events(config)
    generate_seconds = time.perf_counter() - started
    events = len(frame)
    del frame

    started = time.perf_counter()
    data_dir = generate_dataset(work / "synthetic", config)
    generate_and_prepare_seconds = time.perf_counter() - started
    ds = load_dataset(data_dir)

    started = time.perf_counter()
    model = fit_sim_model(ds)
    fit_seconds = time.perf_counter() - started

    started = time.perf_counter()
    report = validate_fidelity(model, ds, n_sessions=n_sessions, seed=seed)
    validate_seconds = time.perf_counter() - started

    result: dict[str, Any] = {
        "events": events,
        "train_events": int(model.info["train_events"]),
        "generate_seconds": round(generate_seconds, 3),
        "generate_and_prepare_seconds": round(generate_and_prepare_seconds, 3),
        "fit_seconds": round(fit_seconds, 3),
        "validate_seconds": round(validate_seconds, 3),
        "simulated_sessions": n_sessions,
        "switch_smoothing_alpha": model.info["switch_smoothing"],
        **{key: report[key] for key in FIDELITY_KEYS},
        **{k: v for k, v in report["ground_truth"].items()},
        "transition_tv_target": TARGET_TRANSITION_TV,
        "transition_tv_meets_target": report["ground_truth"]["transition_tv"]
        <= TARGET_TRANSITION_TV,
    }
    result.update(_taobao(work, n_sessions, seed))
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return result


def _taobao(work: Path, n_sessions: int, seed: int) -> dict[str, Any]:
    if not TAOBAO.is_file():
        return {f"taobao_{key}": None for key in FIDELITY_KEYS}
    ds = load_dataset(prepare([TAOBAO], preset="taobao", out=work / "taobao"))
    model = fit_sim_model(ds)
    report = validate_fidelity(model, ds, n_sessions=n_sessions, seed=seed)
    return {
        **{f"taobao_{key}": report[key] for key in FIDELITY_KEYS},
        "taobao_sim_categories": model.n_categories,
        "taobao_mean_session_length_simulated": report["mean_session_length"]["simulated"],
        "taobao_mean_session_length_test": report["mean_session_length"]["test"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="200k events instead of 1M")
    parser.add_argument("--events", type=int, default=None, help="events to generate")
    parser.add_argument("--sessions", type=int, default=20_000, help="sessions to simulate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_events = args.events or (200_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory(prefix="bench_fit-") as tmp:
        result = run(n_events, args.seed, args.sessions, Path(tmp))
    write_json_atomic(args.out, result)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
