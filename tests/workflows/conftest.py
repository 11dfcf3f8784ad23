"""The agents' tiny presets and the planted-trend world, shared with the workflow tests."""

from tests.agents.conftest import sim_dir, sim_model, tiny_dataset, tiny_presets  # noqa: F401
from tests.analytics.conftest import planted_trend  # noqa: F401
