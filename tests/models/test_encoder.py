from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from rlrec.config import from_mapping
from rlrec.data.dataset import SessionArrays, load_dataset
from rlrec.errors import UserError
from rlrec.models.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_encoder,
    save_encoder,
    vocabulary_fingerprint,
)
from rlrec.models.encoder import EncoderConfig, SequenceEncoder, StateEncoder, category_streak
from rlrec.models.sequences import (
    IGNORE,
    collapse_repeats,
    mask_tokens,
    prefix_windows,
    training_windows,
)

N_ITEMS, N_CATS = 30, 5
ITEM_CATEGORY = np.arange(N_ITEMS) % N_CATS


def _model(seed: int = 0, **kwargs: object) -> SequenceEncoder:
    torch.manual_seed(seed)
    cfg = EncoderConfig(d_model=16, n_layers=2, n_heads=2, max_len=12, dropout=0.0, **kwargs)  # type: ignore[arg-type]
    return SequenceEncoder(cfg, N_ITEMS, N_CATS, ITEM_CATEGORY).eval()


def _tokens(
    rng: np.random.Generator, b: int, length: int, pad: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    items = torch.as_tensor(rng.integers(1, N_ITEMS + 1, size=(b, length)))
    cats = torch.as_tensor(ITEM_CATEGORY[items.numpy() - 1] + 1)
    items[:, :pad] = 0
    cats[:, :pad] = 0
    return items, cats


# --- sequences -------------------------------------------------------------------------------


def _sessions(items: list[list[int]], cats: list[list[int]]) -> SessionArrays:
    lengths = [len(s) for s in items]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate([np.asarray(s, dtype=np.int32) for s in items])
    return SessionArrays(
        offsets=offsets,
        user=np.zeros(len(items), dtype=np.int32),
        items=flat,
        categories=np.concatenate([np.asarray(c, dtype=np.int32) for c in cats]),
        events=np.zeros(len(flat), dtype=np.int8),
        timestamps=np.arange(len(flat), dtype=np.int64),
    )


def test_collapse_repeats_merges_runs_within_sessions_only() -> None:
    # Session 0 ends on item 4 and session 1 starts on item 4: not one run.
    sessions = _sessions([[1, 1, 2, 1, 4], [4, 4, 3]], [[0, 0, 1, 0, 2], [2, 2, 1]])
    steps = collapse_repeats(sessions)
    assert steps.offsets.tolist() == [0, 4, 6]
    assert steps.items.tolist() == [1, 2, 1, 4, 4, 3]
    assert steps.categories.tolist() == [0, 1, 0, 2, 2, 1]
    assert steps.n_targets == 4


def test_training_windows_cover_every_target_once() -> None:
    steps = collapse_repeats(_sessions([list(range(1, 8)), [5], [2, 3]], [[0] * 7, [1], [0, 1]]))
    w = training_windows(steps, max_len=3)
    # Session of 7 steps: targets 2..7 in windows of 3 inputs; [5] gives nothing; [2, 3] one.
    assert len(w) == 3
    assert w.n_targets == steps.n_targets == 7
    assert w.items[0].tolist() == [2, 3, 4]  # tokens = index + 1
    assert w.target_items[0].tolist() == [2, 3, 4]  # targets = dataset index of the next step
    assert w.items[2].tolist() == [0, 0, 3]  # left padding
    assert w.target_items[2].tolist() == [IGNORE, IGNORE, 3]
    assert w.target_categories[2].tolist() == [IGNORE, IGNORE, 1]


def test_prefix_windows_show_each_target_its_truncated_prefix() -> None:
    seq = list(range(10, 16))  # 6 steps
    steps = collapse_repeats(_sessions([seq], [[0] * 6]))
    w = prefix_windows(steps, max_len=3)
    assert w.n_targets == 5
    # First window: targets 1..3 from prefixes of length 1..3.
    assert w.items[0].tolist() == [11, 12, 13]
    assert w.target_items[0].tolist() == [11, 12, 13]
    # Later targets: the last 3 steps before each, only the last column targeted.
    assert w.items[1].tolist() == [12, 13, 14]
    assert w.target_items[1].tolist() == [IGNORE, IGNORE, 14]
    assert w.items[2].tolist() == [13, 14, 15]
    assert w.target_items[2].tolist() == [IGNORE, IGNORE, 15]


# --- masking ---------------------------------------------------------------------------------


def test_mask_tokens_hides_only_real_steps_and_records_targets() -> None:
    rng = np.random.default_rng(0)
    items, cats = (t.numpy() for t in _tokens(rng, 64, 10))
    items[:, :4] = 0
    cats[:, :4] = 0
    items[0] = 0  # an empty row stays empty
    cats[0] = 0
    m_items, m_cats, targets = mask_tokens(items, cats, 0.3, 99, 77, np.random.default_rng(1))
    masked = targets != IGNORE
    assert not masked[:, :4].any(), "padding was masked"
    assert not masked[0].any()
    assert (m_items[masked] == 99).all() and (m_cats[masked] == 77).all()
    assert (m_items[~masked] == items[~masked]).all() and (m_cats[~masked] == cats[~masked]).all()
    assert (targets[masked] == items[masked] - 1).all()
    assert masked[1:].any(axis=1).all(), "every non-empty row has a masked step"
    assert 0.2 < masked[1:, 4:].mean() < 0.45
    again = mask_tokens(items, cats, 0.3, 99, 77, np.random.default_rng(1))
    assert all((a == b).all() for a, b in zip(again, (m_items, m_cats, targets), strict=True))


# --- model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pad", [0, 3])
def test_causal_no_leakage_from_future_steps(pad: int) -> None:
    model = _model()
    items, cats = _tokens(np.random.default_rng(0), 4, 10, pad=pad)
    base = model(items, cats)
    t = 7
    items2, cats2 = items.clone(), cats.clone()
    items2[:, t] = (items2[:, t] % N_ITEMS) + 1
    cats2[:, t] = (cats2[:, t] % N_CATS) + 1
    changed = model(items2, cats2)
    torch.testing.assert_close(changed[:, pad:t], base[:, pad:t], rtol=0, atol=0)
    assert not torch.allclose(changed[:, t:], base[:, t:])
    # Bidirectional mode (masked pretraining) does see the future: the mask is what blocks it.
    assert not torch.allclose(
        model(items2, cats2, causal=False)[:, :t], model(items, cats, causal=False)[:, :t]
    )


def test_state_of_a_prefix_does_not_depend_on_padding_or_longer_context() -> None:
    model = _model()
    items, cats = _tokens(np.random.default_rng(1), 3, 8)
    full = model(items, cats)  # (3, 8, d)
    for t in (0, 3, 7):
        pi = torch.zeros(3, 12, dtype=torch.long)
        pc = torch.zeros(3, 12, dtype=torch.long)
        pi[:, 12 - (t + 1) :] = items[:, : t + 1]
        pc[:, 12 - (t + 1) :] = cats[:, : t + 1]
        torch.testing.assert_close(model.encode(pi, pc), full[:, t], atol=1e-5, rtol=1e-5)


def test_empty_history_and_long_history_are_handled() -> None:
    model = _model()
    state = model.encode(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long))
    assert torch.isfinite(state).all()
    items, cats = _tokens(np.random.default_rng(2), 2, 20)  # longer than max_len 12
    torch.testing.assert_close(
        model.encode(items, cats), model.encode(items[:, -12:], cats[:, -12:])
    )


