"""The main job, end to end: what ``rlrec quickstart`` runs on the embedded synthetic default.

Every stage calls the same library function as its own verb, on the env preset's settings
(``envs/synthetic.yaml``, ``agents/ppo_frozen.yaml``) with the sizes of a
:class:`QuickstartConfig`, and writes its artifact under the output directory::

    env.yaml            the resolved env preset (the run's ``env_preset``)
    data/               PreparedDataset with the generator's ground truth   (rlrec data synth)
    sim/                SimModel                                            (rlrec fit)
    fidelity.json       rlrec sim validate --json, plus ``distributions`` for the plots
    encoder/            encoder checkpoint with tensorboard/               (rlrec pretrain)
    encoder_eval.json   rlrec encoder eval --json
    run/                PPO run directory: config.yaml, tensorboard/, policy.json (rlrec train)
    evaluate.json       rlrec evaluate --json (also run/eval.json)
    evaluate_truth.json rlrec evaluate --world truth --json (also run/eval_truth.json)
    ope_sessions.json   rlrec ope sessions --simulate run/ --json (estimates and true values)
    report.html, plots/ rlrec report
    summary.json        paths, seconds per stage, headline numbers

Each file or directory is written atomically, so a crash leaves whole artifacts only and
``rlrec report`` can be run on what is there.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from rlrec.config import to_mapping
from rlrec.envs.presets import EnvPreset, load_env_preset
from rlrec.errors import UserError

__all__ = [
    "DATA_DIR",
    "ENCODER_DIR",
    "ENCODER_EVAL_FILE",
    "ENV_FILE",
    "EVALUATE_FILE",
    "EVALUATE_TRUTH_FILE",
    "FIDELITY_FILE",
    "OPE_FILE",
    "OUTPUT_ENTRIES",
    "REPORT_ENTRIES",
    "RUN_DIR",
    "SIM_DIR",
    "SUMMARY_FILE",
    "Progress",
    "QuickstartConfig",
    "QuickstartResult",
    "quickstart_preset",
    "run_quickstart",
]

ENV_FILE = "env.yaml"
DATA_DIR = "data"
SIM_DIR = "sim"
FIDELITY_FILE = "fidelity.json"
ENCODER_DIR = "encoder"
ENCODER_EVAL_FILE = "encoder_eval.json"
RUN_DIR = "run"
EVALUATE_FILE = "evaluate.json"
EVALUATE_TRUTH_FILE = "evaluate_truth.json"
OPE_FILE = "ope_sessions.json"
SUMMARY_FILE = "summary.json"
REPORT_ENTRIES = ("report.html", "plots")
OUTPUT_ENTRIES = (
    ENV_FILE,
    DATA_DIR,
    SIM_DIR,
    FIDELITY_FILE,
    ENCODER_DIR,
    ENCODER_EVAL_FILE,
    RUN_DIR,
    EVALUATE_FILE,
    OPE_FILE,
    SUMMARY_FILE,
    *REPORT_ENTRIES,
)
"""What a quickstart writes under its ``--out``: what ``--force`` removes before a new run."""


@dataclass(frozen=True)
class QuickstartConfig:
    """Sizes and seeds of the quickstart's stages.

    The defaults keep the whole run near 10 minutes on 2 CPU cores; :meth:`tiny` is a smoke
    test of every stage in about a minute.

    Attributes:
        env_preset: Env preset (bundled name or YAML): data source, fit, env, encoder.
        agent_preset: Agent preset (bundled name or YAML).
        seed: Seed of every stage (the synthetic world's included).
        n_users: Synthetic users; None keeps the preset's.
        fidelity_sessions: Organic sessions simulated for the fidelity check.
        pretrain_epochs: Encoder self-supervised epochs; None keeps the preset's.
        finetune_epochs: Encoder fine-tuning epochs; None keeps the preset's.
        timesteps: PPO env steps; None keeps the agent preset's (100k for ``ppo_frozen``).
        eval_episodes: Simulated users per policy in the evaluation.
        ope_behaviour: Logging policy SPEC of the OPE check.
        ope_targets: Target policy SPECs of the OPE check (``ppo`` is the trained run).
        ope_sessions: Sessions logged under the behaviour policy.
        truth_sessions: On-policy sessions per target for its true value.
        n_bootstrap: Bootstrap resamples of the OPE intervals.
        threads: Torch CPU threads (one: on a shared 2-core machine two OpenMP threads made
            PPO and pretraining several times slower, see docs/architecture.md).
        selection_episodes: Users per validation world of the agent's robust choice; None
            keeps the agent preset's.
        selection_draws: Random prior draws among the validation worlds; None keeps the
            agent preset's.
    """

    env_preset: str = "synthetic"
    agent_preset: str = "ppo_frozen"
    seed: int = 0
    n_users: int | None = None
    fidelity_sessions: int = 20_000
    pretrain_epochs: int | None = None
    finetune_epochs: int | None = None
    timesteps: int | None = None
    eval_episodes: int = 1000
    ope_behaviour: str = "greedy_supervised,tau=1,eps=0.3"
    ope_targets: tuple[str, ...] = ("ppo", "greedy_supervised,tau=0.5")
    ope_sessions: int = 5000
    truth_sessions: int = 5000
    n_bootstrap: int = 200
    threads: int = 1
    selection_episodes: int | None = None
    selection_draws: int | None = None

    def __post_init__(self) -> None:
        for name in ("fidelity_sessions", "timesteps", "eval_episodes", "ope_sessions"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"quickstart {name}: {getattr(self, name)}, expected >= 1")
        if self.truth_sessions < 1 or self.threads < 1 or self.n_bootstrap < 0:
            raise UserError("quickstart: need truth_sessions >= 1, threads >= 1, n_bootstrap >= 0")

    @classmethod
    def tiny(cls, seed: int = 0) -> QuickstartConfig:
        """A small world and short budgets: every stage runs, in about a minute."""
        return cls(
            seed=seed,
            n_users=200,
            fidelity_sessions=2000,
            pretrain_epochs=1,
            finetune_epochs=1,
            timesteps=3072,
            eval_episodes=200,
            ope_sessions=300,
            truth_sessions=300,
            n_bootstrap=50,
            selection_episodes=200,
            selection_draws=2,
        )


@dataclass
class QuickstartResult:
    """What :func:`run_quickstart` returns (also written as ``summary.json``).

    Attributes:
        out: The output directory.
        summary: Paths, dataset statistics, seconds per stage and the headline numbers.
    """

    out: Path
    summary: dict[str, Any]


Progress = Callable[[str], None]


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and paths turned into JSON types."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _write_json(path: Path, payload: Any) -> None:
    from rlrec.data.dataset import write_json_atomic

    write_json_atomic(path, _plain(payload))


def _write_yaml_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w") as fh:
        fh.write(yaml.safe_dump(payload, sort_keys=False))
        fh.flush()
        os.fsync(fh.fileno())  # on disk before the rename publishes it
    os.replace(tmp, path)


class _Stages:
    """Announces each stage through ``progress`` and records its seconds."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.progress(f"==> {name} ...")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self.progress(f"    {name}: {self.seconds[name]:.1f} s")


def quickstart_preset(config: QuickstartConfig) -> EnvPreset:
    """The env preset with the quickstart's overrides (users, seeds, threads, encoder epochs)."""
    preset = load_env_preset(config.env_preset)
    synthetic = preset.data.synthetic
    synthetic = dataclasses.replace(
        synthetic,
        seed=config.seed,
        n_users=config.n_users if config.n_users is not None else synthetic.n_users,
    )
    data = dataclasses.replace(preset.data, synthetic=synthetic)
    encoder = {k: dict(v or {}) for k, v in preset.encoder.items()}
    training = encoder.setdefault("training", {})
    training["seed"] = config.seed
    training["num_threads"] = config.threads
    for key in ("pretrain_epochs", "finetune_epochs"):
        if getattr(config, key) is not None:
            training[key] = getattr(config, key)
    return dataclasses.replace(preset, data=data, encoder=encoder)


def run_quickstart(
    out: str | os.PathLike[str],
    config: QuickstartConfig | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> QuickstartResult:
    """Run every stage of the main job into ``out`` (see the module docstring for the layout).

    The whole run holds ``out``'s lock (:func:`rlrec.fsutil.output_lock`), so a second
    quickstart into the same folder fails at once.

    Args:
        out: The output directory (created).
        config: Sizes and seeds; :class:`QuickstartConfig` defaults when None.
        progress: Called with one line per stage start and end, and with the stages' own
            messages.
        force: Replace an earlier quickstart output at ``out``: its entries
            (:data:`OUTPUT_ENTRIES`, the trained run included) are removed before the first
            stage, so the folder never mixes two runs. Without it an earlier output is
            refused, and a folder that is not a quickstart output is refused either way.

    Returns:
        The output directory and the summary (also in ``out/summary.json``).

    Raises:
        UserError: If ``out`` is a file, is not a quickstart output, exists without
            ``force``, is being written by another process, or a stage fails on its input.
    """
    from rlrec.fsutil import output_lock

    root = Path(out)
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {root}: exists and is not a directory; choose another path")
    with output_lock(root):
        _claim_output(root, force)
        return _run_quickstart(root, config or QuickstartConfig(), progress)


def _claim_output(root: Path, force: bool) -> None:
    """Check ``root`` (see :func:`run_quickstart`), empty it of an earlier run and mark it."""
    import shutil

    from rlrec.fsutil import MARKER_FILE, check_output, write_marker

    check_output(root, "quickstart", force)
    for name in (*OUTPUT_ENTRIES, MARKER_FILE):
        entry = root / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()
    root.mkdir(parents=True, exist_ok=True)
    # Marked first: a stopped quickstart is still recognized (and refused without --force).
    write_marker(root, "quickstart")


def _run_quickstart(
    root: Path, cfg: QuickstartConfig, progress: Progress | None
) -> QuickstartResult:
    from rlrec.agents.config import load_agent_config
    from rlrec.agents.policy_specs import run_simulated_check
    from rlrec.agents.train import encoder_settings, train_agent
    from rlrec.data.dataset import atomic_directory, load_dataset
    from rlrec.data.stats import dataset_stats
    from rlrec.envs.presets import Artifacts
    from rlrec.evaluation.fidelity import fidelity_distributions, validate_fidelity
    from rlrec.evaluation.ranking import evaluate_next_step
    from rlrec.evaluation.report import write_report
    from rlrec.models.checkpoint import load_encoder
    from rlrec.models.pretrain import pretrain_checkpoint
    from rlrec.models.synthetic import generate_dataset
    from rlrec.models.transition import fit_sim_model
    from rlrec.workflows.evaluate import evaluate_run

    say = progress or (lambda _message: None)
    stages = _Stages(say)
    root.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    summary: dict[str, Any] = {"out": str(root), "config": to_mapping(cfg)}
    try:
        preset = quickstart_preset(cfg)
        env_mapping = {k: v for k, v in to_mapping(preset).items() if k not in ("root", "name")}
        _write_yaml_atomic(root / ENV_FILE, env_mapping)

        with stages.stage("generate and prepare the synthetic log"):
            if preset.data.source != "synthetic":
                raise UserError(f"{cfg.env_preset}: the quickstart needs a synthetic data source")
            data_dir = generate_dataset(root / DATA_DIR, preset.data.synthetic, preset.data.prepare)
            dataset = load_dataset(data_dir)
            summary["stats"] = dataset_stats(dataset)

        with stages.stage("fit the user model"):
            model = fit_sim_model(dataset, preset.fit)
            sim_dir = model.save(root / SIM_DIR)

        with stages.stage("validate the simulator's fidelity"):
            fidelity = validate_fidelity(model, dataset, cfg.fidelity_sessions, cfg.seed)
            fidelity["distributions"] = fidelity_distributions(
                model, dataset, cfg.fidelity_sessions, cfg.seed
            )
            _write_json(root / FIDELITY_FILE, fidelity)

        with stages.stage("pretrain the encoder"):
            enc_cfg, pre_cfg = encoder_settings(preset)
            encoder_dir = root / ENCODER_DIR
            summary["encoder"] = pretrain_checkpoint(
                dataset, encoder_dir, enc_cfg, pre_cfg, progress=False
            )

        with stages.stage("evaluate the encoder against its baselines"):
            encoder, _ = load_encoder(encoder_dir, dataset, device="cpu")
            _write_json(root / ENCODER_EVAL_FILE, evaluate_next_step(encoder, dataset, "test"))

        agent = load_agent_config(cfg.agent_preset)
        agent = dataclasses.replace(agent, num_threads=cfg.threads)
        for name in ("selection_episodes", "selection_draws"):
            if getattr(cfg, name) is not None:
                agent = dataclasses.replace(agent, **{name: getattr(cfg, name)})
        timesteps = cfg.timesteps if cfg.timesteps is not None else agent.total_timesteps
        with stages.stage(f"train PPO ({timesteps} steps)"):
            # Absolute paths in the run's config.yaml: the run loads from any directory.
            artifacts = Artifacts(
                dataset_dir=Path(data_dir).resolve(),
                sim_dir=Path(sim_dir).resolve(),
                env=preset.env,
            )
            # Trained beside its destination and renamed into place, like every artifact.
            with atomic_directory(root / RUN_DIR, "run") as tmp:
                trained = train_agent(
                    (root / ENV_FILE).resolve(),
                    agent,
                    tmp,
                    timesteps=timesteps,
                    seed=cfg.seed,
                    artifacts=artifacts,
                    encoder_dir=encoder_dir.resolve(),
                )
            run_dir = root / RUN_DIR
            summary["train"] = {
                "timesteps": trained.timesteps,
                "seconds": round(trained.seconds, 3),
                "fps": round(trained.fps, 1),
            }

        with stages.stage("evaluate PPO against every baseline"):
            payload = evaluate_run(
                run_dir,
                cfg.eval_episodes,
                12345 + cfg.seed,
                progress=lambda name: say(f"    rollout {name}"),
            )
            _write_json(root / EVALUATE_FILE, payload)
        with stages.stage("evaluate in the world that produced the log (sim-to-real)"):
            truth = evaluate_run(
                run_dir,
                cfg.eval_episodes,
                12345 + cfg.seed,
                progress=lambda name: say(f"    rollout {name}"),
                world="truth",
            )
            _write_json(root / EVALUATE_TRUTH_FILE, truth)
            summary["agent"] = {
                world: {
                    key: result[key]
                    for key in ("best_baseline", "ratio_to_best_baseline", "ratio_ci95", "win")
                }
                for world, result in (("fitted", payload), ("truth", truth))
            }

        with stages.stage("off-policy evaluation on logged sessions"):
            ope = run_simulated_check(
                str(run_dir),
                cfg.ope_behaviour,
                list(cfg.ope_targets),
                cfg.ope_sessions,
                cfg.truth_sessions,
                cfg.seed,
                cfg.n_bootstrap,
                progress=lambda message: say(f"    {message}"),
            )
            _write_json(root / OPE_FILE, ope)

        with stages.stage("write the report"):
            report = write_report(root)
    finally:
        torch.set_num_threads(threads)

    summary.update(
        {
            "data_dir": str(data_dir),
            "sim_dir": str(sim_dir),
            "encoder_dir": str(encoder_dir),
            "run_dir": str(run_dir),
            "report": str(report.html),
            "plots": [str(p) for p in report.plots],
            "tensorboard_logdir": str(root),
            "headline": report.headline,
            "fidelity": {k: v for k, v in fidelity.items() if k != "distributions"},
            "seconds": stages.seconds,
            "total_seconds": round(sum(stages.seconds.values()), 2),
        }
    )
    _write_json(root / SUMMARY_FILE, summary)
    return QuickstartResult(out=root, summary=_plain(summary))
