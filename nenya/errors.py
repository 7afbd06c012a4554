"""The one user-error type, and how every command turns it into one ``nenya: error:`` line and exit 2.

A scheduler's SIGTERM is handled like Ctrl-C: the command stops (a training run keeps its last.pth and
prints the ``--resume`` hint) and exits with status 143 (130 for Ctrl-C).
"""

import argparse
import signal
import sys
import warnings
from contextlib import contextmanager

WORKER_TRACEBACK = "\nOriginal Traceback"  # how torch re-raises an error of a DataLoader worker


def one_line(message: str) -> str:
    """The error's own message: a DataLoader worker's re-raised error loses torch's traceback around it."""
    if WORKER_TRACEBACK not in message:
        return message
    last = [line for line in message.strip().splitlines() if line.strip()][-1]
    name, sep, text = last.partition(": ")
    return text if sep and name.replace(".", "").replace("_", "").isalnum() else last


class NenyaError(Exception):
    """A user error: the CLI prints it as one ``nenya: error: ...`` line and exits with status 2."""

    def __init__(self, message="", *args):
        super().__init__(one_line(str(message)), *args)


class WriteFailed(NenyaError):
    """A file could not be written (disk full, no permission); what was there before is intact."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster scheduler's stop), raised where the program was, like Ctrl-C's KeyboardInterrupt."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise NenyaError(f"{self.prog}: {message} (see --help)")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"nenya: warning: {message}", file=sys.stderr)


def _terminate(signum, frame):
    raise Terminated()


@contextmanager
def sigterm_as_interrupt():
    """Within the block SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got '{text}'")
    return value


def run_cli(prog: str, description: str, add_arguments, run, argv=None) -> int:
    """Parse ``argv`` (flags and positionals in any order) and call ``run(args)``; NenyaError -> one line, 2."""
    warnings.showwarning = _show_warning
    parser = _Parser(prog=f"python -m {prog}", description=description, allow_abbrev=False)
    add_arguments(parser)
    try:
        with sigterm_as_interrupt():
            run(parser.parse_intermixed_args(argv))
    except NenyaError as err:
        print(f"nenya: error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        print("nenya: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("nenya: interrupted", file=sys.stderr)
        return 130
    return 0
