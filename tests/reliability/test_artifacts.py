"""Hostile run directories: planted pickles, corrupted policy files and checkpoints, run guards.

Every command that opens a run is tried on a run whose ``policy.zip`` (an SB3 zip, the format
of older rlrec versions) carries a pickle that would create a marker file when unpickled: the
marker must never appear and the command must end in one clear line. The corrupted-artifact
tables run ``rlrec evaluate`` and ``rlrec train --resume`` on a copy of a tiny trained run
with one file damaged each.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from rlrec.agents.artifacts import checkpoint_files, load_policy, run_lock
from rlrec.agents.config import load_agent_config
from rlrec.agents.train import load_run, read_run_config, train_agent
from rlrec.errors import UserError
from tests.agents.conftest import TINY_AGENT, TINY_ENV, write_yaml
from tests.cli.test_cli_ope import write_log
from tests.reliability.harness import assert_clear_error, run_hostile

Damage = Callable[[Path, dict[str, Path]], object]


class Plant:
    """Unpickling this creates (opens for writing) the marker file: the proof of execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def planted_zip(source: Path, out: Path, marker: Path) -> Path:
    """An SB3 zip like ``source`` whose serialized ``policy_class`` is the :class:`Plant`."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            blob = zin.read(item.filename)
            if item.filename == "data":
                data = json.loads(blob)
                data["policy_class"] = {
                    ":type:": "<class 'abc.ABCMeta'>",
                    ":serialized:": base64.b64encode(pickle.dumps(Plant(marker))).decode(),
                }
                blob = json.dumps(data).encode()
            zout.writestr(item, blob)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained run (128 steps, checkpoints at 64 and 128) and runs of other shapes."""
    root = tmp_path_factory.mktemp("artifacts")
    cache = root / "cache"
    env = write_yaml(root / "env.yaml", TINY_ENV)
    other_env = write_yaml(
        root / "other_env.yaml", {**TINY_ENV, "env": {**TINY_ENV["env"], "catalog_size": 30}}
    )
    agent = write_yaml(root / "agent.yaml", TINY_AGENT)
    wide = write_yaml(root / "wide.yaml", {**TINY_AGENT, "critic_arch": [8, 8]})
    train_agent(env, load_agent_config(agent), root / "base", timesteps=128, cache_dir=cache)
    train_agent(other_env, load_agent_config(agent), root / "other", timesteps=64, cache_dir=cache)
    train_agent(env, load_agent_config(wide), root / "wide", timesteps=64, cache_dir=cache)
    # An SB3 zip of the base policy, as an older rlrec wrote it.
    legacy = root / "legacy.zip"
    load_policy(root / "base" / "policy.json").save(legacy)
    return {
        "root": root,
        "cache": cache,
        "env": env,
        "agent": agent,
        "base": root / "base",
        "other": root / "other",
        "wide": root / "wide",
        "legacy": legacy,
    }


