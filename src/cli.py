"""Run a stage's typer command: one-line errors, clean interrupts, and outputs replaced only when the stage
succeeds. Stages read their settings from params.yaml themselves (src/config.py)."""

from __future__ import annotations

import os
import signal
import sys

import typer

from src import config
from src.errors import INTERRUPTED, ConfigError, Reported, UserError, debug_enabled
from src.files import stage_outputs


def app(help: str) -> typer.Typer:
    """A single-command typer app with the project's settings."""
    return typer.Typer(help=help, add_completion=False, pretty_exceptions_enable=False)


def settings(*sections: str) -> str:
    """A command's `--help` epilog: the params.yaml settings of `sections`, from the schema's descriptions."""
    rows = "\n".join(f"  {key} ({kind}): {text}" for key, kind, text in config.describe(sections))
    return f"Settings read from params.yaml (`python -m src.config` lists them all):\n\n\b\n{rows}"


def _terminate(signum: int, frame: object) -> None:
    # Treat SIGTERM like Ctrl-C so that clean-up code runs before the process ends.
    raise KeyboardInterrupt


def _usage_error(e: typer.TyperException) -> int:
    """Print a command-line mistake (`--epochs abc`) in the project's one-line form; return click's exit code."""
    print(f"error: {e.format_message()}", file=sys.stderr)
    ctx = getattr(e, "ctx", None)
    print(f"hint: `{ctx.command_path if ctx else 'python -m src.<stage>'} --help` lists the options", file=sys.stderr)
    return e.exit_code


def run(stage: typer.Typer, argv: list[str] | None = None) -> int:
    """Run `stage` with the command-line arguments `argv`; return the exit code.

    User mistakes print one line (`error: ...`, then a `hint: ...`) and give 1 (2 for a command-line usage
    error); an interruption gives 130. The stage's outputs replace the previous ones only if it succeeds.
    Set NORMCMP_DEBUG=1 to see tracebacks instead.
    """
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with stage_outputs() as commit:
            # Not standalone: typer would print its own box for a usage error and exit; it returns 130 on Ctrl-C.
            code = typer.main.get_command(stage).main(args=argv, standalone_mode=False)
            code = code if isinstance(code, int) else 0
            if code == 0:
                commit()
    except (KeyboardInterrupt, typer.Abort):  # before typer started, or end of input at a prompt
        code = INTERRUPTED
    except typer.TyperException as e:  # typer's own click: usage errors
        if debug_enabled():
            raise
        return _usage_error(e)
    except Reported as e:
        return e.code
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
    if code == INTERRUPTED:
        print("error: interrupted; no outputs were written", file=sys.stderr)
        print("hint: the previous outputs are unchanged; `dvc repro` starts the stage again", file=sys.stderr)
    return code


def main(stage: typer.Typer) -> None:
    """Entry point of `python -m src.<stage>`."""
    code = run(stage)
    if code == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # at once: no waiting on library threads at interpreter shutdown
    sys.exit(code)
