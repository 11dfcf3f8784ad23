"""Agents: PPO around the pretrained encoder, the planner, and baseline policies.

Every name loads on first use (Stable-Baselines3 and torch import slowly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlrec.lazy import lazy_exports

if TYPE_CHECKING:
    from rlrec.agents.artifacts import load_policy, save_policy
    from rlrec.agents.baselines import make_baselines
    from rlrec.agents.config import AgentConfig, load_agent_config
    from rlrec.agents.planner import PlannerPolicy
    from rlrec.agents.train import LoadedRun, RunConfig, TrainResult, load_run, train_agent

# Name -> module of every public name (torch and Stable-Baselines3 load on use).
_LAZY: dict[str, str] = {
    "load_policy": "rlrec.agents.artifacts",
    "save_policy": "rlrec.agents.artifacts",
    "make_baselines": "rlrec.agents.baselines",
    "AgentConfig": "rlrec.agents.config",
    "load_agent_config": "rlrec.agents.config",
    "PlannerPolicy": "rlrec.agents.planner",
    "LoadedRun": "rlrec.agents.train",
    "RunConfig": "rlrec.agents.train",
    "TrainResult": "rlrec.agents.train",
    "load_run": "rlrec.agents.train",
    "train_agent": "rlrec.agents.train",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "AgentConfig",
    "LoadedRun",
    "PlannerPolicy",
    "RunConfig",
    "TrainResult",
    "load_agent_config",
    "load_policy",
    "load_run",
    "make_baselines",
    "save_policy",
    "train_agent",
]
