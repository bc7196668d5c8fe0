"""The settings: `params.yaml`'s schema, each setting defined once (type, range or choices, one-line description).

`params.yaml` holds every value; these pydantic models hold none (strict types, unknown keys refused), so a typo,
a key written twice, a missing key, a wrong type or a value out of range is one `error:` line naming the key,
before a stage prints or computes anything. `python -m src.config` lists every setting.

This module imports neither torch nor the training code: every stage reads its settings through it, and the
model (`ModelConfig`) and the training loop (`TrainConfig`) take theirs from it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from src.errors import UserError

PARAMS_FILE = Path("params.yaml")


class Norm(str, Enum):
    """Normalization layer placed after every convolution."""

    bn = "bn"  # BatchNorm2d: statistics per channel, over the batch and H, W
    gn = "gn"  # GroupNorm(groups, C): statistics per image and group of channels
    ln = "ln"  # GroupNorm(1, C): statistics per image, over all channels and H, W


class Arch(str, Enum):
    """Which network `src.model.Net` builds."""

    default = "default"  # this project's network, shaped by the `model` settings
    writeup = "writeup"  # the write-up's fixed network (model.WRITEUP_PLAN); the other `model` settings do not apply


class Precision(str, Enum):
    """How training computes, and so whether its results depend on the CPU (src/speed.py)."""

    exact = "exact"
    fast = "fast"


class Loader(str, Enum):
    """Where the training batches come from (src/loader.py)."""

    tensors = "tensors"
    torchvision = "torchvision"


def _rule(field: str, message: str, **ctx: Any) -> PydanticCustomError:
    """An error of a rule that a range cannot say, about `field` (a model's rule; "" in a field's own validator)."""
    return PydanticCustomError("rule", f"{field} {message}" if field else message, {"field": field, **ctx})


def _threads(value: Any) -> int | str:
    if value == "auto" or (type(value) is int and value >= 1):
        return value
    raise _rule("", "must be auto or a positive integer (got {value})", value=repr(value))


def _device(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return value
    raise _rule("", "= {value} is unknown; use auto, cpu, cuda or cuda:N", value=repr(value))


def _choice(kind: type[Enum], description: str) -> Any:
    """A field holding one of `kind`'s values, stored as the plain string (as model files record it)."""
    return Annotated[kind, Field(strict=False, description=description)]


class Settings(BaseModel):
    """Strict types (no `"1"` for 1, no `true` for 1), no unknown keys, frozen; choices kept as plain strings."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, use_enum_values=True)

    def changed(self, **changes: Any) -> Settings:
        """A copy with `changes`, validated as params.yaml's values are."""
        return type(self).model_validate({**self.model_dump(), **changes})


# Settings that two models share (a variant's, given to the run's model or training config): defined here once.
NormSetting = _choice(Norm, "the normalization after every convolution: BatchNorm, GroupNorm, or GroupNorm with one "
                             "group (LayerNorm)")
GnGroups = Annotated[int, Field(ge=1, description="GroupNorm groups, gn only (must divide every channel count)")]
L1 = Annotated[float, Field(ge=0, description="L1 factor, bn only (0 = off)")]
L1TensorMean = Annotated[bool, Field(description="the L1 term, bn only: false = sum of all |w|; "
                                                 "true = sum of each tensor's mean |w| (the write-up's)")]
BnImages = Annotated[int, Field(ge=0, description="BatchNorm's training statistics over groups of this many images "
                                                 "of each process's batch, bn only (0 = the whole batch): one process "
                                                 "computing what batch / bn_images devices do with local BatchNorm")]
SyncBn = Annotated[bool, Field(description="SyncBatchNorm: statistics over the whole batch of all processes, bn only "
                                           "(CUDA devices only)")]
PrecisionSetting = _choice(Precision, "exact: float32, the same bits on every x86-64 CPU; "
                                      "fast: bfloat16 and layouts per CPU (faster, CPU-dependent)")
# A model of another norm than gn records this many groups, which it does not use (the model files' format).
UNUSED_GN_GROUPS = 4


