"""The pipelined scheduler of one job: every core on the CPU stages, the device on model batches.

The configured stages are grouped into segments (:func:`plan`): each run of consecutive CPU
stages is one segment that a worker runs for one sample at a time, with decoding added
to the first and writing to the last; each run of stages that batch on the device
(``Stage.batched_on_device``) is one segment that runs on whole batches in a thread of its own
(:class:`DeviceLane`). So for ``segmentation=sam3 captioning=blip``::

    [decode] -> <sam3> -> [albedo, shadow, recombine] -> <blip> -> [write]

and SAM 3 on batch n+1 runs beside BLIP on batch n and the workers' CPU stages; the main thread
only moves samples between segments. Samples move through the segments in a bounded window: at
most ``window`` samples are in flight, so memory stays flat whatever the input size, while the
workers decode the next batch during the current device calls. Batches are fixed runs of
``batch_size`` consecutive samples, and every random draw depends on the seed and the sample's
index only, so a sample's result does not depend on which worker ran it, when, or on
``num_workers``. Finished samples come back in input order, on the main thread, where the runner
commits them (tar/parquet order, logging).

Workers are threads or processes (``workers``, see :func:`worker_kind`). Threads share the
samples and the writers' state without copying, and decoding, OpenCV and its encoders release the
GIL; but fpng holds the GIL while it encodes and much numpy/Python glue serialises, so on 16
cores threads reached about 13 images/s on the weight-free job. Processes
(:class:`ProcessWorkers`) run the same segment code in worker processes that get the CPU stages,
the loader and the writers once, when they start. A sample stays in the process that decoded it
until it is written: a device segment gets a copy with only the images its stages read
(``Stage.reads``: the photo for SAM 3 and BLIP) and sends back only what it changed (the mask, the
caption), and after the last segment only the sample's small fields (its images too where the
logger wants them) and the writers' results come back.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import logging.handlers
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

from synth.errors import ConfigError, WorkerLost
from synth.params import setting
from synth.sample import IMAGE_FIELDS, Sample, freeze_images
from synth.stages.base import Stage


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: Slurm's or taskset's allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


MAX_WORKERS = 1024


def worker_count(value: Any) -> int:
    """``num_workers``: ``auto`` (the usable cores) or a positive integer."""
    if value == "auto":
        return usable_cores()
    if isinstance(value, str):
        raise ConfigError(f"num_workers={value}: use auto (every usable core) or a positive integer")
    count = setting("num_workers", value, 1, integer=True)
    if count > MAX_WORKERS:  # num_workers=100000: "can't start new thread", or a hang starting processes
        raise ConfigError(f"num_workers={value}: at most {MAX_WORKERS} (this process may use {usable_cores()} cores)")
    return count


WORKER_KINDS = ("auto", "threads", "processes")
# workers=auto picks processes from this many workers on: below it threads win (2 cores, ``python -m
# synth.bench pipeline --workers threads,processes``: 4.27 vs 3.63 images/s): they start at once
# and copy nothing, and 2 workers contend little for the GIL.
PROCESSES_FROM = 4


def worker_kind(value: Any, num_workers: int) -> str:
    """``workers``: threads, processes, or auto (processes from PROCESSES_FROM workers on)."""
    if value not in WORKER_KINDS:
        raise ConfigError(f"workers={value}: use auto, threads or processes")
    if value == "auto":
        return "processes" if num_workers >= PROCESSES_FROM else "threads"
    return value


def ordered_map(pool: Executor, fn: Callable[[Any], Any], items: Iterable[Any], ahead: int) -> Iterator[Any]:
    """``fn(item)`` for each item in ``pool``, at most ``ahead`` submitted and not yet handed back:
    a bounded window over any number of items, results in input order."""
    window: deque = deque()
    for item in items:
        window.append(pool.submit(fn, item))
        if len(window) >= ahead:
            yield window.popleft().result()
    while window:
        yield window.popleft().result()


def _no_images(index: int) -> bool:
    return False


def run_stage(stage: Stage, batch: list[Sample]) -> None:
    """``stage`` on the batch's live samples; when the batch call raises, each sample is retried
    alone so that only the bad one fails. Records the stage's time per sample."""
    live = [s for s in batch if s.ok]
    if not live:
        return
    start = time.perf_counter()
    try:
        stage.process(live)
    except Exception as err:  # noqa: BLE001 - isolate the bad sample
        if len(live) == 1:
            live[0].fail(stage.name, err)
        else:
            for sample in live:
                try:
                    stage.process([sample])
                except Exception as one_err:  # noqa: BLE001
                    sample.fail(stage.name, one_err)
    per_sample = 1000.0 * (time.perf_counter() - start) / len(live)
    for sample in live:
        sample.timings_ms[stage.name] = per_sample
        freeze_images(sample)


