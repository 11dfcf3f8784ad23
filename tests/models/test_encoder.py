from __future__ import annotations

import json
import math
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


@pytest.mark.parametrize("n_layers", [1, 3])
def test_encode_is_the_last_column_of_forward_and_passes_gradients(n_layers: int) -> None:
    # encode() runs the last block for the last position only; it must not change the state.
    torch.manual_seed(0)
    cfg = EncoderConfig(d_model=16, n_layers=n_layers, n_heads=2, max_len=12, dropout=0.0)
    model = SequenceEncoder(cfg, N_ITEMS, N_CATS, ITEM_CATEGORY).eval()
    items, cats = _tokens(np.random.default_rng(5), 6, 10, pad=0)
    items[:3, :4] = 0  # mixed padding, and one empty history
    cats[:3, :4] = 0
    items[5], cats[5] = 0, 0
    state = model.encode(items, cats)
    torch.testing.assert_close(state, model(items, cats)[:, -1], atol=1e-6, rtol=1e-5)
    state.sum().backward()
    assert model.blocks[0].qkv.weight.grad is not None  # type: ignore[union-attr]
    assert model.blocks[0].qkv.weight.grad.abs().sum() > 0  # type: ignore[union-attr]


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


# --- copy (pointer) term ---------------------------------------------------------------------


@pytest.mark.parametrize("pad", [0, 3])
def test_copy_term_is_causal(pad: int) -> None:
    model = _model()
    assert model.copy_head is not None
    with torch.no_grad():  # a strong, state-dependent gate so that changes would show
        model.copy_head.gate.weight.normal_(0.0, 1.0)
    items, cats = _tokens(np.random.default_rng(0), 4, 10, pad=pad)
    t = 7

    def scores(it: torch.Tensor, ct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = model(it, ct)  # (B, L, d)
        pointer = model.pointer(hidden, it, ct)
        assert pointer is not None
        every = torch.ones(it.shape, dtype=torch.bool)  # all (B, L) positions, flattened
        flat = model.next_item_log_probs(hidden[every], pointer[every])  # (B * L, n_items)
        return pointer.log_weights, flat.view(it.shape[0], it.shape[1], -1)

    base_w, base_p = scores(items, cats)
    items2, cats2 = items.clone(), cats.clone()
    items2[:, t] = (items2[:, t] % N_ITEMS) + 1
    cats2[:, t] = (cats2[:, t] % N_CATS) + 1
    w2, p2 = scores(items2, cats2)
    torch.testing.assert_close(w2[:, pad:t], base_w[:, pad:t], rtol=0, atol=0)
    torch.testing.assert_close(p2[:, pad:t], base_p[:, pad:t], rtol=0, atol=0)
    assert not torch.allclose(p2[:, t:], base_p[:, t:])
    # A query never points at a later or a padding step.
    later = torch.ones(10, 10, dtype=torch.bool).triu(1)
    assert (base_w[:, later] <= -1e8).all()
    assert (base_w[:, :, :pad] <= -1e8).all()


def test_copy_mixture_is_a_distribution_and_its_target_form_agrees() -> None:
    model = _model()
    assert model.copy_head is not None
    with torch.no_grad():
        model.copy_head.gate.weight.zero_()
        model.copy_head.gate.bias.zero_()  # g = 1/2 everywhere
        model.copy_head.repeat_bias.fill_(-0.3)  # -3 on the query's own item
    items, cats = _tokens(np.random.default_rng(3), 3, 8, pad=2)
    hidden = model(items, cats)
    pointer = model.pointer(hidden, items, cats)
    assert pointer is not None
    where = items != 0
    h, ptr = hidden[where], pointer[where]  # (N, d), (N,)
    n = torch.arange(len(h))
    log_p = model.next_item_log_probs(h, ptr)  # (N, n_items)
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(len(h)))
    # The generative part: the head's logits with the repeat bias on the current item.
    logits = model.item_logits(h)
    current = items[where] - 1  # (N,)
    logits[n, current] -= 3.0
    log_gen = torch.log_softmax(logits, -1)
    targets = n % N_ITEMS
    target_form = model.mix_target_log_prob(log_gen[n, targets], ptr, targets)
    torch.testing.assert_close(target_form, log_p[n, targets])
    # Half the mass goes to the history: an item not seen keeps (1 - g) of its generative
    # probability.
    row_items = {int(i) - 1 for i in items[0] if i > 0}  # query 0 sees a subset of its row
    unseen = next(i for i in range(N_ITEMS) if i not in row_items)
    torch.testing.assert_close(log_p[0, unseen], log_gen[0, unseen] + math.log(0.5))
    # Without history (an empty window) the mixture is the generative head alone.
    empty = torch.zeros(1, 4, dtype=torch.long)
    eh = model(empty, empty)
    ep = model.pointer(eh, empty, empty)
    assert ep is not None
    torch.testing.assert_close(
        model.next_item_log_probs(eh[:, -1], ep[:, -1]),
        torch.log_softmax(model.item_logits(eh[:, -1]), -1),
    )


