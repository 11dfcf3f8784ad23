from pathlib import Path

import pytest
import yaml

from rlrec.envs import InterestDriftEnv, make_batched_env, make_env
from rlrec.envs.presets import (
    PRESET_DIR,
    build_artifacts,
    dataset_key,
    encoder_key,
    load_env_preset,
    sim_key,
)
from rlrec.errors import UserError

TINY = {
    "data": {
        "source": "synthetic",
        "synthetic": {"n_users": 40, "n_categories": 6, "n_items": 300, "seed": 3},
    },
    "fit": {"top_k_categories": 6, "catalog_size": 100},
    "env": {"max_steps": 20, "history_length": 8},
    "encoder": {"d_model": 32},
}


def write_preset(tmp_path: Path, data: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["synthetic", "taobao"])
def test_bundled_presets_load(name):
    preset = load_env_preset(name)
    assert preset.name == name and preset.env.start == "warm"
    assert preset.root == PRESET_DIR.parent
    if name == "taobao":
        assert preset.data.preset == "taobao"
        assert preset.input_paths() == [
            (PRESET_DIR.parent / "../shared/data/taobao_sample/UserBehavior.csv").resolve()
        ]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"fit": {"top_k": 3}}, r"bad\.yaml\.fit: unknown setting\(s\) top_k"),
        ({"env": {"max_steps": "long"}}, r"bad\.yaml\.env\.max_steps: expected an integer"),
        ({"env": {"start": "cold"}}, r"bad\.yaml\.env\.start: 'cold' is not one of"),
        ({"data": {"synthetic": {"n_user": 3}}}, r"bad\.yaml\.data\.synthetic: unknown"),
        ({"data": {"source": "file"}}, r"a file source needs 'preset'"),
        ({"env": {"warm_prefix": [3, 1]}}, r"env\.warm_prefix: \[3, 1\]"),
        ({"name": "x"}, r"'name' is set by the loader"),
    ],
)
def test_preset_errors_name_the_field(tmp_path, data, match):
    with pytest.raises(UserError, match=match):
        load_env_preset(write_preset(tmp_path, data, "bad.yaml"))


def test_unknown_preset_name():
    with pytest.raises(UserError, match=r"'nope': not a file and not a bundled preset"):
        load_env_preset("nope")


def test_relative_inputs_start_at_the_project_root(tmp_path):
    envs = tmp_path / "project" / "envs"
    envs.mkdir(parents=True)
    data = {"data": {"source": "file", "preset": "taobao", "inputs": ["logs/a.csv"]}}
    preset = load_env_preset(write_preset(envs, data))
    assert preset.input_paths() == [(tmp_path / "project" / "logs/a.csv").resolve()]
    with pytest.raises(UserError, match=r"data\.inputs .*a\.csv does not exist"):
        build_artifacts(preset, tmp_path / "cache")


def test_build_artifacts_builds_once_then_reuses(tmp_path):
    preset = load_env_preset(write_preset(tmp_path, TINY))
    first = build_artifacts(preset, tmp_path / "cache")
    assert first.reused == ()
    assert (tmp_path / "cache" / f"{first.dataset_dir.name}.json").is_file()
    env = make_env(first.spec())
    assert env.config.history_length == 8 and env.action_space.n == 100
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    batched = make_batched_env(first.spec(num_envs=4))
    assert batched.reset(seed=0)[0]["item_history"].shape == (4, 8)

    again = build_artifacts(preset, tmp_path / "cache")
    assert again.reused == ("dataset", "sim_model") and again.sim_dir == first.sim_dir

    # Another fit reuses the dataset and builds a new SimModel.
    changed = load_env_preset(write_preset(tmp_path, {**TINY, "fit": {"top_k_categories": 4}}))
    assert dataset_key(changed) == dataset_key(preset) and sim_key(changed) != sim_key(preset)
    assert encoder_key(changed) == encoder_key(preset)  # the encoder does not read the fit
    other_encoder = load_env_preset(write_preset(tmp_path, {**TINY, "encoder": {"d_model": 64}}))
    assert encoder_key(other_encoder) != encoder_key(preset)
    third = build_artifacts(changed, tmp_path / "cache")
    assert third.reused == ("dataset",) and third.sim_dir != first.sim_dir


def test_a_crash_leaves_no_half_built_cache_entry(tmp_path, monkeypatch):
    from rlrec.data.dataset import atomic_directory
    from rlrec.models.sim_model import PARAMS_FILE, SimModel

    preset = load_env_preset(write_preset(tmp_path, TINY))

    def crash_mid_write(self, out, force=False):
        with atomic_directory(out, "sim", force) as tmp:
            (tmp / PARAMS_FILE).write_text("{")  # half written
            raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(SimModel, "save", crash_mid_write)
        with pytest.raises(RuntimeError, match="disk full"):
            build_artifacts(preset, tmp_path / "cache")
    cache = tmp_path / "cache"
    assert not (cache / f"sim-{sim_key(preset)}").exists()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []
    # The next call reuses the complete dataset and builds the model.
    result = build_artifacts(preset, cache)
    assert result.reused == ("dataset",)
    InterestDriftEnv(result.sim_dir, result.dataset_dir).reset(seed=0)


def test_taobao_preset_builds_a_working_env(tmp_path, taobao_csv):
    preset = load_env_preset("taobao")
    assert preset.input_paths() == [taobao_csv.resolve()]
    artifacts = build_artifacts(preset, tmp_path / "cache")
    env = make_env(artifacts.spec())
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["interest"].shape == (env.model.n_categories,)


def test_file_source_key_follows_the_input_file(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("1,2,3,pv,1511539200\n")
    data = {"data": {"source": "file", "preset": "taobao", "inputs": [str(log)]}}
    preset = load_env_preset(write_preset(tmp_path, data))
    before = dataset_key(preset)
    assert dataset_key(preset) == before
    log.write_text("1,2,3,pv,1511539200\n1,2,3,buy,1511539300\n")
    assert dataset_key(preset) != before
