"""``workers=processes``: the CPU segments in worker processes give the same job as threads.

Byte-identical outputs (folder, tar, parquet) threads vs processes, with and without a device
segment between CPU segments; a stage that raises in a worker process fails only its sample;
Ctrl-C (SIGINT to the whole process group) finishes the samples in flight and exits 130; the
images of a finished sample come back only for the samples the logger logs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from synth.errors import ConfigError
from synth.sample import Sample
from synth.schedule import Pipeline, worker_kind
from synth.stages.albedo import Retinex
from tests.scale_helpers import assert_same_results, make_inputs, result_files
from tests.guarantee_stages import GatedJob
from tests.test_guarantees import photos, start_gated_job
from tests.test_schedule import runner_for

REPO = Path(__file__).resolve().parents[1]


class FailsOnTwo(Retinex):
    """Retinex albedo that raises for the sample of index 2 (in whichever worker runs it)."""

    def process_sample(self, sample: Sample) -> None:
        if sample.index == 2:
            raise ValueError("bad pixels in a worker process")
        super().process_sample(sample)


def test_outputs_are_byte_identical_with_threads_and_processes(tmp_path):
    inputs = make_inputs(tmp_path / "in", 6)
    runs = {}
    for kind, on_device in [("threads", ()), ("processes", ()), ("processes", ("segmentation",))]:
        run_dir = tmp_path / f"run-{kind}-{len(on_device)}"
        summary = runner_for(inputs, run_dir, f"workers={kind}", "num_workers=2", "batch_size=2",
                             "writers=[webdataset,hf]", "max_failure_rate=1.0", on_device=on_device).run()
        assert summary["done"] >= 4 and summary["done"] + summary["failed"] == 6  # one input has no subject
        assert set(summary["stage_ms"]) >= {"segmentation", "albedo", "shadow", "write"}  # timings came back
        runs[run_dir] = summary
    reference, *others = runs
    shards = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.suffix in (".tar", ".parquet"))
    assert len(shards) == 2
    for run_dir in others:
        assert_same_results(result_files(run_dir), result_files(reference))
        for name in shards:
            assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name


def test_a_stage_that_raises_in_a_worker_process_fails_only_its_sample(tmp_path):
    inputs = make_inputs(tmp_path / "in", 3)
    run_dir = tmp_path / "run"
    summary = runner_for(inputs, run_dir, "workers=processes", "num_workers=2",
                         "albedo._target_=tests.test_workers.FailsOnTwo", "max_failure_rate=1.0").run()
    assert summary["done"] == 2 and summary["failed"] == 1
    assert summary["failures"][0]["stage"] == "albedo" and "bad pixels in a worker process" in summary["failures"][0]["error"]
    assert not list(run_dir.rglob("000002_*"))  # the failed sample left no files
    assert len(list((run_dir / "outputs").glob("*_metadata.json"))) == 2


class BurnsCpu(Retinex):
    """Retinex albedo that first spins for 0.3 s of its thread's CPU time."""

    def process_sample(self, sample: Sample) -> None:
        start = time.thread_time()
        while time.thread_time() - start < 0.3:
            pass
        super().process_sample(sample)


def test_process_cpu_s_counts_the_job_process_and_not_its_worker_processes(tmp_path):
    """metadata.json's process_cpu_s: with threads the stages' CPU time is the job process's, with
    processes it is the workers' (CPU time, not wall time: a loaded machine does not change it)."""
    inputs = make_inputs(tmp_path / "in", 4)
    cpu = {}
    for kind in ("threads", "processes"):
        summary = runner_for(inputs, tmp_path / kind, f"workers={kind}", "num_workers=2", "max_failure_rate=1.0",
                             "albedo._target_=tests.test_workers.BurnsCpu").run()
        assert summary["done"] >= 3
        cpu[kind] = summary["process_cpu_s"]
    assert cpu["threads"] >= 0.3 * 3
    assert cpu["processes"] < 0.3 * 3 / 2


def test_workers_is_validated_and_auto_picks_processes_on_many_cores():
    with pytest.raises(ConfigError, match=r"^workers=fork: use auto, threads or processes"):
        worker_kind("fork", 4)
    assert worker_kind("auto", 2) == "threads" and worker_kind("auto", 16) == "processes"
    assert worker_kind("threads", 16) == "threads" and worker_kind("processes", 1) == "processes"


def load_item(index: int) -> Sample:
    sample = Sample(index=index, id=f"{index:06d}", source=str(index), seed=0)
    sample.image = np.full((4, 4, 3), index, np.uint8)
    return sample


def write_nothing(sample: Sample) -> dict:
    return {"index": sample.index, "pid": os.getpid()}


def logged(index: int) -> bool:
    return index % 3 == 0


def load_and_warn(index: int) -> Sample:
    logging.getLogger("synth").warning("input %d: odd EXIF orientation, ignored", index)
    return load_item(index)


