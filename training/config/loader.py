"""Generic typed-dataclass <-> dict plumbing for configs: YAML + dotted overrides, problems collected.

`build(cls_or_instance, raw, path, problems)` fills a dataclass from a nested dict, coercing values to
the annotated types; unknown keys and bad values are appended to `problems` (never raised one by one)
so the caller can report everything at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from common.errors import UserError


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; UserError naming the file when it is missing or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist (pass --config FILE, e.g. configs/debug.yaml)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of sections (model:, data:, train:, ...)")
    return data


def parse_overrides(items: list[str]) -> dict:
    """`["train.steps=10", "data.train.0.proportion=0.5"]` -> nested dict (values parsed as YAML scalars)."""
    out: dict = {}
    problems = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"override {item!r} is not of the form section.key=value (e.g. train.steps=100)")
            continue
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        set_dotted(out, key.split("."), parsed)
    if problems:
        raise UserError(problems)
    return out


def set_dotted(tree: dict, parts: list[str], value: Any) -> None:
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            idx = int(part)
            while len(node) <= idx:
                node.append({})
            node = node[idx]
            continue
        if part not in node or not isinstance(node[part], (dict, list)):
            node[part] = {} if not nxt.isdigit() else _IndexedDict()
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        idx = int(last)
        while len(node) <= idx:
            node.append({})
        node[idx] = value
    else:
        node[last] = value


class _IndexedDict(dict):
    """An override like `data.train.0.path=X` before we know the list: merged by index into the list."""


def deep_merge(base: Any, over: Any) -> Any:
    """Merge `over` into `base` (dicts recursively; lists element-wise when `over` is index-keyed)."""
    if isinstance(over, _IndexedDict) and isinstance(base, list):
        merged = list(base)
        for k, v in over.items():
            idx = int(k)
            while len(merged) <= idx:
                merged.append({})
            merged[idx] = deep_merge(merged[idx], v)
        return merged
    if isinstance(over, _IndexedDict):
        return [deep_merge({}, over[k]) for k in sorted(over, key=int)]
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else deep_merge(None, v)
        return out
    if isinstance(over, dict) and not isinstance(over, _IndexedDict):
        return {k: deep_merge(None, v) for k, v in over.items()}
    return over


def unknown_key_problem(key: str, path: str, known: list[str]) -> str:
    where = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(sorted(known))})"
    return f"unknown config key {where!r}{hint}"


def build(target: Any, raw: Any, path: str, problems: list[str]) -> Any:
    """Return a dataclass instance: `target` (a class or a default instance) updated from `raw`."""
    cls = target if isinstance(target, type) else type(target)
    base = target() if isinstance(target, type) else target
    if raw is None:
        return base
    if not isinstance(raw, dict):
        problems.append(f"config section {path or '<root>'!r} must be a mapping, got {raw!r}")
        return base
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    changes = {}
    for key, value in raw.items():
        if key not in names:
            problems.append(unknown_key_problem(str(key), path, names))
            continue
        where = f"{path}.{key}" if path else key
        changes[key] = coerce(hints[key], value, where, problems, getattr(base, key))
    return dataclasses.replace(base, **changes)


def coerce(tp: Any, value: Any, where: str, problems: list[str], default: Any = None) -> Any:
    """Coerce one value to annotated type `tp`; on failure record a problem and keep `default`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(default if dataclasses.is_dataclass(default) else tp, value, where, problems)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for a in options:  # exact type first (e.g. int | str keeps "auto" a str, 3 an int)
            if _is_instance(value, a):
                return value
        for a in options:
            sub: list[str] = []
            out = coerce(a, value, where, sub, default)
            if not sub:
                return out
        problems.append(f"{where}: {value!r} is not a valid {_type_name(tp)}")
        return default
    if origin is typing.Literal:
        if value in args:
            return value
        problems.append(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return default
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {value!r}")
            return default
        item_t = args[0] if args else Any
        defaults = default if isinstance(default, (list, tuple)) else []
        items = [
            coerce(item_t, v, f"{where}.{i}", problems, defaults[i] if i < len(defaults) else None)
            for i, v in enumerate(value)
        ]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return default
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{where}: expected true/false, got {value!r}")
        return default
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return (
                    int(float(value))
                    if float(value).is_integer()
                    else _fail(problems, where, value, tp, default)
                )
            except ValueError:
                pass
        return _fail(problems, where, value, tp, default)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        return _fail(problems, where, value, tp, default)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        return _fail(problems, where, value, tp, default)
    return value


def _fail(problems: list[str], where: str, value: Any, tp: Any, default: Any) -> Any:
    problems.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return default


def _is_instance(value: Any, tp: Any) -> bool:
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, float)
    if tp in (str, bool):
        return isinstance(value, tp)
    return False


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain nested dict/list (YAML-safe)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value} (for MLflow params)."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(tree, list) and any(isinstance(v, (dict, list)) for v in tree):
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}.{i}"))
    else:
        out[prefix] = tree
    return out
