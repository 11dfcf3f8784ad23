"""``rlrec sweep``: the grid's checks, the results table, and sweeps on a local Ray (2 CPUs).

The Ray tests share one Ray session per module (starting Ray takes seconds); the kill -9 test
runs its driver in a subprocess with a Ray of its own, kills it after a trial's record is
written, and resumes in this process.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlrec.agents.config import load_agent_config
from rlrec.cli import main
from rlrec.errors import UserError
from rlrec.workflows.sweep import (
    SweepConfig,
    check_address,
    parse_grid,
    plan_trials,
    run_sweep,
    run_trial,
    summarize_trials,
)
from tests.conftest import PROJECT_ROOT


def _ray_or_skip() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but ray is not installed: scripts/test.sh installs rlrec[ray]")
        pytest.skip("ray is not installed (pip install 'rlrec[ray]')")


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray with 2 CPUs for the module's sweeps (run_sweep reuses a started Ray)."""
    _ray_or_skip()
    import logging

    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init("local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def _config(presets: dict[str, Path], **kwargs) -> SweepConfig:
    fields = {
        "env_preset": str(presets["env"]),
        "agent_preset": str(presets["frozen"]),
        "seeds": (0,),
        "episodes": 40,
        **kwargs,
    }
    return SweepConfig(**fields)


# --------------------------------------------------------------------------- no Ray needed


def test_parse_grid_reads_yaml_scalars_and_bracketed_lists() -> None:
    grid = parse_grid(["learning_rate=1e-3,3e-4", "critic_arch=[16,16],[8]", "env.max_steps=5"])
    assert grid == {
        "learning_rate": [1e-3, 3e-4],
        "critic_arch": [[16, 16], [8]],
        "env.max_steps": [5],
    }
    assert parse_grid(["target_kl=null,0.02", "planner=true,false"]) == {
        "target_kl": [None, 0.02],
        "planner": [True, False],
    }


@pytest.mark.parametrize(
    ("items", "needle"),
    [
        (["learning_rate"], "expected KEY=V1,V2"),
        (["=1,2"], "expected KEY=V1,V2"),
        (["n_steps=8,,16"], "empty value"),
        (["n_steps=8", "n_steps=16"], "given twice"),
    ],
)
def test_parse_grid_refuses_malformed_items(items, needle) -> None:
    with pytest.raises(UserError, match=needle):
        parse_grid(items)


def test_unknown_grid_key_names_it_and_the_valid_keys(tiny_presets, tmp_path) -> None:
    for key in ("learning_rat", "env.max_step", "env.reward_weights.sale", "env.seed"):
        config = _config(tiny_presets, grid={key: [1]})
        with pytest.raises(UserError) as info:
            plan_trials(config, tmp_path / "out", tiny_presets["cache"])
        message = str(info.value)
        assert f"--grid {key}: unknown setting" in message
        assert "learning_rate" in message and "env.max_steps" in message
        assert "\n" not in message
    assert not (tmp_path / "out").exists()  # nothing is written before the checks pass


def test_a_bad_value_is_refused_before_anything_runs(tiny_presets, tmp_path) -> None:
    # 4 envs x 16 steps = 64 transitions per rollout: a batch of 128 cannot be drawn.
    config = _config(tiny_presets, grid={"batch_size": [32, 128]})
    with pytest.raises(UserError, match=r"batch_size=128.*exceeds one rollout"):
        plan_trials(config, tmp_path, tiny_presets["cache"])
    config = _config(tiny_presets, grid={"learning_rate": ["fast"]})
    with pytest.raises(UserError, match="learning_rate: expected a number"):
        plan_trials(config, tmp_path, tiny_presets["cache"])


def test_plan_has_a_trial_per_configuration_and_seed(tiny_presets, tmp_path) -> None:
    config = _config(
        tiny_presets,
        seeds=(0, 1),
        grid={"learning_rate": [1e-3, 3e-4], "env.reward_weights.buy": [5.0, 10.0]},
    )
    configs, trials, derived = plan_trials(config, tmp_path, tiny_presets["cache"])
    assert [c["id"] for c in configs] == ["c000", "c001", "c002", "c003"]
    assert [t.name for t in trials][:3] == ["c000_s0", "c000_s1", "c001_s0"]
    assert len(trials) == 8
    assert configs[1]["agent"]["learning_rate"] == 1e-3
    assert configs[2]["agent"]["learning_rate"] == 3e-4
    # Each env override is its own derived preset file, with the override applied.
    assert len(derived) == 2
    for c in configs:
        data = derived[c["env_preset"]]
        assert data["env"]["reward_weights"]["buy"] == c["overrides"]["env.reward_weights.buy"]
        assert data["env"]["max_steps"] == 20  # the rest of the preset's env is kept
    assert all(Path(t.trial_dir).is_absolute() and Path(t.cache_dir).is_absolute() for t in trials)


def test_samples_draw_distinct_configurations_reproducibly(tiny_presets, tmp_path) -> None:
    grid = {"learning_rate": [1e-3, 3e-4, 1e-4], "n_epochs": [1, 2, 3]}
    draws = []
    for _ in range(2):
        config = _config(tiny_presets, grid=grid, samples=4, sample_seed=7)
        configs, _, _ = plan_trials(config, tmp_path, tiny_presets["cache"])
        draws.append([c["overrides"] for c in configs])
    assert draws[0] == draws[1]
    assert len(draws[0]) == 4
    assert len({json.dumps(o, sort_keys=True) for o in draws[0]}) == 4
    other = _config(tiny_presets, grid=grid, samples=4, sample_seed=8)
    assert [c["overrides"] for c in plan_trials(other, tmp_path, tiny_presets["cache"])[0]] != (
        draws[0]
    )
    everything = _config(tiny_presets, grid=grid, samples=50)
    assert len(plan_trials(everything, tmp_path, tiny_presets["cache"])[0]) == 9


def test_summary_gives_the_mean_over_seeds_with_a_t_interval() -> None:
    configs = [{"id": "c000", "overrides": {"n_epochs": 1}}, {"id": "c001", "overrides": {}}]

    def ok(name, ratio):
        return {
            "status": "ok",
            "ratio_to_best_baseline": ratio,
            "ratio_ci95": [ratio - 0.1, ratio + 0.1],
            "win": ratio > 1,
            "train_seconds": 1.0,
        }

    records = {
        "c000_s0": ok("c000_s0", 1.0),
        "c000_s1": ok("c000_s1", 1.2),
        "c000_s2": ok("c000_s2", 1.1),
        "c001_s0": ok("c001_s0", 1.3),
        "c001_s1": {"status": "error", "error": "RuntimeError: boom"},
    }
    rows = summarize_trials(configs, records, list(records))
    assert [r["config"] for r in rows] == ["c001", "c000"]  # best mean first
    c0 = rows[1]
    assert c0["ratio_mean"] == pytest.approx(1.1)
    # t(0.975, 2) = 4.303; the standard error of (1.0, 1.2, 1.1) is 0.1 / sqrt(3).
    half = 4.302652729911275 * 0.1 / 3**0.5
    assert c0["ratio_ci95_lo"] == pytest.approx(1.1 - half)
    assert c0["ratio_ci95_hi"] == pytest.approx(1.1 + half)
    assert c0["ci_over"] == "seeds" and c0["ratio_min"] == pytest.approx(1.0)
    c1 = rows[0]
    assert (c1["seeds_ok"], c1["seeds_failed"], c1["ci_over"]) == (1, 1, "users")
    assert (c1["ratio_ci95_lo"], c1["ratio_ci95_hi"]) == pytest.approx((1.2, 1.4))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_address_fails_in_seconds() -> None:
    started = time.perf_counter()
    with pytest.raises(UserError, match="no Ray cluster answers there"):
        check_address(f"127.0.0.1:{_free_port()}")
    assert time.perf_counter() - started < 10
    with pytest.raises(UserError, match="expected auto, HOST:PORT"):
        check_address("localhost")


def test_a_trial_holds_every_native_thread_pool_to_its_threads(
    tiny_presets, tmp_path, monkeypatch
) -> None:
    # The sequential path (a trial in this process) and a Ray worker must run the same
    # threads, and trials side by side must not oversubscribe the CPUs: torch's OpenMP and
    # the BLAS under numpy are held to the trial's threads while it trains and evaluates.
    import threadpoolctl

    import rlrec.agents.train
    import rlrec.workflows.evaluate

    seen: dict[str, list[int]] = {}

    def pools() -> list[int]:
        return [p["num_threads"] for p in threadpoolctl.threadpool_info()]

    def fake_train(env_preset, agent, run_dir, **kwargs):
        seen["train"] = pools()
        return type("Result", (), {"timesteps": 128})()

    def fake_evaluate(run_dir, episodes, seed, world):
        seen["evaluate"] = pools()
        policies = {"ppo": {"return_mean": 2.0}, "popular": {"return_mean": 1.0}}
        return {
            "best_baseline": "popular",
            "policies": policies,
            "ratio_to_best_baseline": 2.0,
            "ratio_ci95": [1.5, 2.5],
            "win": True,
        }

    monkeypatch.setattr(rlrec.agents.train, "train_agent", fake_train)
    monkeypatch.setattr(rlrec.workflows.evaluate, "evaluate_run", fake_evaluate)
    _, trials, _ = plan_trials(_config(tiny_presets), tmp_path / "out", tiny_presets["cache"])
    before = pools()
    record = run_trial(trials[0])
    assert seen["train"] and set(seen["train"]) == {1} and set(seen["evaluate"]) == {1}
    assert pools() == before  # restored after the trial
    assert record["started_at"] <= record["finished_at"]


def test_import_in_background_gives_the_module_or_its_error() -> None:
    import json as json_module

    from rlrec.workflows.sweep import _import_in_background

    assert _import_in_background("json")() is json_module
    with pytest.raises(ModuleNotFoundError, match="rlrec_no_such_module"):
        _import_in_background("rlrec_no_such_module")()


def test_a_folder_that_is_not_a_sweep_is_never_replaced(tiny_presets, tmp_path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="rlrec did not write"):
        run_sweep(_config(tiny_presets), out, cache_dir=tiny_presets["cache"], force=True)
    assert (out / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="holds no sweep"):
        run_sweep(_config(tiny_presets), tmp_path / "none", resume=True)


# --------------------------------------------------------------------------- on Ray


def _square_or_fail(x: int) -> int:
    if x == 2:
        raise ValueError("two is refused")
    return x * x


def test_parallel_map_keeps_order_and_reports_errors_per_item(ray_session, tmp_path) -> None:
    from rlrec.workflows.sweep import parallel_map

    seen = []
    outcomes = parallel_map(
        _square_or_fail, [3, 2], num_cpus=2, storage_path=tmp_path, on_outcome=seen.append
    )
    assert [o.index for o in outcomes] == [0, 1]
    assert [o.value for o in outcomes] == [9, None]
    assert outcomes[1].error == "ValueError: two is refused"
    assert "Traceback" in (outcomes[1].traceback or "")
    assert sorted(o.index for o in seen) == [0, 1]  # each reported once, as it finished
    assert parallel_map(_square_or_fail, []) == []


@pytest.fixture(scope="module")
def finished_sweep(ray_session, tiny_presets, tmp_path_factory):
    """A sweep of 2 tiny trials through the CLI on the module's Ray; one of them fails."""
    out = tmp_path_factory.mktemp("sweeps") / "two"
    argv = [
        "sweep",
        "--env",
        str(tiny_presets["env"]),
        "--agent",
        str(tiny_presets["frozen"]),
        # cuda:99 exists on no machine: that trial fails inside its worker at train time.
        "--grid",
        "device=cpu,cuda:99",
        "--seeds",
        "0",
        "--episodes",
        "40",
        "--num-cpus",
        "2",
        "--cache-dir",
        str(tiny_presets["cache"]),
        "--out",
        str(out),
    ]
    code = main(argv)
    return out, argv, code


def test_sweep_runs_trials_and_reports_a_failure_without_stopping(finished_sweep) -> None:
    out, _, code = finished_sweep
    assert code == 1  # a trial failed
    ok = json.loads((out / "trials" / "c000_s0" / "result.json").read_text())
    bad = json.loads((out / "trials" / "c001_s0" / "result.json").read_text())
    assert ok["status"] == "ok" and bad["status"] == "error"
    assert "cuda" in bad["error"] and "\n" not in bad["error"]
    assert "Traceback" in bad["traceback"]
    # The ok trial is a full train + evaluate: its run directory has everything.
    run = out / "trials" / "c000_s0" / "run"
    evaluation = json.loads((run / "eval.json").read_text())
    assert ok["ratio_to_best_baseline"] == evaluation["ratio_to_best_baseline"]
    assert ok["timesteps"] >= 128
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert ok["started_at"] < ok["finished_at"]
    # Tune's own result loggers: only its JSON one (no TensorBoardX copy, no CSV).
    assert list((out / "ray").rglob("result.json"))
    assert not list((out / "ray").rglob("events.out.tfevents.*"))
    assert not list((out / "ray").rglob("progress.csv"))
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["config"] for r in rows] == ["c000", "c001"]
    assert float(rows[0]["ratio_mean"]) == pytest.approx(ok["ratio_to_best_baseline"])
    assert (rows[1]["seeds_ok"], rows[1]["seeds_failed"]) == ("0", "1")
    markdown = (out / "results.md").read_text()
    assert "| 1 | c000 | device=cpu | 1 |" in markdown and "c001_s0" in markdown
    best = load_agent_config(out / "best_agent.yaml")
    sweep = json.loads((out / "sweep.json").read_text())
    assert best == load_agent_config_from(sweep["configurations"][0]["agent"])
    assert best.device == "cpu"


