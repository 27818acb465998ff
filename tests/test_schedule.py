"""The pipelined scheduler (synth.schedule): segments, order, overlap, failures, stopping,
``num_workers=auto`` and the GPU each shard chooses.

Stand-in stages sleep instead of computing: ``time.sleep`` releases the GIL like a model on
the device or numpy/OpenCV work does, so the overlap test shows the pipeline's structure
(device batches on the main thread beside CPU work in the workers), not the machine's speed.
"""

from __future__ import annotations

import _thread
import contextlib
import os
from collections import Counter
import signal
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from synth.app import build_runner
from synth.errors import ConfigError
from synth.faults import StopSignals
from synth.sample import IMAGE_FIELDS, Sample
from synth.schedule import Pipeline, plan, worker_count
from synth.stages.base import Stage, resolve_device
from tests.conftest import compose_config
from tests.scale_helpers import assert_same_results, make_inputs, result_files


class CpuSleep(Stage):
    name = "albedo"

    def __init__(self, seconds: float = 0.0, fail_index: int | None = None):
        self.seconds, self.fail_index = seconds, fail_index

    def process_sample(self, sample: Sample) -> None:
        time.sleep(self.seconds(sample.index) if callable(self.seconds) else self.seconds)
        if sample.index == self.fail_index:
            raise ValueError("bad pixels")
        sample.caption = f"cpu {sample.index}"


class DeviceSleep(Stage):
    """A model stand-in: one call per batch, on the main thread, that sleeps per sample."""

    name = "segmentation"
    batched_on_device = True

    def __init__(self, seconds_per_sample: float = 0.0):
        self.seconds, self.batches, self.threads = seconds_per_sample, [], set()

    def process(self, batch: list[Sample]) -> None:
        self.batches.append([s.index for s in batch])
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds * len(batch))
        for sample in batch:
            sample.params["device"] = {"batch": len(self.batches) - 1}


def load(index: int) -> Sample:
    return Sample(index=index, id=f"{index:06d}", source=f"img{index}.png", seed=0)


def run(stages, count: int, batch_size: int = 2, num_workers: int = 2, stop=None, written=None):
    """Every (sample, record) the pipeline yields, in yield order."""
    written = [] if written is None else written

    def write(sample: Sample) -> dict:
        written.append(sample.index)
        return {"id": sample.id}

    with Pipeline(stages, load, write, batch_size=batch_size, num_workers=num_workers, stop=stop) as pipeline:
        return [(sample, future and future.result()) for sample, future in pipeline.run(range(count))]


def test_plan_groups_cpu_runs_and_device_stages_with_decode_first_and_write_last():
    cpu, dev = CpuSleep(), DeviceSleep()
    assert [(s.on_device, len(s.stages)) for s in plan([cpu, cpu])] == [(False, 2)]
    assert [(s.on_device, len(s.stages)) for s in plan([dev, cpu, cpu, dev])] == \
        [(False, 0), (True, 1), (False, 2), (True, 1), (False, 0)]


def test_samples_come_back_in_input_order_whatever_order_the_workers_finish():
    slow_evens = CpuSleep(lambda index: 0.03 if index % 2 == 0 else 0.0)
    results = run([slow_evens, DeviceSleep(), slow_evens], count=11, batch_size=3, num_workers=3)
    assert [s.index for s, _ in results] == list(range(11))
    assert all(record == {"id": s.id} for s, record in results)


def test_device_batches_are_fixed_runs_of_batch_size_on_a_thread_of_their_own():
    device = DeviceSleep()
    run([CpuSleep(lambda index: 0.02 * (index % 3)), device], count=8, batch_size=3, num_workers=3)
    assert device.batches == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert len(device.threads) == 1 and device.threads != {"MainThread"}


