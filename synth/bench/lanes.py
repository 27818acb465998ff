"""Two model stages at once: ``python -m synth.bench lanes``.

The scheduler alone (:class:`synth.schedule.Pipeline`) with two stand-in model stages, a
segmentation and a captioning, that hold the device for a fixed time per image (a sleep: it
releases the GIL as a CUDA call does) around a CPU stage (also a sleep, so the figures do not
depend on this machine's cores). Two ways, interleaved, in the same command:

* ``lanes``: two device segments, each in a thread of its own, as a job with
  ``segmentation=sam3 captioning=blip`` runs now;
* ``serial``: the same two stages as one device segment, one after the other on one thread, as
  jobs ran before the lanes (the baseline).

Samples carry SIZE x SIZE images (photo, mask, albedo, degraded layer, composite), so with
``--workers processes`` the transfers between the worker processes and the device segments cost
what they cost in a job. Prints the median images/s of each, their ratio, and the bound: the
slower model alone. For example::

    python -m synth.bench lanes --device-ms 20,20 --cpu-ms 40 --workers threads,processes
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from synth.sample import Sample
from synth.schedule import Pipeline, usable_cores
from synth.stages.base import Stage
from synth.bench import at_least, numbers


class Model(Stage):
    """A stand-in model stage: holds the device ``ms`` per image, one call per batch."""

    batched_on_device = True

    def __init__(self, name: str, ms: float, provides: str):
        self.name, self.ms, self.field = name, ms, provides

    def process(self, batch: list[Sample]) -> None:
        time.sleep(self.ms * len(batch) / 1000)
        for sample in batch:
            if self.field == "mask":
                sample.mask = np.full(sample.image.shape[:2], 0.5, np.float32)
            else:
                sample.caption = f"a photo, {sample.index}"


class BothModels(Stage):
    """The two stand-ins as one stage: the serial baseline."""

    batched_on_device = True
    name = "models"

    def __init__(self, first: Model, second: Model):
        self.first, self.second = first, second

    def process(self, batch: list[Sample]) -> None:
        self.first.process(batch)
        self.second.process(batch)


class CpuStages(Stage):
    """Stand-in for albedo, shadow and recombine: ``ms`` per image, and the layers they make."""

    name = "cpu"
    requires = ("image",)

    def __init__(self, ms: float):
        self.ms = ms

    def process_sample(self, sample: Sample) -> None:
        time.sleep(self.ms / 1000)
        sample.albedo = sample.image.copy()
        sample.degraded = sample.image.copy()
        sample.composite = sample.image.copy()


class Loader:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, index: int) -> Sample:
        sample = Sample(index=index, id=f"{index:06d}", source=f"photo{index}", seed=0)
        sample.image = np.full((self.size, self.size, 3), index % 251, np.uint8)
        return sample


def write(sample: Sample) -> dict:
    return {"id": sample.id, "caption": sample.caption}


def run(stages: list[Stage], args: argparse.Namespace, workers: str) -> tuple[float, float]:
    """images/s, and this process's CPU ms per image (with processes: the scheduler and the lanes)."""
    start, cpu = time.perf_counter(), time.process_time()
    with Pipeline(stages, Loader(args.size), write, args.batch_size, args.num_workers, workers=workers) as pipeline:
        done = sum(1 for _ in pipeline.run(range(args.count)))
    return done / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / done


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m synth.bench lanes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=at_least(1), default=96, help="images per run")
    parser.add_argument("--size", type=at_least(16), default=512, help="image side in pixels")
    parser.add_argument("--batch-size", type=at_least(1), default=8)
    parser.add_argument("--device-ms", type=numbers(float, 0, 2), default="20,20",
                        help="device ms per image of the two models")
    parser.add_argument("--cpu-ms", type=numbers(float, 0, 1), default="40", help="CPU ms per image between them")
    parser.add_argument("--num-workers", type=at_least(1), default=usable_cores())
    parser.add_argument("--workers", default="threads", help="threads, processes or both, comma-separated")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="runs of each; the median is reported")
    args = parser.parse_args(argv)
    first_ms, second_ms = args.device_ms
    (cpu_ms,) = args.cpu_ms
    print(f"synth lanes benchmark: {args.count} images of {args.size}x{args.size}, batch {args.batch_size}, "
          f"models {first_ms:g} + {second_ms:g} ms per image, CPU {cpu_ms:g} ms per image on "
          f"{args.num_workers} workers")
    slowest_ms = max(first_ms, second_ms, cpu_ms / args.num_workers)  # 0: no bound but the overheads
    for workers in args.workers.split(","):
        rates: dict[str, list[float]] = {"lanes": [], "serial": []}
        main_ms: list[float] = []  # of the lanes runs
        for _ in range(args.repeats):  # interleaved: load changes hit both alike
            first, second = Model("segmentation", first_ms, "mask"), Model("captioning", second_ms, "caption")
            rate, ms = run([first, CpuStages(cpu_ms), second], args, workers)
            rates["lanes"].append(rate)
            main_ms.append(ms)
            rates["serial"].append(run([BothModels(first, second), CpuStages(cpu_ms)], args, workers)[0])
        lanes, serial = (statistics.median(rates[k]) for k in ("lanes", "serial"))
        print(f"workers={workers}: lanes {lanes:.2f} images/s, serial {serial:.2f} images/s (medians of "
              f"{args.repeats}); lanes / serial = {lanes / serial:.2f}x; "
              + (f"bound {1000 / slowest_ms:.2f} images/s, lanes reach {lanes * slowest_ms / 1000:.0%} of it; "
                 if slowest_ms else "no bound (the stand-ins take no time); ")
              + f"this process's CPU with lanes: {statistics.median(main_ms):.1f} ms per image")
