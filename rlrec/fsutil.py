"""Output directories: one writer at a time, never replaced by surprise, synced before rename.

Every verb that writes a whole directory (``data prepare``, ``data synth``, ``fit``,
``pretrain``, ``quickstart``, the env cache) goes through this module:

* :func:`output_lock` takes an advisory ``fcntl.flock`` lock on ``.NAME.lock`` beside the
  output, so a second process writing the same output fails at once with a one-line message.
  The kernel drops the lock when the process dies, so a ``kill -9`` never leaves a stale lock.
  Holding the lock, it removes the ``.NAME.tmp-*`` / ``.spill-*`` / ``.synth-*`` / ``.old-*``
  folders that a killed writer of the same output left behind.
* :func:`check_output` refuses to replace an existing output unless it is an rlrec artifact of
  the same kind *and* the caller passed ``force``; anything else (a user's folder, another
  kind) is refused even with ``force``.
* :func:`atomic_directory` builds the new content in a temporary folder beside the output,
  marks it with :data:`MARKER_FILE`, fsyncs every file and folder and renames it into place.

This module sits below every layer (like :mod:`rlrec.errors`): it imports nothing of rlrec's
own but the error type, so the file names that identify each kind are spelled out here.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlrec.errors import UserError

__all__ = [
    "ARTIFACT_KINDS",
    "MARKER_FILE",
    "STALE_PREFIXES",
    "ArtifactKind",
    "artifact_kind",
    "atomic_directory",
    "check_output",
    "fsync_tree",
    "make_parent",
    "output_lock",
    "remove_stale",
    "write_json_atomic",
    "write_marker",
]

MARKER_FILE = ".rlrec-artifact.json"
"""Written into every directory :func:`atomic_directory` completes: ``{"kind": ...}``."""

STALE_PREFIXES = ("tmp", "spill", "synth", "old")
"""Temporary siblings ``.NAME.<prefix>-*`` of an output that only its writer uses."""


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of output directory.

    Attributes:
        label: The kind with its article, for messages (``a PreparedDataset``).
        signatures: For outputs written before :data:`MARKER_FILE` existed: each entry is a
            set of names that, all present, identify the kind.
    """

    label: str
    signatures: tuple[tuple[str, ...], ...]


ARTIFACT_KINDS: dict[str, ArtifactKind] = {
    "dataset": ArtifactKind("a PreparedDataset", (("meta.json", "events.parquet"),)),
    "sim": ArtifactKind("a SimModel", (("sim_model.json", "arrays.npz"),)),
    "encoder": ArtifactKind("an encoder checkpoint", (("encoder.json", "model.safetensors"),)),
    "run": ArtifactKind("a training run", (("config.yaml", "tensorboard"),)),
    "churn": ArtifactKind("a churn output", (("churn.json", "predictions.csv"),)),
    "analysis": ArtifactKind(
        "an analysis", (("summary.json", "trends.csv", "drift_distance.csv"),)
    ),
    "sweep": ArtifactKind("a sweep", (("sweep.json", "trials"),)),
    "quickstart": ArtifactKind(
        "a quickstart output", (("summary.json", "env.yaml"), ("env.yaml", "data", "sim"))
    ),
    "export": ArtifactKind("a serving export", (("manifest.json", "serving.json"),)),
}
"""Kind name -> label and legacy signatures (the file names of ``rlrec.data.dataset``,
``rlrec.models.sim_model``, ``rlrec.models.checkpoint``, a run, ``rlrec sweep``,
``rlrec quickstart``, ``rlrec analyze`` and ``rlrec export``)."""

# Lock path -> (file descriptor, depth): a process that already holds an output's lock (the
# quickstart around its stages, generate_dataset around prepare) takes it again for free;
# a second flock on a new descriptor would fail against itself.
_HELD: dict[str, tuple[int, int]] = {}


