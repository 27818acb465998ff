"""Memory per sample and listing a huge input: ``python -m synth.bench memory``.

For each count (default 300, 3,000 and 30,000) it generates that many tiny photos with masks
(``--size`` px, one encoded image written under every name), runs a real job on them
(``python -m synth data=folder segmentation=mask_folder logger=none``) and reads the job's peak
RSS from the kernel (``wait4``), then prints peak RSS, wall time, the size of ``metadata.json``
and the wall time of the same command again (a resume that finds every sample complete) per count, and the slope in KB per sample between the smallest and the
largest count (target: at most 2 KB/sample; ``metadata.json`` under 256 KB at any count).

Then it times listing a generated ``--csv-rows``-row CSV (``data=csv``) and a folder of
``--folder-files`` empty images (``data=folder``), and selecting one shard of 64 from each, with
the Python memory each listing holds (tracemalloc).

``--resume N`` times resume's completeness check (``Runner._resume_state`` with the folder
writer: samples.jsonl read, every file of every record checked at its recorded size) over a run
directory of N complete samples: one real sample from a one-photo job, cloned N times (same
record, ids and paths changed; files created at their recorded sizes, sparse, and hard links
where the writer links). Median of
``--repeats`` checks, in records/s; the files are in the page cache (a cold cache is slower).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
from synth.bench import at_least


def make_photos(folder: Path, count: int, size: int = 32) -> tuple[Path, Path]:
    """``count`` copies of one small photo in ``folder/photos`` and its mask in ``folder/masks``."""
    photos, masks = folder / "photos", folder / "masks"
    photos.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    centre = np.exp(-(((yy - size / 2) / (size / 4)) ** 2 + ((xx - size / 2) / (size / 4)) ** 2))
    image = np.clip(60 + 150 * centre[..., None] * np.array([1.0, 0.8, 0.6]), 0, 255).astype(np.uint8)
    mask = ((centre > 0.3) * 255).astype(np.uint8)
    photo_png, mask_png = cv2.imencode(".png", image)[1].tobytes(), cv2.imencode(".png", mask)[1].tobytes()
    for i in range(count):
        (photos / f"{i:07d}.png").write_bytes(photo_png)
        (masks / f"{i:07d}.png").write_bytes(mask_png)
    return photos, masks


def measure_job(workdir: Path, count: int, size: int = 32, overrides: tuple[str, ...] = (),
                rerun: bool = False) -> dict:
    """Run one job over ``count`` generated photos; its peak RSS (KB), wall time and summary size
    (and with ``rerun``, the wall time of the same command again: a resume with nothing to do)."""
    photos, masks = make_photos(workdir / "inputs", count, size)
    run_dir = workdir / "run"
    cmd = [sys.executable, "-m", "synth", f"hydra.run.dir={run_dir}", "data=folder", f"data.path={photos}",
           "segmentation=mask_folder", f"segmentation.path={masks}", "logger=none", *overrides]
    result = _run(cmd)
    result.update(count=count, metadata_bytes=(run_dir / "metadata.json").stat().st_size)
    if rerun:
        result["rerun_s"] = _run(cmd)["wall_s"]
    return result


def _run(cmd: list[str]) -> dict:
    """Run ``cmd``; its wall time and peak RSS (KB, from the kernel)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr.decode(errors='replace')[-2000:]}")
    return {"rss_kb": usage.ru_maxrss, "wall_s": wall}


def csv_listing(workdir: Path, rows: int, num_shards: int = 64) -> dict:
    """Time and Python memory to list a ``rows``-row CSV and select shard 3 of ``num_shards``."""
    from synth.data import CsvSource

    table = workdir / "big.csv"
    with open(table, "w") as f:
        f.write("image_path,caption\n")
        f.writelines(f"photos/{i // 1000:04d}/{i:07d}.jpg,a photo\n" for i in range(rows))
    start = time.perf_counter()
    source = CsvSource(path=str(table), num_shards=num_shards, shard_index=3)
    total = source.total
    listed = time.perf_counter()
    shard = sum(1 for _ in source.items())
    done = time.perf_counter()
    tracemalloc.start()  # a second listing, traced (tracing slows it down: not timed)
    CsvSource(path=str(table), num_shards=num_shards, shard_index=3).total
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rows": total, "list_s": listed - start, "shard_s": done - listed, "shard_items": shard,
            "peak_mb": peak / 1e6}


