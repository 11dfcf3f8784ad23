"""Training the sequence encoder: self-supervised pretraining, then fine-tuning.

Two stages, each with early stopping on the ``valid`` split (the best epoch's weights are kept):

1. **pretrain** (self-supervised, train split): ``causal`` next-item prediction at every
   position (SASRec) or ``masked`` item modelling (BERT4Rec: random steps hidden behind a
   [MASK] token, attention bidirectional). Skipped when ``pretrain_epochs`` is 0.
2. **fine-tune** (causal): next item plus next category (the interest-migration task), the
   loss ``item + category_loss_weight * category``. The state is always causal afterwards, so
   a state at step ``t`` depends only on steps up to ``t``, as the env requires.

The next-item loss is a full softmax for catalogs up to ``full_softmax_max_items`` items and a
sampled softmax beyond: ``n_negatives`` negatives shared by the batch, drawn by popularity
(train count ** 0.75), with the log-q correction. With the copy term (``EncoderConfig.copy``)
the loss is the negative log-likelihood of the copy/generate mixture: the copy part is exact
(it covers at most ``max_len`` history steps), the generative part is the full or the sampled
softmax's ``log p_gen(target)``; the masked objective trains the generative head alone.

Same seed, same data, same device -> same weights: the seed drives the initialisation, the
dropout masks (``torch.manual_seed``), the batch order and the BERT masks (a numpy
``Generator``); deterministic algorithms are switched on for the duration of training.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rlrec.config import to_mapping
from rlrec.data.content import require_items
from rlrec.data.dataset import PreparedDataset, atomic_directory
from rlrec.errors import UserError
from rlrec.models.encoder import EncoderConfig, Pointer, SequenceEncoder
from rlrec.models.metrics import category_accuracy, item_ranking_metrics, target_ranks
from rlrec.models.sequences import (
    IGNORE,
    Windows,
    collapse_repeats,
    encoder_windows,
    mask_tokens,
)

__all__ = [
    "SIZE_TABLE",
    "PretrainConfig",
    "TrainingResult",
    "auto_batch_size",
    "auto_encoder_config",
    "auto_epochs",
    "auto_size",
    "count_train_targets",
    "pretrain_checkpoint",
    "repeat_shares",
    "resolve_device",
    "train_encoder",
]


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of :func:`train_encoder`.

    Attributes:
        objective: Self-supervised objective of the pretraining stage: ``causal`` next-item
            prediction (SASRec) or ``masked`` item modelling (BERT4Rec).
        mask_prob: Fraction of steps hidden by the ``masked`` objective.
        pretrain_epochs: Most epochs of the self-supervised stage (0 skips it; None: from the
            data size, :func:`auto_epochs`).
        finetune_epochs: Most epochs of the next-item + next-category stage (0 skips it;
            None: from the data size).
        patience: Epochs without a better valid NDCG@10 (the masked stage: valid loss) before
            a stage stops early.
        batch_size: Training windows per step (None: from the data, :func:`auto_batch_size`).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases, norms and embeddings).
        category_loss_weight: Weight of the next-category loss in the fine-tuning stage.
        full_softmax_max_items: Largest catalog trained with a full softmax; beyond it the
            next-item loss is a sampled softmax.
        n_negatives: Negatives per batch of the sampled softmax, shared by its rows and drawn
            in proportion to (train count + 1) ** 0.75, with the log-q correction.
        eval_batch_size: Windows per forward pass on the valid split.
        seed: Seed of initialisation, dropout, batch order and masks.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        num_threads: CPU threads for torch; 0 keeps torch's default.
    """

    objective: Literal["causal", "masked"] = "causal"
    mask_prob: float = 0.2
    pretrain_epochs: int | None = None
    finetune_epochs: int | None = None
    patience: int = 3
    batch_size: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    category_loss_weight: float = 1.0
    full_softmax_max_items: int = 50_000
    n_negatives: int = 1024
    eval_batch_size: int = 512
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError("mask_prob must be in (0, 1)")
        epochs = [e for e in (self.pretrain_epochs, self.finetune_epochs) if e is not None]
        if min([*epochs, self.num_threads]) < 0:
            raise ValueError("pretrain_epochs, finetune_epochs and num_threads must be >= 0")
        if len(epochs) == 2 and sum(epochs) == 0:
            raise ValueError("pretrain_epochs and finetune_epochs cannot both be 0")
        batch = self.batch_size if self.batch_size is not None else 1
        if min(self.patience, batch, self.n_negatives, self.eval_batch_size) < 1:
            raise ValueError("patience, batch_size, n_negatives and eval_batch_size must be >= 1")
        # Written so that NaN fails too (every comparison with NaN is false).
        rates = (self.learning_rate, self.weight_decay, self.category_loss_weight)
        if not (
            all(math.isfinite(r) for r in rates)
            and self.learning_rate > 0
            and self.weight_decay >= 0
            and self.category_loss_weight >= 0
        ):
            raise ValueError(
                "need a finite learning_rate > 0, weight_decay >= 0 and category_loss_weight "
                f">= 0, got {self.learning_rate}, {self.weight_decay}, {self.category_loss_weight}"
            )


