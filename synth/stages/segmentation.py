"""Stage 1, weight-free: separate the subject from the background.

Every segmentation stage sets ``mask`` (soft alpha in [0, 1]), ``foreground`` and
``background`` through :func:`set_mask`, so model-backed implementations share the same ending.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from synth.errors import ConfigError, SampleError
from synth.imaging import gaussian_blur, resize
from synth.sample import Sample
from synth.stages.base import Stage


def set_mask(sample: Sample, mask: np.ndarray) -> None:
    """Store a soft mask and derive the stage-1 layers from it."""
    mask = np.clip(mask.astype(np.float32, copy=False), 0.0, 1.0)
    sample.mask = mask
    sample.foreground = sample.image  # full-frame layer; written with the mask as alpha
    keep = 1.0 - mask
    sample.background = (sample.image * keep[..., None] + 0.5).astype(np.uint8)


class GrabCut(Stage):
    """OpenCV GrabCut initialised with a centred rectangle: a classical, weight-free cut-out
    that works for the usual centred subject (portraits, product shots).

    Runs on a copy whose long side is ``work_size`` px, then upsamples the mask and softens its
    edge with a Gaussian of ``feather`` (fraction of the long side) so composites blend.
    """

    name = "segmentation"
    provides = ("mask", "foreground", "background")

    def __init__(self, margin: float = 0.08, iterations: int = 5, work_size: int = 320,
                 feather: float = 0.004):
        if not 0.0 <= margin < 0.5:
            raise ConfigError(f"segmentation.margin={margin}: must be in [0, 0.5)")
        if int(iterations) < 1:
            raise ConfigError(f"segmentation.iterations={iterations}: must be >= 1")
        if int(work_size) < 32:
            raise ConfigError(f"segmentation.work_size={work_size}: must be >= 32")
        if not 0.0 <= feather <= 0.1:
            raise ConfigError(f"segmentation.feather={feather}: must be in [0, 0.1]")
        self.margin, self.iterations, self.work_size, self.feather = margin, int(iterations), int(work_size), feather

    def process_sample(self, sample: Sample) -> None:
        h, w = sample.image.shape[:2]
        scale = min(1.0, self.work_size / max(h, w))
        sh, sw = max(8, round(h * scale)), max(8, round(w * scale))
        small = resize(sample.image, (sh, sw))
        bgr = np.ascontiguousarray(small[:, :, ::-1])
        rect = (round(sw * self.margin), round(sh * self.margin),
                max(1, round(sw * (1 - 2 * self.margin))), max(1, round(sh * (1 - 2 * self.margin))))
        labels = np.zeros((sh, sw), np.uint8)
        # GrabCut's GMM initialisation draws from cv2's global RNG: seed it per sample.
        cv2.setRNGSeed(int(sample.rng("segmentation.grabcut").integers(2**31)))
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(bgr, labels, rect, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_RECT)
        hard = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
        hard = _largest_component(hard)
        mask = resize(hard, (h, w))
        mask = gaussian_blur(mask, self.feather * max(h, w))
        set_mask(sample, mask)


def _largest_component(binary: np.ndarray) -> np.ndarray:
    """Keep the largest connected blob (GrabCut leaves specks in busy backgrounds)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    if count <= 2:
        return binary
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == biggest).astype(np.float32)


class MaskFolder(Stage):
    """Masks you already have: ``<path>/<stem>.png`` for each input ``<stem>.<ext>``.

    Any size (resized to the image), grey levels kept as soft alpha; colour or alpha-channel
    masks use their luminance, or their alpha channel when it is not fully opaque.
    """

    name = "segmentation"
    provides = ("mask", "foreground", "background")

    def __init__(self, path: str | None = None, suffix: str = ".png"):
        if not path:
            raise ConfigError("segmentation.path: required with segmentation=mask_folder, e.g. segmentation.path=/data/masks")
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise ConfigError(f"segmentation.path={path}: not a directory")
        self.suffix = suffix

    def mask_path(self, sample: Sample) -> Path:
        return self.path / (Path(sample.source).stem + self.suffix)

    def process_sample(self, sample: Sample) -> None:
        path = self.mask_path(sample)
        if not path.is_file():
            raise SampleError(f"no mask {path} for {sample.source}")
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise SampleError(f"mask {path} is not a readable image")
        if raw.ndim == 3 and raw.shape[2] == 4 and raw[:, :, 3].min() < raw[:, :, 3].max():
            raw = raw[:, :, 3]
        elif raw.ndim == 3:
            raw = cv2.cvtColor(raw[:, :, :3], cv2.COLOR_BGR2GRAY)
        scale = 65535.0 if raw.dtype == np.uint16 else 255.0
        mask = raw.astype(np.float32) / scale
        set_mask(sample, resize(mask, sample.image.shape[:2]))
