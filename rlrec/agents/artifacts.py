"""Safe policy files, checkpoints and run-directory guards: nothing a run holds can run code.

stable-baselines3's own ``save``/``load`` keep the model's settings in a zip whose
``:serialized:`` fields are pickles, and ``PPO.load`` unpickles them: a planted ``policy.zip``
runs code under any command that opens the run. rlrec writes a policy as two files instead:

* ``NAME.safetensors``: the policy's state dict (``policy/<key>``) and the optimizer's
  tensors (``optimizer/<param index>/<name>``), read with ``safetensors`` (no code);
* ``NAME.json``: the algorithm and policy class *by name* (from a fixed table), the
  observation and action spaces as plain JSON, the policy kwargs (classes by name from the same
  table), the hyperparameters with schedules as numbers, the training counters (``step``
  is the env steps the weights have seen), the optimizer's other state and the sha256 of
  the weights file, so that a weights file from another save is refused.

The model is rebuilt by constructing the algorithm from those settings and loading the state
dict. The JSON is written last: it is the commit of a save (a crash before it leaves the old
pair or no pair). An SB3 zip (``policy.zip``, ``checkpoints/step_N.zip``) of an older rlrec is
refused with the command that converts a *trusted* run (``rlrec convert-run RUN --trust``).

The module also holds the run directory's guards: the device check, the run-name check and
the advisory lock that keeps two ``rlrec train`` processes out of one run.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from rlrec.agents.features import EncoderFeatures
from rlrec.agents.policy import MaskableRecommenderPolicy, Model, RecommenderPolicy
from rlrec.errors import UserError

__all__ = [
    "CHECKPOINT_PATTERN",
    "FORMAT",
    "LEGACY_POLICY_FILE",
    "LOCK_FILE",
    "POLICY_NAME",
    "check_device",
    "check_run_name",
    "checkpoint_files",
    "clean_stale_temporaries",
    "convert_legacy_run",
    "legacy_refusal",
    "load_policy",
    "policy_exists",
    "read_policy_meta",
    "run_lock",
    "save_policy",
]

FORMAT = "rlrec-policy"
FORMAT_VERSION = 1
POLICY_NAME = "policy"
"""A run's final policy: ``policy.safetensors`` + ``policy.json``."""
LEGACY_POLICY_FILE = "policy.zip"
LOCK_FILE = ".lock"
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.json$")
LEGACY_CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.zip$")

# The only classes a policy file may name: anything else is refused, never imported.
ALGORITHMS: dict[str, type[PPO] | type[MaskablePPO]] = {"PPO": PPO, "MaskablePPO": MaskablePPO}
POLICY_CLASSES: dict[str, type] = {
    "RecommenderPolicy": RecommenderPolicy,
    "MaskableRecommenderPolicy": MaskableRecommenderPolicy,
}
KWARG_CLASSES: dict[str, type] = {
    "Tanh": torch.nn.Tanh,
    "ReLU": torch.nn.ReLU,
    "EncoderFeatures": EncoderFeatures,
    "Adam": torch.optim.Adam,
}
# Plain settings restored as saved (SB3 keeps them as attributes of the same name).
SETTINGS = (
    "n_steps",
    "batch_size",
    "n_epochs",
    "gamma",
    "gae_lambda",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
    "target_kl",
    "normalize_advantage",
    "use_sde",
    "sde_sample_freq",
    "seed",
    "n_envs",
)
COUNTERS = ("num_timesteps", "_n_updates", "_episode_num")
SCHEDULES = ("learning_rate", "clip_range", "clip_range_vf")


# --------------------------------------------------------------------------- encoding


def _finite_or_name(value: Any) -> Any:
    # JSON has no infinities: they are written as the strings "inf" and "-inf".
    if isinstance(value, list):
        return [_finite_or_name(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _space_to_json(space: spaces.Space[Any]) -> dict[str, Any]:
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Box):

        def bound(a: np.ndarray) -> Any:
            # One number when uniform (the usual case), else the full nested list.
            flat = np.unique(a)
            return _finite_or_name(flat[0].item() if flat.size == 1 else a.tolist())

        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": bound(space.low),
            "high": bound(space.high),
        }
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: _space_to_json(s) for k, s in space.spaces.items()}}
    raise ValueError(f"cannot save a {type(space).__name__} space")


