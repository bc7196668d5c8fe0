"""`params.yaml`: the one source of settings, read and checked in one place."""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from src.errors import UserError

PARAMS_FILE = Path("params.yaml")
_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Parse `params.yaml` into a dict; a clear error if it is missing or not valid YAML."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found", hint="run the command from the repository root")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise UserError(f"{path} is not valid YAML{line}", hint="fix the syntax or restore it with git") from e
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a mapping of sections (download, train, ...)")
    return data


def get_key(params: Mapping[str, Any], key: str) -> Any:
    """Value of a dotted key such as `train.epochs`; a clear error naming the key if absent."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise UserError(f"params.yaml: missing key '{key}'", hint="add it (see the README's parameters)")
        node = node[part]
    return node


def checked(key: str, value: Any, kind: type) -> Any:
    """`value` if it is of `kind` (ints pass as floats and as strings, such as `train.threads: 2` for an option
    that also takes `auto`; strings pass as paths); else a clear error."""
    if hasattr(kind, "parse"):  # a choice such as engine.Switch (auto / true / false)
        try:
            return kind.parse(value)
        except ValueError:
            choices = ", ".join(member.value for member in kind)
            raise UserError(f"params.yaml: {key} = {value!r} must be one of {choices}") from None
    is_bool = isinstance(value, bool)
    ok = {
        int: isinstance(value, int) and not is_bool,
        float: isinstance(value, (int, float)) and not is_bool,
        bool: is_bool,
        str: isinstance(value, str) or (isinstance(value, int) and not is_bool),
    }.get(kind, isinstance(value, str))
    if not ok:
        raise UserError(f"params.yaml: {key} = {value!r} must be {_KINDS.get(kind, kind.__name__)}")
    return kind(value)


def option_defaults(command: Callable, keys: Mapping[str, str], params: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults for `command`'s options from `params.yaml`, checked against their annotated types.

    `keys` maps an option's name (`batch_size`) to its dotted key (`train.batch_size`).
    """
    hints = typing.get_type_hints(command)
    return {name: checked(key, get_key(params, key), hints[name]) for name, key in keys.items()}
