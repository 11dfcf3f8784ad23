"""Outputs: nothing replaced without --force, one writer at a time, killed runs leave no mess.

The tables run each verb that writes a directory (``data prepare``, ``data synth``, ``fit``,
``pretrain``, ``quickstart``, ``report``) against every kind of existing ``--out``: an
earlier output of its own kind (refused without ``--force``, replaced with it), an output of
another kind, a user's folder or a file (refused even with ``--force``), and an output that
another process is writing (refused at once). Each refusal must leave the existing output
byte for byte as it was. The subprocess tests ``kill -9`` a running ``prepare`` and
``pretrain`` and race two ``prepare`` processes into one ``--out``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rlrec.cli import main
from rlrec.data.dataset import load_dataset, write_dataset
from rlrec.errors import UserError
from rlrec.fsutil import (
    ARTIFACT_KINDS,
    MARKER_FILE,
    artifact_kind,
    atomic_directory,
    output_lock,
    write_marker,
)
from tests.reliability.harness import assert_clear_error, run_hostile

TINY_PRETRAIN = [
    "--d-model",
    "16",
    "--layers",
    "1",
    "--heads",
    "1",
    "--max-len",
    "8",
    "--epochs",
    "1",
    "--finetune-epochs",
    "0",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--no-progress",
]
# Run the CLI in a child process exactly as the console script does.
CLI = [sys.executable, "-c", "import sys; from rlrec.cli import main; sys.exit(main())"]


def taobao_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """A Taobao-format log (user, item, category, behavior, seconds) of ``rows`` rows."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, max(rows // 40, 2) + 1, rows)
    items = rng.integers(1, 400, rows)
    behavior = rng.choice(np.array(["pv", "pv", "pv", "cart", "fav", "buy"]), rows)
    stamps = 1_511_000_000 + np.sort(rng.integers(0, 9 * 86_400, rows))
    lines = [
        f"{u},{i},{i % 17},{b},{t}"
        for u, i, b, t in zip(users, items, behavior, stamps, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def tree_state(path: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``path`` (or of ``path`` itself)."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def leftovers(out: Path) -> list[str]:
    """Hidden siblings of ``out`` that belong to it (temp, spill, old folders, lock file)."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


@dataclass(frozen=True)
class World:
    """Existing outputs of every kind, built once for the module; tests copy them."""

    root: Path
    csv: Path
    big_csv: Path
    outputs: dict[str, Path]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("outputs")
    csv = taobao_csv(root / "log.csv", 3000)
    # Big enough that prepare runs for a moment after its temporary folders appear.
    big_csv = taobao_csv(root / "big.csv", 400_000, seed=1)
    ds, sim, enc, qs = root / "ds", root / "sim", root / "enc", root / "qs"
    assert main(["data", "synth", "--users", "30", "--out", str(ds)]) == 0
    assert main(["fit", str(ds), "--out", str(sim)]) == 0
    assert main(["pretrain", str(ds), "--out", str(enc), *TINY_PRETRAIN]) == 0
    # A stopped quickstart after the data stage, holding a trained policy from elsewhere:
    # what must never be replaced without --force.
    qs.mkdir()
    write_marker(qs, "quickstart")
    (qs / "env.yaml").write_text("name: synthetic\n")
    shutil.copytree(ds, qs / "data")
    (qs / "run").mkdir()
    (qs / "run" / "policy.zip").write_bytes(b"a trained policy, hours of work")
    mine = root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own folder\n")
    a_file = root / "file.txt"
    a_file.write_text("a file\n")
    outputs = {"dataset": ds, "sim": sim, "encoder": enc, "quickstart": qs}
    outputs |= {"folder": mine, "file": a_file}
    return World(root=root, csv=csv, big_csv=big_csv, outputs=outputs)


def _argv(verb: str, world: World, out: Path) -> list[str]:
    ds = str(world.outputs["dataset"])
    return {
        "prepare": ["data", "prepare", "--preset", "taobao", "--input", str(world.csv)],
        "synth": ["data", "synth", "--users", "20", "--seed", "1"],
        "fit": ["fit", ds],
        "pretrain": ["pretrain", ds, *TINY_PRETRAIN],
        "quickstart": ["quickstart", "--tiny"],
    }[verb] + ["--out", str(out)]


OWN_KIND = {
    "prepare": "dataset",
    "synth": "dataset",
    "fit": "sim",
    "pretrain": "encoder",
    "quickstart": "quickstart",
}


def _existing(world: World, kind: str, tmp_path: Path) -> Path:
    """A private copy of the module's existing output of ``kind``."""
    source = world.outputs[kind]
    target = tmp_path / f"existing-{kind}"
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)
    return target


# (verb, existing kind, --force?, fragments of the one-line error)
REFUSED: list[tuple[str, str, bool, tuple[str, ...]]] = []
for _verb, _own in OWN_KIND.items():
    REFUSED.append((_verb, _own, False, ("already holds", "--force")))
    for _other in ("dataset", "sim", "encoder", "quickstart", "folder"):
        if _other != _own:
            REFUSED.append((_verb, _other, True, ("even with --force",)))
    REFUSED.append(
        (_verb, "file", True, ("not a directory",) if _verb == "quickstart" else ("is a file",))
    )


@pytest.mark.parametrize(
    ("verb", "kind", "force", "needles"),
    REFUSED,
    ids=[f"{v}-over-{k}{'-force' if f else ''}" for v, k, f, _ in REFUSED],
)
def test_an_existing_output_is_refused_and_left_untouched(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    verb: str,
    kind: str,
    force: bool,
    needles: tuple[str, ...],
) -> None:
    out = _existing(world, kind, tmp_path)
    before = tree_state(out)
    argv = _argv(verb, world, out) + (["--force"] if force else [])
    started = time.perf_counter()
    outcome = run_hostile(argv, capsys)
    assert_clear_error(outcome, str(out), *needles)
    assert time.perf_counter() - started < 30  # refused before the work, not after it
    assert tree_state(out) == before
    assert leftovers(out) == []


@pytest.mark.parametrize("verb", ["prepare", "synth", "fit", "pretrain"])
def test_force_replaces_an_output_of_the_same_kind(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    out = _existing(world, OWN_KIND[verb], tmp_path)
    (out / "stale-from-the-old-output.txt").write_text("old\n")
    outcome = run_hostile([*_argv(verb, world, out), "--force"], capsys)
    assert outcome.code == 0, outcome.err
    assert not (out / "stale-from-the-old-output.txt").exists()  # a new directory, not a merge
    assert artifact_kind(out) == OWN_KIND[verb]
    assert json.loads((out / MARKER_FILE).read_text())["kind"] == OWN_KIND[verb]
    assert leftovers(out) == []
    if verb in ("prepare", "synth"):
        meta = load_dataset(out).meta
        # synth --seed 1 --users 20 and the Taobao log both differ from the 30-user original
        assert meta["vocab"]["users"] != 30


def test_force_with_bad_input_keeps_the_old_output(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _existing(world, "dataset", tmp_path)
    before = tree_state(out)
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")  # three columns where the Taobao preset expects five
    argv = ["data", "prepare", "--preset", "taobao", "--input", str(bad), "--out", str(out)]
    assert_clear_error(run_hostile([*argv, "--force"], capsys), "expects 5")
    assert tree_state(out) == before
    assert leftovers(out) == []


def test_quickstart_force_removes_the_earlier_run_but_not_the_users_files(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlrec.workflows import quickstart as pipeline

    out = _existing(world, "quickstart", tmp_path)
    (out / "my-notes.txt").write_text("mine\n")
    seen: list[list[str]] = []

    def first_stage_fails(root: Path, cfg: object, progress: object) -> None:
        # What the stages find when they start: the earlier run must already be gone.
        seen.append(sorted(p.name for p in root.iterdir()))
        raise UserError("stopped after the claim")

    monkeypatch.setattr(pipeline, "_run_quickstart", first_stage_fails)
    with pytest.raises(UserError, match="already holds a quickstart output"):
        pipeline.run_quickstart(out, force=False)
    assert (out / "run" / "policy.zip").is_file() and seen == []
    with pytest.raises(UserError, match="stopped after the claim"):
        pipeline.run_quickstart(out, force=True)
    assert seen == [sorted([MARKER_FILE, "my-notes.txt"])]
    assert not (out / "run").exists() and (out / "my-notes.txt").is_file()
    assert artifact_kind(out) == "quickstart"  # a stopped run is still recognized as one
    assert leftovers(out) == []


def test_report_is_not_replaced_without_force(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "q"
    shutil.copytree(world.outputs["sim"], run / "sim")
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.html").write_text("<p>the report I annotated</p>")
    before = tree_state(out)
    argv = ["report", str(run), "--out", str(out)]
    assert_clear_error(run_hostile(argv, capsys), str(out / "report.html"), "--force")
    assert tree_state(out) == before
    assert run_hostile([*argv, "--force"], capsys).code == 0
    assert "annotated" not in (out / "report.html").read_text()
    # A folder of the user's plots where the report would write its own is refused too.
    mine = tmp_path / "figures"
    (mine / "plots").mkdir(parents=True)
    (mine / "plots" / "migration.png").write_bytes(b"my own figure")
    before = tree_state(mine)
    outcome = run_hostile(["report", str(run), "--out", str(mine)], capsys)
    assert_clear_error(outcome, str(mine / "plots"), "--force")
    assert tree_state(mine) == before


def test_library_calls_refuse_like_the_cli(world: World, tmp_path: Path) -> None:
    from rlrec.data.prepare import prepare
    from rlrec.models.sim_model import load_sim_model
    from rlrec.models.synthetic import SyntheticConfig, generate_dataset

    ds = _existing(world, "dataset", tmp_path)
    sim = _existing(world, "sim", tmp_path)
    before = tree_state(ds), tree_state(sim)
    with pytest.raises(UserError, match="already holds a PreparedDataset; pass --force"):
        prepare([world.csv], "taobao", ds)
    with pytest.raises(UserError, match="already holds a PreparedDataset; pass --force"):
        generate_dataset(ds, SyntheticConfig(n_users=5))
    with pytest.raises(UserError, match="already holds a SimModel; pass --force"):
        load_sim_model(sim).save(sim)
    with pytest.raises(UserError, match="holds a SimModel, not a PreparedDataset"):
        prepare([world.csv], "taobao", sim, force=True)
    loaded = load_dataset(ds)
    tables = (loaded.events, loaded.users, loaded.items, loaded.categories, {"source": "test"})
    with pytest.raises(UserError, match="already holds a PreparedDataset; pass --force"):
        write_dataset(ds, *tables)
    assert (tree_state(ds), tree_state(sim)) == before
    write_dataset(ds, *tables, force=True)
    assert load_dataset(ds).meta["source"] == "test"
    load_sim_model(sim).save(sim, force=True)
    assert artifact_kind(sim) == "sim"


# A file where a folder of the output's path should be: the path, named, is the whole error.
BLOCKED: list[list[str]] = [
    ["env", "build", "synthetic", "--cache", "{file}"],
    ["env", "build", "synthetic", "--cache", "{file}/cache"],
    ["data", "synth", "--users", "5", "--out", "{file}/ds"],
    ["data", "prepare", "--preset", "taobao", "--input", "{csv}", "--out", "{file}/x/ds"],
    ["fit", "{ds}", "--out", "{file}/sim"],
    ["pretrain", "{ds}", "--out", "{file}/enc", *TINY_PRETRAIN],
]


@pytest.mark.parametrize(
    "template", BLOCKED, ids=[" ".join(t[:2]) + f"-{i}" for i, t in enumerate(BLOCKED)]
)
def test_a_file_in_the_way_of_an_output_is_one_clear_line(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], template: list[str]
) -> None:
    blocker = _existing(world, "file", tmp_path)
    values = {"file": str(blocker), "csv": str(world.csv), "ds": str(world.outputs["dataset"])}
    argv = [part.format(**values) for part in template]
    # Each writer names the file in the way (its own wording: "F: is a file" or "... F is a file").
    assert_clear_error(run_hostile(argv, capsys), str(blocker), "is a file")
    assert tree_state(blocker) == {".": hashlib.sha256(b"a file\n").hexdigest()}


# ---------------------------------------------------------------- locks

HOLD = textwrap.dedent(
    """
    import sys, time
    from rlrec.fsutil import output_lock
    with output_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
    """
)


@contextmanager
def held_by_another_process(out: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``out``'s lock for the block (killed at the end)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("verb", sorted(OWN_KIND))
def test_a_second_writer_fails_at_once_and_touches_nothing(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    out = tmp_path / "out"
    with held_by_another_process(out):
        # A temporary folder of the live writer: the refused one must not "clean" it.
        live = tmp_path / ".out.tmp-live"
        live.mkdir()
        started = time.perf_counter()
        outcome = run_hostile(_argv(verb, world, out), capsys)
        assert time.perf_counter() - started < 30
        assert_clear_error(outcome, str(out), "another rlrec process is writing it")
        assert not out.exists() and live.is_dir()


def test_the_lock_is_reentrant_in_one_process_and_removed_on_release(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out):
        assert leftovers(out) == [".out.lock"]
        with atomic_directory(out, "sim") as tmp:  # the same process: no conflict
            (tmp / "sim_model.json").write_text("{}")
        assert leftovers(out) == [".out.lock"]
    assert leftovers(out) == []
    assert artifact_kind(out) == "sim"


def test_a_killed_holder_leaves_no_lock_behind(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with held_by_another_process(out) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert leftovers(out) == [".out.lock"]  # the file stays, the kernel dropped the lock
        with output_lock(out):
            pass
    assert leftovers(out) == []


def test_taking_the_lock_removes_only_this_outputs_stale_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()  # in place, so ".out.old-*" is a leftover and not the only copy
    stale = [".out.tmp-a1", ".out.spill-b2", ".out.synth-c3", ".out.old-123"]
    kept = [".other.tmp-d4", ".out2.tmp-e5", "out.tmp-f6", ".out.tmpx"]
    for name in stale + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "part.parquet").write_bytes(b"half")
    with output_lock(out):
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".out.lock", "out", *kept])


def test_an_output_moved_aside_by_a_killed_writer_is_restored(world: World, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    # Killed between "old output aside" and "new output in place": only the old one exists.
    shutil.copytree(world.outputs["dataset"], tmp_path / ".ds.old-4242")
    (tmp_path / ".ds.tmp-abc").mkdir()
    before = tree_state(tmp_path / ".ds.old-4242")
    with output_lock(out):
        assert tree_state(out) == before
    assert leftovers(out) == []
    assert load_dataset(out).meta["vocab"]["users"] == 30


# ---------------------------------------------------------------- kinds and fsync


def test_artifact_kinds_match_the_file_names_their_writers_use() -> None:
    from rlrec.data.dataset import META_FILE
    from rlrec.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE
    from rlrec.models.sim_model import ARRAYS_FILE, PARAMS_FILE
    from rlrec.workflows.quickstart import ENV_FILE, SUMMARY_FILE

    signatures = {
        k: {n for names in v.signatures for n in names} for k, v in ARTIFACT_KINDS.items()
    }
    assert {META_FILE, "events.parquet"} == signatures["dataset"]
    assert {PARAMS_FILE, ARRAYS_FILE} == signatures["sim"]
    assert {CONFIG_FILE, WEIGHTS_FILE} == signatures["encoder"]
    assert {ENV_FILE, SUMMARY_FILE} <= signatures["quickstart"]


def test_outputs_without_a_marker_are_recognized_by_their_files(
    world: World, tmp_path: Path
) -> None:
    for kind in ("dataset", "sim", "encoder"):
        legacy = _existing(world, kind, tmp_path)
        (legacy / MARKER_FILE).unlink()  # as an rlrec before the marker wrote it
        assert artifact_kind(legacy) == kind
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / MARKER_FILE).write_text('{"kind": "somebody else"}')
    assert artifact_kind(odd) is None
    (odd / MARKER_FILE).write_text("not json")
    assert artifact_kind(odd) is None


def test_files_and_folders_are_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ds"
    published: list[bool] = []  # per fsync: was the output already in place?
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        published.append(out.exists())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    assert main(["data", "synth", "--users", "10", "--out", str(out)]) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    # Every file and the folder itself before the rename; the parent folder after it.
    assert published.count(False) >= len(files) + 1
    assert published[-1] is True


# ---------------------------------------------------------------- killed and racing processes


def _start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(folder: Path, pattern: str, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(folder.glob(pattern)):
            return
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before {pattern} appeared: {proc.communicate()}")
        time.sleep(0.002)
    proc.kill()
    pytest.fail(f"{pattern} did not appear in {timeout} s")


def test_kill_9_during_prepare_keeps_the_old_dataset_and_the_next_run_cleans_up(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _existing(world, "dataset", tmp_path)
    before = tree_state(out)
    argv = ["data", "prepare", "--preset", "taobao", "--out", str(out), "--force", "--input"]
    proc = _start([*argv, str(world.big_csv)])
    _wait_for(tmp_path, f".{out.name}.tmp-*", proc)  # reading has begun
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert tree_state(out) == before
    assert load_dataset(out).meta["vocab"]["users"] == 30
    stale = [name for name in leftovers(out) if not name.endswith(".lock")]
    assert any(".tmp-" in name for name in stale) and any(".spill-" in name for name in stale)
    outcome = run_hostile([*argv, str(world.csv)], capsys)
    assert outcome.code == 0, outcome.err
    assert leftovers(out) == []


def test_kill_9_during_pretrain_keeps_the_old_encoder_and_the_next_run_cleans_up(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _existing(world, "encoder", tmp_path)
    before = tree_state(out)
    long_run = [*TINY_PRETRAIN]
    long_run[long_run.index("--epochs") + 1] = "500"
    argv = ["pretrain", str(world.outputs["dataset"]), "--out", str(out), "--force"]
    proc = _start([*argv, *long_run])
    _wait_for(tmp_path, f".{out.name}.tmp-*/tensorboard/*", proc)  # training has begun
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert tree_state(out) == before
    assert any(".tmp-" in name for name in leftovers(out))
    outcome = run_hostile([*argv, *TINY_PRETRAIN], capsys)
    assert outcome.code == 0, outcome.err
    assert leftovers(out) == []
    assert artifact_kind(out) == "encoder"


def test_two_concurrent_prepares_into_one_out_one_wins_whole(world: World, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    argv = ["data", "prepare", "--preset", "taobao", "--input", str(world.big_csv)]
    argv += ["--out", str(out)]
    first = _start(argv)
    _wait_for(tmp_path, ".ds.spill-*", first)  # it holds the lock
    first.send_signal(signal.SIGSTOP)  # and stays in the middle of its work
    try:
        second = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr.startswith("rlrec: error: ") and second.stderr.count("\n") == 1
    assert f"{out}: another rlrec process is writing it" in second.stderr
    assert load_dataset(out).meta["rows"]["read"] == 400_000
    assert leftovers(out) == []
