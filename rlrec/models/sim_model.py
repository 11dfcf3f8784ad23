"""The SimModel: the fitted parameters of the user model that drives the simulator.

The user model (the same one the synthetic generator draws from, see
``docs/architecture.md#the-user-model``) has a hidden state per user: the current interest
category ``c``, the streak ``s`` (how many consecutive steps the user has spent in ``c``) and the
step ``t`` within the session. Its organic behaviour, what a user does with no recommender, is:

* **stay or switch**: stay in ``c`` with probability ``stay_by_streak[min(s, S) - 1]``
  (interest saturation: this falls as the streak grows); otherwise switch to ``c'`` with
  probability ``switch_matrix[c, c']`` (a row-stochastic matrix with a zero diagonal).
* **item**: inside the chosen category, items are drawn by ``item_popularity``.
* **funnel**: an engaged item is carted with ``p_cart[c]`` and bought with ``p_buy[c]``.
* **leave**: after step ``t`` (1-based) the session ends with ``leave_hazard[min(t, T) - 1]``.

So the interest distribution over the next category, the hidden state that an oracle may see,
is ``interest = stay * onehot(c) + (1 - stay) * switch_matrix[c]``: this is the migration
model ``p(y_{t+1} | y_t, streak)``. Its streak-averaged form is :meth:`SimModel.migration_matrix`.

A recommended item of category ``k`` is engaged with :func:`engage_probability`, a saturating
response below ``engage_ceiling``; the env adds how engagement pulls interest and changes the
leave hazard (``leave_engaged_factor``, ``leave_miss_factor``, and boredom: after an engaged
step whose new streak ``s'`` exceeds ``leave_streak_start``, the hazard is multiplied by
``leave_streak_factor ** (s' - leave_streak_start)``).

On disk (a directory): ``arrays.npz`` (every array below) and ``sim_model.json`` (scalars,
category ids, and each parameter's provenance: ``fitted``, ``default`` or ``user``).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rlrec.errors import UserError, quote_value

__all__ = [
    "ARRAYS_FILE",
    "ARRAY_FIELDS",
    "PARAMS_FILE",
    "SCALAR_FIELDS",
    "SIM_SCHEMA_VERSION",
    "Provenance",
    "SimModel",
    "Source",
    "engage_probability",
    "load_sim_model",
    "saturate",
]

SIM_SCHEMA_VERSION = 2  # 2: engage_ceiling, leave_streak_factor, leave_streak_start
ARRAYS_FILE = "arrays.npz"
PARAMS_FILE = "sim_model.json"

Source = Literal["fitted", "default", "user"]

ARRAY_FIELDS = (
    "switch_matrix",
    "stay_by_streak",
    "initial_category",
    "leave_hazard",
    "item_ids",
    "item_category",
    "item_popularity",
    "p_cart",
    "p_buy",
    "category_of_dataset_category",
)
SCALAR_FIELDS = (
    "engage_base_rate",
    "engage_interest_exponent",
    "engage_popularity_exponent",
    "leave_engaged_factor",
    "leave_miss_factor",
    "engage_ceiling",
    "leave_streak_factor",
    "leave_streak_start",
)


@dataclass(frozen=True)
class Provenance:
    """Where a parameter's value came from.

    Attributes:
        source: ``fitted`` from data, a ``default``, or set by the ``user``.
        detail: One line on how (e.g. the smoothing chosen, the data it was fitted on).
    """

    source: Source
    detail: str = ""


@dataclass(frozen=True)
class SimModel:
    """Parameters of the user model; see the module docstring for the dynamics.

    Shapes: ``K`` sim categories (the top-K of the data plus an ``other`` category when
    folded), ``S`` streak bins, ``T`` hazard steps, ``N`` catalog items.

    Attributes:
        category_ids: (K,) raw category id of each sim category (``__other__`` for the fold).
        switch_matrix: (K, K) P(next = c' | switch, current = c); zero diagonal, rows sum to 1.
        stay_by_streak: (S,) P(stay | streak s) for s = 1..S; the last bin applies to s >= S.
        initial_category: (K,) distribution of a session's first category.
        leave_hazard: (T,) P(session ends right after step t), t = 1..T; last applies beyond.
        item_ids: (N,) dataset item index of each catalog item (the env's action a is
            ``item_ids[a]``), ordered by popularity, most popular first.
        item_category: (N,) sim category of each catalog item.
        item_popularity: (N,) P(item | its category), summing to 1 within each category.
        p_cart: (K,) P(cart | engaged) per category.
        p_buy: (K,) P(buy | engaged) per category.
        category_of_dataset_category: (C,) sim category of each dataset category index.
        engage_base_rate: Engagement probability of an item of average within-category
            popularity in a category of average interest (1/K); see
            :func:`engage_probability`.
        engage_interest_exponent: Elasticity of engagement to the user's interest in the
            item's category (see :func:`engage_probability`).
        engage_popularity_exponent: Elasticity of engagement to the item's within-category
            popularity.
        leave_engaged_factor: Multiplier on the leave hazard after an engaged step (< 1).
        leave_miss_factor: Multiplier on the leave hazard per consecutive missed
            recommendation (> 1).
        engage_ceiling: The saturation level m of :func:`engage_probability`, in (0, 1]: no
            item is engaged with a probability above it.
        leave_streak_factor: Boredom (>= 1): after an engaged step whose new streak ``s'``
            exceeds ``leave_streak_start``, the leave hazard is multiplied by
            ``leave_streak_factor ** (s' - leave_streak_start)`` (being fed more of the same
            makes users leave).
        leave_streak_start: The streak s0 (>= 1, a whole number) beyond which boredom applies.
        provenance: Parameter name -> :class:`Provenance`.
        info: Free-form facts about the fit (dataset path, sizes, smoothing chosen, ...).
    """

    category_ids: tuple[str, ...]
    switch_matrix: np.ndarray
    stay_by_streak: np.ndarray
    initial_category: np.ndarray
    leave_hazard: np.ndarray
    item_ids: np.ndarray
    item_category: np.ndarray
    item_popularity: np.ndarray
    p_cart: np.ndarray
    p_buy: np.ndarray
    category_of_dataset_category: np.ndarray
    engage_base_rate: float = 0.1
    engage_interest_exponent: float = 1.0
    engage_popularity_exponent: float = 0.5
    leave_engaged_factor: float = 0.8
    leave_miss_factor: float = 1.15
    engage_ceiling: float = 0.9
    leave_streak_factor: float = 1.2
    leave_streak_start: float = 3.0
    provenance: dict[str, Provenance] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_categories(self) -> int:
        """K, the number of sim categories."""
        return len(self.category_ids)

    @property
    def n_items(self) -> int:
        """N, the catalog size (the env's action count)."""
        return len(self.item_ids)

    def validate(self, where: str = "SimModel") -> None:
        """Check shapes and probability constraints.

        Raises:
            UserError: Naming the inconsistent parameter.
        """
        k = self.n_categories
        n = self.n_items
        if k < 2:
            raise UserError(
                f"{where}: {k} category; the interest-migration model needs at least 2 "
                "(a log without categories needs --derive-categories at prepare time)"
            )
        expected = {
            "switch_matrix": (k, k),
            "initial_category": (k,),
            "item_category": (n,),
            "item_popularity": (n,),
            "p_cart": (k,),
            "p_buy": (k,),
        }
        for name, shape in expected.items():
            got = np.shape(getattr(self, name))
            if got != shape:
                raise UserError(f"{where}: {name} has shape {got}, expected {shape}")
        for name in ("stay_by_streak", "leave_hazard", "item_ids", "category_of_dataset_category"):
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 1 or len(arr) == 0:
                raise UserError(f"{where}: {name} must be a non-empty 1-d array")
        probs = ("switch_matrix", "stay_by_streak", "initial_category", "leave_hazard")
        for name in (*probs, "item_popularity", "p_cart", "p_buy"):
            arr = np.asarray(getattr(self, name), dtype=float)
            if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
                raise UserError(f"{where}: {name} must hold probabilities in [0, 1]")
        if not np.allclose(self.switch_matrix.sum(axis=1), 1.0, atol=1e-6):
            raise UserError(f"{where}: switch_matrix rows must sum to 1")
        if not np.allclose(np.diag(self.switch_matrix), 0.0, atol=1e-9):
            raise UserError(f"{where}: switch_matrix must have a zero diagonal")
        if not np.isclose(self.initial_category.sum(), 1.0, atol=1e-6):
            raise UserError(f"{where}: initial_category must sum to 1")
        ic = np.asarray(self.item_category)
        cdc = np.asarray(self.category_of_dataset_category)
        for name, arr in (("item_category", ic), ("category_of_dataset_category", cdc)):
            if not np.issubdtype(arr.dtype, np.integer):
                raise UserError(f"{where}: {name} must hold integer category indices")
        if ic.min() < 0 or ic.max() >= k:
            raise UserError(f"{where}: item_category holds a category outside 0..{k - 1}")
        if cdc.min() < 0 or cdc.max() >= k:
            raise UserError(f"{where}: category_of_dataset_category outside 0..{k - 1}")
        sums = np.bincount(ic, weights=self.item_popularity, minlength=k)
        present = np.bincount(ic, minlength=k) > 0
        if not np.allclose(sums[present], 1.0, atol=1e-6):
            raise UserError(f"{where}: item_popularity must sum to 1 within each category")
        if not 0 < self.engage_base_rate < 1:
            raise UserError(f"{where}: engage_base_rate must be in (0, 1)")
        if not 0 < self.leave_engaged_factor <= 1 or self.leave_miss_factor < 1:
            raise UserError(
                f"{where}: need 0 < leave_engaged_factor <= 1 and leave_miss_factor >= 1"
            )
        if not 0 < self.engage_ceiling <= 1:
            raise UserError(f"{where}: engage_ceiling must be in (0, 1]")
        if not self.leave_streak_factor >= 1:
            raise UserError(f"{where}: leave_streak_factor must be >= 1")
        start = self.leave_streak_start
        if not (np.isfinite(start) and start >= 1 and float(start).is_integer()):
            raise UserError(f"{where}: leave_streak_start must be a whole number >= 1")

    def stay_probability(self, streak: np.ndarray) -> np.ndarray:
        """P(stay) for streak lengths ``streak`` (any shape, ints >= 1)."""
        idx = np.clip(np.asarray(streak) - 1, 0, len(self.stay_by_streak) - 1)
        return self.stay_by_streak[idx]

    def hazard(self, step: np.ndarray) -> np.ndarray:
        """Organic leave probability right after 1-based step ``step`` (any shape)."""
        idx = np.clip(np.asarray(step) - 1, 0, len(self.leave_hazard) - 1)
        return self.leave_hazard[idx]

    def interest(self, category: np.ndarray, streak: np.ndarray) -> np.ndarray:
        """The next-category distribution of users in state (category, streak).

        Args:
            category: (B,) int current category.
            streak: (B,) int streak length, >= 1.

        Returns:
            (B, K) rows summing to 1.
        """
        stay = self.stay_probability(streak)[:, None]  # (B, 1)
        out = (1.0 - stay) * self.switch_matrix[category]  # (B, K)
        out[np.arange(len(category)), category] += stay[:, 0]
        return out

    def migration_matrix(self, streak_weights: np.ndarray | None = None) -> np.ndarray:
        """The streak-averaged migration matrix A, A[c, c'] = P(y_{t+1} = c' | y_t = c).

        Args:
            streak_weights: (S,) how often each streak bin occurs; uniform over bins when None.
                A fit passes the empirical streak distribution.

        Returns:
            (K, K) row-stochastic matrix.
        """
        w = np.ones(len(self.stay_by_streak)) if streak_weights is None else streak_weights
        stay = float(np.dot(w, self.stay_by_streak) / np.sum(w))
        return stay * np.eye(self.n_categories) + (1 - stay) * self.switch_matrix

    def save(self, out: str | os.PathLike[str], force: bool = False) -> Path:
        """Write the model to directory ``out`` atomically; replace a model only with ``force``."""
        from rlrec.data.dataset import atomic_directory, write_json_atomic

        with atomic_directory(out, "sim", force) as tmp:
            arrays = {name: np.asarray(getattr(self, name)) for name in ARRAY_FIELDS}
            np.savez(tmp / ARRAYS_FILE, **arrays)  # type: ignore[arg-type]
            payload = {
                "schema_version": SIM_SCHEMA_VERSION,
                "category_ids": list(self.category_ids),
                **{name: float(getattr(self, name)) for name in SCALAR_FIELDS},
                "provenance": {
                    k: {"source": p.source, "detail": p.detail} for k, p in self.provenance.items()
                },
                "info": self.info,
            }
            write_json_atomic(tmp / PARAMS_FILE, payload)
        return Path(out)


def load_sim_model(path: str | os.PathLike[str]) -> SimModel:
    """Load a SimModel directory written by :meth:`SimModel.save`.

    Raises:
        UserError: If files are missing, unreadable or inconsistent.
    """
    root = Path(path)
    params_file, arrays_file = root / PARAMS_FILE, root / ARRAYS_FILE
    for file in (params_file, arrays_file):
        if not file.is_file():
            raise UserError(f"{root}: missing {file.name}; fit a model with 'rlrec fit'")
    try:
        params = json.loads(params_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = (
            f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        )
        raise UserError(f"{params_file}: invalid JSON{where}; fit the model again") from None
    if not isinstance(params, dict):
        raise UserError(f"{params_file}: expected a JSON object; fit the model again")
    if params.get("schema_version") != SIM_SCHEMA_VERSION:
        raise UserError(
            f"{params_file}: schema_version {quote_value(params.get('schema_version'))}, expected "
            f"{SIM_SCHEMA_VERSION}; fit the model again"
        )
    try:
        with np.load(arrays_file, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in ARRAY_FIELDS}
    except KeyError as exc:
        raise UserError(
            f"{arrays_file}: missing array {exc.args[0]}; fit the model again"
        ) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # A truncated or overwritten archive: zipfile and zlib raise their own errors.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"{arrays_file}: unreadable ({first}); fit the model again") from None
    for name, arr in arrays.items():
        if not (np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)):
            raise UserError(
                f"{arrays_file}: array {name} has dtype {arr.dtype}, expected numbers; "
                "fit the model again"
            )
    missing = [name for name in (*SCALAR_FIELDS, "category_ids") if name not in params]
    if missing:
        raise UserError(f"{params_file}: missing {', '.join(missing)}; fit the model again")
    scalars: dict[str, float] = {}
    for name in SCALAR_FIELDS:
        value = params[name]
        # bool is an int to Python, and float("0.1") would accept a string: both are refused.
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise UserError(
                f"{params_file}: {name} must be a finite number, got {quote_value(value)}; "
                "fit the model again or fix the value"
            )
        scalars[name] = float(value)
    if not isinstance(params["category_ids"], list):
        raise UserError(f"{params_file}: category_ids must be a list; fit the model again")
    raw_provenance = params.get("provenance", {})
    info = params.get("info", {})
    if not isinstance(raw_provenance, dict) or not isinstance(info, dict):
        raise UserError(f"{params_file}: provenance and info must be objects; fit the model again")
    provenance = {}
    for k, v in raw_provenance.items():
        if not isinstance(v, dict) or not isinstance(v.get("source"), str):
            raise UserError(
                f"{params_file}: provenance of {k} must be an object with a 'source'; "
                "fit the model again"
            )
        provenance[k] = Provenance(source=v["source"], detail=str(v.get("detail", "")))
    try:
        return SimModel(
            category_ids=tuple(str(c) for c in params["category_ids"]),
            **arrays,
            **scalars,  # type: ignore[arg-type]
            provenance=provenance,
            info=info,
            # Consistency (shapes, sums) is checked by SimModel.__post_init__, naming the field.
        )
    except UserError as exc:
        # The check names the field; the message names the directory too.
        detail = str(exc).removeprefix("SimModel: ")
        raise UserError(f"{root}: {detail}; fit the model again") from None


def engage_probability(model: SimModel, interest: np.ndarray, items: np.ndarray) -> np.ndarray:
    """P(engage) with recommended catalog items, given the users' interest distributions.

    With ``z = base * (K * interest[k])^a * (n_k * pop[i])^b``, where ``k`` is the item's
    category, ``n_k`` the number of catalog items in ``k``, ``a`` and ``b`` the interest and
    popularity exponents, ``p = m * z / (m + z)`` with ``m = engage_ceiling``: a saturating
    response that is about ``z`` for small ``z`` and stays below ``m`` (so in [0, 1) with no
    clipping). Both factors of ``z`` are relative to their uniform values (an interest of 1/K,
    a popularity of 1/n_k), so ``engage_base_rate`` is (up to the saturation, small at usual
    rates) the engagement of an average item in an average-interest category.

    Args:
        model: The SimModel.
        interest: (B, K) interest distributions.
        items: (B,) catalog item indices (actions).

    Returns:
        (B,) probabilities.
    """
    k = model.item_category[items]  # (B,)
    rel_interest = model.n_categories * interest[np.arange(len(items)), k]  # (B,)
    n_in_cat = np.bincount(model.item_category, minlength=model.n_categories)[k]  # (B,)
    rel_pop = n_in_cat * model.item_popularity[items]  # (B,)
    z = (
        model.engage_base_rate
        * np.power(rel_interest, model.engage_interest_exponent)
        * np.power(np.maximum(rel_pop, 1e-12), model.engage_popularity_exponent)
    )
    return saturate(z, model.engage_ceiling)


def saturate(z: np.ndarray, ceiling: float) -> np.ndarray:
    """The engagement response ``m * z / (m + z)`` of raw scores ``z >= 0``, ``m = ceiling``.

    About ``z`` for small ``z``, increasing, and below ``m`` for every finite ``z``.
    """
    return ceiling * z / (ceiling + z)
