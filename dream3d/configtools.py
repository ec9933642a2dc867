"""Dataclass configs filled from YAML and dotted ``key=value`` overrides, checked at load time.

The dataclasses are the schema. YAML and overrides only fill them, through OmegaConf's structured
configs, so a typo or a wrong type fails before the first step, with the nearest valid keys named.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be used as written; the message says what to change."""


def dotted_keys(schema: Any, prefix: str = "") -> list[str]:
    """Every leaf key of a dataclass (instance or type) as a dotted path."""
    out = []
    for f in dataclasses.fields(schema):
        value = getattr(schema, f.name) if not isinstance(schema, type) else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
        key = prefix + f.name
        if dataclasses.is_dataclass(value):
            out += dotted_keys(value, key + ".")
        else:
            out.append(key)
    return out


def _sections(schema: Any, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(schema):
        value = getattr(schema, f.name)
        if dataclasses.is_dataclass(value):
            out.append(prefix + f.name)
            out += _sections(value, prefix + f.name + ".")
    return out


def _check_keys(schema: Any, mapping: dict, where: str, prefix: str = "") -> None:
    leaves, sections = set(dotted_keys(schema)), set(_sections(schema))
    for k, v in mapping.items():
        key = prefix + str(k)
        if isinstance(v, dict) and key in sections:
            _check_keys(schema, v, where, key + ".")
        elif key not in leaves:
            if key in sections:
                raise ConfigError(f"{where}: '{key}' is a section; set one of its keys, e.g. '{key}.{dotted_keys(schema_at(schema, key))[0]}'")
            near = difflib.get_close_matches(key, sorted(leaves | sections), n=3, cutoff=0.5)
            if not near:  # a right leaf name under a wrong section is a common slip
                tail = key.rsplit(".", 1)[-1]
                near = [x for x in sorted(leaves) if x.rsplit(".", 1)[-1] == tail][:3]
            hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else "; see `dream3d generate --print-config` for every key"
            raise ConfigError(f"{where}: unknown config key '{key}'{hint}")


def schema_at(schema: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        schema = getattr(schema, part)
    return schema


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> nested dict, values parsed as YAML scalars/lists."""
    import yaml

    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (for example train.steps=500)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a key below a value")
        node[parts[-1]] = value
    return out


def load_yaml(path: str) -> dict:
    import yaml

    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys, not {type(data).__name__}")
    return data


def build_config(schema_type: type[T], layers: list[tuple[str, dict]]) -> T:
    """Fill ``schema_type`` from (name, mapping) layers, later layers winning. Each layer is checked for
    unknown keys (with suggestions) and wrong types (naming the key) before it is merged."""
    base = OmegaConf.structured(schema_type)
    default = schema_type()
    for where, mapping in layers:
        _check_keys(default, mapping, where)
        try:
            base = OmegaConf.merge(base, OmegaConf.create(mapping))
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            raise ConfigError(f"{where}: bad value for '{key}': {str(e).splitlines()[0]}") from None
    obj = OmegaConf.to_object(base)
    return obj


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