@dataclass
class Segment:
    """Consecutive stages that run the same way: batched on the device, or per sample in a worker."""

    on_device: bool
    stages: list[Stage] = field(default_factory=list)


def plan(stages: Sequence[Stage]) -> list[Segment]:
    """The segments of a job: CPU and device segments alternate, and the first and the last are
    CPU segments (possibly without stages), since decoding and writing run in the workers."""
    segments = [Segment(on_device=False)]
    for stage in stages:
        on_device = bool(stage.batched_on_device)
        if segments[-1].on_device != on_device:
            segments.append(Segment(on_device))
        segments[-1].stages.append(stage)
    if segments[-1].on_device:
        segments.append(Segment(on_device=False))
    return segments


class WorkerPool:
    """Threads that run the queued task of highest priority first (lowest ``priority`` tuple).

    The pipeline gives earlier segments priority, so the next device batch is decoded before
    finished samples are written: the device waits as little as possible, and the window bounds
    how far ahead decoding can run. A task submitted with ``worker=k`` runs on thread k only (with
    worker processes, thread k feeds process k, which holds the sample)."""

    def __init__(self, workers: int, name: str = "synth-worker"):
        self._shared: list[tuple] = []
        self._pinned: list[list[tuple]] = [[] for _ in range(workers)]
        self._ready = threading.Condition()
        self._count = itertools.count()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, priority: tuple, fn: Callable, *args: Any, worker: int | None = None) -> Future:
        future: Future = Future()
        with self._ready:
            heap = self._shared if worker is None else self._pinned[worker]
            heapq.heappush(heap, (priority, next(self._count), future, fn, args))
            if worker is None:
                self._ready.notify()
            else:  # only thread ``worker`` may take it: wake them all
                self._ready.notify_all()
        return future

    def _work(self, index: int) -> None:
        own = self._pinned[index]
        while True:
            with self._ready:
                while not self._shared and not own and not self._closed:
                    self._ready.wait()
                heaps = [heap for heap in (own, self._shared) if heap]
                if not heaps:
                    return  # closed and drained
                _, _, future, fn, args = heapq.heappop(min(heaps, key=lambda heap: heap[0][:2]))
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                result = fn(*args)
            except BaseException as err:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(err)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True) -> None:
        """Cancel what has not started; with ``wait``, let running tasks finish and join the threads
        (without, they are left to end with the process: they are daemon threads)."""
        with self._ready:
            for heap in (self._shared, *self._pinned):
                for _, _, future, _, _ in heap:
                    future.cancel()
                heap.clear()
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads if wait else ():
            thread.join()


class DeviceLane:
    """The thread of one device segment: its batches run one after the other in input order, beside
    the other device segments' batches (two models overlap) and the CPU workers; the main thread
    only dispatches. On CUDA each lane launches its kernels on a stream of its own, so the models'
    kernels can overlap on the GPU too (every result comes back with a synchronous copy to the CPU,
    on that stream)."""

    def __init__(self, step: int, stages: Sequence[Stage]):
        self.stages = list(stages)
        self._thread = WorkerPool(1, name=f"synth-device-{step}")
        self._stream: Any = None

    def submit(self, position: int, samples: list[Sample]) -> Future:
        return self._thread.submit((position,), self._run, samples)

    def _run(self, samples: list[Sample]) -> None:
        with self._cuda_stream():
            for stage in self.stages:
                run_stage(stage, samples)

    @contextmanager
    def _cuda_stream(self) -> Iterator[None]:
        devices = [str(getattr(stage, "device", None) or "") for stage in self.stages]
        device = next((d for d in devices if d.startswith("cuda")), None)
        torch = sys.modules.get("torch")
        if device is None or torch is None:
            yield
            return
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=device)
            self._stream.wait_stream(torch.cuda.current_stream(device))  # the models' set-up comes first
        with torch.cuda.stream(self._stream):
            yield

    def shutdown(self, wait: bool = True) -> None:
        self._thread.shutdown(wait)


