"""Env presets (``envs/*.yaml``): a data source, the fit, the env, and the encoder stage.

A preset names everything an env needs, so that ``rlrec train`` works on a fresh clone:
:func:`build_artifacts` builds the PreparedDataset and the SimModel a preset asks for, or
reuses them from a cache keyed by a hash of their configuration (and, for a file source, of
the input files' paths, sizes and modification times). Each artifact is written through an
atomic directory rename, so a crash never leaves a half-built cache entry that loads.

Relative input paths resolve against the project root: the parent of the ``envs/`` folder
when the preset lives in one (``envs/taobao.yaml`` names
``../shared/data/taobao_sample/UserBehavior.csv``), otherwise the preset's own folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlrec.config import from_mapping, load_yaml, resolve_preset, to_mapping
from rlrec.data.dataset import META_FILE, write_json_atomic
from rlrec.data.prepare import PrepareConfig
from rlrec.data.schema import SCHEMA_VERSION
from rlrec.envs.config import EnvConfig, EnvSpec
from rlrec.errors import UserError
from rlrec.models.sim_model import ARRAYS_FILE, PARAMS_FILE, SIM_SCHEMA_VERSION
from rlrec.models.synthetic import SyntheticConfig
from rlrec.models.transition import FitConfig

__all__ = [
    "DEFAULT_CACHE_DIR",
    "PRESET_DIR",
    "Artifacts",
    "DataSource",
    "EnvPreset",
    "build_artifacts",
    "check_cache_dir",
    "dataset_key",
    "encoder_key",
    "load_env_preset",
    "preset_path",
    "sim_key",
]

PRESET_DIR = Path(__file__).resolve().parents[2] / "envs"
"""The bundled presets (``synthetic``, ``taobao``) in the project's ``envs/`` folder."""

DEFAULT_CACHE_DIR = Path("logs/cache")


@dataclass(frozen=True)
class DataSource:
    """Where a preset's PreparedDataset comes from.

    Attributes:
        source: ``synthetic`` (the embedded generator, with ``synthetic`` settings) or
            ``file`` (event logs in ``inputs``, read with the reader ``preset``).
        synthetic: Settings of the synthetic generator (``source: synthetic``).
        preset: Reader preset of a file source (``taobao``, ``retailrocket``, ...).
        inputs: Log files of a file source; relative paths resolve against the project root.
        columns: Canonical field -> column, for the ``generic`` reader preset.
        prepare: Preparation settings (sessionization, split, ...).
    """

    source: Literal["synthetic", "file"] = "synthetic"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    preset: str | None = None
    inputs: tuple[str, ...] = ()
    columns: dict[str, str] | None = None
    prepare: PrepareConfig = field(default_factory=PrepareConfig)

    def __post_init__(self) -> None:
        if self.source == "file" and (not self.inputs or self.preset is None):
            raise UserError("data: a file source needs 'preset' and at least one 'inputs' path")


@dataclass(frozen=True)
class EnvPreset:
    """A complete env recipe.

    Attributes:
        data: The data source and its preparation.
        fit: Settings of the user-model fit (:class:`rlrec.models.transition.FitConfig`).
        env: Settings of the simulator.
        encoder: Settings passed through to the encoder stage (pretraining), as a mapping.
        root: Folder that relative ``data.inputs`` resolve against (set by the loader).
        name: The preset's name (its file stem).
    """

    data: DataSource = field(default_factory=DataSource)
    fit: FitConfig = field(default_factory=FitConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    encoder: dict[str, Any] = field(default_factory=dict)
    root: Path = Path(".")
    name: str = "preset"

    def input_paths(self) -> list[Path]:
        """The data inputs as absolute paths."""
        return [(self.root / p).resolve() for p in self.data.inputs]


@dataclass(frozen=True)
class Artifacts:
    """The built (or reused) artifacts of a preset.

    Attributes:
        dataset_dir: The PreparedDataset directory.
        sim_dir: The SimModel directory.
        env: The preset's simulator settings.
        reused: Names of the artifacts found in the cache rather than built.
    """

    dataset_dir: Path
    sim_dir: Path
    env: EnvConfig = field(default_factory=EnvConfig)
    reused: tuple[str, ...] = ()

    def spec(self, num_envs: int = 1) -> EnvSpec:
        """An :class:`~rlrec.envs.config.EnvSpec` for ``make_env`` / ``make_batched_env``."""
        return EnvSpec(
            sim_model=self.sim_dir, dataset=self.dataset_dir, env=self.env, num_envs=num_envs
        )


def preset_path(name_or_path: str | os.PathLike[str]) -> Path:
    """Resolve a bundled env preset name or a YAML path (see :func:`rlrec.config.resolve_preset`).

    Raises:
        UserError: If neither exists.
    """
    return resolve_preset(name_or_path, PRESET_DIR, "env")


def load_env_preset(name_or_path: str | os.PathLike[str]) -> EnvPreset:
    """Load an env preset from a YAML file or a bundled name.

    Raises:
        UserError: Naming the file and the offending field (e.g. ``taobao.yaml: fit.top_k``).
    """
    path = preset_path(name_or_path)
    data = load_yaml(path)
    for reserved in ("root", "name"):
        if reserved in data:
            raise UserError(f"{path}: '{reserved}' is set by the loader, remove it")
    folder = path.resolve().parent
    root = folder.parent if folder.name == "envs" else folder
    preset = from_mapping(EnvPreset, data, where=path.name)
    return EnvPreset(
        data=preset.data,
        fit=preset.fit,
        env=preset.env,
        encoder=preset.encoder,
        root=root,
        name=path.stem,
    )


def dataset_key(preset: EnvPreset) -> str:
    """Hash of everything that determines the preset's PreparedDataset."""
    payload: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "data": to_mapping(preset.data),
    }
    if preset.data.source == "file":
        files = []
        for path in preset.input_paths():
            if not path.is_file():
                raise UserError(
                    f"{preset.name}: data.inputs {path} does not exist; fix the path "
                    "(relative paths start at the project root)"
                )
            st = path.stat()
            files.append([str(path), st.st_size, st.st_mtime_ns])
        payload["files"] = files
        payload["data"].pop("inputs")  # resolved paths above stand for them
    return _digest(payload)


