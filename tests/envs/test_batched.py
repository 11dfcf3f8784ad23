import pickle

import gymnasium as gym
import numpy as np
import pytest
from scipy import stats
from stable_baselines3.common.vec_env import VecEnv

import rlrec.envs  # noqa: F401  (registers the env)
from rlrec.envs import (
    ENV_ID,
    BatchedInterestDrift,
    BatchedVecEnv,
    InterestDriftEnv,
    InvalidActionError,
    make_batched_env,
    make_vec_env,
)
from rlrec.errors import UserError

from .conftest import make_sim_model


def policy(obs_step: np.ndarray, n_actions: int) -> np.ndarray:
    """A fixed deterministic policy of the observation: item (step * 3) mod n."""
    return (obs_step.reshape(-1) * 3) % n_actions


def single_returns(model, dataset, episodes, seed, config):
    env = InterestDriftEnv(model, dataset, config=config)
    obs, _ = env.reset(seed=seed)
    returns, total = [], 0.0
    while len(returns) < episodes:
        obs, r, term, trunc, _ = env.step(int(policy(obs["step"], env.action_space.n)[0]))
        total += r
        if term or trunc:
            returns.append(total)
            total = 0.0
            obs, _ = env.reset()
    return np.array(returns)


def batched_returns(model, dataset, episodes, seed, config, n=64):
    env = BatchedInterestDrift(n, model, dataset, config=config)
    obs, _ = env.reset(seed=seed)
    returns, total = [], np.zeros(n)
    while len(returns) < episodes:
        obs, r, term, trunc, _ = env.step(policy(obs["step"], env.single_action_space.n))
        total += r
        done = term | trunc
        returns.extend(total[done].tolist())
        total[done] = 0.0
    return np.array(returns[:episodes])


def test_single_and_batched_give_the_same_return_distribution(sim_model, tiny_dataset):
    config = {"max_steps": 20}
    single = single_returns(sim_model, tiny_dataset, 400, seed=0, config=config)
    batched = batched_returns(sim_model, tiny_dataset, 400, seed=1, config=config)
    assert stats.ks_2samp(single, batched).pvalue > 0.01
    assert stats.ttest_ind(single, batched, equal_var=False).pvalue > 0.01
    # The test has power: a user twice as likely to engage is told apart.
    other = make_sim_model(engage_base_rate=0.6)
    different = batched_returns(other, tiny_dataset, 400, seed=1, config=config)
    assert stats.ks_2samp(single, different).pvalue < 1e-3


def rollout(env, seed, steps=40):
    obs, _ = env.reset(seed=seed)
    out = []
    for t in range(steps):
        actions = (np.arange(env.num_envs) + t) % env.single_action_space.n
        obs, r, term, trunc, _ = env.step(actions)
        out.append((obs["item_history"].copy(), r.copy(), term.copy(), trunc.copy()))
    return out


def test_batched_same_seed_same_rollout(sim_model, tiny_dataset):
    a = rollout(BatchedInterestDrift(16, sim_model, tiny_dataset), seed=9)
    b = rollout(BatchedInterestDrift(16, sim_model, tiny_dataset), seed=9)
    c = rollout(BatchedInterestDrift(16, sim_model, tiny_dataset), seed=10)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c, strict=True))


def test_batched_spaces_and_same_step_autoreset(sim_model, tiny_dataset):
    env = BatchedInterestDrift(32, sim_model, tiny_dataset, config={"max_steps": 4})
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["category"].shape == (32,)
    prev = obs
    episode_length = np.zeros(32, dtype=int)
    for _ in range(10):
        obs, r, term, trunc, info = env.step(np.zeros(32, dtype=np.int64))
        assert env.observation_space.contains(obs) and r.shape == (32,)
        episode_length += 1
        np.testing.assert_array_equal(trunc, (episode_length == 4) & ~term)
        done = term | trunc
        if done.any():
            final = info["final_obs"]
            np.testing.assert_array_equal(info["_final_obs"], done)
            # Gymnasium's layout: an (N,) object array, one user's observation where done.
            assert final.shape == (32,) and final.dtype == object
            assert all(final[i] is None for i in np.flatnonzero(~done))
            for i in np.flatnonzero(done):
                assert env.single_observation_space.contains(final[i])
                # The final observation continues the old history; the new row starts over.
                np.testing.assert_array_equal(
                    final[i]["item_history"][:-1], prev["item_history"][i, 1:]
                )
                assert final[i]["step"][0] == prev["step"][i, 0] + 1
            assert (obs["step"][done, 0] <= 10).all()  # a fresh warm prefix of <= 10 steps
        episode_length[done] = 0
        prev = obs
    interest = env.interest()
    assert interest.shape == (32, 4)
    np.testing.assert_allclose(interest.sum(axis=1), 1.0)


