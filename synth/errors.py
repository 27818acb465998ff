"""Errors that carry a one-line, user-facing message."""


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key and what is allowed."""


class SampleError(RuntimeError):
    """One sample cannot be processed; the run records it and goes on."""


class OutputError(RuntimeError):
    """The run directory cannot be written (not writable, disk full): the run stops, one line."""