def _number(value: Any) -> float:
    if value in ("inf", "-inf"):
        return math.inf if value == "inf" else -math.inf
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r:.40}")
    return float(value)


def _bound(value: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    if isinstance(value, list):
        arr = np.vectorize(_number, otypes=[np.float64])(np.asarray(value, dtype=object))
        if arr.shape != shape:
            raise ValueError(f"bounds of shape {arr.shape}, expected {shape}")
        return arr.astype(dtype)
    return np.full(shape, _number(value)).astype(dtype)


def _space_from_json(payload: Any) -> spaces.Space[Any]:
    kind = payload["type"]
    if kind == "Discrete":
        return spaces.Discrete(int(payload["n"]), start=int(payload.get("start", 0)))
    if kind == "Box":
        shape = tuple(int(n) for n in payload["shape"])
        dtype = np.dtype(str(payload["dtype"]))
        if dtype.kind not in "iuf":
            raise ValueError(f"Box dtype {dtype}")
        low = _bound(payload["low"], shape, dtype)
        high = _bound(payload["high"], shape, dtype)
        return spaces.Box(low, high, shape, dtype)
    if kind == "Dict":
        return spaces.Dict({str(k): _space_from_json(v) for k, v in payload["spaces"].items()})
    raise ValueError(f"unknown space type {kind!r:.40}")


def _kwargs_to_json(value: Any) -> Any:
    if isinstance(value, type):
        if KWARG_CLASSES.get(value.__name__) is not value:
            raise ValueError(f"cannot save the class {value.__qualname__} in a policy file")
        return {"$class": value.__name__}
    if isinstance(value, dict):
        return {str(k): _kwargs_to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_kwargs_to_json(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"cannot save a {type(value).__name__} in a policy file")


def _kwargs_from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if any(str(k).startswith(":") for k in value):
            # SB3's ":serialized:"/":type:" fields are pickles: refused, never decoded.
            raise ValueError("a pickled field (':serialized:') is refused")
        if "$class" in value:
            name = value["$class"]
            if len(value) != 1 or not isinstance(name, str) or name not in KWARG_CLASSES:
                raise ValueError(f"class {str(name)[:40]!r} is not one rlrec builds policies from")
            return KWARG_CLASSES[name]
        return {str(k): _kwargs_from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_kwargs_from_json(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"unexpected {type(value).__name__}")


def _schedule_number(value: Any, name: str) -> float | None:
    """A constant schedule as its number (rlrec's presets only use constants)."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    start, end = float(value(1.0)), float(value(0.0))
    if start != end:
        raise ValueError(f"{name}: only constant schedules are saved ({start} -> {end})")
    return start


# --------------------------------------------------------------------------- writing


def _write_atomic(path: Path, blob: bytes) -> None:
    """``blob`` to ``path`` through a synced temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)  # mkstemp's 0600 would hide a run from its group
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_policy(
    model: BaseAlgorithm, directory: str | os.PathLike[str], name: str = POLICY_NAME
) -> Path:
    """Write ``model`` as ``NAME.safetensors`` + ``NAME.json`` in ``directory``, atomically.

    Returns:
        The JSON file (the pair's descriptor).
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    algo = type(model).__name__
    policy_class = type(model.policy).__name__
    if ALGORITHMS.get(algo) is not type(model) or POLICY_CLASSES.get(policy_class) is not type(
        model.policy
    ):
        raise ValueError(f"cannot save a {algo} with a {policy_class} as an rlrec policy")
    tensors: dict[str, torch.Tensor] = {
        f"policy/{k}": v.detach().cpu().contiguous().clone()
        for k, v in model.policy.state_dict().items()
    }
    optimizer = model.policy.optimizer.state_dict()
    extra_state: dict[str, dict[str, Any]] = {}
    for index, state in optimizer["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().contiguous().clone()
            else:
                extra_state.setdefault(str(index), {})[key] = _kwargs_to_json(value)
    blob = save_safetensors(tensors)
    kwargs = {k: v for k, v in model.policy_kwargs.items() if k != "device"}
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "algorithm": algo,
        "policy_class": policy_class,
        "step": int(model.num_timesteps),
        "observation_space": _space_to_json(model.observation_space),
        "action_space": _space_to_json(model.action_space),
        "policy_kwargs": _kwargs_to_json(kwargs),
        "settings": {k: _kwargs_to_json(getattr(model, k)) for k in SETTINGS},
        "schedules": {k: _schedule_number(getattr(model, k), k) for k in SCHEDULES},
        "counters": {k: int(getattr(model, k)) for k in COUNTERS},
        "optimizer": {
            "param_groups": _kwargs_to_json(optimizer["param_groups"]),
            "state": extra_state,
        },
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
    }
    _write_atomic(root / f"{name}.safetensors", blob)
    final = root / f"{name}.json"
    _write_atomic(final, (json.dumps(meta, indent=1) + "\n").encode())
    return final


# --------------------------------------------------------------------------- reading


def legacy_refusal(zip_path: Path, run_dir: Path) -> UserError:
    """The one-line refusal of an SB3 zip, with the command that converts a trusted run."""
    return UserError(
        f"{zip_path}: a stable-baselines3 zip from an older rlrec; rlrec no longer opens "
        "these because they can carry code (pickle). If you made this run yourself, convert "
        f"it with: rlrec convert-run {run_dir} --trust"
    )


def policy_exists(directory: str | os.PathLike[str], name: str = POLICY_NAME) -> bool:
    """Whether ``directory`` holds a saved policy pair's descriptor ``NAME.json``.

    Anything at that path counts (a folder too): a broken final policy is an error to report,
    never a reason to fall back silently to an older checkpoint.
    """
    return (Path(directory) / f"{name}.json").exists()


def read_policy_meta(meta_path: str | os.PathLike[str]) -> dict[str, Any]:
    """A policy descriptor (``NAME.json``), checked for its format but not yet decoded.

    Raises:
        UserError: If the file is unreadable, not JSON or not an rlrec policy file.
    """
    path = Path(meta_path)
    try:
        meta = json.loads(path.read_bytes())
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, ValueError):
        raise UserError(
            f"{path}: not a JSON policy file (truncated or garbage); train the run again"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f'{path}: not an rlrec policy file (no "format": "{FORMAT}")')
    if meta.get("version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: policy format version {str(meta.get('version'))[:20]}, this rlrec reads "
            f"{FORMAT_VERSION}; use the rlrec that wrote it or train the run again"
        )
    return meta


def _read_weights(meta_path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    weights = meta_path.with_suffix(".safetensors")
    try:
        blob = weights.read_bytes()
    except OSError as exc:
        raise UserError(f"{weights}: cannot read ({exc.strerror}); train the run again") from None
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise UserError(
            f"{weights}: does not match {meta_path.name} (another save, or truncated); "
            "train the run again"
        )
    try:
        return load_safetensors(blob)
    except (SafetensorError, ValueError, RuntimeError):
        raise UserError(f"{weights}: not a safetensors file; train the run again") from None


def load_policy(
    meta_path: str | os.PathLike[str],
    device: str = "cpu",
    env: VecEnv | None = None,
    tensorboard_log: str | None = None,
) -> Model:
    """Rebuild the model saved by :func:`save_policy`; nothing in the files is executed.

    Args:
        meta_path: The pair's ``NAME.json``.
        device: Torch device of the model.
        env: The VecEnv to train on (resume); its spaces must equal the saved ones.
        tensorboard_log: TensorBoard folder of further training.

    Returns:
        The model with its weights, optimizer state and step counters.

    Raises:
        UserError: Naming the file and what is wrong with it.
    """
    path = Path(meta_path)
    meta = read_policy_meta(path)
    try:
        algo = ALGORITHMS[str(meta["algorithm"])]
        policy_class = POLICY_CLASSES[str(meta["policy_class"])]
        observation_space = _space_from_json(meta["observation_space"])
        action_space = _space_from_json(meta["action_space"])
        policy_kwargs = _kwargs_from_json(meta["policy_kwargs"])
        settings = _kwargs_from_json(meta["settings"])
        schedules = meta["schedules"]
        counters = {k: int(meta["counters"][k]) for k in COUNTERS}
        step = int(meta["step"])
        if not isinstance(policy_kwargs, dict) or set(settings) != set(SETTINGS):
            raise ValueError("policy_kwargs or settings")
        lr = _number(schedules["learning_rate"])
        clip = _number(schedules["clip_range"])
        clip_vf = schedules.get("clip_range_vf")
        clip_vf = None if clip_vf is None else _number(clip_vf)
        groups = _kwargs_from_json(meta["optimizer"]["param_groups"])
        extra_state = _kwargs_from_json(meta["optimizer"]["state"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(
            f"{path}: malformed policy file ({type(exc).__name__}: {str(exc)[:80]}); "
            "train the run again"
        ) from None
    tensors = _read_weights(path, meta)
    model = algo(policy_class, env=env, device=device, _init_setup_model=False)  # type: ignore[arg-type]
    if env is None:
        model.observation_space, model.action_space = observation_space, action_space
    model.__dict__.update(settings)
    model.policy_kwargs = policy_kwargs
    model.learning_rate, model.clip_range, model.clip_range_vf = lr, clip, clip_vf
    model.tensorboard_log = tensorboard_log
    if env is not None:
        model.n_envs = env.num_envs
        if observation_space != env.observation_space or action_space != env.action_space:
            raise UserError(
                f"{path}: its observation or action space differs from what this rlrec "
                f"builds for the run ({env.observation_space.shape}, {env.action_space}); it "
                "was written by an older version or for another env: start the run again "
                "under a new --run-name"
            )
    try:
        model._setup_model()
        state = {k[len("policy/") :]: v for k, v in tensors.items() if k.startswith("policy/")}
        model.policy.load_state_dict(state, strict=True)
        optimizer: dict[str, Any] = {"state": {}, "param_groups": []}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                optimizer["state"].setdefault(int(index), {})[name] = value
        for index, values in dict(extra_state).items():
            optimizer["state"].setdefault(int(index), {}).update(values)
        optimizer["param_groups"] = [
            {k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in groups
        ]
        model.policy.optimizer.load_state_dict(optimizer)
    except (RuntimeError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise UserError(
            f"{path}: the weights do not fit the policy it describes ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:80] if str(exc) else ''}); train the run again"
        ) from None
    for key, count in counters.items():
        setattr(model, key, count)
    model._num_timesteps_at_start = step
    return model


# --------------------------------------------------------------------------- checkpoints


def checkpoint_files(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(steps, path)`` of the checkpoints in ``directory``, by the step stored inside.

    The file name is only a label: a checkpoint renamed ``step_99999999`` still sorts by the
    step its descriptor holds. ``path`` is the checkpoint's ``step_N.json``.

    A checkpoint that disappears between listing and reading is skipped: a training run
    rotates out its oldest checkpoints while another process (a monitor, ``--resume`` of a
    copy) may be listing the same folder.

    Raises:
        UserError: If a checkpoint descriptor is unreadable or holds no step.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if CHECKPOINT_PATTERN.match(path.name):
            try:
                meta = read_policy_meta(path)
            except UserError:
                if not path.exists():  # rotated out since the listing: not an error
                    continue
                raise
            step = meta.get("step")
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise UserError(f'{path}: no valid "step"; remove it to use the others')
            found.append((step, path))
    return sorted(found)


def legacy_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """The SB3 zips (``step_N.zip``) of an older rlrec in a checkpoint folder."""
    root = Path(directory)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if LEGACY_CHECKPOINT_PATTERN.match(p.name))


def convert_legacy_run(
    run_dir: str | os.PathLike[str], masked: bool, force: bool = False
) -> list[Path]:
    """Convert a *trusted* run's SB3 zips into the safe format (this unpickles them).

    ``policy.zip`` becomes ``policy.safetensors`` + ``policy.json`` and each
    ``checkpoints/step_N.zip`` its pair; the zips are left in place (nothing reads them again).

    Args:
        run_dir: The run directory.
        masked: The run trains MaskablePPO (``mask_recent > 0``), else PPO.
        force: Replace pairs that exist already.

    Returns:
        The descriptors written.

    Raises:
        UserError: If there is nothing to convert, a pair exists without ``force`` or a zip
            does not load.
    """
    root = Path(run_dir)
    jobs = [(root / LEGACY_POLICY_FILE, root, POLICY_NAME)]
    jobs += [(z, z.parent, z.stem) for z in legacy_checkpoints(root / "checkpoints")]
    jobs = [job for job in jobs if job[0].is_file()]
    if not jobs:
        raise UserError(f"{root}: no {LEGACY_POLICY_FILE} or checkpoints/step_N.zip to convert")
    for _, directory, name in jobs:
        if policy_exists(directory, name) and not force:
            raise UserError(
                f"{directory / (name + '.json')}: already exists; pass --force to replace it"
            )
    algo: type[PPO] | type[MaskablePPO] = MaskablePPO if masked else PPO
    written = []
    for zip_path, directory, name in jobs:
        try:
            model = algo.load(zip_path, device="cpu")
        except Exception as exc:  # a trusted but broken zip: whatever SB3 raised, one line
            raise UserError(
                f"{zip_path}: does not load ({type(exc).__name__}: {str(exc)[:80]})"
            ) from None
        try:
            written.append(save_policy(model, directory, name))
        except ValueError as exc:
            raise UserError(f"{zip_path}: cannot be converted ({exc})") from None
    return written


# --------------------------------------------------------------------------- run guards


def check_device(device: str, where: str = "agent.device") -> None:
    """Refuse a torch device this machine does not have (SB3 would fall back to the CPU).

    Raises:
        UserError: Naming ``where`` and the devices available.
    """
    if device in ("cpu", "auto"):
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(
            f"{where}: {device!r:.40} is not a torch device; use cpu, cuda or auto"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise UserError(
                f"{where}: {device} is not available (this machine has {count} CUDA "
                "device(s)); use cpu or auto"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"{where}: mps is not available here; use cpu or auto")
    elif dev.type != "cpu":
        raise UserError(f"{where}: {device!r:.40} is not supported; use cpu, cuda or auto")


def check_run_name(name: str) -> None:
    """A run name is one plain folder name, so the run stays inside ``--log-dir``.

    Raises:
        UserError: For a name with a path separator, ``.``/``..`` or nothing in it.
    """
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or Path(name).is_absolute()
    ):
        raise UserError(
            f"--run-name {name!r:.80}: must be a plain folder name inside --log-dir "
            "(no '/', '..' or absolute path)"
        )


TEMPORARY = re.compile(r"^\..+\.tmp")
"""Names of the temporary files and folders rlrec writes before a rename (``.NAME.tmp...``)."""


def clean_stale_temporaries(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries a killed writer left in ``run_dir`` and its ``checkpoints/``.

    Call it only under :func:`run_lock`: then no live process is writing them.

    Returns:
        What was removed.
    """
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if TEMPORARY.match(path.name):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed


@contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an advisory lock on ``run_dir`` (``.lock`` inside it) for a writer's lifetime.

    ``flock`` locks die with their process, so a run killed with -9 never blocks the next.

    Raises:
        UserError: If another process holds the lock.
    """
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise UserError(
                f"{root}: another 'rlrec train' is writing this run (lock {root / LOCK_FILE}); "
                "wait for it to finish or choose another --run-name"
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the lock
