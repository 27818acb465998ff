"""What a job keeps in its run directory besides the per-sample files, all streamed so that a
job's state does not grow with its number of samples:

* ``synth.lock``: the pid of the job running there (a second job is refused);
* ``manifest.jsonl``: the inputs of this shard (id, path, size, mtime) as the first run listed
  them, so that a rerun never maps an id to another file; its header records the settings the
  samples depend on (``synth.settings``), so that a rerun never mixes samples made two ways;
* ``samples.jsonl`` / ``failures.jsonl``: one JSON line per committed / failed sample, appended
  in input order as it happens (a torn last line after a SIGKILL is cut off on the next run);
* ``TimingStats``: per-stage milliseconds as bounded streaming statistics for ``metadata.json``.

Sharded jobs (``data.num_shards`` > 1) name the per-shard files ``samples-0003.jsonl`` etc.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from synth.errors import ConfigError, OutputError
from synth.faults import as_output_error, printable
from synth.files import atomic_write, create_exclusive, to_json
from synth.settings import first_difference

log = logging.getLogger("synth")

LOCK_FILE = "synth.lock"


def marks_run_dir(name: str) -> bool:
    """A directory holding this name is a run directory (Hydra's or synth's): never input."""
    return name in (".hydra", LOCK_FILE) or (name.startswith("manifest") and name.endswith(".jsonl"))


def shard_file(run_dir: Path, stem: str, num_shards: int, shard_index: int) -> Path:
    """``samples.jsonl`` for an unsharded job, ``samples-0003.jsonl`` for shard 3."""
    suffix = f"-{shard_index:04d}" if num_shards > 1 else ""
    return Path(run_dir) / f"{stem}{suffix}.jsonl"


# -- the run lock ---------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLock:
    """``synth.lock`` holds the pid and host of the job writing into a run directory, and the
    job touches it every ``HEARTBEAT_S`` seconds while it runs. A lock is stale, and taken over,
    when its pid is gone on this host (a SIGKILLed job) or it has not been touched for
    ``STALE_AFTER_S`` (a job killed on another node, e.g. a Slurm job requeued elsewhere);
    otherwise the job is refused."""

    HEARTBEAT_S = 30.0
    STALE_AFTER_S = 300.0

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        self.held = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> "RunLock":
        try:
            self._create()
        except FileExistsError:
            try:
                self._take_over_if_stale()
            except OSError as err:  # writing or renaming its temporary file: disk full, removed
                raise as_output_error(err) from err
        except OSError as err:
            raise as_output_error(err) from err
        self.held = True
        self._beat = threading.Thread(target=self._heartbeat, name="synth-lock", daemon=True)
        self._beat.start()
        return self

    def _create(self) -> None:
        """Create the lock with our pid in it in one step (FileExistsError if there is one): an
        empty lock counts as stale, so it must never be seen empty."""
        create_exclusive(self.path, self.mine.encode())

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # the run directory went away: the job will say so
                pass

    def _take_over_if_stale(self) -> None:
        if not self.path.is_file() or self.path.is_symlink():
            raise OutputError(f"{printable(str(self.path))}: not a lock file that synth wrote (a directory or "
                              f"a link?); remove it if no job runs in {printable(str(self.path.parent))}")
        try:
            owner = json.loads(self.path.read_text() or "{}")
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            pid, host = None, socket.gethostname()  # unreadable (torn write): nobody can hold it
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            age = 0.0
        if pid is not None and age < self.STALE_AFTER_S and (host != socket.gethostname() or _alive(pid)):
            where = f"pid {pid}" + (f" on {host}" if host != socket.gethostname() else "")
            raise OutputError(f"{printable(str(self.path.parent))}: busy: another synth job ({where}) is "
                              f"writing there ({LOCK_FILE}); wait for it or use another hydra.run.dir "
                              f"(remove {LOCK_FILE} only if no job runs there)")
        atomic_write(self.path, self.mine.encode())  # no temporary file left when it fails
        if self.path.read_text() != self.mine:  # another job took it over at the same moment
            raise OutputError(f"{printable(str(self.path.parent))}: busy: another synth job took over "
                              f"the stale {LOCK_FILE} at the same moment")
        log.info("took over the stale %s of pid %s on %s (not running, or not touched for %.0f s)", LOCK_FILE,
                 pid, host, age)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        self._stop.set()
        try:
            if self.path.read_text() == self.mine:
                self.path.unlink()
        except OSError:  # the run directory went away: nothing to release
            pass


# -- JSON lines -----------------------------------------------------------------------------------
def repair_torn_tail(path: Path) -> int:
    """Cut a last line that has no newline (a write torn by SIGKILL); return the bytes removed."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            pos = size
            while pos > 0:
                step = min(65536, pos)
                f.seek(pos - step)
                chunk = f.read(step)
                if pos == size and chunk.endswith(b"\n"):
                    return 0
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    pos = pos - step + newline + 1
                    break
                pos -= step
            f.truncate(pos)
            return size - pos
    except FileNotFoundError:
        return 0


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Every JSON object line of ``path`` (none when missing); unparsable lines are skipped."""
    try:
        f = open(path, encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            record = _parse(line)
            if record is not None:
                yield record


def _parse(line: str | bytes) -> dict[str, Any] | None:
    """One line as a JSON object, None when it is not one (decoded as ``read_jsonl`` decodes)."""
    try:
        record = json.loads(line.decode("utf-8", "surrogateescape") if isinstance(line, bytes) else line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def jsonl_blocks(path: Path, size: int = 1 << 20) -> Iterator[tuple[int, int]]:
    """``path`` cut into byte ranges ``(start, end)`` of whole lines, about ``size`` bytes each:
    blocks that readers in parallel parse with ``read_jsonl_block``."""
    with open(path, "rb") as f:
        end_of_file = f.seek(0, os.SEEK_END)
        start = 0
        while start < end_of_file:
            f.seek(start + size - 1)
            f.readline()  # to the end of the line that holds the block's last byte
            end = min(f.tell(), end_of_file)
            yield start, end
            start = end


def _lines(path: Path, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` for the lines of ``path`` in ``[start, end)`` (as ``jsonl_blocks`` cuts)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    for line in data.splitlines(keepends=True):
        yield start, line
        start += len(line)


def read_jsonl_block(path: Path, start: int, end: int) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """``(offset, record)`` for each line of one block of ``jsonl_blocks``; record None where
    the line is not a JSON object (``read_jsonl`` skips those)."""
    for offset, line in _lines(path, start, end):
        yield offset, _parse(line)


def drop_jsonl_lines(path: Path, offsets: set[int]) -> None:
    """Rewrite ``path`` without its lines that start at ``offsets``, the others byte for byte
    (streamed to a temporary file, then renamed)."""
    _write_atomically(path, (line for block in jsonl_blocks(path) for offset, line in _lines(path, *block)
                             if offset not in offsets))


class JsonlLog:
    """An append-only JSON-lines file, flushed after every line so that a killed job keeps
    every line it reported. ``fresh=True`` starts it empty."""

    def __init__(self, path: Path, fresh: bool = False):
        self.path = Path(path)
        try:
            if not fresh:
                repair_torn_tail(self.path)
            self._file = open(self.path, "w" if fresh else "a", encoding="utf-8", errors="surrogateescape")
        except OSError as err:
            raise as_output_error(err) from err
        self.count = 0  # lines written by this job

    def write(self, record: dict[str, Any]) -> None:
        """Append one line; a full disk (any OS error) is an OutputError naming this file: the job
        stops with one line and exit 3 (a torn line is cut off by the next run)."""
        try:
            self._file.write(_line(record))
            self._file.flush()
        except OSError as err:
            raise OutputError(f"cannot write {printable(str(self.path))}: {err.strerror or err}") from err
        self.count += 1

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:  # disk full on the last flush: the summary says what happened
            pass


def _line(record: dict[str, Any]) -> str:
    """One JSON line (sorted keys, numpy values as numbers; ASCII, so any path survives)."""
    return to_json(record, indent=None) + "\n"


# -- the input manifest ---------------------------------------------------------------------------
class InputsChanged(ConfigError):
    """A rerun's inputs differ from those the run directory's earlier samples were made from."""


def check_manifest(path: Path, entries: Callable[[], Iterable[tuple[int, str, str, int, int]]],
                   total: int, start_over: bool = False, num_shards: int = 1,
                   settings: dict[str, Any] | None = None) -> Callable[[], None]:
    """Compare this shard's inputs (``entries()`` yields ``(index, id, path, size, mtime_ns)``)
    with ``path``, the manifest of the run directory's first run. Returns the write to make once
    the job's other checks (its writers') pass: the manifest when missing, grown or
    ``start_over``, else nothing. So a job refused later does not leave its settings recorded.

    Safe (returns): the same inputs, or inputs added after the last old one (new ids), or the
    last ones gone (their outputs stay). Anything else raises InputsChanged naming the first
    difference: an id would now mean another file.

    A run directory holds the shards of one ``num_shards`` only (also with ``start_over``): a
    manifest of another sharding raises ConfigError, since its job's records hold ids this job
    would record again in its own ``samples*.jsonl``.

    The same for ``settings`` (``synth.settings.output_settings``): a manifest that records other
    ones raises ConfigError, its own unless ``start_over``, another shard's always (its samples
    stay). A manifest without settings (written before they were recorded) is not compared."""
    _check_siblings(path, num_shards, settings, start_over)
    header = next(read_jsonl(path), None)
    write = functools.partial(_manifest_lines, total=total, num_shards=num_shards, settings=settings)
    if start_over or header is None or header.get("manifest") != 1:
        return lambda: _write_atomically(path, write(entries()))
    olds = _manifest_entries(path)
    new = first_new = None
    for index, sid, source, size, mtime in entries():  # check everything before writing anything
        prev = next(olds, None)
        if prev is None:
            new = (new or 0) + 1
            first_new = first_new or sid
            continue
        was = tuple(prev[1:5]) if isinstance(prev, list) and len(prev) == 5 else (None,) * 4
        if isinstance(was[0], str) and len(was[0]) != len(sid) and was[0].lstrip("0") == sid.lstrip("0"):
            raise InputsChanged(f"data.path: the inputs grew to {total:,}, which makes every id {len(sid)} digits long "
                                f"(this run directory's {path.name} has ids of {len(was[0])}): its samples would "
                                f"be found under no id; rerun into a new hydra.run.dir")
        if was[:2] != (sid, source):
            raise InputsChanged(f"data.path: the inputs changed since this run directory's first run "
                                f"({path.name}): id {sid} was {printable(str(was[1]))}, now {printable(source)}; "
                                f"rerun into a new hydra.run.dir, or resume=false to start this one over")
        if was[2:] != (size, mtime):
            raise InputsChanged(f"data.path: {printable(source)} (id {sid}) changed since this run directory's "
                                f"first run ({path.name}: size {was[2]}, now {size}; mtime_ns {was[3]}, now "
                                f"{mtime}); rerun into a new hydra.run.dir, or resume=false to start this one over")
    gone = sum(1 for _ in olds)
    if gone:
        log.warning("%d inputs of this run directory's first run are no longer listed (the last ones); "
                    "their outputs stay", gone)
    if new:
        log.info("%d new inputs since this run directory's first run: ids from %s on", new, first_new)
        return lambda: _write_atomically(path, write(entries()))
    return lambda: None


def _check_siblings(path: Path, num_shards: int, settings: dict[str, Any] | None, start_over: bool) -> None:
    """Raise ConfigError when a manifest beside ``path`` (this job's) was written by a job of
    another ``data.num_shards`` (``manifest.jsonl``: 1; older sharded manifests without the key
    are only known to be sharded) or with other settings (``path`` itself: unless ``start_over``)."""
    for other in sorted(path.parent.glob("manifest*.jsonl")):
        sharded = re.fullmatch(r"manifest-\d{4}\.jsonl", other.name)
        if not sharded and other.name != "manifest.jsonl":
            continue
        header = next(read_jsonl(other), None) or {}
        theirs = header.get("num_shards", None if sharded else 1)
        if theirs != num_shards and (theirs is not None or num_shards == 1):
            raise ConfigError(f"data.num_shards={num_shards}: this run directory holds the samples of a job with "
                              f"data.num_shards={theirs or 'more than 1'} ({other.name}); a job of another sharding "
                              f"would record some ids twice: use another hydra.run.dir")
        recorded = header.get("settings")
        if settings is None or not isinstance(recorded, dict) or (start_over and other.name == path.name):
            continue
        difference = first_difference(recorded, settings)
        if difference is None:
            continue
        now, then = difference
        if other.name == path.name:
            raise ConfigError(f"{now}: this run directory's samples were made with {then} ({other.name}) and "
                              f"would be kept beside this job's; rerun into a new hydra.run.dir, or resume=false "
                              f"to start this one over")
        raise ConfigError(f"{now}: the samples of another shard in this run directory were made with {then} "
                          f"({other.name}); use another hydra.run.dir")


def _write_atomically(path: Path, blocks: Iterable[bytes]) -> None:
    try:
        atomic_write(path, blocks)
    except OSError as err:
        raise as_output_error(err) from err


def _manifest_lines(entries, total: int, num_shards: int = 1,
                    settings: dict[str, Any] | None = None) -> Iterator[bytes]:
    """The manifest, encoded in blocks: a header object (with the job's settings), then one
    compact JSON array per input, ``[index, id, path, size, mtime_ns]`` (formatted by hand: a
    million lines in seconds)."""
    header = {"manifest": 1, "total": total, "num_shards": num_shards,
              "fields": ["index", "id", "path", "size", "mtime_ns"]}
    if settings is not None:
        header["settings"] = dict(sorted(settings.items()))
    yield (json.dumps(header) + "\n").encode()
    block: list[str] = []
    for index, sid, source, size, mtime in entries:
        block.append(f'[{index},"{sid}",{json.dumps(source)},{size},{mtime}]\n')
        if len(block) == 4096:
            yield "".join(block).encode()
            block.clear()
    yield "".join(block).encode()


def _manifest_entries(path: Path) -> Iterator[Any]:
    """The manifest's input lines (the header skipped), parsed; an unparsable line as None."""
    with open(path, encoding="utf-8") as f:
        next(f, None)
        for line in f:
            try:
                yield json.loads(line)
            except ValueError:
                yield None


# -- timings --------------------------------------------------------------------------------------
class TimingStats:
    """Count, mean, min, max and an approximate median of a stream of numbers, in bounded
    memory: the median comes from a uniform reservoir of at most ``size`` values (exact up to
    ``size`` values), seeded so that it does not depend on anything but the stream."""

    def __init__(self, size: int = 1024):
        self.size, self.count, self.total = size, 0, 0.0
        self.low, self.high = float("inf"), float("-inf")
        self.reservoir: list[float] = []
        self._rng = random.Random(0)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low, self.high = min(self.low, value), max(self.high, value)
        if len(self.reservoir) < self.size:
            self.reservoir.append(value)
        else:
            slot = self._rng.randrange(self.count)
            if slot < self.size:
                self.reservoir[slot] = value

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.reservoir)
        mid = len(ordered) // 2
        median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        return {"median": round(median, 2), "mean": round(self.total / self.count, 2),
                "min": round(self.low, 2), "max": round(self.high, 2), "count": self.count}
