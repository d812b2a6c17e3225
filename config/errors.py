"""Errors a user can fix: entry scripts print them as one line and exit non-zero."""


class NeurcompError(Exception):
    """Base class for user-facing errors. The message must name the file or key at fault."""

    exit_code = 2


class ConfigError(NeurcompError):
    """A config file or command-line option is unknown, mistyped or impossible."""


class InputError(NeurcompError):
    """An input file (volume, checkpoint, compressed file) is missing or unusable."""