def channel_plan(width: int) -> list[int]:
    """Output channels of the default network's six 3x3 convolutions: narrow before the pool, `width` after it."""
    return [width // 2, 3 * width // 4, width, width, width, width]


class ModelConfig(Settings):
    """Everything needed to rebuild a `Net`, saved in every model file: the `model` section plus the variant's
    norm and groups."""

    norm: NormSetting
    arch: _choice(Arch, "default, or writeup: the write-up's fixed 8,880-parameter network "
                        "(the other model settings do not apply)")
    gn_groups: GnGroups
    bn_images: BnImages
    width: Annotated[int, Field(ge=4, description="channels of the wide 3x3 convolutions")]
    dropout: Annotated[float, Field(ge=0, lt=1, description="Dropout2d rate after each block")]
    weight_std: Annotated[bool, Field(description="weight standardization of the convolutions "
                                                  "(no extra parameters)")]
    relu_before_norm: Annotated[bool, Field(description="true: conv -> ReLU -> norm in each block (the write-up's "
                                                        "order); false: conv -> norm -> ReLU")]

    @model_validator(mode="after")
    def _groups_divide_channels(self) -> ModelConfig:
        if self.norm == Norm.gn and self.arch == Arch.default:
            plan = channel_plan(self.width)
            for c in plan:
                if c % self.gn_groups:
                    raise _rule("gn_groups", "= {groups} does not divide the channel count {c}; choose a divisor "
                                "of {plan}", groups=self.gn_groups, c=c, plan=str(sorted(set(plan))))
        return self


class TrainConfig(Settings):
    """The recipe: optimizer, schedule, augmentation and data split (the `train` section but where and how to
    compute, plus the variant's L1)."""

    epochs: Annotated[int, Field(ge=1, description="epochs of training")]
    batch_size: Annotated[int, Field(ge=1, description="images per step")]
    lr: Annotated[float, Field(gt=0, description="peak learning rate of the one-cycle schedule")]
    momentum: Annotated[float, Field(ge=0, lt=1, description="SGD momentum (the peak, if cycled)")]
    nesterov: Annotated[bool, Field(description="Nesterov momentum")]
    cycle_momentum: Annotated[bool, Field(description="true: the momentum falls to 0.85 while the learning rate "
                                                      "rises, and back")]
    weight_decay: Annotated[float, Field(ge=0, description="SGD weight decay")]
    pct_start: Annotated[float, Field(gt=0, lt=1, description="fraction of the steps spent warming up")]
    l1: L1
    l1_tensor_mean: L1TensorMean
    sync_bn: SyncBn
    processes: Annotated[int, Field(ge=1, description="data-parallel processes (DistributedDataParallel), each "
                                                      "training on batch_size / processes images of every step")]
    seed: Annotated[int, Field(ge=0, description="seed of the weights, the order and the augmentation")]
    rotation: Annotated[float, Field(ge=0, le=180, description="random rotation, +- degrees")]
    brightness: Annotated[float, Field(ge=0, lt=1, description="brightness jitter, +- fraction")]
    contrast: Annotated[float, Field(ge=0, lt=1, description="contrast jitter, +- fraction")]
    label_smoothing: Annotated[float, Field(ge=0, lt=1, description="label smoothing of the cross-entropy")]
    grad_clip: Annotated[float, Field(ge=0, description="clip the gradients' global norm to this (0 = off)")]
    validation: Annotated[int, Field(ge=0, description="N > 0: hold out the last N training images and score "
                                                       "them instead of the test set")]
    precision: PrecisionSetting
    loader: _choice(Loader, "tensors: the batches augmented as tensors (src/augment.py); torchvision: the "
                            "write-up's PIL + DataLoader path")

    @model_validator(mode="after")
    def _cycled_momentum(self) -> TrainConfig:
        if self.cycle_momentum and self.momentum < 0.85:
            raise _rule("momentum", "must be in [0.85, 1) with train.cycle_momentum (it cycles from 0.85 up to it) "
                        "(got {value})", value=self.momentum)
        return self

    @property
    def split(self) -> str:
        """What the per-epoch and final scores are measured on: `test`, or `validation` for a tuning run."""
        return split_name(self.validation)


def split_name(validation: int) -> str:
    """The split that `train.validation` scores: `test`, or `validation` when it holds images out."""
    return "validation" if validation else "test"


class Compute(Settings):
    """Where and how stages compute: `train.device`, `train.threads` and `train.precision`."""

    device: Annotated[str, PlainValidator(_device),
                      WithJsonSchema({"type": "string", "x-allowed": "auto, cpu, cuda or cuda:N"}),
                      Field(description="where to compute; auto picks CUDA when present, which does not give the "
                                        "CPU's bits")]
    threads: Annotated[int | str, PlainValidator(_threads),
                       WithJsonSchema({"type": ["integer", "string"], "x-allowed": "integer >= 1 or auto"}),
                       Field(description="CPU threads, or auto (one per physical core): the count decides the "
                                         "order of sums, so 2 re-makes the committed models")]
    precision: PrecisionSetting


class Variant(Settings):
    """One entry of `variants`, a train stage, with the settings that apply to its norm alone (so that a change
    retrains that variant only). A norm-only setting left out is off (l1) or unused (gn_groups)."""

    label: Annotated[str, Field(description="the variant's name in tables, plots and legends")]
    norm: NormSetting
    gn_groups: GnGroups = UNUSED_GN_GROUPS
    l1: L1 = 0.0
    l1_tensor_mean: L1TensorMean = False
    bn_images: BnImages = 0
    sync_bn: SyncBn = False

    @model_validator(mode="after")
    def _norm_only(self) -> Variant:
        for key, norm in NORM_ONLY.items():
            if key in self.model_fields_set and self.norm != norm and (key != "l1" or self.l1):
                raise _rule(key, "applies to norm {norm} only (this variant's is {this})", norm=norm, this=self.norm)
        return self


# The keys of a `variants` entry that only one norm reads: key -> that norm.
NORM_ONLY = {"gn_groups": "gn", "l1": "bn", "l1_tensor_mean": "bn", "bn_images": "bn", "sync_bn": "bn"}


class Download(Settings):
    """`download`."""

    dataset: Annotated[Literal["mnist", "fashion-mnist"], Field(description="the dataset to download and train on")]


class Evaluate(Settings):
    """`evaluate`."""

    batch_size: Annotated[int, Field(ge=1, description="images per forward pass when scoring (no effect on "
                                                       "the scores)")]


Severities = list[Annotated[float, Field(gt=0)]]


class Shift(Settings):
    """`shift`: the severities of each kind of shift (src/shift.py) and the seed of the noise."""

    contrast: Annotated[Severities, Field(description="pixels times a, rounded and clipped to 0-255 as a real image")]
    contrast_unclipped: Annotated[Severities, Field(description="the same, not clipped: values no image holds, to "
                                                                "test invariance")]
    brightness: Annotated[list[float], Field(description="pixels + b * 255, clipped")]
    brightness_unclipped: Annotated[list[float], Field(description="the same, not clipped")]
    noise: Annotated[list[Annotated[float, Field(ge=0)]], Field(description="Gaussian noise of std s * 255, "
                                                                            "clipped")]
    blur: Annotated[list[Annotated[float, Field(ge=0, le=4)]], Field(description="Gaussian blur, std in pixels")]
    rotation: Annotated[list[float], Field(description="degrees, every other image the other way")]
    invert: Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(description="(1 - t) x + t (255 - x): 1 is "
                                                                                   "the negative image")]
    seed: Annotated[int, Field(ge=0, description="seed of the noise (one draw for every severity and model)")]

    def severities(self) -> dict[str, list[float]]:
        """Kind -> its severities, in the order of the panels."""
        return {name: getattr(self, name) for name in type(self).model_fields if name != "seed"}