@dataclass(eq=False)
class _Slot:
    """One sample in flight: ``step`` is the index of the segment it is in (running in a worker
    while ``future`` is set and not done) or waiting for (a device segment, ``future`` None)."""

    position: int  # in this job's input order; position // batch_size is its batch
    item: Any
    sample: Sample | None = None
    step: int = 0
    future: Future | None = None
    written: bool = False  # handed to ``write`` (not failed before it)
    worker: int | None = None  # with worker processes: the one that holds the sample
    arrived: dict[str, Any] = field(default_factory=dict)  # the images its worker sent for a device segment


def run_segment(slot: _Slot, stages: Sequence[Stage], last: bool, load: Callable, write: Callable) -> Any:
    """One CPU segment for one sample (in a worker thread, or in a worker process): decode first
    when the sample has none yet, the stages, and ``write`` after the last segment."""
    if slot.sample is None:
        slot.sample = load(slot.item)
        freeze_images(slot.sample)
    for stage in stages:
        run_stage(stage, [slot.sample])
    if last and slot.sample.ok:
        slot.written = True
        return write(slot.sample)
    return None


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # the main process decides when a job stops


def _with_images(sample: Sample, keep: Iterable[str]) -> Sample:
    """A copy of ``sample`` whose image fields other than ``keep`` are None (what need not travel)."""
    return replace(sample, **{name: None for name in IMAGE_FIELDS if name not in keep})


def _device_copy(sample: Sample, reads: Iterable[str], lent: dict[str, Any]
                 ) -> tuple[Sample, tuple[str, ...], dict[str, Any]]:
    """The copy of ``sample`` a device segment gets: the images it ``reads``, less those the main
    process still holds, unchanged, from the sample's previous device copy (``lent``: the same
    arrays; images are read-only), named in ``kept``; and the images the main process holds once
    it has this copy (the next call's ``lent``). So BLIP does not get the photo again after SAM 3."""
    holds = {name: getattr(sample, name) for name in reads if getattr(sample, name) is not None}
    kept = tuple(name for name, image in holds.items() if lent.get(name) is image)
    return _with_images(sample, [name for name in holds if name not in kept]), kept, holds


def _merge(sample: Sample, update: tuple[Sample, dict[str, str]]) -> Sample:
    """``sample`` (held by a worker process) with what a device segment did to its copy: every small
    field, the images the copy carries (those it changed), and the fields it set to one of the
    images it was sent (``foreground = image``: a name, not 3 MB again)."""
    changed, same_as = update
    sent = {name: getattr(sample, other) for name, other in same_as.items()}  # before any is replaced
    for f in fields(Sample):
        value = getattr(changed, f.name)
        if value is not None or f.name not in IMAGE_FIELDS:
            setattr(sample, f.name, value)
    for name, image in sent.items():
        setattr(sample, name, image)
    return sample


def _crossable(err: Exception) -> Exception:
    """``err``, or, when it cannot be pickled, a RuntimeError with its message."""
    try:
        pickle.dumps(err)
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


