"""Stage files: outputs written atomically and replaced only when the stage succeeds; inputs read with an error
that names the file and the stage that makes it.

DVC leaves a stage's outputs in place while the stage runs (`persist: true` in dvc.yaml), so that a stage that
fails (bad input, Ctrl-C, a full disk) does not lose the last good results; the stage must then never leave a
half-written or half-replaced output itself. Each output is written to a temporary sibling (`.<name>.<random>.tmp`,
which .gitignore and .dvcignore skip) and renamed into place; inside `cli.run` the renames wait until the whole
stage has succeeded and are then made together, so a failure anywhere leaves every previous output as it was.
"""

from __future__ import annotations

import csv
import errno
import glob
import io
import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from src.errors import UserError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

T = TypeVar("T")

# Write failures that the user can fix, with how; any other OSError is a bug and keeps its traceback.
_NO_SPACE = "free some space on that disk, then run the stage again (its previous outputs are unchanged)"
_NO_ACCESS = "make that folder writable, then run the stage again (its previous outputs are unchanged)"
WRITE_ERRORS = {errno.ENOSPC: _NO_SPACE, errno.EDQUOT: _NO_SPACE, errno.EFBIG: _NO_SPACE,
                errno.EROFS: _NO_ACCESS, errno.EACCES: _NO_ACCESS, errno.EPERM: _NO_ACCESS}

def _mode(folder: bool) -> int:
    """What the user's umask gives a new file or folder (0644 / 0755 at umask 022); tempfile makes 0600 / 0700."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask

# Renames waiting for the running stage to succeed (temporary path, output path); None outside `stage_outputs`.
_pending: list[tuple[Path, Path]] | None = None
# This process's temporaries not yet moved into place or deleted: the only ones that are not litter.
_live: set[Path] = set()


# --- writing ----------------------------------------------------------------------------------

@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failure to write `path` that the user can fix (a full disk, no permission) into one clear error."""
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            raise
        cause = os.strerror(e.errno)
        raise UserError(f"cannot write {path}: {cause[0].lower()}{cause[1:]}", hint=WRITE_ERRORS[e.errno]) from e


