import numpy as np
import pytest

from rlrec.envs.config import EnvConfig
from rlrec.envs.dynamics import OUTCOMES, SegmentSampler, UserDynamics, UserState, WarmStarts
from rlrec.errors import UserError
from rlrec.models.sim_model import engage_probability, saturate

from .conftest import K, make_sim_model


def test_segment_sampler_matches_each_distribution():
    rng = np.random.default_rng(0)
    probs = np.array([0.5, 0.0, 0.3, 0.2, 1.0, 0.1, 0.0, 0.9])
    segment = np.array([0, 0, 0, 0, 1, 2, 2, 2])
    sampler = SegmentSampler(probs, segment, 4)  # segment 3 is empty
    n = 200_000
    for g, members in ((0, [0, 1, 2, 3]), (1, [4]), (2, [5, 6, 7])):
        drawn = sampler.sample(np.full(n, g), rng.random(n))
        assert set(np.unique(drawn)) <= {m for m in members if probs[m] > 0}
        freq = np.bincount(drawn, minlength=8)[members] / n
        expected = probs[members] / probs[members].sum()
        np.testing.assert_allclose(freq, expected, atol=0.005)
    assert (sampler.sample(np.full(10, 3), rng.random(10)) == -1).all()


def test_segment_sampler_edge_uniforms_stay_in_segment():
    probs = np.array([0.2, 0.8, 0.0, 0.6, 0.4, 0.0])
    segment = np.array([0, 0, 0, 1, 1, 1])
    sampler = SegmentSampler(probs, segment, 2)
    u = np.array([0.0, np.nextafter(1.0, 0.0), 0.0, np.nextafter(1.0, 0.0)])
    drawn = sampler.sample(np.array([0, 0, 1, 1]), u)
    assert set(drawn[:2]) <= {0, 1} and set(drawn[2:]) <= {3, 4}


@pytest.mark.parametrize("exponent", [1.0, 0.7])
def test_engage_probability_matches_sim_model(exponent):
    model = make_sim_model(engage_interest_exponent=exponent, engage_base_rate=0.6)
    dyn = UserDynamics(model, EnvConfig())
    rng = np.random.default_rng(1)
    state = dyn.start(500, rng)
    state.streak = rng.integers(1, 7, 500)
    actions = rng.integers(0, dyn.n_actions, 500)
    expected = engage_probability(model, model.interest(state.category, state.streak), actions)
    np.testing.assert_allclose(dyn.engage_probability(state, actions), expected, rtol=1e-12)


def _constant_state(dyn: UserDynamics, n: int, category: int) -> UserState:
    state = dyn.start(n, np.random.default_rng(0))
    state.category = np.full(n, category)
    state.streak = np.full(n, 2)
    return state


def test_step_frequencies_follow_the_user_model():
    model = make_sim_model(engage_base_rate=0.2)
    dyn = UserDynamics(model, EnvConfig(max_steps=1000))
    n = 100_000
    state = _constant_state(dyn, n, category=1)
    action = 5  # category 1, the user's own category
    actions = np.full(n, action)
    p = dyn.engage_probability(state, actions)[0]
    new, res = dyn.step(state, actions, np.random.default_rng(2))
    assert res.engaged.mean() == pytest.approx(p, abs=0.005)
    # Engaged: moves to the item's category, streak + 1, the item enters the history.
    e = res.engaged
    assert (new.category[e] == 1).all() and (new.streak[e] == 3).all()
    assert (new.items[e, -1] == model.item_ids[action] + 1).all()
    assert (new.items[:, :-1] == state.items[:, 1:]).all()
    # Funnel: buy p_buy, cart (not bought) p_cart - p_buy among the engaged.
    p_cart, p_buy = model.p_cart[1], model.p_buy[1]
    out = res.outcome[e]
    assert (out == OUTCOMES.index("buy")).mean() == pytest.approx(p_buy, abs=0.01)
    assert (out == OUTCOMES.index("cart")).mean() == pytest.approx(p_cart - p_buy, abs=0.01)
    assert (res.reward[e] == np.array([0, 1, 3, 10])[out]).all()
    # Missed: organic stay with stay(2), no reward, misses counted.
    m = ~e
    assert (res.reward[m] == 0).all() and (new.misses[m] == 1).all()
    assert (new.category[m] == 1).mean() == pytest.approx(model.stay_by_streak[1], abs=0.01)
    switched = m & (new.category != 1)
    freq = np.bincount(new.category[switched], minlength=K) / switched.sum()
    np.testing.assert_allclose(freq, model.switch_matrix[1], atol=0.01)
    # Organic items come from the new category by popularity.
    assert (model.item_category[res.item[m]] == new.category[m]).all()
    # Leave: hazard(t + 1) times the engaged factor or miss factor ** misses.
    hazard = model.hazard(state.step[0] + 1)
    assert res.terminated[e].mean() == pytest.approx(hazard * 0.7, abs=0.01)
    assert res.terminated[m].mean() == pytest.approx(hazard * 1.2, abs=0.01)


