"""Sequential OPE estimators: known answers, hand-computed values, validation, coverage, FQE."""

from __future__ import annotations

import numpy as np
import pytest

from rlrec.errors import UserError
from rlrec.evaluation.ope.fqe import (
    RIDGE_BISECTIONS,
    FQEConfig,
    fitted_q_evaluation,
    step_weights,
)
from rlrec.evaluation.ope.sequential import (
    SESSION_ESTIMATOR_NAMES,
    effective_sample_size,
    estimate_session_value,
    prepare_sessions,
)


def random_log(seed: int, n_sessions: int = 50, max_len: int = 6):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, n_sessions)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n = int(offsets[-1])
    return offsets, rng.random(n) * 3, rng.uniform(0.05, 1.0, n)


def test_target_equal_to_behaviour_gives_the_mean_logged_return():
    offsets, reward, pb = random_log(0)
    sessions = prepare_sessions(
        session_offsets=offsets, reward=reward, behaviour_prob=pb, target_prob=pb
    )
    est = estimate_session_value(sessions, n_bootstrap=0)
    mean_return = reward.sum() / (len(offsets) - 1)
    for name in ("is", "wis", "pdis", "wpdis"):
        assert est[name].value == pytest.approx(mean_return, rel=1e-12)
    assert set(est) == {"is", "wis", "pdis", "wpdis"}  # no Q-function: no DM / DR
    assert effective_sample_size(sessions) == pytest.approx(len(offsets) - 1)


# Two sessions: [r=1, r=2] and [r=4]; behaviour 0.5 everywhere; target 1.0, 0.5 then 0.25.
OFFSETS = np.array([0, 2, 3])
REWARD = np.array([1.0, 2.0, 4.0])
PB = np.array([0.5, 0.5, 0.5])
PE = np.array([1.0, 0.5, 0.25])
Q = np.array([0.5, 1.0, 2.0])
V = np.array([1.5, 0.5, 3.0])


def hand_sessions(gamma: float = 0.9):
    """The two hand-computed sessions above, with their Q-function."""
    return prepare_sessions(
        session_offsets=OFFSETS,
        reward=REWARD,
        behaviour_prob=PB,
        target_prob=PE,
        q_factual=Q,
        v_target=V,
        gamma=gamma,
    )


def test_hand_computed_values():
    # rho = [2, 1 | 0.5]; cumulative weights w = [2, 2 | 0.5] (session 2 padded with 0.5).
    sessions = hand_sessions(0.9)
    est = {k: e.value for k, e in estimate_session_value(sessions, n_bootstrap=0).items()}
    g = 0.9
    # IS: (2 * (1 + 0.9*2) + 0.5 * 4) / 2
    assert est["is"] == pytest.approx((2 * (1 + g * 2) + 0.5 * 4) / 2)
    assert est["wis"] == pytest.approx((2 * (1 + g * 2) + 0.5 * 4) / 2.5)
    # PDIS: (2*1 + 0.9*2*2 + 0.5*4) / 2
    assert est["pdis"] == pytest.approx((2 * 1 + g * 2 * 2 + 0.5 * 4) / 2)
    # WPDIS: t=0: (2*1 + 0.5*4) / (2 + 0.5); t=1: (2*2 + 0.5*0) / (2 + 0.5)
    assert est["wpdis"] == pytest.approx((2 + 2) / 2.5 + g * 4 / 2.5)
    assert est["dm"] == pytest.approx((1.5 + 3.0) / 2)
    # DR per session: sum_t g^t (w_t (r_t - q_t) + w_{t-1} v_t)
    s1 = (2 * (1 - 0.5) + 1 * 1.5) + g * (2 * (2 - 1.0) + 2 * 0.5)
    s2 = 0.5 * (4 - 2.0) + 1 * 3.0
    assert est["dr"] == pytest.approx((s1 + s2) / 2)
    # WDR: t=0: (2*0.5 + 0.5*2)/2.5 + (1.5 + 3)/2; t=1: (2*1 + 0)/2.5 + (2*0.5 + 0)/2.5
    wdr = (2 * 0.5 + 0.5 * 2) / 2.5 + 4.5 / 2 + g * ((2 * 1.0) / 2.5 + (2 * 0.5) / 2.5)
    assert est["wdr"] == pytest.approx(wdr)