def _remove(path: Path) -> None:
    _live.discard(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _swap(tmp: Path, dest: Path) -> None:
    """Put `tmp` at `dest`: one rename for a file; a folder moves the old one aside first (to `_aside(dest)`), then
    deletes it. A kill between the two renames leaves the old folder aside; `recover` puts it back."""
    _live.discard(tmp)
    if tmp.is_dir() and dest.exists():
        old = _aside(dest, secrets.token_hex(4))
        os.rename(dest, old)
        os.rename(tmp, dest)
        _remove(old)
    else:
        os.replace(tmp, dest)


def _aside(dest: Path, tag: str) -> Path:
    return dest.with_name(f".{dest.name}.{tag}.old.tmp")


def recover(path: str | Path) -> None:
    """Undo what a kill left of an earlier write of `path`: if `path` is missing and its previous folder lies aside
    (a folder swap cut short), put it back; then delete every other temporary of `path` but this process's own."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    aside = sorted(path.parent.glob(_aside(path, "*").name))
    if aside and not path.exists():
        os.rename(aside.pop(), path)
    for old in aside:
        _remove(old)
    # What a run killed outright (SIGKILL runs no clean-up) left while it wrote `path`.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if stale not in _live:
            _remove(stale)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM for the moment it takes to rename or delete a stage's temporary files."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def _finish(tmp: Path, dest: Path) -> None:
    """Move a finished temporary file or folder to its output path, or queue it for the stage's commit."""
    if _pending is None:
        _swap(tmp, dest)
    else:
        _pending.append((tmp, dest))


@contextmanager
def _temporary(path: Path, make: Callable[..., str]) -> Iterator[Path]:
    """A temporary sibling of `path` made by `make` (mkstemp or mkdtemp), finished if the block succeeds."""
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        recover(path)
        made = make(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(made[1] if isinstance(made, tuple) else made)
    _live.add(tmp)
    if isinstance(made, tuple):
        os.close(made[0])
    os.chmod(tmp, _mode(folder=not isinstance(made, tuple)))
    try:
        with _writing(path):
            yield tmp
        _finish(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` if the block succeeds (inside a stage: if the
    stage does)."""
    with _temporary(Path(path), tempfile.mkstemp) as tmp:
        yield tmp


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; it replaces the folder `path` as a whole if the block
    succeeds (inside a stage: if the stage does)."""
    with _temporary(Path(path), tempfile.mkdtemp) as tmp:
        # Hidden from git while it fills: DVCLive under `dvc exp run` git-adds the untracked files in its folder.
        (tmp / ".gitignore").write_text("*\n")
        yield tmp
        (tmp / ".gitignore").unlink()


@contextmanager
def stage_outputs() -> Iterator[Callable[[], None]]:
    """Hold back the renames of the atomic writes made in the block; yield `commit`, which makes them all.

    What is not committed when the block ends (an error, an interruption) is deleted, so a stage that fails
    leaves its previous outputs exactly as they were.
    """
    global _pending
    outer, pending = _pending, []
    _pending = pending

    def commit() -> None:
        with _signals_held():  # all renames or none: an interruption now would leave a mix of old and new
            while pending:
                _swap(*pending.pop(0))

    try:
        yield commit
    finally:
        _pending = outer
        with _signals_held():
            for tmp, _ in pending:
                _remove(tmp)


def write_json(path: str | Path, data: object) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Write a CSV file with a header row, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def save_figure(fig: Figure, path: Path, dpi: int) -> None:
    """Write a PNG atomically; the same figure gives the same bytes (no date or version in its metadata)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})


# --- reading ----------------------------------------------------------------------------------

class Corrupt(ValueError):
    """What is wrong with a damaged input file: raised by the parsers that `read_input` runs."""


def input_error(path: str | Path, stage: str, problem: str) -> UserError:
    """The error for a missing or damaged input: it names the file and the stage that makes it."""
    return UserError(f"{path} {problem}; the {stage} stage makes it", hint=f"run `dvc repro {stage}` to make it again")


def _reason(e: Exception) -> str:
    """A short account of why a parser failed."""
    if isinstance(e, Corrupt):
        return str(e)
    line = next(iter(str(e).strip().splitlines()), "")
    line = line if len(line) <= 80 else line[:77] + "..."
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def read_input(path: str | Path, stage: str, parse: Callable[[Path], T]) -> T:
    """`parse(path)`; an error naming the file and `stage` (the stage that makes it) if it is missing or damaged."""
    path = Path(path)
    for folder in reversed(path.parents):  # a folder of outputs that a killed stage left aside
        if folder.name:
            recover(folder)
    if not path.is_file():
        raise input_error(path, stage, "not found")
    try:
        return parse(path)
    except UserError:
        raise
    except Exception as e:  # damaged bytes can fail a parser (zipfile, pickle, torch, numpy, csv, json) in any way
        raise input_error(path, stage, f"is corrupt ({_reason(e)})") from e


def read_table(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    """The rows of a CSV (or TSV) file with a header; a `Corrupt` error unless every line is complete."""
    text = path.read_text()
    if not text.endswith("\n"):  # every writer ends each line: a file cut mid-line lacks the last newline
        raise Corrupt("its last line is cut short" if text else "it is empty")
    header, *rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not rows:
        raise Corrupt("it holds a header but no rows")
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise Corrupt(f"line {number} has {len(row)} fields, the header {len(header)}")
    return [dict(zip(header, row)) for row in rows]


def number(text: str) -> float:
    """A table's cell as a float; a `Corrupt` error if it is not a number."""
    try:
        return float(text)
    except ValueError:
        raise Corrupt(f"{text!r} is not a number") from None