def test_two_device_segments_overlap_and_each_runs_one_batch_at_a_time():
    """Two model stages (segmentation, captioning), each on a thread of its own: segmentation's
    second batch and captioning's first meet at a barrier, which they can pass only when both run
    at once (one after the other on one thread, the first to arrive waits for ever: its samples
    fail when the barrier's minute is up). No clock is read."""
    meet = threading.Barrier(2, timeout=60)

    class Meets(DeviceSleep):
        def __init__(self, name: str, batch: list[int]):
            super().__init__()
            self.name, self.batch, self.running, self.overlapped = name, batch, 0, False

        def process(self, batch: list[Sample]) -> None:
            self.running += 1
            self.overlapped |= self.running > 1
            if [s.index for s in batch] == self.batch:
                meet.wait()
            super().process(batch)
            self.running -= 1

    first, second = Meets("segmentation", [2, 3]), Meets("captioning", [0, 1])
    results = run([first, CpuSleep(), second], count=8, batch_size=2, num_workers=2)
    assert [s.index for s, _ in results] == list(range(8))
    assert all(s.ok for s, _ in results), [s.error for s, _ in results if not s.ok]
    assert first.batches == second.batches == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert not first.overlapped and not second.overlapped  # a stage is never called twice at once
    assert first.threads.isdisjoint(second.threads)


def test_a_device_stage_overlaps_with_the_cpu_stages():
    """The device stage's second batch and the CPU stage of sample 0 meet at a barrier, which they
    pass only when both run at once. No clock is read."""
    meet = threading.Barrier(2, timeout=60)

    class DeviceMeets(DeviceSleep):
        def process(self, batch: list[Sample]) -> None:
            if batch[0].index == 2:
                meet.wait()
            super().process(batch)

    class CpuMeets(CpuSleep):
        def process_sample(self, sample: Sample) -> None:
            if sample.index == 0:
                meet.wait()
            super().process_sample(sample)

    results = run([DeviceMeets(), CpuMeets()], count=6, batch_size=2, num_workers=2)
    assert [s.index for s, _ in results] == list(range(6))
    assert all(s.ok for s, _ in results), [s.error for s, _ in results if not s.ok]


def test_a_failing_sample_in_a_cpu_segment_fails_only_itself_and_is_not_written():
    written: list[int] = []
    results = run([DeviceSleep(), CpuSleep(fail_index=4)], count=7, batch_size=3, written=written)
    failed = [(s.index, s.error_stage, s.error) for s, _ in results if not s.ok]
    assert failed == [(4, "albedo", "ValueError: bad pixels")]
    assert sorted(written) == [0, 1, 2, 3, 5, 6]
    assert all(s.caption == f"cpu {s.index}" for s, _ in results if s.ok)
    assert [record for s, record in results if not s.ok] == [None]  # not handed to write


def test_sigint_mid_run_finishes_samples_in_flight_then_stops():
    stop = StopSignals().install()
    try:
        written: list[int] = []
        seen = []
        with Pipeline([DeviceSleep(0.01), CpuSleep(0.02)], load, lambda s: written.append(s.index),
                      batch_size=2, num_workers=2, stop=stop) as pipeline:
            for sample, future in pipeline.run(range(200)):
                assert future.result() is None
                seen.append(sample.index)
                if len(seen) == 3:
                    os.kill(os.getpid(), signal.SIGINT)  # the handler only asks to stop
    finally:
        stop.restore()
    assert stop.received == signal.SIGINT
    assert seen == list(range(len(seen))) and 3 <= len(seen) < 60  # in order, and it stopped early
    assert sorted(written) == seen  # what was in flight was finished and written; nothing else was


def test_num_workers_auto_is_the_usable_cores_and_bad_values_name_the_key():
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count(3) == 3
    for bad in ("many", 0, 1.5):
        with pytest.raises(ConfigError, match=r"^num_workers="):
            worker_count(bad)


@pytest.mark.parametrize("gpus, shard, expected", [(0, 3, "cpu"), (1, 3, "cuda"), (4, 0, "cuda:0"),
                                                   (4, 5, "cuda:1"), (8, 7, "cuda:7")])
