"""End-to-end throughput of the weight-free pipeline: ``python -m synth.bench [pipeline]``.

Inputs are the bundled photos resized to SIZE x SIZE (cycled to COUNT files) with masks given
(``segmentation=mask_folder``), and every reference artifact is written. Each repeat is a real
``python -m synth`` job per PNG encoder (``writer.png_encoder``, cv2 and auto by default, runs
interleaved); throughput comes from the job's own clock (decode to last write), so interpreter
start-up is excluded. A re-implementation of the reference's non-model stages
(full-resolution Retinex blurs, its float32 composite, twelve default-compression PNG writes)
runs in the same process as the baseline for the ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from synth.data import SAMPLES_DIR
from synth.imaging import open_rgb, resize
from synth.sample import Sample
from synth.stages.segmentation import GrabCut
from synth.bench import at_least


def prepare_inputs(workdir: Path, count: int = 16, size: int = 1024) -> tuple[Path, Path]:
    """COUNT square SIZE px JPEGs made from the bundled photos, and a GrabCut mask for each."""
    images_dir, masks_dir = Path(workdir) / "images", Path(workdir) / "masks"
    images_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(SAMPLES_DIR.glob("*.jpg"))
    segmenter = GrabCut()
    for i in range(count):
        src = sources[i % len(sources)]
        image = open_rgb(str(src))
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = cv2.resize(image[top:top + side, left:left + side], (size, size), interpolation=cv2.INTER_CUBIC)
        stem = f"{i:04d}_{src.stem}"
        Image.fromarray(square).save(images_dir / f"{stem}.jpg", quality=95)
        sample = Sample(index=i, id=stem, source=stem, seed=0, image=square)
        segmenter.process_sample(sample)
        cv2.imwrite(str(masks_dir / f"{stem}.png"), (sample.mask * 255 + 0.5).astype(np.uint8))
    return images_dir, masks_dir


def masked_job(workdir: Path, count: int, size: int, extra: list[str]) -> list[str]:
    """Prepare the inputs in ``workdir``; return the overrides of a job over them, masks given."""
    images_dir, masks_dir = prepare_inputs(workdir, count, size)
    return ["data=folder", f"data.path={images_dir}", "segmentation=mask_folder",
            f"segmentation.path={masks_dir}", *extra]


def bytes_on_disk(run_dir: Path) -> int:
    """Total size of the files under ``run_dir``, each hard-linked file counted once."""
    sizes = {}
    for path in Path(run_dir).rglob("*"):
        if path.is_file():
            st = path.stat()
            sizes[(st.st_dev, st.st_ino)] = st.st_size
    return sum(sizes.values())


def job_cpu_s(run_dir: Path, overrides: list[str]) -> tuple[dict, float]:
    """``time_run`` and the CPU seconds (user + system) the job took, start-up included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = time_run(run_dir, overrides)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return summary, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def time_run(run_dir: Path, overrides: list[str]) -> dict:
    """Run one ``python -m synth`` job into ``run_dir``; return its summary (metadata.json)."""
    cmd = [sys.executable, "-m", "synth", f"hydra.run.dir={run_dir}", "logger=none", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark job failed ({' '.join(cmd)}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads((Path(run_dir) / "metadata.json").read_text())


# --- the reference's non-model stages, re-implemented faithfully for the baseline -------------
def _reference_retinex(image: np.ndarray) -> np.ndarray:
    img = image.astype(np.float64) + 1.0
    msr = np.zeros_like(img)
    for sigma in (15, 80, 250):  # full-resolution Gaussians: 6*sigma+1 taps
        msr += np.log10(img) - np.log10(cv2.GaussianBlur(img, (0, 0), sigma))
    msr /= 3
    out = np.zeros_like(msr)
    for c in range(3):
        lo, hi = np.percentile(msr[:, :, c], [1, 99])
        out[:, :, c] = np.clip((msr[:, :, c] - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    return (0.8 * out + 0.2 * image).astype(np.uint8)


def reference_like(image: np.ndarray, mask: np.ndarray, out_dir: Path, stem: str) -> None:
    albedo = _reference_retinex(image * (mask[..., None] > 0.5))
    matte = np.zeros(mask.shape, np.float32)
    matte[:, : mask.shape[1] // 2] = 1.0
    matte = cv2.GaussianBlur(matte, (71, 71), 0)
    degraded = (albedo.astype(np.float32) * (1 - 0.35 * matte[..., None])).astype(np.uint8)  # sRGB, grey
    fg = (image * mask[..., None]).astype(np.uint8)
    bg = (image * (1 - mask[..., None])).astype(np.uint8)
    m3 = mask[..., None]
    composite = (degraded.astype(np.float32) * m3 + bg.astype(np.float32) * (1 - m3)).astype(np.uint8)
    m8 = (mask * 255).astype(np.uint8)
    writes = [fg, bg, m8, albedo, degraded, composite, image, composite, degraded, albedo, fg, bg]
    for k, arr in enumerate(writes):  # twelve PNGs at PIL's default compression
        Image.fromarray(arr).save(out_dir / f"{stem}_{k}.png")


def bench_reference(images_dir: Path, masks_dir: Path, count: int) -> float:
    paths = sorted(images_dir.glob("*.jpg"))[:count]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        for path in paths:
            image = open_rgb(str(path))
            mask = cv2.imread(str(masks_dir / f"{path.stem}.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
            reference_like(image, resize(mask, image.shape[:2]), Path(out), path.stem)
        return len(paths) / (time.perf_counter() - start)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m synth.bench pipeline", description=__doc__)
    parser.add_argument("--count", type=at_least(1), default=24, help="images per run")
    parser.add_argument("--size", type=at_least(64), default=1024, help="image side in pixels")
    parser.add_argument("--repeats", type=at_least(1), default=5, help="runs; the median is reported")
    parser.add_argument("--baseline-count", type=at_least(0), default=2,
                        help="images for the reference baseline (0 skips)")
    parser.add_argument("--encoders", default="cv2,auto", help="writer.png_encoder values to compare, comma-separated")
    parser.add_argument("--workers", default="auto",
                        help="`workers` values (threads, processes, auto) to compare, comma-separated")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    # one variant per png_encoder (and per workers value when several are compared): "auto" or "auto/processes"
    kinds = args.workers.split(",")
    variants = {f"{e}/{k}" if len(kinds) > 1 else e: [f"writer.png_encoder={e}", f"workers={k}"]
                for e in args.encoders.split(",") for k in kinds}
    encoders = list(variants)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = masked_job(tmp, args.count, args.size, args.overrides)
        print(f"synth pipeline benchmark: {args.count} images of {args.size}x{args.size}, "
              f"masks given, all artifacts written, {args.repeats} runs per PNG encoder and workers value")
        rates: dict[str, list[float]] = {e: [] for e in encoders}
        write_ms: dict[str, list[float]] = {e: [] for e in encoders}
        cpu_s: dict[str, list[float]] = {e: [] for e in encoders}
        main_ms: dict[str, list[float]] = {e: [] for e in encoders}  # the job process's CPU alone
        sizes: dict[str, int] = {}
        stage_ms: dict[str, list[float]] = {}
        # CPU per image is what a busy shared machine distorts least; a one-image job per encoder
        # measures the start-up CPU to take off (images/s follows it where the job keeps all cores busy).
        # Worker processes are the forkserver's children, not the job's: their CPU is not counted (shown as nan).
        startup = {e: job_cpu_s(tmp / f"startup-{e.replace('/', '-')}", [*base, "data.limit=1", *variants[e]])[1]
                   for e in encoders}
        for r in range(args.repeats):
            for encoder in encoders:  # interleaved, so that load changes on the machine hit both alike
                run_dir = tmp / f"run-{encoder.replace('/', '-')}-{r}"
                summary, cpu = job_cpu_s(run_dir, [*base, *variants[encoder]])
                counted = "workers=processes" not in variants[encoder]
                cpu_s[encoder].append((cpu - startup[encoder]) / max(1, summary["done"] - 1) if counted else float("nan"))
                rates[encoder].append(summary["images_per_s"])
                main_ms[encoder].append(1000 * summary["process_cpu_s"] / max(1, summary["done"]))
                write_ms[encoder].append(summary["stage_ms"]["write"]["median"])
                sizes[encoder] = bytes_on_disk(run_dir) // max(1, summary["done"])
                for stage, ms in summary["stage_ms"].items():
                    if stage != "write" and encoder == encoders[-1]:
                        stage_ms.setdefault(stage, []).append(ms["median"])
                shutil.rmtree(run_dir)  # 24 samples at 1024 px are about 200 MB
                print(f"  run {r + 1} {' '.join(variants[encoder])}: {summary['images_per_s']:.2f} images/s")
        print(f"{'variant':<16} {'images/s':>9} {'(runs)':>13} {'write ms/image':>15} {'CPU s/image':>12} "
              f"{'main CPU ms/image':>18} {'MB/sample':>10}")
        for e in encoders:
            print(f"{e:<16} {statistics.median(rates[e]):>9.2f} {min(rates[e]):>6.2f}-{max(rates[e]):<6.2f} "
                  f"{statistics.median(write_ms[e]):>15.0f} {statistics.median(cpu_s[e]):>12.2f} "
                  f"{statistics.median(main_ms[e]):>18.1f} {sizes[e] / 1e6:>10.2f}")
        first, last = encoders[0], encoders[-1]
        rate = statistics.median(rates[last])
        if last != first:
            cpu_ratio = statistics.median(cpu_s[first]) / statistics.median(cpu_s[last])
            print(f"{last} vs {first}: {rate / statistics.median(rates[first]):.2f}x images/s, "
                  + ("" if cpu_ratio != cpu_ratio else f"{cpu_ratio:.2f}x less CPU per image, ")  # nan: processes
                  + f"{sizes[last] / sizes[first]:.2f}x size")
        print(f"  per-image ms of the other stages (median, png_encoder={last}): "
              + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in stage_ms.items()))
        if args.baseline_count:
            ref = bench_reference(tmp / "images", tmp / "masks", args.baseline_count)
            print(f"reference re-implementation: {ref:.3f} images/s ({args.baseline_count} images)")
            print(f"speed-up (png_encoder={last}): {rate / ref:.1f}x")
