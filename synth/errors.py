"""Errors that carry a one-line, user-facing message."""


def one_line(message: object) -> str:
    """``message`` (text or an exception) on one line: every run of whitespace, newlines included,
    becomes one space."""
    return " ".join(str(message).split())


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key and what is allowed."""


class SampleError(RuntimeError):
    """One sample cannot be processed; the run records it and goes on."""


class WorkerLost(RuntimeError):
    """A worker process died (killed by the system, e.g. out of memory): the run stops, one line."""


class OutputError(RuntimeError):
    """The run directory cannot be written (not writable, disk full): the run stops, one line."""