def test_device_auto_puts_shard_k_on_gpu_k_mod_n(monkeypatch, gpus, shard, expected):
    cuda = SimpleNamespace(is_available=lambda: gpus > 0, device_count=lambda: gpus)
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))  # torch.cuda as on an n-GPU node
    assert resolve_device("auto", shard_index=shard) == expected
    assert resolve_device("cuda:2", shard_index=shard) == "cuda:2"  # an explicit device is kept


def test_a_write_error_reaches_the_caller_for_that_sample_only():
    def write(sample: Sample) -> dict:
        if sample.index == 2:
            raise OSError(28, "No space left on device")
        return {"id": sample.id}

    outcomes = []
    with Pipeline([CpuSleep()], load, write, batch_size=2, num_workers=2) as pipeline:
        for sample, written in pipeline.run(range(5)):
            try:
                outcomes.append(written.result()["id"])
            except OSError as err:
                outcomes.append(err.strerror)
    assert outcomes == ["000000", "000001", "No space left on device", "000003", "000004"]


def test_samples_in_flight_stay_within_the_window():
    """Memory stays flat: never more than ``window`` decoded samples that were not handed back."""
    in_flight, peak, lock = set(), [0], threading.Lock()

    def counting_load(index: int) -> Sample:
        with lock:
            in_flight.add(index)
            peak[0] = max(peak[0], len(in_flight))
        return load(index)

    with Pipeline([DeviceSleep(0.002), CpuSleep(0.002)], counting_load, lambda s: None,
                  batch_size=3, num_workers=2) as pipeline:
        for sample, _ in pipeline.run(range(60)):
            with lock:
                in_flight.discard(sample.index)
    assert pipeline.window == 2 * 2 + 3 * 3 and 3 <= peak[0] <= pipeline.window


# --- whole jobs through the runner ------------------------------------------------------------
def runner_for(inputs, run_dir, *overrides: str, on_device: tuple[str, ...] = ()):
    """A job over ``inputs`` as ``python -m synth`` builds it; the stages named in ``on_device``
    are scheduled like model stages (batched on the main thread) though they are weight-free."""
    cfg = compose_config("data=folder", f"data.path='{inputs}'", "logger=none", "writers=[webdataset]",
                         "segmentation.work_size=64", "segmentation.iterations=1", *overrides)  # grabcut, quickly
    runner = build_runner(cfg, run_dir)
    for stage in runner.stages:
        if stage.name in on_device:
            stage.batched_on_device = True
    return runner


def test_outputs_are_byte_identical_for_any_num_workers_batch_size_and_segments(tmp_path):
    inputs = make_inputs(tmp_path / "in", 7)
    variants = [("1", 1, ()), ("auto", 3, ("segmentation",)), ("3", 2, ("segmentation", "recombine"))]
    runs = []
    for workers, batch, on_device in variants:
        run_dir = tmp_path / f"run-{workers}-{batch}-{len(on_device)}"
        summary = runner_for(inputs, run_dir, f"num_workers={workers}", f"batch_size={batch}",
                             on_device=on_device).run()
        assert summary["done"] + summary["failed"] == 7
        runs.append(run_dir)
    reference = result_files(runs[0])
    shards = sorted(p.name for p in (runs[0] / "webdataset").glob("*.tar"))
    assert shards
    for run_dir in runs[1:]:
        assert_same_results(result_files(run_dir), reference)
        for name in shards:  # same samples in the same order: the same tar bytes
            assert (run_dir / "webdataset" / name).read_bytes() == (runs[0] / "webdataset" / name).read_bytes()


def test_a_job_with_model_stages_sets_them_up_on_gpu_shard_mod_n(tmp_path, monkeypatch):
    inputs = make_inputs(tmp_path / "in", 6)
    runner = runner_for(inputs, tmp_path / "run", "data.num_shards=8", "data.shard_index=5",
                        on_device=("segmentation",))  # (built first: the webdataset writer imports torch)
    cuda = SimpleNamespace(is_available=lambda: True, device_count=lambda: 4)
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))  # a node with 4 GPUs
    devices = []
    monkeypatch.setattr(runner.stages[0], "setup", devices.append)
    summary = runner.run()
    assert summary["done"] + summary["failed"] == 1  # input 5, the only one of shard 5 of 8
    assert devices == ["cuda:1"]


