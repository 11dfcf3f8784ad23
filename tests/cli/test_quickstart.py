import json

from rlrec.cli import main
from rlrec.data.dataset import load_dataset
from rlrec.models.sim_model import load_sim_model


def test_quickstart_tiny_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--tiny", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    ds = load_dataset(summary["data_dir"])
    model = load_sim_model(summary["sim_dir"])
    assert summary["stats"]["events"] == len(ds.events) > 0
    assert model.n_categories >= 2
    fidelity = summary["fidelity"]
    assert 0 <= fidelity["js_category_transition"] <= 1
    # The tiny world is small, but the fit must still be far better than chance.
    assert fidelity["ground_truth"]["transition_tv"] < 0.3
    assert (out / "data" / "ground_truth.json").is_file()


def test_quickstart_refuses_a_file_as_out(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["quickstart", "--tiny", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlrec: error: --out") and "\n" not in err
