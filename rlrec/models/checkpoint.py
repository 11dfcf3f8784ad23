"""Encoder checkpoints: a directory with safetensors weights, a JSON config and a fingerprint.

Layout::

    ENC_DIR/
      model.safetensors   the state dict (tensors only: loading never unpickles objects)
      encoder.json        schema version, EncoderConfig, vocabulary sizes and fingerprint,
                          the training configuration and history, the dataset it came from
      tensorboard/        training curves (written by ``rlrec pretrain``)

The vocabulary fingerprint is a SHA-256 over the item raw ids, each item's category and the
category raw ids, in index order. An encoder's token ``i + 1`` means dataset item ``i``, so an
encoder is only meaningful on a dataset with the same vocabulary; :func:`load_encoder` refuses
any other with a one-line :class:`~rlrec.errors.UserError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rlrec.config import from_mapping, to_mapping
from rlrec.data.dataset import PreparedDataset, atomic_directory, write_json_atomic
from rlrec.errors import UserError, quote_value
from rlrec.models.encoder import EncoderConfig, SequenceEncoder

__all__ = [
    "CONFIG_FILE",
    "ENCODER_SCHEMA_VERSION",
    "WEIGHTS_FILE",
    "EncoderCheckpoint",
    "load_encoder",
    "read_checkpoint_info",
    "save_encoder",
    "vocabulary_fingerprint",
    "write_encoder_files",
]

ENCODER_SCHEMA_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "encoder.json"


@dataclass(frozen=True)
class EncoderCheckpoint:
    """What ``encoder.json`` says about a saved encoder.

    Attributes:
        config: The encoder's hyperparameters.
        n_items: Item vocabulary size it was trained on.
        n_categories: Category vocabulary size it was trained on.
        vocab_fingerprint: :func:`vocabulary_fingerprint` of its dataset.
        info: Everything else recorded at save time (training config, history, dataset path).
    """

    config: EncoderConfig
    n_items: int
    n_categories: int
    vocab_fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)


def vocabulary_fingerprint(dataset: PreparedDataset) -> str:
    """SHA-256 (hex) of the dataset's item raw ids, item categories and category raw ids."""
    digest = hashlib.sha256()
    for part in (
        dataset.items["raw_id"].astype(str).tolist(),
        [str(c) for c in dataset.item_category.tolist()],
        dataset.categories["raw_id"].astype(str).tolist(),
    ):
        # Length-prefixed parts, NUL-separated ids: no two vocabularies share a byte string.
        digest.update(f"{len(part)}:".encode())
        digest.update("\0".join(part).encode())
        digest.update(b"\1")
    return digest.hexdigest()


def write_encoder_files(
    directory: str | os.PathLike[str],
    model: SequenceEncoder,
    fingerprint: str,
    info: dict[str, Any] | None = None,
) -> None:
    """Write ``model.safetensors`` and ``encoder.json`` into an existing directory.

    Use :func:`save_encoder` for an atomic, stand-alone save; this is for callers that
    build the directory themselves (``rlrec pretrain`` writes TensorBoard logs beside it).
    """
    root = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / WEIGHTS_FILE))
    payload = {
        "schema_version": ENCODER_SCHEMA_VERSION,
        "encoder_config": to_mapping(model.config),
        "n_items": model.n_items,
        "n_categories": model.n_categories,
        "vocab_fingerprint": fingerprint,
        "info": info or {},
    }
    write_json_atomic(root / CONFIG_FILE, payload)