def test_final_obs_has_the_layout_of_gymnasiums_sync_vector_env(sim_model, tiny_dataset):
    # The reference: Gymnasium's own SyncVectorEnv over the single env, same-step autoreset.
    config = {"max_steps": 2}
    sync = gym.vector.SyncVectorEnv(
        [lambda: InterestDriftEnv(sim_model, tiny_dataset, config=config)] * 3,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    batched = BatchedInterestDrift(3, sim_model, tiny_dataset, config=config)
    finals = []
    for env in (sync, batched):
        env.reset(seed=0)
        info: dict = {}
        while "final_obs" not in info:  # users end within max_steps = 2 steps
            *_, info = env.step(np.zeros(3, dtype=np.int64))
        finals.append((info["final_obs"], info["_final_obs"]))
    (ref, ref_mask), (got, got_mask) = finals
    assert (type(got), got.dtype, got.shape) == (type(ref), ref.dtype, ref.shape)
    assert got_mask.dtype == ref_mask.dtype and got_mask.shape == ref_mask.shape
    example = ref[np.flatnonzero(ref_mask)[0]]
    for g, done in zip(got, got_mask, strict=True):
        if not done:
            assert g is None
            continue
        assert set(g) == set(example)
        for key, value in example.items():
            assert (g[key].dtype, g[key].shape) == (value.dtype, value.shape), key


def test_record_episode_statistics_sees_same_step_episodes(sim_model, tiny_dataset):
    # Gymnasium's vector RecordEpisodeStatistics reads the same-step autoreset mode: every
    # step counts towards an episode, and a finished one is reported in the step it ends.
    env = BatchedInterestDrift(8, sim_model, tiny_dataset, config={"max_steps": 3})
    wrapped = gym.wrappers.vector.RecordEpisodeStatistics(env)
    wrapped.reset(seed=2)
    returns, lengths = np.zeros(8), np.zeros(8, dtype=int)
    reported = 0
    for t in range(7):
        _, reward, term, trunc, info = wrapped.step(np.full(8, t % 5, dtype=np.int64))
        returns += reward
        lengths += 1
        done = term | trunc
        if done.any():
            np.testing.assert_array_equal(info["_episode"], done)
            np.testing.assert_allclose(info["episode"]["r"][done], returns[done])
            np.testing.assert_array_equal(info["episode"]["l"][done], lengths[done])
            reported += int(done.sum())
        returns[done], lengths[done] = 0.0, 0
    assert reported >= 16  # every user finished at least twice in 7 steps of <= 3


def test_partial_reset_with_mask(sim_model):
    env = BatchedInterestDrift(8, sim_model)
    env.reset(seed=0)
    obs, _, _, _, _ = env.step(np.ones(8, dtype=np.int64))
    mask = np.zeros(8, dtype=bool)
    mask[[1, 5]] = True
    new, _ = env.reset(options={"reset_mask": mask})
    np.testing.assert_array_equal(new["item_history"][~mask], obs["item_history"][~mask])
    assert (new["step"][mask, 0] == 1).all()


def test_batched_bad_actions(sim_model):
    env = BatchedInterestDrift(4, sim_model, config={"catalog_size": 5})
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match=r"action 5 is outside .*Discrete\(5\)"):
        env.step(np.array([0, 1, 5, 2]))
    with pytest.raises(InvalidActionError, match=r"expected \(4,\)"):
        env.step(np.array([0, 1]))
    with pytest.raises(UserError, match="num_envs"):
        BatchedInterestDrift(0, sim_model)


