"""The one exception type for mistakes a user can fix (bad options, files, data)."""


class NenyaError(Exception):
    """A user error: the CLI prints it as one ``nenya: error: ...`` line and exits with status 2."""
