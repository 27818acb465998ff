"""Surface normals of the subject for soft shading, computed at a small working size.

Two sources of a height field (larger = nearer the camera), turned into normals the same way:

* :func:`inflate`, weight-free: the subject's mask inflated into a smooth dome (each point
  rises like a sphere whose radius is the mask's largest inscribed circle).
* :class:`DepthModel`: a monocular depth model through ``transformers``
  (``AutoModelForDepthEstimation``, e.g. Depth Anything or DPT), loaded once per process and run
  on a batch; its relative depth is scaled to a relief proportional to the subject's size.

and one source of normals directly: :class:`MarigoldNormals` (``MarigoldNormalsPipeline``
through ``diffusers``, on the subject).

Shading is smooth, so everything here runs with the long side at ``WORK`` pixels and the
shading map is upsampled once (see :mod:`synth.stages.shading`).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from synth.imaging import fit_size, resize
from synth.stages.models.loading import check_source, hub_kwargs, infer_backing_off, load_pretrained

WORK = 256  # long side of the working size


def work_size(h: int, w: int) -> tuple[int, int]:
    return fit_size(h, w, WORK)


def inflate(mask: np.ndarray) -> np.ndarray:
    """Height field (pixels of ``mask``'s grid) from a soft mask: a dome over the subject.

    The distance d to the mask's edge is mapped through a circle's profile, sqrt(d (2R - d))
    with R the largest inscribed radius: a disc becomes a hemisphere, an elongated shape a
    rounded ridge. Blurring d first removes the crease along the shape's medial axis.
    """
    inside = (mask > 0.5).astype(np.uint8)
    if not inside.any():
        return np.zeros(mask.shape, np.float32)
    d = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    radius = float(d.max())
    d = cv2.GaussianBlur(d, (0, 0), max(1.0, 0.15 * radius))
    d = np.minimum(d, radius)
    return np.sqrt(d * (2 * radius - d)).astype(np.float32)


def normals_from_height(height: np.ndarray) -> np.ndarray:
    """HxWx3 unit normals (x right, y down, z towards the viewer) of a height field given in
    pixels: n = (-dh/dx, -dh/dy, 1) / |...|."""
    height = height.astype(np.float32, copy=False)
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    n = np.dstack([-gx, -gy, np.ones_like(height)])
    n /= np.linalg.norm(n, axis=2, keepdims=True)
    return n


def height_from_depth(depth: np.ndarray, mask: np.ndarray, near_is_larger: bool = True,
                      relief: float = 0.5) -> np.ndarray:
    """Scale a model's relative depth into a height field (pixels of ``mask``'s grid).

    Inside the mask, the 2nd-98th percentile range of the depth becomes ``relief`` times the
    subject's size (square root of its area): monocular depth has no absolute scale, and a
    subject about half as deep as it is wide shades plausibly. Smoothed lightly: per-pixel depth
    noise would otherwise speckle the shading.
    """
    depth = resize(depth.astype(np.float32), mask.shape[:2])
    if not near_is_larger:
        depth = -depth
    inside = mask > 0.5
    values = depth[inside] if inside.sum() > 16 else depth.ravel()
    lo, hi = np.percentile(values, [2, 98])
    size = float(np.sqrt(max(inside.sum(), 1)))
    height = np.clip((depth - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * (relief * size)
    return cv2.GaussianBlur(height.astype(np.float32), (0, 0), 1.5)


class DepthModel:
    """A ``transformers`` depth-estimation model, loaded once, run on batches of images.

    ``model`` is a hub id (e.g. ``depth-anything/Depth-Anything-V2-Small-hf``) or a local folder
    holding the model and its image processor; ``key`` is the config key named in errors. It is
    checked and loaded like every model stage's weights (:mod:`synth.stages.models.loading`).
    """

    def __init__(self, model: str, key: str):
        self.key = key
        self.how = ("use a hub id such as depth-anything/Depth-Anything-V2-Small-hf, or a local directory holding "
                    "an AutoModelForDepthEstimation and its image processor (`hf download "
                    f"depth-anything/Depth-Anything-V2-Small-hf --local-dir DIR`, then {key}=DIR)")
        self.model_id = check_source(key, model, self.how)
        self.model = self.processor = None
        self.device = "cpu"

    def setup(self, device: str) -> None:
        if self.model is not None:
            return
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        from synth.stages.base import resolve_device

        self.processor = load_pretrained(self.key, self.model_id, self.how,
                                         lambda s: AutoImageProcessor.from_pretrained(s, **hub_kwargs()))
        self.model = load_pretrained(self.key, self.model_id, self.how,
                                     lambda s: AutoModelForDepthEstimation.from_pretrained(s, **hub_kwargs()))
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        cfg = self.model.config
        # Relative models (DPT, Depth Anything) predict inverse depth: larger = nearer.
        self.near_is_larger = not (getattr(cfg, "depth_estimation_type", None) == "metric"
                                   or cfg.model_type == "zoedepth")

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One depth map per image (the model's resolution). Images of one shape share a batch,
        split on out-of-memory (:func:`~synth.stages.models.loading.infer_backing_off`; an image
        that does not fit alone raises SampleError)."""
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        for indices in groups.values():
            for chunk, depths in infer_backing_off(indices, lambda chunk: self.predict([images[i] for i in chunk])):
                for i, d in zip(chunk, depths):
                    out[i] = d
        return out

    def predict(self, images: list[np.ndarray]) -> np.ndarray:
        """One forward pass on images of one shape: float32 depth maps on the CPU."""
        inputs = self.processor(images=images, return_tensors="pt")
        depth = self.model(pixel_values=inputs["pixel_values"].to(self.device)).predicted_depth
        return depth.float().cpu().numpy()


class MarigoldNormals:
    """Unit normals from a Marigold normals model (``diffusers`` ``MarigoldNormalsPipeline``), run
    on a square around the subject (:class:`synth.stages.models.marigold.MarigoldRunner`) with the
    model's default steps and resolution, bfloat16 on a GPU. ``model`` is a hub id (e.g.
    ``prs-eth/marigold-normals-v1-1``) or a local ``save_pretrained`` directory; ``key`` is the
    config key named in errors.
    """

    def __init__(self, model: str, key: str):
        from synth.stages.models.marigold import HOW_NORMALS, MarigoldRunner

        self.runner = MarigoldRunner("normals", key, model, HOW_NORMALS, prefix=key)
        self.model_id = self.runner.source

    def setup(self, device: str) -> None:
        if self.runner.pipe is not None:
            return
        from synth.stages.base import resolve_device
        from synth.stages.models.loading import resolve_dtype

        device = resolve_device(device)
        self.runner.load(device, resolve_dtype("auto", device))

    def __call__(self, samples: Sequence) -> list[np.ndarray]:
        """Per sample, HxWx3 unit normals at its working size (facing the viewer off the square).
        The batch is split on out-of-memory like the depth model's."""
        from synth.stages.models.marigold import paste

        predicted = [result for _, results in infer_backing_off(samples, self.runner.predict) for result in results]
        out = []
        for sample, ((top, left, side), maps) in zip(samples, predicted):
            h, w = sample.mask.shape
            wh, ww = work_size(h, w)
            scale = wh / h
            normals = np.zeros((wh, ww, 3), np.float32)
            normals[..., 2] = 1.0
            n = resize(maps[0] * np.float32([1, -1, 1]), (max(1, round(side * scale)),) * 2)  # Marigold's y is up
            paste(normals, n, round(top * scale), round(left * scale))
            out.append(normals / np.maximum(np.linalg.norm(normals, axis=2, keepdims=True), 1e-6))
        return out
