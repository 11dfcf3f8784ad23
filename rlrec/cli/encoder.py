"""``rlrec pretrain``, ``rlrec finetune`` and ``rlrec encoder eval``: the sequence encoder."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from rlrec.cli.parsing import HelpFormatter, add_force, check_out_dir
from rlrec.config import from_mapping, load_yaml

__all__ = [
    "ENCODER_FLAGS",
    "TRAINING_FLAGS",
    "register",
]


TASK_NAMES = ("next_item", "next_category", "next_new_category", "return")
"""``rlrec.models.transfer.TASKS``, written out so that ``rlrec --help`` does not import torch."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec pretrain``, ``rlrec finetune`` and ``rlrec encoder eval``."""
    fmt = HelpFormatter
    pre = sub.add_parser(
        "pretrain",
        help="pretrain and fine-tune the sequence encoder on a prepared dataset",
        description=(
            "Self-supervised pretraining (causal next item, or masked items) on the train "
            "split, then fine-tuning for next item and next category; early stopping on the "
            "valid split. Writes ENC_DIR with model.safetensors, encoder.json and TensorBoard "
            "logs under ENC_DIR/tensorboard. Flags override the --config file."
        ),
        formatter_class=fmt,
    )
    pre.add_argument("data", metavar="DATA_DIR", help="a PreparedDataset directory")
    pre.add_argument("--out", required=True, metavar="ENC_DIR", help="checkpoint directory")
    pre.add_argument(
        "--config",
        metavar="YAML",
        help="settings file with optional 'encoder:' (EncoderConfig) and 'training:' "
        "(PretrainConfig) sections",
    )
    # The defaults below are EncoderConfig's and PretrainConfig's, written out because
    # importing those (torch) would slow every `rlrec --help`; a test keeps them equal. The
    # options themselves default to None so that --config values are only overridden when set.
    enc = pre.add_argument_group("encoder (flags override --config)")
    enc.add_argument(
        "--d-model",
        type=int,
        dest="d_model",
        help="state dimension (default: auto, from the data size: 64 below 100k train targets)",
    )
    enc.add_argument(
        "--layers",
        type=int,
        dest="n_layers",
        help="transformer blocks (default: auto, from the data size: 2 below 1M targets)",
    )
    enc.add_argument(
        "--heads",
        type=int,
        dest="n_heads",
        help="attention heads (default: auto, from the data size: 2 below 100k targets)",
    )
    enc.add_argument(
        "--max-len", type=int, dest="max_len", help="history length in steps (default: 50)"
    )
    enc.add_argument("--dropout", type=float, help="dropout rate (default: 0.2)")
    train = pre.add_argument_group("training (flags override --config)")
    train.add_argument(
        "--objective",
        choices=("causal", "masked"),
        help="pretraining objective (default: causal)",
    )
    train.add_argument(
        "--epochs",
        type=int,
        dest="pretrain_epochs",
        help="most pretraining epochs (default: auto, from the data size)",
    )
    train.add_argument(
        "--finetune-epochs",
        type=int,
        dest="finetune_epochs",
        help="most fine-tuning epochs (default: auto, from the data size)",
    )
    train.add_argument(
        "--patience",
        type=int,
        help="epochs without a better valid NDCG@10 before stopping (default: 3)",
    )
    train.add_argument(
        "--batch-size",
        type=int,
        dest="batch_size",
        help="windows per step (default: auto, from the data size: 128, or fewer so that "
        "an epoch takes 8 steps)",
    )
    train.add_argument(
        "--lr", type=float, dest="learning_rate", help="learning rate (default: 0.001)"
    )
    train.add_argument("--seed", type=int, help="random seed (default: 0)")
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    train.add_argument(
        "--threads", type=int, dest="num_threads", help="CPU threads, 0 for torch's (default: 0)"
    )
    add_force(pre, "encoder checkpoint")
    pre.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (it is hidden anyway when stderr is not a terminal)",
    )
    pre.add_argument("--json", action="store_true", help="print the result as JSON")
    pre.set_defaults(handler=_pretrain)

    group = sub.add_parser(
        "encoder", help="evaluate a trained sequence encoder", formatter_class=HelpFormatter
    )
    verbs = group.add_subparsers(dest="encoder_command", metavar="VERB", required=True)
    ev = verbs.add_parser(
        "eval",
        help="next-item and next-category ranking on the test split, with baselines",
        description=(
            "Full-ranking evaluation (no sampled negatives) of the encoder and of the "
            "popularity, item-Markov, category-Markov, last-category, item-kNN, session-kNN "
            "(SKNN, V-SKNN) and re-visit baselines, each neighbourhood size chosen on the "
            "valid split; the protocol is printed with the numbers."
        ),
        formatter_class=fmt,
    )
    ev.add_argument("encoder", metavar="ENC_DIR", help="checkpoint written by 'rlrec pretrain'")
    ev.add_argument("--data", required=True, metavar="DATA_DIR", help="the PreparedDataset")
    ev.add_argument("--split", default="test", choices=("test", "valid"), help="split to rank")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ev.add_argument(
        "--transfer",
        metavar="TASK[,TASK]",
        type=_tasks,
        default=(),
        help="also fine-tune these tasks from the encoder and from scratch at 10%% and 100%% "
        f"of the labels and report the transfer gain ({', '.join(TASK_NAMES)})",
    )
    ev.add_argument("--seed", type=int, default=0, help="seed of the --transfer runs")
    ev.add_argument(
        "--horizon-days",
        type=float,
        default=7.0,
        dest="horizon_days",
        help="return horizon of the --transfer runs (default: 7.0)",
    )
    grids = ev.add_argument_group("baseline grids (comma-separated; chosen on the valid split)")
    grids.add_argument(
        "--knn-k",
        metavar="K[,K...]",
        help="neighbour sessions of SKNN and V-SKNN (default: 50,100,200,500)",
    )
    grids.add_argument(
        "--knn-sample",
        metavar="N[,N...]",
        help="most recent candidate sessions of SKNN and V-SKNN (default: 500,1000,5000)",
    )
    grids.add_argument(
        "--item-knn-k",
        metavar="K[,K...]",
        help="neighbour items of item-kNN (default: 20,50,100,200)",
    )
    grids.add_argument(
        "--revisit-window",
        metavar="W[,W...]",
        help="history steps of re-visit (default: 10,50,200,1000)",
    )
    grids.add_argument(
        "--knn-mixture",
        metavar="W[,W...]",
        help="weights of session-kNN in encoder_knn, the encoder mixed with it, each in [0, 1) "
        "(default: 0,0.02,0.05,0.1,0.2,0.3,0.5; 0 is the encoder alone)",
    )
    ev.add_argument(
        "--session-only",
        action="store_true",
        help="no baseline sees the user's earlier sessions (re-visit reads the session only)",
    )
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.set_defaults(handler=_evaluate)

    ft = sub.add_parser(
        "finetune",
        help="adapt a pretrained encoder to a task with a task head",
        description=(
            "Fine-tune ENC_DIR (from 'rlrec pretrain') and a task head on DATA_DIR's train "
            "split (early stopping on valid), report the test metric, and write the adapted "
            "encoder, head.safetensors and finetune.json to --out. Tasks: next_item, "
            "next_category, next_new_category (the next category the user has never engaged "
            "with: cross-sell), return (a new session within --horizon-days). --compare also "
            "trains from scratch and reports the transfer gain at 10%% and 100%% of the labels."
        ),
        formatter_class=fmt,
    )
    ft.add_argument("encoder", metavar="ENC_DIR", help="checkpoint written by 'rlrec pretrain'")
    ft.add_argument("--task", required=True, choices=TASK_NAMES, help="downstream task")
    ft.add_argument("--data", required=True, metavar="DATA_DIR", help="the PreparedDataset")
    ft.add_argument("--out", required=True, metavar="DIR", help="output directory")
    ft.add_argument(
        "--labels-fraction",
        type=float,
        default=1.0,
        dest="labels_fraction",
        help="share of the train labels used, in (0, 1]",
    )
    ft.add_argument(
        "--horizon-days", type=float, default=7.0, dest="horizon_days", help="return horizon"
    )
    ft.add_argument("--epochs", type=int, default=40, help="most epochs (early stopping)")
    ft.add_argument("--seed", type=int, default=0, help="random seed")
    ft.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ft.add_argument("--compare", action="store_true", help="also report pretrained vs from-scratch")
    add_force(ft, "fine-tuned encoder")
    ft.add_argument("--json", action="store_true", help="print the result as JSON")
    ft.set_defaults(handler=_finetune)


