"""Typed configuration layered from defaults, a YAML file and ``--set key=value`` flags.

Each job declares a frozen dataclass ``XConfig`` with its defaults; :func:`load_config` lays a
YAML mapping over them and then ``key=value`` overrides (dotted keys reach nested dataclasses).
Unknown keys fail with the list of valid ones, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return _apply(tp(), value, prefix=f"{key}.")
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], key) if len(non_none) == 1 else value
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        inner = args[0] if args else Any
        items = [_coerce(v, inner, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin in (tuple, list) and not isinstance(value, (list, tuple)):
        # "--set optimizers=adam" means a one-element list.
        return _coerce([value], tp, key)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, bool, str) and not isinstance(value, tp):
        if tp is str and isinstance(value, (int, float)):
            return str(value)
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _apply(cfg: T, values: Mapping[str, Any], prefix: str = "") -> T:
    types = _field_types(type(cfg))
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types:
            raise ConfigError(f"unknown key '{prefix}{key}' for {type(cfg).__name__}; valid: {', '.join(sorted(types))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            changes[key] = _apply(current, value, prefix=f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, types[key], f"{prefix}{key}")
    return dataclasses.replace(cfg, **changes)


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["a=1", "b.c=adam"]`` → ``{"a": 1, "b": {"c": "adam"}}``; values are read as YAML."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not key=value")
        key, raw = pair.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def read_yaml(path: str | Path) -> dict[str, Any]:
    from . import storage

    data = yaml.safe_load(storage.read_text(str(path))) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(cls: type[T], *, yaml_path: str | Path | None = None, overrides: Iterable[str] = (),
                values: Mapping[str, Any] | None = None) -> T:
    """Defaults ← YAML file ← ``values`` (from flags) ← ``key=value`` overrides."""
    cfg = cls()
    if yaml_path:
        cfg = _apply(cfg, read_yaml(yaml_path))
    if values:
        cfg = _apply(cfg, {k: v for k, v in values.items() if v is not None})
    overrides = list(overrides)
    if overrides:
        cfg = _apply(cfg, parse_overrides(overrides))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
