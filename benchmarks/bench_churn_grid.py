"""Benchmark: ``rlrec churn``'s default predictor against BG/NBD and Pareto/NBD on a grid of logs.

Every cell is a log with only a user, a time and (mostly) a value, scored with a classic
calibration/holdout split: predictions use the calibration period only, the holdout (as long
as the calibration, as in Fader, Hardie and Lee's CDNOW split) is what happened. Cells:

* ``pareto_truth`` / ``bgnbd_truth``: populations drawn from a true Pareto/NBD and a true
  BG/NBD (the published CDNOW estimates, weeks converted to days; continuous times). There the
  BTYD model *is* the truth; ``oracle`` is its posterior with the true parameters.
* ``pareto_dates``: the Pareto/NBD population recorded as dates (one session per day), like a
  real transaction log.
* ``weibull_cure_dates``: bursty Weibull(0.6) gaps, gamma activity, dropout after a purchase
  that depends on its amount (dates).
* ``regular_dates``: regular buyers (gamma-distributed gaps of shape 3), 8% dropout after
  each purchase (dates): far from BTYD's memoryless purchasing.
* ``synth_k08`` / ``synth_k1``: ``rlrec``'s synthetic generator (true return process with
  gamma activity, satisfaction-driven gaps and churn; Weibull shape 0.8 and 1.0), reduced to
  user/time.
* ``taobao``: the 10,000-row Taobao sample reduced to user/time (skipped when
  ``../shared/data`` is absent).
* ``cdnow`` (with ``--cdnow PATH``): the real CDNOW master file, 23,570 customers, with its
  classic 39 + 39-week split (see :func:`cdnow_log` for where to get the file).

Flat keys ``{cell}_s{seed}_{predictor}_{auc|mae}``, plus per cell the blend the default
predictor chose, and ``wins`` / ``cells`` counts (model beats both BTYD models on AUC and MAE).

    python benchmarks/bench_churn_grid.py --out bench_churn_grid.json
    python benchmarks/bench_churn_grid.py --quick --out bench_churn_grid_quick.json
    python benchmarks/bench_churn_grid.py --only cdnow --cdnow CDNOW_master.txt --out cdnow.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rlrec.data.dataset import write_json_atomic
from rlrec.evaluation.churn import ChurnConfig, churn_sessions, evaluate_churn, predict_churn
from rlrec.models.btyd import BGNBD, ParetoNBD
from rlrec.models.calibration import SESSION_GAP_MS
from rlrec.models.lifecycle import DAY_MS

TAOBAO = Path(__file__).resolve().parents[1].parent / "shared/data/taobao_sample/UserBehavior.csv"
ORIGIN_MS = 1_577_836_800_000  # 2020-01-01
CALIBRATION_DAYS = 273.0  # 39 weeks, CDNOW's split
JOIN_DAYS = 84.0  # customers' first purchases spread over 12 weeks, as in CDNOW
# Published CDNOW estimates (weeks); alpha and beta become days below.
PARETO = {"r": 0.553, "alpha": 10.58 * 7, "s": 0.606, "beta": 11.67 * 7}
BG = {"r": 0.243, "alpha": 4.414 * 7, "a": 0.793, "b": 2.426}

Log = tuple[pd.DataFrame, int, float, Any]
"""A user/time/value frame, the cutoff (ms), the horizon (days) and an oracle (or None)."""


def _frame(user: np.ndarray, days: np.ndarray, value: np.ndarray, dates: bool) -> pd.DataFrame:
    """Events from purchase times in days since the origin (floored to dates when asked)."""
    t = np.floor(days) if dates else days
    ms = ORIGIN_MS + np.round(t * DAY_MS).astype(np.int64)
    order = np.lexsort((ms, user))
    return pd.DataFrame(
        {
            "user": user[order].astype(np.int64),
            "session": np.arange(len(user), dtype=np.int64),
            "timestamp": ms[order],
            "value": value[order],
        }
    )


def _renewal(
    rng: np.random.Generator,
    n: int,
    next_gap: Callable[[np.ndarray], np.ndarray],
    leave: Callable[[np.ndarray, np.ndarray], np.ndarray],
    end_days: float,
    spend: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Purchases of n customers: first at U(0, JOIN_DAYS), then gaps until dropout or the end.

    ``next_gap(idx)`` draws gaps of customers ``idx``; ``leave(idx, value)`` says who drops out
    after a purchase of that value. Returns users, days and values of every purchase.
    """
    clock = rng.uniform(0, JOIN_DAYS, n)
    users, days, values = [], [], []
    alive = np.arange(n)
    first = True
    while len(alive):
        value = np.round(rng.lognormal(np.log(spend[alive]), 0.5), 2)
        users.append(alive)
        days.append(clock[alive].copy())
        values.append(value)
        gone = np.zeros(len(alive), bool) if first else leave(alive, value)
        first = False
        clock[alive] += next_gap(alive)
        alive = alive[~gone & (clock[alive] < end_days)]
    return np.concatenate(users), np.concatenate(days), np.concatenate(values)


