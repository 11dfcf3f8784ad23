"""The prior over what organic logs cannot identify: how users respond to recommendations.

A log of what users did on their own fixes how interests migrate, how long sessions last and
how items convert (the fitted SimModel). It says nothing about how a *recommendation* changes
engagement and leaving: those response parameters keep provenance ``default`` in a fitted
SimModel. Rather than trusting one guessed number, rlrec gives each a documented range
(:data:`RESPONSE_PRIOR`): training can draw them per simulated user (domain randomisation),
the planner averages over draws, ``rlrec sensitivity`` sweeps them, and the sim-to-real
benchmark draws its truth worlds from them.

The ranges are wide on purpose: they bracket every value the project has used (the defaults in
the middle) and the effects reported in the recommender-systems literature for repeated
exposure (fatigue) and for misses, without claiming to know the platform's value. A parameter
the user sets (provenance ``user``, e.g. an env preset's ``fit.response``) or one fitted from
exposure logs (``fitted``) is not drawn: it is a point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from rlrec.models.sim_model import Provenance, SimModel

__all__ = [
    "RESPONSE_PARAMETERS",
    "RESPONSE_PRIOR",
    "ParameterRange",
    "prior_draws",
    "unidentified",
    "with_response",
]


@dataclass(frozen=True)
class ParameterRange:
    """A uniform range for one response parameter.

    Attributes:
        low: Lower end.
        high: Upper end (``low == high`` is a point).
        integer: Draws are rounded to whole numbers (``leave_streak_start``).
        why: One line on the range, shown in docs and the sensitivity report.
    """

    low: float
    high: float
    integer: bool = False
    why: str = ""


RESPONSE_PRIOR: dict[str, ParameterRange] = {
    "leave_engaged_factor": ParameterRange(
        0.7, 1.0, why="an engaged step lowers the leave hazard by up to 30%, or not at all"
    ),
    "leave_miss_factor": ParameterRange(
        1.0, 1.3, why="each consecutive miss raises the leave hazard by up to 30%, or not at all"
    ),
    "leave_streak_factor": ParameterRange(
        1.0, 1.4, why="boredom: none, up to +40% hazard per engaged step beyond the streak start"
    ),
    "leave_streak_start": ParameterRange(
        2.0, 5.0, integer=True, why="boredom starts after 2 to 5 steps in one category"
    ),
    "engage_interest_exponent": ParameterRange(
        0.75, 1.25, why="engagement elasticity to interest, around proportional"
    ),
    "engage_popularity_exponent": ParameterRange(
        0.3, 0.7, why="engagement elasticity to within-category popularity, around square root"
    ),
    "engage_ceiling": ParameterRange(0.8, 1.0, why="no item is engaged with above 80-100%"),
    "engage_base_rate": ParameterRange(
        0.05, 0.2, why="click-through of an average item at average interest (when not fitted)"
    ),
}
"""Parameter name -> its range. Every scalar response parameter of :class:`SimModel`."""

RESPONSE_PARAMETERS: tuple[str, ...] = tuple(RESPONSE_PRIOR)
"""The response parameters, in a fixed order (columns of :func:`prior_draws`)."""


def unidentified(model: SimModel) -> tuple[str, ...]:
    """The response parameters of ``model`` that the prior covers: provenance ``default``.

    A parameter without a provenance entry counts as ``default`` (a SimModel built in code).
    """
    return tuple(
        name
        for name in RESPONSE_PARAMETERS
        if model.provenance.get(name, Provenance("default")).source == "default"
    )


def prior_draws(
    model: SimModel, n: int, rng: np.random.Generator, names: tuple[str, ...] | None = None
) -> np.ndarray:
    """(n, P) response parameters: the unidentified ones drawn, the rest at the model's values.

    Columns follow :data:`RESPONSE_PARAMETERS`. Draws are uniform on each range
    (independently), integers rounded.

    Args:
        model: The SimModel (its values fill the identified columns).
        n: Number of draws.
        rng: The generator.
        names: The parameters to draw; :func:`unidentified` of the model when None.
    """
    names = unidentified(model) if names is None else names
    out = np.tile([float(getattr(model, p)) for p in RESPONSE_PARAMETERS], (n, 1))
    for j, name in enumerate(RESPONSE_PARAMETERS):
        if name not in names:
            continue
        r = RESPONSE_PRIOR[name]
        if r.integer:
            out[:, j] = rng.integers(int(r.low), int(r.high) + 1, size=n)
        else:
            out[:, j] = r.low + (r.high - r.low) * rng.random(n)
    return out


def with_response(
    model: SimModel, values: Mapping[str, float], source: str = "user", detail: str = ""
) -> SimModel:
    """A copy of ``model`` with response parameters replaced and their provenance set.

    Args:
        model: The SimModel.
        values: Parameter name -> value (names from :data:`RESPONSE_PARAMETERS`).
        source: Provenance of the new values (``user`` or ``fitted``).
        detail: Provenance detail.

    Raises:
        UserError: If a name is not a response parameter or a value is out of its domain
            (the SimModel's own validation).
    """
    import dataclasses

    from rlrec.errors import UserError

    unknown = sorted(set(values) - set(RESPONSE_PARAMETERS))
    if unknown:
        raise UserError(
            f"response parameter {unknown[0]!r} is not one of {', '.join(RESPONSE_PARAMETERS)}"
        )
    provenance = dict(model.provenance)
    for name in values:
        provenance[name] = Provenance(source, detail or f"set to {values[name]}")  # type: ignore[arg-type]
    return dataclasses.replace(
        model,
        **{name: float(v) for name, v in values.items()},  # type: ignore[arg-type]
        provenance=provenance,
    )
