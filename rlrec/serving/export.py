"""``rlrec export RUN --out DIR``: what serving a policy needs, in a format that runs no code.

An export directory holds everything needed to score a history and nothing executable:

=====================  =====================================================================
``policy.safetensors``  the run's final policy weights, copied byte for byte (the safe format
``policy.json``         of :mod:`rlrec.agents.artifacts`: classes by name, nothing unpickled)
``encoder/``            the run's encoder checkpoint (``model.safetensors`` + ``encoder.json``)
``items.parquet``       the item vocabulary: ``item`` (index), ``raw_id`` (string, as in the
                        log), ``category`` (index)
``categories.parquet``  the category vocabulary: ``category`` (index), ``raw_id``
``plan.npz``            planned agents only: the plan's numeric tables (``allow_pickle=False``)
``serving.json``        how to score: the catalog (dataset item of each action), history
                        length, encoder mode, masking, the plan's prior temperature and category
                        map, the source run and its step
``manifest.json``       ``format: rlrec-serving``, ``version``, ``model_version``, and the
                        SHA-256 and size of every file above; written last (the commit)
=====================  =====================================================================

:func:`load_export` checks every file against the manifest before anything is parsed, so a
file swapped in from another export, or a truncated copy, is refused with its name. The
directory is written through :func:`rlrec.fsutil.atomic_directory` (kind ``export``): a
reader never sees half an export, and an existing one is replaced only with ``force``.

Only a finished run exports: it needs the final ``policy.json`` (a run that stopped at a
checkpoint is refused with the ``--resume`` command), no live ``rlrec train`` on it (its lock
is taken while copying), and the safe policy format (an SB3 ``policy.zip`` is refused with
``rlrec convert-run``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from rlrec.agents.artifacts import (
    LEGACY_POLICY_FILE,
    POLICY_NAME,
    legacy_refusal,
    policy_exists,
    read_policy_meta,
    run_lock,
)
from rlrec.agents.train import (
    ENCODER_DIR,
    PLAN_FILE,
    load_run,
    read_run_config,
    require_stateless,
)
from rlrec.errors import UserError, quote_value
from rlrec.fsutil import atomic_directory
from rlrec.models.checkpoint import vocabulary_fingerprint

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "MANIFEST_FILE",
    "SERVING_FILE",
    "ExportResult",
    "ServingSpec",
    "export_run",
    "read_manifest",
    "read_serving_spec",
    "verify_export",
]

EXPORT_FORMAT = "rlrec-serving"
EXPORT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SERVING_FILE = "serving.json"
ITEMS_FILE = "items.parquet"
CATEGORIES_FILE = "categories.parquet"


@dataclass(frozen=True)
class ServingSpec:
    """How an export scores (``serving.json``).

    Attributes:
        catalog: (A,) dataset item index of each policy action.
        history_length: L, the steps of history the policy reads.
        encoder: ``frozen`` (features computed from the exported encoder) or ``finetune``
            (the policy holds its own copy of the encoder).
        mask_recent: Catalog items among the last ``mask_recent`` steps the policy never shows.
        encoder_batch_size: Histories per encoder forward pass.
        planner: The policy reads the plan's prior (``plan.npz``).
        prior_temperature: The plan prior's temperature (planned agents).
        category_of_dataset_category: (C,) the user model's category of each dataset category
            (planned agents' prior).
        run: The source run directory (provenance only).
        step: Env steps the policy was trained for.
    """

    catalog: tuple[int, ...]
    history_length: int
    encoder: str
    mask_recent: int
    encoder_batch_size: int
    planner: bool
    prior_temperature: float
    category_of_dataset_category: tuple[int, ...]
    run: str
    step: int


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote.

    Attributes:
        out: The export directory.
        model_version: The version the server reports.
        files: File name -> size in bytes.
    """

    out: Path
    model_version: str
    files: dict[str, int]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_finished(root: Path) -> None:
    """Refuse a run without a final policy in the safe format (before anything loads)."""
    if policy_exists(root, POLICY_NAME):
        return
    if (root / LEGACY_POLICY_FILE).exists():
        raise legacy_refusal(root / LEGACY_POLICY_FILE, root)
    raise UserError(
        f"{root}: no final {POLICY_NAME}.json, so the run has not finished; finish it with "
        f"'rlrec train ... --run-name {root.name} --resume' and export again"
    )


def _serving_spec(run_dir: Path) -> tuple[ServingSpec, Any]:
    """The loaded run and the scoring settings an export records of it."""
    run = load_run(run_dir)
    require_stateless(run, f"rlrec export {run_dir}")
    agent = run.config.agent
    n_actions = int(run.policy.n_actions)
    spec = ServingSpec(
        catalog=tuple(int(i) for i in run.sim_model.item_ids[:n_actions]),
        history_length=int(run.config.env.history_length),
        encoder=str(agent.encoder),
        mask_recent=int(agent.mask_recent),
        encoder_batch_size=int(agent.encoder_batch_size),
        planner=bool(agent.planner),
        prior_temperature=float(agent.prior_temperature),
        category_of_dataset_category=tuple(
            int(c) for c in run.sim_model.category_of_dataset_category
        ),
        run=str(run_dir.resolve()),
        step=int(run.policy.model.num_timesteps),
    )
    return spec, run


def export_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    force: bool = False,
    model_version: str | None = None,
) -> ExportResult:
    """Write what serving ``run_dir``'s policy needs into ``out`` (see the module docstring).

    Args:
        run_dir: A finished ``rlrec train`` run directory.
        out: The export directory (refused if it holds anything but an earlier export; that
            one only with ``force``).
        force: Replace an earlier export at ``out`` (atomically: the new one is complete
            before it is renamed into place).
        model_version: The version the server reports; default ``RUN-stepN-SHA12`` (the run's
            folder name, its step and the first 12 hex digits of the weights' SHA-256).

    Returns:
        The directory, the model version and the files written.

    Raises:
        UserError: If the run is not finished, is being trained, holds an SB3 zip, does not
            load, or ``out`` cannot be written.
    """
    root = Path(run_dir)
    read_run_config(root)  # a clear error for a folder that is no run
    _check_finished(root)
    if model_version is not None and not (0 < len(model_version) <= 128):
        raise UserError(f"--model-version: 1 to 128 characters, got {quote_value(model_version)}")
    # The run's lock: no 'rlrec train' may rewrite the policy while it is copied.
    with run_lock(root):
        spec, run = _serving_spec(root)
        policy_meta = read_policy_meta(root / f"{POLICY_NAME}.json")
        weights_sha = str(policy_meta.get("weights_sha256", ""))
        version = model_version or f"{root.resolve().name}-step{spec.step}-{weights_sha[:12]}"
        with atomic_directory(out, "export", force) as tmp:
            for suffix in (".safetensors", ".json"):
                shutil.copyfile(root / f"{POLICY_NAME}{suffix}", tmp / f"{POLICY_NAME}{suffix}")
            (tmp / ENCODER_DIR).mkdir()
            for name in ("model.safetensors", "encoder.json"):
                shutil.copyfile(root / ENCODER_DIR / name, tmp / ENCODER_DIR / name)
            if spec.planner:
                shutil.copyfile(root / PLAN_FILE, tmp / PLAN_FILE)
            items = pd.DataFrame(
                {
                    "item": np.arange(run.dataset.n_items, dtype=np.int64),
                    "raw_id": run.dataset.items["raw_id"].astype(str).to_numpy(),
                    "category": np.asarray(run.dataset.item_category, dtype=np.int64),
                }
            )
            items.to_parquet(tmp / ITEMS_FILE, index=False)
            categories = pd.DataFrame(
                {
                    "category": np.arange(run.dataset.n_categories, dtype=np.int64),
                    "raw_id": run.dataset.categories["raw_id"].astype(str).to_numpy(),
                }
            )
            categories.to_parquet(tmp / CATEGORIES_FILE, index=False)
            serving = {
                **{k: getattr(spec, k) for k in spec.__dataclass_fields__},
                "catalog": list(spec.catalog),
                "category_of_dataset_category": list(spec.category_of_dataset_category),
                "vocab_fingerprint": vocabulary_fingerprint(run.dataset),
            }
            (tmp / SERVING_FILE).write_text(json.dumps(serving, indent=1) + "\n")
            files = sorted(
                str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and p.name
            )
            sizes = {name: (tmp / name).stat().st_size for name in files}
            manifest = {
                "format": EXPORT_FORMAT,
                "version": EXPORT_VERSION,
                "model_version": version,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": {
                    name: {"sha256": _sha256(tmp / name), "bytes": sizes[name]} for name in files
                },
            }
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return ExportResult(out=Path(out), model_version=version, files=sizes)


