"""Reading Open Bandit Dataset logs into BanditFeedback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rlrec.data.bandit import BanditFeedback, load_obd
from rlrec.errors import UserError

HEADER = "idx,timestamp,item_id,position,click,propensity_score,user_feature_0,user-item_affinity_0,user-item_affinity_1,user-item_affinity_2"  # noqa: E501
ROWS = [
    "0,2019-11-24 00:00:01,0,1,0,0.5,a,0,0,1",
    "1,2019-11-24 00:00:02,2,2,1,0.25,b,1,0,0",
    "2,2019-11-24 00:00:03,1,1,0,1.0,a,0,0,0",
]


def write(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "log.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_small_log_is_read(tmp_path) -> None:
    feedback = load_obd(write(tmp_path, ROWS))
    assert feedback.n_rounds == 3 and feedback.n_actions == 3 and feedback.len_list == 2
    np.testing.assert_array_equal(feedback.action, [0, 2, 1])
    np.testing.assert_array_equal(feedback.position, [0, 1, 0])  # 1-based in the file
    np.testing.assert_array_equal(feedback.reward, [0, 1, 0])
    np.testing.assert_array_equal(feedback.pscore, [0.5, 0.25, 1.0])
    np.testing.assert_array_equal(feedback.context, [[1, 0], [0, 1], [1, 0]])
    assert feedback.affinity is not None
    np.testing.assert_array_equal(feedback.affinity[0], [0, 0, 1])
    assert feedback.mean_reward == pytest.approx(1 / 3)


def test_item_context_sets_the_action_space(tmp_path) -> None:
    items = tmp_path / "items.csv"
    items.write_text(
        ",item_id,item_feature_0,item_feature_1\n0,1,0.5,x\n1,0,-0.5,y\n2,2,0.0,x\n3,3,1.0,z\n"
    )
    rows = [r.rsplit(",", 3)[0] for r in ROWS]
    header = HEADER.rsplit(",", 3)[0]
    feedback = load_obd(write(tmp_path, rows, header), items)
    assert feedback.n_actions == 4
    assert feedback.action_context is not None
    # sorted by item_id: item 0 is the second row; numeric feature then one-hot of x/y/z
    np.testing.assert_array_equal(feedback.action_context[0], [-0.5, 0, 1, 0])
    np.testing.assert_array_equal(feedback.action_context[1], [0.5, 1, 0, 0])


def test_open_bandit_dataset_files(obd_dir) -> None:
    for name in ("random", "bts"):
        feedback = load_obd(obd_dir / f"{name}.csv", obd_dir / f"{name}_item_context.csv")
        assert isinstance(feedback, BanditFeedback)
        assert feedback.n_rounds == 10_000
        assert (feedback.n_actions, feedback.len_list) == (80, 3)
        assert set(np.unique(feedback.position)) == {0, 1, 2}
        # four one-hot encoded user features: every row has exactly four ones
        np.testing.assert_array_equal(feedback.context.sum(axis=1), 4.0)
        assert feedback.affinity is not None and feedback.affinity.shape == (10_000, 80)
        assert feedback.action_context is not None and feedback.action_context.shape[0] == 80
    assert load_obd(obd_dir / "random.csv").mean_reward == pytest.approx(0.0038)
    assert load_obd(obd_dir / "bts.csv").mean_reward == pytest.approx(0.0042)


def _replace(row: int, column: str, value: str) -> list[str]:
    names = HEADER.split(",")
    rows = [r.split(",") for r in ROWS]
    rows[row][names.index(column)] = value
    return [",".join(r) for r in rows]


INVALID = [
    ("propensity zero", _replace(1, "propensity_score", "0"), r"line 3, column propensity_score"),
    ("propensity > 1", _replace(0, "propensity_score", "1.5"), r"line 2, .*\(0, 1\]"),
    ("click 2", _replace(2, "click", "2"), r"line 4, column click: must be 0 or 1"),
    ("position 0", _replace(0, "position", "0"), r"column position: must be a 1-based slot"),
    ("item negative", _replace(0, "item_id", "-1"), r"column item_id: must be >= 0"),
    ("item fractional", _replace(0, "item_id", "1.5"), r"column item_id: expected an integer"),
    ("missing click", _replace(1, "click", ""), r"line 3, column click: expected a finite number"),
    ("text pscore", _replace(1, "propensity_score", "high"), r"expected a finite number, got"),
    ("missing user feature", _replace(1, "user_feature_0", ""), r"column user_feature_0: missing"),
]


@pytest.mark.parametrize(("case", "rows", "match"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_logs(tmp_path, case: str, rows: list[str], match: str) -> None:
    with pytest.raises(UserError, match=match):
        load_obd(write(tmp_path, rows))


def test_file_level_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="no such file"):
        load_obd(tmp_path / "missing.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(UserError, match="the file is empty"):
        load_obd(empty)
    with pytest.raises(UserError, match="the log has no rows"):
        load_obd(write(tmp_path, [], name="header_only.csv"))
    with pytest.raises(UserError, match=r"missing column.*propensity_score"):
        load_obd(write(tmp_path, ["0,1,0"], header="item_id,position,click", name="cols.csv"))
    with pytest.raises(UserError, match="must be < n_actions = 2"):
        load_obd(write(tmp_path, ROWS, name="small.csv"), n_actions=2)
    bad_items = tmp_path / "items.csv"
    bad_items.write_text("item_id,item_feature_0\n0,1.0\n2,1.0\n")
    with pytest.raises(UserError, match=r"item_id must list every item 0\.\.1 exactly once"):
        load_obd(write(tmp_path, ROWS, name="log2.csv"), bad_items)
    affinity_gap = HEADER.replace("user-item_affinity_2", "user-item_affinity_5")
    with pytest.raises(UserError, match=r"user-item_affinity_\* columns must be numbered 0\.\.2"):
        load_obd(write(tmp_path, ROWS, affinity_gap, name="gap.csv"))


def test_feedback_dataclass_validates_shapes() -> None:
    ok = {
        "action": np.array([0, 1]),
        "position": np.array([0, 0]),
        "reward": np.array([0.0, 1.0]),
        "pscore": np.array([0.5, 0.5]),
        "context": np.zeros((2, 0)),
        "n_actions": 2,
        "len_list": 1,
    }
    BanditFeedback(**ok)
    with pytest.raises(UserError, match="reward has shape"):
        BanditFeedback(**{**ok, "reward": np.zeros(3)})
    with pytest.raises(UserError, match=r"actions must lie in \[0, 2\)"):
        BanditFeedback(**{**ok, "action": np.array([0, 2])})
    with pytest.raises(UserError, match=r"propensity scores must lie in \(0, 1\]"):
        BanditFeedback(**{**ok, "pscore": np.array([0.0, 1.0])})
    with pytest.raises(UserError, match="no rounds"):
        BanditFeedback(**{**ok, "action": np.zeros(0, dtype=int)})
