"""AgentConfig validation and the bundled agent presets."""

from __future__ import annotations

import pytest

from rlrec.agents.config import AgentConfig, load_agent_config
from rlrec.config import from_mapping
from rlrec.errors import UserError


@pytest.mark.parametrize("name", ["ppo", "ppo_frozen"])
def test_bundled_presets_load(name):
    cfg = load_agent_config(name)
    assert cfg.batch_size <= cfg.rollout_size
    assert cfg.encoder == ("frozen" if name == "ppo_frozen" else "finetune")


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"batch_size": 4096, "n_envs": 2, "n_steps": 8}, r"agent\.batch_size: 4096 exceeds"),
        ({"gamma": 1.5}, r"agent\.gamma"),
        ({"encoder": "thawed"}, r"a\.yaml\.encoder: 'thawed' is not one of"),
        ({"n_epoch": 3}, r"a\.yaml: unknown setting\(s\) n_epoch"),
        ({"learning_rate": "fast"}, r"a\.yaml\.learning_rate: expected a number"),
        ({"mask_recent": -1}, r"agent\.mask_recent"),
        ({"target_kl": 0.0}, r"agent\.target_kl"),
    ],
)
def test_invalid_settings_name_the_field(settings, match):
    with pytest.raises(UserError, match=match):
        from_mapping(AgentConfig, settings, where="a.yaml")


def test_missing_preset_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a file and not a bundled preset"):
        load_agent_config("nope")
    with pytest.raises(UserError, match="no such agent preset"):
        load_agent_config(tmp_path / "missing.yaml")
