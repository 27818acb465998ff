"""The pipelined scheduler of one job: every core on the CPU stages, the device on model batches.

The configured stages are grouped into segments (:func:`plan`): each run of consecutive CPU
stages is one segment that a worker runs for one sample at a time, with decoding added
to the first and writing to the last; each run of stages that batch on the device
(``Stage.batched_on_device``) is one segment that the main thread runs on whole batches. So for
``segmentation=sam3 captioning=blip``::

    [decode] -> <sam3> -> [albedo, shadow, recombine] -> <blip> -> [write]

Samples move through the segments in a bounded window: at most ``window`` samples are in
flight, so memory stays flat whatever the input size, while the workers decode the next batch
during the current device call. Batches are fixed runs of ``batch_size`` consecutive samples,
and every random draw depends on the seed and the sample's index only, so a sample's result does
not depend on which worker ran it, when, or on ``num_workers``. Finished samples come back in
input order, on the main thread, where the runner commits them (tar/parquet order, logging).

Workers are threads or processes (``workers``, see :func:`worker_kind`). Threads share the
samples and the writers' state without copying, and decoding, OpenCV and its encoders release the
GIL; but fpng holds the GIL while it encodes and much numpy/Python glue serialises, so on 16
cores threads reached about 6 images/s on the weight-free job, no more than on 2. Processes
(:class:`ProcessWorkers`) run the same segment code in worker processes that get the CPU stages,
the loader and the writers once, when they start; per task only the item (or the sample, between
device segments) goes out, and after the last segment only the sample's small fields (its images
too where the logger wants them) and the writers' results come back. Between device segments the
whole sample crosses twice (about 27 MB at 1024 px after albedo/shadow/recombine; pickling it
costs the main process about 30-100 ms of one core): keeping it in the worker that will write it
(one task queue per process) would leave only the device stages' fields to cross.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import logging.handlers
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from synth.errors import ConfigError, WorkerLost
from synth.params import setting
from synth.sample import IMAGE_FIELDS, Sample
from synth.stages.base import Stage


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: Slurm's or taskset's allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_count(value: Any) -> int:
    """``num_workers``: ``auto`` (the usable cores) or a positive integer."""
    if value == "auto":
        return usable_cores()
    if isinstance(value, str):
        raise ConfigError(f"num_workers={value}: use auto (every usable core) or a positive integer")
    return setting("num_workers", value, 1, integer=True)


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
    how far ahead decoding can run."""

    def __init__(self, workers: int, name: str = "synth-worker"):
        self._heap: list[tuple] = []
        self._ready = threading.Condition()
        self._count = itertools.count()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, priority: tuple, fn: Callable, *args: Any) -> Future:
        future: Future = Future()
        with self._ready:
            heapq.heappush(self._heap, (priority, next(self._count), future, fn, args))
            self._ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._heap and not self._closed:
                    self._ready.wait()
                if not self._heap:
                    return  # closed and drained
                _, _, future, fn, args = heapq.heappop(self._heap)
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
            for _, _, future, _, _ in self._heap:
                future.cancel()
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads if wait else ():
            thread.join()


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


def run_segment(slot: _Slot, stages: Sequence[Stage], last: bool, load: Callable, write: Callable) -> Any:
    """One CPU segment for one sample (in a worker thread, or in a worker process): decode first
    when the sample has none yet, the stages, and ``write`` after the last segment."""
    if slot.sample is None:
        slot.sample = load(slot.item)
    for stage in stages:
        run_stage(stage, [slot.sample])
    if last and slot.sample.ok:
        slot.written = True
        return write(slot.sample)
    return None


_WORKER: dict[str, Any] = {}  # in a worker process: what _init_worker received