class Plot(Settings):
    """`plot`: the figures of the main pipeline and of the per-device study."""

    dpi: Annotated[int, Field(ge=20, description="resolution of the PNG figures")]


class PerDevice(Settings):
    """`per_device`: the per-device study (studies/per_device): BatchNorm's test error against the images each of
    the devices that share the batch normalizes over."""

    variant: Annotated[str, Field(description="the BatchNorm variant studied (a key of variants)")]
    images: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, description="images per device: the "
                                                               "variant's bn_images at each point")]
    seeds: Annotated[list[int], Field(min_length=1, description="the seeds of each point")]
    processes: Annotated[int, Field(ge=2, description="real data-parallel processes of the ddp points")]
    threads: Annotated[int, Field(ge=1, description="CPU threads of each of those processes (processes x threads "
                                                    "at most the cores)")]
    ddp: Annotated[list[str], Field(description="variants also trained as that many DDP processes")]
    ddp_seeds: Annotated[list[int], Field(description="the seeds of the ddp points")]


# Each section of params.yaml: the settings classes its keys belong to, and the fields those classes take from
# elsewhere (a variant's norm, groups and L1), which the section must not set.
SECTIONS: dict[str, tuple[tuple[type[Settings], ...], tuple[str, ...]]] = {
    "download": ((Download,), ()),
    "model": ((ModelConfig,), ("norm", "gn_groups", "bn_images")),
    "train": ((TrainConfig, Compute), ("l1", "l1_tensor_mean", "sync_bn")),
    "variants.<name>": ((Variant,), ()),
    "evaluate": ((Evaluate,), ()),
    "shift": ((Shift,), ()),
    "per_device": ((PerDevice,), ()),
    "plot": ((Plot,), ()),
}