@dataclass
class TrainingResult:
    """What :func:`train_encoder` returns.

    Attributes:
        model: The trained encoder (best valid epoch of the last stage), in eval mode.
        history: One record per epoch: stage, epoch, losses, valid metrics, throughput.
        best: The best epoch's record of each stage that ran.
        train_sequences_per_s: Training windows processed per second, over all epochs.
        seconds: Wall time of training.
        max_epochs: The (pretrain, fine-tune) epoch ceilings used (:func:`auto_epochs` where
            the config left them None).
        batch_size: The training batch size used (:func:`auto_batch_size` where the config
            left it None).
    """

    model: SequenceEncoder
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_sequences_per_s: float = float("nan")
    seconds: float = 0.0
    max_epochs: tuple[int, int] = (0, 0)
    batch_size: int = 0


SIZE_TABLE: tuple[tuple[int, int, int, int], ...] = (
    (100_000, 64, 2, 2),
    (1_000_000, 128, 2, 4),
    (10**18, 256, 3, 4),
)
"""Width and depth from the data: ``(train targets below, d_model, n_layers, n_heads)``.

A train target is a step ``t >= 1`` of a train session. 64 wide, 2 deep is what the logs we
measured (a few thousand to ~100k targets) need: wider overfits the small ones (measured on
the Taobao sample and in the issue's held-out 100k-event log, where d_model 128 with a
long budget only tied 64). Large logs get the widths SASRec and its reproductions use."""

BATCHES_PER_EPOCH = 8
"""Fewest optimizer steps an epoch takes by default (:func:`auto_batch_size`)."""

MAX_BATCH_SIZE = 128
"""Default batch size (windows) of logs with enough windows for it."""

EPOCH_BUDGET = (100_000, 300_000)
"""Target visits that :func:`auto_epochs` gives the (pretrain, fine-tune) stages at most."""


def count_train_targets(dataset: PreparedDataset) -> int:
    """Train targets of ``dataset``: steps ``t >= 1`` of its train sessions."""
    return collapse_repeats(dataset.sessions("train")).n_targets


def auto_size(n_train_targets: int) -> dict[str, int]:
    """``d_model``, ``n_layers`` and ``n_heads`` from :data:`SIZE_TABLE` for a data size."""
    row = next(row for row in SIZE_TABLE if n_train_targets < row[0])
    return {"d_model": row[1], "n_layers": row[2], "n_heads": row[3]}


def auto_encoder_config(n_train_targets: int, **overrides: Any) -> EncoderConfig:
    """The encoder's width and depth from :data:`SIZE_TABLE`, then ``overrides`` (set fields).

    Args:
        n_train_targets: :func:`count_train_targets` of the dataset.
        **overrides: ``EncoderConfig`` fields to set regardless of the table.
    """
    return EncoderConfig(**{**auto_size(n_train_targets), **overrides})


def auto_epochs(n_train_targets: int) -> tuple[int, int]:
    """Most (pretrain, fine-tune) epochs for a train split of ``n_train_targets`` targets.

    Early stopping on valid NDCG@10 ends training when it stops paying; this is the ceiling.
    The budget is a number of target visits (:data:`EPOCH_BUDGET`), so small logs get many
    epochs (an undertrained SASRec loses to simple baselines; Klenitskiy & Vasilev 2023) and
    large ones a few, with at least 3 and 5 and at most 15 and 45: the time grows with the
    data only up to about 100k targets (measured: about 5 minutes on 2 cores there).
    """
    n = max(n_train_targets, 1)
    pretrain = int(np.clip(round(EPOCH_BUDGET[0] / n), 3, 15))
    finetune = int(np.clip(round(EPOCH_BUDGET[1] / n), 5, 45))
    return pretrain, finetune


