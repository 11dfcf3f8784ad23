"""The agents' tiny presets, shared with the workflow tests."""

from tests.agents.conftest import sim_dir, sim_model, tiny_dataset, tiny_presets  # noqa: F401
