"""Run a stage's typer command: option defaults from `params.yaml`, one-line errors, clean interrupts."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping

import typer

from src.errors import ConfigError, UserError, debug_enabled
from src.params import load_params, option_defaults

INTERRUPTED = 130


def app(help: str) -> typer.Typer:
    """A single-command typer app with the project's settings."""
    return typer.Typer(help=help, add_completion=False, pretty_exceptions_enable=False)


def _terminate(signum: int, frame: object) -> None:
    # Treat SIGTERM like Ctrl-C so that clean-up code runs before the process ends.
    raise KeyboardInterrupt


def run(stage: typer.Typer, keys: Mapping[str, str], argv: list[str] | None = None) -> int:
    """Run `stage` with the options in `keys` defaulting from `params.yaml`; return the exit code.

    User mistakes print one line (`error: ...`) and give 1; an interruption gives 130.
    Set NORMCMP_DEBUG=1 to see tracebacks instead.
    """
    signal.signal(signal.SIGTERM, _terminate)
    command = stage.registered_commands[0].callback
    try:
        default_map = option_defaults(command, keys, load_params())
        typer.main.get_command(stage).main(args=argv, default_map=default_map, standalone_mode=True)
        return 0
    except SystemExit as e:  # typer exits on its own after usage errors, --help and Ctrl-C
        code = e.code if isinstance(e.code, int) else 0
        if code == INTERRUPTED:
            print("error: interrupted; no outputs were written (run `dvc repro` to start again)", file=sys.stderr)
        return code
    except (ConfigError, UserError) as e:
        if debug_enabled():
            raise
        (e if isinstance(e, UserError) else UserError(str(e))).show()
        return 1
    except Exception as e:
        if debug_enabled():
            raise
        print(f"error: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        print("hint: set NORMCMP_DEBUG=1 to see the traceback", file=sys.stderr)
        return 1


def main(stage: typer.Typer, keys: Mapping[str, str]) -> None:
    """Entry point of `python -m src.<stage>`."""
    code = run(stage, keys)
    if code == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # at once: no waiting on library threads at interpreter shutdown
    sys.exit(code)