def test_sampled_logits_match_full_logits_and_mask_accidental_hits() -> None:
    model = _model()
    h = torch.randn(4, 16)
    targets = torch.tensor([0, 5, 7, 29])
    negatives = torch.tensor([3, 5, 11])
    full = model.item_logits(h)
    sampled = model.sampled_item_logits(h, targets, negatives)
    torch.testing.assert_close(sampled[:, 0], full[torch.arange(4), targets])
    torch.testing.assert_close(sampled[0, 1:], full[0, negatives])
    assert sampled[1, 2] == float("-inf")  # negative 5 is row 1's target


def test_state_encoder_interface_matches_env_observations() -> None:
    enc = StateEncoder(_model())
    obs_items = np.array([[0, 0, 3, 4], [1, 2, 3, 30]])
    obs_cats = ITEM_CATEGORY[np.maximum(obs_items - 1, 0)] + 1
    obs_cats[obs_items == 0] = 0
    states = enc.encode(obs_items, obs_cats)
    assert states.shape == (2, enc.state_dim) == (2, 16)
    items = enc.next_item_scores(obs_items, obs_cats)
    cats = enc.next_category_scores(torch.as_tensor(obs_items), torch.as_tensor(obs_cats))
    assert items.shape == (2, N_ITEMS) and cats.shape == (2, N_CATS)
    torch.testing.assert_close(items.exp().sum(1), torch.ones(2))
    torch.testing.assert_close(cats.exp().sum(1), torch.ones(2))
    one = enc.encode(obs_items[1], obs_cats[1])  # a single (L,) observation
    torch.testing.assert_close(one[0], states[1])
    with pytest.raises(UserError, match="dataset index \\+ 1"):
        enc.encode(np.array([[0, N_ITEMS + 1]]), np.array([[0, 1]]))
    with pytest.raises(UserError, match="same shape"):
        enc.encode(np.zeros((2, 3), dtype=int), np.zeros((2, 4), dtype=int))


