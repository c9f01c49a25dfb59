"""Command-line options generated from a configuration dataclass, and the dataclass built back.

A configuration (``TrainConfig``, ``AdaptConfig``) is the one place that states each setting's
name, type and default; its fields carry what only the command line needs in
``dataclasses.field(metadata=...)``:

- ``help``: the option's help text (``%(default)s`` works as in argparse);
- ``choices``: the accepted values;
- ``flag``: the option string when it is not ``--field-name`` (``--from``); a ``--no-...`` flag
  on a boolean that defaults to true stores false;
- ``metavar``: the value's name in ``--help``.

Booleans become switches: ``--name`` when the default is false, ``--name/--no-name`` when it is
true (unless a ``--no-...`` flag says otherwise). ``int | None`` and the like take the type of
their non-None part.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

__all__ = ["add_config_options", "config_from_args", "option_fields"]

ConfigT = TypeVar("ConfigT")


def option_fields(config_type: type, skip: Collection[str] = ()) -> list[dataclasses.Field]:
    """The fields of ``config_type`` that are command-line options, in declaration order."""
    unknown = set(skip) - {f.name for f in dataclasses.fields(config_type)}
    if unknown:
        raise ValueError(f"{config_type.__name__} has no field {', '.join(sorted(unknown))}")
    return [f for f in dataclasses.fields(config_type) if f.name not in skip]


def add_config_options(
    parser: argparse.ArgumentParser,
    config_type: type,
    *,
    skip: Collection[str] = (),
    choices: Mapping[str, Collection[str]] | None = None,
    optional: bool = False,
) -> None:
    """Add one option per field of ``config_type`` (but those in ``skip``) to ``parser``.

    ``choices`` gives the accepted values of fields whose values are known only when the parser
    is built (the registered architectures). A field without a default is a required option,
    unless ``optional``: then it defaults to None and the command checks it itself (``train
    --resume`` needs neither ``--arch`` nor ``--data``).
    """
    hints = typing.get_type_hints(config_type)
    for field in option_fields(config_type, skip):
        meta = field.metadata
        flag = meta.get("flag", "--" + field.name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": field.name}
        if "help" in meta:
            kwargs["help"] = meta["help"]
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        value_type = _option_type(hints[field.name], field.name)
        default = _default(field)
        if value_type is bool:
            if flag.startswith("--no-"):
                kwargs["action"] = "store_false"
            elif default is True:
                kwargs.update(action=argparse.BooleanOptionalAction, default=True)
            else:
                kwargs["action"] = "store_true"
            parser.add_argument(flag, **kwargs)
            continue
        if value_type is not str:  # argparse passes strings through as they are
            kwargs["type"] = value_type
        allowed = (choices or {}).get(field.name, meta.get("choices"))
        if allowed is not None:
            kwargs["choices"] = tuple(allowed)
        if default is not dataclasses.MISSING:
            kwargs["default"] = default
        elif optional:
            kwargs["default"] = None
        else:
            kwargs["required"] = True
        parser.add_argument(flag, **kwargs)


def config_from_args(config_type: type[ConfigT], args: argparse.Namespace) -> ConfigT:
    """``config_type`` from the parsed options; fields that are not options keep their default."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config_type)
        if hasattr(args, f.name)
    }
    return config_type(**given)


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _option_type(hint: Any, name: str) -> type:
    """``int`` for ``int``, ``int | None`` and ``Optional[int]``; only scalar types are options."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        parts = [part for part in typing.get_args(hint) if part is not type(None)]
        if len(parts) == 1:
            hint = parts[0]
    if hint in (bool, int, float, str):
        return hint
    raise TypeError(f"field {name!r}: no command-line option for type {hint!r}")