def test_truncation_at_max_steps():
    dyn = UserDynamics(make_sim_model(leave_hazard=np.array([0.0])), EnvConfig(max_steps=3))
    rng = np.random.default_rng(0)
    state = dyn.start(50, rng)
    for t in range(3):
        state, res = dyn.step(state, np.zeros(50, dtype=np.int64), rng)
        assert not res.terminated.any()
        assert res.truncated.all() == (t == 2)


def test_warm_starts_collapse_repeats_and_follow_sessions(sim_model, tiny_dataset):
    warm = WarmStarts.from_dataset(tiny_dataset, sim_model, "train", min_steps=2)
    # Sessions 0 (5 steps: item 1 repeated is one step) and 1 (4 steps); session 2 too short.
    np.testing.assert_array_equal(warm.offsets, [0, 5, 9])
    np.testing.assert_array_equal(warm.tokens[0, :5], [2, 6, 23, 3, 4])
    np.testing.assert_array_equal(warm.tokens[1, :5], [2, 2, 3, 3, 4])
    np.testing.assert_array_equal(warm.streak, [1, 2, 1, 2, 1, 1, 2, 3, 1])


def test_warm_start_needs_dataset_and_a_long_enough_session(sim_model, tiny_dataset):
    from rlrec.errors import UserError

    with pytest.raises(UserError, match=r"env\.start: warm needs the dataset"):
        UserDynamics(sim_model, EnvConfig(start="warm"))
    with pytest.raises(UserError, match="no session of split 'valid' has 3 steps"):
        UserDynamics(sim_model, EnvConfig(warm_split="valid", warm_prefix=(3, 5)), tiny_dataset)


def test_category_without_catalog_items_gives_unknown_item_token():
    item_category = np.arange(20) % 3  # sim category 3 has no catalog item
    pop = np.ones(20) / np.bincount(item_category)[item_category]
    model = make_sim_model(item_category=item_category, item_popularity=pop)
    dyn = UserDynamics(model, EnvConfig(max_steps=1000))
    n = 20_000
    state = _constant_state(dyn, n, category=0)
    state.streak = np.full(n, 4)  # stay 0.3: most users switch, some to category 3
    new, res = dyn.step(state, np.zeros(n, dtype=np.int64), np.random.default_rng(0))
    to_empty = new.category == 3
    assert to_empty.any()
    assert (res.item[to_empty] == -1).all() and (new.items[to_empty, -1] == 0).all()
    # The category token still says where the user went (dataset category 3).
    assert (new.categories[to_empty, -1] == 4).all()
    assert (res.item[~to_empty] >= 0).all()


def test_interest_matches_sim_model(sim_model):
    dyn = UserDynamics(sim_model, EnvConfig())
    state = dyn.start(300, np.random.default_rng(0))
    state.streak = np.random.default_rng(1).integers(1, 9, 300)
    expected = sim_model.interest(state.category, state.streak)
    np.testing.assert_allclose(dyn.interest(state), expected, rtol=1e-12)


def test_without_dataset_tokens_use_the_first_dataset_category_of_a_sim_category():
    model = make_sim_model(category_of_dataset_category=np.array([3, 3, 0, 1, 2, 0]))
    dyn = UserDynamics(model, EnvConfig())
    np.testing.assert_array_equal(dyn.sim_category_token, [3, 4, 5, 1])
    # Catalog item a (sim category a % 4) carries that dataset category's token.
    np.testing.assert_array_equal(dyn.item_category_token[:4], [3, 4, 5, 1])
    assert dyn.n_category_tokens == 7 and dyn.n_item_tokens == 21