def read_manifest(export_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """An export's ``manifest.json``, checked for its format.

    Raises:
        UserError: If the directory or manifest is missing, unreadable or of another format.
    """
    root = Path(export_dir)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise UserError(f"{root}: no such export directory; write one with 'rlrec export RUN'")
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise UserError(
            f"{root}: no {MANIFEST_FILE}, so not an export; write one with 'rlrec export RUN'"
        ) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{path}: not JSON (truncated or garbage); export the run again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise UserError(f'{path}: not an rlrec export (no "format": "{EXPORT_FORMAT}")')
    if manifest.get("version") != EXPORT_VERSION:
        raise UserError(
            f"{path}: export version {quote_value(manifest.get('version'))}, this rlrec reads "
            f"{EXPORT_VERSION}; export the run again with this rlrec"
        )
    files = manifest.get("files")
    version = manifest.get("model_version")
    if not isinstance(files, dict) or not files or not isinstance(version, str) or not version:
        raise UserError(f"{path}: no files or model_version; export the run again")
    return manifest


def verify_export(export_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every file of an export against its manifest; return the manifest.

    Raises:
        UserError: Naming the first file that is missing, extra in the manifest's place, or
            whose SHA-256 differs (another export's file, a truncated copy).
    """
    root = Path(export_dir)
    manifest = read_manifest(root)
    for name, entry in manifest["files"].items():
        path = root / str(name)
        if ".." in Path(str(name)).parts or Path(str(name)).is_absolute():
            raise UserError(f"{root / MANIFEST_FILE}: file {quote_value(name)} is outside it")
        if not isinstance(entry, dict) or not path.is_file():
            raise UserError(f"{path}: listed in {MANIFEST_FILE} but missing; export again")
        if _sha256(path) != entry.get("sha256"):
            raise UserError(
                f"{path}: does not match {MANIFEST_FILE} (changed, truncated or from another "
                "export); export the run again"
            )
    return manifest


def read_serving_spec(export_dir: str | os.PathLike[str]) -> tuple[ServingSpec, str]:
    """``serving.json`` of a verified export, and its vocabulary fingerprint.

    Raises:
        UserError: If a field is missing or of the wrong type, naming it.
    """
    path = Path(export_dir) / SERVING_FILE
    try:
        payload = json.loads(path.read_bytes())
    except (OSError, ValueError):
        raise UserError(f"{path}: unreadable or not JSON; export the run again") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path}: expected a JSON object; export the run again")

    def field(name: str, kind: type | tuple[type, ...]) -> Any:
        value = payload.get(name)
        if isinstance(value, bool) and kind is not bool:
            value = None
        if not isinstance(value, kind):
            raise UserError(f"{path}: {name} missing or not {kind}; export the run again")
        return value

    def ints(name: str) -> tuple[int, ...]:
        values = field(name, list)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise UserError(f"{path}: {name} must be non-negative integers; export again")
        return tuple(cast(list[int], values))

    spec = ServingSpec(
        catalog=ints("catalog"),
        history_length=int(field("history_length", int)),
        encoder=str(field("encoder", str)),
        mask_recent=int(field("mask_recent", int)),
        encoder_batch_size=int(field("encoder_batch_size", int)),
        planner=bool(field("planner", bool)),
        prior_temperature=float(field("prior_temperature", (int, float))),
        category_of_dataset_category=ints("category_of_dataset_category"),
        run=str(field("run", str)),
        step=int(field("step", int)),
    )
    if spec.encoder not in ("frozen", "finetune") or spec.history_length < 1 or not spec.catalog:
        raise UserError(f"{path}: encoder, history_length or catalog out of range; export again")
    return spec, str(field("vocab_fingerprint", str))