def sim_key(preset: EnvPreset) -> str:
    """Hash of everything that determines the preset's SimModel (its dataset included)."""
    return _digest(
        {
            "sim_schema_version": SIM_SCHEMA_VERSION,
            "dataset": dataset_key(preset),
            "fit": to_mapping(preset.fit),
        }
    )


def encoder_key(preset: EnvPreset) -> str:
    """Hash of what determines the preset's encoder checkpoint: its dataset and ``encoder``.

    The encoder stage caches its checkpoint as ``cache_dir/encoder-<hash>`` with this key,
    as :func:`build_artifacts` does for the dataset and the SimModel.
    """
    return _digest({"dataset": dataset_key(preset), "encoder": to_mapping(preset.encoder)})


def check_cache_dir(cache: Path) -> None:
    """``cache`` is (or can be made) a writable folder.

    Raises:
        UserError: Naming the path, when it or a parent is a file or it cannot be created.
    """
    blocker = next((p for p in (cache, *cache.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(
            f"{cache}: cannot be the artifact cache, {blocker} is a file; pass a folder "
            "(--cache-dir)"
        )
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"{cache}: cannot create the artifact cache ({exc.strerror}); pass a writable "
            "folder (--cache-dir)"
        ) from None
    if not os.access(cache, os.W_OK):
        raise UserError(f"{cache}: the artifact cache is not writable; pass another --cache-dir")


def build_artifacts(
    preset: EnvPreset, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR
) -> Artifacts:
    """Build the preset's PreparedDataset and SimModel, or reuse cached ones.

    Cache entries are ``cache_dir/dataset-<hash>`` and ``cache_dir/sim-<hash>``, each with a
    ``<entry>.json`` beside it recording the configuration it was built from.

    Raises:
        UserError: If an input is missing or a stage fails on the user's data.
    """
    from rlrec.data.dataset import load_dataset
    from rlrec.models.transition import fit_sim_model

    cache = Path(cache_dir)
    check_cache_dir(cache)
    data_key = dataset_key(preset)
    dataset_dir = cache / f"dataset-{data_key}"
    sim_dir = cache / f"sim-{sim_key(preset)}"
    reused = []
    if (dataset_dir / META_FILE).is_file():
        reused.append("dataset")
    else:
        _build_dataset(preset, dataset_dir)
        write_json_atomic(
            cache / f"{dataset_dir.name}.json",
            {"preset": preset.name, "data": to_mapping(preset.data)},
        )
    if (sim_dir / PARAMS_FILE).is_file() and (sim_dir / ARRAYS_FILE).is_file():
        reused.append("sim_model")
    else:
        model = fit_sim_model(load_dataset(dataset_dir), preset.fit)
        model.save(sim_dir, force=True)  # the cache's own entry: a broken one is rebuilt
        write_json_atomic(
            cache / f"{sim_dir.name}.json",
            {"preset": preset.name, "dataset": dataset_dir.name, "fit": to_mapping(preset.fit)},
        )
    return Artifacts(dataset_dir=dataset_dir, sim_dir=sim_dir, env=preset.env, reused=tuple(reused))


def _build_dataset(preset: EnvPreset, out: Path) -> None:
    data = preset.data
    if data.source == "synthetic":
        from rlrec.models.synthetic import generate_dataset

        generate_dataset(out, data.synthetic, data.prepare, force=True)
        return
    from rlrec.data.prepare import prepare

    assert data.preset is not None  # checked by DataSource
    paths = preset.input_paths()
    for path in paths:
        if not path.is_file():
            raise UserError(f"{preset.name}: data.inputs {path} does not exist; fix the path")
    prepare(
        paths, preset=data.preset, out=out, config=data.prepare, columns=data.columns, force=True
    )


def _digest(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
