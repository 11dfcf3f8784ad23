"""The serving tests' trained runs and exports, built once per session.

Here rather than in ``tests/serving/conftest.py`` because the reliability suite uses them
too (``tests/conftest.py::serving_world``); one session builds them once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rlrec.agents.config import load_agent_config
from rlrec.agents.train import train_agent
from rlrec.serving.export import export_run
from tests.agents.conftest import TINY_AGENT, TINY_ENV, write_yaml


def build_world(root: Path) -> dict[str, Path]:
    """Runs ``a`` and ``b`` and their exports.

    ``a`` barely moved from the encoder's softmax (128 steps); ``b`` trained 2,048 steps at a
    higher learning rate, enough to be a different policy (first-step value ~0.21 against
    ~0.14 in the tiny world), so that an offline estimate of ``b`` from ``a``'s traffic can be
    told apart from ``a``'s own value.
    """
    env = write_yaml(root / "env.yaml", TINY_ENV)
    agent = load_agent_config(write_yaml(root / "agent.yaml", TINY_AGENT))
    fast = dataclasses.replace(agent, learning_rate=3e-3, ent_coef=0.0)
    out = {"root": root, "env": env, "cache": root / "cache"}
    for name, config, seed, steps in (("a", agent, 0, 128), ("b", fast, 1, 2048)):
        run = root / f"run_{name}"
        train_agent(env, config, run, timesteps=steps, seed=seed, cache_dir=root / "cache")
        out[f"run_{name}"] = run
        out[f"export_{name}"] = export_run(run, root / f"export_{name}").out
    return out
