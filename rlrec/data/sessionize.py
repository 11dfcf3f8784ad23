"""Sessionization and session numbering, as DuckDB SQL that runs out of core.

Two ways to cut a user's events into sessions:

* **by a given session id** (DIGINETICA, OBD, any log with a session column): the session
  key is the raw id (within its user);
* **by inactivity**: events of one user sorted by time; a new session starts wherever the
  gap to the previous event is *longer* than ``gap_ms`` (a gap of exactly ``gap_ms`` stays in
  the session).

Events with equal timestamps are ordered by event code and then item, so that a view sorts
before the cart or buy logged in the same second and the result does not depend on file order.

After the time split (:mod:`rlrec.data.split`), a session is the triple
``(user, session key, split)``: a session that straddles a cut-off is cut in two.
:func:`number_sessions` gives the kept sessions contiguous ids ``0..S-1`` ordered by
``(user index, start time)``.
"""

from __future__ import annotations

import duckdb

EVENT_ORDER = "ts, event, item"
"""Order of events within a user or a session (ties broken deterministically)."""


def sessionize(
    con: duckdb.DuckDBPyConnection,
    source: str,
    target: str,
    gap_ms: int | None,
    split_sql: str = "CAST(0 AS TINYINT)",
) -> int:
    """Create table ``target``: ``source``'s rows plus ``split``, ``sess`` and ``step``.

    ``(user, sess, split)`` identifies a session; ``step`` (INTEGER) is the 0-based position
    of the event within it, in :data:`EVENT_ORDER`.

    Args:
        con: DuckDB connection holding table ``source`` (columns ``user, item, event, ts``,
            and ``session`` when ``gap_ms`` is None).
        source: Input table name.
        target: Output table name (replaced if it exists).
        gap_ms: Inactivity gap in milliseconds; None to use the ``session`` column as key.
        split_sql: SQL giving each event's split code from ``ts``
            (:func:`rlrec.data.split.split_code_sql`); a session whose events fall in two
            splits is cut in two.

    Returns:
        How many extra sessions the split cut made.
    """
    if gap_ms is None:
        con.execute(
            f"""
            CREATE OR REPLACE TABLE {target} AS
            SELECT *, CAST(row_number() OVER (PARTITION BY user, sess, split
                                              ORDER BY {EVENT_ORDER}) - 1 AS INTEGER) AS step
            FROM (SELECT *, session AS sess, {split_sql} AS split FROM {source})
            """
        )
        row = con.execute(
            f"SELECT count(*) FROM (SELECT DISTINCT user, sess, split FROM {target})"
        ).fetchall()[0]
        base = con.execute(
            f"SELECT count(*) FROM (SELECT DISTINCT user, sess FROM {target})"
        ).fetchall()[0]
        return int(row[0]) - int(base[0])
    if gap_ms < 0:
        raise ValueError(f"gap_ms must be >= 0, got {gap_ms}")
    # Inner pass (one sort): each event's position within its user and whether it starts a
    # session (1: first event or a gap longer than gap_ms; 2: the split changes, a cut).
    # Outer pass: the session number is the running count of starts, and the step is the
    # distance to the latest start; both use one window ordered by the integer position.
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {target} AS
        SELECT * EXCLUDE (pos),
               sum(CASE WHEN new_session > 0 THEN 1 ELSE 0 END) OVER w AS sess,
               CAST(pos - max(CASE WHEN new_session > 0 THEN pos END) OVER w AS INTEGER)
                   AS step
        FROM (
            SELECT *,
                   row_number() OVER v AS pos,
                   CAST(CASE WHEN lag(ts) OVER v IS NULL THEN 1
                             WHEN ts - lag(ts) OVER v > {int(gap_ms)} THEN 1
                             WHEN split <> lag(split) OVER v THEN 2
                             ELSE 0 END AS TINYINT) AS new_session
            FROM (SELECT *, {split_sql} AS split FROM {source})
            WINDOW v AS (PARTITION BY user ORDER BY {EVENT_ORDER})
        )
        WINDOW w AS (PARTITION BY user ORDER BY pos ROWS UNBOUNDED PRECEDING)
        """
    )
    cuts = con.execute(f"SELECT count(*) FILTER (WHERE new_session = 2) FROM {target}").fetchall()
    return int(cuts[0][0])


def collect_sessions(
    con: duckdb.DuckDBPyConnection, events: str, target: str, min_length: int = 1
) -> tuple[int, int]:
    """Create table ``target`` with one row per kept session.

    Args:
        con: DuckDB connection.
        events: Table with ``user, sess, split, ts`` (the output of :func:`sessionize`).
        target: Output table: ``user, sess, split`` (the key), ``start`` (ms), ``n`` (events).
        min_length: Sessions with fewer events are not kept.

    Returns:
        ``(sessions kept, events in sessions not kept)``.
    """
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _all_sessions AS
        SELECT user, sess, split, min(ts) AS start, count(*) AS n
        FROM {events} GROUP BY user, sess, split
        """
    )
    row = con.execute(
        f"""
        SELECT count(*) FILTER (WHERE n >= {int(min_length)}),
               coalesce(sum(n) FILTER (WHERE n < {int(min_length)}), 0)
        FROM _all_sessions
        """
    ).fetchall()[0]
    assert row is not None
    con.execute(
        f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM _all_sessions "
        f"WHERE n >= {int(min_length)}"
    )
    con.execute("DROP TABLE _all_sessions")
    return int(row[0]), int(row[1])


def number_sessions(con: duckdb.DuckDBPyConnection, sessions: str, users: str, target: str) -> None:
    """Create ``target``: ``sessions`` plus ``user_idx`` and contiguous ``session`` ids.

    Ids run ``0..S-1`` ordered by (user index, start time), ties by session key and split.

    Args:
        con: DuckDB connection.
        sessions: Table from :func:`collect_sessions`.
        users: Table ``(raw, idx)`` mapping raw user ids to user indices.
        target: Output table name.
    """
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {target} AS
        SELECT s.*, u.idx AS user_idx,
               row_number() OVER (ORDER BY u.idx, s.start, s.sess, s.split) - 1 AS session
        FROM {sessions} s JOIN {users} u ON s.user = u.raw
        """
    )
