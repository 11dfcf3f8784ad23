from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rlrec.cli import main
from rlrec.data.dataset import PreparedDataset, load_dataset
from rlrec.errors import UserError
from rlrec.evaluation.history import split_session_ids, user_timelines
from rlrec.evaluation.paired import PAIRED_METRICS
from rlrec.evaluation.ranking import (
    BASELINES,
    CATEGORY_METRICS,
    ITEM_METRICS,
    BaselineConfig,
    evaluate_next_step,
    format_report,
    next_step_targets,
)
from rlrec.models.checkpoint import load_encoder
from rlrec.models.encoder import EncoderConfig, SequenceEncoder, StateEncoder
from rlrec.models.metrics import category_accuracy, item_ranking_metrics, target_ranks
from rlrec.models.pretrain import PretrainConfig, resolve_device, train_encoder
from rlrec.models.sequences import (
    IGNORE,
    SESSION_CONTINUES,
    SESSION_STARTS,
    collapse_repeats,
    encoder_windows,
    mask_tokens,
    training_windows,
    user_steps,
)

SMALL = EncoderConfig(d_model=16, n_layers=1, n_heads=2, max_len=12, dropout=0.0)
QUICK = PretrainConfig(pretrain_epochs=1, finetune_epochs=1, batch_size=64, device="cpu")


@pytest.fixture(scope="module")
def small_dataset(
    tmp_path_factory: pytest.TempPathFactory, make_seq_dataset: Callable[..., Path]
) -> PreparedDataset:
    return load_dataset(make_seq_dataset(tmp_path_factory.mktemp("small") / "ds", n_sessions=60))


