"""End-to-end images/s for each writer, with 1 and 2 parallel jobs: ``python -m synth.bench scale``.

Inputs are those of the pipeline benchmark (``masked_job``: SIZE px photos with masks given).
Each measurement is a real ``python -m synth`` job (``time_run``); N parallel jobs are the N
shards of the input (``data.num_shards=N data.shard_index=i``) started together, as a local
multirun does, and their rate is all images over the slowest job's own clock. Prints a
Markdown table of medians over REPEATS runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from synth.bench.pipeline import masked_job, time_run
from synth.bench import at_least

WRITERS = {
    "folder (every stage image)": [],
    "folder, writer.intermediates=false": ["writer.intermediates=false"],
    "webdataset": ["writer=webdataset"],
    "hf": ["writer=hf"],
    "folder + webdataset + hf": ["writers=[webdataset,hf]"],
}


def parallel_rate(workdir: Path, overrides: list[str], jobs: int) -> float:
    """images/s of ``jobs`` shard jobs run at the same time."""
    def one(index: int) -> dict:
        return time_run(workdir / f"shard{index}", [*overrides, f"data.num_shards={jobs}", f"data.shard_index={index}"])

    with ThreadPoolExecutor(jobs) as pool:  # each job is its own process; threads only wait
        summaries = list(pool.map(one, range(jobs)))
    done = sum(s["done"] for s in summaries)
    return done / max(s["elapsed_s"] for s in summaries)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m synth.bench scale", description=__doc__)
    parser.add_argument("--count", type=at_least(1), default=16, help="images per measurement (split over the jobs)")
    parser.add_argument("--size", type=at_least(64), default=1024, help="image side in pixels")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="runs per cell; the median is reported")
    parser.add_argument("--jobs", type=at_least(1), nargs="+", default=[1, 2], help="parallel job counts")
    parser.add_argument("--writers", nargs="+", choices=list(WRITERS), default=list(WRITERS), metavar="LABEL",
                        help="rows to measure (default: all)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = masked_job(tmp, args.count, args.size, args.overrides)
        print(f"synth scale benchmark: {args.count} images of {args.size}x{args.size}, masks given, "
              f"median of {args.repeats} runs, images/s end to end")
        rows = []
        for label in args.writers:
            rates = []
            for jobs in args.jobs:
                runs = [parallel_rate(tmp / f"{len(rows)}-{jobs}-{r}", [*base, *WRITERS[label]], jobs)
                        for r in range(args.repeats)]
                rates.append(statistics.median(runs))
                print(f"  {label}, {jobs} job(s): " + ", ".join(f"{x:.2f}" for x in runs), flush=True)
            rows.append((label, rates))
        print()
        print("| writer | " + " | ".join(f"{j} job{'s' if j > 1 else ''}" for j in args.jobs) + " |")
        print("|---|" + "---:|" * len(args.jobs))
        for label, rates in rows:
            print(f"| {label} | " + " | ".join(f"{r:.2f}" for r in rates) + " |")