def folder_listing(workdir: Path, files: int, num_shards: int = 64) -> dict:
    """Time and Python memory to list ``files`` (empty) images in 1,000-file sub-folders
    (``data=folder``) and select shard 3 of ``num_shards``."""
    from synth.data import ImageFolder

    root = workdir / "photos"
    for i in range(files):
        if i % 1000 == 0:
            (root / f"{i // 1000:04d}").mkdir(parents=True)
        (root / f"{i // 1000:04d}" / f"{i:07d}.jpg").touch()
    start = time.perf_counter()
    source = ImageFolder(path=str(root), num_shards=num_shards, shard_index=3)
    total = source.total
    listed = time.perf_counter()
    shard = sum(1 for _ in source.items())
    done = time.perf_counter()
    tracemalloc.start()
    ImageFolder(path=str(root), num_shards=num_shards, shard_index=3).total
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rows": total, "list_s": listed - start, "shard_s": done - listed, "shard_items": shard,
            "peak_mb": peak / 1e6}


def clone_run_dir(workdir: Path, records: int) -> Path:
    """A run directory of ``records`` complete samples: the one sample of a one-photo job, its
    record and files cloned under every id (files at their recorded sizes, sparse; the
    ``outputs/`` links to stage files hard links, as the folder writer makes them)."""
    from synth.files import to_json

    measure_job(workdir / "template", 1)
    template_dir = workdir / "template" / "run"
    [line] = (template_dir / "samples.jsonl").read_text().splitlines()
    template = json.loads(line)
    width = max(6, len(str(max(records - 1, 0))))  # ImageFolder.id_of
    old_id = template["image_id"]
    inodes = {f["path"]: (template_dir / f["path"]).stat().st_ino for f in template["files"]}
    run_dir = workdir / "resume"
    for f in template["files"]:
        (run_dir / f["path"]).parent.mkdir(parents=True, exist_ok=True)
    (workdir / "inputs.csv").write_text("image_path\n" + "".join(f"p/{i}.png\n" for i in range(records)))
    with open(run_dir / "samples.jsonl", "w") as out:
        for index in range(records):
            sid = f"{index:0{width}d}"
            record = json.loads(line.replace(f"{old_id}_", f"{sid}_"))  # the id in every file name
            record.update(image_id=sid, index=index, source=str(workdir / f"p/{index}.png"))
            made: dict[int, Path] = {}  # template inode -> its first clone: hard links stay links
            for f in record["files"]:
                path, inode = run_dir / f["path"], inodes[f["path"].replace(f"{sid}_", f"{old_id}_")]
                if inode in made:
                    os.link(made[inode], path)
                    continue
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.ftruncate(fd, f["bytes"])
                os.close(fd)
                made[inode] = path
            out.write(to_json(record, indent=None) + "\n")
    return run_dir