def _state(model: SequenceEncoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_overfits_a_tiny_batch(seq_dataset: PreparedDataset, objective: str) -> None:
    # Eight windows, no dropout: the model must be able to memorise them (gradients flow
    # through embeddings, attention and both heads).
    torch.manual_seed(0)
    w = training_windows(collapse_repeats(seq_dataset.sessions("train")), 12)
    items, cats = torch.as_tensor(w.items[:8]), torch.as_tensor(w.categories[:8])
    t_items, t_cats = torch.as_tensor(w.target_items[:8]), torch.as_tensor(w.target_categories[:8])
    model = SequenceEncoder(
        EncoderConfig(d_model=32, n_layers=2, n_heads=2, max_len=12, dropout=0.0),
        seq_dataset.n_items,
        seq_dataset.n_categories,
        seq_dataset.item_category,
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        if objective == "masked":
            mi, mc, tg = mask_tokens(
                w.items[:8],
                w.categories[:8],
                0.3,
                model.item_mask_token,
                model.category_mask_token,
                np.random.default_rng(0),  # the same masks every step: memorisable
            )
            hidden = model(torch.as_tensor(mi), torch.as_tensor(mc), causal=False)
            where = torch.as_tensor(tg != IGNORE)
            loss = F.cross_entropy(model.item_logits(hidden[where]), torch.as_tensor(tg)[where])
        else:
            hidden = model(items, cats)
            where = t_items != IGNORE
            loss = F.cross_entropy(model.item_logits(hidden[where]), t_items[where])
            loss = loss + F.cross_entropy(model.category_logits(hidden[where]), t_cats[where])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Windows sharing a prefix but not its continuation leave some irreducible loss.
    assert losses[-1] < 0.1 * losses[0]
    if objective == "causal":
        with torch.no_grad():
            hidden = model(items, cats)[t_items != IGNORE]
            hits = model.item_logits(hidden).argmax(1) == t_items[t_items != IGNORE]
        assert hits.float().mean() > 0.9


def test_training_is_deterministic_by_seed(small_dataset: PreparedDataset) -> None:
    a = train_encoder(small_dataset, SMALL, QUICK, progress=False)
    b = train_encoder(small_dataset, SMALL, QUICK, progress=False)
    for key, value in _state(a.model).items():
        torch.testing.assert_close(_state(b.model)[key], value, rtol=0, atol=0)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    other = train_encoder(
        small_dataset, SMALL, PretrainConfig(**{**QUICK.__dict__, "seed": 1}), progress=False
    )
    assert not torch.equal(other.model.item_bias, a.model.item_bias)


def test_stages_history_early_stopping_and_tensorboard(
    small_dataset: PreparedDataset, tmp_path: Path
) -> None:
    cfg = PretrainConfig(
        objective="masked", pretrain_epochs=2, finetune_epochs=2, batch_size=64, device="cpu"
    )
    result = train_encoder(
        small_dataset, SMALL, cfg, tensorboard_dir=tmp_path / "tb", progress=False
    )
    stages = [r["stage"] for r in result.history]
    assert stages[0] == "pretrain" and stages[-1] == "finetune"
    assert set(result.best) == {"pretrain", "finetune"}
    fine = [r for r in result.history if r["stage"] == "finetune"]
    assert all(np.isfinite(r["valid_loss"]) and "valid_ndcg@10" in r for r in fine)
    assert "train_category_loss" in fine[0]
    # The overall rate is windows over training time: a weighted mean of the epochs' rates,
    # so within their range (validation time counted in would put it below every epoch's).
    rates = [r["train_sequences_per_s"] for r in result.history]
    assert min(rates) * (1 - 1e-9) <= result.train_sequences_per_s <= max(rates) * (1 + 1e-9)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert not result.model.training


def test_valid_loss_improves_with_training(seq_dataset: PreparedDataset) -> None:
    cfg = PretrainConfig(pretrain_epochs=0, finetune_epochs=4, patience=4, device="cpu")
    result = train_encoder(seq_dataset, SMALL, cfg, progress=False)
    losses = [r["valid_loss"] for r in result.history]
    assert losses[-1] < losses[0]


def test_sampled_softmax_path_trains(small_dataset: PreparedDataset) -> None:
    cfg = PretrainConfig(
        pretrain_epochs=1, finetune_epochs=2, full_softmax_max_items=5, n_negatives=8, device="cpu"
    )
    result = train_encoder(small_dataset, SMALL, cfg, progress=False)
    assert all(np.isfinite(r["train_item_loss"]) for r in result.history)
    # The copy term trains on the sampled path too (its part of the loss is exact), and
    # validation ranks by the mixture over the full catalog.
    head = result.model.copy_head
    assert head is not None and head.gate.bias.item() != -2.0
    assert head.repeat_bias.item() < 0.0  # the next step is never the current item
    assert np.isfinite(result.history[-1]["valid_ndcg@10"])


def test_no_training_sequences_is_a_user_error(
    tmp_path: Path, make_seq_dataset: Callable[..., Path]
) -> None:
    ds = load_dataset(make_seq_dataset(tmp_path / "ds", n_sessions=40))
    one_step = ds.events.groupby("session").head(1)  # every session a single event
    single = PreparedDataset(ds.path, one_step, ds.users, ds.items, ds.categories, ds.meta)
    with pytest.raises(UserError, match="no session of two or more steps"):
        train_encoder(single, SMALL, QUICK, progress=False)


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="both be 0"):
        PretrainConfig(pretrain_epochs=0, finetune_epochs=0)
    with pytest.raises(ValueError, match="mask_prob"):
        PretrainConfig(mask_prob=1.5)
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UserError, match="expected auto"):
        resolve_device("tpu:7")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")


