"""A PreparedDataset cut into calendar periods, with folded categories: the input of analytics.

Every analysis of :mod:`rlrec.analytics` reads one :class:`PeriodLog`: the dataset's events with
their period index (``floor((timestamp - origin) / period)``, the origin at the UTC midnight
before the first event, so daily periods are calendar days), their category folded as the
transition fit folds it (the top-K categories by steps, the rest into ``__other__``,
:func:`rlrec.models.transition.fold_categories`) and the steps (runs of consecutive events on
one item in a session, the fit's unit of migration).

A log that cannot be analysed is refused here with one line that says what to do: a log
without categories, a period longer than the log, or too few periods to compare.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from rlrec.data.dataset import PreparedDataset
from rlrec.data.schema import EVENT_CODE, UNKNOWN_CATEGORY
from rlrec.errors import UserError
from rlrec.models.transition import OTHER_CATEGORY, fold_categories

__all__ = [
    "ACTIVE_VOLUME",
    "DAY_MS",
    "MIN_PERIODS",
    "PeriodLog",
    "format_duration",
    "parse_period",
    "period_log",
]

DAY_MS = 86_400_000
ACTIVE_VOLUME = 0.1
"""Share of the busiest period's events below which a period at either end is an edge."""
MIN_PERIODS = 4
"""Fewest periods an analysis needs: a trend's slope with a dispersion estimate (two degrees
of freedom left) and a demand forecast with history before a held-out period."""


_UNIT_MS = {"w": 7 * DAY_MS, "d": DAY_MS, "h": 3_600_000, "min": 60_000, "m": 60_000}