def copy_run(world: dict[str, Path], dest: Path, name: str = "base") -> Path:
    shutil.copytree(world[name], dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


def train_argv(world: dict[str, Path], log_dir: Path, name: str, *extra: str) -> list[str]:
    return [
        "train",
        *("--env", str(world["env"]), "--agent", str(world["agent"])),
        *("--log-dir", str(log_dir), "--cache-dir", str(world["cache"])),
        *("--run-name", name, *extra),
    ]


# --------------------------------------------------------------------------- planted pickles


def test_the_planted_zip_does_run_code_under_sb3_load(world, tmp_path):
    """The control: SB3's own loader executes the plant (so the tests below can fail)."""
    from stable_baselines3 import PPO

    marker = tmp_path / "marker"
    zip_path = planted_zip(world["legacy"], tmp_path / "policy.zip", marker)
    with contextlib.suppress(Exception):  # the plant is no policy class: it fails after
        PPO.load(zip_path)
    assert marker.exists()


def opening_commands(world: dict[str, Path], run: Path) -> dict[str, list[str]]:
    """Every command that opens a run directory, on ``run``."""
    dataset = read_run_config(world["base"]).dataset_dir
    log = write_log(run.parent / "obd.csv", 60, seed=0)
    return {
        "evaluate": ["evaluate", str(run), "--episodes", "5"],
        "ope replay": ["ope", "replay", "--data", dataset, "--policy", f"run:{run}"],
        "ope sessions": [
            *("ope", "sessions", "--simulate", str(run), "--target", f"run:{run}"),
            *("--sessions", "10", "--truth-sessions", "10", "--n-bootstrap", "0"),
        ],
        "ope sessions --data": [
            *("ope", "sessions", "--data", dataset, "--target", f"run:{run}"),
            *("--n-bootstrap", "0"),
        ],
        "ope bandit": ["ope", "bandit", "--logs", str(log), "--policy", str(run)],
        "train --resume": train_argv(world, run.parent, run.name, "--resume"),
    }


COMMANDS = [
    "evaluate",
    "ope replay",
    "ope sessions",
    "ope sessions --data",
    "ope bandit",
    "train --resume",
]


@pytest.mark.parametrize("where", ["policy.zip", "checkpoint only"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_planted_policy_zip_never_runs(command, where, world, tmp_path, capsys):
    run = copy_run(world, tmp_path / "run")
    marker = tmp_path / "marker"
    for name in ("policy.json", "policy.safetensors"):
        (run / name).unlink()
    if where == "policy.zip":
        planted_zip(world["legacy"], run / "policy.zip", marker)
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    planted_zip(world["legacy"], run / "checkpoints" / "step_64.zip", marker)
    outcome = run_hostile(opening_commands(world, run)[command], capsys)
    assert not marker.exists()
    named = "step_64.zip" if command == "train --resume" or where != "policy.zip" else "policy.zip"
    assert_clear_error(outcome, named, f"rlrec convert-run {run} --trust")


@pytest.mark.parametrize("logs", ["missing.csv", "empty.csv"])
def test_ope_bandit_checks_its_own_inputs_before_opening_the_run(logs, world, tmp_path, capsys):
    run = copy_run(world, tmp_path / "run")
    (run / "policy.json").unlink()
    planted_zip(world["legacy"], run / "policy.zip", tmp_path / "marker")
    (tmp_path / "empty.csv").write_text("")
    argv = ["ope", "bandit", "--logs", str(tmp_path / logs), "--policy", str(run)]
    outcome = run_hostile(argv, capsys)
    assert_clear_error(outcome, logs)
    assert "policy.zip" not in outcome.err and not (tmp_path / "marker").exists()


def test_report_and_convert_without_trust_never_unpickle(world, tmp_path, capsys):
    run = copy_run(world, tmp_path / "run")
    marker = tmp_path / "marker"
    (run / "policy.json").unlink()
    planted_zip(world["legacy"], run / "policy.zip", marker)
    report = run_hostile(["report", str(run), "--out", str(tmp_path / "report")], capsys)
    assert report.kind == "ok" and report.code == 0, report.err  # report opens no policy
    refused = run_hostile(["convert-run", str(run)], capsys)
    assert_clear_error(refused, "--trust", "runs any code")
    assert not marker.exists()


def rewrite_json(path: Path, change: Callable[[dict], object]) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


PICKLE_FIELD = {":type:": "<class 'type'>", ":serialized:": "PLANT"}


def _plant(meta: dict, where: tuple[str, ...]) -> None:
    target = meta
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = dict(PICKLE_FIELD)


MALICIOUS_JSON: list[tuple[str, Callable[[dict], object], str]] = [
    ("algorithm by import path", lambda m: m.update(algorithm="os.system"), "malformed"),
    ("policy class by path", lambda m: m.update(policy_class="builtins.eval"), "malformed"),
    (
        "activation class by path",
        lambda m: m["policy_kwargs"].update(activation_fn={"$class": "builtins.exec"}),
        "is not one rlrec builds policies from",
    ),
    (
        "extractor class with extra keys",
        lambda m: m["policy_kwargs"].update(
            features_extractor_class={"$class": "Tanh", "module": "os"}
        ),
        "is not one rlrec builds",
    ),
    (
        "pickle in policy kwargs",
        lambda m: _plant(m, ("policy_kwargs", "activation_fn")),
        "pickled field",
    ),
    ("pickle as the whole kwargs", lambda m: _plant(m, ("policy_kwargs",)), "pickled field"),
    ("pickle in settings", lambda m: _plant(m, ("settings", "gamma")), "pickled field"),
    ("pickle as a space", lambda m: _plant(m, ("observation_space",)), "malformed"),
    ("pickle in the optimizer", lambda m: _plant(m, ("optimizer", "state")), "pickled field"),
    ("pickle as a schedule", lambda m: _plant(m, ("schedules", "learning_rate")), "malformed"),
    ("unknown space type", lambda m: m["action_space"].update(type="Pickle"), "malformed"),
    ("object dtype", lambda m: m["observation_space"].update(dtype="object"), "malformed"),
    ("wrong format tag", lambda m: m.update(format="sb3"), "not an rlrec policy file"),
    ("future version", lambda m: m.update(version=99), "format version 99"),
    ("step is a string", lambda m: m.update(step="many"), "malformed"),
    ("missing settings", lambda m: m.pop("settings"), "malformed"),
    ("extra setting", lambda m: m["settings"].update(policy="eval"), "malformed"),
]


@pytest.mark.parametrize(
    ("change", "needle"),
    [(c, n) for _, c, n in MALICIOUS_JSON],
    ids=[name for name, _, _ in MALICIOUS_JSON],
)
def test_a_malicious_policy_json_is_refused(change, needle, world, tmp_path, capsys):
    marker = tmp_path / "marker"
    run = copy_run(world, tmp_path / "run")
    payload = base64.b64encode(pickle.dumps(Plant(marker))).decode()
    rewrite_json(run / "policy.json", change)
    (run / "policy.json").write_text((run / "policy.json").read_text().replace("PLANT", payload))
    outcome = run_hostile(["evaluate", str(run), "--episodes", "5"], capsys)
    assert_clear_error(outcome, "policy.json", needle)
    assert not marker.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_pickle_in_policy_json_never_runs_under_any_command(command, world, tmp_path, capsys):
    run = copy_run(world, tmp_path / "run")
    marker = tmp_path / "marker"
    payload = base64.b64encode(pickle.dumps(Plant(marker))).decode()
    plant = {":type:": "<class 'abc.ABCMeta'>", ":serialized:": payload}
    for path in (run / "policy.json", *(run / "checkpoints").glob("*.json")):
        rewrite_json(path, lambda m: m["policy_kwargs"].update(activation_fn=plant))
    outcome = run_hostile(opening_commands(world, run)[command], capsys)
    assert_clear_error(outcome, ".json", "pickled field")
    assert not marker.exists()


# --------------------------------------------------------------------------- corrupted files


def _truncate(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _garbage_with_matching_hash(run: Path) -> None:
    # The descriptor vouches for the bytes, but they are not safetensors.
    blob = os.urandom(4096)
    (run / "policy.safetensors").write_bytes(blob)
    rewrite_json(run / "policy.json", lambda m: m.update(weights_sha256=_sha(blob)))


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _pair_from(name: str) -> Damage:
    def copy(run: Path, world: dict[str, Path]) -> None:
        for suffix in ("json", "safetensors"):
            shutil.copy(world[name] / f"policy.{suffix}", run / f"policy.{suffix}")

    return copy


def _weights_from(name: str, rehash: bool) -> Damage:
    def copy(run: Path, world: dict[str, Path]) -> None:
        blob = (world[name] / "policy.safetensors").read_bytes()
        (run / "policy.safetensors").write_bytes(blob)
        if rehash:
            rewrite_json(run / "policy.json", lambda m: m.update(weights_sha256=_sha(blob)))

    return copy


def _legacy_only(run: Path, world: dict[str, Path]) -> None:
    (run / "policy.json").unlink()
    shutil.copy(world["legacy"], run / "policy.zip")


def _replace_with_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _no_policy(run: Path, world: dict[str, Path]) -> None:
    (run / "policy.json").unlink()
    shutil.rmtree(run / "checkpoints")


def _on(name: str, damage: Callable[[Path], object]) -> Damage:
    """A damage to one file of the run."""
    return lambda run, world: damage(run / name)


EVALUATE_CASES: list[tuple[str, Damage, str]] = [
    ("safetensors truncated", _on("policy.safetensors", _truncate), "truncated"),
    ("safetensors empty", _on("policy.safetensors", lambda p: p.write_bytes(b"")), "truncated"),
    ("safetensors garbage", lambda r, w: _garbage_with_matching_hash(r), "not a safetensors"),
    ("safetensors missing", _on("policy.safetensors", Path.unlink), "cannot read"),
    ("safetensors a directory", _on("policy.safetensors", _replace_with_dir), "cannot read"),
    ("json truncated", _on("policy.json", _truncate), "truncated or garbage"),
    ("json empty", _on("policy.json", lambda p: p.write_bytes(b"")), "truncated or garbage"),
    (
        "json garbage",
        _on("policy.json", lambda p: p.write_bytes(os.urandom(300))),
        "truncated or garbage",
    ),
    ("json not utf-8", _on("policy.json", lambda p: p.write_bytes(b"{\xff}")), "garbage"),
    ("json a list", _on("policy.json", lambda p: p.write_text("[]")), "not an rlrec policy"),
    ("json a directory", _on("policy.json", _replace_with_dir), "cannot read"),
    ("weights of another save", _weights_from("other", False), "does not match"),
    ("weights of another net, rehashed", _weights_from("wide", True), "do not fit"),
    ("pair of another run (spaces differ)", _pair_from("other"), "another run"),
    ("an older rlrec's policy.zip", _legacy_only, "convert-run"),
    ("no policy and no checkpoint", _no_policy, "no policy.json and no checkpoint"),
    ("no config.yaml", _on("config.yaml", Path.unlink), "not a run directory"),
    ("config.yaml garbage", _on("config.yaml", lambda p: p.write_text("{: [")), "config.yaml"),
]


@pytest.mark.parametrize(
    ("damage", "needle"),
    [(d, n) for _, d, n in EVALUATE_CASES],
    ids=[name for name, _, _ in EVALUATE_CASES],
)
def test_corrupted_policy_under_evaluate(damage, needle, world, tmp_path, capsys):
    run = copy_run(world, tmp_path / "run")
    damage(run, world)
    before = sorted(p.name for p in run.iterdir())
    outcome = run_hostile(["evaluate", str(run), "--episodes", "5"], capsys)
    assert_clear_error(outcome, needle)
    assert sorted(p.name for p in run.iterdir()) == before  # no eval.json, nothing half-written


def _checkpoint(run: Path, step: int, suffix: str) -> Path:
    return run / "checkpoints" / f"step_{step}.{suffix}"


RESUME_CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("json truncated", lambda r: _truncate(_checkpoint(r, 128, "json")), "truncated or"),
    ("json empty", lambda r: _checkpoint(r, 128, "json").write_bytes(b""), "truncated or"),
    ("json garbage", lambda r: _checkpoint(r, 128, "json").write_text("{x"), "truncated or"),
    (
        "json without step",
        lambda r: rewrite_json(_checkpoint(r, 128, "json"), _drop_step),
        'no valid "step"',
    ),
    (
        "json negative step",
        lambda r: rewrite_json(_checkpoint(r, 128, "json"), lambda m: m.update(step=-5)),
        'no valid "step"',
    ),
    (
        "json step a string",
        lambda r: rewrite_json(_checkpoint(r, 128, "json"), lambda m: m.update(step="1e9")),
        'no valid "step"',
    ),
    ("weights truncated", lambda r: _truncate(_checkpoint(r, 128, "safetensors")), "truncated"),
    (
        "weights empty",
        lambda r: _checkpoint(r, 128, "safetensors").write_bytes(b""),
        "does not match",
    ),
    ("weights missing", lambda r: _checkpoint(r, 128, "safetensors").unlink(), "cannot read"),
    ("older rlrec's zip only", lambda r: _legacy_checkpoint(r), "convert-run"),
]


def _drop_step(meta: dict) -> None:
    meta.pop("step")


def _legacy_checkpoint(run: Path) -> None:
    legacy = run.parent.parent / "legacy_source.zip"
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    shutil.copy(legacy, run / "checkpoints" / "step_64.zip")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [(d, n) for _, d, n in RESUME_CASES],
    ids=[name for name, _, _ in RESUME_CASES],
)
def test_corrupted_checkpoint_under_resume(damage, needle, world, tmp_path, capsys):
    log_dir = tmp_path / "logs"
    run = copy_run(world, log_dir / "run")
    (run / "policy.json").unlink()
    shutil.copy(world["legacy"], tmp_path / "legacy_source.zip")
    damage(run)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    outcome = run_hostile(
        train_argv(world, log_dir, "run", "--resume", "--timesteps", "192"), capsys
    )
    assert_clear_error(outcome, needle)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert not (run / "policy.json").exists()


def test_a_checkpoint_named_for_a_huge_step_does_not_claim_it(world, tmp_path, capsys):
    log_dir = tmp_path / "logs"
    run = copy_run(world, log_dir / "run")
    for suffix in ("json", "safetensors"):  # step 64's checkpoint under a misleading name
        shutil.copy(_checkpoint(run, 64, suffix), _checkpoint(run, 99999999, suffix))
    assert [s for s, _ in checkpoint_files(run / "checkpoints")] == [64, 64, 128]
    outcome = run_hostile(
        train_argv(world, log_dir, "run", "--resume", "--timesteps", "192", "--json"), capsys
    )
    assert outcome.kind == "ok", outcome.err
    summary = json.loads(outcome.out)
    assert summary["resumed_from"] == 128 and summary["timesteps"] == 192
    steps = [s for s, _ in checkpoint_files(run / "checkpoints")]
    assert steps == [64, 128, 192]  # keep_checkpoints = 3, by stored step
    assert json.loads((run / "policy.json").read_text())["step"] == 192


def test_a_checkpoint_rotated_out_while_listing_is_skipped(world, tmp_path, monkeypatch):
    # A training run deletes its oldest checkpoint between another process's listing of the
    # folder and its read of that file (CI saw this race in the kill-and-resume test).
    import rlrec.agents.artifacts as artifacts

    run = copy_run(world, tmp_path / "logs" / "run")
    read = artifacts.read_policy_meta

    def rotate_then_read(path):
        if path.name == "step_64.json":
            path.unlink()
        return read(path)

    monkeypatch.setattr(artifacts, "read_policy_meta", rotate_then_read)
    assert [s for s, _ in checkpoint_files(run / "checkpoints")] == [128]
    (run / "checkpoints" / "step_128.json").write_text("{not json")
    with pytest.raises(UserError, match=r"step_128\.json"):  # a present, broken file still fails
        checkpoint_files(run / "checkpoints")


def test_a_saved_policy_restores_weights_optimizer_and_counters(world, tmp_path):
    from rlrec.agents.artifacts import save_policy
    from rlrec.agents.train import make_training_env

    run = load_run(world["base"])
    config = run.config
    venv = make_training_env(
        config.agent, run.sim_model, run.dataset, config.env, run.encoder, config.seed
    )
    model = load_policy(world["base"] / "policy.json", env=venv)
    model.learn(64, reset_num_timesteps=False)  # fresh optimizer moments and counters
    back = load_policy(save_policy(model, tmp_path, "again"), env=venv)
    assert back.num_timesteps == model.num_timesteps == 192
    assert back._n_updates == model._n_updates > 0
    for key, value in model.policy.state_dict().items():
        assert back.policy.state_dict()[key].equal(value), key
    mine, theirs = back.policy.optimizer.state_dict(), model.policy.optimizer.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    assert mine["state"].keys() == theirs["state"].keys()
    for index, state in theirs["state"].items():
        for name, value in state.items():
            assert mine["state"][index][name].equal(value), (index, name)
    for name in ("n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "ent_coef", "seed"):
        assert getattr(back, name) == getattr(model, name), name
    assert back.clip_range(0.3) == model.clip_range(0.3)
    assert back.lr_schedule(0.3) == model.lr_schedule(0.3)
    assert back.policy_kwargs == {k: v for k, v in model.policy_kwargs.items() if k != "device"}
    venv.close()


def test_resume_from_a_checkpoint_is_deterministic(world, tmp_path, capsys):
    results = []
    for name in ("a", "b"):
        log_dir = tmp_path / name
        run = copy_run(world, log_dir / "run")
        (run / "policy.json").unlink()
        argv = train_argv(world, log_dir, "run", "--resume", "--timesteps", "192", "--json")
        outcome = run_hostile(argv, capsys)
        assert outcome.kind == "ok", outcome.err
        assert json.loads(outcome.out)["resumed_from"] == 128
        results.append((run / "policy.safetensors").read_bytes())
    assert results[0] == results[1]
    assert results[0] != (world["base"] / "policy.safetensors").read_bytes()


# --------------------------------------------------------------------------- run guards


@pytest.mark.parametrize("device", ["cuda:99", "tpu", "cuda:x", "mps:3", "", "meta"])
def test_an_unavailable_device_is_refused(device, world, tmp_path, capsys):
    agent = write_yaml(tmp_path / "agent.yaml", {**TINY_AGENT, "device": device})
    argv = train_argv(world, tmp_path / "logs", "run")
    argv[argv.index("--agent") + 1] = str(agent)
    outcome = run_hostile(argv, capsys)
    assert_clear_error(outcome, "agent.device")
    assert not (tmp_path / "logs" / "run").exists()


@pytest.mark.parametrize("name", ["../../x", "../x", "..", ".", "a/b", "/tmp/x", "a\\b", ""])
def test_a_run_name_cannot_leave_the_log_dir(name, world, tmp_path, capsys):
    log_dir = tmp_path / "deep" / "logs"
    log_dir.mkdir(parents=True)
    outcome = run_hostile(train_argv(world, log_dir, name), capsys)
    assert_clear_error(outcome, "--run-name", "inside --log-dir")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "logs"]


def test_a_run_opens_from_another_directory(world, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(world["env"], work / "env.yaml")
    shutil.copytree(world["cache"], work / "cache")
    monkeypatch.chdir(work)
    argv = train_argv(world, Path("logs"), "rel", "--timesteps", "64")
    argv[argv.index("--env") + 1] = "env.yaml"
    argv[argv.index("--cache-dir") + 1] = "cache"
    assert run_hostile(argv, capsys).kind == "ok"
    config = read_run_config(work / "logs" / "rel")
    for value in (config.env_preset, config.cache_dir, config.dataset_dir, config.sim_dir):
        assert Path(value).is_absolute() and Path(value).exists(), value
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    outcome = run_hostile(["evaluate", str(work / "logs" / "rel"), "--episodes", "5"], capsys)
    assert outcome.kind == "ok", outcome.err
    # The cache moved away: load_run rebuilds from the preset, found by its absolute path.
    shutil.rmtree(work / "cache")
    assert load_run(work / "logs" / "rel").policy.n_actions == 40


def test_a_second_writer_of_a_run_fails_at_once(world, tmp_path, capsys):
    log_dir = tmp_path / "logs"
    run = copy_run(world, log_dir / "run")
    with run_lock(run):  # stands for another 'rlrec train' holding the run
        started = time.perf_counter()
        outcome = run_hostile(train_argv(world, log_dir, "run", "--resume"), capsys)
        assert time.perf_counter() - started < 5
        assert_clear_error(outcome, "another 'rlrec train' is writing this run", str(run))
        fresh = run_hostile(train_argv(world, log_dir, "run"), capsys)
        assert_clear_error(fresh, "another 'rlrec train'")
    # Released: the run trains on.
    done = run_hostile(train_argv(world, log_dir, "run", "--resume", "--timesteps", "192"), capsys)
    assert done.kind == "ok", done.err


def test_a_lock_of_a_killed_process_does_not_block(world, tmp_path, capsys):
    log_dir = tmp_path / "logs"
    run = copy_run(world, log_dir / "run")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from rlrec.agents.artifacts import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        blocked = run_hostile(train_argv(world, log_dir, "run", "--resume"), capsys)
        assert_clear_error(blocked, "another 'rlrec train'")
    finally:
        holder.kill()  # SIGKILL: the lock file stays, the lock does not
        holder.wait()
    assert (run / ".lock").exists()
    done = run_hostile(train_argv(world, log_dir, "run", "--resume", "--timesteps", "192"), capsys)
    assert done.kind == "ok", done.err


def test_truncated_tensorboard_files_make_report_warn(world, tmp_path, capsys):
    run = copy_run(world, tmp_path / "run")
    clean = run_hostile(["report", str(run)], capsys)
    assert clean.kind == "ok" and "warning" not in clean.err
    events = sorted((run / "tensorboard").rglob("events.out.tfevents.*"))
    _truncate(events[-1])
    outcome = run_hostile(["report", str(run), "--force"], capsys)
    assert outcome.kind == "ok"
    lines = outcome.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlrec: warning: ")
    assert events[-1].name in lines[0] and "truncated" in lines[0]


def rlrec_process(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from rlrec.cli import main; sys.exit(main())", *args]


@pytest.mark.slow  # four interpreters that import torch: about a minute on two cores
def test_kill_9_during_train_then_a_second_writer_and_resume(world, tmp_path):
    log_dir = tmp_path / "logs"
    run = log_dir / "k"
    first = subprocess.Popen(
        rlrec_process(*train_argv(world, log_dir, "k", "--timesteps", "1000000")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((run / "checkpoints").glob("*.json")) and time.monotonic() < deadline:
            assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
            time.sleep(0.1)
        for extra in (["--resume"], []):  # the same run name, while the first one trains
            second = subprocess.run(
                rlrec_process(*train_argv(world, log_dir, "k", *extra)),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert second.returncode == 2, second.stderr
            assert second.stderr.count("\n") == 1, second.stderr
            assert "another 'rlrec train' is writing this run" in second.stderr
    finally:
        first.kill()  # SIGKILL: no cleanup, the lock dies with the process
        first.wait()
    assert not (run / "policy.json").exists()
    # Leftovers of a writer killed mid-save, which the next run removes.
    (run / ".policy.json.tmp-abc").write_text("{")
    (run / "checkpoints" / ".step_9.safetensors.tmp-x").write_bytes(b"\0")
    (run / ".encoder.tmp1").mkdir()
    last = checkpoint_files(run / "checkpoints")[-1][0]
    resumed = subprocess.run(
        rlrec_process(
            *train_argv(world, log_dir, "k", "--resume", "--timesteps", str(last + 64), "--json")
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"] == last and summary["timesteps"] == last + 64
    assert json.loads((run / "policy.json").read_text())["step"] == last + 64
    leftovers = [p.name for p in [*run.iterdir(), *(run / "checkpoints").iterdir()]]
    assert [n for n in leftovers if n.startswith(".")] == [".lock"]


# --------------------------------------------------------------------------- conversion


def test_convert_run_makes_an_older_trusted_run_usable(world, tmp_path, capsys):
    run = copy_run(world, tmp_path / "run")
    (run / "policy.json").unlink()
    (run / "policy.safetensors").unlink()
    shutil.copy(world["legacy"], run / "policy.zip")
    assert_clear_error(run_hostile(["evaluate", str(run), "--episodes", "5"], capsys), "--trust")
    converted = run_hostile(["convert-run", str(run), "--trust", "--json"], capsys)
    assert converted.kind == "ok", converted.err
    assert json.loads(converted.out) == {"written": [str(run / "policy.json")]}
    again = run_hostile(["convert-run", str(run), "--trust"], capsys)
    assert_clear_error(again, "already exists", "--force")
    model = load_policy(run / "policy.json")
    reference = load_policy(world["base"] / "policy.json")
    for key, value in reference.policy.state_dict().items():
        assert model.policy.state_dict()[key].equal(value), key
    assert run_hostile(["evaluate", str(run), "--episodes", "5"], capsys).kind == "ok"


def test_convert_run_user_errors(world, tmp_path, capsys):
    run = copy_run(world, tmp_path / "run")
    nothing = run_hostile(["convert-run", str(run), "--trust"], capsys)
    assert_clear_error(nothing, "no policy.zip")
    (run / "policy.json").unlink()
    (run / "policy.zip").write_bytes(b"PK\x03\x04 not a zip")
    broken = run_hostile(["convert-run", str(run), "--trust"], capsys)
    assert_clear_error(broken, "policy.zip", "does not load")
    missing = run_hostile(["convert-run", str(tmp_path / "none"), "--trust"], capsys)
    assert_clear_error(missing, "not a run directory")
