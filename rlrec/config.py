"""Typed configuration: frozen dataclasses built from YAML or plain dicts, with clear errors.

Every stage's settings are a frozen dataclass with a docstring per field. :func:`from_mapping`
builds one from a plain mapping (a YAML preset, a CLI override, a dict passed by a distributed
engine) and checks names and types, so a typo in a preset fails at load with the field's path
instead of deep inside training. :func:`to_mapping` is its inverse, used to save the resolved
configuration next to every output.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml

from rlrec.errors import UserError, quote_value

__all__ = [
    "from_mapping",
    "load_yaml",
    "resolve_preset",
    "to_mapping",
]

T = TypeVar("T")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    Plain ``safe_load`` keeps the last of two equal keys without a word, so ``{user: a,
    user: b}`` in a column map, or a setting written twice in a preset, would silently use
    one of them.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # the base class reports an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {quote_value(key)} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping.

    Raises:
        UserError: If the file is missing, is not valid YAML, or is not a mapping.
    """
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{file}: no such file")
    try:
        data = yaml.load(file.read_text(), Loader=_UniqueKeyLoader)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{file}: {exc.problem}{where}; fix the file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{file}: invalid YAML{where}; fix the syntax") from None
    except UnicodeDecodeError:
        raise UserError(f"{file}: not UTF-8 text; save it as UTF-8 YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{file}: expected a mapping of settings at the top level")
    return data


def resolve_preset(name_or_path: str | os.PathLike[str], preset_dir: Path, kind: str) -> Path:
    """Resolve a bundled preset name (``synthetic``) or a YAML path to a file.

    Args:
        name_or_path: A path to a YAML file, or the stem of a file in ``preset_dir``.
        preset_dir: Where the bundled presets of this kind live.
        kind: What the preset is (``env``, ``agent``), for the error message.

    Raises:
        UserError: If neither a file nor a bundled preset of that name exists.
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise UserError(f"{candidate}: no such {kind} preset file")
        return candidate
    bundled = preset_dir / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    known = sorted(p.stem for p in preset_dir.glob("*.yaml"))
    raise UserError(
        f"{kind} preset {str(name_or_path)!r}: not a file and not a bundled preset "
        f"({', '.join(known) or 'none found'}); pass a YAML path"
    )


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build the dataclass ``cls`` from ``data``, checking every field's name and type.

    Missing fields take their defaults; unknown fields are an error (they are usually typos).

    Raises:
        UserError: Naming the offending field as ``where.field``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: {exc}") from None


def to_mapping(obj: Any) -> Any:
    """Convert a (nested) config dataclass to plain YAML/JSON-friendly values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = get_origin(hint)
    args = get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"{where}: invalid value {quote_value(value)}")
    if origin is typing.Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise UserError(f"{where}: {quote_value(value)} is not one of {allowed}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {quote_value(value)}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise UserError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(
                _coerce(a, v, f"{where}[{i}]")
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        inner = args[0] if args else Any
        return [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise UserError(f"{where}: expected a mapping, got {quote_value(value)}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_mapping(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {quote_value(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {quote_value(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where}: expected a number, got {quote_value(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {quote_value(value)}")
        return value
    if hint is Path:
        if not isinstance(value, str | Path):
            raise UserError(f"{where}: expected a path, got {quote_value(value)}")
        return Path(value)
    return value