def test_copy_off_is_the_generative_head() -> None:
    model = _model(copy=False)
    assert model.copy_head is None
    items, cats = _tokens(np.random.default_rng(4), 2, 6)
    hidden = model(items, cats)
    assert model.pointer(hidden, items, cats) is None
    torch.testing.assert_close(
        model.next_item_log_probs(hidden[:, -1], None),
        torch.log_softmax(model.item_logits(hidden[:, -1]), -1),
    )
    assert not any(k.startswith("copy_head.") for k in model.state_dict())


def test_copy_term_learns_to_revisit_rare_items() -> None:
    # Each target is the item seen two steps back: unpredictable from item identity (all
    # items equally rare), trivial for a pointer.
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    items, cats = _tokens(rng, 32, 10)
    items[:, 2::2] = items[:, 0:-2:2]
    cats = torch.as_tensor(ITEM_CATEGORY[items.numpy() - 1] + 1)
    targets = items[:, 2:] - 1  # (B, 8): position t predicts item t + 1 = item t - 1
    targets = torch.where(torch.arange(8) % 2 == 0, targets, torch.full_like(targets, IGNORE))
    model = _model().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        hidden = model(items, cats)[:, 1:-1]  # positions 1..8 predict 2..9
        pointer = model.pointer(hidden, items[:, :-1], cats[:, :-1])
        assert pointer is not None
        where = targets != IGNORE
        log_gen = torch.log_softmax(model.item_logits(hidden[where]), -1)
        t = targets[where]
        log_p = model.mix_target_log_prob(log_gen[torch.arange(len(t)), t], pointer[where], t)
        opt.zero_grad()
        (-log_p.mean()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        hidden = model(items, cats)[:, 1:-1]
        pointer = model.pointer(hidden, items[:, :-1], cats[:, :-1])
        assert pointer is not None
        where = targets != IGNORE
        log_p = model.next_item_log_probs(hidden[where], pointer[where])
        hits = (log_p.argmax(1) == targets[where]).float().mean()
        gate = pointer[where].log_gate.exp().mean()
    assert hits > 0.95 and gate > 0.5  # the gate starts at 0.12


def test_state_encoder_next_item_scores_use_the_copy_mixture() -> None:
    model = _model()
    assert model.copy_head is not None
    with torch.no_grad():
        model.copy_head.gate.bias.fill_(3.0)  # mostly copy
    enc = StateEncoder(model)
    obs_items = np.array([[0, 0, 3, 4], [1, 2, 3, 30]])
    obs_cats = ITEM_CATEGORY[np.maximum(obs_items - 1, 0)] + 1
    obs_cats[obs_items == 0] = 0
    scores = enc.next_item_scores(obs_items, obs_cats)
    torch.testing.assert_close(scores.exp().sum(1), torch.ones(2))
    top = scores.topk(4, dim=1).indices
    assert set(top[1].tolist()) == {0, 1, 2, 29}  # the history's items (dataset index)
    gen = torch.log_softmax(model.item_logits(enc.encode(obs_items, obs_cats)), -1)
    assert not torch.allclose(scores, gen)


def test_checkpoint_without_copy_setting_loads_as_generative(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    ds = load_dataset(tiny_dataset)
    torch.manual_seed(3)
    old = SequenceEncoder(
        EncoderConfig(d_model=16, n_layers=1, n_heads=2, max_len=8, copy=False),
        ds.n_items,
        ds.n_categories,
        ds.item_category,
    ).eval()
    out = save_encoder(tmp_path / "enc", old, vocabulary_fingerprint(ds))
    meta = json.loads((out / CONFIG_FILE).read_text())
    del meta["encoder_config"]["copy"]  # written before the setting existed
    (out / CONFIG_FILE).write_text(json.dumps(meta))
    loaded, ckpt = load_encoder(out, ds)
    assert ckpt.config.copy is False and loaded.copy_head is None
    new = save_encoder(tmp_path / "new", _dataset_model(tiny_dataset), vocabulary_fingerprint(ds))
    loaded, ckpt = load_encoder(new, ds)
    assert ckpt.config.copy is True and loaded.copy_head is not None


def test_with_repeat_bias_is_the_dense_adjustment() -> None:
    torch.manual_seed(0)
    model = SequenceEncoder(
        EncoderConfig(d_model=8, n_layers=1, n_heads=2, max_len=6), 9, 3, np.arange(9) % 3
    )
    assert model.copy_head is not None
    with torch.no_grad():
        model.copy_head.repeat_bias.fill_(0.3)
    items = torch.tensor([[0, 0, 2, 5, 7], [1, 4, 4, 9, 3]])
    cats = torch.where(items > 0, (items - 1) % 3 + 1, 0)
    hidden = model(items, cats)
    pointer = model.pointer(hidden, items, cats)
    assert pointer is not None
    logits = model.item_logits(hidden).reshape(-1, 9)
    flat = pointer[torch.ones(2, 5, dtype=torch.bool)]
    dense = logits + model.repeat_adjustment(torch.arange(9), flat)
    assert torch.allclose(model.with_repeat_bias(logits, flat), dense)


# --- the copy terms' starting point ------------------------------------------------------------


def test_fresh_pointer_ranks_the_history_by_recency_and_the_current_item_last() -> None:
    # Before any training the pointer is the re-visit rule: the most recent step first, the
    # query's own step (the current item, never the next step) below every other.
    model = _model()
    items = torch.tensor([[0, 3, 7, 11, 5, 9]])
    cats = torch.as_tensor(np.where(items.numpy() > 0, ITEM_CATEGORY[items.numpy() - 1] + 1, 0))
    with torch.no_grad():
        pointer = model.pointer(model(items, cats), items, cats)
    assert pointer is not None
    weights = pointer.log_weights[0, -1].exp()  # (K,) the last query's weights
    order = weights[1:].argsort(descending=True).tolist()  # steps 1..5
    assert order == [3, 2, 1, 0, 4]  # 5, 11, 7, 3 (most recent first), then 9 (current)
    copy = pointer[0, -1].copy_log_probs(N_ITEMS)
    assert copy.argmax().item() == 5 - 1  # dataset index of item token 5


def test_fresh_category_copy_is_the_last_category_rule() -> None:
    model = _model()
    items = torch.tensor([[1, 2, 6, 11, 16]])  # categories 0, 1, 0, 0, 0 (item - 1) % 5
    cats = torch.as_tensor(ITEM_CATEGORY[items.numpy() - 1] + 1)
    with torch.no_grad():
        pointer = model.pointer(model(items, cats), items, cats)
    assert pointer is not None and pointer.category_log_weights is not None
    per_category = pointer[0, -1].copy_category_log_probs(N_CATS)
    assert per_category.argmax().item() == ITEM_CATEGORY[16 - 1]  # the current category
    # The item pointer keeps the current step out; the category pointer puts it first.
    assert pointer.category_log_weights[0, -1, -1] > pointer.log_weights[0, -1, -1] + 4


def test_init_copy_gates_starts_at_the_repeat_shares() -> None:
    model = _model()
    model.init_copy_gates(0.25, 0.75)
    assert model.copy_head is not None and model.copy_head.category_gate is not None
    assert torch.sigmoid(model.copy_head.gate.bias).item() == pytest.approx(0.25, abs=1e-6)
    assert torch.sigmoid(model.copy_head.category_gate.bias).item() == pytest.approx(0.75)
    model.init_copy_gates(0.0, 1.0)  # clipped: both parts keep a gradient
    assert torch.sigmoid(model.copy_head.gate.bias).item() == pytest.approx(0.02, abs=1e-6)
    _model(copy=False).init_copy_gates(0.5, 0.5)  # no copy head: nothing to set


def test_checkpoint_without_category_recency_loads_with_it_off(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    ds = load_dataset(tiny_dataset)
    torch.manual_seed(3)
    old = SequenceEncoder(
        EncoderConfig(d_model=16, n_layers=1, n_heads=2, max_len=8, category_recency=False),
        ds.n_items,
        ds.n_categories,
        ds.item_category,
    ).eval()
    out = save_encoder(tmp_path / "enc", old, vocabulary_fingerprint(ds))
    meta = json.loads((out / CONFIG_FILE).read_text())
    del meta["encoder_config"]["category_recency"]  # written before the setting existed
    (out / CONFIG_FILE).write_text(json.dumps(meta))
    loaded, ckpt = load_encoder(out, ds)
    assert ckpt.config.category_recency is False
    assert loaded.copy_head is not None and loaded.copy_head.category_distance_bias is None
    # A checkpoint whose weights lack the tensors its config names is refused in one line.
    meta["encoder_config"]["category_recency"] = True
    (out / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match="weights do not match") as err:
        load_encoder(out, ds)
    assert "\n" not in str(err.value)
