"""Property-based tests of sessionization and the time split."""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlrec.data.dataset import load_dataset
from rlrec.data.prepare import PrepareConfig, prepare
from rlrec.data.sessionize import collect_sessions, flag_events, number_events
from rlrec.data.split import split_code_sql, time_cutoffs

# Small ids and times on a coarse grid, so that duplicates, equal timestamps and gaps of
# exactly the threshold all occur often.
events_strategy = st.lists(
    st.tuples(
        st.integers(0, 3),  # user
        st.integers(0, 4),  # item
        st.integers(0, 4),  # event code
        st.integers(0, 40).map(lambda k: k * 30_000),  # time, ms (30 s grid)
    ),
    min_size=1,
    max_size=60,
)


# One connection for all examples (tables are replaced each time): connecting dominates the
# cost of an example otherwise.
_CON = duckdb.connect()


def _run_sql(rows: list[tuple[int, int, int, int]], gap_ms: int, fractions: tuple[float, ...]):
    frame = pd.DataFrame(rows, columns=["user", "item", "event", "ts"]).astype(
        {"user": "int64", "item": "int64", "event": "int8", "ts": "int64"}
    )
    con = _CON
    con.register("frame", frame)
    con.execute("CREATE OR REPLACE TABLE src AS SELECT * FROM frame")
    dups = flag_events(con, "src", "flagged", ["user", "item", "event", "ts"], gap_ms)
    valid, test = time_cutoffs(con, "(SELECT ts FROM flagged WHERE NOT dup)", fractions)
    cuts = number_events(con, "flagged", "sessd", lambda ts: split_code_sql(valid, test, ts))
    n_sessions, short = collect_sessions(con, "sessd", "kept", 1)
    out = con.execute("SELECT user, item, event, ts, split, sess, pos FROM sessd").df()
    con.unregister("frame")
    return frame, out, dups, (valid, test), cuts, n_sessions, short


@settings(max_examples=40, deadline=None)
@given(
    rows=events_strategy,
    gap_ms=st.sampled_from([0, 30_000, 60_000, 300_000]),
    fractions=st.sampled_from([(0.8, 0.1, 0.1), (0.5, 0.5, 0.0), (1.0, 0.0, 0.0), (0.4, 0.3, 0.3)]),
)
def test_sessionization_properties(
    rows: list[tuple[int, int, int, int]], gap_ms: int, fractions: tuple[float, float, float]
) -> None:
    frame, out, dups, (valid, test), cuts, n_sessions, short = _run_sql(rows, gap_ms, fractions)
    distinct = frame.drop_duplicates()
    # Every distinct event is kept exactly once, in exactly one session.
    assert dups == len(frame) - len(distinct)
    assert len(out) == len(distinct)
    pd.testing.assert_frame_equal(
        out[["user", "item", "event", "ts"]]
        .sort_values(["user", "item", "event", "ts"])
        .reset_index(drop=True)
        .astype(distinct.dtypes.to_dict()),
        distinct.sort_values(["user", "item", "event", "ts"]).reset_index(drop=True),
    )
    assert out["sess"].notna().all() and short == 0
    assert n_sessions == out["sess"].nunique()
    # A session has one user and one split, and its events are consecutive in pos.
    per = out.groupby("sess")
    assert (per["user"].nunique() == 1).all() and (per["split"].nunique() == 1).all()
    assert ((per["pos"].max() - per["pos"].min() + 1) == per.size()).all()
    ordered = out.sort_values("pos")
    same = ordered["sess"].to_numpy()[1:] == ordered["sess"].to_numpy()[:-1]
    gaps = np.diff(ordered["ts"].to_numpy())
    # No session spans a gap longer than the threshold; time never runs backwards in one.
    assert (gaps[same] <= gap_ms).all() and (gaps[same] >= 0).all()
    # Consecutive sessions of one user are separated by a longer gap or by a split cut-off.
    same_user = ordered["user"].to_numpy()[1:] == ordered["user"].to_numpy()[:-1]
    boundary = same_user & ~same
    split = ordered["split"].to_numpy()
    assert ((gaps[boundary] > gap_ms) | (split[1:][boundary] != split[:-1][boundary])).all()
    assert cuts == int(((gaps <= gap_ms) & boundary).sum())
    # Split cut-offs: train < valid_start <= valid < test_start <= test.
    ts, code = out["ts"].to_numpy(), out["split"].to_numpy()
    assert (ts[code == 0] < valid).all()
    assert ((ts[code == 1] >= valid) & (ts[code == 1] < test)).all()
    assert (ts[code == 2] >= test).all()
    if (code == 0).any() and (code > 0).any():
        assert ts[code == 0].max() < ts[code > 0].min()


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=events_strategy, by_session=st.booleans())
def test_prepared_dataset_properties(
    rows: list[tuple[int, int, int, int]], by_session: bool
) -> None:
    frame = pd.DataFrame(rows, columns=["user", "item", "event", "time"])
    if by_session:
        frame["session"] = frame["time"] // 300_000  # given session ids
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "log.parquet"
        frame.to_parquet(src, index=False)
        ds = load_dataset(
            prepare([src], "canonical", Path(tmp) / "ds", PrepareConfig(session_gap_seconds=60))
        )
    ev = ds.events
    rows_meta = ds.meta["rows"]
    assert rows_meta["kept"] + sum(rows_meta["dropped"].values()) == rows_meta["read"] == len(rows)
    assert len(ev) == len(frame.drop_duplicates())
    sessions = ev["session"].to_numpy()
    assert (np.diff(sessions) >= 0).all()
    np.testing.assert_array_equal(np.unique(sessions), np.arange(ds.meta["vocab"]["sessions"]))
    for _, group in ev.groupby("session"):
        np.testing.assert_array_equal(group["step"], np.arange(len(group)))
        assert group["user"].nunique() == 1 and group["split"].nunique() == 1
        assert (np.diff(group["timestamp"]) >= 0).all()
        if not by_session:
            assert (np.diff(group["timestamp"]) <= 60_000).all()
    cut = ds.meta["split"]["cutoffs_ms"]
    assert (ev.loc[ev["split"] == 0, "timestamp"] < cut["valid"]).all()
    assert (ev.loc[ev["split"] == 2, "timestamp"] >= cut["test"]).all()
