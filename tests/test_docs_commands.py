"""Every `-S key=value` (`--set-param`) that README.md, docs/*.md and the Makefile's WRITEUP_RECIPE give runs as
written: its key is a setting of params.yaml, and each value it sets (each value of a sweep `-S 'key=a,b'`)
passes the schema of src/config.py, as the stages check it before they compute.

The overrides go through DVC's own code for `dvc exp run -S` (Hydra's override grammar, applied to a copy of
params.yaml, which refuses a key the file lacks), so a value is read as DVC reads it (`1e-4` a number, `true` a
boolean); the result is then loaded and validated with `src.config`: every variant's run and every other section.
A command in a code block is one line (continued by a trailing backslash, split at `&&` and `;`), a command in
prose one inline code span. A sweep must be queued (DVC refuses it otherwise), and no command of a code block may
read experiments' results after `dvc queue start`, which returns before they exist (`dvc exp run --run-all`
waits for them). Fast: no training, no DVC repository.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from dvc.exceptions import InvalidArgumentError
from dvc.utils.cli_parse import to_path_overrides
from dvc.utils.hydra import apply_overrides, get_hydra_sweeps, to_hydra_overrides
from hydra.core.override_parser.types import OverrideType
from hydra.errors import OverrideParseException

from src import config
from src.errors import UserError
from tests.conftest import ROOT

PARAMS = "params.yaml"
# The sections that `config.run` does not read, each validated into its class.
SECTIONS = {"download": config.Download, "evaluate": config.Evaluate, "shift": config.Shift,
            "per_device": config.PerDevice, "plot": config.Plot}
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Command:
    """One command (or inline code span) that sets parameters: where it is, its text, its `-S` values."""

    where: str
    text: str
    overrides: tuple[str, ...]
    queued: bool
    unparsed: str = ""  # why the text does not split into shell words, if it does not


def _command(where: str, text: str) -> Command | None:
    """The command `text` if it sets a parameter (`-S` or `--set-param`), else None."""
    if not re.search(r"(^|\s)(-S|--set-param)(\s|=)", text):
        return None
    try:
        words = shlex.split(text)
    except ValueError as e:
        return Command(where, text, (), False, unparsed=str(e))
    overrides = []
    for i, word in enumerate(words):
        if word in ("-S", "--set-param") and i + 1 < len(words):
            overrides.append(words[i + 1])
        elif word.startswith("--set-param="):
            overrides.append(word.partition("=")[2])
    # `tools.sweep` runs a sweep's experiments as jobs (on Ray), as a queue does.
    return Command(where, text, tuple(overrides), "--queue" in words or "tools.sweep" in words)


def _code_commands(line: str) -> list[str]:
    """The shell commands of one logical code line: its comment dropped, split at `&&`, `||` and `;`."""
    line = re.sub(r"(^|\s)#.*$", "", line)
    return [part.strip() for part in re.split(r"&&|\|\||;", line) if part.strip()]


def code_lines(text: str) -> tuple[list[tuple[int, int, str]], list[tuple[int, str]]]:
    """The shell commands of a markdown text's code blocks (fenced, or indented by four spaces; a trailing
    backslash continues a line) as (block, line number, command), and its prose lines as (line number, line)."""
    commands: list[tuple[int, int, str]] = []
    prose: list[tuple[int, str]] = []
    fenced, block, in_code = False, 0, False
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            block += fenced
            in_code = fenced
            continue
        if not (fenced or line.startswith(("    ", "\t"))):
            prose.append((number, line))
            in_code = False
            continue
        if not in_code:
            block += 1
            in_code = True
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        commands += [(block, start, part) for part in _code_commands(pending + line)]
        pending = ""
    return commands, prose


def markdown_commands(text: str, name: str) -> list[Command]:
    """Every command of a markdown text that sets a parameter: in its code blocks, and in the inline code spans
    of its prose (which may wrap onto the next line of a paragraph)."""
    code, prose = code_lines(text)
    found = [c for _, number, part in code if (c := _command(f"{name}:{number}", part))]
    joined = "\n".join(line for _, line in prose)
    numbers = [number for number, _ in prose]
    for match in re.finditer(r"`([^`]+)`", joined):
        span = " ".join(match.group(1).split())
        if command := _command(f"{name}:{numbers[joined.count(chr(10), 0, match.start())]}", span):
            found.append(command)
    return sorted(found, key=lambda c: int(c.where.rpartition(":")[2]))


# Commands that read what experiments produced: after `dvc queue start`, which returns at once, they would read
# the experiments before they have run (`dvc exp run --run-all` waits for them).
READS_RESULTS = re.compile(r"dvc (exp (show|diff|apply|push)|plots diff|metrics)|tools\.seed_table")


def queue_problems(text: str, name: str) -> list[str]:
    """Each command of a code block that reads experiments' results after the block's `dvc queue start`."""
    found = []
    started: dict[int, int] = {}
    for block, number, part in code_lines(text)[0]:
        if re.match(r"dvc queue start\b", part):
            started.setdefault(block, number)
        elif block in started and READS_RESULTS.search(part):
            found.append(f"{name}:{number}: `{part}` reads results right after `dvc queue start` "
                         f"({name}:{started[block]}), which returns at once: queue, then run the queue with "
                         f"`dvc exp run --run-all -j 1`, which waits for every experiment")
    return found


def makefile_recipe(text: str) -> Command:
    """The Makefile's WRITEUP_RECIPE (the overrides of `make yardstick`, which queues them)."""
    match = re.search(r"^WRITEUP_RECIPE\s*:?=\s*((?:.*\\\n)*.*)$", text, re.M)
    assert match, "the Makefile defines no WRITEUP_RECIPE"
    number = text.count("\n", 0, match.start()) + 1
    command = _command(f"Makefile:{number}", "dvc exp run --queue " + match.group(1).replace("\\\n", " "))
    assert command, "WRITEUP_RECIPE sets no parameter"
    return command


