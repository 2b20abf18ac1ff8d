"""User-facing errors: raised for bad input or configuration, printed by the CLI as one line.

Must not be used for bugs: those should surface as ordinary exceptions with a traceback.
"""


class LongBlocksError(Exception):
    """An error the user can fix (bad path, unknown source, missing field); the CLI prints it as one
    line and exits with status 2."""
