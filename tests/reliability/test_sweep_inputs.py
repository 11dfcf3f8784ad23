"""Hostile inputs to ``rlrec sweep`` (issue 21): one clear line each, nothing written or started.

Every case fails before Ray starts or a trial runs, so the suite needs no Ray session; the
unreachable address fails within the TCP check's few seconds.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.reliability.harness import assert_clear_error, run_hostile


def _ray_installed() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def base(tiny_presets, tmp_path) -> list[str]:
    return [
        "sweep",
        "--env",
        str(tiny_presets["env"]),
        "--agent",
        str(tiny_presets["frozen"]),
        "--cache-dir",
        str(tiny_presets["cache"]),
        "--out",
        str(tmp_path / "out"),
    ]


@pytest.fixture(scope="module")
def tiny_presets(tmp_path_factory):
    import yaml

    from tests.agents.conftest import TINY_AGENT, TINY_ENV

    root = tmp_path_factory.mktemp("sweep_presets")
    env, agent = root / "env.yaml", root / "agent.yaml"
    env.write_text(yaml.safe_dump(TINY_ENV))
    agent.write_text(yaml.safe_dump(TINY_AGENT))
    return {"env": env, "frozen": agent, "cache": root / "cache"}


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--grid", "learning_rat=1e-3"], ["--grid learning_rat", "unknown", "learning_rate"]),
        (["--grid", "env.max_step=5"], ["--grid env.max_step", "env.max_steps"]),
        (["--grid", "env.reward_weights.sale=1"], ["env.reward_weights.sale", "unknown"]),
        (["--grid", "learning_rate"], ["--grid", "KEY=V1,V2"]),
        (["--grid", "n_steps=8,,16"], ["--grid", "empty value"]),
        (["--grid", "batch_size=32,4096"], ["batch_size=4096", "exceeds one rollout"]),
        (["--grid", "learning_rate=fast"], ["learning_rate", "expected a number"]),
        (["--grid", "env.max_steps=0"], ["env.max_steps", "expected >= 1"]),
        (["--seeds", "a,b"], ["--seeds", "integers"]),
        (["--seeds", "1,1"], ["--seeds", "repeated"]),
        (["--samples", "0"], ["--samples", ">= 1"]),
        (["--episodes", "0"], ["--episodes", ">= 1"]),
        (["--num-cpus", "0"], ["--num-cpus", ">= 1"]),
        (["--resume", "--force"], ["--resume and --force"]),
        (["--resume"], ["--resume", "holds no sweep"]),
        (["--env", "no_such_env"], ["no_such_env", "bundled preset"]),
        (["--agent", "missing.yaml"], ["missing.yaml", "agent preset"]),
    ],
)
def test_bad_sweep_options_are_one_line(base, extra, needles, capsys, tmp_path) -> None:
    outcome = run_hostile([*base, *extra], capsys)
    assert_clear_error(outcome, *needles)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_an_unreachable_address_is_one_line_within_seconds(base, capsys, tmp_path) -> None:
    if not _ray_installed():
        pytest.skip("ray is not installed (pip install 'rlrec[ray]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    started = time.perf_counter()
    outcome = run_hostile([*base, "--address", f"127.0.0.1:{port}"], capsys)
    assert_clear_error(outcome, "--address", str(port), "ray start --head")
    assert time.perf_counter() - started < 15
    assert not (tmp_path / "out").exists()
    outcome = run_hostile([*base, "--address", "nowhere"], capsys)
    assert_clear_error(outcome, "--address", "HOST:PORT")


def test_out_that_is_a_file_or_a_users_folder_is_refused(base, capsys, tmp_path) -> None:
    out = tmp_path / "out"
    out.write_text("a file")
    assert_clear_error(run_hostile(base, capsys), str(out), "is a file")
    out.unlink()
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    outcome = run_hostile([*base, "--force"], capsys)
    assert_clear_error(outcome, "rlrec did not write", "--out")
    assert (out / "thesis.tex").read_text() == "mine"


def test_a_corrupt_sweep_record_on_resume_is_one_line(base, capsys, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text("{not json")
    assert_clear_error(run_hostile([*base, "--resume"], capsys), "sweep.json", "unreadable")
    (out / "sweep.json").write_text(json.dumps({"config": {"seeds": "x"}}))
    outcome = run_hostile([*base, "--resume"], capsys)
    assert outcome.kind == "clear_error", outcome.err
    assert Path(out / "sweep.json").is_file()  # the user's file is left as it was