def test_make_vec_through_the_registry(sim_dir):
    env = gym.make_vec(
        ENV_ID, num_envs=3, vectorization_mode="vector_entry_point", sim_model=sim_dir
    )
    assert isinstance(env.unwrapped, BatchedInterestDrift) and env.num_envs == 3
    obs, _ = env.reset(seed=0)
    assert obs["item_history"].shape == (3, 20)


def test_batched_and_vec_env_from_dict_and_pickle(sim_dir, tiny_dataset):
    spec = {"sim_model": str(sim_dir), "dataset": str(tiny_dataset.path), "num_envs": 6}
    env = make_batched_env(spec)
    vec = make_vec_env(spec)
    env.reset(seed=2)
    vec.seed(2)
    vec.reset()
    for original in (env, vec):
        clone = pickle.loads(pickle.dumps(original))
        for t in range(12):
            acts = np.full(6, t % 4)
            if isinstance(original, VecEnv):
                a, b = original.step(acts), clone.step(acts)
            else:
                a, b = original.step(acts)[:4], clone.step(acts)[:4]
            np.testing.assert_array_equal(a[0]["item_history"], b[0]["item_history"])
            for u, v in zip(a[1:3], b[1:3], strict=True):
                np.testing.assert_array_equal(u, v)


def test_sb3_vec_env_autoreset_and_seeding(sim_model, tiny_dataset):
    model = make_sim_model(leave_hazard=np.array([0.3]))
    vec = BatchedVecEnv(16, model, tiny_dataset, config={"max_steps": 3})
    assert vec.num_envs == 16 and vec.action_space.n == 20
    vec.seed(4)
    first = vec.reset()
    vec.seed(4)
    again = vec.reset()
    np.testing.assert_array_equal(first["item_history"], again["item_history"])
    last = first
    seen_truncated = seen_terminated = False
    for _ in range(6):
        obs, rewards, dones, infos = vec.step(np.zeros(16, dtype=np.int64))
        assert rewards.dtype == np.float32 and len(infos) == 16
        np.testing.assert_array_equal(vec.last_step.reward, rewards)  # for callbacks
        for i in np.flatnonzero(dones):
            term_obs = infos[i]["terminal_observation"]
            np.testing.assert_array_equal(
                term_obs["item_history"][:-1], last["item_history"][i, 1:]
            )
            assert term_obs["step"][0] == last["step"][i, 0] + 1
            # The row is a fresh episode: a new (warm) history, not a continuation.
            assert obs["step"][i, 0] <= 10
            truncated = infos[i]["TimeLimit.truncated"]
            seen_truncated |= truncated
            seen_terminated |= not truncated
        for i in np.flatnonzero(~dones):
            assert "terminal_observation" not in infos[i]
        last = obs
    assert seen_truncated and seen_terminated


def test_sb3_vec_env_attribute_methods(sim_model):
    vec = BatchedVecEnv(5, sim_model)
    vec.reset()
    assert vec.get_attr("num_envs") == [5] * 5
    assert vec.get_attr("config", indices=[0, 2])[0].max_steps == 100
    rows = vec.env_method("interest", indices=[1, 3])
    assert len(rows) == 2 and rows[0].shape == (4,)
    np.testing.assert_allclose(rows[1], vec.env.interest()[3])
    assert vec.env_is_wrapped(gym.Wrapper) == [False] * 5
    vec.set_attr("render_mode", None)
    with pytest.raises(UserError, match="for all of them"):
        vec.set_attr("render_mode", None, indices=[0])


@pytest.mark.slow
def test_sb3_ppo_runs_on_the_vec_env(sim_model):
    from stable_baselines3 import PPO

    vec = BatchedVecEnv(8, sim_model, config={"max_steps": 10, "history_length": 5})
    model = PPO("MultiInputPolicy", vec, n_steps=16, batch_size=64, n_epochs=1, seed=0)
    model.learn(total_timesteps=128)
    assert model.num_timesteps >= 128


def test_importing_the_envs_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, rlrec.envs, rlrec.envs.batched; assert 'torch' not in sys.modules; "
        "from rlrec.envs.sb3_vec_env import BatchedVecEnv; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
