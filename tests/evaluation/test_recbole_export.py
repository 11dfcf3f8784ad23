"""benchmarks/bench_recbole.py's exporter: its atomic files parse back to our split."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

from rlrec.evaluation.history import split_session_ids
from rlrec.evaluation.ranking import next_step_targets
from rlrec.models.sequences import collapse_repeats
from tests.conftest import PROJECT_ROOT
from tests.evaluation.test_ranking import _write_tiny_log


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_recbole", PROJECT_ROOT / "benchmarks" / "bench_recbole.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exported_files_parse_back_to_the_same_targets(tmp_path: Path) -> None:
    bench = _bench()
    ds = _write_tiny_log(tmp_path / "ds")
    rows = bench.export_recbole(ds, tmp_path / "rb", "tiny", max_len=1)
    back = bench.read_recbole(tmp_path / "rb", "tiny")
    for split in ("train", "valid", "test"):
        steps = collapse_repeats(ds.sessions(split))
        targets = next_step_targets(steps, 1)
        ids = split_session_ids(ds, split)
        prefixes = targets.prefixes(slice(0, len(targets)))
        expected = [
            (f"s{ids[targets.session[i]]}", tuple(int(v) for v in prefixes[i] if v >= 0), int(t))
            for i, t in enumerate(targets.items)
        ]
        assert back[split] == expected
        assert rows[split] == len(expected)
    # By hand: train sessions [0, 1, 2] and [1, 2], prefixes cut to max_len = 1.
    assert back["train"] == [("s0", (0,), 1), ("s0", (1,), 2), ("s3", (1,), 2)]
    header = (tmp_path / "rb" / "tiny" / "tiny.test.inter").read_text().splitlines()[0]
    assert header.split("\t") == [
        "user_id:token",
        "item_id_list:token_seq",
        "item_id:token",
        "timestamp:float",
    ]
    # The timestamp column is the target step's time, in seconds, increasing in a session.
    stamps = [
        float(line.split("\t")[3])
        for line in (tmp_path / "rb" / "tiny" / "tiny.train.inter").read_text().splitlines()[1:]
    ]
    assert np.all(np.diff(stamps[:2]) > 0)
