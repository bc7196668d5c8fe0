"""`params.yaml`, read once and checked once: each stage's settings as frozen dataclasses.

A section becomes its dataclass by name (`TrainConfig(**params["train"])`) after one check: every key is a field,
every field is set, every value has the field's type. A typo, a key written twice, a missing key or a wrong type
is one `error:` line naming the key, before a stage prints or computes anything.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from src.engine import TrainConfig
from src.errors import UserError
from src.model import ModelConfig, Norm
from src.speed import Precision

PARAMS_FILE = Path("params.yaml")
_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list"}


@dataclass(frozen=True)
class Compute:
    """Where and how stages compute: `train.device`, `train.threads` and `train.precision`."""

    device: str
    threads: int | str  # N, or auto
    precision: Precision


@dataclass(frozen=True)
class Variant:
    """One entry of `variants`: a train stage. The settings that apply to one norm alone live here, so that only
    that norm's stage depends on them: `gn_groups` (gn), `l1` and `l1_tensor_mean` (bn)."""

    label: str
    norm: Norm
    gn_groups: int = 4
    l1: float = 0.0
    l1_tensor_mean: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", Norm(self.norm).value)  # a plain string, as in ModelConfig


# The keys of a `variants` entry that only one norm reads: key -> that norm.
NORM_ONLY = {"gn_groups": "gn", "l1": "bn", "l1_tensor_mean": "bn"}


@dataclass(frozen=True)
class Run:
    """A variant's training exactly as `params.yaml` defines it."""

    variant: str
    label: str
    model: ModelConfig
    train: TrainConfig
    compute: Compute


@dataclass(frozen=True)
class Download:
    """`download`: which dataset (the stage knows the choices)."""

    dataset: str


@dataclass(frozen=True)
class Evaluate:
    """`evaluate`."""

    batch_size: int

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"evaluate.batch_size must be >= 1 (got {self.batch_size})")


@dataclass(frozen=True)
class Shift:
    """`shift`: the severities of each kind of shift (src/shift.py) and the seed of the noise."""

    contrast: list[float]
    contrast_unclipped: list[float]
    brightness: list[float]
    brightness_unclipped: list[float]
    noise: list[float]
    blur: list[float]
    rotation: list[float]
    invert: list[float]
    seed: int

    def __post_init__(self) -> None:
        rules = {"contrast": (lambda a: a > 0, "> 0"), "contrast_unclipped": (lambda a: a > 0, "> 0"),
                 "noise": (lambda s: s >= 0, ">= 0"), "blur": (lambda s: 0 <= s <= 4, "in [0, 4] pixels"),
                 "invert": (lambda t: 0 <= t <= 1, "in [0, 1]")}
        for name, (ok, allowed) in rules.items():
            if not all(ok(v) for v in getattr(self, name)):
                raise ValueError(f"shift.{name} must be {allowed} (got {getattr(self, name)})")

    def severities(self) -> dict[str, list[float]]:
        """Kind -> its severities, in the order of the panels."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "seed"}


@dataclass(frozen=True)
class Plot:
    """`plot`: the figures of the main pipeline and of the batch-size study."""

    dpi: int

    def __post_init__(self) -> None:
        if self.dpi < 20:
            raise ValueError(f"plot.dpi must be >= 20 (got {self.dpi})")


@dataclass(frozen=True)
class BatchStudy:
    """`batch_study`: the batch-size study (studies/batch_size)."""

    batch_sizes: list[int]
    seeds: list[int]
    epochs: int
    train_images: int

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"batch_study.{name} must list at least one value")
        if self.epochs < 1 or self.train_images < 1:
            raise ValueError("batch_study.epochs and batch_study.train_images must be >= 1")


def load(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Parse `params.yaml`; a clear error if it is missing, not valid YAML, not a mapping or holds a key twice."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found", hint="run the command from the repository root")
    text = path.read_text()
    try:
        _refuse_duplicates(yaml.compose(text, Loader=yaml.SafeLoader), path)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise UserError(f"{path} is not valid YAML{line}", hint="fix the syntax or restore it with git") from e
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a mapping of sections (download, train, ...)")
    return data


def _refuse_duplicates(node: yaml.Node | None, path: Path, where: str = "") -> None:
    """YAML keeps the last of two equal keys without a word; here the second one is an error."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = f"{where}{key.value}"
            if name in seen:
                raise UserError(f"{path}: key '{name}' is set twice (lines {seen[name]} and {key.start_mark.line + 1})",
                                hint="delete one of them")
            seen[name] = key.start_mark.line + 1
            _refuse_duplicates(value, path, f"{name}.")
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicates(item, path, where)


_REQUIRED = object()


