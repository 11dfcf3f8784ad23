"""Transfer to downstream tasks (rlrec.models.transfer) and the user-history windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rlrec.cli import main
from rlrec.data.dataset import PreparedDataset, load_dataset, write_dataset
from rlrec.models.encoder import EncoderConfig
from rlrec.models.pretrain import PretrainConfig, train_encoder
from rlrec.models.sequences import (
    IGNORE,
    SESSION_STARTS,
    collapse_repeats,
    history_windows,
    user_steps,
)
from rlrec.models.transfer import (
    FinetuneConfig,
    encoder_return_scores,
    finetune,
    roc_auc,
    task_labels,
    transfer_comparison,
    transfer_figures,
)

DAY = 86_400_000
TINY = EncoderConfig(d_model=16, n_layers=1, n_heads=2, max_len=10, dropout=0.0)


def make_return_dataset(out: Path, n_users: int = 40, seed: int = 0) -> Path:
    """Users of two kinds over 12 categories: what they browse predicts whether they return.

    Loyal users (even ids) browse categories 0..5 and come back within two days; casual ones
    browse 6..11 and come back after 10 to 20 days. Each session walks to the next category
    in the user's cycle, so the next new category is learnable; splits by time, 70/15/15.
    """
    rng = np.random.default_rng(seed)
    n_categories, per_category = 12, 4
    rows = []
    session = 0
    for user in range(n_users):
        loyal = user % 2 == 0
        base = 0 if loyal else 6
        c = int(rng.integers(6))
        # Loyal users start anywhere in 70 days, casual ones early (their gaps are long), so
        # every split holds both kinds.
        t = int(rng.uniform(0, 70 if loyal else 10) * DAY)
        for _ in range(int(rng.integers(6, 10) if loyal else rng.integers(3, 6))):
            for step in range(int(rng.integers(2, 7))):
                if rng.random() < 0.4:
                    c = (c + 1) % 6
                item = (base + c) * per_category + int(rng.integers(per_category))
                t += 60_000
                rows.append((user, session, step, item, base + c, 0, t))
            session += 1
            t += int(rng.uniform(0.2, 1.5) * DAY if loyal else rng.uniform(10, 20) * DAY)
    events = pd.DataFrame(
        rows, columns=["user", "session", "step", "item", "category", "event", "timestamp"]
    )
    starts = events.groupby("session")["timestamp"].min()
    cut = starts.quantile([0.7, 0.85]).to_numpy()
    split = np.where(starts <= cut[0], 0, np.where(starts <= cut[1], 1, 2))
    events["split"] = events["session"].map(dict(zip(starts.index, split, strict=True)))
    n_items = n_categories * per_category
    items = pd.DataFrame(
        {
            "item": np.arange(n_items),
            "raw_id": [f"i{i}" for i in range(n_items)],
            "category": np.arange(n_items) // per_category,
            "count": np.bincount(events["item"], minlength=n_items),
        }
    )
    categories = pd.DataFrame(
        {
            "category": np.arange(n_categories),
            "raw_id": [f"c{c}" for c in range(n_categories)],
            "count": np.bincount(events["category"], minlength=n_categories),
        }
    )
    users = pd.DataFrame({"user": np.arange(n_users), "raw_id": [f"u{u}" for u in range(n_users)]})
    return write_dataset(out, events, users, items, categories, {"source": "test-return"})


@pytest.fixture(scope="module")
def return_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_return_dataset(tmp_path_factory.mktemp("ret") / "ds")


@pytest.fixture(scope="module")
def return_ds(return_dir: Path) -> PreparedDataset:
    return load_dataset(return_dir)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory, return_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("enc") / "enc"
    code = main(
        [
            "pretrain", str(return_dir), "--out", str(out), "--d-model", "16", "--layers", "1",
            "--max-len", "10", "--epochs", "1", "--finetune-epochs", "2", "--device", "cpu",
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    return out


def test_user_streams_hold_each_users_sessions_in_time_order(return_ds: PreparedDataset) -> None:
    streams = user_steps(return_ds, "test")
    test_steps = collapse_repeats(return_ds.sessions("test"))
    # Same targets as the session protocol: every step t >= 1 of every test session.
    assert streams.n_targets == test_steps.n_targets
    for u in range(streams.n_sessions):
        lo, hi = int(streams.offsets[u]), int(streams.offsets[u + 1])
        assert np.all(np.diff(streams.timestamps[lo:hi]) >= 0)  # time order, splits included
        assert streams.starts[lo]
        # Context (earlier splits) comes first, then the test sessions.
        in_split = streams.session[lo:hi] >= 0
        assert not np.any(np.diff(in_split.astype(int)) < 0)
    assert (~streams.starts & (streams.session >= 0) == streams.target).all()


def test_history_windows_show_each_target_the_last_steps_of_its_user(
    return_ds: PreparedDataset,
) -> None:
    streams = user_steps(return_ds, "test")
    max_len = 6
    w = history_windows(streams, max_len)
    seen = 0
    for u in range(streams.n_sessions):
        lo, hi = int(streams.offsets[u]), int(streams.offsets[u + 1])
        for t in np.flatnonzero(streams.target[lo:hi]) + lo:
            start = max(lo, t - max_len)
            want = streams.items[start:t] + 1
            rows, cols = np.nonzero(w.target_items == streams.items[t])
            # Some row holds this target at a column whose visible prefix is exactly `want`.
            ok = False
            for r, c in zip(rows, cols, strict=True):
                prefix = w.items[r, : c + 1]
                prefix = prefix[prefix != 0]
                if len(prefix) == len(want) and np.array_equal(prefix[-len(want) :], want):
                    assert w.sessions is not None and w.sessions[r, c + 1 - len(want)] == (
                        SESSION_STARTS
                    )
                    ok = True
            assert ok
            seen += 1
    assert seen == w.n_targets == streams.n_targets


@pytest.mark.parametrize("stride", [None, 1, 2, 5, 6])
def test_training_windows_mark_each_target_once_with_the_history_the_stride_promises(
    return_ds: PreparedDataset, stride: int | None
) -> None:
    streams = user_steps(return_ds, "train")
    max_len = 6
    w = history_windows(streams, max_len, every_target=True, stride=stride)
    # Every target exactly once: the multiset of marked targets is the split's.
    marked = np.sort(w.target_items[w.target_items != IGNORE])
    want = np.sort(streams.items[streams.target])
    assert np.array_equal(marked, want) and w.n_targets == streams.n_targets
    # Each target sees every step of its stream before it in the stream's first window, and
    # at least the last ``max_len - stride`` steps before it in a later one.
    step = max_len if stride is None else stride
    real = w.items != 0  # (W, L)
    for u in range(streams.n_sessions):
        lo, hi = int(streams.offsets[u]), int(streams.offsets[u + 1])
        for t in np.flatnonzero(streams.target[lo:hi]) + lo:
            need = t - lo if t - lo <= max_len else max(max_len - step, 1)
            want = streams.items[t - need : t] + 1
            rows, cols = np.nonzero(w.target_items == streams.items[t])
            assert any(
                real[r, : c + 1].sum() >= need
                and np.array_equal(w.items[r, c + 1 - need : c + 1], want)
                for r, c in zip(rows, cols, strict=True)
            )


def test_next_new_category_labels_match_a_brute_force(return_ds: PreparedDataset) -> None:
    streams = user_steps(return_ds, "valid")
    labels = task_labels(return_ds, "valid", streams, "next_new_category", 7.0)
    for u in range(streams.n_sessions):
        lo, hi = int(streams.offsets[u]), int(streams.offsets[u + 1])
        cats = streams.categories[lo:hi]
        for j in range(hi - lo):
            want = IGNORE
            if streams.session[lo + j] >= 0:
                seen = set(cats[: j + 1].tolist())
                later = [c for c in cats[j + 1 :].tolist() if c not in seen]
                want = later[0] if later else IGNORE
            assert labels[lo + j] == want


def test_return_labels_match_a_brute_force(return_ds: PreparedDataset) -> None:
    horizon = 5.0
    streams = user_steps(return_ds, "train")
    labels = task_labels(return_ds, "train", streams, "return", horizon)
    events = return_ds.events
    span = events.groupby("session").agg(
        user=("user", "first"), start=("timestamp", "min"), end=("timestamp", "max")
    )
    log_end = events["timestamp"].max()
    sessions = return_ds.sessions("train")
    ids = return_ds.split_events("train")["session"].to_numpy()[sessions.offsets[:-1]]
    expected = []
    for sid in ids:
        row = span.loc[sid]
        later = span[(span["user"] == row["user"]) & (span["start"] > row["end"])]
        gap = (later["start"].min() - row["end"]) if len(later) else np.inf
        if gap <= horizon * DAY:
            expected.append(1)
        elif row["end"] + horizon * DAY <= log_end:
            expected.append(0)
        else:
            expected.append(IGNORE)
    got = np.full(sessions.n_sessions, -5)
    last = np.r_[streams.starts[1:], True] & (streams.session >= 0)
    got[streams.session[last]] = labels[last]
    assert got.tolist() == expected
    assert {0, 1} <= set(expected)  # both classes occur: the fixture is informative


def test_roc_auc_counts_ordered_pairs() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = np.round(rng.random(50), 1)  # ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(y, s) == pytest.approx(pairs / (len(pos) * len(neg)))
    assert np.isnan(roc_auc(np.ones(3), np.arange(3.0)))


def test_finetune_is_seeded_and_uses_the_label_fraction(return_ds: PreparedDataset) -> None:
    torch.manual_seed(0)
    model = train_encoder(
        return_ds, TINY, PretrainConfig(pretrain_epochs=0, finetune_epochs=1, device="cpu"),
        progress=False,
    ).model  # fmt: skip
    cfg = FinetuneConfig(task="next_new_category", epochs=1, device="cpu", labels_fraction=0.25)
    a, b = finetune(model, return_ds, cfg), finetune(model, return_ds, cfg)
    assert a.metrics == b.metrics and a.train_labels == b.train_labels
    streams = user_steps(return_ds, "train")
    labelled = (task_labels(return_ds, "train", streams, "next_new_category", 7.0) >= 0).sum()
    assert a.train_labels == round(0.25 * labelled)
    assert 0.0 <= a.metrics["acc@1"] <= a.metrics["acc@5"] <= 1.0
    comparison = transfer_comparison(
        model, return_ds, "return", fractions=(0.5,), config=FinetuneConfig(epochs=1, device="cpu")
    )
    row = comparison["fractions"]["0.5"]
    assert comparison["metric"] == "auc"
    assert row["gain"] == pytest.approx(row["pretrained"] - row["scratch"])
    flat = transfer_figures(comparison, "log")
    assert flat == {
        "log_transfer_return_metric": "auc",
        "log_transfer_return_pretrained_at_50pct": row["pretrained"],
        "log_transfer_return_scratch_at_50pct": row["scratch"],
        "log_transfer_return_gain_at_50pct": row["gain"],
        "log_transfer_return_train_labels_at_50pct": row["train_labels"],
    }


def test_finetune_cli_writes_an_encoder_and_return_scores(
    return_ds: PreparedDataset, encoder_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ret"
    argv = ["finetune", str(encoder_dir), "--task", "return", "--data", str(return_ds.path)]
    argv += ["--out", str(out), "--epochs", "3", "--device", "cpu", "--json"]
    assert main(argv) == 0
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["task"] == "return" and 0.0 <= summary["test"]["auc"] <= 1.0
    scores = encoder_return_scores(out, return_ds)
    assert len(scores) == sum(return_ds.sessions(s).n_sessions for s in ("train", "valid", "test"))
    assert scores["session"].is_unique
    assert scores["return_score"].between(0, 1).all()
    # Loyal users (even ids) return within two days: their scores must rank higher.
    loyal = scores["user"] % 2 == 0
    assert roc_auc(loyal.to_numpy(), scores["return_score"].to_numpy()) > 0.7
    assert main(argv) == 2  # an existing output is not replaced without --force