def _tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(
            f"unknown task(s) {', '.join(unknown) or repr(text)}; expected {', '.join(TASK_NAMES)}"
        )
    return tasks


ENCODER_FLAGS = ("d_model", "n_layers", "n_heads", "max_len", "dropout")
TRAINING_FLAGS = (
    "objective",
    "pretrain_epochs",
    "finetune_epochs",
    "patience",
    "batch_size",
    "learning_rate",
    "seed",
    "device",
    "num_threads",
)


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Encoder and training settings: the --config file, then the flags given."""
    from rlrec.errors import UserError

    encoder: dict[str, Any] = {}
    training: dict[str, Any] = {}
    if args.config:
        data = load_yaml(args.config)
        unknown = sorted(set(data) - {"encoder", "training"})
        if unknown:
            raise UserError(
                f"{args.config}: unknown section(s) {', '.join(unknown)}; "
                "expected 'encoder' and 'training'"
            )
        for name, target in (("encoder", encoder), ("training", training)):
            section = data.get(name) or {}
            if not isinstance(section, dict):
                raise UserError(f"{args.config}: '{name}' must be a mapping of settings")
            target.update(section)
    encoder.update({k: getattr(args, k) for k in ENCODER_FLAGS if getattr(args, k) is not None})
    training.update({k: getattr(args, k) for k in TRAINING_FLAGS if getattr(args, k) is not None})
    return encoder, training


def _pretrain(args: argparse.Namespace) -> int:
    from rlrec.data.dataset import load_dataset
    from rlrec.models.encoder import EncoderConfig
    from rlrec.models.pretrain import (
        PretrainConfig,
        auto_size,
        count_train_targets,
        pretrain_checkpoint,
    )

    check_out_dir(args.out, "encoder", args.force)
    encoder_map, training_map = _settings(args)
    where = args.config or "flags"
    # Bad settings fail before the data loads: check the given ones against the defaults.
    cfg = from_mapping(PretrainConfig, training_map, f"{where}:training")
    from_mapping(EncoderConfig, encoder_map, f"{where}:encoder")
    dataset = load_dataset(args.data)
    # Width and depth from the data size (SIZE_TABLE) unless the config or a flag sets them.
    auto = auto_size(count_train_targets(dataset))
    enc_cfg = from_mapping(EncoderConfig, {**auto, **encoder_map}, f"{where}:encoder")
    # A progress bar in a log file is noise: draw it only on a terminal.
    progress = not args.no_progress and sys.stderr.isatty()
    summary = pretrain_checkpoint(
        dataset, args.out, enc_cfg, cfg, progress=progress, force=args.force
    )
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print(
            f"encoder written to {args.out} ({summary['epochs']} epochs, "
            f"{summary['seconds']:.1f} s, {summary['train_sequences_per_s']:.0f} sequences/s, "
            f"{summary['device']})"
        )
        for stage, record in summary["best"].items():
            metrics = ", ".join(
                f"{k.removeprefix('valid_')} {v:.4f}"
                for k, v in record.items()
                if k.startswith("valid_") and isinstance(v, float)
            )
            print(f"  best {stage} epoch {record['epoch']}: {metrics}")
        print(f"evaluate with: rlrec encoder eval {args.out} --data {args.data}")
    return 0


def _number_list(
    text: str, flag: str, parse: Callable[[str], Any], ok: Callable[[Any], bool], what: str
) -> tuple[Any, ...]:
    """Parse a comma-separated list given to ``flag``: every part through ``parse``, each ``ok``.

    ``what`` names the values with an example, for the one-line error (``positive
    integers, e.g. 50,100``); NaN fails every comparison, so ``ok`` refuses it too.
    """
    from rlrec.errors import UserError

    error = UserError(f"{flag} {text!r}: expected comma-separated {what}")
    try:
        values = tuple(parse(part) for part in text.split(","))
    except ValueError:
        raise error from None
    if not all(ok(v) for v in values):
        raise error
    return values


def _positive_ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    """Parse a comma-separated list of positive integers given to ``flag``."""
    if text is None:
        return None
    return _number_list(text, flag, int, lambda v: v > 0, "positive integers, e.g. 50,100")


def _mixture_weights(text: str) -> tuple[float, ...]:
    """Parse ``--knn-mixture``: comma-separated weights in [0, 1)."""
    return _number_list(
        text, "--knn-mixture", float, lambda v: 0.0 <= v < 1.0, "numbers in [0, 1), e.g. 0,0.1"
    )


def _baseline_config(args: argparse.Namespace) -> Any:
    """The eval's BaselineConfig: the default grids, overridden by the flags given."""
    import dataclasses

    from rlrec.evaluation.ranking import BaselineConfig

    given = {
        field: _positive_ints(getattr(args, attr), flag)
        for field, attr, flag in (
            ("knn_k", "knn_k", "--knn-k"),
            ("knn_sample_sizes", "knn_sample", "--knn-sample"),
            ("item_knn_k", "item_knn_k", "--item-knn-k"),
            ("revisit_windows", "revisit_window", "--revisit-window"),
        )
    }
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    overrides["user_history"] = not args.session_only
    if args.knn_mixture is not None:
        overrides["knn_mixture_weights"] = _mixture_weights(args.knn_mixture)
    return dataclasses.replace(BaselineConfig(), **overrides)


