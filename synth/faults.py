"""Run-level fault handling, kept out of the runner's main loop: stop signals, the exit
status and errors about the output location (the failures log is synth.rundir's JsonlLog)."""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from synth.errors import ConfigError, OutputError, WorkerLost
from synth.params import setting

log = logging.getLogger("synth")

EXIT_TOO_MANY_FAILURES = 1
EXIT_CONFIG_ERROR = 2
EXIT_OUTPUT_ERROR = 3  # (128 + N: a signal)
# The errors that stop a job with one line (no traceback), and the exit status each gives.
JOB_ERRORS = {ConfigError: EXIT_CONFIG_ERROR, OutputError: EXIT_OUTPUT_ERROR, WorkerLost: 1}


def exit_code_of(err: BaseException) -> int:
    """The exit status of a job stopped by ``err``, one of ``JOB_ERRORS``."""
    return next(code for kind, code in JOB_ERRORS.items() if isinstance(err, kind))


# Characters that would start a new line, move the cursor or reorder text on a console or in
# app.log: a file name holding them could forge a log line. Escaped as Python writes them.
_CONTROL = {**{c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))},
            **{ord(c): e for c, e in (("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))},
            **{c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}}


def printable(text: str) -> str:
    """A path (or a message naming one) as one line of text any log handler can encode: control
    characters escaped (no forged log lines), names that are not UTF-8 (surrogates) escaped."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8").translate(_CONTROL)


class StopSignals:
    """SIGINT and SIGTERM ask the run to stop: no new samples are started, the ones in flight
    finish and are written, the summary is written, and the job exits with 128 + the signal
    number. A second signal gets the previous handler (Ctrl-C twice aborts at once).

    A signal the process was started with ignored (``synth ... &`` from a script: SIGINT) stays
    ignored, as Python leaves it: a Ctrl-C meant for the foreground job does not stop it. Handlers
    can only be installed from the main thread; elsewhere this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum)
        self.restore()
        log.warning("%s: finishing the samples in flight, then stopping; rerun the same command to resume",
                    self.received.name)


def check_max_failure_rate(value: Any) -> float:
    return setting("max_failure_rate", value, 0.0, 1.0)


def exit_status(done: int, failed: int, todo: int, max_failure_rate: float,
                stopped: signal.Signals | None = None) -> tuple[int, str | None]:
    """(exit code, why it is not 0) for a run that processed ``done + failed`` of ``todo`` samples."""
    processed = done + failed
    if stopped is not None:
        return 128 + int(stopped), (f"interrupted by {stopped.name} with {todo - processed} of {todo} samples "
                                    "not processed; rerun the same command to resume")
    if failed and not done:
        return EXIT_TOO_MANY_FAILURES, f"every sample failed ({failed} of {processed})"
    if processed and failed / processed > max_failure_rate:
        return EXIT_TOO_MANY_FAILURES, (f"failure rate {failed / processed:.1%} ({failed} of {processed}) "
                                        f"exceeds max_failure_rate={max_failure_rate:g}")
    return 0, None


def as_output_error(err: BaseException) -> OutputError | None:
    """An OS error while writing outputs is about the output location (not writable, disk full,
    read-only, removed), not about the sample: it stops the run. Only a file that is too large
    for the filesystem is the sample's own fault."""
    if isinstance(err, OutputError):
        return err
    if isinstance(err, OSError) and err.errno != errno.EFBIG:
        where = err.filename if err.filename is not None else "the output directory"
        return OutputError(f"cannot write {where}: {err.strerror or err}")
    return None


def check_creatable(path: Path) -> None:
    """Raise OutputError unless ``path`` is, or could be made, a writable directory: its nearest
    existing ancestor is a directory where a file can be written. Leaves nothing behind."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write to {path}: {existing} is not a directory")
    probe = existing / f".synth-write-probe.{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"cannot write to {path}: {err.strerror or err}") from None


def check_writable(run_dir: Path) -> None:
    """Create ``run_dir`` and write a probe file there, so that an unusable output location is
    one clear error before any image is decoded."""
    probe = Path(run_dir) / f".synth-write-probe.{os.getpid()}"
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"cannot write to {run_dir}: {err.strerror or err}") from None
