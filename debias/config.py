"""Typed configs: one dataclass per concern, loaded from YAML that rejects unknown keys.

Every default lives in the dataclass field that declares it. A YAML file may set any subset of the
fields; `key.sub=value` overrides from the command line are applied on top. Any unknown key, wrong
type or out-of-range value raises `ConfigError` naming the dotted key, before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the offending key."""


def check(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError for `key` unless `condition` holds (used in `__post_init__`)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {hint.__name__}, got {value!r}")
        return _build(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: got {value!r}")
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_hint, *_rest) = get_args(hint) or (Any,)
        items = [_coerce(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_hint, value_hint = get_args(hint) or (Any, Any)
        return {_coerce(k, key_hint, key): _coerce(v, value_hint, f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {hint!r}")


def _build(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        where = f" in '{prefix}'" if prefix else ""
        raise ConfigError(
            f"{prefix + '.' if prefix else ''}{unknown[0]}: unknown key{where}; "
            f"valid keys are {sorted(fields)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix + '.' if prefix else ''}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix + '.' if prefix else ''}{e}") from None


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """Turn `["a.b=1", "c=x"]` into a nested dict; values are parsed as YAML scalars/lists."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.optim.lr=0.01)")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _defaults(cls: type) -> dict:
    """Each field's default as plain data, without building `cls` itself (its checks may need keys that
    only a file gives, e.g. a pipeline's targets); a section whose own default does not build is left to
    its class's defaults."""
    out = {}
    for f in dataclasses.fields(cls):
        try:
            if f.default_factory is not dataclasses.MISSING:
                out[f.name] = _plain(f.default_factory())
            elif f.default is not dataclasses.MISSING:
                out[f.name] = _plain(f.default)
        except ConfigError:
            continue
    return out


def _section_class(hint: Any) -> type | None:
    """The dataclass a field's value is built as (through an Optional), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if get_origin(hint) in (typing.Union, types.UnionType):
        found = [h for h in get_args(hint) if dataclasses.is_dataclass(h)]
        return found[0] if found else None
    return None


def minimal(cls: type, data: dict, defaults: dict | None = None) -> dict:
    """`data` (a config file's mapping for `cls`) without the keys whose value is what they would be
    without them: what a shipped YAML should hold. `defaults`: the section's own defaults (a field's
    default_factory may differ from its class's), else `cls`'s."""
    defaults = _defaults(cls) if defaults is None else defaults
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in data.items():
        hint, default = hints.get(key), defaults.get(key, dataclasses.MISSING)
        section = _section_class(hint)
        if section is not None and isinstance(value, dict):
            inner = minimal(section, value, default if isinstance(default, dict) else None)
            if inner or not isinstance(default, dict):  # an empty mapping still switches an Optional section on
                out[key] = inner
        elif get_origin(hint) is dict and isinstance(value, dict) and dataclasses.is_dataclass(get_args(hint)[1]):
            if value != default:  # entries are built from their class's defaults
                out[key] = {k: minimal(get_args(hint)[1], v) if isinstance(v, dict) else v for k, v in value.items()}
        elif value != default:
            out[key] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from the YAML file at `path` (optional) and `key=value` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        data = loaded or {}
    # Keys start at their defaults, a section's own included (DemoConfig's `pretrain` is not
    # PretrainConfig()): a file or override that sets one key of a section leaves the section's other
    # keys at its defaults, not at those of the section's class.
    data = _merge(_merge(_defaults(cls), data), parse_overrides(overrides or []))
    try:
        return _build(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from None


def from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a config from `to_dict` output (how configs travel to Ray workers)."""
    return _build(cls, data)


def to_dict(cfg: Any) -> dict:
    """The config as plain data (what gets written next to every output)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