def artifact_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of rlrec output at ``path``, or None (missing, a file, or not rlrec's)."""
    root = Path(path)
    if not root.is_dir():
        return None
    marker = root / MARKER_FILE
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        return kind if kind in ARTIFACT_KINDS else None
    for name, spec in ARTIFACT_KINDS.items():
        if any(all((root / f).exists() for f in names) for names in spec.signatures):
            return name
    return None


def check_output(out: str | os.PathLike[str], kind: str, force: bool) -> None:
    """Refuse an output path whose replacement would lose something.

    Args:
        out: The output directory.
        kind: A key of :data:`ARTIFACT_KINDS`.
        force: Whether the user allowed replacing an earlier output of the same kind.

    Raises:
        UserError: If ``out`` is a file; holds an output of the same kind and ``force`` is
            false; or is a non-empty folder that is not an rlrec output of this kind.
    """
    path = Path(out)
    label = ARTIFACT_KINDS[kind].label
    if not path.exists():
        return
    if not path.is_dir():
        raise UserError(f"{path}: is a file; {label} is written as a directory")
    if not any(path.iterdir()):
        return
    found = artifact_kind(path)
    if found == kind:
        if force:
            return
        raise UserError(
            f"{path}: already holds {label}; pass --force to replace it, or choose another --out"
        )
    what = (
        f"holds {ARTIFACT_KINDS[found].label}" if found else "is a folder that rlrec did not write"
    )
    raise UserError(
        f"{path}: {what}, not {label}; rlrec replaces only its own outputs of the same kind, "
        "even with --force: choose another --out or remove it first"
    )


@contextmanager
def output_lock(out: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the advisory lock of output ``out`` (``.NAME.lock`` beside it) for the block.

    Fails at once (no waiting) when another process holds it. On the first acquisition in
    this process, the temporary folders of killed writers of ``out`` are removed. The lock
    file is deleted on release.

    Raises:
        UserError: If another process is writing ``out``, or its folder cannot be written.
    """
    final = Path(out)
    make_parent(final)
    lock = final.parent / f".{final.name}.lock"
    key = os.path.realpath(lock)
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield
        finally:
            _HELD[key] = (fd, depth)
        return
    fd = _acquire(lock, final)
    _HELD[key] = (fd, 1)
    try:
        remove_stale(final)
        yield
    finally:
        del _HELD[key]
        # Unlink while still holding the lock, then close (which releases it): a process
        # that opened the old file meanwhile sees it unlinked and retries (see _acquire).
        lock.unlink(missing_ok=True)
        os.close(fd)


def make_parent(out: str | os.PathLike[str]) -> None:
    """Create the folder that will hold ``out``.

    Raises:
        UserError: Naming the file in the way, or why the folder cannot be created.
    """
    parent = Path(out).parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise UserError(f"{blocker}: is a file, so {out} cannot be created; choose another path")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"{parent}: cannot create it ({exc.strerror}); choose another path"
        ) from None


def _acquire(lock: Path, final: Path) -> int:
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(
                f"{final}: cannot create the lock file {lock} ({exc.strerror}); "
                "choose another --out"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise UserError(
                    f"{final}: another rlrec process is writing it (it holds {lock}); "
                    "wait for it to finish or choose another --out"
                ) from None
            raise UserError(f"{final}: cannot lock {lock} ({exc.strerror})") from None
        try:
            on_disk = os.stat(lock)
        except FileNotFoundError:
            on_disk = None
        mine = os.fstat(fd)
        if on_disk is not None and (on_disk.st_ino, on_disk.st_dev) == (mine.st_ino, mine.st_dev):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious user
            return fd
        # The holder released and unlinked the file between our open and our flock.
        os.close(fd)


def remove_stale(out: str | os.PathLike[str]) -> list[Path]:
    """Remove ``.NAME.{tmp,spill,synth,old}-*`` beside ``out``; call only holding its lock.

    A writer killed between moving the old output aside (``.NAME.old-PID``) and renaming the
    new one into place leaves no ``out``: the old output is renamed back first.

    Returns:
        The paths removed.
    """
    final = Path(out)
    if not final.exists() and not final.is_symlink():
        aside = sorted(final.parent.glob(f".{glob.escape(final.name)}.old-*"))
        if aside:
            os.replace(aside[-1], final)
    removed = []
    for prefix in STALE_PREFIXES:
        pattern = f".{glob.escape(final.name)}.{prefix}-*"
        for path in final.parent.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """Fsync every file and folder under ``root`` (and ``root``), so a rename publishes data."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            _fsync_path(path, os.O_RDONLY)
        _fsync_path(dirpath, os.O_RDONLY | os.O_DIRECTORY)


def _fsync_path(path: str | os.PathLike[str], flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_directory(out: str | os.PathLike[str], kind: str, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``out`` and move it into place on success.

    Holds ``out``'s lock throughout (:func:`output_lock`) and checks ``out`` first
    (:func:`check_output`). On success the directory gets :data:`MARKER_FILE`, everything in
    it is fsynced, and it is renamed over ``out``; on an exception it is removed and ``out``
    is left as it was. An existing ``out`` is replaced only after the new content is complete.

    Args:
        out: The output directory.
        kind: A key of :data:`ARTIFACT_KINDS`: what the directory will hold.
        force: Replace an existing output of the same kind.

    Raises:
        UserError: See :func:`check_output` and :func:`output_lock`.
    """
    final = Path(out)
    with output_lock(final):
        check_output(final, kind, force)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        try:
            yield tmp
            write_marker(tmp, kind)
            fsync_tree(tmp)
            if final.exists():
                # Rename the old one aside first so that there is never a moment without a
                # complete directory at ``final`` being half deleted.
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync_path(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        except BaseException:
            if old.exists() and not final.exists():
                os.replace(old, final)
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def write_marker(directory: str | os.PathLike[str], kind: str) -> None:
    """Mark ``directory`` as an rlrec output of ``kind`` (:data:`MARKER_FILE`)."""
    (Path(directory) / MARKER_FILE).write_text(json.dumps({"kind": kind, "writer": "rlrec"}) + "\n")


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file, an fsync and a rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
