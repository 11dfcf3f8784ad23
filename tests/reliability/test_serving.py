"""Hostile inputs of `rlrec export`, `rlrec serve` and `rlrec ope served`: one clear line each.

The HTTP side (malformed JSON, a 10,000-event history, wrong types, an empty history: 422
naming the field, never a 500) is tested against a real server in ``tests/serving``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
from pathlib import Path

import pytest

from tests.reliability.harness import assert_clear_error, run_hostile


@pytest.fixture(scope="module")
def world(serving_world: dict[str, Path]) -> dict[str, Path]:
    return serving_world


def test_export_hostile_runs(world, tmp_path, capsys):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    assert_clear_error(
        run_hostile(["export", str(not_a_run), "--out", str(tmp_path / "o")], capsys), "empty"
    )
    unfinished = tmp_path / "unfinished"
    shutil.copytree(world["run_a"], unfinished, ignore=shutil.ignore_patterns(".lock"))
    (unfinished / "policy.json").unlink()
    outcome = run_hostile(["export", str(unfinished), "--out", str(tmp_path / "o")], capsys)
    assert_clear_error(outcome, "policy.json", "--resume")
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    outcome = run_hostile(["export", str(world["run_a"]), "--out", str(a_file)], capsys)
    assert_clear_error(outcome, str(a_file), "is a file")
    assert a_file.read_text() == "mine"
    outcome = run_hostile(
        ["export", str(world["run_a"]), "--out", str(world["run_b"]), "--force"], capsys
    )
    assert_clear_error(outcome, "training run")  # another kind: refused even with --force
    long_version = ["--model-version", "v" * 500]
    outcome = run_hostile(
        ["export", str(world["run_a"]), "--out", str(tmp_path / "o2"), *long_version], capsys
    )
    assert_clear_error(outcome, "--model-version")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("no manifest", "not an export"),
        ("manifest garbage", "manifest.json: not JSON"),
        ("policy swapped", "policy.safetensors: does not match"),
        ("pickle in policy.json", "policy.json: does not match"),
        ("items missing", "items.parquet: listed in manifest.json but missing"),
        ("manifest escapes", "outside it"),
    ],
)
def test_serve_refuses_a_damaged_export_before_listening(damage, needle, world, tmp_path, capsys):
    export = tmp_path / "export"
    shutil.copytree(world["export_a"], export)
    manifest = export / "manifest.json"
    if damage == "no manifest":
        manifest.unlink()
    elif damage == "manifest garbage":
        manifest.write_bytes(b"\x00garbage")
    elif damage == "policy swapped":
        shutil.copyfile(world["export_b"] / "policy.safetensors", export / "policy.safetensors")
    elif damage == "pickle in policy.json":
        meta = json.loads((export / "policy.json").read_text())
        meta["policy_kwargs"]["net_arch"] = {":serialized:": "gASVAAAAAAAAAAB9lC4="}
        (export / "policy.json").write_text(json.dumps(meta))
    elif damage == "items missing":
        (export / "items.parquet").unlink()
    else:
        payload = json.loads(manifest.read_text())
        payload["files"]["../../etc/passwd"] = {"sha256": "0", "bytes": 1}
        manifest.write_text(json.dumps(payload))
    outcome = run_hostile(["serve", str(export), "--port", "1"], capsys)
    assert_clear_error(outcome, needle)


def test_serve_options_and_a_missing_extra(world, tmp_path, capsys, monkeypatch):
    export = str(world["export_a"])
    assert_clear_error(run_hostile(["serve", export, "--workers", "0"], capsys), "--workers")
    assert_clear_error(run_hostile(["serve", export, "--port", "70000"], capsys), "--port")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_clear_error(run_hostile(["serve", export, "--port", port], capsys), "in use")
    unwritable = tmp_path / "no" / "such" / "traffic.jsonl"
    outcome = run_hostile(["serve", export, "--log", str(unwritable), "--port", "1"], capsys)
    assert_clear_error(outcome, "--log", str(unwritable))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a)
    )
    outcome = run_hostile(["serve", export], capsys)
    assert_clear_error(outcome, "pip install 'rlrec[serve]'")


def _served(request_id: str, mode: str = "sample") -> str:
    record = {
        "type": "served",
        "request_id": request_id,
        "model_version": "v",
        "mode": mode,
        "k": 1,
        "exclude_seen": True,
        "history": [["1", 0.0, None]],
        "items": ["2"],
        "propensities": [0.5],
        "position_propensities": [0.5],
    }
    return json.dumps(record) + "\n"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such traffic log"),
        ("not json\n" + _served("r1"), ":1: not a JSON record"),
        (_served("r1") + '{"type": "served"}\n', ":2: request_id"),
        (_served("r1") + _served("r2").replace('"sample"', '"best"'), ":2: mode"),
        (_served("r1").replace("[0.5]}", "[0]}"), ":1: position_propensities"),
        (_served("r1") + '{"type": "feedback", "request_id": "r1", "reward": "a"}\n', "reward"),
        (_served("r1") + '{"type": "other", "request_id": "r1"}\n', ":2: type"),
        (_served("r1", "greedy"), "no sample-mode decision"),
        ("", "no sample-mode decision"),
    ],
)
def test_ope_served_hostile_logs(content, needle, world, tmp_path, capsys):
    log = tmp_path / "traffic.jsonl"
    if content is not None:
        log.write_text(content)
    argv = ["ope", "served", "--log", str(log), "--policy", str(world["export_a"])]
    assert_clear_error(run_hostile(argv, capsys), needle)


def test_ope_served_skips_a_torn_last_line_and_checks_its_options(world, tmp_path, capsys):
    log = tmp_path / "traffic.jsonl"
    log.write_text(_served("r1") + _served("r2")[:40])  # the writer died inside line 2
    argv = ["ope", "served", "--log", str(log), "--policy", str(world["export_a"])]
    outcome = run_hostile([*argv, "--json", "--n-bootstrap", "0"], capsys)
    assert outcome.kind == "ok" and json.loads(outcome.out)["counts"]["torn_lines"] == 1
    assert_clear_error(run_hostile([*argv, "--missing-reward", "lots"], capsys), "--missing")
    assert_clear_error(run_hostile([*argv, "--n-bootstrap", "-1"], capsys), "--n-bootstrap")
    not_export = tmp_path / "nothing"
    not_export.mkdir()
    argv[-1] = str(not_export)
    assert_clear_error(run_hostile(argv, capsys), "not an export")