def get_key(params: Mapping[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    """The value of a dotted key such as `train.epochs`; if it is absent, `default`, or without one a clear error
    naming the key."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is not _REQUIRED:
                return default
            raise UserError(f"params.yaml: missing key '{key}'", hint="add it (see the README's settings)")
        node = node[part]
    return node


def section(params: Mapping[str, Any], name: str, cls: type, skip: tuple[str, ...] = (), optional: tuple[str, ...] = (),
            **given: Any) -> Any:
    """`cls(**params[name], **given)`, the keys in `skip` left out (they belong to another dataclass), after
    checking the section's keys against `cls`'s fields (but `given`'s) and its values against their types. Every
    field but those in `optional` must be set: params.yaml holds the whole recipe, not the dataclass defaults."""
    values = get_key(params, name)
    if not isinstance(values, Mapping):
        raise UserError(f"params.yaml: {name} must be a mapping of settings")
    hints = typing.get_type_hints(cls)
    wanted = [f for f in fields(cls) if f.name not in given]
    known = {f.name for f in wanted} | set(skip)
    for key in values:
        if key not in known:
            raise UserError(f"params.yaml: unknown key '{name}.{key}'",
                            hint=f"the {name} settings are: {', '.join(sorted(known))}")
    kwargs = {}
    for f in wanted:
        if f.name in values:
            kwargs[f.name] = _typed(f"{name}.{f.name}", values[f.name], hints[f.name])
        elif f.name not in optional:
            raise UserError(f"params.yaml: missing key '{name}.{f.name}'", hint="add it (see the README's settings)")
    try:
        return cls(**kwargs, **given)
    except ValueError as e:  # the dataclass's own rules (ConfigError is a ValueError)
        raise UserError(f"params.yaml: {e}") from None


def _typed(key: str, value: Any, kind: Any) -> Any:
    """`value` as `kind` (int, float, bool, str, an Enum, list[...] or a union of these); else a clear error.
    Integers pass as numbers; nothing else is converted."""
    options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, _UnionType) else (kind,)
    is_bool = isinstance(value, bool)
    for option in options:
        if isinstance(option, type) and issubclass(option, Enum):
            try:
                return option(value)
            except ValueError:
                continue
        if typing.get_origin(option) is list:
            (item,) = typing.get_args(option)
            if isinstance(value, list):
                return [_typed(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
        elif option is float and isinstance(value, (int, float)) and not is_bool:
            return float(value)
        elif option is int and isinstance(value, int) and not is_bool:
            return value
        elif (option is bool and is_bool) or (option is str and isinstance(value, str)):
            return value
    return _refuse(key, value, options)


def _refuse(key: str, value: Any, options: tuple) -> typing.NoReturn:
    names = []
    for option in options:
        if isinstance(option, type) and issubclass(option, Enum):
            names.append("one of " + ", ".join(member.value for member in option))
        else:
            names.append(_KINDS.get(typing.get_origin(option) or option, str(option)))
    raise UserError(f"params.yaml: {key} = {value!r} must be {' or '.join(names)}")


_UnionType = type(int | str)


def variant(params: Mapping[str, Any], name: str) -> Variant:
    """The entry `variants.<name>`; an error naming the variants if there is none, or if it sets a key that
    its norm does not read."""
    variants = get_key(params, "variants")
    if name not in variants:
        raise UserError(f"unknown variant {name!r}; params.yaml variants are: {', '.join(variants)}")
    spec = section(params, f"variants.{name}", Variant, optional=tuple(NORM_ONLY))
    for key, norm in NORM_ONLY.items():
        if key in variants[name] and spec.norm != norm and (key != "l1" or spec.l1):
            raise UserError(f"params.yaml: variants.{name}.{key} applies to norm {norm} only (this variant's is "
                            f"{spec.norm})", hint=f"delete it from variants.{name}")
    return spec


def variants(params: Mapping[str, Any]) -> dict[str, Variant]:
    """Every entry of `variants`, in the file's order."""
    return {name: variant(params, name) for name in get_key(params, "variants")}


def compute(params: Mapping[str, Any]) -> Compute:
    """Where and how to compute, from the `train` section."""
    train = get_key(params, "train")
    picked = {k: train[k] for k in ("device", "threads", "precision") if k in train}
    return section({"train": picked}, "train", Compute)


def run(params: Mapping[str, Any], name: str) -> Run:
    """Variant `name`'s run: `model` and `train` plus the variant's own settings."""
    spec = variant(params, name)
    model = section(params, "model", ModelConfig, norm=spec.norm, gn_groups=spec.gn_groups)
    train = section(params, "train", TrainConfig, skip=("device", "threads"),
                    l1=spec.l1, l1_tensor_mean=spec.l1_tensor_mean)
    return Run(name, spec.label, model, train, compute(params))