def _worker_main(connection: Any, segments: dict[int, list[Stage]], last: int, load: Callable, write: Callable,
                 keep_images: Callable[[int], bool], reads: dict[int, tuple[str, ...]], log_queue: Any,
                 log_level: int) -> None:
    """A worker process: runs the CPU segments it is sent, holding each sample from its decoding to
    its writing. A device segment gets a copy with the images it reads (``reads``); only what it
    changed comes back. After the last segment only the sample's small fields go back (and its
    images where the logger wants them). It ignores SIGINT/SIGTERM (the main process decides when
    to stop, and lets the samples in flight finish) and sends its log records to the main process;
    it ends when the main process closes the connection."""
    for sig in STOP_SIGNALS:  # (ignored from its start already where it forks from the forkserver)
        signal.signal(sig, signal.SIG_IGN)
    root = logging.getLogger()
    root.handlers = [logging.handlers.QueueHandler(log_queue)]
    root.setLevel(log_level)
    held: dict[int, tuple[Sample, dict[str, Any]]] = {}  # position -> (sample, its images the main process holds)
    connection.send(None)  # ready
    while True:
        try:
            step, position, payload = connection.recv()
        except (EOFError, OSError):
            return
        lent: dict[str, Any] = {}
        if step == 0:
            slot = _Slot(position, payload)
        else:
            sample, lent = held.pop(position)
            slot = _Slot(position, None, sample=_merge(sample, payload))
            freeze_images(slot.sample)  # what came from the device segment too
        result = error = None
        kept: tuple[str, ...] = ()
        try:
            result = run_segment(slot, segments[step], step == last, load, write)
        except Exception as err:  # noqa: BLE001 - raised again in the main process
            error = _crossable(err)
        sample = slot.sample
        if sample is not None and step < last:
            copy, kept, lent = _device_copy(sample, reads[step + 1], lent)
            held[position] = (sample, lent)
            sample = copy
        elif sample is not None and not keep_images(sample.index):
            sample = _with_images(sample, ())  # written already
        connection.send((sample, kept, slot.written, result, error))


class _ToLoggers:
    """Hands a worker process's log record to the main process's logger of the same name."""

    def handle(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


def start_process_server() -> Any:
    """The multiprocessing context of worker processes. With "forkserver" its server starts now (if
    not yet running) and imports, once, what this job has imported of synth (its stages, writers,
    and their libraries), so each worker forks from it ready; the runner calls this before loading
    the models, so that this happens meanwhile."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(sorted(m for m in sys.modules if m.split(".")[0] == "synth"))
        # The server, and every worker forked from it, starts with SIGINT and SIGTERM blocked (a
        # thread's signal mask passes through fork and exec): a Ctrl-C to the process group while
        # a worker starts must not kill it, and once running it ignores both (_worker_main).
        # Blocked in the starting thread only, never ignored by this process: a Ctrl-C to the job
        # meanwhile is still its own handler's (taken by another thread, or pending here).
        # multiprocessing's resource tracker is started first: starting it unblocks both.
        multiprocessing.resource_tracker.ensure_running()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return context


class ProcessWorkers:
    """``num_workers`` worker processes, process k fed by thread k of the pool (which waits on it,
    releasing the GIL), so tasks start in the same priority order as with threads. A sample stays
    in the process that decoded it until it is written (its later segments are pinned to that
    thread): between segments only the images a device segment reads go out, and only what it
    changed comes back. The processes are started by "forkserver" (fresh, so a CUDA context of
    the main process is never inherited; workers never touch the device) and get the CPU
    segments' stages, ``load`` and ``write`` once."""

    def __init__(self, num_workers: int, segments: dict[int, list[Stage]], last: int, load: Callable,
                 write: Callable, keep_images: Callable[[int], bool], reads: dict[int, tuple[str, ...]]):
        context = start_process_server()
        self._log_queue = context.Queue()
        self._listener = logging.handlers.QueueListener(self._log_queue, _ToLoggers())
        self._listener.start()
        level = logging.getLogger("synth").getEffectiveLevel()
        self._connections, self._processes = [], []
        for k in range(num_workers):
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker_main, name=f"synth-worker-{k}", daemon=True,
                                      args=(theirs, segments, last, load, write, keep_images, reads,
                                            self._log_queue, level))
            process.start()
            theirs.close()
            self._connections.append(ours)
            self._processes.append(process)
        for connection in self._connections:  # up and ready: a job's clock starts on running workers
            try:
                connection.recv()
            except (EOFError, OSError):
                self.shutdown(wait=False)
                raise WorkerLost("a worker process failed to start (see the log above)") from None

    def run(self, slot: _Slot, step: int, worker: int) -> Any:
        """In thread ``worker`` of the pool: the segment in process ``worker``; the slot gets its results."""
        if step == 0:
            payload = slot.item
        else:  # the device segment's copy, without the images that came from the worker
            sent = {id(image): name for name, image in slot.arrived.items()}  # alive: ids are theirs
            same_as = {name: sent[id(getattr(slot.sample, name))] for name in IMAGE_FIELDS
                       if id(getattr(slot.sample, name)) in sent}
            payload = (replace(slot.sample, **{name: None for name in same_as}), same_as)
        try:
            self._connections[worker].send((step, slot.position, payload))
            sample, kept, written, result, error = self._connections[worker].recv()
        except (EOFError, OSError):  # the process died: stop with one line, the rerun resumes
            raise WorkerLost("a worker process died (killed by the system: out of memory?); lower num_workers "
                             "or use workers=threads, then rerun the same command to resume") from None
        for name in kept:  # not sent again: this process has it from the sample's previous device segment
            setattr(sample, name, slot.arrived[name])
        if sample is not None:
            freeze_images(sample)
        slot.sample, slot.written = sample, written
        slot.arrived = {name: getattr(sample, name) for name in IMAGE_FIELDS
                        if sample is not None and getattr(sample, name) is not None}
        if error is not None:
            raise error
        return result

    def shutdown(self, wait: bool = True) -> None:
        """Close the connections: idle workers end. Without ``wait`` (a second Ctrl-C) the
        processes are killed (SIGKILL: they ignore SIGTERM) with the samples they hold."""
        for process in self._processes if not wait else ():
            process.kill()
        for connection in self._connections:
            connection.close()
        for process in self._processes:
            process.join(None if wait else 5)
        self._listener.stop()
        self._log_queue.close()


