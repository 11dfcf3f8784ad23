"""``rlrec export`` and the Scorer: safe files, refusals, and the simulator's own observations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rlrec.agents.train import load_run
from rlrec.cli import main
from rlrec.envs.batched import BatchedInterestDrift
from rlrec.errors import UserError
from rlrec.serving.export import MANIFEST_FILE, export_run, verify_export
from rlrec.serving.scorer import Scorer, SlateRequest
from tests.serving.helpers import histories_of


@pytest.fixture(scope="module")
def scorer(world) -> Scorer:
    return Scorer.load(world["export_a"])


def test_export_holds_no_executable_and_every_file_is_checksummed(world):
    root = world["export_a"]
    manifest = verify_export(root)
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == files - {MANIFEST_FILE, ".rlrec-artifact.json"}
    suffixes = {Path(f).suffix for f in files}
    assert suffixes <= {".json", ".safetensors", ".parquet", ".npz"}, suffixes
    assert manifest["model_version"].startswith("run_a-step128-")


def test_scorer_sees_what_the_simulator_shows_the_policy(world, scorer):
    run = load_run(world["run_a"])
    env = BatchedInterestDrift(64, run.sim_model, run.dataset, run.config.env)
    obs, _ = env.reset(seed=3)
    obs, *_ = env.step(np.arange(64) % scorer.n_actions)
    # A log's consecutive events on one item are one step; the simulator can show the same
    # item twice in a row (a recommendation of the current item), which no log can express.
    items = obs["item_history"]
    plain = ~((items[:, 1:] == items[:, :-1]) & (items[:, 1:] > 0)).any(axis=1)
    assert plain.sum() >= 48
    obs = {k: np.asarray(v)[plain] for k, v in obs.items()}
    contexts = [scorer.context(h) for h in histories_of(obs, scorer)]
    assert np.array_equal(np.stack([c.items for c in contexts]), obs["item_history"])
    assert np.array_equal(np.stack([c.categories for c in contexts]), obs["category_history"])
    expected = run.policy.action_probabilities(
        {**obs, "step": np.array([[c.step] for c in contexts])}
    )
    np.testing.assert_allclose(scorer.probabilities(contexts), expected, rtol=1e-5, atol=1e-7)


def test_history_order_repeats_unknown_items_and_exclusion(scorer):
    raw = scorer.item_raw
    context = scorer.context([(raw[5], 3.0), (raw[4], 1.0), (raw[4], 2.0), ("nope", 0.5)])
    # Sorted by time, the run on item 4 collapsed, the unknown id reported once.
    assert context.items[-2:].tolist() == [5, 6] and context.step == 2
    assert context.unknown == ["nope"]
    many = scorer.context([(raw[i % 20], float(i)) for i in range(50)])
    assert many.step == 50 and (many.items > 0).all()  # only the last L steps are read
    catalog_item = int(scorer.catalog[0])
    request = SlateRequest(history=[(raw[catalog_item], 0.0)], k=scorer.n_actions)
    (rec,) = scorer.recommend([request], np.random.default_rng(0))
    assert str(raw[catalog_item]) not in rec.items and len(rec.items) == scorer.n_actions - 1
    assert abs(sum(rec.propensities) - 1) < 1e-9
    kept = SlateRequest(history=request.history, k=5, exclude_seen=False)
    (rec,) = scorer.recommend([kept], np.random.default_rng(0))
    p = scorer.probabilities([scorer.context(kept.history)])[0]
    assert rec.items == [scorer.action_raw[a] for a in np.argsort(-p, kind="stable")[:5]]
    np.testing.assert_allclose(rec.scores, np.log(p[rec.actions]))


def test_sample_mode_propensities_are_the_plackett_luce_draw_probabilities(scorer):
    raw = scorer.item_raw
    request = SlateRequest(history=[(raw[7], 0.0)], k=3, mode="sample", seed=11)
    context = scorer.context(request.history)
    p = scorer.served_distribution(
        scorer.probabilities([context])[0], scorer.eligible(context, True)
    )
    (a,) = scorer.recommend([request], np.random.default_rng(0))
    (b,) = scorer.recommend([request], np.random.default_rng(1))
    assert a.items == b.items  # the request's seed, not the server's generator
    first, second = a.actions[:2]
    assert a.position_propensities[0] == pytest.approx(p[first])
    assert a.position_propensities[1] == pytest.approx(p[second] / (1 - p[first]))
    # The first item's frequency over many draws is p (5 sigma on the most likely action).
    draws = scorer.recommend(
        [SlateRequest(request.history, 1, True, "sample")] * 4000, np.random.default_rng(5)
    )
    counts = np.bincount([d.actions[0] for d in draws], minlength=scorer.n_actions)
    top = int(np.argmax(p))
    assert abs(counts[top] / 4000 - p[top]) < 5 * np.sqrt(p[top] * (1 - p[top]) / 4000)


def test_export_refusals(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run_a"], run, ignore=shutil.ignore_patterns(".lock"))
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(out), "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_version"].startswith("run-step128")
    for name in ("policy.json", "policy.safetensors"):
        (run / name).unlink()
    assert main(["export", str(run), "--out", str(tmp_path / "e2")]) == 2
    assert "--resume" in capsys.readouterr().err
    (run / "policy.zip").write_bytes(b"PK")
    assert main(["export", str(run), "--out", str(tmp_path / "e2")]) == 2
    assert "convert-run" in capsys.readouterr().err
    assert not (tmp_path / "e2").exists()


def test_a_changed_export_file_is_refused_naming_it(world, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(world["export_a"], copy)
    shutil.copyfile(world["export_b"] / "policy.safetensors", copy / "policy.safetensors")
    with pytest.raises(UserError, match=r"policy\.safetensors: does not match manifest"):
        Scorer.load(copy)
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(UserError, match="not an export"):
        Scorer.load(copy)


def test_export_of_a_run_being_trained_is_refused(world, tmp_path):
    from rlrec.agents.artifacts import run_lock

    with run_lock(world["run_b"]), pytest.raises(UserError, match="another 'rlrec train'"):
        export_run(world["run_b"], tmp_path / "x")