def test_an_abort_does_not_wait_for_the_sample_in_a_worker():
    """A second Ctrl-C (KeyboardInterrupt) leaves at once, while the sample is still in its worker
    thread, which ends with the process (here: when the test releases it)."""
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    class Holds(Stage):
        name = "albedo"

        def process_sample(self, sample: Sample) -> None:
            started.set()
            release.wait(60)
            finished.set()

    def second_ctrl_c() -> None:
        if started.wait(60):
            _thread.interrupt_main()  # as a second Ctrl-C does

    # Ctrl-C raises KeyboardInterrupt here even when the test runs with SIGINT ignored (in the background)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=second_ctrl_c, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            with Pipeline([Holds()], load, lambda s: None, batch_size=1, num_workers=1) as pipeline:
                for _ in pipeline.run(range(3)):
                    pass  # never reached: the first sample is held
        assert started.is_set() and not finished.is_set()  # left without waiting for it
    finally:
        signal.signal(signal.SIGINT, previous)
        release.set()


# --- worker processes: a sample stays in the process that decoded it ----------------------------
class AddsAlbedo(Stage):
    name = "albedo"

    def process_sample(self, sample: Sample) -> None:
        sample.albedo = np.full((4, 4, 3), sample.index, np.uint8)


class SeesWhatItReads(Stage):
    """A device stage that reads the image only: records which images it was given."""

    name = "segmentation"
    batched_on_device = True

    def process(self, batch: list[Sample]) -> None:
        for sample in batch:
            sample.params["seen"] = sorted(n for n in IMAGE_FIELDS if getattr(sample, n) is not None)
            sample.mask = np.full((4, 4), 0.5, np.float32)
            sample.foreground = sample.image  # as segmentation's set_mask does


class ChecksWhatItKept(Stage):
    name = "recombine"

    def process_sample(self, sample: Sample) -> None:
        sample.params["kept"] = sorted(n for n in IMAGE_FIELDS if getattr(sample, n) is not None)
        sample.params["aliased"] = sample.foreground is sample.image  # not a second copy from the device side
        sample.caption = f"albedo {sample.albedo[0, 0, 0]}, mask {sample.mask[0, 0]}"


def load_with_image(index: int) -> Sample:
    sample = load(index)
    sample.image = np.zeros((4, 4, 3), np.uint8)
    return sample


def record_of(sample: Sample) -> dict:
    return {"params": sample.params, "caption": sample.caption, "pid": os.getpid()}


def test_worker_processes_send_a_device_stage_only_the_images_it_reads_and_keep_the_rest():
    """The albedo made in a worker process does not travel to the device segment (which reads the
    image only), yet the next segment, in the same process, still has it beside the new mask."""
    with Pipeline([AddsAlbedo(), SeesWhatItReads(), ChecksWhatItKept()], load_with_image, record_of,
                  batch_size=2, num_workers=2, workers="processes") as pipeline:
        records = [(sample, future.result()) for sample, future in pipeline.run(range(6))]
    assert [sample.index for sample, _ in records] == list(range(6))
    assert sorted(Counter(record["pid"] for _, record in records).values()) == [3, 3]  # spread evenly
    for sample, record in records:
        assert record["pid"] != os.getpid()
        assert record["params"]["seen"] == ["image"]
        assert record["params"]["kept"] == ["albedo", "foreground", "image", "mask"]
        assert record["params"]["aliased"] is True
        assert record["caption"] == f"albedo {sample.index}, mask 0.5"
        assert sample.image is None and sample.albedo is None  # written: the images stayed in the worker


class RemembersTheImage(Stage):
    """A device stage (in the main process): keeps the image object it was given, by index."""

    batched_on_device = True

    def __init__(self, name: str):
        self.name, self.seen = name, {}

    def process(self, batch: list[Sample]) -> None:
        for sample in batch:
            self.seen[sample.index] = sample.image


class ReplacesOddImages(Stage):
    name = "albedo"

    def process_sample(self, sample: Sample) -> None:
        if sample.index % 2:
            sample.image = sample.image + 1  # a new array: the main process's copy is stale


