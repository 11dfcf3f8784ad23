"""``rlrec train``: PPO on the batched simulator, from an env preset and an agent preset.

What a run needs is built or reused first, so that a fresh clone trains with one command: the
env preset's PreparedDataset and SimModel (:func:`rlrec.envs.presets.build_artifacts`) and an
encoder checkpoint pretrained on that dataset (:func:`build_encoder`, cached under
``<cache>/encoder-<hash>`` keyed by the dataset and the preset's ``encoder`` settings).

Run directory ``logs/<run-name>/``::

    config.yaml        the resolved run configuration (:class:`RunConfig`), written first
    encoder/           a copy of the encoder checkpoint (the run is self-contained)
    tensorboard/       event files (see rlrec.agents.callbacks)
    checkpoints/       step_<N>.safetensors + step_<N>.json every checkpoint_every env steps
    policy.safetensors the final model's weights and optimizer state
    policy.json        its spaces, settings and step (rlrec.agents.artifacts: nothing in a run
                       directory is unpickled)
    .lock              the advisory lock of the process writing the run

``--resume`` reloads ``config.yaml`` and the checkpoint with the largest stored step and trains
on to the run's ``timesteps``. Paths in ``config.yaml`` are absolute, so a run opens from any
working directory.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import VecEnv

from rlrec.agents.adaptive import AdaptivePlan, AdaptivePlanPolicy
from rlrec.agents.artifacts import (
    LEGACY_POLICY_FILE,
    POLICY_NAME,
    check_device,
    checkpoint_files,
    clean_stale_temporaries,
    legacy_checkpoints,
    legacy_refusal,
    load_policy,
    policy_exists,
    run_lock,
    save_policy,
)
from rlrec.agents.baselines import make_baselines
from rlrec.agents.callbacks import AtomicCheckpoint, RecommendationMetrics, TqdmProgress
from rlrec.agents.categorical import CatalogTerm
from rlrec.agents.config import AgentConfig
from rlrec.agents.features import CategoryPrior, FrozenEncoderStates
from rlrec.agents.planner import PlanTable
from rlrec.agents.policy import (
    AgentPolicy,
    Model,
    RecentItemMask,
    build_model,
    token_to_action_table,
)
from rlrec.agents.robust import RobustChoice, robust_planner, select_robust, validation_worlds
from rlrec.config import from_mapping, load_yaml, to_mapping
from rlrec.data.dataset import PreparedDataset, load_dataset, write_json_atomic
from rlrec.envs.batched import BatchedInterestDrift
from rlrec.envs.config import EnvConfig
from rlrec.envs.presets import (
    DEFAULT_CACHE_DIR,
    Artifacts,
    EnvPreset,
    build_artifacts,
    check_cache_dir,
    load_env_preset,
)
from rlrec.envs.sb3_vec_env import BatchedVecEnv
from rlrec.errors import UserError
from rlrec.models.checkpoint import (
    CONFIG_FILE as ENCODER_CONFIG_FILE,
)
from rlrec.models.checkpoint import (
    ENCODER_SCHEMA_VERSION,
    load_encoder,
    save_encoder,
    vocabulary_fingerprint,
)
from rlrec.models.encoder import EncoderConfig, SequenceEncoder
from rlrec.models.pretrain import PretrainConfig, train_encoder
from rlrec.models.sim_model import SimModel, load_sim_model

__all__ = [
    "ADAPTIVE_CANDIDATE_FILE",
    "ADAPTIVE_FILE",
    "CHECKPOINT_DIR",
    "ENCODER_DIR",
    "PLAN_FILE",
    "POLICY_FILE",
    "ROBUST_FILE",
    "RUN_CONFIG_FILE",
    "TENSORBOARD_DIR",
    "LoadedRun",
    "RunConfig",
    "TrainResult",
    "build_encoder",
    "default_run_name",
    "encoder_settings",
    "load_run",
    "make_training_env",
    "policy_inputs",
    "read_run_config",
    "require_stateless",
    "train_agent",
]

RUN_CONFIG_FILE = "config.yaml"
POLICY_FILE = f"{POLICY_NAME}.json"
ENCODER_DIR = "encoder"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
PLAN_FILE = "plan.npz"
ROBUST_FILE = "robust.json"
ADAPTIVE_CANDIDATE_FILE = "adaptive_candidate.npz"
"""The adaptive plan the robust choice picked, kept while PPO trains from its start."""
ADAPTIVE_FILE = "adaptive.npz"
"""Present when the run acts by its adaptive plan (the never-lose check preferred it)."""


@dataclass(frozen=True)
class RunConfig:
    """The resolved configuration of a training run, saved as ``config.yaml``.

    Attributes:
        env_preset: The env preset (a bundled name or a YAML path) the run was built from.
        agent: The agent settings.
        timesteps: Env steps to train in total.
        seed: Seed of the policy, the sampling and the simulated users.
        cache_dir: Where the artifacts were built or found.
        dataset_dir: The PreparedDataset used.
        sim_dir: The SimModel used.
        encoder_dir: The encoder checkpoint used (its copy is in the run's ``encoder/``).
        env: The simulator settings.
    """

    env_preset: str
    agent: AgentConfig = field(default_factory=AgentConfig)
    timesteps: int = 200_000
    seed: int = 0
    cache_dir: str = str(DEFAULT_CACHE_DIR)
    dataset_dir: str = ""
    sim_dir: str = ""
    encoder_dir: str = ""
    env: EnvConfig = field(default_factory=EnvConfig)


@dataclass
class TrainResult:
    """What :func:`train_agent` returns.

    Attributes:
        run_dir: The run directory.
        policy_path: The final policy's descriptor ``policy.json`` (weights beside it).
        timesteps: Env steps trained in total (over resumptions).
        seconds: Wall time of this call's ``learn``.
        fps: Env steps per second of this call's ``learn``.
        resumed_from: Steps of the checkpoint resumed from, or None.
        reused: Artifacts found in the cache.
    """

    run_dir: Path
    policy_path: Path
    timesteps: int
    seconds: float
    fps: float
    resumed_from: int | None = None
    reused: tuple[str, ...] = ()


def encoder_settings(preset: EnvPreset) -> tuple[EncoderConfig, PretrainConfig]:
    """The encoder stage's settings from the preset's ``encoder`` mapping.

    The mapping has optional ``model`` (:class:`EncoderConfig`) and ``training``
    (:class:`PretrainConfig`) sections; the CPU is the default device here so that a cached
    encoder does not depend on the machine, and ``sessions`` defaults to off (the env's
    observations hold one session).

    Raises:
        UserError: Naming the preset and the offending field.
    """
    section = dict(preset.encoder)
    unknown = sorted(set(section) - {"model", "training"})
    if unknown:
        raise UserError(
            f"{preset.name}: encoder: unknown section(s) {', '.join(unknown)}; expected "
            "'model' (EncoderConfig) and 'training' (PretrainConfig)"
        )
    # The simulator's observations are one session each: unless the preset says otherwise,
    # train the agent's encoder on session windows (EncoderConfig.sessions off), the
    # distribution it will read, rather than on user histories.
    model = {"sessions": False, **(section.get("model") or {})}
    enc = from_mapping(EncoderConfig, model, f"{preset.name}:encoder.model")
    training = {"device": "cpu", **(section.get("training") or {})}
    pre = from_mapping(PretrainConfig, training, f"{preset.name}:encoder.training")
    return enc, pre


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def build_encoder(
    preset: EnvPreset,
    dataset_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
    progress: bool = False,
) -> tuple[Path, bool]:
    """Pretrain the preset's encoder on ``dataset_dir``, or reuse the cached one.

    Returns:
        The checkpoint directory and whether it was reused.
    """
    enc_cfg, pre_cfg = encoder_settings(preset)
    key = _digest(
        {
            "schema": ENCODER_SCHEMA_VERSION,
            "dataset": Path(dataset_dir).name,
            "model": to_mapping(enc_cfg),
            "training": to_mapping(pre_cfg),
        }
    )
    out = Path(cache_dir) / f"encoder-{key}"
    stale = False
    if (out / ENCODER_CONFIG_FILE).is_file():
        try:
            # A cached checkpoint from an older encoder architecture no longer loads: rebuild.
            load_encoder(out)
            return out, True
        except UserError:
            stale = True
    dataset = load_dataset(dataset_dir)
    threads = torch.get_num_threads()
    try:
        result = train_encoder(dataset, enc_cfg, pre_cfg, progress=progress)
    finally:
        torch.set_num_threads(threads)
    info = {
        "dataset": str(dataset.path),
        "training_config": to_mapping(pre_cfg),
        "history": result.history,
        "preset": preset.name,
    }
    # A cache entry is rlrec's own: a stale one is replaced (an output the user named never is).
    save_encoder(out, result.model.cpu(), vocabulary_fingerprint(dataset), info, force=stale)
    return out, False


def policy_inputs(
    agent: AgentConfig,
    sim_model: SimModel,
    encoder: SequenceEncoder,
    n_actions: int,
    plan: PlanTable | None = None,
) -> tuple[CatalogTerm | None, CategoryPrior | None]:
    """The frozen item term and the plan's prior that a frozen agent's features carry.

    Planned agents choose the item inside a category by popularity (the plan's item) and
    their category from the plan's prior; other frozen agents use the encoder's head.

    Raises:
        UserError: If the agent is planned and no plan is given.
    """
    if agent.encoder != "frozen":
        return None, None
    item_ids = sim_model.item_ids[:n_actions]
    if not agent.planner:
        return CatalogTerm.from_encoder(encoder, item_ids, agent.init_temperature), None
    if plan is None:
        raise UserError("agent.planner: no plan was made for this run; train it again")
    catalog = CatalogTerm.from_popularity(
        encoder, item_ids, sim_model.item_popularity[:n_actions], agent.init_temperature
    )
    prior = CategoryPrior.for_catalog(
        plan, encoder, item_ids, sim_model.category_of_dataset_category, agent.prior_temperature
    )
    return catalog, prior


def make_training_env(
    agent: AgentConfig,
    sim_model: SimModel,
    dataset: PreparedDataset | None,
    env_config: EnvConfig,
    encoder: SequenceEncoder,
    seed: int,
    plan: PlanTable | None = None,
) -> VecEnv:
    """The batched SB3 VecEnv for ``agent``: masking, frozen features and plan as configured."""
    if agent.randomize_response:
        env_config = dataclasses.replace(env_config, randomize_response=True)
    base = BatchedVecEnv(agent.n_envs, sim_model, dataset, env_config)
    venv: VecEnv = base
    n_actions = base.env.dynamics.n_actions
    if agent.mask_recent > 0:
        dyn = base.env.dynamics
        table = token_to_action_table(sim_model.item_ids[:n_actions], dyn.n_item_tokens)
        venv = RecentItemMask(venv, table, agent.mask_recent)
    if agent.encoder == "frozen":
        catalog, prior = policy_inputs(agent, sim_model, encoder, n_actions, plan)
        venv = FrozenEncoderStates(
            venv, copy.deepcopy(encoder), agent.encoder_batch_size, catalog, prior
        )
    venv.seed(seed)
    return venv


def _baselines(
    sim_model: SimModel, env_config: EnvConfig, encoder: SequenceEncoder, n_actions: int
) -> dict[str, Any]:
    """The non-oracle baselines a planned agent must not lose to (random never wins)."""
    policies = make_baselines(sim_model, n_actions, env_config.reward_weights, encoder)
    return {k: v for k, v in policies.items() if k not in ("random", "oracle_myopic")}


def _choose_plan(
    agent: AgentConfig,
    sim_model: SimModel,
    dataset: PreparedDataset,
    env_config: EnvConfig,
    baselines: dict[str, Any],
    n_actions: int,
    seed: int,
) -> tuple[PlanTable, RobustChoice]:
    """The robust plan of :func:`rlrec.agents.robust.robust_planner` with the agent's rule."""
    planner, choice = robust_planner(
        sim_model,
        dataset,
        env_config,
        n_actions,
        baselines,
        n_random=agent.selection_draws,
        episodes=agent.selection_episodes,
        seed=seed,
        rule=agent.selection,
    )
    return planner.table, choice


def _load_adaptive(
    path: Path,
    sim_model: SimModel,
    dataset: PreparedDataset | None,
    env_config: EnvConfig,
    n_actions: int,
) -> AdaptivePlan:
    """Rebuild a run's adaptive plan for its model and env (item tokens from the env)."""
    tokens = BatchedInterestDrift(1, sim_model, dataset, env_config).dynamics.item_token
    return AdaptivePlan.load(path, sim_model, n_actions, env_config.reward_weights, tokens)


def _write_yaml_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(yaml.safe_dump(payload, sort_keys=False))
    os.replace(tmp, path)


def read_run_config(run_dir: str | os.PathLike[str]) -> RunConfig:
    """Read a run directory's ``config.yaml``.

    Raises:
        UserError: If the directory is not a run directory or the file is malformed.
    """
    path = Path(run_dir) / RUN_CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: no {RUN_CONFIG_FILE}; not a run directory of 'rlrec train'")
    return from_mapping(RunConfig, load_yaml(path), where=str(path))


def _absolute(path: str | os.PathLike[str]) -> str:
    return str(Path(path).resolve())


def _preset_reference(env_preset: str | os.PathLike[str]) -> str:
    # A preset given as a file is stored absolute (the run opens from any directory); a
    # bundled name stays a name.
    path = Path(env_preset)
    return _absolute(path) if path.is_file() else str(env_preset)


def _newest_checkpoint(root: Path) -> tuple[int, Path] | None:
    """The checkpoint with the largest stored step; an SB3 zip of an older rlrec is refused."""
    found = checkpoint_files(root / CHECKPOINT_DIR)
    if found:
        return found[-1]
    legacy = legacy_checkpoints(root / CHECKPOINT_DIR)
    if legacy:
        raise legacy_refusal(legacy[-1], root)
    return None


def train_agent(
    env_preset: str | os.PathLike[str],
    agent: AgentConfig,
    run_dir: str | os.PathLike[str],
    *,
    timesteps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
    progress: bool = False,
    artifacts: Artifacts | None = None,
    encoder_dir: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train (or resume) a PPO agent; see the module docstring for the run directory.

    Args:
        env_preset: A bundled env preset name or a YAML path.
        agent: The agent settings (ignored on resume: the run's saved ones are used).
        run_dir: The run directory.
        timesteps: Total env steps; None takes ``agent.total_timesteps`` (on resume, a value
            extends the run to that total).
        seed: Seed of the run (ignored on resume).
        resume: Continue the run in ``run_dir`` from its newest checkpoint.
        cache_dir: Where artifacts are built or reused.
        progress: Show a progress bar (tqdm, on stderr).
        artifacts: Dataset and SimModel already built (``rlrec quickstart`` builds its own
            under its output directory); None builds or reuses the preset's in the cache.
        encoder_dir: An encoder checkpoint already trained on that dataset; None builds or
            reuses the preset's in the cache.

    Raises:
        UserError: If the run directory exists without ``resume``, ``resume`` finds no run,
            the device is not available or another process is writing the run.
    """
    root = Path(run_dir)
    check_device((read_run_config(root).agent if resume else agent).device)
    check_cache_dir(Path(cache_dir))  # before the run lock creates any folder
    created = not root.exists()
    # One writer per run directory: a second 'rlrec train' fails here at once.
    with run_lock(root):
        clean_stale_temporaries(root)  # of a writer killed earlier (the lock says it is gone)
        try:
            return _train_agent(
                env_preset,
                agent,
                root,
                timesteps=timesteps,
                seed=seed,
                resume=resume,
                cache_dir=cache_dir,
                progress=progress,
                artifacts=artifacts,
                encoder_dir=encoder_dir,
            )
        except BaseException:
            # A fresh run that failed before writing anything leaves no empty folder.
            if created and {p.name for p in root.iterdir()} <= {".lock"}:
                shutil.rmtree(root, ignore_errors=True)
            raise


def _train_agent(
    env_preset: str | os.PathLike[str],
    agent: AgentConfig,
    run_dir: str | os.PathLike[str],
    *,
    timesteps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
    progress: bool = False,
    artifacts: Artifacts | None = None,
    encoder_dir: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """:func:`train_agent` under the run's lock."""
    root = Path(run_dir)
    resumed_from: int | None = None
    checkpoint: Path | None = None
    if resume:
        run = read_run_config(root)
        if timesteps is not None:
            run = RunConfig(**{**run.__dict__, "timesteps": timesteps})
        newest = _newest_checkpoint(root)
        if newest is not None:
            resumed_from, checkpoint = newest
        agent, seed = run.agent, run.seed
        preset = load_env_preset(run.env_preset)
    else:
        if (root / RUN_CONFIG_FILE).exists():
            raise UserError(
                f"{root}: a run already exists there; pass --resume to continue it or choose "
                "another --run-name"
            )
        preset = load_env_preset(env_preset)
        run = RunConfig(
            env_preset=_preset_reference(env_preset),
            agent=agent,
            timesteps=timesteps if timesteps is not None else agent.total_timesteps,
            seed=seed,
            cache_dir=_absolute(cache_dir),
            env=preset.env,
        )
    if agent.num_threads:
        torch.set_num_threads(agent.num_threads)
    if artifacts is None:
        artifacts = build_artifacts(preset, cache_dir)
    if encoder_dir is None:
        encoder_dir, encoder_reused = build_encoder(preset, artifacts.dataset_dir, cache_dir)
    else:
        encoder_reused = True
    reused = (*artifacts.reused, *(("encoder",) if encoder_reused else ()))
    run = RunConfig(
        **{
            **run.__dict__,
            "cache_dir": _absolute(cache_dir),
            "dataset_dir": _absolute(artifacts.dataset_dir),
            "sim_dir": _absolute(artifacts.sim_dir),
            "encoder_dir": _absolute(encoder_dir),
        }
    )
    root.mkdir(parents=True, exist_ok=True)
    run_encoder = root / ENCODER_DIR
    if not (run_encoder / ENCODER_CONFIG_FILE).is_file():
        tmp = root / f".{ENCODER_DIR}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(encoder_dir, tmp, ignore=shutil.ignore_patterns("tensorboard"))
        os.replace(tmp, run_encoder)
    _write_yaml_atomic(root / RUN_CONFIG_FILE, to_mapping(run))

    dataset = load_dataset(artifacts.dataset_dir)
    sim_model = load_sim_model(artifacts.sim_dir)
    encoder, _ = load_encoder(run_encoder, dataset, device="cpu")
    n_actions = min(run.env.catalog_size, sim_model.n_items)
    plan: PlanTable | None = None
    baselines: dict[str, Any] = {}
    robust: dict[str, Any] = {}
    known: dict[str, Any] | None = None  # baseline returns on the validation worlds
    adaptive_plan: AdaptivePlan | None = None  # the choice's, while still in memory
    if agent.planner:
        baselines = _baselines(sim_model, run.env, encoder, n_actions)
        if checkpoint is not None and (root / PLAN_FILE).is_file():
            plan = PlanTable.load(root / PLAN_FILE)  # resuming: the plan training started from
            try:
                robust = json.loads((root / ROBUST_FILE).read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                robust = {}  # a record only: the check after training writes it anew
            if not isinstance(robust, dict):
                robust = {}
        else:
            plan, choice = _choose_plan(
                agent, sim_model, dataset, run.env, baselines, n_actions, seed
            )
            plan.save(root / PLAN_FILE)
            adaptive_plan = choice.adaptive
            if adaptive_plan is not None:
                adaptive_plan.save(root / ADAPTIVE_CANDIDATE_FILE)
            known = {b: choice.returns[b] for b in baselines}
            # PPO's start acts as the plan it starts from, action for action (the factored
            # mode, FactoredActorHead.mode), and the adaptive plan as itself: the check below
            # reuses their returns on the same worlds and users instead of rolling them again.
            known["start"] = choice.returns[choice.start]
            if adaptive_plan is not None:
                known["adaptive"] = choice.returns[choice.chosen]
            robust = {"plan": choice.summary()}
            write_json_atomic(root / ROBUST_FILE, robust)
    venv = make_training_env(agent, sim_model, dataset, run.env, encoder, seed, plan)
    catalog, prior = policy_inputs(agent, sim_model, encoder, n_actions, plan)
    model: Model
    if checkpoint is not None:
        # The safe format (rlrec.agents.artifacts): weights, optimizer state and counters;
        # a checkpoint whose spaces differ from this env's is a one-line error.
        model = load_policy(
            checkpoint, agent.device, env=venv, tensorboard_log=str(root / TENSORBOARD_DIR)
        )
    else:
        model = build_model(
            agent,
            venv,
            encoder,
            sim_model.item_ids[:n_actions],
            seed,
            tensorboard_log=str(root / TENSORBOARD_DIR),
            catalog=catalog,
        )
    hparams: dict[str, Any] = {
        k: (v if isinstance(v, int | float | str | bool) else str(v))
        for k, v in to_mapping(agent).items()
    }
    hparams.update(seed=seed, env_preset=run.env_preset, timesteps=run.timesteps)
    callbacks: list[BaseCallback] = [RecommendationMetrics(hparams)]
    saver = None
    if agent.checkpoint_every > 0:
        saver = AtomicCheckpoint(
            root / CHECKPOINT_DIR, agent.checkpoint_every, agent.keep_checkpoints
        )
        callbacks.append(saver)
    remaining = max(run.timesteps - model.num_timesteps, 0)
    if progress:
        callbacks.append(TqdmProgress(remaining))
    started = time.perf_counter()
    done_before = model.num_timesteps
    if remaining > 0:
        model.learn(
            total_timesteps=remaining,
            callback=CallbackList(callbacks),
            reset_num_timesteps=checkpoint is None,
            tb_log_name="ppo",
        )
    seconds = time.perf_counter() - started
    if saver is not None and remaining > 0:
        saver.save()
    if agent.planner:
        # Never lose to the start: the trained policy is kept only if the plan's rule, on the
        # same validation worlds, prefers it to the policy training started from (rebuilt:
        # build_model is deterministic in the seed). A trained policy that falls short of
        # safe in a world is not rolled out further (select_robust).
        start = build_model(
            agent, venv, encoder, sim_model.item_ids[:n_actions], seed, None, catalog
        )
        thetas, labels = validation_worlds(sim_model, agent.selection_draws, seed)
        frozen = copy.deepcopy(encoder)
        candidates: dict[str, Any] = {
            name: AgentPolicy(m, frozen, batch_size=agent.encoder_batch_size, prior=prior)
            for name, m in (("trained", model), ("start", start))
        }
        adaptive_path = root / ADAPTIVE_CANDIDATE_FILE
        if not adaptive_path.is_file():
            adaptive_path = root / ADAPTIVE_FILE  # a finished run trained further: its choice
        if adaptive_path.is_file():
            # The robust choice was adaptive: PPO trained from its start (the plan of the
            # hedges' world), which cannot adapt; the adaptive plan stays a candidate.
            if adaptive_plan is None:  # resumed: rebuild the saved choice
                adaptive_plan = _load_adaptive(
                    adaptive_path, sim_model, dataset, run.env, n_actions
                )
            candidates["adaptive"] = AdaptivePlanPolicy(adaptive_plan, n_actions)
        final = select_robust(
            sim_model,
            dataset,
            run.env,
            candidates,
            baselines,
            thetas,
            labels,
            agent.selection_episodes,
            seed,
            agent.selection,
            known_returns=known,
        )
        if final.chosen == "start":
            model.policy.load_state_dict(start.policy.state_dict())
        elif final.chosen == "adaptive":
            # The run acts by the adaptive plan; policy.* keeps PPO's start for what needs a
            # per-step policy (see load_run).
            model.policy.load_state_dict(start.policy.state_dict())
            if adaptive_path != root / ADAPTIVE_FILE:
                os.replace(adaptive_path, root / ADAPTIVE_FILE)
        if final.chosen != "adaptive":
            (root / ADAPTIVE_FILE).unlink(missing_ok=True)  # an earlier check's choice
        robust = {**robust, "final": {**final.summary(), "kept": final.chosen}}
        write_json_atomic(root / ROBUST_FILE, robust)
    policy_path = save_policy(model, root, POLICY_NAME)
    venv.close()
    return TrainResult(
        run_dir=root,
        policy_path=policy_path,
        timesteps=int(model.num_timesteps),
        seconds=seconds,
        fps=(model.num_timesteps - done_before) / max(seconds, 1e-9),
        resumed_from=resumed_from,
        reused=reused,
    )


@dataclass
class LoadedRun:
    """A trained run, ready to evaluate.

    Attributes:
        config: The run's configuration.
        policy: The trained agent behind the policy protocol.
        encoder: The run's encoder checkpoint (the supervised one, for greedy baselines).
        sim_model: The env's SimModel.
        dataset: The env's PreparedDataset.
        adaptive: The run's adaptive plan policy when the run acts by one (lifecycle runs
            whose never-lose check preferred it, ``adaptive.npz``); ``policy`` is then PPO's
            start, for what needs a per-step policy of the history alone.
    """

    config: RunConfig
    policy: AgentPolicy
    encoder: SequenceEncoder
    sim_model: SimModel
    dataset: PreparedDataset
    adaptive: AdaptivePlanPolicy | None = None

    @property
    def acting_policy(self) -> Any:
        """The policy the run acts by in a simulator: the adaptive plan if any, else PPO's."""
        return self.adaptive if self.adaptive is not None else self.policy


def require_stateless(run: Any, what: str) -> None:
    """Refuse ``what`` for a run that acts adaptively (it needs the user's sessions).

    Args:
        run: A :class:`LoadedRun` (or any object; one without ``adaptive`` acts per step).
        what: The command or use, named in the error.

    Raises:
        UserError: If the run has an adaptive plan.
    """
    if getattr(run, "adaptive", None) is not None:
        raise UserError(
            f"{what}: this run acts by an adaptive plan (a per-user posterior over its "
            "sessions, adaptive.npz), which needs each user's own recommendations and "
            "responses; only simulator evaluation (rlrec evaluate) supports it so far"
        )


def load_run(run_dir: str | os.PathLike[str], device: str = "cpu") -> LoadedRun:
    """Load a run directory's final policy (or newest checkpoint) and its env artifacts.

    Artifacts missing from the cache are rebuilt from the run's env preset.

    Raises:
        UserError: If the directory holds no run or no trained policy.
    """
    root = Path(run_dir)
    run = read_run_config(root)
    # The policy files are checked before anything heavy loads; an SB3 zip is never opened.
    policy_path = root / POLICY_FILE
    if not policy_exists(root, POLICY_NAME):
        if (root / LEGACY_POLICY_FILE).exists():
            raise legacy_refusal(root / LEGACY_POLICY_FILE, root)
        newest = _newest_checkpoint(root)
        if newest is None:
            raise UserError(
                f"{root}: no {POLICY_FILE} and no checkpoint; train it with 'rlrec train' "
                "(or --resume an interrupted run)"
            )
        policy_path = newest[1]
    model = load_policy(policy_path, device=device)
    dataset_dir, sim_dir = Path(run.dataset_dir), Path(run.sim_dir)
    if not (dataset_dir.is_dir() and sim_dir.is_dir()):
        artifacts = build_artifacts(load_env_preset(run.env_preset), run.cache_dir)
        dataset_dir, sim_dir = artifacts.dataset_dir, artifacts.sim_dir
    dataset = load_dataset(dataset_dir)
    sim_model = load_sim_model(sim_dir)
    encoder, _ = load_encoder(root / ENCODER_DIR, dataset, device=device)
    agent = run.agent
    plan = PlanTable.load(root / PLAN_FILE) if agent.planner else None
    # A policy file from another run (or env) loads on its own: its spaces must be this run's.
    probe = make_training_env(agent, sim_model, dataset, run.env, encoder, run.seed, plan)
    expected = (probe.observation_space, probe.action_space)
    probe.close()
    if (model.observation_space, model.action_space) != expected:
        raise UserError(
            f"{policy_path}: its observation or action space ({model.action_space}) differs "
            f"from the run's env ({expected[1]}); the policy files belong to another run: "
            "train this run again"
        )
    n_actions = int(getattr(model.action_space, "n", 0))
    table = None
    if agent.mask_recent > 0:
        n_tokens = dataset.n_items + 1
        table = token_to_action_table(sim_model.item_ids[:n_actions], n_tokens)
    _, prior = policy_inputs(agent, sim_model, encoder, n_actions, plan)
    policy = AgentPolicy(
        model,
        encoder=copy.deepcopy(encoder) if agent.encoder == "frozen" else None,
        token_to_action=table,
        mask_recent=agent.mask_recent,
        batch_size=agent.encoder_batch_size,
        prior=prior,
    )
    adaptive = None
    if agent.planner and (root / ADAPTIVE_FILE).is_file():
        plan_ = _load_adaptive(root / ADAPTIVE_FILE, sim_model, dataset, run.env, n_actions)
        adaptive = AdaptivePlanPolicy(plan_, n_actions)
    return LoadedRun(
        config=run,
        policy=policy,
        encoder=encoder,
        sim_model=sim_model,
        dataset=dataset,
        adaptive=adaptive,
    )


def default_run_name(env_preset: str, agent_preset: str, seed: int) -> str:
    """CleanRL-style ``env__agent__seed__time`` run name."""
    env = Path(env_preset).stem
    agent = Path(agent_preset).stem
    return f"{env}__{agent}__{seed}__{int(time.time())}"