def test_encoder_config_is_validated_with_field_named_errors() -> None:
    with pytest.raises(ValueError, match="must divide"):
        EncoderConfig(d_model=10, n_heads=3)
    with pytest.raises(UserError, match=r"encoder\.d_model"):
        from_mapping(EncoderConfig, {"d_model": "wide"}, "encoder")
    with pytest.raises(UserError, match="unknown setting"):
        from_mapping(EncoderConfig, {"layers": 3}, "encoder")


# --- checkpoints -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dataset(
    tmp_path_factory: pytest.TempPathFactory, make_seq_dataset: Callable[..., Path]
) -> Path:
    return make_seq_dataset(tmp_path_factory.mktemp("tiny") / "ds", n_sessions=40)


def _dataset_model(ds_dir: Path) -> SequenceEncoder:
    ds = load_dataset(ds_dir)
    torch.manual_seed(3)
    cfg = EncoderConfig(d_model=16, n_layers=1, n_heads=2, max_len=8)
    return SequenceEncoder(cfg, ds.n_items, ds.n_categories, ds.item_category)


def test_save_load_round_trip(tiny_dataset: Path, tmp_path: Path) -> None:
    ds = load_dataset(tiny_dataset)
    model = _dataset_model(tiny_dataset).eval()
    out = save_encoder(tmp_path / "enc", model, vocabulary_fingerprint(ds), {"note": "x"})
    loaded, ckpt = load_encoder(out, ds)
    assert ckpt.config == model.config and ckpt.info == {"note": "x"}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    items, cats = torch.tensor([[0, 1, 2, 7]]), torch.tensor([[0, 1, 1, 2]])
    torch.testing.assert_close(loaded.encode(items, cats), model.encode(items, cats))
    # The weights are plain tensors in safetensors: readable without unpickling anything.
    assert set(load_file(str(out / WEIGHTS_FILE))) == set(model.state_dict())


def test_vocabulary_mismatch_is_refused(
    tiny_dataset: Path, tmp_path: Path, make_seq_dataset: Callable[..., Path]
) -> None:
    ds = load_dataset(tiny_dataset)
    out = save_encoder(tmp_path / "enc", _dataset_model(tiny_dataset), vocabulary_fingerprint(ds))
    # Same sizes, different raw item ids: the encoder's tokens would mean other items.
    other = load_dataset(make_seq_dataset(tmp_path / "other", n_sessions=40, raw_prefix="x"))
    assert (other.n_items, other.n_categories) == (ds.n_items, ds.n_categories)
    with pytest.raises(UserError, match="differs from dataset"):
        load_encoder(out, other)
    load_encoder(out)  # without a dataset there is nothing to compare


def test_fingerprint_sees_item_category_changes(tiny_dataset: Path, tmp_path: Path) -> None:
    ds = load_dataset(tiny_dataset)
    items = ds.items.copy()
    items.loc[0, "category"] = (items.loc[0, "category"] + 1) % ds.n_categories
    changed = type(ds)(ds.path, ds.events, ds.users, items, ds.categories, ds.meta)
    assert vocabulary_fingerprint(changed) != vocabulary_fingerprint(ds)


def test_broken_checkpoints_are_user_errors(tiny_dataset: Path, tmp_path: Path) -> None:
    ds = load_dataset(tiny_dataset)
    with pytest.raises(UserError, match="no such encoder directory"):
        load_encoder(tmp_path / "missing")
    out = save_encoder(tmp_path / "enc", _dataset_model(tiny_dataset), vocabulary_fingerprint(ds))
    meta = json.loads((out / CONFIG_FILE).read_text())
    meta["encoder_config"]["d_model"] = 32  # weights are 16 wide
    (out / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match="weights do not match"):
        load_encoder(out)
    (out / CONFIG_FILE).write_text("{not json")
    with pytest.raises(UserError, match="invalid JSON"):
        load_encoder(out)
    (out / CONFIG_FILE).unlink()
    with pytest.raises(UserError, match=r"missing encoder\.json"):
        load_encoder(out)
    assert isinstance(ds.items, pd.DataFrame)


def test_category_streak_counts_runs_causally() -> None:
    cats = torch.tensor([[0, 0, 3, 3, 3, 1, 1, 3], [2, 2, 2, 2, 2, 2, 2, 2]])
    streak = category_streak(cats, max_streak=4)
    assert streak.tolist() == [[0, 0, 1, 2, 3, 1, 2, 1], [1, 2, 3, 4, 4, 4, 4, 4]]
    # Changing a later category never changes an earlier streak.
    later = cats.clone()
    later[0, 6] = 2
    assert category_streak(later, 4)[0, :6].tolist() == streak[0, :6].tolist()
