"""User-facing errors: one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import sys


INTERRUPTED = 130  # the exit code of a stage stopped by Ctrl-C or a kill


class ConfigError(ValueError):
    """A setting has an impossible value (raised by the config dataclasses and checks)."""


class UserError(Exception):
    """A problem the user can fix (bad data, a missing file), with a hint on how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def show(self) -> None:
        """Print the error as one line (and the hint as a second) on stderr."""
        print(f"error: {self.message}", file=sys.stderr)
        if self.hint:
            print(f"hint: {self.hint}", file=sys.stderr)


class Reported(Exception):
    """An error that another process (a data-parallel rank) has already printed: exit with `code` (1, or
    INTERRUPTED) without a second line."""

    def __init__(self, code: int = 1) -> None:
        super().__init__(code)
        self.code = code


def debug_enabled() -> bool:
    """`NORMCMP_DEBUG=1` shows full tracebacks instead of one-line errors."""
    return os.environ.get("NORMCMP_DEBUG", "") not in ("", "0")