def all_commands() -> list[Command]:
    found = [c for path in DOCS for c in markdown_commands(path.read_text(), str(path.relative_to(ROOT)))]
    return [*found, makefile_recipe((ROOT / "Makefile").read_text())]


def _key_problem(override, params: dict) -> str | None:
    """Why the key of a parsed override is not a setting DVC can set in params.yaml, or None."""
    key = override.key_or_group
    if override.type == OverrideType.DEL:
        return f"{override.input_line}: deletes a setting, which params.yaml's schema refuses"
    if key.startswith("variants."):
        name, _, field = key.removeprefix("variants.").partition(".")
        names = list(params["variants"])
        if name not in names:
            return f"{key}: no variant {name!r}; params.yaml's variants are {', '.join(names)}"
        if field not in config.Variant.model_fields:
            return (f"{key}: {field!r} is not a setting of a variant; they are "
                    f"{', '.join(config.Variant.model_fields)}")
        if field not in params["variants"][name] and override.type == OverrideType.CHANGE:
            return (f"{key}: params.yaml's variants.{name} does not set {field}, so DVC refuses to change it; "
                    f"write +{key}=... to add it")
        return None
    if config.get_key(params, key, default=None) is None:
        return f"{key}: not a setting of params.yaml (`python -m src.config` lists every setting)"
    return None


@cache
def _validate(overrides: tuple[str, ...], tmp: Path) -> str | None:
    """Why params.yaml with `overrides` applied as `dvc exp run -S` applies them fails the schema, or None."""
    path = tmp / PARAMS
    shutil.copyfile(ROOT / PARAMS, path)
    try:
        apply_overrides(path, list(overrides))
    except InvalidArgumentError as e:
        return f"{' '.join(overrides)}: DVC refuses it: {e.__cause__ or e}"
    try:
        params = config.load(path)
        for name in params["variants"]:
            config.run(params, name)
        for name, cls in SECTIONS.items():
            config.section(params, name, cls)
    except UserError as e:
        return f"{' '.join(overrides)}: error: {e.message}" + (f" (hint: {e.hint})" if e.hint else "")
    return None