def resume_check(workdir: Path, records: int, repeats: int = 3, workers: str = "auto") -> dict:
    """Median seconds of resume's completeness check over a cloned run directory of ``records``
    complete samples (``clone_run_dir``), with the job's default ``num_workers`` and ``workers``
    as given; every sample must be found complete."""
    from synth.data import CsvSource
    from synth.runner import Runner
    from synth.writers.folder import FolderWriter

    run_dir = clone_run_dir(workdir, records)
    times = []
    for _ in range(repeats):
        writer = FolderWriter()
        writer.open(run_dir)
        runner = Runner(CsvSource(path=str(workdir / "inputs.csv")), [], [writer], run_dir=run_dir, workers=workers)
        start = time.perf_counter()
        runner._resume_state()  # what a rerun does before its first sample, the listing aside
        times.append(time.perf_counter() - start)
        complete = sum(runner._complete(i) for i in range(records))
        if complete != records:
            raise RuntimeError(f"resume found {complete} of {records} cloned samples complete")
    times.sort()
    return {"records": records, "median_s": times[len(times) // 2], "runs_s": times, "workers": runner.workers,
            "files": records * len(json.loads(next(open(run_dir / "samples.jsonl")))["files"])}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m synth.bench memory", description=__doc__)
    parser.add_argument("--counts", type=at_least(1), nargs="*", default=[300, 3000, 30000],
                        help="photos per job (none: no jobs)")
    parser.add_argument("--size", type=at_least(16), default=32, help="photo side in pixels")
    parser.add_argument("--csv-rows", type=at_least(0), default=1_000_000, help="rows of the generated CSV (0: skip)")
    parser.add_argument("--folder-files", type=at_least(0), default=100_000,
                        help="files of the generated folder (0: skip)")
    parser.add_argument("--resume", type=at_least(0), default=0, metavar="N",
                        help="time resume's completeness check over N cloned complete samples (0: skip)")
    parser.add_argument("--repeats", type=at_least(1), default=3,
                        help="runs of the resume check (the median is printed)")
    parser.add_argument("--resume-workers", default="auto", choices=["auto", "threads", "processes"],
                        help="the job's workers= for the resume check (processes from a 64 MiB samples.jsonl)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = parser.parse_args(argv)

    if args.counts:
        print(f"synth memory benchmark: {args.size}x{args.size} photos, masks given (segmentation=mask_folder "
              f"logger=none), peak RSS of the job process")
        print("| photos | peak RSS | wall time | metadata.json | rerun, all complete |")
        print("|---:|---:|---:|---:|---:|")
    results = []
    for count in args.counts:
        with tempfile.TemporaryDirectory() as tmp:  # (removing 13 files per photo takes a while)
            result = measure_job(Path(tmp), count, args.size, tuple(args.overrides), rerun=True)
            results.append(result)
            print(f"| {count:,} | {result['rss_kb'] / 1024:.0f} MB | {result['wall_s']:.1f} s | "
                  f"{result['metadata_bytes'] / 1024:.1f} KB | {result['rerun_s']:.1f} s |", flush=True)
    if len(results) > 1:
        first, last = results[0], results[-1]
        slope = (last["rss_kb"] - first["rss_kb"]) / (last["count"] - first["count"])
        print(f"slope: {slope * 1024 / 1000:.2f} KB/sample (peak RSS, {first['count']:,} -> {last['count']:,} photos;"
              f" target <= 2)")
    for listing, count, what in ((csv_listing, args.csv_rows, "data=csv, {:,} rows"),
                                 (folder_listing, args.folder_files, "data=folder, {:,} files")):
        if count:
            with tempfile.TemporaryDirectory() as tmp:
                result = listing(Path(tmp), count)
            print(f"{what.format(result['rows'])}: listed in {result['list_s']:.2f} s, shard 3 of 64 "
                  f"({result['shard_items']:,} items) selected in {result['shard_s']:.2f} s, "
                  f"{result['peak_mb']:.0f} MB peak Python memory")
    if args.resume:
        with tempfile.TemporaryDirectory() as tmp:
            result = resume_check(Path(tmp), args.resume, args.repeats, args.resume_workers)
        runs = ", ".join(f"{t:.2f}" for t in result["runs_s"])
        print(f"resume check, {result['records']:,} complete samples ({result['files']:,} files), "
              f"workers={result['workers']}: "
              f"{result['median_s']:.2f} s, {result['records'] / result['median_s']:,.0f} records/s "
              f"(median of {len(result['runs_s'])}: {runs} s)")