def repeat_shares(windows: Windows, chunk: int = 1024) -> tuple[float, float]:
    """Shares of the targets whose item, and whose category, the window shows before them.

    What a copy term can reach: the starting point of the copy gates
    (:meth:`~rlrec.models.encoder.SequenceEncoder.init_copy_gates`). Computed in chunks of
    ``chunk`` windows, (chunk, L, L) booleans at a time.

    Returns:
        ``(item_share, category_share)``, each 0.0 when there are no targets.
    """
    hits = np.zeros(2)
    total = 0
    length = windows.items.shape[1]
    visible = np.tril(np.ones((length, length), dtype=bool))  # (L, L): query t sees j <= t
    for lo in range(0, len(windows), chunk):
        part = slice(lo, lo + chunk)
        targeted = windows.target_items[part] != IGNORE  # (W, L)
        for k, (tokens, targets) in enumerate(
            (
                (windows.items[part], windows.target_items[part]),
                (windows.categories[part], windows.target_categories[part]),
            )
        ):
            # Tokens are index + 1; padding (0) never equals a target token.
            same = tokens[:, None, :] == (targets + 1)[:, :, None]  # (W, L, L)
            hits[k] += (same & visible).any(axis=2)[targeted].sum()
        total += int(targeted.sum())
    if total == 0:
        return 0.0, 0.0
    return float(hits[0] / total), float(hits[1] / total)


def auto_batch_size(n_windows: int) -> int:
    """Training windows per step: 128, or fewer so that an epoch takes at least 8 steps.

    Windows over user histories hold up to ``max_len`` targets each, so a small log with long
    user streams has few of them: the Taobao sample's 6,620 train targets fit in 215 windows,
    two steps an epoch at 128, and early stopping ended training after a few dozen optimizer
    steps with the copy head's scalars barely moved. Smaller batches there (measured: 16-32)
    gave a better valid NDCG@10 in the same time; large logs keep 128.
    """
    return int(np.clip(math.ceil(n_windows / BATCHES_PER_EPOCH), 16, MAX_BATCH_SIZE))


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``device`` setting (``auto`` picks CUDA when available).

    Raises:
        UserError: If CUDA is asked for and not available, or the name is unknown.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r}: CUDA is not available here; use --device cpu or auto")
    return device