def test_zero_q_function_reduces_dr_to_pdis_and_wdr_to_wpdis():
    offsets, reward, pb = random_log(1)
    pe = np.random.default_rng(2).uniform(0.0, 1.0, len(reward))
    zeros = np.zeros_like(reward)
    sessions = prepare_sessions(
        session_offsets=offsets,
        reward=reward,
        behaviour_prob=pb,
        target_prob=pe,
        q_factual=zeros,
        v_target=zeros,
    )
    est = estimate_session_value(sessions, n_bootstrap=0)
    assert est["dr"].value == pytest.approx(est["pdis"].value)
    assert est["wdr"].value == pytest.approx(est["wpdis"].value)
    assert est["dm"].value == 0.0


def test_full_target_distributions_and_horizon():
    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]])
    action = np.array([1, 0, 1])
    a = prepare_sessions(
        session_offsets=OFFSETS,
        reward=REWARD,
        behaviour_prob=PB,
        target_action_probs=probs,
        action=action,
    )
    b = prepare_sessions(
        session_offsets=OFFSETS,
        reward=REWARD,
        behaviour_prob=PB,
        target_prob=np.array([0.5, 1.0, 0.75]),
    )
    np.testing.assert_allclose(a.weight, b.weight)
    cut = prepare_sessions(
        session_offsets=OFFSETS, reward=REWARD, behaviour_prob=PB, target_prob=PB, horizon=1
    )
    assert cut.horizon == 1
    assert estimate_session_value(cut, n_bootstrap=0)["is"].value == pytest.approx(2.5)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    offsets, reward, pb = random_log(3, n_sessions=200)
    pe = np.clip(pb * np.random.default_rng(4).uniform(0.5, 1.5, len(pb)), 0, 1)
    sessions = prepare_sessions(
        session_offsets=offsets, reward=reward, behaviour_prob=pb, target_prob=pe
    )
    a = estimate_session_value(sessions, n_bootstrap=100, seed=5)
    b = estimate_session_value(sessions, n_bootstrap=100, seed=5)
    c = estimate_session_value(sessions, n_bootstrap=100, seed=6)
    assert a == b
    assert a["pdis"].ci95 != c["pdis"].ci95
    for e in a.values():
        assert e.ci95[0] <= e.value <= e.ci95[1]


def _base():
    return {
        "session_offsets": OFFSETS,
        "reward": REWARD,
        "behaviour_prob": PB,
        "target_prob": PE,
    }


INVALID = [
    ({"reward": np.zeros(0), "behaviour_prob": np.zeros(0), "target_prob": np.zeros(0)}, "empty"),
    ({"behaviour_prob": np.array([0.5, 0.0, 0.5])}, r"behaviour_prob: .*\(0, 1\]"),
    ({"behaviour_prob": np.array([0.5, 1.5, 0.5])}, r"behaviour_prob: .*\(0, 1\]"),
    ({"target_prob": np.array([0.5, -0.1, 0.5])}, r"target_prob: .*\[0, 1\]"),
    ({"behaviour_prob": np.array([0.5, 0.5])}, "behaviour_prob: has 2 steps"),
    ({"reward": np.array([1.0, np.nan, 2.0])}, "reward: contains NaN"),
    ({"session_offsets": np.array([0, 2, 4])}, "session_offsets: expected"),
    ({"session_offsets": np.array([0, 0, 3])}, "session 0 has 0 steps"),
    ({"session_offsets": np.array([0.0, 2.0, 3.0])}, "session_offsets: expected integers"),
    ({"reward": REWARD.reshape(3, 1)}, "reward: expected a 1-D array"),
    ({"target_prob": None}, "exactly one of target_prob"),
    ({"q_factual": Q}, "pass both"),
    ({"q_factual": Q, "v_target": np.array([1.0, np.inf, 0.0])}, "v_target: contains NaN"),
    ({"gamma": 1.5}, "gamma"),
    ({"horizon": 0}, "horizon"),
    (
        {"target_prob": None, "target_action_probs": np.full((3, 2), 0.4), "action": np.zeros(3)},
        "action: expected integers",
    ),
    (
        {
            "target_prob": None,
            "target_action_probs": np.full((3, 2), 0.4),
            "action": np.zeros(3, dtype=int),
        },
        "sum to 1",
    ),
    (
        {
            "target_prob": None,
            "target_action_probs": np.full((3, 2), 0.5),
            "action": np.array([0, 2, 1]),
        },
        r"action: values must lie in \[0, 2\)",
    ),
    ({"target_prob": None, "target_action_probs": np.full((3, 2), 0.5)}, "action: required"),
]


