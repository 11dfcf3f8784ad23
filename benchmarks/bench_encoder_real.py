"""Benchmark: the encoder with DEFAULTS against every baseline, on each real log in ../shared.

What a new user gets: each log goes through the same command lines a user would type, with
no tuning flag (``rlrec data prepare``, ``rlrec pretrain DATA --out ENC``, ``rlrec encoder
eval ENC --data DATA --json``), run as subprocesses of this interpreter. The logs:

* ``taobao``: the Taobao UserBehavior sample (users, categories);
* ``diginetica_derived``: the DIGINETICA sample with categories derived from co-occurrence
  (``--derive-categories``);
* ``diginetica``: the DIGINETICA sample on the no-category path (one unknown category).

Writes flat unit-named keys per log: ``{log}_{model}_{metric}`` for the encoder and every
baseline (``ndcg_at_10``, ``hr_at_10``, ``mrr``, ``category_acc_at_1`` where categories
exist), the chosen neighbourhood sizes (``{log}_{baseline}_{size}``),
``{log}_encoder_beats_baselines`` (NDCG@10 and HR@10 above every baseline, and category
acc@1 above every category baseline where the log has categories), the paired comparison
with the strongest baseline per metric (``{log}_encoder_minus_best_{metric}`` with its 95%
interval over users, ``_ci95_low`` / ``_ci95_high``, and ``_verdict``: above, below or level;
``{log}_encoder_above_baselines_95``: above on every one, with 95% confidence), and the
same for ``encoder_knn`` (the encoder mixed with the session-kNN at the weight chosen on
valid, ``{log}_encoder_knn_weight``),
``{log}_pretrain_seconds`` and ``{log}_eval_seconds``, with the load average beside each
timing and the machine's facts. ``--quick`` caps training at 1 + 2 epochs (a smoke run, not
the defaults).

``--transfer`` adds the transfer gains (``rlrec encoder eval ENC --data DATA --transfer
TASKS --json``, the tasks each log supports: ``next_new_category`` where it has categories,
``return`` where it has users with several sessions): ``{log}_transfer_{task}_{pretrained,
scratch,gain}_at_{10,100}pct`` (the task's test metric: accuracy@1 among unseen categories,
ROC AUC) and ``{log}_transfer_seconds``.

    python benchmarks/bench_encoder_real.py --out bench_encoder_real.json [--quick] \
        [--seed N] [--transfer]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rlrec.data.dataset import write_json_atomic
from rlrec.evaluation.paired import paired_figures
from rlrec.models.transfer import transfer_figures

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TRANSFER_TASKS = {
    "taobao": "next_new_category,return",
    "diginetica_derived": "next_new_category",  # one session per user: no return label
}
RETURN_HORIZON_DAYS = 0.1
"""The Taobao sample spans 10 days and its test split the last one: with the default 7-day
horizon every test label that is not censored is a return (AUC undefined). 0.1 day (2.4 h)
leaves both classes in valid and test (a return in 25% and 33% of their sessions)."""
LOGS: dict[str, tuple[str, Path, list[str]]] = {
    "taobao": ("taobao", SHARED / "taobao_sample" / "UserBehavior.csv", []),
    "diginetica_derived": (
        "diginetica",
        SHARED / "diginetica_sample" / "train-item-views.csv",
        ["--derive-categories"],
    ),
    "diginetica": ("diginetica", SHARED / "diginetica_sample" / "train-item-views.csv", []),
}
ITEM_KEYS = ("ndcg@10", "hr@10")


def _rlrec(*argv: str) -> str:
    """Run ``rlrec ARGV`` as a user would; its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from rlrec.cli import main; sys.exit(main())", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"rlrec {' '.join(argv)} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _beats(report: dict[str, Any], has_categories: bool) -> bool:
    enc = report["encoder"]
    for base in report["baselines"].values():
        for metric in ITEM_KEYS:
            if metric in base and not enc[metric] > base[metric]:
                return False
        if (
            has_categories
            and "category_acc@1" in base
            and not enc["category_acc@1"] > base["category_acc@1"]
        ):
            return False
    return True


