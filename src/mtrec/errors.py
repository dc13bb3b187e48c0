"""The two kinds of failure the command line reports on one line instead of a traceback.

This module imports nothing, so the CLI can catch these at start-up without loading torch or the data stack:
each error class of the library that a user can act on derives from one of them (``ConfigError(UserError,
ValueError)``), and stays catchable as the built-in error it was before.
"""


class UserError(Exception):
    """Something the user can fix: a config, an option, a data or model file, a path, a run that diverged.
    The CLI prints its message on one line and exits with status 2."""


class CheckFailed(Exception):
    """The command ran, but its result did not pass a check (an ONNX export against PyTorch): one line,
    exit status 1, and nothing written."""
