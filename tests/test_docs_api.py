"""docs/api.md: its Python example runs as written and does what the text says."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


@pytest.mark.slow  # about 20-30 s: imports torch, pretrains and trains
def test_the_api_example_trains_and_evaluates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = python_blocks(API_DOC.read_text())
    assert len(blocks) == 1, "docs/api.md should hold one runnable example"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "api_example"}
    exec(compile(blocks[0], str(API_DOC), "exec"), namespace)

    # The run trained the steps it was asked for, in the simulator the example built.
    trained = namespace["trained"]
    assert trained.timesteps == 256  # type: ignore[attr-defined]
    run_config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert run_config["env"]["max_steps"] == 20
    assert run_config["env"]["catalog_size"] == 40
    assert Path(run_config["sim_dir"]) == (tmp_path / "sim").resolve()
    assert json.loads((tmp_path / "run" / "policy.json").read_text())

    # Every policy met the same 20 users; the ratio is the agent's mean over the best baseline's.
    result = namespace["result"]
    assert isinstance(result, dict)
    policies = result["policies"]
    assert {"ppo", "random", "popular", "category_markov"} <= set(policies)
    assert all(summary["episodes"] == 20 for summary in policies.values())
    means = {name: summary["return_mean"] for name, summary in policies.items()}
    # The planner is the agent's own start, not a baseline; oracles see the true model.
    agents = ("ppo", "planner")
    baselines = {n: m for n, m in means.items() if n not in agents and not n.startswith("oracle")}
    best = result["best_baseline"]
    assert best == max(baselines, key=lambda n: baselines[n])
    ratio = result["ratio_to_best_baseline"]
    assert math.isfinite(ratio)
    assert ratio == pytest.approx(means["ppo"] / means[best], rel=1e-9)
    low, high = result["ratio_ci95"]
    assert low <= ratio <= high
    printed = capsys.readouterr().out.split()
    assert printed[:2] == ["256", best]
    assert float(printed[2]) == pytest.approx(ratio, abs=1e-3)