class Pipeline:
    """Runs ``load`` -> ``stages`` -> ``write`` over items; see the module docstring. Use it as a
    context manager around :meth:`run`: leaving it waits for the tasks still running in the workers
    (a write), so that nothing closes a writer under them, except after a KeyboardInterrupt (a
    second Ctrl-C), which aborts without waiting.

    ``load(item)`` returns a Sample (a bad file: a failed Sample, not an exception); ``write(sample)``
    writes a finished sample and returns its record. ``stop.requested`` (SIGINT/SIGTERM) stops
    starting new samples: those not yet begun are dropped, those in flight finish."""

    def __init__(self, stages: Sequence[Stage], load: Callable[[Any], Sample], write: Callable[[Sample], Any],
                 batch_size: int, num_workers: int, stop: Any = None, window: int | None = None,
                 workers: str = "threads", keep_images: Callable[[int], bool] | None = None):
        self.segments = plan(stages)
        self.load, self.write, self.stop = load, write, stop
        # workers="processes": ``load``, ``write``, ``keep_images`` and the CPU stages must pickle;
        # keep_images(index): whether a finished sample's images come back (the logger's samples)
        self.workers, self.keep_images = worker_kind(workers, num_workers), keep_images or _no_images
        self._processes: ProcessWorkers | None = None
        self.batch_size, self.num_workers = batch_size, num_workers
        device_segments = sum(s.on_device for s in self.segments)
        # A batch in each device segment must fit with the next one being decoded and the previous
        # one being written; the workers need about two samples each to stay busy while commits
        # wait for order.
        default = 2 * num_workers + ((2 + device_segments) * batch_size if device_segments else 0)
        self.window = max(window or default, batch_size if device_segments else 1)
        self._pool: WorkerPool | None = None
        self._lanes: dict[int, DeviceLane] = {}

    def __enter__(self) -> "Pipeline":
        if self.workers == "processes":
            cpu = {k: s.stages for k, s in enumerate(self.segments) if not s.on_device}
            reads = {k: tuple(dict.fromkeys(name for stage in s.stages for name in stage.reads))
                     for k, s in enumerate(self.segments) if s.on_device}
            self._processes = ProcessWorkers(self.num_workers, cpu, len(self.segments) - 1, self.load, self.write,
                                             self.keep_images, reads)
        self._pool = WorkerPool(self.num_workers)
        self._lanes = {k: DeviceLane(k, s.stages) for k, s in enumerate(self.segments) if s.on_device}
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        wait = not (exc_type is not None and issubclass(exc_type, KeyboardInterrupt))
        try:
            for lane in self._lanes.values():
                lane.shutdown(wait=wait)
            self._pool.shutdown(wait=wait)
        finally:
            if self._processes is not None:
                self._processes.shutdown(wait=wait)

    # -- tasks for the workers ---------------------------------------------------------------------
    def _run_cpu(self, slot: _Slot, step: int) -> Any:
        if self._processes is not None:
            return self._processes.run(slot, step, slot.worker)
        return run_segment(slot, self.segments[step].stages, step == len(self.segments) - 1, self.load, self.write)

    def _least_loaded(self, window: list[_Slot]) -> int | None:
        """With worker processes: the one that holds the fewest samples in flight, which will hold the
        next one to its end (balanced when samples start, not by which process is free first: a
        process that decoded more samples would have more of the costly later segments to run)."""
        if self._processes is None:
            return None
        held = [0] * self.num_workers
        for slot in window:
            held[slot.worker] += 1
        return held.index(min(held))

    def _submit(self, slot: _Slot, step: int) -> None:
        slot.step = step
        slot.future = self._pool.submit((step, slot.position), self._run_cpu, slot, step, worker=slot.worker)

    # -- the main thread ---------------------------------------------------------------------------
    def run(self, items: Iterable[Any]) -> Iterator[tuple[Sample, Future | None]]:
        """Yield ``(sample, written)`` in input order: ``written`` is None for a sample that failed
        before writing, else a done future whose ``result()`` is ``write``'s record or raises what
        ``write`` raised. ``items`` is consumed lazily, as the window has room."""
        last = len(self.segments) - 1
        if self._pool is None:
            raise RuntimeError("Pipeline.run: use the pipeline as a context manager (with Pipeline(...) as p)")
        device_steps = [k for k, s in enumerate(self.segments) if s.on_device][::-1]  # later ones drain first
        window: list[_Slot] = []
        source = iter(enumerate(items))
        exhausted = False
        while True:
            if self.stop is not None and self.stop.requested and not exhausted:
                exhausted = True
                window = [s for s in window if not (s.step == 0 and s.future.cancel())]  # not begun: dropped
            while not exhausted and len(window) < self.window:
                position, item = next(source, (None, None))
                if position is None:
                    exhausted = True
                    break
                slot = _Slot(position, item, worker=self._least_loaded(window))
                self._submit(slot, 0)
                window.append(slot)
            for slot in window:  # a segment done: on to the next one
                if slot.future is not None and slot.step < last and slot.future.done():
                    slot.future.result()  # raises only on a bug (stage errors fail the sample)
                    if self.segments[slot.step].on_device:
                        self._submit(slot, slot.step + 1)
                    else:  # waits for its batch to be complete
                        slot.step, slot.future = slot.step + 1, None
            for step in device_steps:  # every complete batch to its device segment's lane
                while batch := self._ready_batch(window, step, exhausted):
                    future = self._lanes[step].submit(batch[0].position, [slot.sample for slot in batch])
                    for slot in batch:
                        slot.future = future
            finished = 0
            while finished < len(window) and window[finished].step == last and window[finished].future.done():
                finished += 1
            if finished:
                done, window = window[:finished], window[finished:]
                for slot in done:
                    if slot.sample is None:
                        slot.future.result()  # load itself raised: a bug, not a bad file
                    yield slot.sample, slot.future if slot.written else None
                continue
            if not window and exhausted:
                return
            running = [s.future for s in window if s.future is not None and not s.future.done()]
            # timeout: a stop signal is noticed within 0.1 s, before free workers start many new samples
            wait(running, timeout=0.1, return_when=FIRST_COMPLETED)

    def _ready_batch(self, window: list[_Slot], step: int, exhausted: bool) -> list[_Slot] | None:
        """The next batch for device segment ``step`` (the first not handed to its lane) when all its
        samples have reached it."""
        first = next((i for i, s in enumerate(window) if s.step < step or (s.step == step and s.future is None)), None)
        if first is None:
            return None
        number = window[first].position // self.batch_size
        batch = list(itertools.takewhile(lambda s: s.position // self.batch_size == number, window[first:]))
        complete = len(batch) == self.batch_size or exhausted  # the last batch may be shorter
        if complete and all(s.step == step and s.future is None for s in batch):
            return batch
        return None