def _init_worker(segments: dict[int, list[Stage]], last: int, load: Callable, write: Callable,
                 keep_images: Callable[[int], bool], log_queue: Any, log_level: int) -> None:
    """A worker process starts: it ignores SIGINT/SIGTERM (the main process decides when to stop,
    and lets the samples in flight finish) and sends its log records to the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    root = logging.getLogger()
    root.handlers = [logging.handlers.QueueHandler(log_queue)]
    root.setLevel(log_level)
    _WORKER.update(segments=segments, last=last, load=load, write=write, keep_images=keep_images)


def _run_in_worker(step: int, payload: Any) -> tuple[Sample | None, bool, Any, BaseException | None]:
    """A task in a worker process: (sample, written, write's result, the error it raised)."""
    w = _WORKER
    slot = _Slot(-1, payload) if step == 0 else _Slot(-1, None, sample=payload)
    result = error = None
    try:
        result = run_segment(slot, w["segments"][step], step == w["last"], w["load"], w["write"])
    except Exception as err:  # noqa: BLE001 - raised again by the pool, in the main process
        error = err
        try:
            pickle.dumps(err)
        except Exception:  # noqa: BLE001 - an exception that cannot cross: its message does
            error = RuntimeError(f"{type(err).__name__}: {err}")
    if step == w["last"] and slot.sample is not None and not w["keep_images"](slot.sample.index):
        for name in IMAGE_FIELDS:  # written already: only the record and the logger's samples go back
            setattr(slot.sample, name, None)
    return slot.sample, slot.written, result, error


class _ToLoggers:
    """Hands a worker process's log record to the main process's logger of the same name."""

    def handle(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


class ProcessWorkers:
    """``num_workers`` worker processes behind the thread pool's priority queue: each of
    ``num_workers`` threads hands its task to a process and waits (releasing the GIL), so tasks
    start in the same priority order as with threads. The processes are started by "forkserver"
    (fresh, so a CUDA context of the main process is never inherited; workers never touch the
    device) and get the CPU segments' stages, ``load`` and ``write`` once."""

    def __init__(self, num_workers: int, segments: dict[int, list[Stage]], last: int, load: Callable,
                 write: Callable, keep_images: Callable[[int], bool]):
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":  # what this job imported (its stages, writers...): once in the server, not per worker
            context.set_forkserver_preload(sorted(m for m in sys.modules if m.split(".")[0] == "synth"))
        self._log_queue = context.Queue()
        self._listener = logging.handlers.QueueListener(self._log_queue, _ToLoggers())
        self._listener.start()
        level = logging.getLogger("synth").getEffectiveLevel()
        self.executor = ProcessPoolExecutor(num_workers, mp_context=context, initializer=_init_worker,
                                            initargs=(segments, last, load, write, keep_images, self._log_queue, level))

    def run(self, slot: _Slot, step: int) -> Any:
        """In a dispatching thread: the segment in a worker process; the slot gets its results."""
        payload = slot.item if step == 0 else slot.sample
        try:
            sample, written, result, error = self.executor.submit(_run_in_worker, step, payload).result()
        except BrokenProcessPool:  # the pool cannot go on: stop with one line, the rerun resumes
            raise WorkerLost("a worker process died (killed by the system: out of memory?); lower num_workers "
                             "or use workers=threads, then rerun the same command to resume") from None
        slot.sample, slot.written = sample, written
        if error is not None:
            raise error
        return result

    def shutdown(self, wait: bool = True) -> None:
        if not wait:  # a second Ctrl-C: the samples in the workers are abandoned (SIGKILL: they ignore SIGTERM)
            for process in list((getattr(self.executor, "_processes", None) or {}).values()):
                process.kill()
        self.executor.shutdown(wait=wait, cancel_futures=True)
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
        on_device = any(s.on_device for s in self.segments)
        # A device batch must fit with the next one being decoded and the previous one being
        # written; the workers need about two samples each to stay busy while commits wait for order.
        default = 2 * num_workers + (3 * batch_size if on_device else 0)
        self.window = max(window or default, batch_size if on_device else 1)
        self._pool: WorkerPool | None = None

    def __enter__(self) -> "Pipeline":
        if self.workers == "processes":
            cpu = {k: s.stages for k, s in enumerate(self.segments) if not s.on_device}
            self._processes = ProcessWorkers(self.num_workers, cpu, len(self.segments) - 1, self.load, self.write,
                                             self.keep_images)
        self._pool = WorkerPool(self.num_workers)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        wait = not (exc_type is not None and issubclass(exc_type, KeyboardInterrupt))
        try:
            self._pool.shutdown(wait=wait)
        finally:
            if self._processes is not None:
                self._processes.shutdown(wait=wait)

    # -- tasks for the workers ---------------------------------------------------------------------
    def _run_cpu(self, slot: _Slot, step: int) -> Any:
        if self._processes is not None:
            return self._processes.run(slot, step)
        return run_segment(slot, self.segments[step].stages, step == len(self.segments) - 1, self.load, self.write)

    def _submit(self, slot: _Slot, step: int) -> None:
        slot.step = step
        slot.future = self._pool.submit((step, slot.position), self._run_cpu, slot, step)

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
                slot = _Slot(position, item)
                self._submit(slot, 0)
                window.append(slot)
            for slot in window:  # a CPU segment done: on to the device segment after it
                if slot.future is not None and slot.step < last and slot.future.done():
                    slot.future.result()  # raises only on a bug (stage errors fail the sample)
                    slot.step, slot.future = slot.step + 1, None
            batch = next((b for k in device_steps if (b := self._ready_batch(window, k, exhausted))), None)
            if batch:
                step = batch[0].step
                for stage in self.segments[step].stages:
                    run_stage(stage, [slot.sample for slot in batch])
                for slot in batch:
                    self._submit(slot, step + 1)
                continue
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
            wait(running, timeout=1.0, return_when=FIRST_COMPLETED)  # timeout: notice a stop signal

    def _ready_batch(self, window: list[_Slot], step: int, exhausted: bool) -> list[_Slot] | None:
        """The next batch for device segment ``step`` when all its samples have reached it."""
        first = next((i for i, s in enumerate(window) if s.step <= step), None)
        if first is None:
            return None
        number = window[first].position // self.batch_size
        batch = list(itertools.takewhile(lambda s: s.position // self.batch_size == number, window[first:]))
        complete = len(batch) == self.batch_size or exhausted  # the last batch may be shorter
        if complete and all(s.step == step and s.future is None for s in batch):
            return batch
        return None