def problems(command: Command, tmp: Path) -> list[str]:
    """What keeps `command`'s parameters from running as written (empty if nothing)."""
    if command.unparsed:
        return [f"not a shell command ({command.unparsed})"]
    if not command.overrides:
        return ["a -S without a value"]
    by_file = to_path_overrides(command.overrides)
    if set(by_file) != {PARAMS}:
        return [f"sets parameters of {', '.join(sorted(set(by_file) - {PARAMS}))}; every setting is in {PARAMS}"]
    try:
        parsed = to_hydra_overrides(by_file[PARAMS])
    except OverrideParseException as e:
        return [f"not a valid -S override: {e}"]
    params = config.load(ROOT / PARAMS)
    found = [p for p in (_key_problem(o, params) for o in parsed) if p]
    if any(o.is_sweep_override() for o in parsed) and not command.queued:
        found.append("a sweep (-S 'key=a,b') needs --queue: DVC refuses it otherwise")
    if found:
        return found
    # One experiment per combination of the sweeps' values, as `dvc exp run --queue` makes them.
    for combination in get_hydra_sweeps(by_file):
        error = _validate(tuple(combination[PARAMS]), tmp)
        if error:
            found.append(error)
    return found


def doc_problems(text: str, name: str, tmp: Path) -> list[str]:
    """Everything that keeps a markdown text's commands from running as written (both checks below)."""
    found = queue_problems(text, name)
    for command in markdown_commands(text, name):
        found += [f"{command.where}: `{command.text}`: {p}" for p in problems(command, tmp)]
    return found


COMMANDS = all_commands()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("params")


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_every_set_parameter_in_the_docs_is_a_valid_setting(command, scratch):
    found = problems(command, scratch)
    assert not found, f"{command.where}: `{command.text}`:\n  " + "\n  ".join(found)


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_no_command_reads_experiments_before_the_queue_has_run(path):
    found = queue_problems(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "\n".join(found)


def test_the_commands_are_found():
    """The extraction finds the commands it must, so that the tests above cannot pass on nothing."""
    by_source: dict[str, set[str]] = {}
    for command in COMMANDS:
        by_source.setdefault(command.where.rpartition(":")[0], set()).update(command.overrides)
    assert "variants.gn.gn_groups=2" in by_source["README.md"]
    assert "train.validation=10000" in by_source["docs/tuning.md"]
    assert "train.validation=10000" in by_source["docs/yardstick.md"]
    assert "download.dataset=fashion-mnist" in by_source["docs/experiments.md"]
    assert {"model.arch=writeup", "train.loader=torchvision", "variants.bn_l1.l1_tensor_mean=true"} <= by_source[
        "Makefile"]
    assert any("," in o for c in COMMANDS for o in c.overrides), "no sweep found"
    assert len(COMMANDS) >= 20


def test_the_checks_refuse_what_does_not_run(scratch):
    """Each kind of mistake is caught, in commands written as the docs write them."""
    text = "\n".join([
        "```bash",
        "dvc exp run --queue -S train.translate=0.05 -S train.seed=1,2    # a removed setting",
        "dvc exp run -S 'train.lr=0.02,0.05'                              # a sweep without --queue",
        "dvc exp run --queue -S variants.ln.gn_groups=2                   # a key the variant does not set",
        "dvc exp run -S variants.resnet.l1=0 && dvc queue start -j 1      # no such variant",
        "dvc queue status",
        "dvc exp show --drop '.*'                                         # before the queue has run",
        "```",
        "",
        "    dvc exp run --queue -S train.validation=10000 \\",
        "      -S 'train.lr=0.05,0'                                       # one value out of range",
        "    dvc queue start -j 1",
        "    python -m tools.seed_table --by train.lr",
        "",
        "Width 24 (`-S model.width=24`) leaves GN's 4 groups on 18 channels; `--set-param train.threads=two`.",
    ])
    commands = markdown_commands(text, "fake.md")
    assert [c.where for c in commands] == [f"fake.md:{n}" for n in (2, 3, 4, 5, 10, 15, 15)]
    expected = ["train.translate: not a setting", "needs --queue", "DVC refuses to change it", "no variant 'resnet'",
                "train.lr must be > 0", "does not divide the channel count 18", "train.threads must be auto"]
    for command, message in zip(commands, expected, strict=True):
        found = problems(command, scratch)
        assert any(message in p for p in found), (command.text, found)
    assert [p.partition(":")[2].partition(":")[0] for p in queue_problems(text, "fake.md")] == ["7", "13"]
    good = "\n".join(["```bash", "dvc exp run --queue -S train.weight_decay=1e-4 -S 'train.rotation=10,7.5'",
                      "dvc exp run --run-all -j 1", "dvc exp show", "```"])
    assert doc_problems(good, "ok.md", scratch) == []