@pytest.mark.parametrize(("override", "match"), INVALID)
def test_invalid_inputs_are_one_line_user_errors(override, match):
    kwargs = {**_base(), **override}
    with pytest.raises(UserError, match=match) as info:
        prepare_sessions(**kwargs)
    assert "\n" not in str(info.value)


def test_estimators_without_a_q_function_are_refused_by_name():
    sessions = prepare_sessions(**_base())
    from rlrec.evaluation.ope.sequential import StepwiseDR

    with pytest.raises(UserError, match="dr needs a fitted Q-function"):
        estimate_session_value(sessions, estimators=[StepwiseDR()])
    with pytest.raises(UserError, match="n_bootstrap"):
        estimate_session_value(sessions, n_bootstrap=-1)
    with pytest.raises(UserError, match="confidence"):
        estimate_session_value(sessions, confidence=1.0)


# A small MDP with a known value: states 0/1, actions 0/1; reward Bernoulli(p[s, a]); after
# each step the session continues with probability 0.7 and the state flips with action 1.
P_REWARD = np.array([[0.2, 0.6], [0.5, 0.1]])
CONTINUE = 0.7
BEHAVIOUR = np.array([[0.5, 0.5], [0.5, 0.5]])
TARGET = np.array([[0.2, 0.8], [0.7, 0.3]])


def exact_value(policy: np.ndarray) -> float:
    r = (policy * P_REWARD).sum(axis=1)  # (2,)
    flip = policy[:, 1]
    transition = CONTINUE * np.array([[1 - flip[0], flip[0]], [flip[1], 1 - flip[1]]])
    v = np.linalg.solve(np.eye(2) - transition, r)
    return float(v[0])  # sessions start in state 0


def simulate(seed: int, n_sessions: int):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_sessions):
        s = 0
        while True:
            a = int(rng.random() < BEHAVIOUR[s, 1])
            r = float(rng.random() < P_REWARD[s, a])
            rows.append((i, s, a, r, BEHAVIOUR[s, a], TARGET[s, a]))
            if a == 1:
                s = 1 - s
            if rng.random() >= CONTINUE:
                break
    arr = np.array(rows)
    counts = np.bincount(arr[:, 0].astype(int), minlength=n_sessions)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return offsets, arr[:, 1].astype(int), arr[:, 2].astype(int), arr[:, 3], arr[:, 4], arr[:, 5]


def tabular_features(states: np.ndarray, actions: np.ndarray) -> np.ndarray:
    out = np.zeros((len(states), 4))
    out[np.arange(len(states)), 2 * states + actions] = 1.0
    return out


def expected_tabular(states: np.ndarray) -> np.ndarray:
    """(n, 4) expected one-hot (state, action) features under TARGET."""
    zeros, ones = np.zeros_like(states), np.ones_like(states)
    return TARGET[states, 0][:, None] * tabular_features(states, zeros) + TARGET[states, 1][
        :, None
    ] * tabular_features(states, ones)


def known_mdp(seed: int, n_sessions: int, config: FQEConfig, q_scale: float = 1.0):
    """Sessions of the known MDP with a fitted (and optionally scaled) Q-function.

    Returns:
        ``(sessions, features, expected, fqe)``.
    """
    offsets, s, a, r, pb, pe = simulate(seed, n_sessions)
    features, expected = tabular_features(s, a), expected_tabular(s)
    sessions, fqe = fqe_sessions(offsets, r, pb, pe, features, expected, config, q_scale)
    return sessions, features, expected, fqe


