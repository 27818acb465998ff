"""The pipelined scheduler of one job: every core on the CPU stages, the device on model batches.

The configured stages are grouped into segments (:func:`plan`): each run of consecutive CPU
stages is one segment that a worker thread runs for one sample at a time, with decoding added
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

Threads, not processes: decoding, the stages' numpy/OpenCV work and OpenCV's encoders release the
GIL, and threads share the samples (tens of MB each) and the writers' state without copying
anything between processes. Measured on 2 cores: 2 workers make 1.7x
the images/s of 1 (``python -m synth.bench cores``). fpng holds the GIL while it encodes (about
13% of a worker's time), which is what bounds the scaling on many cores.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from synth.errors import ConfigError
from synth.params import setting
from synth.sample import Sample
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


class Pipeline:
    """Runs ``load`` -> ``stages`` -> ``write`` over items; see the module docstring. Use it as a
    context manager around :meth:`run`: leaving it waits for the tasks still running in the workers
    (a write), so that nothing closes a writer under them, except after a KeyboardInterrupt (a
    second Ctrl-C), which aborts without waiting.

    ``load(item)`` returns a Sample (a bad file: a failed Sample, not an exception); ``write(sample)``
    writes a finished sample and returns its record. ``stop.requested`` (SIGINT/SIGTERM) stops
    starting new samples: those not yet begun are dropped, those in flight finish."""

    def __init__(self, stages: Sequence[Stage], load: Callable[[Any], Sample], write: Callable[[Sample], Any],
                 batch_size: int, num_workers: int, stop: Any = None, window: int | None = None):
        self.segments = plan(stages)
        self.load, self.write, self.stop = load, write, stop
        self.batch_size, self.num_workers = batch_size, num_workers
        on_device = any(s.on_device for s in self.segments)
        # A device batch must fit with the next one being decoded and the previous one being
        # written; the workers need about two samples each to stay busy while commits wait for order.
        default = 2 * num_workers + (3 * batch_size if on_device else 0)
        self.window = max(window or default, batch_size if on_device else 1)
        self._pool: WorkerPool | None = None

    def __enter__(self) -> "Pipeline":
        self._pool = WorkerPool(self.num_workers)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self._pool.shutdown(wait=not (exc_type is not None and issubclass(exc_type, KeyboardInterrupt)))

    # -- tasks for the workers ---------------------------------------------------------------------
    def _run_cpu(self, slot: _Slot, step: int) -> Any:
        if step == 0:
            slot.sample = self.load(slot.item)
        for stage in self.segments[step].stages:
            run_stage(stage, [slot.sample])
        if step == len(self.segments) - 1 and slot.sample.ok:
            slot.written = True
            return self.write(slot.sample)
        return None

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