def test_engage_probability_saturates_below_the_ceiling():
    # Concentrated interest and a high base rate: raw scores z well above the ceiling.
    model = make_sim_model(engage_base_rate=0.9, engage_ceiling=0.5)
    interest = np.zeros((model.n_items, K))
    interest[np.arange(model.n_items), model.item_category] = 1.0
    actions = np.arange(model.n_items)
    p = engage_probability(model, interest, actions)
    n_k = np.bincount(model.item_category, minlength=K)[model.item_category]
    z = 0.9 * K * np.sqrt(n_k * model.item_popularity)  # exponents a = 1, b = 0.5
    assert (z > 0.5).any()
    np.testing.assert_allclose(p, 0.5 * z / (0.5 + z), rtol=1e-12)
    assert (p < 0.5).all()
    assert saturate(np.array([1e6]), 0.9)[0] == pytest.approx(0.9, rel=1e-5)


def test_engage_probability_is_about_z_for_small_z():
    model = make_sim_model(engage_base_rate=1e-5)
    rng = np.random.default_rng(0)
    interest = rng.dirichlet(np.ones(K), size=200)
    actions = rng.integers(0, model.n_items, 200)
    p = engage_probability(model, interest, actions)
    k = model.item_category[actions]
    n_k = np.bincount(model.item_category, minlength=K)[k]
    raw = 1e-5 * K * interest[np.arange(200), k] * np.sqrt(n_k * model.item_popularity[actions])
    assert (p <= raw).all()
    np.testing.assert_allclose(p, raw, rtol=1e-3)


class _FixedUniforms:
    """Stands in for the generator: step draws its (5, B) uniforms from here."""

    def __init__(self, u: np.ndarray) -> None:
        self.u = u

    def random(self, shape: tuple[int, int]) -> np.ndarray:
        assert shape == self.u.shape
        return self.u


def test_boredom_multiplies_the_hazard_only_after_engaged_steps_beyond_the_start():
    hazard, start, factor = 0.05, 3, 1.5
    model = make_sim_model(
        leave_hazard=np.array([hazard]),
        leave_engaged_factor=0.7,
        leave_miss_factor=1.2,
        leave_streak_factor=factor,
        leave_streak_start=float(start),
    )
    dyn = UserDynamics(model, EnvConfig(max_steps=100))
    streaks = np.arange(1, 8)
    n = len(streaks)
    state = _constant_state(dyn, n, category=1)
    state.streak = streaks.copy()
    same = np.full(n, 5)  # category 1: the user's own, new streak s + 1
    other = np.full(n, 6)  # category 2: new streak 1
    for actions, engaged, new_streak, expected in [
        (same, True, streaks + 1, 0.7 * factor ** np.maximum(streaks + 1 - start, 0)),
        (other, True, np.ones(n), np.full(n, 0.7)),
        # Missed (u0 near 1): miss factor only, whatever the streak.
        (same, False, None, np.full(n, 1.2)),
    ]:
        limit = hazard * expected
        for nudge, leaves in [(1 - 1e-9, True), (1 + 1e-9, False)]:
            u = np.zeros((5, n))
            u[0] = 0.0 if engaged else np.nextafter(1.0, 0.0)
            u[1] = 0.0  # a missed user stays in its category
            u[4] = limit * nudge
            new, res = dyn.step(state, actions, _FixedUniforms(u))  # type: ignore[arg-type]
            assert (res.engaged == engaged).all()
            if new_streak is not None:
                np.testing.assert_array_equal(new.streak, new_streak)
            assert (res.terminated == leaves).all(), (engaged, new.streak, nudge)
    # Boredom really bites here: new streaks 4..8 are beyond the start.
    assert (0.7 * factor ** np.maximum(streaks + 1 - start, 0) > 0.7).sum() == 5


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"engage_ceiling": 0.0}, "engage_ceiling"),
        ({"engage_ceiling": 1.1}, "engage_ceiling"),
        ({"leave_streak_factor": 0.9}, "leave_streak_factor"),
        ({"leave_streak_start": 0.0}, "leave_streak_start"),
        ({"leave_streak_start": 2.5}, "leave_streak_start"),
    ],
)
def test_ceiling_and_boredom_are_validated(overrides, match):
    with pytest.raises(UserError, match=match):
        make_sim_model(**overrides)
