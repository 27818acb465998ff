"""A whole job with model stages, against the models alone: ``python -m synth.bench e2e [options]``.

1. The chosen model stages (``--segmentation sam3|sam``, ``--captioning blip|vlm``) are built with
   full-size architectures and random weights directly on the device (see
   :func:`synth.bench.models.build_stage`; speed does not depend on the weight values), and timed
   alone as ``python -m synth.bench models`` times them, at the job's batch size and image size:
   the models-only bound is the images/s of those stages run back to back with nothing else.
2. Their weights are saved where the job reads them (``save_pretrained``; SAM's ``.pth`` state
   dict), COUNT photos of SIZE x SIZE are made from the bundled ones (with masks, for
   ``--segmentation mask_folder``), and a real ``python -m synth`` job runs over them
   (``logger=none``, every artifact written).
3. It prints the job's images/s (its own clock: decode to last write, model loading excluded), its
   per-stage ms per image (metadata.json ``stage_ms``), the bound, and the fraction of it reached.

With random weights SAM 3 runs at ``threshold=0, instances=best`` so every image gets a mask (and
the post-processing runs); captioning generates its full ``max_new_tokens``. ``--tiny`` runs the
same on the CPU with tiny architectures in seconds (a check of the harness, not a measurement).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from synth.bench import at_least

SEGMENTATION = ("sam3", "sam", "mask_folder")
CAPTIONING = ("blip", "vlm", "template")
# the job's options for each model stage (and the same for the bound): see the module docstring
STAGE_OPTIONS = {"sam3": {"threshold": 0.0, "instances": "best"}}


def photo_folder(workdir: Path, count: int, size: int) -> tuple[Path, Path]:
    """COUNT photos (and masks) in two folders: the bundled photos prepared once by the pipeline
    bench, then hard-linked round-robin (identical files are decoded like any other)."""
    from synth.bench.pipeline import prepare_inputs
    from synth.data import SAMPLES_DIR

    distinct = min(count, len(list(SAMPLES_DIR.glob("*.jpg"))))
    images, masks = prepare_inputs(workdir / "distinct", distinct, size)
    sources = sorted(images.glob("*.jpg"))
    out_images, out_masks = workdir / "images", workdir / "masks"
    out_images.mkdir()
    out_masks.mkdir()
    for i in range(count):
        src = sources[i % len(sources)]
        os.link(src, out_images / f"{i:06d}.jpg")
        os.link(masks / f"{src.stem}.png", out_masks / f"{i:06d}.png")
    return out_images, out_masks


def save_weights(stage: Any, name: str) -> None:
    """Write the stage's random weights beside its config and processor, as a checkpoint is."""
    if name == "sam":  # its random .pth state dict is already written
        return
    if name == "vlm":  # random weights may keep choosing a newline or a special token: no text, a failed sample
        from synth.bench.models import QWEN_SPECIALS

        tokenizer, size = stage.processor.tokenizer, stage.model.config.get_text_config().vocab_size
        candidates = [*range(256), *range(min(QWEN_SPECIALS.values()), size)]  # the byte tokens, the specials, unused ids
        stage.model.generation_config.suppress_tokens = [
            i for i in candidates if not tokenizer.decode([i], skip_special_tokens=True).strip()]
    stage.model.save_pretrained(stage.source)