@dataclass(frozen=True)
class Run:
    """A variant's training exactly as `params.yaml` defines it."""

    variant: str
    label: str
    model: ModelConfig
    train: TrainConfig
    compute: Compute


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
_LIST_HINT = "`python -m src.config` lists every setting"


def get_key(params: Mapping[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    """The value of a dotted key such as `train.epochs`; if it is absent, `default`, or without one a clear error
    naming the key."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is not _REQUIRED:
                return default
            raise UserError(f"params.yaml: missing key '{key}'", hint=f"add it ({_LIST_HINT})")
        node = node[part]
    return node


def section(params: Mapping[str, Any], name: str, cls: type[Settings], skip: tuple[str, ...] = (),
            given: Mapping[str, Any] | None = None, given_from: str = "") -> Any:
    """Section `name` of `params` validated into `cls`, leaving out the keys in `skip` (another class's) and adding
    the fields `given` (from the section `given_from`), which the section must not set itself."""
    values = get_key(params, name)
    if not isinstance(values, Mapping):
        raise UserError(f"params.yaml: {name} must be a mapping of settings")
    given = dict(given or {})
    known = [f for f in cls.model_fields if f not in given] + list(skip)
    for key in values:
        if key not in known:
            raise UserError(f"params.yaml: unknown key '{name}.{key}'",
                            hint=f"the {name} settings are: {', '.join(sorted(known))}")
    try:
        return cls.model_validate({**{k: v for k, v in values.items() if k not in skip}, **given})
    except ValidationError as e:
        raise _user_error(e, cls, lambda field: given_from if field in given else name) from None


def _user_error(e: ValidationError, cls: type[Settings], where: Any) -> UserError:
    """The first problem of `e` as one line naming the key (`where(field)` gives the section a field is in)."""
    err = e.errors(include_url=False)[0]
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    loc = list(err["loc"])
    if kind == "rule" and ctx.get("field"):  # a model's rule: its message starts with the field's name
        field, key = ctx["field"], where(ctx["field"]) + "".join(f".{p}" for p in loc)
        return UserError(f"params.yaml: {key}.{err['msg']}", hint=_described(cls, field, f"{key}.{field}"))
    field = str(loc[0]) if loc else ""
    key = where(field) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    hint = _described(cls, field, key.split("[")[0])
    if kind == "rule":
        return UserError(f"params.yaml: {key} {err['msg']}", hint=hint)
    if kind == "missing":
        return UserError(f"params.yaml: missing key '{key}'", hint=f"add it ({_LIST_HINT})")
    if kind in ("enum", "literal_error"):
        choices = ", ".join(re.findall(r"'([^']*)'", ctx.get("expected", "")))
        return UserError(f"params.yaml: {key} = {value!r} must be one of {choices}", hint=hint)
    if kind in _KINDS:
        return UserError(f"params.yaml: {key} = {value!r} must be {_KINDS[kind]}", hint=hint)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return UserError(f"params.yaml: {key} must be {allowed(cls, loc)} (got {value!r})", hint=hint)
    if kind == "too_short":
        return UserError(f"params.yaml: {key} must list at least one value", hint=hint)
    return UserError(f"params.yaml: {key}: {err['msg']}", hint=hint)


def _described(cls: type[Settings], field: str, key: str) -> str | None:
    """A hint from the field's description."""
    text = _schema(cls).get(field, {}).get("description")
    return f"{key}: {text}" if text else None


_KINDS = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
          "string_type": "a string", "list_type": "a list", "model_type": "a mapping of settings",
          "dict_type": "a mapping of settings"}


def _schema(cls: type[Settings]) -> dict[str, dict]:
    """`cls`'s fields as JSON Schema: their types, ranges and descriptions."""
    return cls.model_json_schema()["properties"]


def allowed(cls: type[Settings], loc: list) -> str:
    """The range of the field (or list item) at `loc`, as `> 0`, `>= 1` or `in [0, 1)`."""
    prop = _schema(cls).get(str(loc[0]), {})
    if len(loc) > 1 or "items" in prop:
        prop = prop.get("items", prop)
    low = next(((k, prop[k]) for k in ("minimum", "exclusiveMinimum") if k in prop), None)
    high = next(((k, prop[k]) for k in ("maximum", "exclusiveMaximum") if k in prop), None)
    if low and high:
        return (f"in {'[' if low[0] == 'minimum' else '('}{low[1]}, {high[1]}"
                f"{']' if high[0] == 'maximum' else ')'}")
    if low:
        return f"{'>=' if low[0] == 'minimum' else '>'} {low[1]}"
    if high:
        return f"{'<=' if high[0] == 'maximum' else '<'} {high[1]}"
    return "valid"


def variant(params: Mapping[str, Any], name: str) -> Variant:
    """The entry `variants.<name>`; an error naming the variants if there is none."""
    variants = get_key(params, "variants")
    if not isinstance(variants, Mapping):
        raise UserError("params.yaml: variants must be a mapping of variants")
    if name not in variants:
        raise UserError(f"unknown variant {name!r}; params.yaml variants are: {', '.join(variants)}")
    return section(params, f"variants.{name}", Variant)


def variants(params: Mapping[str, Any]) -> dict[str, Variant]:
    """Every entry of `variants`, in the file's order."""
    return {name: variant(params, name) for name in get_key(params, "variants")}


def compute(params: Mapping[str, Any]) -> Compute:
    """Where and how to compute, from the `train` section."""
    train = get_key(params, "train")
    picked = {k: train[k] for k in Compute.model_fields if isinstance(train, Mapping) and k in train}
    return section({"train": picked}, "train", Compute)


def run(params: Mapping[str, Any], name: str) -> Run:
    """Variant `name`'s run: `model` and `train` plus the variant's own settings."""
    spec = variant(params, name)
    model = section(params, "model", ModelConfig, given_from=f"variants.{name}",
                    given={"norm": spec.norm, "gn_groups": spec.gn_groups, "bn_images": spec.bn_images})
    train = section(params, "train", TrainConfig, skip=("device", "threads"), given_from=f"variants.{name}",
                    given={"l1": spec.l1, "l1_tensor_mean": spec.l1_tensor_mean, "sync_bn": spec.sync_bn})
    check_shares(name, model, train)
    return Run(name, spec.label, model, train, compute(params))


def check_shares(name: str, model: ModelConfig, train: TrainConfig) -> None:
    """The rules that join the sections: the batch splits evenly over the processes and each share into groups of
    `bn_images`, which SyncBatchNorm would undo."""
    if train.batch_size % train.processes:
        raise UserError(f"params.yaml: train.processes = {train.processes} does not divide train.batch_size = "
                        f"{train.batch_size}", hint="every process takes an equal share of each batch")
    share = train.batch_size // train.processes
    if model.bn_images and share % model.bn_images:
        raise UserError(f"params.yaml: variants.{name}.bn_images = {model.bn_images} does not divide the {share} "
                        f"images per process and step (train.batch_size / train.processes)",
                        hint="choose a divisor of it, or 0 for the whole batch")
    if model.bn_images and train.sync_bn:
        raise UserError(f"params.yaml: variants.{name} sets both bn_images and sync_bn",
                        hint="bn_images splits BatchNorm's statistics, sync_bn joins them: keep one")


def describe(names: tuple[str, ...] = tuple(SECTIONS)) -> list[tuple[str, str, str]]:
    """(key, allowed values, description) of every setting of the sections `names`, in the schema's order."""
    rows = []
    for name in names:
        classes, elsewhere = SECTIONS[name]
        for cls in classes:
            for field, prop in _schema(cls).items():
                if field in elsewhere or (cls is Compute and field == "precision"):
                    continue
                rows.append((f"{name}.{field}", _kind(cls, field, prop), prop.get("description", "")))
    return rows


def _kind(cls: type[Settings], field: str, prop: dict) -> str:
    """What a field accepts, in words: its type and range, or its choices."""
    if "x-allowed" in prop:
        return prop["x-allowed"]
    choices = cls.model_fields[field].annotation
    if isinstance(choices, type) and issubclass(choices, Enum):
        return " or ".join(m.value for m in choices)
    if "enum" in prop or prop.get("type") == "string" and "const" in prop:
        return " or ".join(prop.get("enum", [prop.get("const")]))
    kind = prop.get("type", "")
    item = prop.get("items", {})
    words = {"integer": "integer", "number": "number", "boolean": "true or false", "string": "string"}
    if kind == "array":
        text = f"list of {words.get(item.get('type'), 'value')}s"
        bound = allowed(cls, [field, 0])
        return text + (f", each {bound}" if bound != "valid" else "")
    if isinstance(kind, list):
        return " or ".join(words[k] for k in kind)
    bound = allowed(cls, [field])
    return words.get(kind, kind) + (f" {bound}" if bound != "valid" else "")


def main() -> None:
    """Print every setting of params.yaml: its key, what it accepts and what it does."""
    rows = describe()
    width = max(len(key) for key, _, _ in rows)
    for key, kind, text in rows:
        print(f"{key:<{width}}  {kind}: {text}")


if __name__ == "__main__":
    sys.exit(main())
