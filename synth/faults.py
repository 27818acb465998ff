"""Run-level fault handling, kept out of the runner's main loop: the failures log, stop
signals, the exit status and errors about the output location."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from synth.errors import OutputError
from synth.params import setting

log = logging.getLogger("synth")

EXIT_TOO_MANY_FAILURES = 1
EXIT_OUTPUT_ERROR = 3  # (2 is a configuration error; 128 + N a signal)


def printable(text: str) -> str:
    """A path as text any log handler can encode: file names need not be UTF-8 (surrogates)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class FailureLog:
    """``failures.jsonl`` in the run directory: one JSON line (id, path, stage, error) per failed
    sample, flushed as it happens so that a killed run still has it. Each run rewrites it: failed
    samples are not complete, so a rerun retries them and records them again if they still fail."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._file = open(self.path, "w", encoding="utf-8")
        except OSError as err:
            raise as_output_error(err) from err

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: record.get(k) for k in ("id", "path", "stage", "error")}) + "\n")
        self._file.flush()

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:  # disk full on the last flush: the summary says what happened
            pass


class StopSignals:
    """SIGINT and SIGTERM ask the run to stop: no new samples are started, the ones in flight
    finish and are written, the summary is written, and the job exits with 128 + the signal
    number. A second signal gets the previous handler (Ctrl-C twice aborts at once).

    Handlers can only be installed from the main thread; elsewhere this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
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
