"""Streams samples through the stages, with decoding and writing in threads beside them."""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from synth.params import check_seed, setting
from synth.data import ImageFolder
from synth.errors import ConfigError, OutputError
from synth.faults import (EXIT_OUTPUT_ERROR, FailureLog, StopSignals, as_output_error, check_max_failure_rate,
                          check_writable, exit_status, printable)
from synth.files import atomic_write_json
from synth.loggers import NullLogger
from synth.progress import Progress
from synth.sample import Sample
from synth.stages.base import Stage
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


def _batches(samples: Iterable[Sample], size: int) -> Iterable[list[Sample]]:
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Runner:
    """One job: this shard's samples through ``stages``, then to every writer and the logger."""

    def __init__(self, source: ImageFolder, stages: Sequence[Stage], writers: Sequence[Any],
                 logger: Any = None, run_dir: str | Path = ".", seed: int = 0, batch_size: int = 4,
                 num_workers: int = 2, device: str = "auto", resume: bool = True,
                 progress_every_s: float = 30.0, max_failure_rate: float = 0.1):
        self.batch_size = setting("batch_size", batch_size, 1, integer=True)
        self.num_workers = setting("num_workers", num_workers, 1, integer=True)
        self.seed = check_seed(seed)
        self.progress_every_s = setting("progress_every_s", progress_every_s, 0.0)
        check_chain(stages)
        self.source, self.stages, self.writers = source, list(stages), list(writers)
        self.logger = logger or NullLogger()
        self.run_dir, self.device, self.resume = Path(run_dir), device, resume
        self.max_failure_rate = check_max_failure_rate(max_failure_rate)
        self._failure_log: FailureLog | None = None

    # -- helpers --------------------------------------------------------------------------------
    def _is_complete(self, sample_id: str) -> bool:
        """Complete when every writer that can tell has it (a writer without ``is_complete`` cannot)."""
        checks = [w.is_complete for w in self.writers if hasattr(w, "is_complete")]
        return bool(checks) and len(checks) == len(self.writers) and all(c(sample_id) for c in checks)

    def _run_stage(self, stage: Stage, batch: list[Sample]) -> None:
        live = [s for s in batch if s.ok]
        if not live:
            return
        start = time.perf_counter()
        try:
            stage.process(live)
        except Exception:  # noqa: BLE001 - isolate the bad sample by retrying one at a time
            for sample in live:
                try:
                    stage.process([sample])
                except Exception as err:  # noqa: BLE001
                    sample.fail(stage.name, err)
        per_sample = 1000.0 * (time.perf_counter() - start) / len(live)
        for sample in live:
            sample.timings_ms[stage.name] = per_sample

    def _write(self, sample: Sample) -> dict[str, Any]:
        """Every writer, in a worker thread; each image is encoded once for all of them."""
        start = time.perf_counter()
        images = EncodedImages(sample)
        record: dict[str, Any] | None = None
        done: list[Any] = []
        try:
            for writer in self.writers:
                if self.resume and hasattr(writer, "is_complete") and writer.is_complete(sample.id):
                    continue  # resumed for another writer: this one has it already
                written = writer.write(sample, images)
                done.append(writer)
                record = record or written  # the first writer's record (the folder's has file paths)
        except BaseException:
            for writer in done:  # a failed sample leaves no files, whichever writer failed
                if hasattr(writer, "discard"):
                    writer.discard(sample.id)
            raise
        sample.timings_ms["write"] = 1000.0 * (time.perf_counter() - start)
        return record or sample_record(sample, {})

    def _commit(self, sample: Sample) -> None:
        """In input order, on the main thread: writers whose output order matters (tar, parquet)."""
        for writer in self.writers:
            if hasattr(writer, "commit"):
                writer.commit(sample)

    def _write_source_outputs(self, items: Sequence[Any]) -> None:
        """``data=csv``: the input table with each row's output image (empty where none)."""
        folder = next((w for w in self.writers if hasattr(w, "output_path")), None)
        outputs = {item.id: folder.output_path(item.id) if folder else None for item in items}
        self.source.write_outputs(self.run_dir, outputs)

    # -- the job --------------------------------------------------------------------------------
    def run(self, config: dict[str, Any] | None = None) -> dict[str, Any]:
        started = processing = time.perf_counter()
        check_writable(self.run_dir)  # an unusable output location: one error before any work
        for writer in self.writers:
            writer.open(self.run_dir, resume=self.resume, shard_index=getattr(self.source, "shard_index", 0))
        items = self.source.items()
        todo = [it for it in items if not (self.resume and self._is_complete(it.id))]
        skipped = len(items) - len(todo)
        if skipped:
            log.info("resume: %d of %d samples already complete in %s", skipped, len(items), self.run_dir)
        log.info("%d samples to process into %s", len(todo), self.run_dir)
        exit_code, exit_reason = 1, "stopped by an error (see the log above)"
        self._failure_log = FailureLog(self.run_dir / "failures.jsonl")
        stop = StopSignals().install()  # SIGINT/SIGTERM: finish what is in flight, then stop
        records: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        timings: dict[str, list[float]] = {}
        try:
            self.logger.start(config or {}, str(self.run_dir))  # in here: a failed start still ends the job cleanly
            for stage in self.stages:
                stage.setup(self.device)
            processing = time.perf_counter()  # throughput excludes model loading and logger start-up
            with ThreadPoolExecutor(self.num_workers, thread_name_prefix="decode") as decoders, \
                    ThreadPoolExecutor(self.num_workers, thread_name_prefix="write") as encoders, \
                    Progress(len(todo), self.progress_every_s) as progress:
                pending: deque[tuple[Sample, Future | None]] = deque()

                def collect(keep: int) -> None:
                    """Finish samples in order: all that are done, and more until ``keep`` remain."""
                    while pending and (len(pending) > keep or pending[0][1] is None or pending[0][1].done()):
                        sample, future = pending.popleft()
                        if future is not None:
                            try:
                                record = future.result()
                            except Exception as err:  # noqa: BLE001
                                _write_failed(sample, err)
                            try:
                                self._commit(sample)  # a failed sample is dropped here
                            except Exception as err:  # noqa: BLE001
                                _write_failed(sample, err)
                            if sample.ok:
                                records.append(record)
                        self._finish(sample, failures, timings, len(records) + len(failures))
                        progress.update(sample.ok)

                prefetch = max(2 * self.batch_size, 2 * self.num_workers)

                def decoded() -> Iterable[Sample]:
                    window: deque[Future] = deque()
                    for item in todo:
                        if stop.requested:
                            break
                        window.append(decoders.submit(self.source.load, item, self.seed))
                        if len(window) >= prefetch:
                            yield window.popleft().result()
                    while window and not stop.requested:
                        yield window.popleft().result()
                    for future in window:  # stopping: decoded but not started samples are dropped
                        future.cancel()

                for batch in _batches(decoded(), self.batch_size):
                    for stage in self.stages:
                        self._run_stage(stage, batch)
                    for sample in batch:
                        pending.append((sample, encoders.submit(self._write, sample) if sample.ok else None))
                    collect(keep=prefetch)
                    done = len(records) + len(failures)
                    elapsed = time.perf_counter() - processing
                    self.logger.log_metrics({"images_per_s": done / max(elapsed, 1e-9),
                                             "done": len(records), "failed": len(failures)}, step=done)
                collect(keep=0)
            exit_code, exit_reason = exit_status(len(records), len(failures), len(todo), self.max_failure_rate,
                                                 stop.received)
        except OutputError as err:
            exit_code, exit_reason = EXIT_OUTPUT_ERROR, str(err)
            raise
        finally:
            stop.restore()
            self._failure_log.close()
            now = time.perf_counter()
            summary = self._summary(items, skipped, records, failures, timings, now - started,
                                    now - processing, exit_code)
            summary["exit_reason"] = exit_reason
            try:
                self._write_run_files(items, summary)
            finally:
                self._close(summary)
        return summary

    def _write_run_files(self, items: Sequence[Any], summary: dict[str, Any]) -> None:
        """metadata.json (and data=csv's table). Failing here is the output location's fault: the
        summary handed to the logger says so."""
        try:
            if hasattr(self.source, "write_outputs"):
                self._write_source_outputs(items)
            atomic_write_json(self.run_dir / "metadata.json", summary)
        except OSError as err:
            output_error = as_output_error(err)
            if output_error is None:
                raise
            summary["exit_code"], summary["exit_reason"] = EXIT_OUTPUT_ERROR, str(output_error)
            raise output_error from err

    def _close(self, summary: dict[str, Any]) -> None:
        """Close the writers, then finish the logger even if one of them fails, so that the
        logger hears the end of every job (a W&B run left open would look still running)."""
        try:
            for writer in self.writers:
                writer.close()
        finally:
            self.logger.finish(summary, summary["exit_code"])

    def _finish(self, sample: Sample, failures: list, timings: dict, step: int) -> None:
        if sample.ok:
            for key, ms in sample.timings_ms.items():
                timings.setdefault(key, []).append(ms)
        else:
            failures.append({"id": sample.id, "path": sample.source, "stage": sample.error_stage,
                             "error": sample.error})
            self._failure_log.write(failures[-1])
            log.warning("failed %s (%s) at %s: %s", sample.id, printable(sample.source), sample.error_stage,
                        printable(sample.error))
        self.logger.log_sample(sample, step)

    def _summary(self, items, skipped, records, failures, timings, elapsed, processing_s,
                 exit_code) -> dict[str, Any]:
        processed = len(records) + len(failures)
        return {
            "run_dir": str(self.run_dir),
            "total": len(items),
            "done": len(records),
            "skipped_complete": skipped,
            "failed": len(failures),
            "exit_code": exit_code,
            "elapsed_s": round(elapsed, 3),
            "processing_s": round(processing_s, 3),  # elapsed less setup: what images_per_s divides by
            "images_per_s": round(processed / processing_s, 3) if processing_s > 0 else None,
            "stage_ms": {k: {"median": round(float(np.median(v)), 2), "mean": round(float(np.mean(v)), 2)}
                         for k, v in timings.items()},
            "failures": failures,
            "samples": sorted(records, key=lambda r: r.get("index", 0)),
        }

