"""What every command line shares: one shape and one exit-code rule.

Each command (``python -m ecapa_jax.embed``, ``.score``, ``.metrics``, ``.convert``, ``python -m train``,
``python -m train.tools``, ``python -m train.data``) is a thin module: a parser (``ArgumentParser``) and a
``main(argv) -> int`` decorated with ``@command`` that calls importable functions, and
``sys.exit(main())`` at the bottom. ``main([...])`` called from Python returns the same status the process
exits with, so the rule is tested without starting processes.

Exit status, the same for all of them:

====  ==========================================================================================
0     success
1     partial failure: some inputs failed and the rest were written (each failure reported on
      stderr), or a training run stopped early with its checkpoints kept
2     usage or input error: bad arguments, a missing or malformed file, a directory that is in
      the way; one line on stderr naming the path or key, no traceback, nothing written
====  ==========================================================================================

Inputs and outputs are checked before the work starts (``ecapa_jax.io.files.check_output_file``), so an
input error never costs a computation. An unexpected exception (a bug) still shows its traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2

# What "usage or input error" means in code: our error classes (AudioError, KaldiIOError, DataError, ...)
# derive from ValueError; JSON and UTF-8 decoding errors do too; OSError covers missing, unreadable,
# unwritable paths (its message names the path).
INPUT_ERRORS = (ValueError, OSError)


def error(message: object) -> None:
    """Prints ``error: message`` on one line of stderr."""
    print(f"error: {message}", file=sys.stderr)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (``error: PROG: message``) and exit 2."""

    def error(self, message: str):
        error(f"{self.prog}: {message} (see {self.prog} --help)")
        raise SystemExit(EXIT_USAGE)


def command(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Wraps a command's ``main`` in the exit-code rule: an input error becomes one line and status 2.

    ``ArgumentParser`` exits with 2 and a one-line message on bad arguments; that ``SystemExit`` (and
    ``--help``'s) is turned into its status as well, so ``main`` always returns.
    """

    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except INPUT_ERRORS as e:
            error(e)
            return EXIT_USAGE
        except SystemExit as e:  # argparse: usage printed already
            return e.code if isinstance(e.code, int) else EXIT_USAGE
        except KeyboardInterrupt:
            error("interrupted")
            return 130

    return wrapped


__all__ = ["EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "INPUT_ERRORS", "ArgumentParser", "command", "error"]
