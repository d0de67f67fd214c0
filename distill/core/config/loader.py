"""Loading a pipeline: plain YAML data → typed dataclasses, strictly.

An unknown key, a wrong type or a contradiction raises ``ConfigError`` naming the key, before
any model is loaded. A section that names a plugin (a weighting method, say) carries a
``PLUGIN`` slot: the plugin's own options dataclass is read from the section's other keys, so
the plugin file alone declares them, and the loader, the checks and ``distill config`` read them
from it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from distill.core.errors import ConfigError


@dataclass(frozen=True)
class PluginSlot:
    """Declared by a section dataclass as ``PLUGIN: ClassVar[PluginSlot]``: its field
    ``discriminator`` names a plugin of registry ``registry``, whose ``Options`` dataclass is built
    from the section's remaining keys (flat beside the section's own) into field ``options``."""

    registry: str
    discriminator: str
    options: str = "options"


Plugins = dict[str, Callable[[str], Any]]
"""Registry name → lookup(plugin name) → the plugin class (with an ``Options`` dataclass); a
lookup raises ConfigError for an unknown name. distill/pipeline.py passes the real registries."""


def plugin_slot(cls: Any) -> PluginSlot | None:
    return getattr(cls, "PLUGIN", None) if isinstance(cls, type) else None


def plugin_options(cls: Any, plugins: Plugins, name: str, where: str) -> type:
    """The options dataclass of plugin ``name`` in ``cls``'s slot."""
    slot = plugin_slot(cls)
    assert slot is not None
    try:
        plugin = plugins[slot.registry](name)
    except ConfigError as e:
        raise ConfigError(f"{_join(where, slot.discriminator)}: {e}") from None
    return plugin.Options


def build(cls: Any, value: Any, where: str = "", plugins: Plugins | None = None) -> Any:
    """Turn plain YAML data into ``cls``, checking keys and types on the way down."""
    plugins = plugins or {}
    origin = typing.get_origin(cls)
    args = typing.get_args(cls)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return build(inner[0], value, where, plugins)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [build(args[0], v, f"{where}[{i}]", plugins) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): build(args[1], v, f"{where}.{k}", plugins) for k, v in value.items()}
    if dataclasses.is_dataclass(cls):
        return _build_dataclass(cls, value, where, plugins)
    if cls is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if cls in (int, float, str, bool) and (type(value) is not cls):
        raise ConfigError(f"{where}: expected {cls.__name__}, got {value!r}")
    return value


def _build_dataclass(cls: Any, value: Any, where: str, plugins: Plugins) -> Any:
    slot = plugin_slot(cls)
    if slot is not None and isinstance(value, str):  # a plugin section written as its name alone
        value = {slot.discriminator: value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(value).__name__}")
    value = dict(value)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    options = None
    if slot is not None:
        fields.pop(slot.options)
        if slot.options in value:
            raise ConfigError(
                f"{_join(where, slot.options)}: unknown key (plugin options sit in the section)"
            )
        chosen = value.get(slot.discriminator, fields[slot.discriminator].default)
        if chosen is dataclasses.MISSING:  # the plugin decides which other keys exist
            raise ConfigError(f"{_join(where, slot.discriminator)}: required key is missing")
        if slot.registry in plugins:
            options_cls = plugin_options(cls, plugins, chosen, where)
            own = {f.name for f in dataclasses.fields(options_cls)}
            options = build(options_cls, {k: value.pop(k) for k in list(value) if k in own}, where)
    for old, new in getattr(cls, "MOVED", {}).items():
        if old in value:
            raise ConfigError(f"{_join(where, old)}: moved; use {_join(where, new)}")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        known = ", ".join(fields)
        if slot is not None and options is not None and dataclasses.fields(options):
            known += (
                ", and for this "
                + slot.discriminator
                + ": "
                + ", ".join(f.name for f in dataclasses.fields(options))
            )
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key (known: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = build(hints[name], value[name], _join(where, name), plugins)
        elif dataclasses.is_dataclass(f.default_factory):
            # a section left out is built as if written empty, so its plugin's options (and its
            # sections') are filled exactly as for a section written out
            kwargs[name] = build(f.default_factory, {}, _join(where, name), plugins)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(where, name)}: required key is missing")
    if slot is not None:
        kwargs[slot.options] = options
    return cls(**kwargs)


def plain(obj: Any) -> Any:
    """A config object → plain data in the pipeline file's shape: a plugin's options sit flat in
    their section, as they are written (``build``'s inverse)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        slot = plugin_slot(type(obj))
        data = {}
        for f in dataclasses.fields(obj):
            if not f.init:  # derived by the loader's checks, not a key of the file
                continue
            if slot is not None and f.name == slot.options:
                data.update(plain(getattr(obj, f.name)) or {})
            else:
                data[f.name] = plain(getattr(obj, f.name))
        return data
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name → the docstring written under it in ``cls``'s source (what ``--help`` and
    ``distill config`` show)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in zip(body, body[1:]):
        documented = isinstance(after, ast.Expr) and isinstance(getattr(after, "value", None), ast.Constant)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and documented:
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def described(obj: Any, where: str = "") -> Iterator[tuple[str, str, Any, str]]:
    """(key, type, value, doc) for every leaf key of a config object, plugin options included:
    what ``distill config`` prints."""
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        return
    slot = plugin_slot(type(obj))
    hints = typing.get_type_hints(type(obj))
    docs = field_docs(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not f.init:
            continue
        if slot is not None and f.name == slot.options:
            yield from described(value, where)
        elif dataclasses.is_dataclass(value):
            yield from described(value, _join(where, f.name))
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for item in value:
                yield from described(item, _join(where, f"{f.name}.{getattr(item, 'name', '?')}"))
        else:
            yield _join(where, f.name), _type_name(hints[f.name]), value, docs.get(f.name, "")


def _type_name(hint: Any) -> str:
    """A field's type as a reader writes it: ``int | None``, ``dict[str, float]``, a Literal as
    its choices ``hard|shared_private``; classes by their own name, without the module path."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "|".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None and args:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"
    if hint is type(None):
        return "None"
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        if key == "tasks":
            raise ConfigError(f"--set {dotted}: use tasks.NAME.KEY")
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a mapping")
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    """Apply ``key.path=value`` strings; values are parsed as YAML (``3`` is an int)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if key.startswith("tasks."):
            _, name, rest = (key.split(".", 2) + [""])[:3]
            matches = [t for t in data.get("tasks", []) if isinstance(t, dict) and t.get("name") == name]
            if not matches or not rest:
                raise ConfigError(f"--set {key}: no task named {name!r}")
            _set(matches[0], rest, value)
        else:
            _set(data, key, value)


def read_yaml(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A pipeline file's plain data, ``--set`` overrides applied."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: pipeline file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{at} invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    apply_overrides(data, overrides or [])
    return data
