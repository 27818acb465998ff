"""Stage 3 timings: ``python -m synth.bench shadow [--size 1024] [--repeats 15]``; and how
visible its degradations are: ``python -m synth.bench shadow --visibility [--seeds 8] [OVERRIDES]``.

Prints, as medians of ``--repeats`` runs in this process:

* each pattern family drawn at SIZE x SIZE (affine included, penumbra not);
* stage 3 (``shadow=hard``: pattern, penumbra, colour, sRGB <-> linear, the visibility measure;
  one draw, ``min_visibility=0``) on the bundled portrait
  resized to SIZE x SIZE with a soft subject mask, at blur kernel 31 and at kernel 111. The two
  kernels alternate run by run with the same images and patterns, so their ratio is measured
  under the same machine load;
* ``shadow=soft_shading`` and ``shadow=mix`` on the same input, for reference.

Numbers only, no assertions: compare runs on the same machine.

``--visibility`` runs stages 1-3 as ``python -m synth OVERRIDES`` builds them on every bundled
photo, sample indices 0..SEEDS-1, once per pattern family (``shadow.patterns=NAME``; and once
for ``shadow=soft_shading`` when no override is given), and prints per row: the share of samples
whose first draw passed ``shadow.min_visibility``, redraws per sample, samples that failed
"degradation not visible", and the median ``visibility`` of the results.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import cv2
import numpy as np

from synth.data import SAMPLES_DIR
from synth.errors import SampleError
from synth.imaging import open_rgb
from synth.sample import Sample
from synth.stages.patterns import PATTERNS, render
from synth.stages.shadow import HardShadow, Mix, SoftShading, luma, subject_box, visibility
from synth.bench import at_least


def portrait(size: int) -> Sample:
    """The bundled portrait at size x size with a soft, centred subject mask (no stage 1 cost)."""
    sample = Sample(index=0, id="000000", source="astronaut.jpg", seed=0)
    sample.image = cv2.resize(open_rgb(str(SAMPLES_DIR / "astronaut.jpg")), (size, size),
                              interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot((yy - size * 0.55) / size, (xx - size / 2) / size)
    sample.mask = np.clip((0.42 - r) / 0.04, 0.0, 1.0).astype(np.float32)
    sample.albedo = sample.image
    return sample


def ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1000.0 * (time.perf_counter() - start)


def run_stage(stage, template: Sample, index: int) -> None:
    sample = copy.copy(template)
    sample.index, sample.params = index, {}
    stage.process([sample])


def visibility_rows(overrides: list[str], seeds: int, only: list[str] | None = None) -> dict[str, dict]:
    """Per row (a family, or soft_shading): first-draw pass share, redraws, failures, medians."""
    from hydra import compose, initialize_config_module

    from synth.app import build

    def config(*extra: str):
        with initialize_config_module(config_module="synth.conf", version_base="1.3"):
            return compose(config_name="config", overrides=[*overrides, *extra])

    cfg = config()
    photos = []
    for path in sorted(SAMPLES_DIR.glob("*.jpg")):  # stages 1 and 2 once per photo
        sample = Sample(index=0, id="000000", source=str(path), seed=int(cfg.seed))
        sample.image = open_rgb(str(path))
        for group in ("segmentation", "albedo"):
            if group in cfg:
                build(cfg, group).process([sample])
        photos.append(sample)
    rows = {name: [f"shadow.patterns={name}"] for name in PATTERNS}
    if not overrides:
        rows["soft_shading"] = ["shadow=soft_shading"]
    results = {}
    for name, extra in rows.items():
        if only and name not in only:
            continue
        stage = build(config(*extra), "shadow")
        first, redraws, failed, shadowed, change = [], [], 0, [], []
        for photo in photos:
            for index in range(seeds):
                sample = copy.copy(photo)
                sample.index, sample.params = index, {}
                try:
                    stage.process([sample])
                except SampleError:
                    failed += 1
                    first.append(False)
                    redraws.append(stage.floor.max_redraws)
                    continue
                record = sample.params["shadow"]
                redraws.append(record["redraws"])
                first.append(record["redraws"] == 0)
                shadowed.append(record["visibility"]["shadowed"])
                change.append(record["visibility"]["change"])
        results[name] = {"samples": len(first), "first": float(np.mean(first)), "redraws": float(np.mean(redraws)),
                         "failed": failed, "shadowed": float(np.median(shadowed)) if shadowed else 0.0,
                         "change": float(np.median(change)) if change else 0.0}
    return results


def visibility_report(overrides: list[str], seeds: int) -> None:
    rows = visibility_rows(overrides, seeds)
    n = next(iter(rows.values()))["samples"]
    print(f"visibility on the bundled photos, {n} samples per row ({seeds} per photo); overrides: "
          f"{' '.join(overrides) or 'none'}")
    print("row              visible at first draw  redraws/sample  failed  median shadowed  median change")
    for name, r in rows.items():
        print(f"  {name:16s} {r['first']:20.0%} {r['redraws']:15.2f} {r['failed']:7d} {r['shadowed']:16.3f}"
              f" {r['change']:14.3f}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m synth.bench shadow", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=at_least(64), default=1024)
    parser.add_argument("--repeats", type=at_least(1), default=15)
    parser.add_argument("--visibility", action="store_true", help="report visibility per family instead of timings")
    parser.add_argument("--seeds", type=at_least(1), default=8, help="with --visibility: samples per photo")
    parser.add_argument("overrides", nargs="*", help="with --visibility: config overrides, e.g. experiment=sun_shadows")
    args = parser.parse_args(argv)
    if args.visibility:
        visibility_report(args.overrides, args.seeds)
        return
    size, repeats = args.size, args.repeats

    print(f"stage 3 benchmark at {size}x{size}, medians of {repeats} runs ({cv2.getNumThreads()} OpenCV threads)")
    times: dict[str, list[float]] = {name: [] for name in PATTERNS}
    for i in range(repeats):  # families interleaved, so load changes hit them all alike
        for name in PATTERNS:
            times[name].append(ms(lambda: render(name, np.random.default_rng(i), size, size)))
    print("pattern            ms")
    for name, values in times.items():
        print(f"  {name:16s} {statistics.median(values):6.1f}")

    template = portrait(size)
    stages = {
        # One draw each (the floor off, its measure still taken): redraws would time other images.
        "hard, kernel 31": HardShadow(base="foreground", blur=31, min_visibility=0),
        "hard, kernel 111": HardShadow(base="foreground", blur=111, min_visibility=0),
        "soft_shading": SoftShading(base="foreground", min_visibility=0),
        "mix": Mix(HardShadow(base="foreground", key="shadow.hard", min_visibility=0),
                   SoftShading(base="foreground", key="shadow.soft_shading", min_visibility=0)),
    }
    for stage in stages.values():  # warm-up: first-call allocations and imports
        run_stage(stage, template, 0)
    stage_times: dict[str, list[float]] = {name: [] for name in stages}
    for i in range(repeats):
        for name, stage in stages.items():  # the same image index (hence pattern) for every stage
            stage_times[name].append(ms(lambda: run_stage(stage, template, i)))
    print("stage 3            ms")
    med = {name: statistics.median(values) for name, values in stage_times.items()}
    for name, value in med.items():
        print(f"  {name:16s} {value:6.1f}")
    print(f"kernel 111 / kernel 31: {med['hard, kernel 111'] / med['hard, kernel 31']:.2f}x")
    # The visibility measure alone (two lumas and the comparison on the subject's box), as a share
    # of stage 3 measured in this same run.
    done = copy.copy(template)
    done.params = {}
    stages["hard, kernel 31"].process([done])
    box = subject_box(done.mask)
    measure = statistics.median(ms(lambda: visibility(luma(done.image[box]), luma(done.degraded[box]),
                                                      done.mask[box])) for _ in range(repeats))
    print(f"visibility measure: {measure:.1f} ms, {measure / med['hard, kernel 31']:.0%} of hard, kernel 31")