def test_log_records_of_worker_processes_reach_the_main_process_log(caplog):
    with caplog.at_level(logging.INFO, logger="synth"):
        with Pipeline([], load_and_warn, write_nothing, batch_size=1, num_workers=2, workers="processes") as pipeline:
            assert len(list(pipeline.run(range(3)))) == 3
    messages = sorted(r.getMessage() for r in caplog.records if r.name == "synth")
    assert messages == [f"input {i}: odd EXIF orientation, ignored" for i in range(3)]
    assert all(r.process != os.getpid() for r in caplog.records if r.name == "synth")


def test_a_finished_sample_brings_its_images_back_only_when_the_logger_logs_it():
    with Pipeline([], load_item, write_nothing, batch_size=1, num_workers=2, workers="processes",
                  keep_images=logged) as pipeline:
        results = [(sample, written.result()) for sample, written in pipeline.run(range(7))]
    assert [s.index for s, _ in results] == list(range(7))  # in input order
    assert [s.image is not None for s, _ in results] == [logged(i) for i in range(7)]
    assert all(record["pid"] != os.getpid() for _, record in results)  # written in worker processes


def start_job_with_processes(tmp_path: Path, count: int) -> GatedJob:
    """A workers=processes job (2 workers) in its own process group whose captioning holds every
    sample at a closed gate; returns once both worker processes hold one (both have started:
    they ignore SIGINT from then on)."""
    return start_gated_job(tmp_path, count, ("num_workers=2", "workers=processes"), held=2, new_session=True)


@pytest.mark.slow
def test_ctrl_c_with_worker_processes_finishes_the_samples_in_flight_and_exits_130(tmp_path):
    """SIGINT to the whole process group, as Ctrl-C in a terminal sends it: the workers ignore it,
    the main process lets the samples in flight finish, writes the run files and exits 130."""
    job = start_job_with_processes(tmp_path, 20)
    job.stop(signal.SIGINT)
    job.open_gate()  # the samples in flight finish only after the stop, whatever the machine's speed
    out, err = job.communicate()
    assert job.proc.returncode == 130, out + err
    summary = json.loads((job.run_dir / "metadata.json").read_text())
    assert summary["exit_reason"].startswith("interrupted by SIGINT")
    assert 2 <= summary["done"] < 20 and summary["failed"] == 0  # in flight: finished, not failed
    assert summary["done"] == len(job.held())
    assert len(list((job.run_dir / "outputs").glob("*_metadata.json"))) == summary["done"]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not [p for p in job.run_dir.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


@pytest.mark.slow
def test_a_second_ctrl_c_with_worker_processes_aborts_without_waiting_for_them(tmp_path):
    """The gate is never opened (and the workers ignore SIGTERM): only an abort that kills the
    workers ends the job, and the pipes it shares with them, within the timeout."""
    job = start_job_with_processes(tmp_path, 3)
    job.stop(signal.SIGINT)  # the first handler has run (it restored the previous one)
    job.send(signal.SIGINT)
    job.communicate(timeout_s=60)
    assert job.proc.returncode != 0
    assert not list((job.run_dir / "outputs").glob("*_metadata.json"))


@pytest.mark.slow
def test_ctrl_c_while_the_worker_processes_start_stops_the_job_with_130(tmp_path):
    """Ctrl-C to the process group while both worker processes are still starting (unpickling
    their stages): they must not die of it (they would, before they set their handlers, were the
    signals not blocked in them from their start); the job stops as on any Ctrl-C."""
    photos(tmp_path / "in", 4, h=32, w=40)
    job = GatedJob(tmp_path, tmp_path / "run", "data=folder", f"data.path={tmp_path / 'in'}", "batch_size=1",
                   "num_workers=2", "workers=processes", gate_from=100, new_session=True, stage="SlowToStart")
    job.wait_until_held(2)  # "starting-{pid}": no sample is held (gate_from=100)
    job.stop(signal.SIGINT)
    job.open_gate()
    out, err = job.communicate()
    assert job.proc.returncode == 130, out + err
    summary = json.loads((job.run_dir / "metadata.json").read_text())
    assert summary["exit_reason"].startswith("interrupted by SIGINT") and summary["failed"] == 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_worker_processes_get_the_source_without_its_listing(tmp_path):
    """A million-path listing is not copied into every worker process: the pickled source decodes
    an item as the original does, without its path list."""
    import pickle

    from synth.data import ImageFolder

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"p{i}.png"), np.full((24, 32, 3), 40 * i, np.uint8))
    source = ImageFolder(path=str(tmp_path))
    item = source.item(2)
    blob = pickle.dumps(source)
    assert b"p1.png" not in blob
    copy = pickle.loads(blob)
    assert np.array_equal(copy.load(item, 0).image, source.load(item, 0).image)
    assert source.paths == ["p0.png", "p1.png", "p2.png"]  # the original keeps its listing
