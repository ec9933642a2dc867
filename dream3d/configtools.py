"""Dataclass configs filled from YAML and dotted ``key=value`` overrides, checked at load time.

The dataclasses are the schema. YAML and overrides only fill them, checked against each field's type
annotation, so a typo or a wrong type fails before the first step, with the nearest valid keys named.
(OmegaConf's structured configs were the first choice; they reject the union annotations that scheduled
values need, ``float | [start_step, start, end, end_step]``, so the filling is done here.)
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import os
import re
import types
import typing
from typing import Any, TypeVar


T = TypeVar("T")
SELECTED_BY = "dream3d.selected_by"  # field metadata of a section whose schema one of its own keys picks


def selected_by(key: str, schemas: dict[str, type], default: str):
    """A dataclass field whose section's schema is picked by the section's own key ``key`` (``guidance.method``
    picks the rule): ``schemas[name]`` is the schema for each name. The field's annotation is the part that
    every choice shares and that a switch keeps (``guidance.prior``).

    A layer (a YAML file, the overrides) that changes the choice starts the section afresh from the new
    choice's defaults: keys of earlier layers are dropped, except the shared part's; keys of that layer and
    later ones apply, whatever their order. A key that only another choice has is an error that names the
    choice in effect and the switch."""
    return dataclasses.field(default_factory=lambda: schemas[default](), metadata={SELECTED_BY: (key, schemas)})


class ConfigError(ValueError):
    """A config that cannot be used as written; the message says what to change."""


def dotted_keys(schema: Any, prefix: str = "") -> list[str]:
    """Every leaf key of a dataclass (instance or type) as a dotted path."""
    out = []
    for f in dataclasses.fields(schema):
        value = (
            getattr(schema, f.name)
            if not isinstance(schema, type)
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
        )
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
        elif isinstance(v, dict) and key in leaves:
            below = key + "." + ".".join(_first_path(v))
            raise ConfigError(
                f"{where}: '{key}' is a value, not a section, so '{below}' does not exist; set '{key}=...'"
            )
        elif key not in leaves:
            if key in sections:
                raise ConfigError(
                    f"{where}: '{key}' is a section; set one of its keys, e.g. '{key}.{dotted_keys(schema_at(schema, key))[0]}'"
                )
            while isinstance(v, dict) and v:  # name the full dotted key that was meant
                k2, v = next(iter(v.items()))
                key = f"{key}.{k2}"
            raise ConfigError(
                f"{where}: {_other_choice(schema, key) or 'unknown config key ' + repr(key) + _suggest(key, leaves, sections)}"
            )


def _selected(schema: Any, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """(dotted path, field) of each section below ``schema`` whose schema one of its keys picks."""
    out = []
    for f in dataclasses.fields(schema):
        if SELECTED_BY in f.metadata:
            out.append((prefix + f.name, f))
        value = getattr(schema, f.name)
        if dataclasses.is_dataclass(value):
            out += _selected(value, prefix + f.name + ".")
    return out


def _other_choice(schema: Any, key: str) -> str | None:
    """For a key that only unselected choices of a section have ('guidance.lora_rank' while guidance.method
    is sds; also the per-choice layout 'guidance.vsd.lora_rank'): what is selected and how to switch."""
    for path, f in _selected(schema):
        if not key.startswith(path + "."):
            continue
        name, schemas = f.metadata[SELECTED_BY]
        rest, now = key[len(path) + 1 :], getattr(schema_at(schema, path), name)
        for choice, tp in schemas.items():
            inner = rest.removeprefix(choice + ".")
            if choice != now and inner in dotted_keys(tp):
                return (
                    f"'{key}' is a setting of {path}.{name}={choice}, and this config selects {path}.{name}={now}; "
                    f"to use it set {path}.{name}={choice} beside it (the switch starts {path} from that "
                    f"{name}'s defaults{'; the key is then ' + repr(path + '.' + inner) if inner != rest else ''})"
                )
    return None


def _first_path(d: dict) -> list[str]:
    k, v = next(iter(d.items())) if d else ("", None)
    return [str(k)] + (_first_path(v) if isinstance(v, dict) else [])


def _suggest(key: str, leaves: set, sections: set) -> str:
    """Leaves with the same last name first (a right name under a wrong section), then close spellings."""
    tail = key.rsplit(".", 1)[-1]
    near = sorted(
        (x for x in leaves if x.rsplit(".", 1)[-1] == tail),
        key=lambda x: -difflib.SequenceMatcher(None, key, x).ratio(),
    )
    near += [x for x in difflib.get_close_matches(key, sorted(leaves | sections), n=4, cutoff=0.5) if x not in near]
    if not near:
        return "; --print-config lists every key"
    return f"; did you mean {', '.join(repr(n) for n in near[:4])}?"


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

    if not os.path.isfile(path):
        raise ConfigError(
            f"config file {path!r} " + ("is a folder, not a YAML file" if os.path.isdir(path) else "does not exist")
        )
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys, not {type(data).__name__}")
    return data


def build_config(schema_type: type[T], layers: list[tuple[str, dict]]) -> T:
    """Fill ``schema_type`` from (name, mapping) layers, later layers winning. Each layer is checked for
    unknown keys (with suggestions); each value is checked against its field's type annotation."""
    default = schema_type()
    merged: dict = {}
    for where, mapping in layers:
        _switch(default, merged, mapping, where)
        _check_keys(default, mapping, where)
        _merge(merged, mapping, where)
    return _fill(schema_type, merged, "")