def test_evaluation_report_follows_the_json_contract(small_dataset: PreparedDataset) -> None:
    result = train_encoder(small_dataset, SMALL, QUICK, progress=False)
    report = evaluate_next_step(result.model, small_dataset)
    assert set(report) == {
        "protocol",
        "encoder",
        "encoder_knn",
        "encoder_knn_params",
        "baselines",
        "baseline_params",
        "paired",
    }
    # The paired comparison pairs the same targets: its mean differences are the table's.
    for model_name in ("encoder", "encoder_knn"):
        paired = report["paired"][model_name]
        for name, cells in paired["baselines"].items():
            for metric, cell in cells.items():
                expected = report[model_name][metric] - report["baselines"][name][metric]
                assert cell["difference"] == pytest.approx(expected, abs=1e-12), (name, metric)
        assert set(paired["best"]) == set(PAIRED_METRICS)
        assert f"{model_name} minus the strongest baseline" in format_report(report)
    # The mixture re-ranks items only, at a weight chosen on valid from the grid.
    mix = report["encoder_knn_params"]
    assert mix["weight"] in BaselineConfig().knn_mixture_weights
    assert mix["knn"] in ("sknn", "vsknn")
    assert [t["weight"] for t in mix["grid"]] == list(BaselineConfig().knn_mixture_weights)
    best = max(t["valid_ndcg@10"] for t in mix["grid"])
    assert mix["valid_ndcg@10"] == best
    for metric in CATEGORY_METRICS:
        assert report["encoder_knn"][metric] == report["encoder"][metric]
    assert f"encoder_knn {mix['knn']} weight=" in format_report(report)
    # Weight 0 only: the mixture is the encoder alone.
    alone = evaluate_next_step(
        result.model, small_dataset, config=BaselineConfig(knn_mixture_weights=(0.0,))
    )
    assert alone["encoder_knn"] == alone["encoder"]
    assert set(report["encoder"]) == {*ITEM_METRICS, *CATEGORY_METRICS}
    assert set(report["baselines"]) == set(BASELINES)
    assert set(report["baselines"]["last_category"]) == set(CATEGORY_METRICS)
    for name in ("popularity", "item_markov", "category_markov"):
        assert set(report["baselines"][name]) == {*ITEM_METRICS, *CATEGORY_METRICS}
    steps = collapse_repeats(small_dataset.sessions("test"))
    assert report["protocol"]["targets"] == steps.n_targets
    assert "full ranking" in report["protocol"]["description"]
    for metrics in (report["encoder"], *report["baselines"].values()):
        assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_the_knn_mixture_ranks_the_neighbours_votes_first_at_a_high_weight(
    small_dataset: PreparedDataset,
) -> None:
    # At w = 0.999 every item the session-kNN votes for outscores every item it does not
    # (0.999 x a vote share against at most 0.001 x an encoder probability); at w = 0 the
    # mixture is the encoder alone.
    from rlrec.evaluation.neighbors import knn_candidates, session_knn_scores
    from rlrec.evaluation.ranking import _encoder_split_ranks, _fit_all, encoder_ranks

    model = train_encoder(small_dataset, SMALL, QUICK, progress=False).model
    config = BaselineConfig()
    timelines = user_timelines(small_dataset)
    fitted = _fit_all(small_dataset, config, timelines)
    steps = collapse_repeats(small_dataset.sessions("test"))
    targets = next_step_targets(
        steps, 12, timelines, split_session_ids(small_dataset, "test"), True
    )
    run = ("sknn", {"k": 1, "sample_size": 1})  # one neighbour: not every item gets a vote
    split = _encoder_split_ranks(
        model, small_dataset, "test", targets, fitted, run, [0.0, 0.999], (12, True, 7, 5)
    )
    ranks = split.mixed
    # The same pass gives the encoder's own ranks, as encoder_ranks computes them.
    alone, alone_categories = encoder_ranks(model, small_dataset, "test", 12, True)
    np.testing.assert_array_equal(split.item, np.concatenate(alone))
    np.testing.assert_array_equal(split.category, np.concatenate(alone_categories))
    np.testing.assert_array_equal(ranks[:, 0], np.concatenate(alone))
    some = np.array([0, 3, 4, len(targets) - 1])  # the tuning sample: the same ranks
    sample = _encoder_split_ranks(
        model, small_dataset, "test", targets, fitted, run, [0.0, 0.999], (12, True, 7, 5), some
    )
    np.testing.assert_array_equal(sample.mixed, ranks[some])
    np.testing.assert_array_equal(sample.item, split.item[some])
    np.testing.assert_array_equal(sample.category, split.category[some])
    votes = session_knn_scores(
        fitted.sessions, knn_candidates(fitted.sessions, targets.prefixes(slice(None))),
        "sknn", 1, 1,
    )  # fmt: skip
    votes[np.arange(len(targets)), targets.last_items] = 0.0
    n_voted = (votes > 0).sum(axis=1)
    voted = votes[np.arange(len(targets)), targets.items] > 0
    assert voted.any() and (~voted & (n_voted > 0)).any()
    assert (ranks[voted, 1] < n_voted[voted]).all()
    assert (ranks[~voted, 1] >= n_voted[~voted]).all()
    # Among voted items the order is the votes' (ties: the encoder's order breaks them).
    more = (votes > votes[np.arange(len(targets)), targets.items][:, None]).sum(axis=1)
    assert (ranks[voted, 1] >= more[voted]).all()


