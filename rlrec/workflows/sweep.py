"""``rlrec sweep``: hyperparameter sweeps and multi-seed runs on Ray, resumable trial by trial.

A sweep is a list of trials, one per (configuration, seed). A configuration is the agent preset
with some fields overridden (``--grid learning_rate=1e-3,3e-4 env.max_steps=50,100``): agent
fields by name (or ``agent.NAME``), simulator fields as ``env.NAME`` (nested:
``env.reward_weights.buy``). Every key and value is checked against
:class:`rlrec.agents.config.AgentConfig` and :class:`rlrec.envs.config.EnvConfig` before anything
starts. Each trial is a full ``rlrec train`` plus ``rlrec evaluate``
(:func:`rlrec.agents.train.train_agent`, :func:`rlrec.workflows.evaluate.evaluate_run`), run
by Ray Tune on the local machine (a Ray started for the sweep) or on the cluster at
``--address``, one CPU and one torch thread per trial.

Sweep directory ``DIR``::

    sweep.json                 what the sweep is: presets, seeds, grid, configurations, trials
    presets/env-<hash>.yaml    the env preset of each configuration with ``env.*`` overrides
    trials/<trial>/run/        the trial's run directory (config.yaml, tensorboard/, policy,
                               eval.json): ``tensorboard --logdir DIR/trials``
    trials/<trial>/result.json the trial's completion record (status ok or error), written
                               atomically by the driver when the trial reports
    results.csv, results.md    per configuration: the mean over seeds of the agent's ratio to
                               the best non-oracle baseline with a 95% interval
    trials.csv                 one row per trial
    best_agent.yaml            the best configuration as an agent preset (``--agent FILE``)
    best_env.yaml              its env preset, when the grid has ``env.*`` keys
    ray/                       Ray Tune's own experiment folders (one per attempt)

Resuming (``--resume``) reads ``sweep.json`` and runs only the trials without an ``ok``
record: a record is the last thing written for a trial, through a temporary file and a rename,
so after a ``kill -9`` of the driver every trial either has its complete record (and is never
run again) or has none (and is run again from scratch, its partial run directory removed).
This is independent of Ray Tune's experiment state, which a killed driver may leave behind
mid-write; a failed trial's record holds its error and is retried by ``--resume``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import importlib
import io
import itertools
import json
import logging
import math
import os
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rlrec.agents.config import AgentConfig, agent_preset_path, load_agent_config
from rlrec.config import from_mapping, load_yaml, to_mapping
from rlrec.envs.config import EnvConfig
from rlrec.envs.presets import preset_path
from rlrec.errors import UserError, quote_value
from rlrec.fsutil import (
    artifact_kind,
    check_output,
    output_lock,
    write_json_atomic,
    write_marker,
)

__all__ = [
    "BEST_AGENT_FILE",
    "BEST_ENV_FILE",
    "RESULTS_CSV",
    "RESULTS_MD",
    "SWEEP_FILE",
    "TRIALS_CSV",
    "Outcome",
    "SweepConfig",
    "SweepResult",
    "TrialSpec",
    "check_address",
    "load_sweep_config",
    "parallel_map",
    "parse_grid",
    "plan_trials",
    "run_sweep",
    "run_trial",
    "summarize_trials",
]

SWEEP_FILE = "sweep.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
TRIALS_CSV = "trials.csv"
BEST_AGENT_FILE = "best_agent.yaml"
BEST_ENV_FILE = "best_env.yaml"
RECORD_FILE = "result.json"
TRIALS_DIR = "trials"
RUN_SUBDIR = "run"
ADDRESS_TIMEOUT_S = 5.0
"""How long ``--address HOST:PORT`` may take to accept a connection before it is refused."""

SWEEP_SCHEMA = 1


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep runs (saved as ``sweep.json``; ``--resume`` must find the same).

    Attributes:
        env_preset: A bundled env preset name or a YAML path (stored absolute).
        agent_preset: A bundled agent preset name or a YAML path (stored absolute).
        seeds: Training seeds; every configuration runs once per seed.
        grid: Setting -> the values it takes (``learning_rate``, ``env.max_steps``), in order.
        samples: Draw this many configurations of the grid at random (without replacement,
            seeded by ``sample_seed``); None runs the whole grid.
        sample_seed: Seed of the random draw of configurations.
        timesteps: Training steps per trial; None takes the agent's ``total_timesteps``.
        episodes: Simulated users per policy in each trial's evaluation.
        eval_seed: Seed of the evaluation users (the same users for every trial).
        world: Where trials are evaluated: ``fitted`` or ``truth`` (synthetic data only).
    """

    env_preset: str
    agent_preset: str
    seeds: tuple[int, ...] = (0,)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    samples: int | None = None
    sample_seed: int = 0
    timesteps: int | None = None
    episodes: int = 1000
    eval_seed: int = 12345
    world: str = "fitted"

    def __post_init__(self) -> None:
        if not self.seeds:
            raise UserError("--seeds: no seed given; pass e.g. --seeds 0,1,2")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"--seeds {list(self.seeds)}: a seed is repeated")
        if self.samples is not None and self.samples < 1:
            raise UserError(f"--samples: {self.samples}, expected >= 1")
        if self.timesteps is not None and self.timesteps < 1:
            raise UserError(f"--timesteps: {self.timesteps}, expected >= 1")
        if self.episodes < 1:
            raise UserError(f"--episodes: {self.episodes}, expected >= 1")
        if self.world not in ("fitted", "truth"):
            raise UserError(f"--world {self.world!r}: expected fitted or truth")


