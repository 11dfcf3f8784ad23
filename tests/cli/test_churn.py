"""``rlrec churn`` end to end on a synthetic log: outputs, metrics, oracle, no leakage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlrec.cli import main
from rlrec.data.dataset import load_dataset
from rlrec.data.schema import EVENT_TYPES

CUTOFF = "2017-11-30"
HORIZON = "1.5"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("churn") / "synth"
    assert main(["data", "synth", "--out", str(out), "--users", "800", "--seed", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def churn_run(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("churn") / "out"
    argv = ["churn", str(synth), "--cutoff", CUTOFF, "--horizon-days", HORIZON, "--out", str(out)]
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main([*argv, "--json"]) == 0
    return out, json.loads(buffer.getvalue())


def _csv(dataset: Path, path: Path, before_ms: int | None) -> None:
    ds = load_dataset(dataset)
    e = ds.events
    if before_ms is not None:
        e = e.loc[e["timestamp"] < before_ms]
    frame = pd.DataFrame(
        {
            "user": ds.users["raw_id"].to_numpy()[e["user"].to_numpy()],
            "item": ds.items["raw_id"].to_numpy()[e["item"].to_numpy()],
            "category": ds.categories["raw_id"].to_numpy()[e["category"].to_numpy()],
            "event": np.asarray(EVENT_TYPES)[e["event"].to_numpy()],
            "time": e["timestamp"].to_numpy(),
        }
    ).sort_values(["user", "time"], kind="stable")
    frame.to_csv(path, index=False)


def test_churn_writes_predictions_metrics_and_oracle(churn_run, synth):
    out, payload = churn_run
    assert set(payload) >= {"model", "baselines", "oracle"}
    for block in (payload["model"], payload["oracle"], *payload["baselines"].values()):
        assert {"auc", "mae", "rmse", "c_index"} <= set(block)
    assert set(payload["baselines"]) >= {
        "recency",
        "frequency",
        "rfm_logistic",
        "bgnbd",
        "pareto_nbd",
        "return_model",
    }
    pred = pd.read_csv(out / "predictions.csv")
    assert {"user", "p_return", "expected_sessions", "segment", "recency_days"} <= set(pred)
    assert pred["p_return"].between(0, 1).all() and (pred["expected_sessions"] >= 0).all()
    assert pred["user"].is_unique
    events = load_dataset(synth).events
    cutoff_ms = pd.Timestamp(CUTOFF, tz="UTC").value // 1_000_000
    assert len(pred) == events.loc[events["timestamp"] < cutoff_ms, "user"].nunique()
    summary = json.loads((out / "churn.json").read_text())
    # The default blends the candidates with weights chosen on the last H days before the
    # cutoff (boosting joins them when it can be trained before that validation cutoff too).
    info = summary["info"]
    assert info["model"] == "blend"
    blend = info["blend"]
    assert {"return_model", "bgnbd", "pareto_nbd"} <= set(blend["p_weights"])
    for weights in (blend["p_weights"], blend["n_weights"]):
        assert sum(weights.values()) == pytest.approx(1.0)
    assert blend["horizon_days"] == float(HORIZON)
    assert pd.Timestamp(blend["cutoff"]) < pd.Timestamp(CUTOFF, tz="UTC")
    assert "gradient_boosting" in payload["baselines"]
    assert summary["most_at_risk"] and summary["survival_by_segment"]
    # A well-specified synthetic log: the model ranks returns far better than chance and
    # within reach of the truth (the >= 95% of the oracle target is checked at scale in
    # benchmarks/bench_churn.py).
    assert payload["model"]["auc"] > 0.75
    assert payload["model"]["auc"] >= 0.9 * payload["oracle"]["auc"]
    assert (out / "return_model.json").is_file() and (out / "metrics.json").is_file()


def test_churn_refuses_to_overwrite_without_force(churn_run, synth, capsys):
    out, _ = churn_run
    before = (out / "predictions.csv").read_bytes()
    argv = ["churn", str(synth), "--cutoff", CUTOFF, "--horizon-days", HORIZON, "--out", str(out)]
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "predictions.csv").read_bytes() == before


def test_truncated_log_gives_the_same_predictions(synth, churn_run, tmp_path):
    out, _ = churn_run
    cutoff_ms = pd.Timestamp(CUTOFF, tz="UTC").value // 1_000_000
    _csv(synth, tmp_path / "cut.csv", before_ms=cutoff_ms)
    cut = tmp_path / "cut"
    columns = "user=user,item=item,category=category,event=event,time=time"
    prepare = ["data", "prepare", "--preset", "generic", "--columns", columns]
    assert (
        main(
            [*prepare, "--input", str(tmp_path / "cut.csv"), "--out", str(cut), "--time-unit", "ms"]
        )
        == 0
    )
    argv = ["churn", str(cut), "--cutoff", CUTOFF, "--horizon-days", HORIZON]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 0
    full = pd.read_csv(out / "predictions.csv").set_index("user")
    trunc = pd.read_csv(tmp_path / "o" / "predictions.csv").set_index("user")
    full.index = full.index.astype(str)
    trunc.index = trunc.index.astype(str)
    assert sorted(full.index) == sorted(trunc.index)
    trunc = trunc.loc[full.index]
    for column in ("p_return", "expected_sessions", "recency_days", "frequency"):
        np.testing.assert_allclose(trunc[column], full[column], atol=1e-6, err_msg=column)
    assert (trunc["segment"] == full["segment"]).all()
    # The truncated log has no window: no metrics, and it says so.
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_report_has_the_retention_section(churn_run, tmp_path):
    import shutil

    from rlrec.evaluation.report import write_report

    out, _ = churn_run
    # A quickstart-like folder holding the churn output in churn/.
    shutil.copytree(out, tmp_path / "q" / "churn")
    result = write_report(tmp_path / "q", tmp_path / "r")
    assert result.sections["churn"] is True
    assert (tmp_path / "r" / "plots" / "churn.png").is_file()
    page = result.html.read_text()
    assert "Retention and churn" in page and "model AUC" in page
    at_risk = json.loads((out / "churn.json").read_text())["most_at_risk"][0]["user"]
    assert str(at_risk) in page


def test_user_date_value_log_with_a_classic_split(tmp_path, capsys):
    # A transaction log (customer, date, amount): exponential gaps, dropout after purchases.
    rng = np.random.default_rng(0)
    rows = ["customer,date,amount"]
    start = pd.Timestamp("2020-01-01")
    for u in range(300):
        rate, t = rng.gamma(1.0, 0.05), rng.uniform(0, 60)
        while t < 365:
            day = (start + pd.Timedelta(days=int(t))).date().isoformat()
            rows.append(f"c{u},{day},{rng.lognormal(3, 1):.2f}")
            if rng.random() < 0.1:
                break
            t += rng.exponential(1 / max(rate, 1e-3))
    (tmp_path / "tx.csv").write_text("\n".join(rows) + "\n")
    data = tmp_path / "tx"
    columns = ["--columns", "user=customer,time=date,value=amount", "--time-unit", "iso"]
    prepare = ["data", "prepare", "--preset", "generic", *columns]
    assert main([*prepare, "--input", str(tmp_path / "tx.csv"), "--out", str(data)]) == 0
    capsys.readouterr()
    argv = ["churn", str(data), "--cutoff", "2020-07-01", "--horizon-days", "183"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    summary = json.loads((tmp_path / "o" / "churn.json").read_text())
    # A holdout as long as the calibration leaves no full pseudo-cutoff window, and 300
    # customers give too few rows (< 1,000) at windows of a third of it for the classifier:
    # the blend of the return model and the BTYD models is chosen on the last third of the
    # calibration period (2020-03-01..07-01 from the first purchases in January).
    blend = summary["info"]["blend"]
    assert summary["info"]["model"] == "blend"
    assert set(blend["p_weights"]) == {"return_model", "bgnbd", "pareto_nbd"}
    assert 30 < blend["horizon_days"] < 183 and blend["users"] > 200
    for name in ("p_weights", "n_weights"):
        assert sum(blend[name].values()) == pytest.approx(1.0)
    # The printed summary says what the blend is and where it was chosen.
    from rlrec.workflows.churn import ChurnRun, format_churn

    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    text = format_churn(ChurnRun(out=tmp_path / "o", summary=summary, metrics=metrics))
    assert f"blend: p_return {summary['info']['blend_p_return']}" in text
    assert f"chosen on {blend['cutoff']}" in text
    assert "log_value" in summary["return_model"]["feature_names"]
    pred = pd.read_csv(tmp_path / "o" / "predictions.csv")
    assert "monetary" in pred and pred["monetary"].notna().all()
    for name in ("bgnbd", "pareto_nbd"):
        assert payload["baselines"][name]["auc"] > 0.6
    assert payload["model"]["auc"] > 0.6 and "oracle" not in payload