def parse_period(text: str) -> int:
    """A period such as ``1d``, ``1w``, ``12h``, ``30m`` (or ``30min``) in milliseconds.

    Raises:
        UserError: If it is not a positive number followed by one of w, d, h, m, min.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(w|d|h|min|m)\s*", str(text), flags=re.I)
    ms = int(float(match.group(1)) * _UNIT_MS[match.group(2).lower()]) if match else 0
    if ms <= 0:
        raise UserError(
            f"--period {text!r}: expected a positive duration such as 1d, 1w, 12h or 30m"
        )
    return ms


def format_duration(ms: float) -> str:
    """A short human duration: ``9.3 days``, ``5.0 h``, ``12 min``."""
    if ms >= DAY_MS:
        return f"{ms / DAY_MS:.1f} days"
    if ms >= 3_600_000:
        return f"{ms / 3_600_000:.1f} h"
    return f"{ms / 60_000:.0f} min"


def _suggest_period(span_ms: int) -> str:
    """The longest round period that cuts ``span_ms`` into at least MIN_PERIODS periods."""
    for label, ms in (("1w", 7 * DAY_MS), ("1d", DAY_MS), ("6h", 6 * 3_600_000), ("1h", 3_600_000)):
        if span_ms // ms + 1 >= MIN_PERIODS:
            return label
    return "10min"


@dataclass(frozen=True)
class PeriodLog:
    """A dataset's events in periods, with folded categories and the steps between them.

    Attributes:
        source: The dataset directory (for messages).
        period_ms: Period length in milliseconds.
        origin_ms: Start of period 0 (UTC midnight before the first event, in ms).
        n_periods: T, periods from the first event's to the last event's.
        category_ids: (K,) raw ids of the folded categories (``__other__`` last if present).
        user: (E,) int64 dataset user index of each event.
        session: (E,) int64 session of each event (events sorted by session, then step).
        category: (E,) int64 folded category of each event.
        event: (E,) int8 event code (``rlrec.data.schema.EVENT_TYPES``).
        timestamp: (E,) int64 milliseconds.
        period: (E,) int64 period index of each event, 0..T-1.
        step_start: (S,) int64 index of each step's first event (steps: runs of consecutive
            events on one item in a session).
        complete: (T,) bool, whether the log covers the whole period (the first and last
            periods usually are cut by the log's ends).
    """

    source: str
    period_ms: int
    origin_ms: int
    n_periods: int
    category_ids: tuple[str, ...]
    user: np.ndarray
    session: np.ndarray
    category: np.ndarray
    event: np.ndarray
    timestamp: np.ndarray
    period: np.ndarray
    step_start: np.ndarray
    complete: np.ndarray

    @property
    def n_categories(self) -> int:
        """K, folded categories."""
        return len(self.category_ids)

    @property
    def other(self) -> int | None:
        """Index of ``__other__``, or None when no category was folded."""
        ids = self.category_ids
        return len(ids) - 1 if ids and ids[-1] == OTHER_CATEGORY else None

    def active_range(self, min_volume: float = ACTIVE_VOLUME) -> tuple[int, int]:
        """``(lo, hi)``: the first and last period with ``min_volume`` of the peak's events.

        Periods outside are the log's edges (a few users still arriving or leaving, as in the
        synthetic log's long tail): a trend or a forecast there would read a handful of
        sessions as a shift of the whole population.
        """
        volume = np.bincount(self.period, minlength=self.n_periods)
        busy = np.flatnonzero(volume >= min_volume * volume.max())
        return int(busy[0]), int(busy[-1])

    def period_starts(self) -> list[str]:
        """(T,) ISO 8601 UTC start of each period (a date when periods are whole days)."""
        whole_days = self.period_ms % DAY_MS == 0
        out = []
        for t in range(self.n_periods):
            moment = datetime.fromtimestamp((self.origin_ms + t * self.period_ms) / 1000, UTC)
            out.append(moment.date().isoformat() if whole_days else moment.isoformat())
        return out

    def event_counts(self, codes: tuple[int, ...] | None = None) -> np.ndarray:
        """(T, K) events per period and category, of the event codes ``codes`` (None: all)."""
        keep = slice(None) if codes is None else np.isin(self.event, codes)
        k = self.n_categories
        flat = np.bincount(
            self.period[keep] * k + self.category[keep], minlength=self.n_periods * k
        )
        return flat.reshape(self.n_periods, k)

    def funnel_counts(self) -> np.ndarray:
        """(T, K, 3) views, carts and buys per period and category."""
        return np.stack(
            [self.event_counts((EVENT_CODE[name],)) for name in ("view", "cart", "buy")], axis=2
        )

    def switches(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Category switches between consecutive steps of a session.

        Returns:
            ``index`` (event index of the step switched to: its period, time and session
            are ``period[index]``, ...), ``current`` and ``following`` categories, each
            (n_switches,).
        """
        start = self.step_start
        same = self.session[start[1:]] == self.session[start[:-1]]
        cur = self.category[start[:-1]]
        nxt = self.category[start[1:]]
        moved = same & (cur != nxt)
        return start[1:][moved], cur[moved], nxt[moved]


def period_log(ds: PreparedDataset, period_ms: int, top_k: int = 50) -> PeriodLog:
    """Cut ``ds`` into periods of ``period_ms`` and fold its categories to the top ``top_k``.

    Raises:
        UserError: If the log has fewer than 2 known categories, if the period is longer
            than the log, or if it gives fewer than :data:`MIN_PERIODS` periods.
    """
    frame = ds.events
    if len(frame) == 0:
        raise UserError(f"{ds.path}: the dataset has no events; prepare a log with events")
    category = frame["category"].to_numpy(np.int64)
    raw = ds.categories["raw_id"].astype(str).to_numpy()
    known = np.unique(category[raw[category] != UNKNOWN_CATEGORY])
    if len(known) < 2:
        raise UserError(
            f"{ds.path}: the log has {len(known)} known categor{'y' if len(known) == 1 else 'ies'}"
            "; trends, migration drift, cross-sell and category demand need categories: prepare "
            "the log again with its category column, or with --derive-categories to derive "
            "them from item co-occurrence (item-level analyses: 'rlrec data stats', "
            "'rlrec encoder eval')"
        )
    timestamp = frame["timestamp"].to_numpy(np.int64)
    first, last = int(timestamp.min()), int(timestamp.max())
    span = last - first
    origin = first - first % DAY_MS if period_ms >= DAY_MS or DAY_MS % period_ms == 0 else first
    period = (timestamp - origin) // period_ms
    n_periods = int(period.max()) + 1
    where = f"{ds.path}: the log spans {format_duration(span)}"
    if period_ms > span:
        raise UserError(
            f"{where}, shorter than the period {format_duration(period_ms)}; analyze compares "
            f"periods: pass a shorter --period, e.g. {_suggest_period(span)}"
        )
    if n_periods < MIN_PERIODS:
        raise UserError(
            f"{where}: {n_periods} period{'s' if n_periods > 1 else ''} of "
            f"{format_duration(period_ms)}; analyze needs at least {MIN_PERIODS} (trends fit "
            f"a slope, demand holds periods out): pass a shorter --period, e.g. "
            f"{_suggest_period(span)}"
        )
    session = frame["session"].to_numpy(np.int64)
    item = frame["item"].to_numpy(np.int64)
    # The same steps as rlrec.models.calibration.collapse_steps, whose per-step arrays do not
    # keep the index of the step's first event (needed here for the step's period).
    new_step = np.r_[True, (session[1:] != session[:-1]) | (item[1:] != item[:-1])]
    step_start = np.flatnonzero(new_step)
    fold, category_ids = fold_categories(ds, category[step_start], top_k)
    bounds = origin + np.arange(n_periods + 1, dtype=np.int64) * period_ms
    complete = (bounds[:-1] >= first) & (bounds[1:] <= last + 1)
    return PeriodLog(
        source=str(ds.path),
        period_ms=int(period_ms),
        origin_ms=int(origin),
        n_periods=n_periods,
        category_ids=tuple(category_ids),
        user=frame["user"].to_numpy(np.int64),
        session=session,
        category=fold[category],
        event=frame["event"].to_numpy(np.int8),
        timestamp=timestamp,
        period=period,
        step_start=step_start,
        complete=complete,
    )
