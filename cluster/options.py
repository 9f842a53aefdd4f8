"""Command-line options declared once, on dataclass fields: the parser and the object both come from them.

    @dataclass
    class ServerOptions:
        port: int = option(5000, "port (default %(default)s)")
        extra: list[str] = option(help="extra header, repeatable", default_factory=list, flag="--header")

    add_options(parser, ServerOptions)              # --port PORT, --header HEADER (repeatable)
    opts = from_args(ServerOptions, parser.parse_args(argv))

The argparse details follow from the field: its name gives the flag (`gpus_per_node` ->
`--gpus-per-node`, or `flag=` names another), its type the conversion (int, float; bool -> a
switch, default False; list -> repeatable, or `nargs="*"` for a positional), its default the
default (`%(default)s` in the help prints it). Further argparse keywords (choices, metavar, ...)
pass through. Fields declared without `option` are not on the command line and keep their defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING
from typing import Any, TypeVar

_KEY = "cli_option"
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class _Option:
    help: str
    flag: str  # "--name"; "" = from the field name
    positional: bool
    argparse: dict[str, Any]

    def name(self, field_name: str) -> str:
        """What add_argument gets: the positional's name or the flag."""
        if self.positional:
            return field_name
        return self.flag or "--" + field_name.replace("_", "-")

    def dest(self, field_name: str) -> str:
        """The namespace attribute the value lands in (argparse's own rule: --signal-lead -> signal_lead)."""
        return self.name(field_name).lstrip("-").replace("-", "_")


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    default_factory: Any = MISSING,
    flag: str = "",
    positional: bool = False,
    **argparse_kw: Any,
) -> Any:
    """A dataclass field that is also a command-line option (positional=True: a positional argument)."""
    if positional and flag:
        raise TypeError("a positional argument is named after its field; drop flag=")
    spec = _Option(help, flag, positional, dict(argparse_kw))
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: spec})


def _options(cls: type) -> list[tuple[dataclasses.Field, _Option]]:
    return [(f, f.metadata[_KEY]) for f in dataclasses.fields(cls) if _KEY in f.metadata]


def _unwrap_optional(hint: Any) -> Any:
    """int | None -> int."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _type_kwargs(hint: Any, positional: bool) -> dict[str, Any]:
    """argparse keywords that follow from the field's type."""
    hint = _unwrap_optional(hint)
    if hint is bool:
        return {"action": "store_true"}  # a switch: the field's default must be False
    if typing.get_origin(hint) is list:
        kw: dict[str, Any] = {"nargs": "*"} if positional else {"action": "append"}
        item = (typing.get_args(hint) or (str,))[0]
        return kw | ({"type": item} if item in (int, float) else {})
    return {"type": hint} if hint in (int, float) else {}


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one argument per `option` field of dataclass `cls`, in field order."""
    hints = typing.get_type_hints(cls)
    for f, spec in _options(cls):
        kw: dict[str, Any] = {"help": spec.help, **_type_kwargs(hints[f.name], spec.positional)}
        if f.default_factory is not MISSING:
            kw["default"] = f.default_factory()  # a fresh list per parser: argparse appends to it
        elif f.default is not MISSING:
            if f.default is True and kw.get("action") == "store_true":
                raise TypeError(f"{cls.__name__}.{f.name}: a switch defaults to False")
            kw["default"] = f.default
        elif not spec.positional:
            kw["required"] = True
        parser.add_argument(spec.name(f.name), **kw | spec.argparse)


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """`cls` built from the parsed namespace (its `option` fields; the others keep their defaults)."""
    values = {}
    for f, spec in _options(cls):
        value = getattr(args, spec.dest(f.name))
        values[f.name] = list(value) if isinstance(value, list) else value
    return cls(**values)