def load_agent_config_from(mapping: dict) -> object:
    from rlrec.agents.config import AgentConfig
    from rlrec.config import from_mapping

    return from_mapping(AgentConfig, mapping)


def test_resume_reruns_only_what_did_not_finish(finished_sweep, capsys) -> None:
    out, _, _ = finished_sweep
    ok_record = out / "trials" / "c000_s0" / "result.json"
    before = (ok_record.stat().st_mtime_ns, ok_record.read_text())
    policy = out / "trials" / "c000_s0" / "run" / "policy.json"
    policy_before = policy.stat().st_mtime_ns
    capsys.readouterr()
    code = main(["sweep", "--resume", "--json", "--num-cpus", "2", "--out", str(out)])
    summary = json.loads(capsys.readouterr().out)
    assert code == 1  # the cuda:99 trial fails again, reported again
    assert (summary["trials"], summary["ran"], summary["ok"]) == (2, 1, 1)
    assert (ok_record.stat().st_mtime_ns, ok_record.read_text()) == before
    assert policy.stat().st_mtime_ns == policy_before


def test_resume_with_other_settings_and_a_second_start_are_refused(finished_sweep, capsys) -> None:
    out, _, _ = finished_sweep
    capsys.readouterr()
    assert main(["sweep", "--resume", "--seeds", "0,1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "seeds differ" in err and err.count("\n") == 1
    with pytest.raises(UserError, match="pass --resume to continue it, --force"):
        run_sweep(load_agent_sweep(out), out)


def load_agent_sweep(out: Path) -> SweepConfig:
    from rlrec.workflows.sweep import load_sweep_config

    return load_sweep_config(out)


# Two Ray start-ups and four trials: ~20 s on 2 idle cores, minutes on a loaded machine.
@pytest.mark.slow
def test_kill_9_mid_sweep_then_resume_loses_and_repeats_nothing(
    ray_session, tiny_presets, tmp_path
) -> None:
    out = tmp_path / "killed"
    argv = [
        sys.executable, "-c", "import sys; from rlrec.cli import main; sys.exit(main())", "sweep",
        "--env", str(tiny_presets["env"]), "--agent", str(tiny_presets["frozen"]),
        "--grid", "n_epochs=1,2,3", "--seeds", "0", "--episodes", "40",
        "--num-cpus", "1", "--cache-dir", str(tiny_presets["cache"]), "--out", str(out),
    ]  # fmt: skip
    # One CPU: the three trials run one after another, so the kill lands between records.
    driver = subprocess.Popen(
        argv, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            if list(out.glob("trials/*/result.json")):
                break
            time.sleep(0.05)
        assert driver.poll() is None, driver.stderr.read().decode() if driver.stderr else ""
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        # Ray's processes of that driver (its own session) go with its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    finished = {p.parent.name: p.read_text() for p in out.glob("trials/*/result.json")}
    assert 1 <= len(finished) < 3
    mtimes = {n: (out / "trials" / n / "result.json").stat().st_mtime_ns for n in finished}
    result = run_sweep(load_agent_sweep(out), out, resume=True, num_cpus=2)
    assert result.ran == 3 - len(finished)
    assert (result.trials, result.ok, result.failed) == (3, 3, {})
    for name, text in finished.items():  # finished trials were not run again
        record = out / "trials" / name / "result.json"
        assert record.read_text() == text and record.stat().st_mtime_ns == mtimes[name]
    with open(out / "trials.csv") as fh:
        trials = [r["trial"] for r in csv.DictReader(fh)]
    assert sorted(trials) == ["c000_s0", "c001_s0", "c002_s0"]  # none lost, none twice
    with open(out / "results.csv") as fh:
        assert sorted(r["seeds_ok"] for r in csv.DictReader(fh)) == ["1", "1", "1"]