def _switch(default: Any, merged: dict, mapping: dict, where: str, prefix: str = "") -> None:
    """A layer that changes the choice of a selected section (see :func:`selected_by`): ``default`` takes the
    new choice's defaults, and the keys earlier layers set in that section are dropped but for the shared part."""
    for f in dataclasses.fields(default):
        sub, value = mapping.get(f.name), getattr(default, f.name)
        if not isinstance(sub, dict) or not dataclasses.is_dataclass(value):
            continue
        if SELECTED_BY in f.metadata and f.metadata[SELECTED_BY][0] in sub:
            name, schemas = f.metadata[SELECTED_BY]
            choice = sub[name]
            if not isinstance(choice, str) or choice not in schemas:
                raise ConfigError(
                    f"{where}: bad value for '{prefix}{f.name}.{name}': {choice!r} is not one of {', '.join(schemas)}"
                )
            if choice != getattr(value, name):
                value = schemas[choice]()
                setattr(default, f.name, value)
                kept = {g.name for g in dataclasses.fields(typing.get_type_hints(type(default))[f.name])}
                if isinstance(merged.get(f.name), dict):
                    merged[f.name] = {k: v for k, v in merged[f.name].items() if k in kept}
        inner = merged.get(f.name)
        _switch(value, inner if isinstance(inner, dict) else {}, sub, where, prefix + f.name + ".")


def _merge(dst: dict, src: dict, where: str) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v, where)
        else:
            dst[k] = (v, where) if not isinstance(v, dict) else _tag(v, where)


def _tag(d: dict, where: str) -> dict:
    return {k: _tag(v, where) if isinstance(v, dict) else (v, where) for k, v in d.items()}


def _fill(cls: type, values: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        key = prefix + f.name
        item = values[f.name]
        if (
            SELECTED_BY in f.metadata
        ):  # the choice in effect: the last layer's (build_config checked it) or the default's
            name, schemas = f.metadata[SELECTED_BY]
            choice = item[name][0] if name in item else getattr(f.default_factory(), name)
            kwargs[f.name] = _fill(schemas[choice], item, key + ".")
        elif dataclasses.is_dataclass(hints[f.name]) or _dataclass_in(hints[f.name]):
            sub = _dataclass_in(hints[f.name]) or hints[f.name]
            kwargs[f.name] = _fill(sub, item, key + ".")
        else:
            value, where = item
            kwargs[f.name] = _coerce(value, hints[f.name], key, where)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid values in '{prefix.rstrip('.') or 'config'}': {e}") from None
    # keep the defaults of untouched nested sections but construct them fresh
    return obj


def _dataclass_in(tp):
    for a in typing.get_args(tp):
        if dataclasses.is_dataclass(a):
            return a
    return None


def _coerce(value, tp, key: str, where: str):
    """``value`` as type ``tp`` or a ConfigError naming the key."""

    def bad():
        return ConfigError(f"{where}: bad value for '{key}': {value!r} is not of type {_type_name(tp)}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except ConfigError:
                pass
        raise bad()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if isinstance(value, str) and tp in (int, float) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 (PyYAML) reads 1e-4 as text; OmegaConf, and people, read a number
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad()
    if origin in (tuple, list, collections.abc.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad()
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: '{key}' needs {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_coerce(v, a, key, where) for v, a in zip(value, args))
        inner = args[0] if args else typing.Any
        out = [_coerce(v, inner, key, where) for v in value]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    return value


# A number with an exponent and no dot in its mantissa (1e-4, 5E3), which YAML 1.1 reads as text.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(names + (["null"] if type(None) in typing.get_args(tp) else []))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def to_plain(cfg: Any):
    """Dataclasses to dicts and tuples to lists, for YAML and JSON."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_plain(v) for v in cfg]
    return cfg


def to_yaml(cfg: Any) -> str:
    import yaml

    return yaml.safe_dump(to_plain(cfg), sort_keys=False, default_flow_style=None)