def _evaluate(args: argparse.Namespace) -> int:
    from rlrec.data.dataset import load_dataset
    from rlrec.errors import UserError
    from rlrec.evaluation.ranking import evaluate_next_step, format_report
    from rlrec.models.checkpoint import load_encoder
    from rlrec.models.pretrain import resolve_device

    config = _baseline_config(args)  # bad grids fail before anything loads
    if not args.horizon_days > 0 or args.horizon_days == float("inf"):
        raise UserError(f"--horizon-days {args.horizon_days}: must be a positive number of days")
    dataset = load_dataset(args.data)
    if args.transfer:
        from rlrec.models.transfer import check_task

        for task in args.transfer:  # refuse before the evaluation's work
            check_task(dataset, task)
    model, _ = load_encoder(args.encoder, dataset, device=resolve_device(args.device))
    report = evaluate_next_step(model, dataset, split=args.split, config=config)
    if args.transfer:
        from rlrec.models.transfer import FinetuneConfig, transfer_comparison

        report["transfer"] = {
            task: transfer_comparison(
                model,
                dataset,
                task,
                config=FinetuneConfig(
                    task=task,
                    seed=args.seed,
                    device=args.device,
                    horizon_days=args.horizon_days,
                ),
            )
            for task in args.transfer
        }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print(format_report(report))
        if args.transfer:
            print()
            print(_format_transfer(report["transfer"]))
    return 0


