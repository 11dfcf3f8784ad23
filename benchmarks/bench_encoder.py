"""Benchmark: train the sequence encoder on the synthetic default, time it, and rank.

Writes flat, unit-named keys to ``--out``: ``train_sequences_per_s`` (training windows per
second, all epochs), ``infer_states_per_s`` (states per second of ``StateEncoder.encode`` on
batches of full-length test histories), training wall time, and the full-ranking test metrics
of the encoder and of every baseline, ``{dataset}_{model}_{metric}`` with ``@`` written
``_at_`` (e.g. ``synthetic_encoder_ndcg_at_10``), on the synthetic default and on the real
Taobao sample (``taobao_*``; null when ``../shared/data`` is absent). The target: on the
synthetic default the encoder beats every baseline on NDCG@10 and on category accuracy@1
(``synthetic_encoder_beats_baselines``).

    python benchmarks/bench_encoder.py --out bench_encoder.json            # default schedule
    python benchmarks/bench_encoder.py --out bench_encoder.json --quick    # small data, 1+2 epochs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlrec.data.dataset import PreparedDataset, load_dataset, write_json_atomic
from rlrec.data.prepare import prepare
from rlrec.data.synthetic import SyntheticConfig, generate_dataset
from rlrec.evaluation.ranking import evaluate_next_step
from rlrec.models.encoder import EncoderConfig, StateEncoder
from rlrec.models.pretrain import PretrainConfig, TrainingResult, train_encoder
from rlrec.models.sequences import collapse_repeats, prefix_windows

TAOBAO = Path(__file__).resolve().parents[1].parent / "shared/data/taobao_sample/UserBehavior.csv"


def _flat(prefix: str, report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {f"{prefix}_test_targets": report["protocol"]["targets"]}
    rows = {"encoder": report["encoder"], **report["baselines"]}
    for name, metrics in rows.items():
        for metric, value in metrics.items():
            out[f"{prefix}_{name}_{metric.replace('@', '_at_')}"] = value
    return out


def _beats(report: dict[str, Any]) -> bool:
    enc = report["encoder"]
    return all(
        enc[m] > base[m]
        for base in report["baselines"].values()
        for m in ("ndcg@10", "category_acc@1")
        if m in base
    )


def _infer_states_per_s(result: TrainingResult, ds: PreparedDataset, batch: int = 256) -> float:
    encoder = StateEncoder(result.model)
    max_len = result.model.config.max_len
    windows = prefix_windows(collapse_repeats(ds.sessions("test")), max_len)
    # Full-length histories (the worst case an env observation can be): tile real windows.
    rows = np.resize(np.arange(len(windows)), batch)
    items, cats = windows.items[rows], windows.categories[rows]
    encoder.encode(items, cats)  # warm-up
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < 3.0:
        encoder.encode(items, cats)
        n += batch
    return n / (time.perf_counter() - started)


def _train_and_rank(
    prefix: str, ds: PreparedDataset, cfg: PretrainConfig, enc: EncoderConfig
) -> dict[str, Any]:
    result = train_encoder(ds, enc, cfg, progress=sys.stderr.isatty())
    started = time.perf_counter()
    report = evaluate_next_step(result.model, ds)
    return {
        f"{prefix}_items": ds.n_items,
        f"{prefix}_categories": ds.n_categories,
        f"{prefix}_train_targets": collapse_repeats(ds.sessions("train")).n_targets,
        f"{prefix}_train_s": result.seconds,
        f"{prefix}_epochs": len(result.history),
        f"{prefix}_eval_s": time.perf_counter() - started,
        f"{prefix}_train_sequences_per_s": result.train_sequences_per_s,
        f"{prefix}_encoder_beats_baselines": _beats(report),
        **_flat(prefix, report),
        "_result": result,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="small data, 1+2 epochs")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-epochs", type=int, help="override the schedule's maximum")
    parser.add_argument("--finetune-epochs", type=int, help="override the schedule's maximum")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    enc = EncoderConfig()
    cfg = PretrainConfig(device="cpu", seed=args.seed)
    synth_cfg = SyntheticConfig(seed=args.seed)
    if args.quick:
        cfg = PretrainConfig(device="cpu", seed=args.seed, pretrain_epochs=1, finetune_epochs=2)
        synth_cfg = SyntheticConfig(seed=args.seed, n_users=300, n_items=3000)
    overrides = {
        k: v
        for k, v in (
            ("pretrain_epochs", args.pretrain_epochs),
            ("finetune_epochs", args.finetune_epochs),
        )
        if v is not None
    }
    cfg = dataclasses.replace(cfg, **overrides)
    out: dict[str, Any] = {
        "quick": args.quick,
        "torch_threads": torch.get_num_threads(),
        "encoder_d_model": enc.d_model,
        "encoder_layers": enc.n_layers,
        "encoder_max_len": enc.max_len,
        "pretrain_epochs_max": cfg.pretrain_epochs,
        "finetune_epochs_max": cfg.finetune_epochs,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synth = load_dataset(generate_dataset(work / "synthetic", synth_cfg))
        res = _train_and_rank("synthetic", synth, cfg, enc)
        result = res.pop("_result")
        out["train_sequences_per_s"] = res["synthetic_train_sequences_per_s"]
        out["infer_states_per_s"] = _infer_states_per_s(result, synth)
        out.update(res)
        if TAOBAO.is_file():
            taobao = load_dataset(prepare([TAOBAO], "taobao", work / "taobao"))
            res = _train_and_rank("taobao", taobao, cfg, enc)
            res.pop("_result")
            out.update(res)
        else:
            out["taobao_encoder_ndcg_at_10"] = None
    write_json_atomic(args.out, out)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