@pytest.mark.parametrize("user_history", [False, True])
def test_the_encoders_targets_are_the_baselines_targets_in_the_same_order(
    small_dataset: PreparedDataset, user_history: bool
) -> None:
    # The paired comparison subtracts the encoder's per-target values from each baseline's:
    # the encoder's windows (user streams) must hold the protocol's targets in its order.
    windows = encoder_windows(small_dataset, "test", 12, user_history)
    has_target = windows.target_items != IGNORE
    targets = next_step_targets(
        collapse_repeats(small_dataset.sessions("test")),
        12,
        user_timelines(small_dataset),
        split_session_ids(small_dataset, "test"),
        user_history,
    )
    assert len(targets) > 20
    np.testing.assert_array_equal(windows.target_items[has_target], targets.items)
    np.testing.assert_array_equal(windows.target_categories[has_target], targets.categories)


@pytest.mark.parametrize("sessions", [False, True])
def test_evaluation_ranks_by_the_copy_mixture_of_each_prefix(
    small_dataset: PreparedDataset, sessions: bool
) -> None:
    # The batched evaluation (pointer rows picked out of whole windows) must score each
    # target exactly as StateEncoder scores its history alone: the session's prefix, or with
    # sessions=True the user's stream before the target (earlier sessions included).
    enc = dataclasses.replace(SMALL, sessions=sessions)
    result = train_encoder(small_dataset, enc, QUICK, progress=False)
    model = result.model
    assert model.copy_head is not None
    report = evaluate_next_step(model, small_dataset)
    assert report["protocol"]["context"]["encoder"] == ("user" if sessions else "session")
    encoder = StateEncoder(model)
    streams = user_steps(small_dataset, "test", history=sessions)
    mixture, generative, categories = [], [], []
    for u in range(streams.n_sessions):
        lo, hi = int(streams.offsets[u]), int(streams.offsets[u + 1])
        for t in range(lo + 1, hi):
            if not streams.target[t]:
                continue
            start = max(lo, t - enc.max_len)
            if not sessions:  # the session's prefix only
                start = max(start, int(np.flatnonzero(streams.starts[: t + 1])[-1]))
            items = streams.items[start:t][None] + 1
            cats = streams.categories[start:t][None] + 1
            starts = streams.starts[start:t].copy()
            starts[0] = True
            tokens = np.where(starts, SESSION_STARTS, SESSION_CONTINUES)[None]
            target = torch.tensor([streams.items[t]])
            mixture.append(target_ranks(encoder.next_item_scores(items, cats, tokens), target))
            categories.append(
                target_ranks(
                    encoder.next_category_scores(items, cats, tokens),
                    torch.tensor([streams.categories[t]]),
                )
            )
            gen = model.item_logits(encoder.encode(items, cats, tokens))
            generative.append(target_ranks(gen, target))
    expected = item_ranking_metrics(np.concatenate(mixture))
    assert report["protocol"]["targets"] == len(mixture)
    for key in ITEM_METRICS:
        assert report["encoder"][key] == pytest.approx(expected[key], abs=1e-9)
    expected_cat = category_accuracy(np.concatenate(categories))
    for key in CATEGORY_METRICS:
        assert report["encoder"][key] == pytest.approx(expected_cat[key], abs=1e-9)
    assert item_ranking_metrics(np.concatenate(generative))["mrr"] != pytest.approx(
        expected["mrr"], abs=1e-6
    )


@pytest.mark.slow
def test_encoder_beats_first_order_baselines_on_streak_structure(
    seq_dataset: PreparedDataset,
) -> None:
    # The fixture's stay probability depends on the streak: only a sequence model sees it.
    cfg = PretrainConfig(pretrain_epochs=0, finetune_epochs=30, patience=5, device="cpu")
    enc = EncoderConfig(d_model=32, n_layers=2, n_heads=2, max_len=12, dropout=0.1)
    result = train_encoder(seq_dataset, enc, cfg, progress=False)
    report = evaluate_next_step(result.model, seq_dataset)
    acc = report["encoder"]["category_acc@1"]
    for name, metrics in report["baselines"].items():
        if "category_acc@1" in metrics:  # the neighbourhood baselines rank items only
            assert acc > metrics["category_acc@1"] + 0.1, name