def save_encoder(
    out: str | os.PathLike[str],
    model: SequenceEncoder,
    fingerprint: str,
    info: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Save an encoder checkpoint directory atomically (an existing one only with ``force``)."""
    with atomic_directory(out, "encoder", force) as tmp:
        write_encoder_files(tmp, model, fingerprint, info)
    return Path(out)


def read_checkpoint_info(path: str | os.PathLike[str]) -> EncoderCheckpoint:
    """Parse ``encoder.json`` of a checkpoint directory.

    Raises:
        UserError: If the directory or its files are missing, malformed, or of another version.
    """
    root = Path(path)
    config_file = root / CONFIG_FILE
    if not root.is_dir():
        raise UserError(f"{root}: no such encoder directory; create one with 'rlrec pretrain'")
    for file in (config_file, root / WEIGHTS_FILE):
        if not file.is_file():
            raise UserError(f"{root}: missing {file.name}; train an encoder with 'rlrec pretrain'")
    try:
        payload = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{config_file}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{config_file}: not UTF-8 JSON text; pretrain the encoder again") from None
    if not isinstance(payload, dict):
        raise UserError(f"{config_file}: expected a JSON object; pretrain the encoder again")
    if payload.get("schema_version") != ENCODER_SCHEMA_VERSION:
        raise UserError(
            f"{config_file}: schema_version {quote_value(payload.get('schema_version'))}, this "
            f"rlrec reads {ENCODER_SCHEMA_VERSION}; pretrain the encoder again"
        )
    missing = [
        k
        for k in ("encoder_config", "n_items", "n_categories", "vocab_fingerprint")
        if k not in payload
    ]
    if missing:
        raise UserError(f"{config_file}: missing {', '.join(missing)}; pretrain the encoder again")
    mapping = payload["encoder_config"]
    if isinstance(mapping, dict):
        # Saved before these parts existed: the weights have no tensors for them.
        for key in ("copy", "sessions", "category_copy", "category_recency"):
            if key not in mapping:
                mapping = {**mapping, key: False}
    config = from_mapping(EncoderConfig, mapping, f"{config_file}:encoder_config")
    for key in ("n_items", "n_categories"):
        value = payload[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(
                f"{config_file}: {key} must be a positive integer, got {quote_value(value)}"
            )
    if not isinstance(payload["vocab_fingerprint"], str):
        raise UserError(f"{config_file}: vocab_fingerprint must be a string; pretrain again")
    if not isinstance(payload.get("info", {}), dict):
        raise UserError(f"{config_file}: info must be a JSON object; pretrain the encoder again")
    return EncoderCheckpoint(
        config=config,
        n_items=payload["n_items"],
        n_categories=payload["n_categories"],
        vocab_fingerprint=str(payload["vocab_fingerprint"]),
        info=payload.get("info", {}),
    )


def load_encoder(
    path: str | os.PathLike[str],
    dataset: PreparedDataset | None = None,
    device: str | torch.device = "cpu",
) -> tuple[SequenceEncoder, EncoderCheckpoint]:
    """Load a checkpoint directory written by :func:`save_encoder`.

    Args:
        path: The checkpoint directory.
        dataset: When given, the checkpoint's vocabulary fingerprint must match this dataset's.
        device: Where to put the weights.

    Returns:
        The model (in eval mode) and the checkpoint's description.

    Raises:
        UserError: If files are missing or malformed, the weights do not fit the config, or
            the vocabulary differs from ``dataset``'s.
    """
    root = Path(path)
    ckpt = read_checkpoint_info(root)
    if dataset is not None:
        expected = vocabulary_fingerprint(dataset)
        if expected != ckpt.vocab_fingerprint:
            raise UserError(
                f"{root}: encoder vocabulary (fingerprint {ckpt.vocab_fingerprint[:12]}, "
                f"{ckpt.n_items} items, {ckpt.n_categories} categories) differs from dataset "
                f"{dataset.path} (fingerprint {expected[:12]}, {dataset.n_items} items, "
                f"{dataset.n_categories} categories); pretrain an encoder on this dataset"
            )
    try:
        # safetensors holds raw tensors only: nothing is unpickled.
        state = load_file(str(root / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{root / WEIGHTS_FILE}: unreadable ({exc}); pretrain again") from None
    item_category = state.get("item_category")
    if item_category is None or tuple(item_category.shape) != (ckpt.n_items,):
        raise UserError(
            f"{root / WEIGHTS_FILE}: item_category missing or not ({ckpt.n_items},); "
            "pretrain the encoder again"
        )
    try:
        model = SequenceEncoder(ckpt.config, ckpt.n_items, ckpt.n_categories, item_category)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{root / WEIGHTS_FILE}: weights do not match {CONFIG_FILE} ({first}); "
            "pretrain the encoder again"
        ) from None
    return model.to(device).eval(), ckpt