def _format_transfer(transfer: dict[str, Any]) -> str:
    lines = ["transfer (test split): pretrained init vs from scratch", ""]
    lines.append(
        f"{'task':<18} {'metric':<8} {'labels':>6} {'train n':>7} {'pretrained':>11} "
        f"{'scratch':>9} {'gain':>8}"
    )
    for task, result in transfer.items():
        for fraction, row in result["fractions"].items():
            lines.append(
                f"{task:<18} {result['metric']:<8} {float(fraction):>6.0%} "
                f"{row['train_labels']:>7} {row['pretrained']:>11.4f} {row['scratch']:>9.4f} "
                f"{row['gain']:>+8.4f}"
            )
    return "\n".join(lines)


def _finetune(args: argparse.Namespace) -> int:
    from rlrec.errors import UserError

    if not 0.0 < args.labels_fraction <= 1.0:  # NaN fails too
        raise UserError(
            f"--labels-fraction {args.labels_fraction}: must be in (0, 1] (e.g. 0.1 for 10%)"
        )
    if not args.horizon_days > 0 or args.horizon_days == float("inf"):
        raise UserError(f"--horizon-days {args.horizon_days}: must be a positive number of days")
    if args.epochs < 1:
        raise UserError(f"--epochs {args.epochs}: must be >= 1")
    check_out_dir(args.out, "encoder", args.force)
    from rlrec.data.dataset import load_dataset
    from rlrec.models.checkpoint import read_checkpoint_info
    from rlrec.models.pretrain import resolve_device
    from rlrec.models.transfer import FinetuneConfig, check_task, finetune_checkpoint

    read_checkpoint_info(args.encoder)  # a missing or broken encoder fails before the data
    dataset = load_dataset(args.data)
    check_task(dataset, args.task)
    resolve_device(args.device)
    cfg = FinetuneConfig(
        task=args.task,
        labels_fraction=args.labels_fraction,
        horizon_days=args.horizon_days,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
    )
    summary = finetune_checkpoint(
        args.encoder, dataset, args.out, cfg, force=args.force, compare=args.compare
    )
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
        return 0
    test = ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items() if k != "n")
    print(
        f"fine-tuned for {args.task} written to {args.out} ({summary['epochs']} epochs, "
        f"{summary['train_labels']} train labels); test: {test}"
    )
    if "transfer" in summary:
        print(_format_transfer({args.task: summary["transfer"]}))
    return 0