@dataclass(frozen=True)
class TrialSpec:
    """One trial, as the plain data that travels to a Ray worker.

    Attributes:
        name: ``c<config>_s<seed>``: the trial's folder under ``DIR/trials``.
        config_id: ``c<index>`` of the configuration.
        seed: The training seed.
        overrides: The configuration's grid values (setting -> value).
        env_preset: The env preset to train on (a derived file under ``DIR/presets`` when
            the configuration overrides ``env.*``); absolute when a file.
        agent: The resolved agent settings (a mapping of :class:`AgentConfig`).
        trial_dir: ``DIR/trials/<name>``, absolute.
        cache_dir: The artifact cache, absolute.
        timesteps: Training steps, or None for the agent's own.
        episodes: Evaluation users per policy.
        eval_seed: Seed of the evaluation users.
        world: ``fitted`` or ``truth``.
        threads: Torch threads of the trial (its CPUs).
    """

    name: str
    config_id: str
    seed: int
    overrides: dict[str, Any]
    env_preset: str
    agent: dict[str, Any]
    trial_dir: str
    cache_dir: str
    timesteps: int | None
    episodes: int
    eval_seed: int
    world: str
    threads: int = 1


@dataclass(frozen=True)
class Outcome:
    """What one item of :func:`parallel_map` gave.

    Attributes:
        index: The item's position in the input.
        value: The function's JSON-friendly return value (None when it failed).
        error: A one-line error (``Type: message``), or None.
        traceback: The full traceback text of a failure, or None.
    """

    index: int
    value: Any = None
    error: str | None = None
    traceback: str | None = None


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns.

    Attributes:
        out: The sweep directory.
        trials: Trials in the sweep.
        ran: Trials run by this call (the others had an ``ok`` record already).
        ok: Trials with an ``ok`` record.
        failed: Name -> one-line error of the failed trials.
        unfinished: Trials with no record after this call (the sweep was interrupted, e.g.
            by Ctrl-C: Ray Tune stops its trials); ``--resume`` runs them.
        table: Per-configuration rows of ``results.csv``, best first.
        best: The best row (None when no trial succeeded).
        seconds: Wall time of this call.
    """

    out: Path
    trials: int
    ran: int
    ok: int
    failed: dict[str, str]
    unfinished: list[str]
    table: list[dict[str, Any]]
    best: dict[str, Any] | None
    seconds: float


# --------------------------------------------------------------------------- the grid


def _split_values(text: str) -> list[str]:
    """Split ``v1,v2`` at commas outside brackets (``critic_arch=[64,64],[32]`` is 2 values)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _parse_value(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        # YAML 1.1 reads '3e-4' as a string; a number is what a grid value like that means.
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """Parse ``--grid`` arguments ``KEY=V1,V2`` into setting -> values (YAML scalars).

    Raises:
        UserError: If an item has no ``=``, an empty value, or a key given twice.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(
                f"--grid {quote_value(item)}: expected KEY=V1,V2 (e.g. learning_rate=1e-3,3e-4)"
            )
        texts = _split_values(values)
        if any(not t for t in texts):
            raise UserError(f"--grid {quote_value(item)}: an empty value; list V1,V2,...")
        if key in grid:
            raise UserError(f"--grid {key}: given twice; list all its values in one KEY=V1,V2")
        grid[key] = [_parse_value(t) for t in texts]
    return grid


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _valid_keys() -> str:
    agent = ", ".join(_field_names(AgentConfig))
    env = ", ".join(f"env.{n}" for n in _field_names(EnvConfig) if n != "seed")
    return f"agent settings ({agent}) or env settings ({env}, env.reward_weights.engage|cart|buy)"


def _check_key(key: str) -> tuple[str, tuple[str, ...]]:
    """``(section, path)`` of a grid key: ``('agent', ('learning_rate',))`` and the like.

    Raises:
        UserError: Naming the key and listing the valid ones.
    """
    parts = tuple(key.split("."))
    section = "agent"
    if parts[0] in ("agent", "env") and len(parts) > 1:
        section, parts = parts[0], parts[1:]
    cls: Any = AgentConfig if section == "agent" else EnvConfig
    for i, name in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        if name not in fields or (section == "env" and name == "seed"):
            raise UserError(f"--grid {key}: unknown setting; valid keys: {_valid_keys()}")
        hint = cls.__dataclass_fields__[name].type
        resolved = _nested_dataclass(cls, name)
        if i < len(parts) - 1:
            if resolved is None:
                raise UserError(f"--grid {key}: {name} has no sub-settings ({hint})")
            cls = resolved
    return section, parts


def _nested_dataclass(cls: type, name: str) -> type | None:
    import typing

    hint = typing.get_type_hints(cls)[name]
    return hint if dataclasses.is_dataclass(hint) and isinstance(hint, type) else None


def _set_path(mapping: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = mapping
    for name in path[:-1]:
        child = node.get(name)
        node[name] = dict(child) if isinstance(child, Mapping) else {}
        node = node[name]
    node[path[-1]] = value


def _digest(payload: Any, n: int = 10) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _absolute_preset(name_or_path: str, resolve: Callable[[str], Path], bundled: Path) -> str:
    """A bundled preset stays its name; a file becomes its absolute path.

    Trials may run in another working directory: Ray Tune starts each in its own folder.
    """
    path = resolve(name_or_path)
    if path.resolve().parent == bundled.resolve() and not Path(name_or_path).is_file():
        return str(name_or_path)
    return str(path.resolve())


def _configurations(config: SweepConfig) -> list[dict[str, Any]]:
    """The grid's configurations (setting -> value), all or the seeded random draw."""
    keys = list(config.grid)
    combos = [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(config.grid[k] for k in keys))
    ]
    if config.samples is None or config.samples >= len(combos):
        return combos
    # Drawn here rather than by Ray Tune's tune.choice: Tune samples each setting with
    # replacement (the same configuration can come twice), and the list must be known before
    # Ray starts so that --resume can tell which trials are done.
    rng = np.random.default_rng(config.sample_seed)
    picked = sorted(rng.choice(len(combos), size=config.samples, replace=False).tolist())
    return [combos[i] for i in picked]