def run_log(
    name: str, work: Path, quick: bool, seed: int = 0, transfer: bool = False
) -> dict[str, Any]:
    """Prepare, pretrain and evaluate one log with defaults; its flat figures."""
    preset, path, extra = LOGS[name]
    data, enc = work / f"{name}_data", work / f"{name}_enc"
    meta = json.loads(
        _rlrec(
            "data", "prepare", "--preset", preset, "--input", str(path), "--out", str(data),
            *extra, "--json",
        )
    )  # fmt: skip
    flags = ["--epochs", "1", "--finetune-epochs", "2"] if quick else []
    flags += ["--seed", str(seed)] if seed else []
    load_before = _load()
    started = time.perf_counter()
    summary = json.loads(
        _rlrec("pretrain", str(data), "--out", str(enc), "--no-progress", "--json", *flags)
    )
    pretrain_s = time.perf_counter() - started
    load_pretrain = _load()
    started = time.perf_counter()
    report = json.loads(_rlrec("encoder", "eval", str(enc), "--data", str(data), "--json"))
    eval_s = time.perf_counter() - started
    has_categories = bool(extra) or preset == "taobao"
    out: dict[str, Any] = {
        f"{name}_events": meta.get("rows", {}).get("kept", meta.get("events")),
        f"{name}_items": meta.get("vocab", {}).get("items"),
        f"{name}_categories": meta.get("vocab", {}).get("categories"),
        f"{name}_test_targets": report["protocol"]["targets"],
        f"{name}_pretrain_seconds": pretrain_s,
        f"{name}_pretrain_load_average": [load_before, load_pretrain],
        f"{name}_pretrain_epochs": summary.get("epochs"),
        f"{name}_eval_seconds": eval_s,
        f"{name}_eval_load_average": _load(),
        f"{name}_encoder_beats_baselines": _beats(report, has_categories),
        f"{name}_encoder_knn_weight": report["encoder_knn_params"]["weight"],
        f"{name}_encoder_knn_knn": report["encoder_knn_params"]["knn"],
        **paired_figures(report["paired"]["encoder"], name),
        **paired_figures(report["paired"]["encoder_knn"], name, "encoder_knn"),
    }
    models = {"encoder": report["encoder"], "encoder_knn": report["encoder_knn"]}
    models.update(report["baselines"])
    for model, metrics in models.items():
        for metric, value in metrics.items():
            if metric.startswith("category") and not has_categories:
                continue
            out[f"{name}_{model}_{metric.replace('@', '_at_')}"] = value
    for model, params in report.get("baseline_params", {}).items():
        for key, value in params.items():
            if isinstance(value, int):
                out[f"{name}_{model}_{key}"] = value
    best = max(
        (m for m in report["baselines"] if "ndcg@10" in report["baselines"][m]),
        key=lambda m: report["baselines"][m]["ndcg@10"],
    )
    out[f"{name}_best_baseline"] = best
    if transfer and name in TRANSFER_TASKS:
        started = time.perf_counter()
        argv = ["encoder", "eval", str(enc), "--data", str(data), "--json"]
        argv += ["--transfer", TRANSFER_TASKS[name], "--seed", str(seed)]
        argv += ["--horizon-days", str(RETURN_HORIZON_DAYS)]
        result = json.loads(_rlrec(*argv))["transfer"]
        out[f"{name}_transfer_seconds"] = time.perf_counter() - started
        out[f"{name}_transfer_load_average"] = _load()
        for row in result.values():
            out.update(transfer_figures(row, name))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="1 + 2 epochs (smoke run)")
    parser.add_argument("--logs", default=",".join(LOGS), help="comma-separated subset")
    parser.add_argument(
        "--seed", type=int, default=0, help="pretraining seed (0: rlrec's default, no flag)"
    )
    parser.add_argument(
        "--transfer", action="store_true", help="also measure the transfer gains per task"
    )
    args = parser.parse_args()
    import torch

    out: dict[str, Any] = {
        "quick": args.quick,
        "seed": args.seed,  # 0 is rlrec's default seed: the defaults are what is measured
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.logs.split(","):
            if not LOGS[name][1].is_file():
                out[f"{name}_encoder_ndcg_at_10"] = None
                out[f"{name}_status"] = f"{LOGS[name][1]} absent"
                continue
            out.update(run_log(name, Path(tmp), args.quick, args.seed, args.transfer))
            print(f"{name}: done", file=sys.stderr)
    out["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    write_json_atomic(args.out, out)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
