"""A tiny env preset (small synthetic world, tiny encoder) and a fast agent preset."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

# The env tests' hand-built simulator fixtures, shared here.
from tests.envs.conftest import sim_dir, sim_model, tiny_dataset  # noqa: F401

TINY_ENV = {
    "data": {
        "source": "synthetic",
        "synthetic": {
            "n_users": 60,
            "n_categories": 6,
            "n_items": 240,
            # About 4 sessions per user (the return process's count grows with the window).
            "returns": {"observation_days": 2.2},
            "seed": 0,
        },
        "prepare": {"split_fractions": [0.8, 0.1, 0.1]},
    },
    "fit": {"top_k_categories": 6, "catalog_size": 60, "max_streak": 5, "max_steps": 10},
    "env": {"history_length": 8, "max_steps": 20, "catalog_size": 40, "start": "warm"},
    "encoder": {
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 8},
        "training": {"pretrain_epochs": 1, "finetune_epochs": 1, "batch_size": 64},
    },
}

TINY_AGENT = {
    "encoder": "frozen",
    "critic_arch": [16],
    "n_envs": 4,
    "n_steps": 16,
    "batch_size": 32,
    "n_epochs": 2,
    "total_timesteps": 128,
    "checkpoint_every": 64,
    "num_threads": 1,
}


def write_yaml(path: Path, payload: dict) -> Path:
    path.write_text(yaml.safe_dump(payload, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_presets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths of the tiny env preset, agent presets (frozen, finetune) and a shared cache."""
    root = tmp_path_factory.mktemp("presets")
    return {
        "env": write_yaml(root / "tiny_env.yaml", TINY_ENV),
        "frozen": write_yaml(root / "tiny_frozen.yaml", TINY_AGENT),
        "finetune": write_yaml(root / "tiny_finetune.yaml", {**TINY_AGENT, "encoder": "finetune"}),
        "masked": write_yaml(
            root / "tiny_masked.yaml", {**TINY_AGENT, "encoder": "finetune", "mask_recent": 2}
        ),
        "cache": root / "cache",
    }
