"""``rlrec train`` / ``rlrec evaluate``: tiny runs as subprocesses, resume after a kill, schema.

Artifacts (dataset, user model, encoder) of the tiny preset are built once per session in a
shared cache, so each subprocess only trains.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlrec.agents.callbacks import checkpoint_files
from rlrec.agents.config import load_agent_config
from rlrec.agents.train import build_encoder, read_run_config, train_agent
from rlrec.cli import main
from rlrec.envs.presets import build_artifacts, load_env_preset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tiny_presets) -> Path:
    preset = load_env_preset(tiny_presets["env"])
    artifacts = build_artifacts(preset, tiny_presets["cache"])
    build_encoder(preset, artifacts.dataset_dir, tiny_presets["cache"])
    return tiny_presets["cache"]


def rlrec(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from rlrec.cli import main; sys.exit(main())", *args]


def train_args(presets, log_dir: Path, cache: Path, *extra: str) -> list[str]:
    return rlrec(
        "train",
        "--env",
        str(presets["env"]),
        "--agent",
        str(presets["frozen"]),
        "--log-dir",
        str(log_dir),
        "--cache-dir",
        str(cache),
        *extra,
    )


def test_tiny_training_run_through_the_cli(tiny_presets, cache, tmp_path):
    cmd = train_args(tiny_presets, tmp_path, cache, "--timesteps", "128", "--run-name", "r")
    done = subprocess.run(
        [*cmd, "--json", "--progress"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "128/128" in done.stderr  # the tqdm bar (stderr), not in the JSON
    summary = json.loads(done.stdout)
    assert summary["timesteps"] == 128
    assert set(summary["reused"]) == {"dataset", "sim_model", "encoder"}
    run = tmp_path / "r"
    assert (run / "policy.json").is_file() and (run / "policy.safetensors").is_file()
    assert (run / "encoder" / "model.safetensors").is_file()
    assert [s for s, _ in checkpoint_files(run / "checkpoints")] == [64, 128]
    config = read_run_config(run)
    assert config.timesteps == 128 and config.agent == load_agent_config(tiny_presets["frozen"])
    assert yaml.safe_load((run / "config.yaml").read_text())["agent"]["encoder"] == "frozen"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "charts/episode_return",
        "charts/session_length",
        "charts/engage_rate",
        "charts/buys_per_session",
        "charts/category_coverage",
        "charts/recommendation_entropy",
        "train/value_loss",
        "train/approx_kl",
        "train/explained_variance",
        "train/entropy_loss",
        "time/fps",
    ):
        assert tag in tags, tag


def test_resume_continues_a_killed_run(tiny_presets, cache, tmp_path):
    cmd = train_args(tiny_presets, tmp_path, cache, "--timesteps", "1000000", "--run-name", "k")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt_dir = tmp_path / "k" / "checkpoints"
    try:
        deadline = time.monotonic() + 240
        while not checkpoint_files(ckpt_dir) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.2)
        assert checkpoint_files(ckpt_dir), "no checkpoint before the deadline"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    last = checkpoint_files(ckpt_dir)[-1][0]
    assert not (tmp_path / "k" / "policy.json").exists()
    target = last + 128
    resumed = subprocess.run(
        [
            *train_args(tiny_presets, tmp_path, cache, "--run-name", "k", "--resume"),
            *("--timesteps", str(target), "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"] == last
    assert summary["timesteps"] == target
    assert (tmp_path / "k" / "policy.json").is_file()
    assert checkpoint_files(ckpt_dir)[-1][0] == target


def test_train_user_errors(tiny_presets, cache, tmp_path, capsys):
    args = ["train", "--env", str(tiny_presets["env"]), "--agent", str(tiny_presets["frozen"])]
    args += ["--log-dir", str(tmp_path), "--cache-dir", str(cache)]
    assert main([*args, "--resume"]) == 2
    assert "--resume needs --run-name" in capsys.readouterr().err
    assert main([*args, "--resume", "--run-name", "none"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main([*args, "--timesteps", "0"]) == 2
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.yaml").write_text("env_preset: e\n")
    assert main([*args, "--run-name", "x"]) == 2
    assert "a run already exists" in capsys.readouterr().err


def test_resume_from_a_checkpoint_of_another_env_is_a_user_error(
    tiny_presets, cache, tmp_path, capsys
):
    import shutil

    from tests.agents.conftest import TINY_ENV, write_yaml

    agent = load_agent_config(tiny_presets["frozen"])
    train_agent(tiny_presets["env"], agent, tmp_path / "old", timesteps=64, cache_dir=cache)
    (tmp_path / "old" / "policy.json").unlink()
    # A checkpoint of a run whose env has a smaller catalog (another action space).
    other = write_yaml(
        tmp_path / "other.yaml", {**TINY_ENV, "env": {**TINY_ENV["env"], "catalog_size": 30}}
    )
    train_agent(other, agent, tmp_path / "other", timesteps=64, cache_dir=cache)
    checkpoint = checkpoint_files(tmp_path / "old" / "checkpoints")[-1][1]
    source = checkpoint_files(tmp_path / "other" / "checkpoints")[-1][1]
    for suffix in (".json", ".safetensors"):
        shutil.copy(source.with_suffix(suffix), checkpoint.with_suffix(suffix))
    args = ["train", "--env", str(tiny_presets["env"]), "--agent", str(tiny_presets["frozen"])]
    args += ["--log-dir", str(tmp_path), "--cache-dir", str(cache), "--run-name", "old"]
    assert main([*args, "--resume", "--timesteps", "128"]) == 2
    err = capsys.readouterr().err.strip()
    assert "start the run again under a new --run-name" in err and "\n" not in err


@pytest.mark.parametrize("agent", ["finetune", "masked"])
def test_evaluate_json_schema(agent, tiny_presets, cache, tmp_path, capsys):
    run = tmp_path / "run"
    train_agent(
        tiny_presets["env"],
        load_agent_config(tiny_presets[agent]),
        run,
        timesteps=64,
        cache_dir=cache,
    )
    assert main(["evaluate", str(run), "--episodes", "30", "--seed", "3", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    names = ["ppo", "greedy_supervised", "random", "popular", "category_markov", "oracle_myopic"]
    assert list(payload["policies"]) == names
    for result in payload["policies"].values():
        for key in ("return_mean", "session_length_mean", "engage_rate", "buys_mean", "coverage"):
            assert isinstance(result[key], float)
        lo, hi = result["return_ci95"]
        assert lo <= result["return_mean"] <= hi
        assert result["episodes"] == 30
    assert json.loads((run / "eval.json").read_text()) == payload
    assert main(["evaluate", str(run), "--episodes", "30", "--seed", "3"]) == 0
    assert "greedy_supervised" in capsys.readouterr().out


def test_unloadable_cached_encoder_is_rebuilt(tiny_presets, cache, tmp_path):
    from rlrec.models.checkpoint import load_encoder

    preset = load_env_preset(tiny_presets["env"])
    dataset_dir = build_artifacts(preset, cache).dataset_dir
    out, reused = build_encoder(preset, dataset_dir, tmp_path)
    assert not reused
    assert build_encoder(preset, dataset_dir, tmp_path) == (out, True)
    # An encoder of an older architecture (here: garbage weights) must not be reused.
    (out / "model.safetensors").write_bytes(b"not safetensors")
    assert build_encoder(preset, dataset_dir, tmp_path) == (out, False)
    load_encoder(out)
