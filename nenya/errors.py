"""The one user-error type, and how every command turns it into one ``nenya: error:`` line and exit 2."""

import argparse
import sys
import warnings


class NenyaError(Exception):
    """A user error: the CLI prints it as one ``nenya: error: ...`` line and exits with status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise NenyaError(f"{self.prog}: {message} (see --help)")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"nenya: warning: {message}", file=sys.stderr)


def run_cli(prog: str, description: str, add_arguments, run, argv=None) -> int:
    """Parse ``argv`` (flags and positionals in any order) and call ``run(args)``; NenyaError -> one line, 2."""
    warnings.showwarning = _show_warning
    parser = _Parser(prog=f"python -m {prog}", description=description, allow_abbrev=False)
    add_arguments(parser)
    try:
        run(parser.parse_intermixed_args(argv))
    except NenyaError as err:
        print(f"nenya: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nenya: interrupted", file=sys.stderr)
        return 130
    return 0
