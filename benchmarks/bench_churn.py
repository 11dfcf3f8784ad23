"""Benchmark: ``rlrec churn``'s predictor at scale, and its metrics beside the baselines.

Three parts, flat unit-named keys in ``--out``:

* **scale** (``scale_*``): a user/time/value log drawn in memory from a mixture-cure return
  process (gamma activity, Weibull gaps, dropout after a session) at 100k users / 10M events
  (``--quick``: 5k users / 500k events); the seconds and CPU seconds of re-sessionizing +
  fitting + predicting (the default predictor, and the baselines separately) and the process's
  peak RSS. Targets: <= 60 s and <= 4 GB on 2 cores.
* **synthetic** (``synth_*``): ``rlrec data synth`` logs (true return process, with the oracle)
  over several seeds: AUC and MAE of the model, every baseline and the oracle; the target is
  model AUC >= 95% of the oracle's.
* **taobao** (``taobao_*``): the 10,000-row Taobao sample (114 users, 2017-11-24..12-03). Its
  9 days are short and its users all active: with a 2-day horizon every user returns (AUC
  undefined), so the cutoff is 2017-12-02T12:00 with a 0.5-day horizon (67 of 114 return);
  with 114 users the discriminative model is not trained (too few rows) and the blend's
  validation slice is small, so its weights lean on the default weights. Null when
  ``../shared/data`` is absent.

    python benchmarks/bench_churn.py --out bench_churn.json
    python benchmarks/bench_churn.py --quick --out bench_churn_quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rlrec.data.dataset import write_json_atomic
from rlrec.evaluation.churn import ChurnConfig, churn_sessions, predict_churn
from rlrec.models.calibration import SESSION_GAP_MS
from rlrec.models.lifecycle import DAY_MS

TAOBAO = Path(__file__).resolve().parents[1].parent / "shared/data/taobao_sample/UserBehavior.csv"
ORIGIN_MS = 1_511_568_000_000  # 2017-11-25
TARGET_SECONDS = 60.0
TARGET_RSS_MB = 4096.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def draw_log(n_users: int, events_per_user: float, days: float, seed: int) -> pd.DataFrame:
    """A user/time/value log from a mixture-cure Weibull return process, in memory.

    Users start uniformly over the first third of ``days``; after each session a user leaves
    for good with probability 0.05, otherwise returns after 30 minutes plus a Weibull(0.8)
    gap of rate ``a_u`` (``a_u ~ Gamma(2, 1/2)`` per day scaled to hit ``events_per_user``).
    Sessions hold a geometric number of events one to three minutes apart, each with a
    log-normal value.
    """
    rng = np.random.default_rng(seed)
    activity = rng.gamma(2.0, 0.5, n_users)
    clock = rng.uniform(0, days / 3, n_users) * DAY_MS
    end = days * DAY_MS
    mean_events = 7.0
    target_sessions = events_per_user / mean_events
    activity *= target_sessions / (days * 0.6) / activity.mean()
    starts_u, starts_t = [], []
    alive = np.ones(n_users, bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        starts_u.append(idx)
        starts_t.append(clock[idx].copy())
        leave = rng.random(len(idx)) < 0.05
        gap = SESSION_GAP_MS + rng.weibull(0.8, len(idx)) / activity[idx] * DAY_MS
        clock[idx] += gap
        alive[idx] = ~leave & (clock[idx] < end)
    s_user = np.concatenate(starts_u)
    s_time = np.concatenate(starts_t)
    n_ev = rng.geometric(1 / mean_events, len(s_user))
    user = np.repeat(s_user, n_ev)
    offsets = rng.integers(60_000, 180_000, n_ev.sum())
    first = np.r_[0, np.cumsum(n_ev)[:-1]]
    within = np.cumsum(offsets) - np.repeat(np.cumsum(offsets)[first] - offsets[first], n_ev)
    timestamp = (np.repeat(s_time, n_ev) + within - offsets[0]).astype(np.int64) + ORIGIN_MS
    value = np.round(rng.lognormal(2.0, 1.0, len(user)), 2)
    order = np.lexsort((timestamp, user))
    return pd.DataFrame(
        {
            "user": user[order].astype(np.int32),
            "session": np.repeat(np.arange(len(s_user)), n_ev)[order],
            "timestamp": timestamp[order],
            "value": value[order],
        }
    )


def scale(n_users: int, n_events: int, seed: int) -> dict[str, Any]:
    days = 60.0
    frame = draw_log(n_users, n_events / n_users, days, seed)
    cutoff_ms = ORIGIN_MS + int(45 * DAY_MS)
    raw_ids = np.array([f"u{i}" for i in range(n_users)], dtype=object)
    load = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    sessions = churn_sessions(frame, raw_ids, cutoff_ms, SESSION_GAP_MS)
    result = predict_churn(sessions, cutoff_ms, ChurnConfig(horizon_days=7.0, seed=seed))
    c1, t1 = time.process_time(), time.perf_counter()
    info = result.info
    return {
        "scale_users": int(frame["user"].nunique()),
        "scale_events": len(frame),
        "scale_sessions_before_cutoff": int(info["n_sessions"]),
        "scale_horizon_days": 7.0,
        "scale_total_seconds": t1 - t0,
        "scale_total_cpu_seconds": c1 - c0,
        "scale_model_seconds": info["model_seconds"],
        "scale_baseline_seconds": info.get("baseline_seconds"),
        "scale_return_model_fit_seconds": info.get("return_model_fit_seconds"),
        "scale_btyd_seconds": info.get("btyd_seconds"),
        "scale_boosting_seconds": info.get("boosting_seconds"),
        "scale_validation_seconds": info.get("validation_seconds"),
        "scale_predictor": info["model"],
        "scale_blend_p_return": info.get("blend_p_return"),
        "scale_blend_expected_sessions": info.get("blend_expected_sessions"),
        "scale_peak_rss_mb": _peak_rss_mb(),
        "scale_load_average_1min_at_start": load,
        "scale_load_average_1min_at_end": os.getloadavg()[0],
        "scale_within_seconds_target": (t1 - t0) <= TARGET_SECONDS,
        "scale_within_rss_target": _peak_rss_mb() <= TARGET_RSS_MB,
    }


def churn_metrics(argv: list[str]) -> dict[str, Any]:
    """Run ``rlrec churn ... --json`` in-process and return its payload."""
    import contextlib
    import io

    from rlrec.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main([*argv, "--json"])
    if code != 0:
        raise SystemExit(f"rlrec churn failed ({code})")
    return dict(json.loads(buffer.getvalue()))


def flat(prefix: str, payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rows = {"model": payload["model"], **payload["baselines"]}
    if "oracle" in payload:
        rows["oracle"] = payload["oracle"]
    for name, block in rows.items():
        for key in ("auc", "mae", "rmse", "c_index"):
            out[f"{prefix}_{name}_{key}"] = block[key]
    return out


def synthetic(seeds: list[int], n_users: int, work: Path) -> dict[str, Any]:
    from rlrec.cli import main

    out: dict[str, Any] = {"synth_users": n_users, "synth_seeds": seeds}
    ratios = []
    for seed in seeds:
        data = work / f"synth{seed}"
        assert (
            main(
                ["data", "synth", "--out", str(data), "--users", str(n_users), "--seed", str(seed)]
            )
            == 0
        )
        payload = churn_metrics(
            [
                "churn",
                str(data),
                "--cutoff",
                "2017-11-30T12:00",
                "--horizon-days",
                "2",
                "--out",
                str(work / f"churn{seed}"),
                "--seed",
                str(seed),
            ]
        )
        out.update(flat(f"synth_s{seed}", payload))
        summary = json.loads((work / f"churn{seed}" / "churn.json").read_text())
        out[f"synth_s{seed}_blend_p_return"] = summary["info"].get("blend_p_return")
        out[f"synth_s{seed}_blend_expected_sessions"] = summary["info"].get(
            "blend_expected_sessions"
        )
        ratios.append(payload["model"]["auc"] / payload["oracle"]["auc"])
    out["synth_cutoff"] = "2017-11-30T12:00"
    out["synth_horizon_days"] = 2.0
    out["synth_model_over_oracle_auc_min"] = float(min(ratios))
    out["synth_model_over_oracle_auc_max"] = float(max(ratios))
    out["synth_meets_95pct_oracle"] = bool(min(ratios) >= 0.95)
    return out


def taobao(work: Path) -> dict[str, Any]:
    if not TAOBAO.exists():
        return {"taobao": None}
    from rlrec.data.prepare import prepare

    data = prepare([TAOBAO], preset="taobao", out=work / "taobao")
    payload = churn_metrics(
        [
            "churn",
            str(data),
            "--cutoff",
            "2017-12-02T12:00",
            "--horizon-days",
            "0.5",
            "--out",
            str(work / "taobao_churn"),
        ]
    )
    out = flat("taobao", payload)
    out["taobao_cutoff"] = "2017-12-02T12:00"
    out["taobao_horizon_days"] = 0.5
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5k users / 500k events, 1 seed")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-scale", action="store_true", help="metrics only")
    args = parser.parse_args()
    n_users, n_events = (5_000, 500_000) if args.quick else (100_000, 10_000_000)
    seeds = [args.seed] if args.quick else [args.seed, args.seed + 1, args.seed + 2]
    result: dict[str, Any] = {
        "benchmark": "churn",
        "quick": args.quick,
        "seed": args.seed,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "load_average_1min_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result.update(synthetic(seeds, 1500 if args.quick else 3000, work))
        result.update(taobao(work))
        if not args.skip_scale:
            result.update(scale(n_users, n_events, args.seed))
    result["load_average_1min_end"] = os.getloadavg()[0]
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
