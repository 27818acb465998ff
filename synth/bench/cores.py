"""How the weight-free pipeline scales with worker threads: ``python -m synth.bench cores``.

The job of ``python -m synth.bench pipeline`` (photos at SIZE x SIZE, masks given, every artifact
written) at each ``num_workers`` in ``--workers``, runs interleaved so that load changes on the
machine hit every value alike. Prints the median images/s of each value (from the job's own
clock) and its speed-up over the first value, measured in the same command. On a 16-core GPU box::

    python -m synth.bench cores --count 192 --repeats 3 --workers 1,auto
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from synth.bench.pipeline import masked_job, time_run
from synth.schedule import usable_cores
from synth.bench import at_least


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m synth.bench cores", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=at_least(1), default=48, help="images per run (more cores: more images)")
    parser.add_argument("--size", type=at_least(64), default=1024, help="image side in pixels")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="runs per value; the median is reported")
    parser.add_argument("--workers", default="1,auto", help="num_workers values, comma-separated")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    values = args.workers.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = masked_job(tmp, args.count, args.size, args.overrides)
        print(f"synth cores benchmark: {args.count} images of {args.size}x{args.size}, masks given, all artifacts "
              f"written, {args.repeats} runs per num_workers; {usable_cores()} usable cores (auto)")
        rates: dict[str, list[float]] = {v: [] for v in values}
        stage_ms: dict[str, dict[str, list[float]]] = {v: {} for v in values}
        for r in range(args.repeats):
            for value in values:
                run_dir = tmp / f"run-{value}-{r}"
                summary = time_run(run_dir, [*base, f"num_workers={value}"])
                rates[value].append(summary["images_per_s"])
                for stage, ms in summary["stage_ms"].items():
                    stage_ms[value].setdefault(stage, []).append(ms["median"])
                shutil.rmtree(run_dir)  # about 8 MB per sample at 1024 px
                print(f"  run {r + 1} num_workers={value}: {summary['images_per_s']:.2f} images/s")
        first = statistics.median(rates[values[0]])
        print(f"{'num_workers':<12} {'images/s':>9} {'(runs)':>13} {'speed-up':>9}  per-image ms (median, in the workers)")
        for value in values:
            rate = statistics.median(rates[value])
            ms = ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in stage_ms[value].items())
            print(f"{value:<12} {rate:>9.2f} {min(rates[value]):>6.2f}-{max(rates[value]):<6.2f} "
                  f"{rate / first:>8.2f}x  {ms}")
