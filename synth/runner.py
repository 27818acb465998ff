"""One job: source -> stages -> writers, streamed through the pipeline of synth.schedule."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Iterator, Sequence

from synth.params import check_seed, setting
from synth.data import ImageFolder
from synth.errors import ConfigError, OutputError, WorkerLost
from synth.faults import (EXIT_OUTPUT_ERROR, JOB_ERRORS, StopSignals, as_output_error, check_max_failure_rate,
                          check_writable, exit_code_of, exit_status, printable)
from synth.files import atomic_write_json
from synth.loggers import NullLogger
from synth.progress import Progress
from synth.schedule import Pipeline, ordered_map, start_process_server, worker_count, worker_kind
from synth.rundir import (JsonlLog, RunLock, TimingStats, check_manifest, drop_jsonl_lines, jsonl_blocks, read_jsonl,
                          read_jsonl_block, repair_torn_tail, shard_file)
from synth.sample import Sample
from synth.stages.base import Stage, check_cuda, resolve_device
from synth.writers.encoded import EncodedImages
from synth.writers.folder import sample_record

log = logging.getLogger("synth")
STAGE_GROUPS = ("segmentation", "albedo", "shadow", "recombine", "captioning")


def check_chain(stages: Sequence[Stage]) -> None:
    """Fail before any image is read when a stage needs a field no earlier stage provides."""
    available = {"image"}
    for stage in stages:
        missing = [f for f in stage.requires if f not in available]
        if missing:
            raise ConfigError(f"{stage.name}: needs {', '.join(missing)} from an earlier stage, but the "
                              f"configured stages before it provide only {', '.join(sorted(available))}")
        available.update(stage.provides)


def _write_failed(sample: Sample, err: Exception) -> None:
    """A write error fails its sample, unless the output location itself is broken: that stops the job."""
    output_error = as_output_error(err)
    if output_error:
        raise output_error from err
    sample.fail("write", err)


class SampleWriter:
    """Writes one finished sample with every writer that lacks it, in a worker thread or process
    (it pickles: the writers, opened, and which of them has which sample, go to each worker
    process once). Each image is encoded once for all the writers.

    Returns ``(record, rows)``: the sample's record (the first record-returning writer's: the
    folder's, with its files) and, per writer, what an ordered writer's ``write`` returned for its
    ``commit`` on the main thread (None for the others)."""

    def __init__(self, writers: Sequence[Any], has: Sequence[bytearray]):
        self.writers, self.has = list(writers), list(has)

    def __call__(self, sample: Sample) -> tuple[dict[str, Any], list[Any]]:
        start = time.perf_counter()
        images = EncodedImages(sample)
        record: dict[str, Any] | None = None
        rows: list[Any] = [None] * len(self.writers)
        done: list[Any] = []
        try:
            for k, (has, writer) in enumerate(zip(self.has, self.writers)):
                if has[sample.index]:
                    continue  # resumed for another writer: this one has it already
                written = writer.write(sample, images)
                done.append(writer)
                if hasattr(writer, "commit"):
                    rows[k] = written
                else:
                    record = record or written
        except BaseException:
            for writer in done:  # a failed sample leaves no files, whichever writer failed
                if hasattr(writer, "discard"):
                    writer.discard(sample.id)
            raise
        sample.timings_ms["write"] = 1000.0 * (time.perf_counter() - start)
        return record or sample_record(sample, {}), rows


class Runner:
    """One job: this shard's samples through ``stages``, then to every writer and the logger.

    State per job is O(1) in the number of samples, besides a byte per input and writer (which
    writer has which sample): records stream to ``samples.jsonl`` and ``failures.jsonl``, and
    ``metadata.json`` is a bounded summary (see synth.rundir)."""

    MAX_FAILURES_LISTED = 10  # in metadata.json and the printed summary; all are in failures.jsonl

    def __init__(self, source: ImageFolder, stages: Sequence[Stage], writers: Sequence[Any],
                 logger: Any = None, run_dir: str | Path = ".", seed: int = 0, batch_size: int = 4,
                 num_workers: int | str = "auto", device: str = "auto", resume: bool = True,
                 progress_every_s: float = 30.0, max_failure_rate: float = 0.1, workers: str = "auto",
                 settings: dict[str, Any] | None = None):
        self.batch_size = setting("batch_size", batch_size, 1, integer=True)
        self.num_workers = worker_count(num_workers)
        self.workers = worker_kind(workers, self.num_workers)  # threads | processes
        self.seed = check_seed(seed)
        self.progress_every_s = setting("progress_every_s", progress_every_s, 0.0)
        check_chain(stages)
        self.source, self.stages, self.writers = source, list(stages), list(writers)
        self.logger = logger or NullLogger()
        self.run_dir, self.device, self.resume = Path(run_dir), device, resume
        self.settings = settings  # what the samples depend on (synth.settings): a resume with others is refused
        self.max_failure_rate = check_max_failure_rate(max_failure_rate)
        shards = getattr(source, "num_shards", 1), getattr(source, "shard_index", 0)
        self.samples_path = shard_file(self.run_dir, "samples", *shards)
        self.failures_path = shard_file(self.run_dir, "failures", *shards)
        self.manifest_path = shard_file(self.run_dir, "manifest", *shards)
        self._has: list[bytearray] = []  # per writer, per global index: 1 where it has the sample
        self._recorded = bytearray()  # per global index: 1 where samples.jsonl has its line
        self._samples_log: JsonlLog | None = None
        self._failures_log: JsonlLog | None = None
        self._done = self._failed = 0
        self._first_failures: list[dict[str, Any]] = []
        self._timings: dict[str, TimingStats] = {}

    # -- resume ---------------------------------------------------------------------------------
    def _complete(self, index: int) -> bool:
        """Every writer has it (a writer that cannot tell never has it)."""
        return bool(self._has) and all(has[index] for has in self._has)

    def _resume_state(self) -> None:
        """Which writer has which of this shard's samples, without reading a pixel: the folder
        writer by the records in samples.jsonl (checked against the files' recorded sizes by
        worker threads or processes), writers without records by ``is_complete(id)``. samples.jsonl is
        rewritten without the lines of samples that are no longer complete (or duplicates)."""
        total = self.source.total
        self._has = [bytearray(total) for _ in self.writers]
        self._recorded = bytearray(total)
        if not self.resume:
            return
        shard = self.source.indices()
        for has, writer in zip(self._has, self.writers):
            if hasattr(writer, "is_complete") and not hasattr(writer, "has"):
                for index in shard:
                    has[index] = writer.is_complete(self.source.id_of(index))
        if not self.samples_path.exists():
            return
        repair_torn_tail(self.samples_path)
        checkers = [(has, w) for has, w in zip(self._has, self.writers) if hasattr(w, "has")]
        check = functools.partial(_check_records, [w for _, w in checkers], self.samples_path)
        dropped: set[int] = set()  # offsets of the lines to drop: incomplete or repeated samples
        unreadable: set[int] = set()  # offsets of lines that are not JSON objects (dropped with them)
        # Blocks of whole lines, each parsed and checked by one worker, a bounded window ahead;
        # results in file order, since the first good line of an id wins.
        workers, pool = self._resume_pool()
        with pool:
            checked = ordered_map(pool, check, jsonl_blocks(self.samples_path, _RESUME_BLOCK_BYTES), 4 * workers)
            for results in _resume_results(checked):
                for offset, index, image_id, made_from, ok in results:
                    if ok is None:
                        unreadable.add(offset)
                    elif not (isinstance(index, int) and 0 <= index < total and index in shard):
                        continue  # not this listing's (inputs gone at the end): left alone
                    elif ok and not self._recorded[index] and image_id == self.source.id_of(index) \
                            and self.source.made_from(index, made_from):  # (no manifest pinned the inputs)
                        self._recorded[index] = 1
                        for has, _ in checkers:
                            has[index] = 1
                    else:
                        dropped.add(offset)
        if dropped:  # rewritten only then: a clean resume reads samples.jsonl once and writes nothing
            log.warning("resume: %d records in %s are incomplete on disk (a file missing or changed), "
                        "repeated or of another input: those samples are redone", len(dropped),
                        self.samples_path.name)
            drop_jsonl_lines(self.samples_path, dropped | unreadable)

    def _resume_pool(self) -> tuple[int, Executor]:
        """Resume's ``num_workers`` workers: with ``workers=processes`` and a large samples.jsonl,
        processes, which parse on every core; otherwise threads (at most ``_RESUME_THREADS``),
        which start at once but overlap only the stats: parsing holds the GIL."""
        if self.workers == "processes" and self.samples_path.stat().st_size >= _RESUME_PROCESSES_FROM_BYTES:
            return self.num_workers, ProcessPoolExecutor(self.num_workers, mp_context=start_process_server())
        threads = min(self.num_workers, _RESUME_THREADS)
        return threads, ThreadPoolExecutor(threads, thread_name_prefix="resume")

    # -- per sample -----------------------------------------------------------------------------
    def _logged_images(self) -> Any:
        """The logger's test for the samples whose images it logs (None: it logs none)."""
        image_indices = getattr(self.logger, "image_indices", None)
        return image_indices() if image_indices else None

    def _commit(self, sample: Sample, written: tuple[dict[str, Any], list[Any]] | None, step: int) -> None:
        """Everything that happens to a finished sample, on the main thread in input order:
        ordered writers (tar, parquet) append the rows their ``write`` made for it, its record
        goes to samples.jsonl (or, failed, its files go and its reason goes to failures.jsonl),
        the statistics and the logger."""
        record, rows = written or (None, [])
        if sample.ok and record is not None:
            try:
                for writer, row in zip(self.writers, rows):
                    if row is not None:
                        writer.commit(sample, row)
            except Exception as err:  # noqa: BLE001
                _write_failed(sample, err)
        if sample.ok:
            if not self._recorded[sample.index]:
                self._samples_log.write(record)
                self._recorded[sample.index] = 1
            self._done += 1
            for key, ms in sample.timings_ms.items():
                self._timings.setdefault(key, TimingStats()).add(ms)
        else:
            for writer in self.writers:  # no files from any run: also an earlier run's stale ones
                if hasattr(writer, "discard"):
                    writer.discard(sample.id)
            failure = {"id": sample.id, "path": sample.source, "stage": sample.error_stage, "error": sample.error}
            self._failures_log.write(failure)
            self._failed += 1
            if len(self._first_failures) < self.MAX_FAILURES_LISTED:
                self._first_failures.append(failure)
            log.warning("failed %s (%s) at %s: %s", sample.id, printable(sample.source), sample.error_stage,
                        printable(sample.error))
        self.logger.log_sample(sample, step)

    # -- the job --------------------------------------------------------------------------------
    def run(self, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """The whole job. A job refused before it starts (run directory busy, inputs changed
        since the run directory's first run) raises and leaves the run directory as it was."""
        started = time.perf_counter()
        check_writable(self.run_dir)  # an unusable output location: one error before any work
        lock = RunLock(self.run_dir).acquire()
        try:
            self.source.skip(self.run_dir)  # never our own outputs as inputs
            total = self.source.total
            write_manifest = check_manifest(self.manifest_path, self.source.entries, total, start_over=not self.resume,
                                            num_shards=getattr(self.source, "num_shards", 1), settings=self.settings)
            for writer in self.writers:
                writer.open(self.run_dir, resume=self.resume, shard_index=getattr(self.source, "shard_index", 0),
                            source=self.source, settings=self.settings)
            write_manifest()
            self._resume_state()
            return self._process(config, started)
        finally:
            lock.release()

    def _process(self, config: dict[str, Any] | None, started: float) -> dict[str, Any]:
        processing, processing_cpu = time.perf_counter(), time.process_time()
        shard = self.source.indices()
        todo_count = sum(1 for i in shard if not self._complete(i))
        skipped = len(shard) - todo_count
        if skipped:
            log.info("resume: %d of %d samples already complete in %s", skipped, len(shard), self.run_dir)
        log.info("%d samples to process into %s", todo_count, self.run_dir)
        exit_code, exit_reason = 1, "stopped by an error (see the log above)"
        self._samples_log = JsonlLog(self.samples_path, fresh=not self.resume)
        self._failures_log = JsonlLog(self.failures_path, fresh=True)  # failed samples are all retried
        stop = StopSignals().install()  # SIGINT/SIGTERM: finish what is in flight, then stop
        finished = False
        try:
            if self.workers == "processes" and todo_count:
                start_process_server()  # it imports what the workers need while the logger and models start
            self.logger.start(config or {}, str(self.run_dir))  # in here: a failed start still ends the job cleanly
            device = self.device
            if any(stage.batched_on_device for stage in self.stages):  # (resolving imports torch)
                device = resolve_device(device, getattr(self.source, "shard_index", 0))  # shard k: GPU k mod n
                check_cuda("device", device)  # cuda:9 on this machine: one line, not torch's traceback
            for stage in self.stages:
                stage.setup(device)
            todo = (self.source.item(index) for index in shard if not self._complete(index))
            with Progress(todo_count, self.progress_every_s) as progress, \
                    Pipeline(self.stages, functools.partial(self.source.load, seed=self.seed),
                             SampleWriter(self.writers, self._has), self.batch_size, self.num_workers, stop,
                             workers=self.workers, keep_images=self._logged_images()) as pipeline:
                processing = time.perf_counter()  # throughput excludes logger, model and worker start-up
                processing_cpu = time.process_time()
                for sample, future in pipeline.run(todo):  # finished samples, in input order
                    written = None
                    if future is not None:
                        try:
                            written = future.result()
                        except Exception as err:  # noqa: BLE001
                            _write_failed(sample, err)
                    done = self._done + self._failed + 1
                    self._commit(sample, written, done)
                    progress.update(sample.ok)
                    if done % self.batch_size == 0 or done == todo_count:
                        elapsed = time.perf_counter() - processing
                        self.logger.log_metrics({"images_per_s": done / max(elapsed, 1e-9),
                                                 "done": self._done, "failed": self._failed}, step=done)
            finished = stop.received is None  # every sample of the todo list went through
            exit_code, exit_reason = exit_status(self._done, self._failed, todo_count, self.max_failure_rate,
                                                 stop.received)
        except tuple(JOB_ERRORS) as err:  # e.g. missing model weights at setup, disk full, a worker killed
            exit_code, exit_reason = exit_code_of(err), str(err)
            raise
        except KeyboardInterrupt:  # a second Ctrl-C (the handler gave SIGINT back): the process ends 130
            exit_code = 128 + int(signal.SIGINT)
            exit_reason = "aborted by a second SIGINT; rerun the same command to resume"
            raise
        finally:
            stop.restore()
            self._samples_log.close()
            self._failures_log.close()
            now = time.perf_counter()
            summary = self._summary(len(shard), skipped, now - started, now - processing,
                                    time.process_time() - processing_cpu, exit_code, config)
            summary["exit_reason"] = exit_reason
            try:
                closing = self._close_writers(summary, finished)  # first: closing can fail (disk full)
                self._write_run_files(summary)  # so metadata.json's exit_code is the process's
                if closing is not None and sys.exc_info()[1] is None:  # else the first error propagates
                    raise closing
            finally:
                self.logger.finish(summary, summary["exit_code"])  # every job's end, even a failed one
        return summary

    def _write_run_files(self, summary: dict[str, Any]) -> None:
        """metadata.json (and data=csv's table). Failing here is the output location's fault: the
        summary handed to the logger says so."""
        try:
            if hasattr(self.source, "write_outputs"):
                self._write_source_outputs()
            atomic_write_json(self.run_dir / "metadata.json", summary)
        except OSError as err:
            output_error = as_output_error(err)
            if output_error is None:
                raise
            summary["exit_code"], summary["exit_reason"] = EXIT_OUTPUT_ERROR, str(output_error)
            raise output_error from err

    def _write_source_outputs(self) -> None:
        """``data=csv``: the input table with each row's output image, from samples.jsonl: the
        composite in the format its sample was written in (empty where none)."""
        folder = next((w for w in self.writers if hasattr(w, "output_path")), None)
        suffixes: list[str] = [""]
        code = bytearray(self.source.total)  # per index: position in ``suffixes`` (0: no output)
        for record in read_jsonl(self.samples_path) if folder else ():
            index, composite = record.get("index"), record.get("composite_image")
            if isinstance(index, int) and 0 <= index < len(code) and isinstance(composite, str):
                suffix = Path(composite).suffix
                if suffix not in suffixes:
                    suffixes.append(suffix)
                code[index] = suffixes.index(suffix)

        def output_of(index: int) -> str | None:
            if not code[index]:
                return None
            return os.path.abspath(folder.output_path(self.source.id_of(index), suffixes[code[index]]))

        self.source.write_outputs(self.run_dir, output_of)

    def _close_writers(self, summary: dict[str, Any], finished: bool) -> OutputError | None:
        """Close the writers (a job that did not finish tells them first: tar/parquet drop their
        partial shard). An output error while closing is recorded in the summary and returned,
        to be raised once metadata.json says so."""
        try:
            for writer in self.writers:
                if not finished and hasattr(writer, "stopped"):
                    writer.stopped()
                writer.close()
        except (OSError, OutputError) as err:
            output_error = as_output_error(err)
            if output_error is None:
                raise
            if summary["exit_code"] != EXIT_OUTPUT_ERROR:  # an earlier output error is the one to report
                summary["exit_code"], summary["exit_reason"] = EXIT_OUTPUT_ERROR, str(output_error)
            return output_error
        return None

    def _summary(self, total, skipped, elapsed, processing_s, process_cpu_s, exit_code, config) -> dict[str, Any]:
        """The bounded run summary (metadata.json): its size does not grow with the samples."""
        processed = self._done + self._failed
        return {
            "run_dir": str(self.run_dir),
            "total": total,  # this shard's inputs
            "complete": skipped + self._done,  # of them, complete in the run directory now
            "done": self._done,  # by this invocation
            "skipped_complete": skipped,
            "failed": self._failed,
            "exit_code": exit_code,
            "elapsed_s": round(elapsed, 3),
            "processing_s": round(processing_s, 3),  # elapsed less setup: what images_per_s divides by
            "images_per_s": round(processed / processing_s, 3) if processing_s > 0 else None,
            # CPU time of this process meanwhile, all its threads: with workers=processes the
            # scheduler, model lanes and records only, which one core must keep up with
            "process_cpu_s": round(process_cpu_s, 3),
            "stage_ms": {k: v.summary() for k, v in self._timings.items()},
            "samples_file": self.samples_path.name,  # one record per complete sample
            "failures_file": self.failures_path.name,
            "manifest_file": self.manifest_path.name,
            "failures": self._first_failures,  # the first few; every one is in failures_file
            "shard": {"index": getattr(self.source, "shard_index", 0), "num_shards": getattr(self.source, "num_shards", 1)},
            "config": config or {},
        }


# Resume's threads at most: stats in flight at once (network file systems answer slowly). More
# threads than cores cost CPU time waiting for the GIL (on 2 busy cores, 8 threads took 1.5-2x as
# long as 1 or 2 over 100,000 records; python -m synth.bench memory --resume).
_RESUME_THREADS = 8
_RESUME_BLOCK_BYTES = 1 << 20  # of samples.jsonl per task: about 300 records
_RESUME_PROCESSES_FROM_BYTES = 64 << 20  # (about 18,000 records) below it, starting processes costs more than it saves


def _resume_results(checked: Iterator[Any]) -> Iterator[Any]:
    """``checked``, with a dead checker process as one line (WorkerLost), not a traceback."""
    try:
        yield from checked
    except BrokenProcessPool:
        raise WorkerLost("a worker process of the resume check died (killed by the system: out of "
                         "memory?); lower num_workers or use workers=threads") from None


def _check_records(writers: Sequence[Any], path: Path, block: tuple[int, int]) -> list[tuple[int, Any, Any, Any, Any]]:
    """Resume's check of one block of samples.jsonl (``jsonl_blocks``), in a worker thread or
    process: per line ``(offset, index, image_id, source, complete)``, complete None where the
    line is not a JSON object."""
    out: list[tuple[int, Any, Any, Any, Any]] = []
    for offset, record in read_jsonl_block(path, *block):
        if record is None:
            out.append((offset, None, None, None, None))
        else:
            out.append((offset, record.get("index"), record.get("image_id"), record.get("source"),
                        all(w.has(record) for w in writers)))
    return out