def fqe_sessions(offsets, r, pb, pe, features, expected, config: FQEConfig, q_scale: float = 1.0):
    """Logged sessions with the Q-values of FQE fitted on ``features`` (optionally scaled),
    given the steps' ratios as the library's callers do (weighted by ``config.ratio_power``).

    Returns:
        ``(sessions, fqe)``.
    """
    fqe = fitted_q_evaluation(offsets, r, features, expected, config=config, step_ratio=pe / pb)
    sessions = prepare_sessions(
        session_offsets=offsets,
        reward=r,
        behaviour_prob=pb,
        target_prob=pe,
        q_factual=q_scale * fqe.q_factual,
        v_target=q_scale * fqe.v_target,
    )
    return sessions, fqe


def test_tabular_fqe_recovers_the_true_q_function_and_dr_is_accurate():
    offsets, s, a, r, pb, pe = simulate(0, 3000)
    features = tabular_features(s, a)
    expected = expected_tabular(s)
    # With gamma = 1 the Q-function of a continuing-with-0.7 chain is a geometric sum: FQE
    # must find the exact linear fixed point in the tabular case.
    fqe = fitted_q_evaluation(offsets, r, features, expected, config=FQEConfig(n_folds=2))
    truth = exact_value(TARGET)
    sessions = prepare_sessions(
        session_offsets=offsets,
        reward=r,
        behaviour_prob=pb,
        target_prob=pe,
        q_factual=fqe.q_factual,
        v_target=fqe.v_target,
    )
    est = estimate_session_value(sessions, n_bootstrap=0)
    assert est["dm"].value == pytest.approx(truth, rel=0.1)
    assert est["wdr"].value == pytest.approx(truth, rel=0.1)
    assert est["dr"].value == pytest.approx(truth, rel=0.1)


def test_fqe_raises_its_ridge_until_the_iteration_contracts():
    # Two alternating states; the logged features of B are thin (0.1 e2) while the target's
    # expected features point along e2 and e1 with weight 3: the unregularised iteration map
    # has spectral radius ~ sqrt(3 * 3 / 0.1) >> 1 and the Q values would grow ~1e30 over
    # 60 iterations. A contraction caps them at a finite, modest scale.
    n_sessions, length = 50, 60
    kind = np.tile(np.arange(length) % 2, n_sessions)  # 0 = A, 1 = B
    features = np.where(kind[:, None] == 0, [1.0, 0.0], [0.0, 0.1])
    expected = np.where(kind[:, None] == 0, [0.0, 3.0], [3.0, 0.0])
    offsets = np.arange(n_sessions + 1) * length
    reward = np.ones(n_sessions * length)
    config = FQEConfig(n_folds=1)
    fqe = fitted_q_evaluation(offsets, reward, features, expected, config=config)
    assert fqe.ridges[0] > config.ridge
    assert np.all(np.isfinite(fqe.v_target)) and np.max(np.abs(fqe.v_target)) < 1e3
    # The ridge is the smallest that contracts (to the bisection's factor), not the next
    # decade: every unneeded raise shrinks the value towards 0.
    phi_next = np.vstack([expected[1:], np.zeros((1, 2))])
    phi_next[offsets[1:] - 1] = 0.0
    gram, cross = features.T @ features, features.T @ phi_next
    scale = np.trace(gram) / 2

    def radius(ridge: float) -> float:
        step = np.linalg.solve(gram + ridge * scale * np.eye(2), cross)
        return float(np.max(np.abs(np.linalg.eigvals(step))))

    ridge = fqe.ridges[0]
    assert radius(ridge) < 1.0 <= radius(ridge / 10 ** (1 / 2**RIDGE_BISECTIONS))
    assert not np.log10(ridge / config.ridge).is_integer()  # inside a decade
    # A well-posed problem keeps the configured ridge (the tabular chain above).
    offsets, s, a, r, _, _ = simulate(0, 500)
    tabular = fitted_q_evaluation(offsets, r, tabular_features(s, a), expected_tabular(s))
    assert tabular.ridges == (FQEConfig().ridge,) * FQEConfig().n_folds


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_ratio_weighted_fqe_of_a_constant_model_is_the_weighted_mean(power):
    """One-step sessions and a constant feature: FQE's value is the mean reward with every
    step weighted by its ratio ** ratio_power (power 1: the weighted-IS estimate, 0: the
    behaviour's mean), the misspecified model's fit moved to where the target acts."""
    rng = np.random.default_rng(4)
    n = 4000
    offsets = np.arange(n + 1)
    ratio = rng.choice([0.25, 1.0, 4.0], size=n)
    reward = rng.normal(1.0, 0.5, size=n) + np.log(ratio)  # the reward depends on the ratio
    ones = np.ones((n, 1))
    config = FQEConfig(n_folds=1, ridge=1e-12, ratio_power=power)
    fqe = fitted_q_evaluation(offsets, reward, ones, ones, config=config, step_ratio=ratio)
    w = ratio**power
    assert fqe.v_target[0] == pytest.approx(np.sum(w * reward) / np.sum(w), rel=1e-9)
    if power == 0.0:
        assert fqe.step_weight is None
    else:
        np.testing.assert_allclose(fqe.step_weight, w)
    # Without ratios the fit is unweighted whatever the power.
    plain = fitted_q_evaluation(offsets, reward, ones, ones, config=config)
    assert plain.step_weight is None
    assert plain.v_target[0] == pytest.approx(reward.mean(), rel=1e-9)


