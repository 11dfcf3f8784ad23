"""The quickstart's settings: the bundled presets with the quickstart's overrides."""

import pytest

from rlrec.agents.train import encoder_settings
from rlrec.envs.presets import load_env_preset
from rlrec.errors import UserError
from rlrec.workflows.quickstart import QuickstartConfig, quickstart_preset


def test_tiny_overrides_users_seeds_threads_and_epochs() -> None:
    preset = quickstart_preset(QuickstartConfig.tiny(seed=3))
    bundled = load_env_preset("synthetic")
    assert preset.data.synthetic.n_users == 200
    assert preset.data.synthetic.seed == 3
    # Everything else is the bundled preset's: the quickstart runs the documented world.
    assert preset.data.synthetic.funnel_spread == bundled.data.synthetic.funnel_spread
    assert preset.env == bundled.env and preset.fit == bundled.fit
    model, training = encoder_settings(preset)
    assert (training.pretrain_epochs, training.finetune_epochs) == (1, 1)
    assert (training.seed, training.num_threads) == (3, 1)
    assert model == encoder_settings(bundled)[0]


def test_default_keeps_the_presets_sizes() -> None:
    preset = quickstart_preset(QuickstartConfig())
    bundled = load_env_preset("synthetic")
    assert preset.data.synthetic.n_users == bundled.data.synthetic.n_users
    _, training = encoder_settings(preset)
    _, bundled_training = encoder_settings(bundled)
    assert training.finetune_epochs == bundled_training.finetune_epochs


@pytest.mark.parametrize("field", ["timesteps", "eval_episodes", "ope_sessions"])
def test_empty_budgets_are_refused(field: str) -> None:
    with pytest.raises(UserError, match=field):
        QuickstartConfig(**{field: 0})
