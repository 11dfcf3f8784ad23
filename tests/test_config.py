from dataclasses import dataclass
from typing import Literal

import pytest

from rlrec.config import from_mapping, to_mapping
from rlrec.errors import UserError


@dataclass(frozen=True)
class Inner:
    rate: float = 0.1


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    steps: int = 3
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = Inner()
    maybe: int | None = None


def test_round_trip_and_coercion():
    cfg = from_mapping(Outer, {"steps": 5, "inner": {"rate": 1}, "sizes": [4], "maybe": 2})
    assert cfg == Outer(steps=5, inner=Inner(rate=1.0), sizes=(4,), maybe=2)
    assert from_mapping(Outer, to_mapping(cfg)) == cfg


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"stesp": 1}, r"config: unknown setting\(s\) stesp"),
        ({"steps": "many"}, r"config.steps: expected an integer"),
        ({"steps": True}, r"config.steps: expected an integer"),
        ({"mode": "c"}, r"config.mode: 'c' is not one of 'a', 'b'"),
        ({"inner": {"rate": "high"}}, r"config.inner.rate: expected a number"),
        ({"sizes": 3}, r"config.sizes: expected a list"),
    ],
)
def test_bad_values_name_the_field(data, match):
    with pytest.raises(UserError, match=match):
        from_mapping(Outer, data)


def test_resolve_preset_by_name_by_path_and_errors(tmp_path):
    from rlrec.config import resolve_preset

    (tmp_path / "small.yaml").write_text("a: 1\n")
    assert resolve_preset("small", tmp_path, "env") == tmp_path / "small.yaml"
    assert resolve_preset(tmp_path / "small.yaml", tmp_path, "env") == tmp_path / "small.yaml"
    with pytest.raises(UserError, match=r"no such agent preset file"):
        resolve_preset(tmp_path / "missing.yaml", tmp_path, "agent")
    with pytest.raises(UserError, match=r"env preset 'big': not a file .*\(small\)"):
        resolve_preset("big", tmp_path, "env")
