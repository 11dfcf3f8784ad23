"""Benchmark: ``rlrec analyze`` on a synthetic log with a planted trend and change point.

For each seed, generates a synthetic log (``--events``, default 10M; 300k with ``--quick``)
with a planted trend (category c10, odds growing by e^1.5) and a planted change of the switch
matrix (strength 0.6 at the median session start), then runs ``rlrec analyze`` in a subprocess,
as a user runs it, and records flat, unit-named keys: ``analyze_seconds``,
``analyze_cpu_seconds`` (its user + system time) and ``analyze_peak_rss_mb`` (the child's peak
resident memory; targets at 10M events: <= 120 s and <= 4096 MB on 2 cores), whether the
planted trend is among the top 3 rising (``trend_rank``), the distance in periods from the
planted to the nearest found change point, cross-sell recall@10 of the model and the baselines,
and demand WAPE of the model and the baselines. With ``../shared/data`` present it adds the
Taobao sample's figures (``taobao_*``: cross-sell recall@10, and the rank of a trend injected
by duplicating the most frequent category's second-half events: its rank among the significant
risers and by gain in share). ``null_*``: default worlds with nothing planted (``--null-seeds``,
10 by default): the trend test's false flags and p-value rate at 0.05, and demand WAPE of the
model and the last period. Machine facts: CPU count, load average at the start and the end of
each run.

    python benchmarks/bench_analyze.py --out bench_analyze.json              # 10M events
    python benchmarks/bench_analyze.py --quick --seeds 0 1 2 --out quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rlrec.data.dataset import write_json_atomic

TAOBAO = Path(__file__).resolve().parents[1].parent / "shared/data/taobao_sample/UserBehavior.csv"
TARGET_SECONDS = 120.0
TARGET_RSS_MB = 4096.0
DAY_MS = 86_400_000


def _generate(out: Path, n_events: int, seed: int) -> tuple[float, dict[str, Any]]:
    from rlrec.models.ground_truth import PlantedChange, PlantedTrend, SyntheticConfig
    from rlrec.models.synthetic import generate_dataset

    config = SyntheticConfig(
        n_events=n_events,
        seed=seed,
        trend=PlantedTrend(category=10, growth=1.5),
        change_point=PlantedChange(at=0.5, strength=0.6),
    )
    started = time.perf_counter()
    generate_dataset(out, config)
    truth = json.loads((out / "ground_truth.json").read_text())["planted"]
    return time.perf_counter() - started, truth


def _analyze(data: Path, out: Path, seed: int) -> tuple[float, float, dict[str, Any]]:
    """Run ``rlrec analyze`` in a child; returns seconds, the child's peak RSS (MB), summary.

    The summary gets ``cpu_seconds``: the child's user + system time, which a busy machine
    inflates less than the wall time.
    """
    rlrec = str(Path(sys.executable).parent / "rlrec")
    cmd = [rlrec, "analyze", str(data), "--out", str(out), "--json", "--seed", str(seed)]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = usage.ru_utime + usage.ru_stime - cpu_before
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"rlrec analyze failed with exit code {done.returncode}")
    # ru_maxrss of children is the largest child so far: the generator ran in this process.
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024.0
    return seconds, peak, {**json.loads(done.stdout), "cpu_seconds": cpu_seconds}


def _figures(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    cross, demand = summary["cross_sell"], summary["demand"]
    out[f"{prefix}cross_sell_model_recall@10"] = cross["model"]["recall@10"]
    for name, m in cross["baselines"].items():
        out[f"{prefix}cross_sell_{name}_recall@10"] = m["recall@10"]
    out[f"{prefix}cross_sell_targets"] = cross["model"]["targets"]
    if "model" in demand:
        out[f"{prefix}demand_model_wape"] = demand["model"]["wape"]
        for name, m in demand["baselines"].items():
            out[f"{prefix}demand_{name}_wape"] = m["wape"]
        out[f"{prefix}demand_interval_coverage"] = demand["interval_coverage"]
        out[f"{prefix}demand_half_life_future_periods"] = demand["info"]["half_life_future"]
    return out


def run_seed(n_events: int, seed: int, work: Path) -> dict[str, Any]:
    """Generate, analyse and score one seed."""
    from datetime import date

    data = work / f"synthetic-{seed}"
    generate_seconds, truth = _generate(data, n_events, seed)
    load_start = os.getloadavg()[0]
    seconds, peak, summary = _analyze(data, work / f"analysis-{seed}", seed)
    rising = summary["rising"]
    true_day = date.fromisoformat(truth["change_point"]["date"][:10])
    found = [date.fromisoformat(d[:10]) for d in summary["change_points"]]
    distance = min((abs((d - true_day).days) for d in found), default=None)
    events = json.loads((data / "meta.json").read_text())["rows"]["kept"]
    return {
        "seed": seed,
        "events": events,
        "generate_and_prepare_seconds": round(generate_seconds, 2),
        "analyze_seconds": round(seconds, 2),
        "analyze_cpu_seconds": round(summary["cpu_seconds"], 2),
        "analyze_peak_rss_mb": round(peak, 1),
        "load_average_at_start": round(load_start, 2),
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "periods": summary["periods"]["count"],
        "trend_rank": rising.index("c10") + 1 if "c10" in rising else None,
        "trend_in_top3": "c10" in rising[:3],
        "change_point_distance_periods": distance,
        "change_point_within_one_period": distance is not None and distance <= 1,
        **_figures(summary),
    }


def null_worlds(work: Path, seeds: list[int], n_users: int = 2000) -> dict[str, Any]:
    """Trend false flags and demand WAPE on default synthetic worlds with nothing planted.

    Every category flagged rising or falling there is a false discovery; the p-values of a
    calibrated test are uniform, so ``null_p_below_0_05_rate`` should be near 0.05 and the
    seeds with any discovery near 5% of the seeds (Benjamini-Hochberg at 0.05 under the
    complete null). The analyses run in process (trends and demand only): the worlds are
    small and the figures are about correctness, not speed.
    """
    import numpy as np

    from rlrec.analytics.demand import DemandResult, demand_forecast
    from rlrec.analytics.periods import period_log
    from rlrec.analytics.trends import category_trends
    from rlrec.data.dataset import load_dataset
    from rlrec.models.ground_truth import SyntheticConfig
    from rlrec.models.synthetic import generate_dataset

    flags, tested, p_values, model, last = [], [], [], [], []
    for seed in seeds:
        path = generate_dataset(work / f"null-{seed}", SyntheticConfig(n_users=n_users, seed=seed))
        log = period_log(load_dataset(path), DAY_MS)
        trends = category_trends(log, log.active_range())
        flags.append(len(trends.rising) + len(trends.falling))
        tested.append(int(trends.tests["q_value"].notna().sum()))
        p_values.append(trends.tests["p_value"][trends.tests["q_value"].notna()].to_numpy())
        demand = demand_forecast(log)
        if isinstance(demand, DemandResult):
            model.append(demand.metrics["model"]["wape"])
            last.append(demand.metrics["last_period"]["wape"])
    p = np.concatenate(p_values)
    return {
        "null_seeds": seeds,
        "null_users": n_users,
        "null_categories_tested": int(sum(tested)),
        "null_false_flags": int(sum(flags)),
        "null_false_flags_per_seed_max": int(max(flags)),
        "null_false_flag_rate": round(sum(flags) / max(sum(tested), 1), 4),
        "null_seeds_with_a_flag": int(sum(f > 0 for f in flags)),
        "null_p_below_0_05_rate": round(float(np.mean(p < 0.05)), 4),
        "null_p_below_0_01_rate": round(float(np.mean(p < 0.01)), 4),
        "null_demand_model_wape_min": round(min(model), 4),
        "null_demand_model_wape_max": round(max(model), 4),
        "null_demand_last_period_wape_min": round(min(last), 4),
        "null_demand_last_period_wape_max": round(max(last), 4),
        "null_demand_model_wins": int(sum(m < b for m, b in zip(model, last, strict=True))),
    }


def _taobao(work: Path) -> dict[str, Any]:
    if not TAOBAO.is_file():
        return {"taobao_cross_sell_model_recall@10": None}
    import pandas as pd

    from rlrec.data.prepare import prepare

    raw = pd.read_csv(TAOBAO, header=None)
    top = raw[2].value_counts().index[0]
    dup = raw[(raw[2] == top) & (raw[4] >= raw[4].median())].copy()
    dup[4] += 1
    injected = work / "taobao_injected.csv"
    pd.concat([raw, dup]).to_csv(injected, header=False, index=False)
    out: dict[str, Any] = {}
    for name, csv in (("taobao", TAOBAO), ("taobao_injected", injected)):
        ds = prepare([csv], preset="taobao", out=work / name)
        _, _, summary = _analyze(Path(ds), work / f"{name}-analysis", 0)
        if name == "taobao":
            out.update(_figures(summary, "taobao_"))
        else:
            # Rank among the significant risers, and by gain in share (the effect size, its
            # interval and q-value beside it): a correct test may not flag what ranks first.
            rising = summary["rising"]
            out["taobao_injected_trend_rank"] = (
                rising.index(str(top)) + 1 if str(top) in rising else None
            )
            gainers = [g["category"] for g in summary["gainers"]]
            out["taobao_injected_gain_rank"] = (
                gainers.index(str(top)) + 1 if str(top) in gainers else None
            )
            if str(top) in gainers:
                g = summary["gainers"][gainers.index(str(top))]
                out["taobao_injected_gain"] = g["gain"]
                out["taobao_injected_gain_low"] = g["gain_low"]
                out["taobao_injected_gain_high"] = g["gain_high"]
                out["taobao_injected_q_value"] = g["q_value"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="300k events instead of 10M")
    parser.add_argument("--events", type=int, default=None, help="events to generate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to run")
    parser.add_argument(
        "--null-seeds",
        type=int,
        default=10,
        help="default worlds with nothing planted (2,000 users each, seeds 0..N-1) for the "
        "trend test's false flags and the demand forecast; 0 to skip",
    )
    args = parser.parse_args(argv)
    n_events = args.events or (300_000 if args.quick else 10_000_000)
    with tempfile.TemporaryDirectory(prefix="bench_analyze-") as tmp:
        runs = [run_seed(n_events, seed, Path(tmp)) for seed in args.seeds]
        result: dict[str, Any] = {
            "requested_events": n_events,
            "cpu_count": os.cpu_count(),
            "target_seconds": TARGET_SECONDS,
            "target_rss_mb": TARGET_RSS_MB,
        }
        first = runs[0]
        result.update({k: v for k, v in first.items() if k != "seed"})
        result["within_target"] = (
            first["analyze_seconds"] <= TARGET_SECONDS
            and first["analyze_peak_rss_mb"] <= TARGET_RSS_MB
        )
        result["seeds"] = args.seeds
        if len(runs) > 1:
            for key, value in first.items():
                if isinstance(value, float | int) and not isinstance(value, bool):
                    values = [r[key] for r in runs if r[key] is not None]
                    result[f"{key}_min"] = min(values)
                    result[f"{key}_max"] = max(values)
            result["trend_in_top3_all_seeds"] = all(r["trend_in_top3"] for r in runs)
            result["change_point_within_one_period_all_seeds"] = all(
                r["change_point_within_one_period"] for r in runs
            )
        result.update(_taobao(Path(tmp)))
        if args.null_seeds > 0:
            result.update(null_worlds(Path(tmp), list(range(args.null_seeds))))
    write_json_atomic(args.out, result)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