def train_encoder(
    dataset: PreparedDataset,
    encoder_config: EncoderConfig | None = None,
    config: PretrainConfig | None = None,
    tensorboard_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Pretrain and fine-tune an encoder on ``dataset``'s train split (valid for stopping).

    Args:
        dataset: A PreparedDataset.
        encoder_config: Model hyperparameters (None: :func:`auto_encoder_config` of the
            data size).
        config: Training settings.
        tensorboard_dir: Where to write TensorBoard event files; None writes none.
        progress: Show a tqdm progress bar on stderr.

    Returns:
        The trained model and its history.

    Raises:
        UserError: If the log has no items, or the train split has no session of two or
            more steps.
    """
    require_items(dataset, "encoder pretraining")
    cfg = config or PretrainConfig()
    n_targets = count_train_targets(dataset)
    enc_cfg = encoder_config or auto_encoder_config(n_targets)
    auto_pre, auto_fine = auto_epochs(n_targets)
    pretrain_epochs = cfg.pretrain_epochs if cfg.pretrain_epochs is not None else auto_pre
    finetune_epochs = cfg.finetune_epochs if cfg.finetune_epochs is not None else auto_fine
    if pretrain_epochs + finetune_epochs == 0:
        raise UserError("pretrain_epochs and finetune_epochs cannot both be 0")
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    train_steps = collapse_repeats(dataset.sessions("train"))
    train_windows = encoder_windows(
        dataset, "train", enc_cfg.max_len, enc_cfg.sessions, training=True
    )
    valid_windows = encoder_windows(dataset, "valid", enc_cfg.max_len, enc_cfg.sessions)
    if train_windows.n_targets == 0:
        raise UserError(
            f"{dataset.path}: the train split has no session of two or more steps; "
            "the encoder needs sequences (check the session gap and split at prepare time)"
        )
    if cfg.batch_size is None:
        cfg = dataclasses.replace(cfg, batch_size=auto_batch_size(len(train_windows)))
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    writer = None
    if tensorboard_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(Path(tensorboard_dir)))
        writer.add_text("config/encoder", _markdown_table(to_mapping(enc_cfg)))
        writer.add_text("config/training", _markdown_table(to_mapping(cfg)))
    try:
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        model = SequenceEncoder(
            enc_cfg, dataset.n_items, dataset.n_categories, dataset.item_category
        ).to(device)
        model.init_copy_gates(*repeat_shares(train_windows))
        trainer = _Trainer(model, cfg, device, rng, writer, progress)
        trainer.set_item_counts(np.bincount(train_steps.items, minlength=dataset.n_items))
        started = time.perf_counter()
        if pretrain_epochs:
            trainer.run_stage("pretrain", train_windows, valid_windows, pretrain_epochs)
        if finetune_epochs:
            trainer.run_stage("finetune", train_windows, valid_windows, finetune_epochs)
        seconds = time.perf_counter() - started
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        if writer is not None:
            writer.close()
    return TrainingResult(
        model=model.eval(),
        history=trainer.history,
        best=trainer.best,
        train_sequences_per_s=trainer.sequences / max(trainer.train_seconds, 1e-9),
        seconds=seconds,
        max_epochs=(pretrain_epochs, finetune_epochs),
        batch_size=int(cfg.batch_size or 0),
    )


def pretrain_checkpoint(
    dataset: PreparedDataset,
    out: str | os.PathLike[str],
    encoder_config: EncoderConfig | None = None,
    config: PretrainConfig | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Train an encoder on ``dataset`` and write its checkpoint directory ``out`` atomically.

    What ``rlrec pretrain`` and ``rlrec quickstart`` run: :func:`train_encoder` with
    TensorBoard logs under ``out/tensorboard``, then ``model.safetensors`` and
    ``encoder.json`` (training config, per-epoch history and the returned summary). The
    lock on ``out`` is taken before training, so a second writer fails at once; an existing
    checkpoint at ``out`` is replaced only with ``force``.

    Returns:
        The ``rlrec pretrain --json`` summary: ``out``, ``dataset``, ``device``, ``seconds``,
        ``train_sequences_per_s``, ``epochs`` and ``best`` (the best record of each stage).
    """
    from rlrec.models.checkpoint import vocabulary_fingerprint, write_encoder_files

    require_items(dataset, "encoder pretraining")  # before the output directory is made
    cfg = config or PretrainConfig()
    with atomic_directory(out, "encoder", force) as tmp:
        result = train_encoder(
            dataset, encoder_config, cfg, tensorboard_dir=tmp / "tensorboard", progress=progress
        )
        summary: dict[str, Any] = {
            "out": str(out),
            "dataset": str(dataset.path),
            "device": str(next(result.model.parameters()).device),
            "seconds": round(result.seconds, 3),
            "train_sequences_per_s": result.train_sequences_per_s,
            "epochs": len(result.history),
            "max_epochs": list(result.max_epochs),
            "batch_size": result.batch_size,
            "encoder_config": to_mapping(result.model.config),
            "best": result.best,
        }
        info = {
            "dataset": str(dataset.path),
            "training_config": {**to_mapping(cfg), "batch_size": result.batch_size},
            "history": result.history,
            "summary": summary,
        }
        write_encoder_files(tmp, result.model, vocabulary_fingerprint(dataset), info)
    return summary


class _Trainer:
    """The optimisation loop shared by both stages (holds the model and the run's counters)."""

    def __init__(
        self,
        model: SequenceEncoder,
        cfg: PretrainConfig,
        device: torch.device,
        rng: np.random.Generator,
        writer: Any,
        progress: bool,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.device = device
        self.rng = rng
        self.writer = writer
        self.progress = progress
        self.sampled = model.n_items > cfg.full_softmax_max_items
        self.log_q: torch.Tensor | None = None
        self.sampling_cdf: np.ndarray | None = None

    def set_item_counts(self, counts: np.ndarray) -> None:
        """Sampled softmax: draw negatives from (n_items,) train step counts ** 0.75 (+1)."""
        weights = (np.asarray(counts, dtype=np.float64) + 1.0) ** 0.75
        q = weights / weights.sum()
        self.sampling_cdf = np.cumsum(q)
        self.log_q = torch.as_tensor(np.log(q), dtype=torch.float32, device=self.device)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, dict[str, Any]] = {}
        self.sequences = 0
        self.train_seconds = 0.0
        self.global_step = 0

    def _optimizer(self) -> torch.optim.Optimizer:
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, param in self.model.named_parameters():
            # Weight decay on matrices of linear layers only: decaying embeddings shrinks
            # rare items toward zero, and norms/biases have no scale to regularise.
            is_matrix = param.dim() == 2 and "embedding" not in name
            (decay if is_matrix else no_decay).append(param)
        return torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.cfg.learning_rate,
        )

    def run_stage(self, stage: str, train: Windows, valid: Windows, epochs: int) -> None:
        """Train one stage with early stopping on valid NDCG@10 (or loss); keep the best weights."""
        optimizer = self._optimizer()
        assert self.cfg.batch_size is not None  # resolved by train_encoder
        n_batches = math.ceil(len(train) / self.cfg.batch_size)
        best_loss, best_state, best_record, waited = math.inf, None, None, 0
        bar = tqdm(total=epochs * n_batches, desc=stage, unit="batch", disable=not self.progress)
        try:
            for epoch in range(1, epochs + 1):
                started = time.perf_counter()
                train_losses = self._train_epoch(stage, train, optimizer, bar)
                elapsed = time.perf_counter() - started
                self.train_seconds += elapsed
                self.sequences += len(train)
                record: dict[str, Any] = {"stage": stage, "epoch": epoch}
                record.update({f"train_{k}": v for k, v in train_losses.items()})
                record.update(self._validate(stage, valid))
                record["train_sequences_per_s"] = len(train) / max(elapsed, 1e-9)
                self.history.append(record)
                self._log(stage, epoch, record)
                bar.set_postfix(
                    loss=f"{record['train_loss']:.3f}", valid=f"{record['valid_loss']:.3f}"
                )
                # Stop on valid NDCG@10 where the stage ranks (the causal stages): the loss
                # keeps falling on the many easy targets while the ranking of the hard ones,
                # what the evaluation measures, has stopped improving (or the reverse). The
                # fine-tuning stage trains the category head too: its accuracy@1 counts as
                # much. The masked objective has no ranking on the valid split: its loss.
                valid_loss = _stopping_loss(stage, record, self.cfg.category_loss_weight)
                # Without valid targets there is nothing to stop on: keep the last epoch.
                if math.isnan(valid_loss) or valid_loss < best_loss - 1e-6:
                    best_loss = valid_loss if not math.isnan(valid_loss) else best_loss
                    best_state = copy.deepcopy(self.model.state_dict())
                    best_record, waited = record, 0
                else:
                    waited += 1
                    if waited >= self.cfg.patience:
                        break
        finally:
            bar.close()
        if best_state is not None:
            self.model.load_state_dict(best_state)
        if best_record is not None:
            self.best[stage] = best_record

    def _batches(self, windows: Windows, shuffle: bool) -> Iterator[dict[str, np.ndarray]]:
        """Batches of windows of similar length, in random order when ``shuffle``.

        Windows are bucketed by length (after a random permutation, so equal lengths mix
        differently every epoch) and each batch keeps only the columns that are real in some
        row: outputs at real positions do not change (positions count real steps and padding
        keys are masked), and most sessions are far shorter than ``max_len``.
        """
        n = len(windows)
        order = self.rng.permutation(n) if shuffle else np.arange(n)
        lengths = (windows.items[order] != 0).sum(axis=1)
        order = order[np.argsort(lengths, kind="stable")]
        size = (self.cfg.batch_size or MAX_BATCH_SIZE) if shuffle else self.cfg.eval_batch_size
        starts = np.arange(0, n, size)
        if shuffle:
            starts = self.rng.permutation(starts)
        for lo in starts:
            idx = order[lo : lo + size]
            items = windows.items[idx]
            width = max(1, int((items != 0).sum(axis=1).max()))
            cols = slice(items.shape[1] - width, None)
            yield {
                "items": items[:, cols],
                "categories": windows.categories[idx][:, cols],
                "target_items": windows.target_items[idx][:, cols],
                "target_categories": windows.target_categories[idx][:, cols],
                "sessions": windows.session_tokens()[idx][:, cols],
            }

    def _to(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, device=self.device)

    def _item_loss(
        self, hidden: torch.Tensor, targets: torch.Tensor, pointer: Pointer | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean next-item negative log-likelihood of (N, d) states against (N,) targets.

        Args:
            hidden: (N, d) query states.
            targets: (N,) dataset item indices.
            pointer: (N,) copy term of the queries (None: the generative head alone).

        Returns:
            The loss, and the (N, n_items) generative logits when the softmax is full (else
            None).
        """
        if not self.sampled:
            logits = self.model.item_logits(hidden)  # (N, n_items)
            if pointer is None:
                return F.cross_entropy(logits, targets), logits
            adjusted = self.model.with_repeat_bias(logits, pointer)  # (N, n_items)
            # log p_gen(target) without materialising the whole log-softmax.
            log_gen = adjusted.gather(1, targets[:, None])[:, 0] - adjusted.logsumexp(dim=-1)
            log_p = self.model.mix_target_log_prob(log_gen, pointer, targets)  # (N,)
            return -log_p.mean(), logits
        assert self.log_q is not None and self.sampling_cdf is not None
        draws = np.searchsorted(self.sampling_cdf, self.rng.random(self.cfg.n_negatives))
        negatives = torch.as_tensor(
            np.minimum(draws, self.model.n_items - 1), device=self.device
        )  # (K,)
        logits = self.model.sampled_item_logits(hidden, targets, negatives)  # (N, 1 + K)
        # Sampled softmax with the log-q correction (Jean et al. 2015): subtracting the log
        # sampling probability makes it a consistent estimate of the full softmax even
        # though popular items are drawn far more often than rare ones.
        correction = torch.cat(
            [self.log_q[targets][:, None], self.log_q[negatives][None, :].expand(len(targets), -1)],
            dim=1,
        )
        if pointer is None:
            return F.cross_entropy(logits - correction, torch.zeros_like(targets)), None
        # The sampled estimate of log p_gen(target); the copy part stays exact. A target in
        # the history is column 0 either way (accidental hits are masked among negatives).
        columns = torch.cat([targets[:, None], negatives[None, :].expand(len(targets), -1)], 1)
        logits = logits + self.model.repeat_adjustment(columns, pointer)  # (N, 1 + K)
        log_gen = torch.log_softmax(logits - correction, dim=1)[:, 0]  # (N,)
        return -self.model.mix_target_log_prob(log_gen, pointer, targets).mean(), None

    def _losses(
        self, stage: str, batch: dict[str, np.ndarray], rng: np.random.Generator
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The stage's losses on one batch, and what validation reuses.

        Returns:
            ``(losses, extra)``; for the causal objectives ``extra`` holds ``h`` (N, d), the
            states at the positions with a next-step target, their ``target_items`` and
            ``target_categories`` (N,), ``category_logits``, ``pointer`` (the (N,) copy term,
            with ``EncoderConfig.copy``) and, with a full softmax, ``item_logits`` (the
            generative head's). Empty for the masked objective.
        """
        model = self.model
        if stage == "pretrain" and self.cfg.objective == "masked":
            items, cats, targets = mask_tokens(
                batch["items"],
                batch["categories"],
                self.cfg.mask_prob,
                model.item_mask_token,
                model.category_mask_token,
                rng,
            )
            hidden = model(
                self._to(items), self._to(cats), causal=False, sessions=self._to(batch["sessions"])
            )  # (B, L, d)
            where = self._to(targets != IGNORE)
            loss, _ = self._item_loss(hidden[where], self._to(targets)[where])
            return {"loss": loss, "item_loss": loss}, {}
        item_tokens, cat_tokens = self._to(batch["items"]), self._to(batch["categories"])
        sessions = self._to(batch["sessions"])
        hidden = model(item_tokens, cat_tokens, sessions=sessions)  # (B, L, d)
        where = self._to(batch["target_items"] != IGNORE)  # (B, L)
        h = hidden[where]  # (N, d)
        pointer = model.pointer(hidden, item_tokens, cat_tokens, sessions)
        pointer = pointer[where] if pointer is not None else None  # (N,)
        target_items = self._to(batch["target_items"])[where]  # (N,)
        target_cats = self._to(batch["target_categories"])[where]  # (N,)
        item_loss, item_logits = self._item_loss(h, target_items, pointer)
        # The category copy mixture's log-probabilities (the head's log-softmax without it).
        cat_logits = model.next_category_log_probs(h, pointer)  # (N, n_categories)
        extra: dict[str, Any] = {
            "h": h,
            "target_items": target_items,
            "target_categories": target_cats,
            "category_logits": cat_logits,
            "pointer": pointer,
        }
        if item_logits is not None:
            extra["item_logits"] = item_logits
        if stage == "pretrain":
            return {"loss": item_loss, "item_loss": item_loss}, extra
        cat_loss = F.nll_loss(cat_logits, target_cats)
        losses = {
            "loss": item_loss + self.cfg.category_loss_weight * cat_loss,
            "item_loss": item_loss,
            "category_loss": cat_loss,
        }
        return losses, extra

    def _train_epoch(
        self, stage: str, windows: Windows, optimizer: torch.optim.Optimizer, bar: Any
    ) -> dict[str, float]:
        self.model.train()
        sums: dict[str, float] = {}
        n = 0
        for batch in self._batches(windows, shuffle=True):
            losses, _ = self._losses(stage, batch, self.rng)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            optimizer.step()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            n += 1
            self.global_step += 1
            bar.update(1)
        return {k: v / max(n, 1) for k, v in sums.items()}

    @torch.no_grad()
    def _validate(self, stage: str, windows: Windows) -> dict[str, float]:
        """Valid loss of the stage's objective, and next-step metrics in the causal stages."""
        self.model.eval()
        if windows.n_targets == 0:
            return {"valid_loss": float("nan")}
        # A fixed generator: the valid masks (and sampled negatives) are the same every epoch.
        rng = np.random.default_rng(self.cfg.seed + 1)
        saved_rng, self.rng = self.rng, rng
        try:
            total, weight = 0.0, 0
            item_ranks, cat_ranks = [], []
            for batch in self._batches(windows, shuffle=False):
                losses, extra = self._losses(stage, batch, rng)
                n = int((batch["target_items"] != IGNORE).sum())
                total += float(losses["loss"]) * n
                weight += n
                if not extra:
                    continue
                pointer = extra["pointer"]
                if "item_logits" in extra:
                    scores = self.model.mix_log_probs(extra["item_logits"], pointer)
                    item_ranks.append(target_ranks(scores, extra["target_items"]))
                else:  # sampled softmax: rank against the full catalog in slices of rows
                    rows = max(1, 4_000_000 // self.model.n_items)
                    for lo in range(0, n, rows):
                        part = slice(lo, lo + rows)
                        scores = self.model.next_item_log_probs(
                            extra["h"][part], pointer[part] if pointer is not None else None
                        )
                        item_ranks.append(target_ranks(scores, extra["target_items"][part]))
                cat_ranks.append(target_ranks(extra["category_logits"], extra["target_categories"]))
        finally:
            self.rng = saved_rng
        out = {"valid_loss": total / max(weight, 1)}
        if item_ranks:
            out.update(
                {
                    f"valid_{k}": v
                    for k, v in item_ranking_metrics(np.concatenate(item_ranks)).items()
                }
            )
            out.update(
                {f"valid_{k}": v for k, v in category_accuracy(np.concatenate(cat_ranks)).items()}
            )
        return out

    def _log(self, stage: str, epoch: int, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if isinstance(value, float) and math.isfinite(value):
                group = "metrics" if key.startswith("valid_") and "loss" not in key else "losses"
                if key == "train_sequences_per_s":
                    group = "charts"
                self.writer.add_scalar(f"{stage}/{group}/{key}", value, epoch)
        self.writer.flush()


def _stopping_loss(stage: str, record: dict[str, Any], category_loss_weight: float) -> float:
    """What early stopping minimises: minus valid NDCG@10 (+ category acc@1), or the loss."""
    if "valid_ndcg@10" not in record:
        return float(record["valid_loss"])
    score = float(record["valid_ndcg@10"])
    if stage == "finetune" and category_loss_weight > 0:
        score += float(record["valid_category_acc@1"])
    return -score


def _markdown_table(mapping: dict[str, Any]) -> str:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in mapping.items()]
    return "\n".join(lines)