def test_step_weights_reject_bad_ratios_and_powers():
    root = FQEConfig(ratio_power=0.5)
    assert step_weights(None, root) is None
    assert FQEConfig().ratio_power == 0.0  # unweighted by default (docs/ope.md says why)
    assert step_weights(np.array([2.0]), FQEConfig()) is None
    np.testing.assert_allclose(step_weights(np.array([4.0, 0.0]), root), [2.0, 0.0])
    with pytest.raises(UserError, match="step_ratio"):
        step_weights(np.array([1.0, -1.0]), root)
    with pytest.raises(UserError, match="step_ratio"):
        step_weights(np.array([np.inf]), root)
    with pytest.raises(UserError, match="ratio_power"):
        FQEConfig(ratio_power=1.5)
    with pytest.raises(UserError, match="step_ratio: expected shape"):
        fitted_q_evaluation(OFFSETS, REWARD, np.ones((3, 1)), np.ones((3, 1)), step_ratio=[1.0])


def test_fqe_rejects_bad_features():
    with pytest.raises(UserError, match="features"):
        fitted_q_evaluation(OFFSETS, REWARD, np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(UserError, match="NaN"):
        fitted_q_evaluation(OFFSETS, REWARD, np.full((3, 2), np.nan), np.zeros((3, 2)))
    with pytest.raises(UserError, match="n_folds"):
        FQEConfig(n_folds=0)


def test_interval_coverage_on_a_known_mdp():
    """The true value lies inside the 95% PDIS / WDR intervals in roughly 95% of seeds."""
    truth = exact_value(TARGET)
    n_seeds = 40
    hits = dict.fromkeys(("pdis", "wpdis", "wdr"), 0)
    for seed in range(n_seeds):
        offsets, s, a, r, pb, pe = simulate(100 + seed, 300)
        features = tabular_features(s, a)
        expected = expected_tabular(s)
        fqe = fitted_q_evaluation(offsets, r, features, expected, config=FQEConfig(seed=seed))
        sessions = prepare_sessions(
            session_offsets=offsets,
            reward=r,
            behaviour_prob=pb,
            target_prob=pe,
            q_factual=fqe.q_factual,
            v_target=fqe.v_target,
        )
        est = estimate_session_value(sessions, n_bootstrap=200, seed=seed)
        for name in hits:
            lo, hi = est[name].ci95
            hits[name] += int(lo <= truth <= hi)
    # 40 seeds: a binomial(40, 0.95) falls below 33 with probability ~0.2%.
    for name, h in hits.items():
        assert h >= 33, (name, h)


def test_every_default_estimator_is_reported_in_order():
    sessions = prepare_sessions(**_base(), q_factual=Q, v_target=V)
    contract = ("is", "wis", "pdis", "wpdis", "dm", "dr", "wdr", "switch", "magic")  # JSON keys
    assert contract == SESSION_ESTIMATOR_NAMES
    assert tuple(estimate_session_value(sessions, n_bootstrap=10)) == contract


def test_magic_candidates_run_from_dm_to_wdr():
    """The j-step returns at j = -1 and j = H - 1 are DM and WDR (hand example above)."""
    from rlrec.evaluation.ope.sequential import BlendedDR, WeightedDR, j_step_returns

    sessions = prepare_sessions(**_base(), q_factual=Q, v_target=V, gamma=0.9)
    terms = WeightedDR().terms(sessions).sum(axis=0, keepdims=True)
    steps = np.array([-1, 0, 1])
    g = j_step_returns(terms, 2, sessions.horizon, sessions.discount, steps)[0]
    est = {k: e.value for k, e in estimate_session_value(sessions, n_bootstrap=0).items()}
    assert g[0] == pytest.approx(est["dm"])
    assert g[-1] == pytest.approx(est["wdr"])
    # j = 0: WDR's first step, then the model's value of the second states weighted like step 0:
    # (2*0.5 + 0.5*2)/2.5 + 4.5/2 + 0.9 * (2*0.5 + 0.5*0)/2.5
    assert g[1] == pytest.approx(2.0 / 2.5 + 4.5 / 2 + 0.9 * 1.0 / 2.5)
    cand, weights = BlendedDR().blend(sessions)
    np.testing.assert_array_equal(cand, steps)
    assert weights.min() >= 0 and weights.sum() == pytest.approx(1.0)


def test_magic_follows_the_data_on_a_known_mdp():
    """An exact Q-function: MAGIC within 10% like DM and WDR; a biased one: it leaves DM."""
    from rlrec.evaluation.ope.sequential import BlendedDR

    offsets, s, a, r, pb, pe = simulate(0, 3000)
    fqe = fitted_q_evaluation(
        offsets, r, tabular_features(s, a), expected_tabular(s), config=FQEConfig(n_folds=2)
    )
    truth = exact_value(TARGET)
    kwargs = {"session_offsets": offsets, "reward": r, "behaviour_prob": pb, "target_prob": pe}
    good = prepare_sessions(**kwargs, q_factual=fqe.q_factual, v_target=fqe.v_target)
    assert estimate_session_value(good, n_bootstrap=0)["magic"].value == pytest.approx(
        truth, rel=0.1
    )
    # A Q-function three times too large: DM is far off, outside WDR's interval, so the
    # blend must put most of its weight on the returns that use the importance weights.
    bad = prepare_sessions(**kwargs, q_factual=3 * fqe.q_factual, v_target=3 * fqe.v_target)
    est = estimate_session_value(bad, n_bootstrap=0)
    assert abs(est["dm"].value - truth) > 0.5 * truth
    steps, weights = BlendedDR().blend(bad)
    assert weights[steps == -1][0] < 0.1
    assert est["magic"].value == pytest.approx(truth, rel=0.15)


def test_returns_to_go_and_calibration_of_an_exact_model():
    from rlrec.evaluation.ope.fqe import q_calibration, returns_to_go

    g = returns_to_go(OFFSETS, REWARD, gamma=0.5)
    np.testing.assert_allclose(g, [1 + 0.5 * 2, 2, 4])
    # A Q equal to the returns is perfectly calibrated.
    cal = q_calibration(OFFSETS, REWARD, np.array([3.0, 2.0, 4.0]), n_bins=3)
    assert cal["mean_error"] == pytest.approx(0.0) and cal["max_bin_error"] == pytest.approx(0.0)
    assert cal["r2"] == pytest.approx(1.0)
    assert (cal["first_step_q"], cal["first_step_return"]) == (3.5, 3.5)