def stage_overrides(name: str, stage: Any, group: str) -> list[str]:
    """The job's overrides that load ``stage``'s saved checkpoint with the bound's options."""
    if name == "sam":
        where = [f"{group}.checkpoint={stage.checkpoint}", f"{group}.model_type=auto"]
    else:
        where = [f"{group}.model={stage.source}"]
    return [f"{group}={name}", *where, *(f"{group}.{k}={v}" for k, v in STAGE_OPTIONS.get(name, {}).items())]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m synth.bench e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=at_least(1), default=None,
                        help="photos in the job (default 256; 6 with --tiny)")
    parser.add_argument("--size", type=at_least(64), default=None,
                        help="photos are SIZE x SIZE (default 1024; 256 with --tiny)")
    parser.add_argument("--segmentation", default="sam3", choices=SEGMENTATION)
    parser.add_argument("--captioning", default="blip", choices=CAPTIONING)
    parser.add_argument("--batch-size", type=at_least(1), default=None,
                        help="the job's batch_size (default 32; 2 with --tiny)")
    parser.add_argument("--repeats", type=at_least(1), default=3,
                        help="timed batches per model stage for the bound (fastest)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sam-model-type", default="vit_h", choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--tiny", action="store_true", help="tiny architectures on the CPU: checks the harness")
    parser.add_argument("--workers", default="auto", help="the job's `workers` (threads, processes, auto); "
                        "comma-separated: one job each, over the same models and photos")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the job, e.g. num_workers=12")
    args = parser.parse_args(argv)
    count = args.count or (6 if args.tiny else 256)
    size = args.size or (256 if args.tiny else 1024)
    batch = args.batch_size or (2 if args.tiny else 32)

    import torch
    from transformers.utils import logging as transformers_logging

    from synth.bench.models import build_stage, measure, photos
    from synth.bench.pipeline import time_run
    from synth.stages.base import resolve_device

    torch.set_flush_denormal(True)  # random weights on a CPU: see synth.bench.models
    transformers_logging.disable_progress_bar()  # save_pretrained's bars would bury the table
    device = "cpu" if args.tiny else resolve_device(args.device)
    models = [(name, group) for name, group in ((args.segmentation, "segmentation"), (args.captioning, "captioning"))
              if name not in ("mask_folder", "template")]
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"# synth.bench e2e: {where}, {count} photos of {size}x{size}, batch_size={batch}, segmentation="
          f"{args.segmentation}, captioning={args.captioning}, random weights{' (TINY architectures)' if args.tiny else ''}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="synth-bench-e2e-") as tmp:
        tmp = Path(tmp)
        overrides = ["data=folder", f"batch_size={batch}", f"device={device}"]
        bound_s = 0.0  # seconds per image of the model stages alone, back to back
        images = photos(size)
        for name, group in models:
            stage = build_stage(name, tmp / "models", device, "auto", args.tiny, args.sam_model_type,
                                extra=STAGE_OPTIONS.get(name))
            measure(stage, images, 1, 1)  # warm-up: kernels, allocator, lazy initialisation
            row = measure(stage, images, batch, args.repeats)
            bound_s += row["s_per_image"]
            print(f"  {name} alone: {row['images_per_s']:.2f} images/s at batch {batch} "
                  f"(peak {row['peak_gib']:.2f} GiB)", flush=True)
            save_weights(stage, name)
            overrides += stage_overrides(name, stage, group)
            del stage
            if device.startswith("cuda"):
                torch.cuda.empty_cache()  # the job gets the whole device
        images_dir, masks_dir = photo_folder(tmp, count, size)
        overrides.append(f"data.path={images_dir}")
        if args.tiny and args.segmentation != "mask_folder":  # a tiny random model often marks no subject
            overrides.append("segmentation.fallback=grabcut")  # (refused since issue 16): keep samples flowing
        if args.segmentation == "mask_folder":
            overrides += ["segmentation=mask_folder", f"segmentation.path={masks_dir}"]
        if args.captioning == "template":
            overrides.append("captioning=template")
        for kind in args.workers.split(","):
            summary = time_run(tmp / f"run-{kind}", [*overrides, f"workers={kind}", *args.overrides])
            rate = summary["images_per_s"] or 0.0
            print(f"job: {rate:.2f} images/s ({summary['done']} done, {summary['failed']} failed, "
                  f"{summary['processing_s']:.1f} s after model loading), workers={kind}")
            print("  per-stage ms per image (median): "
                  + ", ".join(f"{k} {v['median']:.1f}" for k, v in summary["stage_ms"].items()))
            main_ms = 1000 * summary["process_cpu_s"] / max(1, summary["done"] + summary["failed"])
            print(f"  job process: {main_ms:.1f} ms of CPU per image ("
                  + ("scheduler, model lanes and records; a CUDA wait may spin" if kind == "processes"
                     else "every stage") + ")")
            if bound_s:
                bound = 1.0 / bound_s
                print(f"models-only bound: {bound:.2f} images/s; job reached {rate / bound:.0%} of it")
            else:
                print("models-only bound: none (no model stage)")
            sys.stdout.flush()