def test_cli_pretrain_and_eval(
    tmp_path: Path,
    small_dataset: PreparedDataset,
    capsys: pytest.CaptureFixture[str],
    make_seq_dataset: Callable[..., Path],
) -> None:
    enc_dir = tmp_path / "enc"
    config = tmp_path / "cfg.yaml"
    config.write_text("encoder:\n  d_model: 16\n  n_layers: 1\ntraining:\n  batch_size: 64\n")
    code = main(
        [
            "pretrain",
            str(small_dataset.path),
            "--out",
            str(enc_dir),
            "--config",
            str(config),
            "--max-len",
            "12",
            "--epochs",
            "1",
            "--finetune-epochs",
            "1",
            "--device",
            "cpu",
            "--no-progress",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 2 and "finetune" in summary["best"]
    _, ckpt = load_encoder(enc_dir, small_dataset)
    assert (ckpt.config.d_model, ckpt.config.n_layers, ckpt.config.max_len) == (16, 1, 12)
    assert ckpt.info["training_config"]["batch_size"] == 64
    assert list((enc_dir / "tensorboard").glob("events.out.tfevents.*"))

    assert main(["encoder", "eval", str(enc_dir), "--data", str(small_dataset.path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["encoder"]) == {*ITEM_METRICS, *CATEGORY_METRICS}
    assert main(["encoder", "eval", str(enc_dir), "--data", str(small_dataset.path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("protocol:") and "category_markov (baseline)" in text

    other = make_seq_dataset(tmp_path / "other", n_sessions=40, raw_prefix="z")
    assert main(["encoder", "eval", str(enc_dir), "--data", str(other)]) == 2
    assert "differs from dataset" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  epochs: 3\n")
    assert (
        main(
            [
                "pretrain",
                str(small_dataset.path),
                "--out",
                str(tmp_path / "x"),
                "--config",
                str(bad),
            ]
        )
        == 2
    )
    assert "unknown setting" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_repeat_shares_count_targets_the_window_shows_before_them() -> None:
    from rlrec.models.pretrain import repeat_shares
    from rlrec.models.sequences import Windows

    # Row 0 shows items 3 5 3 (tokens 4 6 4) with next items 5, 3, 7: only the 3 after
    # position 1 was shown before it. Row 1 shows items 1 2 with next item 1 after the 1.
    items = np.array([[0, 4, 6, 4], [0, 0, 2, 3]])
    cats = np.array([[0, 1, 2, 1], [0, 0, 1, 1]])  # categories 0 1 0 and 0 0
    t_items = np.array([[IGNORE, 5, 3, 7], [IGNORE, IGNORE, 1, IGNORE]])
    t_cats = np.array([[IGNORE, 1, 0, 0], [IGNORE, IGNORE, 0, IGNORE]])
    item_share, cat_share = repeat_shares(Windows(items, cats, t_items, t_cats), chunk=1)
    assert item_share == pytest.approx(2 / 4)
    # Next categories 1 (only 0 shown so far: no), 0, 0 and 0 (shown): 3 of 4.
    assert cat_share == pytest.approx(3 / 4)
    empty = Windows(items[:, :1], cats[:, :1], t_items[:, :1], t_cats[:, :1])
    assert repeat_shares(empty) == (0.0, 0.0)


def test_auto_batch_size_gives_small_logs_several_steps_an_epoch(
    small_dataset: PreparedDataset,
) -> None:
    from rlrec.models.pretrain import auto_batch_size

    assert auto_batch_size(215) == 27  # the Taobao sample's windows: 8 steps, not 2
    assert auto_batch_size(10) == 16  # a floor: tiny batches are all noise
    assert auto_batch_size(100_000) == 128
    result = train_encoder(small_dataset, SMALL, dataclasses.replace(QUICK, batch_size=None))
    assert 16 <= result.batch_size <= 128