def _env_preset_for(
    config: SweepConfig, env_overrides: dict[tuple[str, ...], Any], out: Path
) -> tuple[str, dict[str, Any] | None]:
    """The env preset of a configuration: the sweep's own, or a derived file (and its data)."""
    if not env_overrides:
        return config.env_preset, None
    source = preset_path(config.env_preset)
    data = load_yaml(source)
    folder = source.resolve().parent
    root = folder.parent if folder.name == "envs" else folder
    inputs = (data.get("data") or {}).get("inputs")
    if inputs:
        # The derived file lives in DIR/presets: relative inputs must keep their meaning.
        data["data"]["inputs"] = [str((root / p).resolve()) for p in inputs]
    env = dict(data.get("env") or {})
    for path, value in env_overrides.items():
        _set_path(env, path, value)
    data["env"] = env
    name = f"env-{_digest(data)}.yaml"
    return str((out / "presets" / name).resolve()), data


def plan_trials(
    config: SweepConfig, out: str | os.PathLike[str], cache_dir: str | os.PathLike[str]
) -> tuple[list[dict[str, Any]], list[TrialSpec], dict[str, dict[str, Any]]]:
    """Check the grid and lay out the sweep's configurations and trials; nothing is run.

    Every configuration's agent and env settings are built here, so that an unknown key or a
    bad value (a batch larger than a rollout) fails before Ray starts.

    Returns:
        The configurations (``id``, ``overrides``, ``env_preset``, ``agent``), the trials (one
        per configuration and seed) and the derived env presets (path -> mapping) to write.

    Raises:
        UserError: For an unknown grid key (naming it and the valid keys) or a bad value.
    """
    root = Path(out).resolve()
    keys = {key: _check_key(key) for key in config.grid}
    base_agent = to_mapping(load_agent_config(config.agent_preset))
    base_env = to_mapping(_load_env(config.env_preset))
    configs: list[dict[str, Any]] = []
    derived: dict[str, dict[str, Any]] = {}
    for index, overrides in enumerate(_configurations(config)):
        cid = f"c{index:03d}"
        agent_map = json.loads(json.dumps(base_agent))
        env_map = json.loads(json.dumps(base_env))
        env_overrides: dict[tuple[str, ...], Any] = {}
        for key, value in overrides.items():
            section, path = keys[key]
            if section == "agent":
                _set_path(agent_map, path, value)
            else:
                _set_path(env_map, path, value)
                env_overrides[path] = value
        label = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "the presets"
        try:
            agent = from_mapping(AgentConfig, agent_map, where="agent")
            from_mapping(EnvConfig, env_map, where="env")
        except UserError as exc:
            raise UserError(f"--grid ({label}): {exc}") from None
        env_preset, data = _env_preset_for(config, env_overrides, root)
        if data is not None:
            derived[env_preset] = data
        configs.append(
            {
                "id": cid,
                "overrides": overrides,
                "env_preset": env_preset,
                "agent": to_mapping(agent),
            }
        )
    trials = [
        TrialSpec(
            name=f"{c['id']}_s{seed}",
            config_id=c["id"],
            seed=seed,
            overrides=c["overrides"],
            env_preset=c["env_preset"],
            agent=c["agent"],
            trial_dir=str(root / TRIALS_DIR / f"{c['id']}_s{seed}"),
            cache_dir=str(Path(cache_dir).resolve()),
            timesteps=config.timesteps,
            episodes=config.episodes,
            eval_seed=config.eval_seed,
            world=config.world,
        )
        for c in configs
        for seed in config.seeds
    ]
    return configs, trials, derived


