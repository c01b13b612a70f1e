"""Errors that the command-line apps report as one line, without a traceback."""


class ComposerError(Exception):
    """A user-facing error: bad input, a missing file, a diverged run."""


class ConfigError(ComposerError, ValueError):
    """A configuration value or key is invalid; the message names it."""


class PatternError(ConfigError):
    """A pattern string is invalid; the message names the character and its position."""


class KernelUnavailableError(ComposerError, RuntimeError):
    """An optional GPU kernel was asked for but is not installed; the message says how to install it."""