def test_a_second_device_segment_gets_the_photo_the_main_process_holds_unless_it_changed():
    """SAM 3, then CPU stages in the worker, then BLIP: both read the photo, which crosses to the
    main process once; an image a CPU stage replaced in between crosses again."""
    first, second = RemembersTheImage("segmentation"), RemembersTheImage("captioning")
    with Pipeline([first, ReplacesOddImages(), second], load_with_image, record_of,
                  batch_size=2, num_workers=2, workers="processes") as pipeline:
        assert all(future.result() for _, future in pipeline.run(range(6)))
    for index in range(6):
        if index % 2:
            assert second.seen[index] is not first.seen[index] and (second.seen[index] == 1).all()
        else:
            assert second.seen[index] is first.seen[index]  # not sent again


def test_processes_with_alternating_device_segments_give_the_bytes_of_threads(tmp_path):
    """Every weight-free stage's ``reads`` is complete: scheduled as a device stage between CPU
    segments in worker processes, it gives the same outputs as with threads."""
    inputs = make_inputs(tmp_path / "in", 5)
    runs = []
    for kind, on_device in [("threads", ()), ("processes", ("segmentation", "shadow", "captioning")),
                            ("processes", ("albedo", "recombine"))]:
        run_dir = tmp_path / f"run-{kind}-{'-'.join(on_device)}"
        summary = runner_for(inputs, run_dir, f"workers={kind}", "num_workers=2", "batch_size=2",
                             "max_failure_rate=1.0", on_device=on_device).run()
        assert summary["done"] >= 3 and summary["done"] + summary["failed"] == 5
        runs.append(run_dir)
    for run_dir in runs[1:]:
        assert_same_results(result_files(run_dir), result_files(runs[0]))


def test_on_cuda_each_lane_launches_on_a_stream_of_its_own(monkeypatch):
    """With a stand-in ``torch`` (no GPU here): a device segment whose stage is on ``cuda:1`` gets one
    stream on that device, made to wait for the work queued before it (the models' set-up), and
    every batch runs inside it; a stage on the CPU gets none. This proves the calls, not CUDA."""
    calls = []

    class Stream:
        def __init__(self, device):
            calls.append(("stream", device))

        def wait_stream(self, other):
            calls.append(("wait", other))

    @contextlib.contextmanager
    def stream(chosen):
        calls.append(("enter", threading.current_thread().name))
        yield
        calls.append(("exit", threading.current_thread().name))

    cuda = SimpleNamespace(Stream=Stream, stream=stream, current_stream=lambda device: f"current {device}")
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    on_gpu, on_cpu = DeviceSleep(), DeviceSleep()
    on_gpu.device, on_cpu.device, on_cpu.name = "cuda:1", "cpu", "captioning"
    run([on_gpu, CpuSleep(), on_cpu], count=6, batch_size=2)
    assert calls[:2] == [("stream", "cuda:1"), ("wait", "current cuda:1")]
    assert [c for c in calls if c[0] == "stream"] == [("stream", "cuda:1")]  # one stream, for the GPU lane
    entered = [c for c in calls if c[0] == "enter"]
    assert len(entered) == 3 and {name for _, name in entered} == on_gpu.threads  # each batch, in its lane


def test_ordered_map_keeps_input_order_and_at_most_ahead_in_flight():
    """Resume's check and the listing's stats use it over any number of blocks: memory stays flat."""
    from concurrent.futures import ThreadPoolExecutor

    from synth.schedule import ordered_map

    submitted, handed = [], []

    def square(item: int) -> int:
        time.sleep(0.001 * (item % 3))  # finishing out of order
        return item * item

    def items():
        for item in range(40):
            assert len(submitted) - len(handed) < 5  # at most ahead=5 submitted and not handed back
            submitted.append(item)
            yield item

    with ThreadPoolExecutor(4) as pool:
        for result in ordered_map(pool, square, items(), ahead=5):
            handed.append(result)
    assert handed == [item * item for item in range(40)]