def _load_env(name_or_path: str) -> EnvConfig:
    from rlrec.envs.presets import load_env_preset

    return load_env_preset(name_or_path).env


# --------------------------------------------------------------------------- one trial


def run_trial(spec: TrialSpec | Mapping[str, Any]) -> dict[str, Any]:
    """Train and evaluate one trial (what a Ray worker runs); returns its record.

    The trial's run directory is made afresh (a partial one of an interrupted attempt is
    removed first, so a rerun equals an uninterrupted run of the same seed). Every native
    thread pool of the process (torch's, OpenMP's, the BLAS under numpy and scipy) is held to
    ``threads`` threads, wherever the trial runs: trials side by side do not oversubscribe the
    CPUs, and a trial run in this process (``bench_sweep.py``'s sequential path) uses the
    same threads as on a Ray worker (where Ray also sets ``OMP_NUM_THREADS``).

    Returns:
        The record: ``trial``, ``config_id``, ``seed``, ``overrides``, ``status`` (``ok``),
        the evaluation's ``ratio_to_best_baseline``, ``ratio_ci95``, ``best_baseline``,
        ``win``, the agent's and best baseline's mean returns, ``timesteps``,
        ``train_seconds``, ``eval_seconds``, ``cpu_seconds``, ``started_at`` and
        ``finished_at`` (Unix seconds: the trial's span on the host's clock), ``host`` and
        ``run_dir``.
    """
    import torch
    from threadpoolctl import threadpool_limits

    from rlrec.agents.train import train_agent
    from rlrec.workflows.evaluate import evaluate_run

    s = spec if isinstance(spec, TrialSpec) else TrialSpec(**spec)
    agent = from_mapping(AgentConfig, {**s.agent, "num_threads": s.threads}, where=s.name)
    run_dir = Path(s.trial_dir) / RUN_SUBDIR
    if run_dir.exists():
        shutil.rmtree(run_dir)
    torch_threads = torch.get_num_threads()
    started_at = time.time()
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        torch.set_num_threads(s.threads)
        with threadpool_limits(limits=s.threads):
            result = train_agent(
                s.env_preset,
                agent,
                run_dir,
                timesteps=s.timesteps,
                seed=s.seed,
                cache_dir=s.cache_dir,
            )
            t1 = time.perf_counter()
            payload = evaluate_run(run_dir, s.episodes, s.eval_seed, world=s.world)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(torch_threads)  # the caller's, when the trial ran in-process
    t2 = time.perf_counter()
    best = payload["best_baseline"]
    policies = payload["policies"]
    return {
        "trial": s.name,
        "config_id": s.config_id,
        "seed": s.seed,
        "overrides": s.overrides,
        "status": "ok",
        "ratio_to_best_baseline": payload["ratio_to_best_baseline"],
        "ratio_ci95": list(payload["ratio_ci95"]),
        "best_baseline": best,
        "win": payload["win"],
        "ppo_return_mean": policies["ppo"]["return_mean"],
        "best_baseline_return_mean": policies[best]["return_mean"],
        "timesteps": result.timesteps,
        "train_seconds": round(t1 - t0, 3),
        "eval_seconds": round(t2 - t1, 3),
        # CPU time of the trial's process (all its threads): the work, whatever the load.
        "cpu_seconds": round(time.process_time() - cpu0, 3),
        "started_at": round(started_at, 3),
        "finished_at": round(time.time(), 3),
        "host": socket.gethostname(),
        "run_dir": str(run_dir),
    }


# --------------------------------------------------------------------------- Ray


def check_address(address: str, timeout: float = ADDRESS_TIMEOUT_S) -> None:
    """Fail fast when ``--address HOST:PORT`` (or ``ray://HOST:PORT``) does not answer.

    ``ray.init`` retries an unreachable GCS for a minute or more; a TCP connect with a
    timeout tells a wrong address in seconds. ``auto`` is left to Ray (it reads the local
    cluster's address file and fails at once when there is none).

    Raises:
        UserError: If the address is malformed or nothing accepts a connection there.
    """
    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise UserError(
            f"--address {quote_value(address)}: expected auto, HOST:PORT or ray://HOST:PORT"
        )
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"--address {address}: no Ray cluster answers there ({reason}, waited up to "
            f"{timeout:g} s); start one with 'ray start --head' or fix the address"
        ) from None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(
            "rlrec sweep needs Ray: pip install 'rlrec[ray]' (ray[tune]), then run it again"
        ) from None
    return ray