def pareto_log(n: int, seed: int, dates: bool) -> Log:
    """A true Pareto/NBD population: Poisson(lambda) purchases until an Exp(mu) lifetime."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(PARETO["r"], 1 / PARETO["alpha"], n)
    mu = rng.gamma(PARETO["s"], 1 / PARETO["beta"], n)
    join = rng.uniform(0, JOIN_DAYS, n)
    death = join + rng.exponential(1 / mu)
    end = 2 * CALIBRATION_DAYS
    users, days = [np.arange(n)], [join]
    clock = join.copy()
    alive = np.arange(n)
    while len(alive):
        clock[alive] += rng.exponential(1 / lam[alive])
        alive = alive[(clock[alive] < death[alive]) & (clock[alive] < end)]
        users.append(alive)
        days.append(clock[alive].copy())
    user, day = np.concatenate(users), np.concatenate(days)
    spend = rng.lognormal(3.0, 0.7, n)
    value = np.round(rng.lognormal(np.log(spend[user]), 0.5), 2)
    frame = _frame(user, day, value, dates)
    oracle = None if dates else ParetoNBD(**PARETO)
    return frame, ORIGIN_MS + int(CALIBRATION_DAYS * DAY_MS), CALIBRATION_DAYS, oracle


def bgnbd_log(n: int, seed: int) -> Log:
    """A true BG/NBD population: Poisson(lambda) purchases, dropout p after each repeat."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(BG["r"], 1 / BG["alpha"], n)
    p = rng.beta(BG["a"], BG["b"], n)
    spend = rng.lognormal(3.0, 0.7, n)
    user, day, value = _renewal(
        rng,
        n,
        lambda idx: rng.exponential(1 / lam[idx]),
        lambda idx, v: rng.random(len(idx)) < p[idx],
        2 * CALIBRATION_DAYS,
        spend,
    )
    frame = _frame(user, day, value, dates=False)
    return frame, ORIGIN_MS + int(CALIBRATION_DAYS * DAY_MS), CALIBRATION_DAYS, BGNBD(**BG)


def weibull_cure_log(n: int, seed: int) -> Log:
    """Bursty Weibull(0.6) gaps, gamma activity; bigger purchases keep customers (dates)."""
    rng = np.random.default_rng(seed)
    activity = rng.gamma(1.5, 1 / 1.5, n) / 25.0  # mean gap scale 25 days
    spend = rng.lognormal(3.0, 0.7, n)
    user, day, value = _renewal(
        rng,
        n,
        lambda idx: rng.weibull(0.6, len(idx)) / activity[idx],
        lambda idx, v: rng.random(len(idx)) < 1 / (1 + np.exp(1.5 + 0.8 * (np.log(v) - 3.0))),
        2 * CALIBRATION_DAYS,
        spend,
    )
    frame = _frame(user, day, value, dates=True)
    return frame, ORIGIN_MS + int(CALIBRATION_DAYS * DAY_MS), CALIBRATION_DAYS, None


def regular_log(n: int, seed: int) -> Log:
    """Regular buyers: Gamma(3) gaps around a personal mean, 8% dropout per purchase (dates)."""
    rng = np.random.default_rng(seed)
    mean_gap = rng.lognormal(np.log(30.0), 0.6, n)
    spend = rng.lognormal(3.0, 0.7, n)
    user, day, value = _renewal(
        rng,
        n,
        lambda idx: rng.gamma(3.0, mean_gap[idx] / 3.0),
        lambda idx, v: rng.random(len(idx)) < 0.08,
        2 * CALIBRATION_DAYS,
        spend,
    )
    frame = _frame(user, day, value, dates=True)
    return frame, ORIGIN_MS + int(CALIBRATION_DAYS * DAY_MS), CALIBRATION_DAYS, None


def synth_log(n: int, seed: int, gap_shape: float) -> Log:
    """A log from rlrec's synthetic generator (true return process), reduced to user/time."""
    from rlrec.models.ground_truth import ReturnTruthConfig, SyntheticConfig
    from rlrec.models.synthetic import generate_events

    config = SyntheticConfig(n_users=n, seed=seed, returns=ReturnTruthConfig(gap_shape=gap_shape))
    events, _ = generate_events(config)
    user = events["user"].to_numpy(np.int64)
    ms = events["time"].to_numpy(np.int64)
    order = np.lexsort((ms, user))
    frame = pd.DataFrame(
        {
            "user": user[order],
            "session": np.arange(len(user), dtype=np.int64),
            "timestamp": ms[order],
        }
    )
    first, last = int(ms.min()), int(ms.max())
    half = (last - first) / 2
    return frame, int(first + half), half / DAY_MS, None


