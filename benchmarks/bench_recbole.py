r"""Benchmark: RecBole's SASRec beside rlrec's encoder and baselines, on the same split.

The reference implementation side by side (issue 16, item 5). The Taobao sample is prepared
with rlrec's defaults, and its split is exported to RecBole atomic files exactly as
``rlrec encoder eval`` ranks it:

* one row per target of ``rlrec.evaluation.ranking``'s protocol: every step ``t >= 1`` of
  every session (consecutive repeats collapsed), in three benchmark files
  ``taobao.train.inter``, ``taobao.valid.inter``, ``taobao.test.inter`` (our time split);
* columns ``user_id:token`` (the session, ``s<id>``: the encoder sees one session, so RecBole
  must too), ``item_id_list:token_seq`` (the prefix, its last ``max_len`` steps, oldest
  first), ``item_id:token`` (the target) and ``timestamp:float`` (the target's time, seconds);
* RecBole reads them with ``benchmark_filename`` (no re-split, no filtering) and ranks in
  ``full`` mode (all items, no sampled negatives), SASRec trained with full-softmax
  cross-entropy (``loss_type: CE``, no negative sampling) and early-stopped on valid NDCG@10.

RecBole is NOT a dependency of rlrec: it needs numpy<2, pandas<2.3, scipy<1.14 and
setuptools<81, and ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` with torch >= 2.6. Make a separate
virtual environment and point ``--recbole-python`` at it::

    python -m venv /tmp/recbole-venv
    /tmp/recbole-venv/bin/pip install torch==2.13.0 "numpy<2" "pandas<2.3" "scipy<1.14" \
        "setuptools<81" recbole==1.2.1
    python benchmarks/bench_recbole.py --recbole-python /tmp/recbole-venv/bin/python \
        --out bench_recbole.json [--quick]

Without ``--recbole-python`` the files are still exported and rlrec's side still runs;
``recbole_status`` says why RecBole's figures are null. Writes flat unit-named keys:
``rlrec_encoder_ndcg_at_10``, ``recbole_sasrec_hr_at_10``, ``{model}_*`` of every baseline,
seconds, epochs, the machine's load and facts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlrec.data.dataset import PreparedDataset, load_dataset, write_json_atomic
from rlrec.evaluation.history import split_session_ids
from rlrec.evaluation.ranking import evaluate_next_step, next_step_targets
from rlrec.models.sequences import collapse_repeats

TAOBAO = Path(__file__).resolve().parents[1].parent / "shared/data/taobao_sample/UserBehavior.csv"
SPLITS = ("train", "valid", "test")
HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\ttimestamp:float"


def _step_timestamps(dataset: PreparedDataset, split: str) -> np.ndarray:
    """(N,) time in seconds of each step of a split (the first event of each collapsed run)."""
    sessions = dataset.sessions(split)
    items = sessions.items
    keep = np.ones(len(items), dtype=bool)
    keep[1:] = items[1:] != items[:-1]
    keep[sessions.offsets[:-1][sessions.offsets[:-1] < len(items)]] = True
    return sessions.timestamps[keep] / 1000.0


def export_recbole(dataset: PreparedDataset, out: Path, name: str, max_len: int) -> dict[str, int]:
    """Write ``out/name/name.{train,valid,test}.inter``: every target with its prefix.

    Args:
        dataset: The prepared dataset.
        out: Folder to write the dataset folder into (RecBole's ``data_path``).
        name: RecBole dataset name.
        max_len: Prefix length, as the encoder's ``max_len``.

    Returns:
        Rows written per split.
    """
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = {}
    for split in SPLITS:
        steps = collapse_repeats(dataset.sessions(split))
        ids = split_session_ids(dataset, split)
        targets = next_step_targets(steps, max_len)
        stamps = _step_timestamps(dataset, split)
        prefixes = targets.prefixes(slice(0, len(targets)))
        lines = [HEADER]
        for i in range(len(targets)):
            prefix = " ".join(str(v) for v in prefixes[i] if v >= 0)
            pos = targets.position[i]
            lines.append(
                f"s{ids[targets.session[i]]}\t{prefix}\t{steps.items[pos]}\t{stamps[pos]:.3f}"
            )
        tmp = folder / f".{name}.{split}.inter.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(folder / f"{name}.{split}.inter")
        rows[split] = len(targets)
    return rows


def read_recbole(folder: Path, name: str) -> dict[str, list[tuple[str, tuple[int, ...], int]]]:
    """Parse the exported files back: per split, ``(session, prefix, target)`` rows."""
    out: dict[str, list[tuple[str, tuple[int, ...], int]]] = {}
    for split in SPLITS:
        lines = (folder / name / f"{name}.{split}.inter").read_text().splitlines()
        if lines[0] != HEADER:
            raise ValueError(f"{name}.{split}.inter: unexpected header {lines[0]!r}")
        rows = []
        for line in lines[1:]:
            session, prefix, target, _ = line.split("\t")
            rows.append((session, tuple(int(v) for v in prefix.split()), int(target)))
        out[split] = rows
    return out


RUNNER = textwrap.dedent(
    """
    import json, sys
    from recbole.quick_start import run_recbole
    config = json.loads(sys.argv[1])
    result = run_recbole(model="SASRec", dataset=config.pop("dataset"), config_dict=config)
    print("RECBOLE_RESULT " + json.dumps({
        "best_valid_score": float(result["best_valid_score"]),
        "test_result": {k: float(v) for k, v in result["test_result"].items()},
    }))
    """
)


def run_recbole(
    python: str,
    data_path: Path,
    name: str,
    max_len: int,
    epochs: int,
    seed: int,
    work: Path,
    threads: int = 1,
) -> dict[str, Any]:
    """Train and test RecBole's SASRec on the exported split in its own interpreter.

    ``threads`` caps torch's CPU threads there (``OMP_NUM_THREADS``), as ``--threads`` does
    for rlrec's side: on a shared machine, spinning intra-op threads only slow both down.
    """
    config = {
        "dataset": name,
        "data_path": str(data_path),
        "benchmark_filename": list(SPLITS),
        "load_col": {"inter": ["user_id", "item_id_list", "item_id", "timestamp"]},
        "ITEM_LIST_LENGTH_FIELD": "item_length",
        "LIST_SUFFIX": "_list",
        "MAX_ITEM_LIST_LENGTH": max_len,
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "eval_args": {"order": "TO", "mode": "full"},
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "epochs": epochs,
        "stopping_step": 5,
        "train_batch_size": 128,
        "eval_batch_size": 256,
        "hidden_size": 64,
        "inner_size": 256,
        "n_layers": 2,
        "n_heads": 2,
        "hidden_dropout_prob": 0.2,
        "attn_dropout_prob": 0.2,
        "learning_rate": 0.001,
        "seed": seed,
        "reproducibility": True,
        "use_gpu": False,
        "device": "cpu",
        "show_progress": False,
        "checkpoint_dir": str(work / "saved"),
        "log_wandb": False,
        "state": "INFO",
    }
    env = {
        **os.environ,
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    started = time.perf_counter()
    proc = subprocess.run(
        [python, "-c", RUNNER, json.dumps(config)],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        check=False,
    )
    seconds = time.perf_counter() - started
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RECBOLE_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"status": f"RecBole failed (exit {proc.returncode}): {' | '.join(tail)}"}
    result = json.loads(line.removeprefix("RECBOLE_RESULT "))
    test = result["test_result"]
    return {
        "status": "ok",
        "seconds": seconds,
        "hr_at_10": test.get("hit@10"),
        "ndcg_at_10": test.get("ndcg@10"),
        "mrr_at_10": test.get("mrr@10"),
        "best_valid_ndcg_at_10": result["best_valid_score"],
        "epochs_max": epochs,
    }


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="few epochs on both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recbole-python", help="python of a venv with recbole installed")
    parser.add_argument("--export-dir", help="keep the exported atomic files here")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, both sides")
    parser.add_argument("--recbole-epochs", type=int, default=50, help="RecBole's epoch cap")
    args = parser.parse_args()
    if not TAOBAO.is_file():
        print(f"{TAOBAO} is absent: nothing to compare", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    from rlrec.data.prepare import prepare
    from rlrec.models.encoder import EncoderConfig
    from rlrec.models.pretrain import PretrainConfig, train_encoder

    enc = EncoderConfig()
    cfg = PretrainConfig(device="cpu", seed=args.seed)
    if args.quick:
        cfg = PretrainConfig(device="cpu", seed=args.seed, pretrain_epochs=1, finetune_epochs=2)
    out: dict[str, Any] = {
        "quick": args.quick,
        "seed": args.seed,
        "dataset": "taobao_sample",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": _load(),
        "max_len": enc.max_len,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ds = load_dataset(prepare([TAOBAO], "taobao", work / "taobao"))
        # Absolute: RecBole runs in its own working directory.
        export_root = (Path(args.export_dir) if args.export_dir else work / "recbole").resolve()
        rows = export_recbole(ds, export_root, "taobao", enc.max_len)
        out.update({f"{split}_targets": n for split, n in rows.items()})
        out["items"] = ds.n_items
        started = time.perf_counter()
        result = train_encoder(ds, enc, cfg, progress=sys.stderr.isatty())
        report = evaluate_next_step(result.model, ds)
        out["rlrec_seconds"] = time.perf_counter() - started
        out["rlrec_epochs"] = len(result.history)
        rows_by_model = {"rlrec_encoder": report["encoder"]}
        rows_by_model.update({f"baseline_{k}": v for k, v in report["baselines"].items()})
        for model, metrics in rows_by_model.items():
            for metric, value in metrics.items():
                out[f"{model}_{metric.replace('@', '_at_')}"] = value
        assert report["protocol"]["targets"] == rows["test"]
        if args.recbole_python:
            epochs = 3 if args.quick else args.recbole_epochs
            rb = run_recbole(
                args.recbole_python,
                export_root,
                "taobao",
                enc.max_len,
                epochs,
                args.seed,
                work,
                args.threads,
            )
        else:
            rb = {"status": "not run: pass --recbole-python (a venv with recbole, see docstring)"}
        out["recbole_status"] = rb.pop("status")
        keys = ("seconds", "hr_at_10", "ndcg_at_10", "mrr_at_10", "best_valid_ndcg_at_10")
        for key in (*keys, "epochs_max"):
            out[f"recbole_sasrec_{key}"] = rb.get(key)
    out["load_average_end"] = _load()
    write_json_atomic(args.out, out)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