def _init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to (or start) Ray; True when this call started it and must shut it down."""
    ray = _import_ray()
    if ray.is_initialized():
        return False  # a caller's session (a test module's, a notebook's) is reused
    if address is not None:
        check_address(address)
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,  # trials' output stays in Ray's logs; the driver prints a line
    }
    if address is None:
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        # Ray runs its workers 15 nice levels below the driver by default, so on a busy
        # machine every other process comes first; a sweep's trials are the work itself, so
        # they keep the driver's priority (a cluster's nodes keep their own setting).
        os.environ.setdefault("RAY_worker_niceness", "0")
        # Ray prestarts one job-less worker per CPU when a driver connects. Tune's trial
        # actors carry a runtime env of their own (env_vars), so those workers never run a
        # trial: the raylet starts the trials' workers anew and kills the prestarted ones (its
        # raylet.out shows both). Their start-up (a Python and a Ray import each) only
        # competes with Ray's own start on a small machine.
        os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
        # Ray's internal metrics (exported by the raylet, the GCS and every worker) feed the
        # dashboard and Prometheus, which a local sweep does not start.
        os.environ.setdefault("RAY_enable_metrics_collection", "0")
    # 'local' starts a Ray of our own: a bare ray.init() would join a cluster that happens to
    # run on this machine (started by 'ray start'), and refuse num_cpus there.
    try:
        ray.init(address=address or "local", **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "start a cluster with 'ray start --head' or fix the address"
        if address not in (None, "auto") and "RAY_AUTH_MODE" not in os.environ:
            # Ray 2.60's 'ray start' turns token authentication on, and a driver given an
            # explicit address sends its token only in token mode ('auto' switches it on).
            hint += (
                "; if the cluster uses token authentication (the default of 'ray start'), "
                "set RAY_AUTH_MODE=token with its token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
            )
        raise UserError(
            f"--address {address or 'local'}: could not connect to Ray ({first}); {hint}"
        ) from None
    return True


def _import_in_background(module: str) -> Callable[[], Any]:
    """Start importing ``module`` in a thread; the returned call waits for it and returns it.

    The waiting call imports the module itself: a no-op when the thread finished it, and the
    import's own error (or a retry, after an import-lock clash with the main thread) if not.
    """
    thread = threading.Thread(
        target=_import_quietly, args=(module,), name=f"import {module}", daemon=True
    )
    thread.start()

    def wait() -> Any:
        thread.join()
        return importlib.import_module(module)

    return wait


def _import_quietly(module: str) -> None:
    with contextlib.suppress(Exception):  # the waiting call imports again and raises it there
        importlib.import_module(module)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _tune_entry(config: dict[str, Any], fn: Callable[[Any], Any], items: list[Any]) -> None:
    """The Ray Tune trainable: run ``fn`` on one item and report its value or its error."""
    from ray import tune

    index = int(config["index"])
    try:
        value = fn(items[index])
        report = {"rlrec_index": index, "rlrec_value": json.dumps(value, default=str)}
    except Exception as exc:  # a failed item is reported, never retried blindly
        report = {
            "rlrec_index": index,
            "rlrec_error": _one_line(exc),
            "rlrec_traceback": traceback.format_exc(),
        }
    tune.report(report)


def parallel_map(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_item: int = 1,
    storage_path: str | os.PathLike[str] | None = None,
    name: str | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run ``fn`` on every item as a Ray Tune trial, in parallel; the sweeps' engine.

    Args:
        fn: A function of one item returning JSON-friendly data; it must be importable or
            picklable by value (Ray ships it to the workers).
        items: The inputs (picklable).
        address: A Ray cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); None starts
            a local Ray with ``num_cpus`` CPUs (a Ray already started in this process is
            reused as it is).
        num_cpus: CPUs of the local Ray; with ``address``, at most this many CPUs' worth of
            items run at once.
        cpus_per_item: CPUs Ray reserves for each item.
        storage_path: Where Ray Tune keeps its experiment folders (default: Ray's).
        name: Ray Tune's experiment name.
        on_outcome: Called in this process as each item reports (or fails): where a caller
            records completion at once.

    Returns:
        One :class:`Outcome` per item, in the items' order. An item whose worker died is an
        outcome with an error; the others still run.

    Raises:
        UserError: If Ray is not installed or the cluster cannot be reached.
    """
    if cpus_per_item < 1:
        raise UserError(f"--cpus-per-trial: {cpus_per_item}, expected >= 1")
    if num_cpus is not None and num_cpus < cpus_per_item:
        raise UserError(f"--num-cpus: {num_cpus}, expected >= {cpus_per_item} (one trial)")
    outcomes: dict[int, Outcome] = {}
    if not items:
        return []
    # Ray Tune's console output (a configuration box, result tables, hints) would bury the
    # sweep's own one line per trial; the legacy reporter at verbosity 0 prints nothing.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune starts each trial in its own folder by default; keep the caller's working
    # directory so that relative paths mean the same in a trial (on this machine).
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # Tune adds CSV, JSON and TensorBoardX result loggers unless told not to. A trial's
    # TensorBoard logs are rlrec's own (its run directory): Tune's copies of its one result
    # are redundant work beside the trials. The JSON logger is passed below (Tune's result
    # table at the end of a run reads its result.json, and warns without it).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Ray Tune's import (a second or more of CPU: pandas, pyarrow, ray.data) overlaps Ray's
    # start, which mostly waits for its processes to come up.
    tune_imported = _import_in_background("ray.tune")
    started = _init_ray(address, num_cpus)
    try:
        tune_imported()
        from ray import tune
        from ray.tune.logger import JsonLoggerCallback

        logging.getLogger("ray.tune").setLevel(logging.WARNING)

        class _Collect(tune.Callback):
            def on_trial_result(
                self,
                iteration: int,
                trials: list[Any],
                trial: Any,
                result: dict[str, Any],
                **info: Any,
            ) -> None:
                if "rlrec_index" not in result:
                    return
                index = int(result["rlrec_index"])
                if "rlrec_error" in result:
                    got = Outcome(index, None, result["rlrec_error"], result.get("rlrec_traceback"))
                else:
                    got = Outcome(index, json.loads(result["rlrec_value"]))
                outcomes[index] = got
                if on_outcome is not None:
                    on_outcome(got)

            def on_trial_error(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
                index = int(trial.config["index"])
                if index in outcomes:
                    return
                error = getattr(trial, "error_file", None) or "see Ray's logs"
                got = Outcome(index, None, f"the trial's Ray worker failed ({error})")
                outcomes[index] = got
                if on_outcome is not None:
                    on_outcome(got)

        concurrent = None
        if num_cpus is not None:
            concurrent = max(1, num_cpus // cpus_per_item)
        trainable = tune.with_resources(
            tune.with_parameters(_tune_entry, fn=fn, items=list(items)), {"cpu": cpus_per_item}
        )
        run_config = tune.RunConfig(
            name=name,
            storage_path=None if storage_path is None else str(Path(storage_path).resolve()),
            callbacks=[_Collect(), JsonLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"index": tune.grid_search(list(range(len(items))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=False),
            run_config=run_config,
        )
        tuner.fit()
    finally:
        if started:
            _import_ray().shutdown()
    return [
        outcomes.get(i, Outcome(i, None, "the trial did not report (Ray stopped it)"))
        for i in range(len(items))
    ]


# --------------------------------------------------------------------------- the sweep


def _spec_payload(
    config: SweepConfig, configs: list[dict[str, Any]], trials: list[TrialSpec]
) -> dict[str, Any]:
    return {
        "schema": SWEEP_SCHEMA,
        "config": to_mapping(config),
        "configurations": configs,
        "trials": [t.name for t in trials],
    }


def _read_record(trial_dir: Path) -> dict[str, Any] | None:
    path = trial_dir / RECORD_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _interval(values: list[float], single: list[float] | None) -> tuple[float, float, str]:
    """95% interval of the mean ratio: Student's t over seeds (2+), else the trial's own."""
    from scipy import stats

    if len(values) >= 2:
        mean = float(np.mean(values))
        sem = float(stats.sem(values))
        if sem == 0.0:
            return mean, mean, "seeds"
        lo, hi = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
        return float(lo), float(hi), "seeds"
    if single is not None:
        return float(single[0]), float(single[1]), "users"
    return math.nan, math.nan, "none"


def summarize_trials(
    configs: list[dict[str, Any]], records: Mapping[str, dict[str, Any]], trial_names: list[str]
) -> list[dict[str, Any]]:
    """Per configuration: the mean over seeds of the ratio to the best baseline, with its CI.

    The interval is Student's t over the seeds' ratios when 2 or more seeds succeeded (the
    spread a new seed would show), else the one trial's paired bootstrap interval over users
    (``ci_over``: ``seeds`` or ``users``). Rows are sorted best first (mean ratio; ties by id).
    """
    rows = []
    for c in configs:
        mine = [records[n] for n in trial_names if n.startswith(c["id"] + "_") and n in records]
        ok = [r for r in mine if r.get("status") == "ok"]
        ratios = [float(r["ratio_to_best_baseline"]) for r in ok]
        lo, hi, over = _interval(ratios, ok[0]["ratio_ci95"] if len(ok) == 1 else None)
        rows.append(
            {
                "config": c["id"],
                "overrides": json.dumps(c["overrides"], sort_keys=False),
                "seeds_ok": len(ok),
                "seeds_failed": sum(r.get("status") == "error" for r in mine),
                "ratio_mean": float(np.mean(ratios)) if ratios else math.nan,
                "ratio_ci95_lo": lo,
                "ratio_ci95_hi": hi,
                "ci_over": over,
                "ratio_min": float(np.min(ratios)) if ratios else math.nan,
                "win_rate": float(np.mean([r["win"] for r in ok])) if ok else math.nan,
                "train_seconds_mean": (
                    float(np.mean([r["train_seconds"] for r in ok])) if ok else math.nan
                ),
            }
        )
    rows.sort(key=lambda r: (-(r["ratio_mean"] if r["seeds_ok"] else -math.inf), r["config"]))
    return rows


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def _fmt(value: float, digits: int = 3) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def _markdown(config: SweepConfig, rows: list[dict[str, Any]], failed: dict[str, str]) -> str:
    lines = [
        f"# Sweep: {Path(config.agent_preset).stem} on {Path(config.env_preset).stem}",
        "",
        f"Seeds {', '.join(map(str, config.seeds))}; {config.episodes} users per policy "
        f"(seed {config.eval_seed}) in the {config.world} world. Ratio: the agent's mean return "
        "over the best non-oracle baseline's; mean over seeds with a 95% interval (Student's t "
        "over seeds, or the paired bootstrap over users when one seed succeeded).",
        "",
        "| rank | config | settings | seeds ok | ratio mean | 95% interval | min | win rate |",
        "|---:|---|---|---:|---:|---|---:|---:|",
    ]
    for rank, r in enumerate(rows, 1):
        settings = ", ".join(f"{k}={v}" for k, v in json.loads(r["overrides"]).items()) or "-"
        failures = f" ({r['seeds_failed']} failed)" if r["seeds_failed"] else ""
        lines.append(
            f"| {rank} | {r['config']} | {settings} | {r['seeds_ok']}{failures} | "
            f"{_fmt(r['ratio_mean'])} | [{_fmt(r['ratio_ci95_lo'])}, {_fmt(r['ratio_ci95_hi'])}] "
            f"({r['ci_over']}) | {_fmt(r['ratio_min'])} | {_fmt(r['win_rate'], 2)} |"
        )
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- `{name}`: {error}" for name, error in sorted(failed.items())]
    return "\n".join(lines) + "\n"


def _write_best(
    out: Path, best: dict[str, Any], configs: list[dict[str, Any]], derived_env: bool
) -> None:
    chosen = next(c for c in configs if c["id"] == best["config"])
    header = (
        f"# The best configuration of the sweep in {out}: {best['config']} "
        f"({best['overrides']}), ratio to the best non-oracle baseline {best['ratio_mean']:.3f} "
        f"[{best['ratio_ci95_lo']:.3f}, {best['ratio_ci95_hi']:.3f}] over {best['seeds_ok']} "
        "seed(s). Train with: rlrec train --agent THIS_FILE\n"
    )
    _write_text_atomic(
        out / BEST_AGENT_FILE, header + yaml.safe_dump(chosen["agent"], sort_keys=False)
    )
    if derived_env:
        source = Path(chosen["env_preset"])
        text = source.read_text() if source.is_file() else ""
        if text:
            _write_text_atomic(
                out / BEST_ENV_FILE, f"# The env preset of {best['config']}\n" + text
            )


def _prebuild(trials: list[TrialSpec], log: Callable[[str], None]) -> None:
    """Build each env preset's dataset, user model and encoder once, before trials start.

    Trials side by side would otherwise all build the same cache entries at once.
    """
    from rlrec.agents.train import build_encoder
    from rlrec.envs.presets import build_artifacts, load_env_preset

    for env_preset in dict.fromkeys(t.env_preset for t in trials):
        cache = trials[0].cache_dir
        preset = load_env_preset(env_preset)
        artifacts = build_artifacts(preset, cache)
        _, reused = build_encoder(preset, artifacts.dataset_dir, cache)
        built = [a for a in ("dataset", "sim_model") if a not in artifacts.reused]
        if not reused:
            built.append("encoder")
        what = f"built {', '.join(built)}" if built else "cached"
        log(f"artifacts of {Path(env_preset).stem}: {what}")


def run_sweep(
    config: SweepConfig,
    out: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] = "logs/cache",
    resume: bool = False,
    force: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_trial: int = 1,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run (or resume) a sweep into ``out``; see the module docstring for the layout.

    Args:
        config: What to run.
        out: The sweep directory.
        cache_dir: The artifact cache (datasets, user models, encoders).
        resume: Continue the sweep in ``out``: only trials without an ``ok`` record run.
        force: Replace an earlier sweep in ``out``.
        address: A Ray cluster; None starts a local Ray.
        num_cpus: CPUs of the local Ray (default: all), or the most a cluster sweep uses.
        cpus_per_trial: CPUs (and torch threads) per trial.
        log: Called with a line of progress (a trial done, a trial failed).

    Raises:
        UserError: Bad grid or presets, an ``out`` that is not a sweep (or one without
            ``--resume``/``--force``), a ``--resume`` whose options differ from the sweep's,
            or an unreachable ``--address``.
    """
    say = log or (lambda line: None)
    started = time.perf_counter()
    root = Path(out)
    if resume and force:
        raise UserError("--resume and --force: pick one (continue the sweep, or start over)")
    config = dataclasses.replace(
        config,
        env_preset=_absolute_preset(config.env_preset, preset_path, _bundled("envs")),
        agent_preset=_absolute_preset(config.agent_preset, agent_preset_path, _bundled("agents")),
    )
    configs, trials, derived = plan_trials(config, root, cache_dir)
    spec = _spec_payload(config, configs, trials)
    # Before anything is written or built: Ray is there, and so is the cluster.
    _import_ray()
    if address is not None:
        check_address(address)
    with output_lock(root):
        if resume:
            _check_resume(root, spec)
        else:
            if artifact_kind(root) == "sweep" and not force:
                raise UserError(
                    f"{root}: already holds a sweep; pass --resume to continue it, --force to "
                    "start over, or choose another --out"
                )
            check_output(root, "sweep", force)
            if root.exists():
                shutil.rmtree(root)  # check_output allowed it: an earlier sweep, with --force
        root.mkdir(parents=True, exist_ok=True)
        write_marker(root, "sweep")
        write_json_atomic(root / SWEEP_FILE, spec)
        for path, data in derived.items():
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_text_atomic(target, yaml.safe_dump(data, sort_keys=False))
        trials = [dataclasses.replace(t, threads=cpus_per_trial) for t in trials]
        records = {t.name: r for t in trials if (r := _read_record(Path(t.trial_dir)))}
        pending = [t for t in trials if records.get(t.name, {}).get("status") != "ok"]
        if resume:
            say(f"resuming: {len(trials) - len(pending)} of {len(trials)} trials done")
        if pending:
            _prebuild(pending, say)
            done = [len(trials) - len(pending)]

            def record(outcome: Outcome) -> None:
                trial = pending[outcome.index]
                if outcome.error is None:
                    rec = outcome.value
                    line = (
                        f"{trial.name}: ratio {rec['ratio_to_best_baseline']:.3f} "
                        f"[{rec['ratio_ci95'][0]:.3f}, {rec['ratio_ci95'][1]:.3f}]"
                    )
                else:
                    rec = {
                        "trial": trial.name,
                        "config_id": trial.config_id,
                        "seed": trial.seed,
                        "overrides": trial.overrides,
                        "status": "error",
                        "error": outcome.error,
                        "traceback": outcome.traceback,
                    }
                    line = f"{trial.name}: FAILED: {outcome.error}"
                # The completion record, atomically: present and whole, or absent.
                write_json_atomic(Path(trial.trial_dir) / RECORD_FILE, rec)
                records[trial.name] = rec
                done[0] += 1
                say(f"[{done[0]}/{len(trials)}] {line}")

            attempt = len(list((root / "ray").glob("attempt-*"))) if (root / "ray").is_dir() else 0
            parallel_map(
                run_trial,
                [dataclasses.asdict(t) for t in pending],
                address=address,
                num_cpus=num_cpus,
                cpus_per_item=cpus_per_trial,
                storage_path=root / "ray",
                name=f"attempt-{attempt}",
                on_outcome=record,
            )
        names = [t.name for t in trials]
        table = summarize_trials(configs, records, names)
        failed = {
            n: str(records[n].get("error"))
            for n in names
            if records.get(n, {}).get("status") == "error"
        }
        trial_rows = [_trial_row(records[n]) for n in names if n in records]
        _write_text_atomic(root / RESULTS_CSV, _csv_text(table))
        _write_text_atomic(root / TRIALS_CSV, _csv_text(trial_rows))
        _write_text_atomic(root / RESULTS_MD, _markdown(config, table, failed))
        best = table[0] if table and table[0]["seeds_ok"] > 0 else None
        if best is not None:
            _write_best(root, best, configs, bool(derived))
    return SweepResult(
        out=root,
        trials=len(trials),
        ran=len(pending),
        ok=sum(r.get("status") == "ok" for r in records.values()),
        failed=failed,
        unfinished=[n for n in names if n not in records],
        table=table,
        best=best,
        seconds=time.perf_counter() - started,
    )


def _trial_row(record: dict[str, Any]) -> dict[str, Any]:
    ci = record.get("ratio_ci95") or [math.nan, math.nan]
    return {
        "trial": record.get("trial"),
        "config": record.get("config_id"),
        "seed": record.get("seed"),
        "status": record.get("status"),
        "ratio": record.get("ratio_to_best_baseline", math.nan),
        "ratio_ci95_lo": ci[0],
        "ratio_ci95_hi": ci[1],
        "best_baseline": record.get("best_baseline", ""),
        "win": record.get("win", ""),
        "train_seconds": record.get("train_seconds", math.nan),
        "host": record.get("host", ""),
        "error": record.get("error", ""),
    }


def _bundled(kind: str) -> Path:
    return Path(__file__).resolve().parents[2] / kind


def _check_resume(root: Path, spec: dict[str, Any]) -> None:
    path = root / SWEEP_FILE
    if not path.is_file():
        raise UserError(f"--resume: {root} holds no sweep ({SWEEP_FILE} missing); drop --resume")
    try:
        stored = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path}: unreadable; start the sweep again with --force") from None
    if not isinstance(stored, dict) or stored.get("config") != json.loads(
        json.dumps(spec["config"])
    ):
        old = stored.get("config", {}) if isinstance(stored, dict) else {}
        new = json.loads(json.dumps(spec["config"]))
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["schema"]
        raise UserError(
            f"--resume: {root} was started with other settings ({', '.join(diff)} differ); "
            f"pass the options recorded in {path}, or --force to start over"
        )


def load_sweep_config(out: str | os.PathLike[str]) -> SweepConfig:
    """The :class:`SweepConfig` a sweep directory was started with (its ``sweep.json``).

    Raises:
        UserError: If ``out`` holds no readable sweep.
    """
    path = Path(out) / SWEEP_FILE
    if not path.is_file():
        raise UserError(f"--resume: {out} holds no sweep ({SWEEP_FILE} missing); drop --resume")
    try:
        stored = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path}: unreadable; start the sweep again with --force") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict):
        raise UserError(f"{path}: not a sweep record; start the sweep again with --force")
    return from_mapping(SweepConfig, stored["config"], where=str(path))