def taobao_log() -> Log | None:
    """The Taobao sample reduced to user/time; the holdout is its last day.

    A holdout as long as the calibration (4.5 days) sees every one of its 114 users return,
    which leaves AUC undefined; in the last day 76% return.
    """
    if not TAOBAO.exists():
        return None
    raw = pd.read_csv(TAOBAO, header=None, names=["user", "item", "cat", "kind", "ts"])
    raw = raw.loc[(raw["ts"] >= 1_511_481_600) & (raw["ts"] < 1_512_345_600)]  # 11-24..12-03
    ms = raw["ts"].to_numpy(np.int64) * 1000
    user = raw["user"].to_numpy(np.int64)
    order = np.lexsort((ms, user))
    frame = pd.DataFrame(
        {
            "user": user[order],
            "session": np.arange(len(user), dtype=np.int64),
            "timestamp": ms[order],
        }
    )
    cutoff = int(ms.max()) - DAY_MS
    return frame, cutoff, 1.0, None


def cdnow_log(path: Path) -> Log:
    """CDNOW's master file (Fader and Hardie): 23,570 customers' CD purchases, 1997-01..1998-06.

    The classic split: calibration 1997-01-01..09-30 (39 weeks), holdout the next 39 weeks
    (273 days). Purchases are dates, so a customer's purchases of one day are one session. The
    file ships in the Apache-2.0 ``lifetimes`` 0.11.3 wheel on PyPI
    (``lifetimes/datasets/CDNOW_master.txt``: ``pip download --no-deps lifetimes==0.11.3``
    and unzip); rlrec does not redistribute it. Whitespace-separated columns: customer id,
    date (YYYYMMDD), number of CDs, dollar value.
    """
    raw = pd.read_csv(
        path,
        sep=r"\s+",
        header=None,
        comment=None,
        names=["customer", "date", "cds", "value"],
        dtype={"customer": str, "date": str},
    )
    raw = raw.loc[raw["date"].str.fullmatch(r"\d{8}")]  # drops a header line if there is one
    epoch = pd.Timestamp(0, tz="UTC")
    ms = (
        (pd.to_datetime(raw["date"], format="%Y%m%d", utc=True) - epoch)
        // pd.Timedelta(milliseconds=1)
    ).to_numpy(np.int64)
    user = raw["customer"].astype(np.int64).to_numpy()
    order = np.lexsort((ms, user))
    frame = pd.DataFrame(
        {
            "user": user[order],
            "session": np.arange(len(user), dtype=np.int64),
            "timestamp": ms[order],
            "value": raw["value"].to_numpy(np.float64)[order],
        }
    )
    cutoff = int((pd.Timestamp("1997-10-01", tz="UTC") - epoch) // pd.Timedelta(milliseconds=1))
    return frame, cutoff, CALIBRATION_DAYS, None


def _oracle_predictions(
    oracle: Any, result: Any, frame: pd.DataFrame, cutoff_ms: int, horizon: float
) -> pd.DataFrame | None:
    """A true BTYD model's own posterior predictions in the rows of ``result.predictions``."""
    if oracle is None:
        return None
    feats = result.predictions
    x = feats["frequency"].to_numpy() - 1
    T = feats["tenure_days"].to_numpy()
    t_x = np.maximum(T - feats["recency_days"].to_numpy(), 0.0)
    return pd.DataFrame(
        {
            "p_return": 1 - oracle.p_no_transaction(horizon, x, t_x, T),
            "expected_sessions": oracle.expected_transactions(horizon, x, t_x, T),
        }
    )


PREDICTORS = (
    "model",
    "bgnbd",
    "pareto_nbd",
    "return_model",
    "gradient_boosting",
    "rfm_logistic",
    "oracle",
)
"""Predictors whose AUC and MAE each cell reports (those it fitted)."""


def run_cell(log: Log, seed: int) -> dict[str, Any]:
    """Predict at the cutoff with the defaults and score model, BTYD, return model, oracle."""
    frame, cutoff_ms, horizon, oracle = log
    users = np.unique(frame["user"].to_numpy())
    raw_ids = np.array([f"u{u}" for u in range(int(users.max()) + 1)], dtype=object)
    clock = time.perf_counter()
    sessions = churn_sessions(frame, raw_ids, cutoff_ms, SESSION_GAP_MS)
    result = predict_churn(sessions, cutoff_ms, ChurnConfig(horizon_days=horizon, seed=seed))
    seconds = time.perf_counter() - clock
    from rlrec.models.lifecycle import session_table

    everything = session_table(frame, gap_ms=SESSION_GAP_MS)
    rank_of = dict(zip(sessions["raw_id"], sessions["rank"], strict=False))
    raw = raw_ids[everything["user"].to_numpy()]
    ranks = np.array([rank_of.get(r, -1) for r in raw], dtype=np.int64)
    all_sessions = pd.DataFrame({"rank": ranks, "start_ms": everything["start_ms"]})
    metrics = evaluate_churn(
        result,
        all_sessions,
        cutoff_ms,
        _oracle_predictions(oracle, result, frame, cutoff_ms, horizon),
    )
    rows = {"model": metrics["model"], **metrics["baselines"]}
    if "oracle" in metrics:
        rows["oracle"] = metrics["oracle"]
    out: dict[str, Any] = {
        name: {"auc": rows[name]["auc"], "mae": rows[name]["mae"]}
        for name in PREDICTORS
        if name in rows
    }
    out["users"] = metrics["window"]["users"]
    out["return_rate"] = metrics["window"]["return_rate"]
    out["seconds"] = seconds
    out["predictor"] = result.info.get("model")
    out["blend"] = result.info.get("blend")
    return out


def cells(n_users: int, seeds: list[int]) -> dict[str, Callable[[int], Log | None]]:
    """Cell name -> log of a seed."""
    return {
        "pareto_truth": lambda s: pareto_log(n_users, s, dates=False),
        "bgnbd_truth": lambda s: bgnbd_log(n_users, s),
        "pareto_dates": lambda s: pareto_log(n_users, s, dates=True),
        "weibull_cure_dates": lambda s: weibull_cure_log(n_users, s),
        "regular_dates": lambda s: regular_log(n_users, s),
        "synth_k08": lambda s: synth_log(n_users, s, 0.8),
        "synth_k1": lambda s: synth_log(n_users, s, 1.0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="800 users, one seed")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", type=int, default=None, help="customers per cell")
    parser.add_argument("--only", nargs="*", default=None, help="cells to run")
    parser.add_argument(
        "--cdnow",
        type=Path,
        default=None,
        help="CDNOW_master.txt (from the lifetimes 0.11.3 wheel): adds the real 'cdnow' cell",
    )
    args = parser.parse_args()
    n_users = args.users or (800 if args.quick else 2000)
    seeds = [args.seed] if args.quick else [args.seed, args.seed + 1, args.seed + 2]
    result: dict[str, Any] = {
        "benchmark": "churn_grid",
        "quick": args.quick,
        "seeds": seeds,
        "users_per_cell": n_users,
        "calibration_days": CALIBRATION_DAYS,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "load_average_1min_start": os.getloadavg()[0],
    }
    table: dict[str, dict[str, Any]] = {}
    todo: dict[str, Callable[[int], Log | None]] = dict(cells(n_users, seeds))
    todo["taobao"] = lambda s: taobao_log()
    if args.cdnow is not None:
        if not args.cdnow.is_file():
            parser.error(f"--cdnow {args.cdnow}: no such file")
        cdnow = cdnow_log(args.cdnow)
        todo["cdnow"] = lambda s: cdnow
    for name, make in todo.items():
        if args.only and name not in args.only:
            continue
        for seed in [seeds[0]] if name == "taobao" else seeds:
            log = make(seed)
            if log is None:
                continue
            table[f"{name}_s{seed}"] = run_cell(log, seed)
            print(name, seed, json.dumps(table[f"{name}_s{seed}"]), flush=True)
    wins = 0
    for key, row in table.items():
        for predictor in PREDICTORS:
            if predictor in row:
                result[f"{key}_{predictor}_auc"] = row[predictor]["auc"]
                result[f"{key}_{predictor}_mae"] = row[predictor]["mae"]
        result[f"{key}_users"] = row["users"]
        result[f"{key}_return_rate"] = row["return_rate"]
        result[f"{key}_seconds"] = row["seconds"]
        result[f"{key}_predictor"] = row["predictor"]
        result[f"{key}_blend"] = row["blend"]
        # AUC is undefined when everyone (or no one) returns: then MAE alone decides.
        beat = all(
            (row["model"]["auc"] is None or row["model"]["auc"] > row[b]["auc"])
            and row["model"]["mae"] < row[b]["mae"]
            for b in ("bgnbd", "pareto_nbd")
            if b in row
        )
        result[f"{key}_beats_btyd"] = beat
        wins += beat
    result["cells"] = len(table)
    result["cells_beating_btyd"] = wins
    result["load_average_1min_end"] = os.getloadavg()[0]
    write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
