"""synth.faults on its own, fast: the exit status rules, which OS errors stop a run, the checks of
the output location, printable paths and the stop signals. (Whole jobs: test_guarantees.py.)"""

from __future__ import annotations

import errno
import os
import signal

import pytest

from synth.errors import ConfigError, OutputError
from synth.faults import (EXIT_OUTPUT_ERROR, EXIT_TOO_MANY_FAILURES, StopSignals, as_output_error,
                          check_creatable, check_max_failure_rate, check_writable, exit_status, printable)


@pytest.mark.parametrize("done, failed, todo, rate, expected", [
    (10, 0, 10, 0.0, 0),
    (9, 1, 10, 0.1, 0),       # exactly at the limit: allowed
    (8, 2, 10, 0.1, 1),       # above it
    (1, 1, 2, 0.5, 0),
    (0, 1, 1, 1.0, 1),        # every sample failed: never a success
    (0, 0, 0, 0.0, 0),        # nothing to do
    (0, 0, 5, 0.0, 0),
])
def test_exit_status(done, failed, todo, rate, expected):
    code, reason = exit_status(done, failed, todo, rate)
    assert code == expected and (reason is None) == (expected == 0)


def test_exit_reasons_say_how_many():
    assert exit_status(8, 2, 10, 0.1) == (
        1, "failure rate 20.0% (2 of 10) exceeds max_failure_rate=0.1")
    assert exit_status(0, 3, 3, 1.0) == (1, "every sample failed (3 of 3)")
    assert EXIT_TOO_MANY_FAILURES == 1 and EXIT_OUTPUT_ERROR == 3


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_gives_128_plus_its_number_whatever_the_counts(sig, code):
    got, reason = exit_status(0, 5, 10, 0.0, stopped=sig)
    assert got == code
    assert reason == (f"interrupted by {sig.name} with 5 of 10 samples not processed; "
                      "rerun the same command to resume")


@pytest.mark.parametrize("value", [-0.1, 1.1, float("nan"), "x", None])
def test_max_failure_rate_outside_0_1_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"^max_failure_rate="):
        check_max_failure_rate(value)
    assert check_max_failure_rate(0) == 0.0 and check_max_failure_rate(1) == 1.0


def test_only_efbig_is_the_samples_fault():
    big = OSError(errno.EFBIG, os.strerror(errno.EFBIG), "/run/x.png")
    assert as_output_error(big) is None
    full = as_output_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/run/x.png"))
    assert isinstance(full, OutputError) and str(full) == "cannot write /run/x.png: No space left on device"
    nameless = as_output_error(OSError(errno.EROFS, os.strerror(errno.EROFS)))
    assert str(nameless) == "cannot write the output directory: Read-only file system"
    assert as_output_error(ValueError("encoder bug")) is None
    same = OutputError("already one")
    assert as_output_error(same) is same


def test_check_creatable_and_writable(tmp_path):
    check_creatable(tmp_path / "new" / "deeper")  # nothing there yet: fine, and nothing created
    assert not (tmp_path / "new").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=rf"^cannot write to {blocker}/run: {blocker} is not a directory$"):
        check_creatable(blocker / "run")
    check_writable(tmp_path / "run")
    assert (tmp_path / "run").is_dir() and list((tmp_path / "run").iterdir()) == []  # no probe left
    with pytest.raises(OutputError, match=rf"^cannot write to {blocker}/run: "):
        check_writable(blocker / "run")
    assert list(tmp_path.glob(".synth-write-probe*")) == []
    check_writable(tmp_path / "a" / "b")  # parents made; an existing directory is fine too
    check_writable(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


def test_a_location_where_no_file_can_be_written_is_one_line(tmp_path, monkeypatch):
    """Root writes through chmod: a read-only filesystem is simulated on the probe file."""
    from pathlib import Path

    def read_only(self, data):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    for check in (check_creatable, check_writable):
        with pytest.raises(OutputError) as err:
            check(tmp_path / "run")
        assert str(err.value) == f"cannot write to {tmp_path / 'run'}: Read-only file system"


def test_printable_keeps_text_and_escapes_undecodable_bytes():
    assert printable("a photo ü.png") == "a photo ü.png"
    name = os.fsdecode(b"bad-\xff.png")
    assert printable(name) == "bad-\\udcff.png"
    printable(name).encode("utf-8")  # any handler can write it


def test_first_signal_asks_to_stop_and_the_second_gets_the_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        stop = StopSignals().install()
        assert not stop.requested and stop.received is None
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.received == signal.SIGTERM and seen == []
        signal.raise_signal(signal.SIGTERM)  # the handler restored itself: the previous one runs
        assert seen == [signal.SIGTERM]
        stop.restore()
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_first_signal_says_what_happens_next(caplog):
    previous = signal.getsignal(signal.SIGTERM)
    stop = StopSignals().install()
    try:
        with caplog.at_level("WARNING", logger="synth"):
            signal.raise_signal(signal.SIGTERM)
    finally:
        stop.restore()
        signal.signal(signal.SIGTERM, previous)
    assert caplog.messages == ["SIGTERM: finishing the samples in flight, then stopping; "
                               "rerun the same command to resume"]


def test_restore_puts_back_every_handler():
    before = {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS}
    stop = StopSignals().install()
    assert all(signal.getsignal(sig) != before[sig] for sig in StopSignals.SIGNALS)
    stop.restore()
    assert {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS} == before


def test_a_signal_the_process_ignores_stays_ignored():
    """``synth ... &`` from a script starts with SIGINT ignored: a Ctrl-C meant for the foreground
    must not stop it (Python's own convention); SIGTERM still does."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stop = StopSignals().install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)
        assert not stop.requested
        signal.raise_signal(signal.SIGTERM)
        assert stop.received == signal.SIGTERM
        stop.restore()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
