import contextlib
import json
import pickle
import shutil
import warnings
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rlrec.envs  # noqa: F401  (registers the env)
from rlrec.envs import ENV_ID, InterestDriftEnv, InvalidActionError, make_env
from rlrec.envs.dynamics import OUTCOMES
from rlrec.errors import UserError
from rlrec.models.sim_model import ARRAYS_FILE, PARAMS_FILE

from .conftest import SESSIONS, make_sim_model


def rollout(env, seed, steps=60):
    obs, _ = env.reset(seed=seed)
    trace = [obs["item_history"].copy()]
    for t in range(steps):
        obs, reward, terminated, truncated, info = env.step((7 * t) % env.action_space.n)
        trace.append((obs["item_history"].copy(), reward, terminated, truncated, info["category"]))
        if terminated or truncated:
            obs, _ = env.reset()
    return trace


RENDER_MODE_NOTICE = "Not able to test alternative render modes"
"""The one checker notice allowed: an env built without ``gym.make`` has no spec to render."""


@contextlib.contextmanager
def checker_warnings_fail() -> Iterator[None]:
    """Turn every warning of the env checkers into an error, but the render-mode notice."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=f".*{RENDER_MODE_NOTICE}")
        yield


@pytest.mark.parametrize("use_dataset", [True, False])
def test_gymnasium_and_sb3_env_checkers(sim_model, tiny_dataset, use_dataset):
    dataset = tiny_dataset if use_dataset else None
    with checker_warnings_fail():
        gym_check_env(InterestDriftEnv(sim_model, dataset), skip_render_check=True)
        sb3_check_env(InterestDriftEnv(sim_model, dataset), warn=True)


def test_make_through_the_registry_without_time_limit(sim_dir, tiny_dataset):
    env = gym.make(ENV_ID, sim_model=sim_dir, dataset=tiny_dataset.path)
    assert env.spec is not None and env.spec.max_episode_steps is None
    with checker_warnings_fail():
        gym_check_env(env.unwrapped)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_same_seed_same_rollout_and_different_seed_differs(sim_model, tiny_dataset):
    a = rollout(InterestDriftEnv(sim_model, tiny_dataset), seed=3)
    b = rollout(InterestDriftEnv(sim_model, tiny_dataset), seed=3)
    c = rollout(InterestDriftEnv(sim_model, tiny_dataset), seed=4)
    for x, y in zip(a[1:], b[1:], strict=True):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:] == y[1:]
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a[1:], c[1:], strict=True))


def test_config_seed_seeds_the_first_reset(sim_model):
    a = InterestDriftEnv(sim_model, config={"seed": 11})
    b = InterestDriftEnv(sim_model, config={"seed": 11})
    assert rollout(a, seed=None)[5][1:] == rollout(b, seed=None)[5][1:]


def test_truncates_itself_at_max_steps(sim_model):
    model = make_sim_model(leave_hazard=np.array([0.0]))
    env = InterestDriftEnv(model, config={"max_steps": 5})
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]


def test_leaving_terminates(sim_model):
    model = make_sim_model(leave_hazard=np.array([1.0]), leave_engaged_factor=1.0)
    env = InterestDriftEnv(model)
    env.reset(seed=0)
    _, _, terminated, truncated, _ = env.step(0)
    assert terminated and not truncated


def test_observation_and_info_contents(sim_model, tiny_dataset):
    env = InterestDriftEnv(sim_model, tiny_dataset, config={"history_length": 4})
    obs, info = env.reset(seed=0)
    assert obs["item_history"].shape == (4,) and obs["item_history"].dtype == np.int32
    assert info["interest"].shape == (4,) and info["interest"].sum() == pytest.approx(1.0)
    obs2, reward, _, _, info = env.step(2)
    assert set(info) >= {"interest", "category", "streak", "engaged", "outcome", "item"}
    assert OUTCOMES[info["outcome"]] in OUTCOMES
    if info["engaged"]:
        assert obs2["item_history"][-1] == sim_model.item_ids[2] + 1 and reward > 0
    else:
        assert reward == 0.0 and info["outcome"] == 0
    np.testing.assert_array_equal(obs2["item_history"][:-1], obs["item_history"][1:])
    assert obs2["step"][0] == obs["step"][0] + 1
    # The category token is the dataset category of the step's item.
    item = info["item"]
    assert obs2["category_history"][-1] == tiny_dataset.item_category[sim_model.item_ids[item]] + 1


def test_warm_start_replays_real_logged_prefixes(sim_model, tiny_dataset):
    env = InterestDriftEnv(sim_model, tiny_dataset, config={"warm_prefix": [2, 4]})
    logged = []
    for _, events in SESSIONS[:3]:
        steps = [e for i, e in enumerate(events) if i == 0 or e[0] != events[i - 1][0]]
        logged.append([item + 1 for item, _ in steps])
    seen = set()
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        history = [int(x) for x in obs["item_history"] if x > 0]
        assert 2 <= len(history) <= 4 and len(history) == obs["step"][0]
        assert any(history == s[: len(history)] for s in logged[:2]), history
        last_dataset_category = int(obs["category_history"][-1]) - 1
        assert info["category"] == sim_model.category_of_dataset_category[last_dataset_category]
        seen.add(tuple(history))
    assert len(seen) >= 4  # several sessions and prefix lengths


def test_stationary_start_draws_first_category(sim_model):
    env = InterestDriftEnv(sim_model, config={"start": "stationary"})
    cats = [env.reset(seed=s)[1]["category"] for s in range(400)]
    freq = np.bincount(cats, minlength=4) / 400
    np.testing.assert_allclose(freq, sim_model.initial_category, atol=0.08)


def test_out_of_space_action_is_a_clear_error(sim_model):
    env = InterestDriftEnv(sim_model, config={"catalog_size": 10})
    env.reset(seed=0)
    assert env.action_space.n == 10
    with pytest.raises(ValueError, match=r"action 10 is outside the action space Discrete\(10\)"):
        env.step(10)
    with pytest.raises(InvalidActionError, match=r"action -1 .* 0\.\.9"):
        env.step(-1)
    with pytest.raises(InvalidActionError, match="dtype"):
        env.step(1.5)


def test_step_before_reset(sim_model):
    with pytest.raises(gym.error.ResetNeeded):
        InterestDriftEnv(sim_model).step(0)


def test_missing_and_inconsistent_sim_model_dirs(tmp_path, sim_dir, tiny_dataset):
    with pytest.raises(UserError, match=r"missing sim_model\.json"):
        InterestDriftEnv(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(sim_dir, broken)
    (broken / ARRAYS_FILE).unlink()
    with pytest.raises(UserError, match=r"missing arrays\.npz"):
        InterestDriftEnv(broken)
    # Arrays that disagree with each other.
    bad = tmp_path / "bad"
    shutil.copytree(sim_dir, bad)
    with np.load(bad / ARRAYS_FILE) as npz:
        arrays = dict(npz)
    arrays["p_cart"] = arrays["p_cart"][:2]
    np.savez(bad / ARRAYS_FILE, **arrays)
    with pytest.raises(UserError, match=r"p_cart has shape \(2,\), expected \(4,\)"):
        InterestDriftEnv(bad)
    # A SimModel fitted on another dataset.
    params = json.loads((sim_dir / PARAMS_FILE).read_text())
    other = make_sim_model(
        category_of_dataset_category=np.array([0, 1, 2, 3, 3]),
        category_ids=tuple(params["category_ids"]),
    )
    with pytest.raises(UserError, match="5; pass the dataset the SimModel was fitted on"):
        InterestDriftEnv(other, tiny_dataset)
    far = make_sim_model(item_ids=np.arange(20) + 10)
    with pytest.raises(UserError, match="names item 29"):
        InterestDriftEnv(far, tiny_dataset)


def test_make_env_from_a_plain_dict_and_pickle(sim_dir, tiny_dataset):
    spec = {"sim_model": str(sim_dir), "dataset": str(tiny_dataset.path), "env": {"max_steps": 7}}
    env = make_env(spec)
    assert env.config.max_steps == 7
    env.reset(seed=5)
    env.step(1)
    clone = pickle.loads(pickle.dumps(env))
    for t in range(10):
        a, b = env.step(t % 5), clone.step(t % 5)
        np.testing.assert_array_equal(a[0]["item_history"], b[0]["item_history"])
        assert a[1:4] == b[1:4]
        if a[2] or a[3]:
            break
    with pytest.raises(UserError, match=r"env_spec.env: unknown setting\(s\) max_step"):
        make_env({"sim_model": str(sim_dir), "env": {"max_step": 3}})
    with pytest.raises(UserError, match=r"sim_model: .* is not a directory"):
        make_env({"sim_model": str(sim_dir / "nope")})


def test_reward_weights_are_configurable(sim_model):
    env = InterestDriftEnv(
        sim_model, config={"reward_weights": {"engage": 2.0, "cart": 0.0, "buy": -1.0}}
    )
    env.reset(seed=0)
    rewards = {}
    for _ in range(400):
        _, r, term, trunc, info = env.step(1)
        rewards.setdefault(OUTCOMES[info["outcome"]], set()).add(r)
        if term or trunc:
            env.reset()
    assert rewards["miss"] == {0.0} and rewards["engage"] == {2.0}
    assert rewards.get("cart", {0.0}) == {0.0} and rewards.get("buy", {-1.0}) == {-1.0}


def test_render_ansi(sim_model):
    env = InterestDriftEnv(sim_model, render_mode="ansi")
    env.reset(seed=0)
    assert "category=" in env.render()
    with pytest.raises(UserError, match="render_mode 'human'"):
        InterestDriftEnv(sim_model, render_mode="human")


@pytest.mark.slow
def test_make_with_no_arguments_builds_the_synthetic_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the cache goes to ./logs/cache
    env = gym.make(ENV_ID)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert env.unwrapped.dynamics.start_mode == "warm"
    assert any((tmp_path / "logs" / "cache").glob("sim-*"))
