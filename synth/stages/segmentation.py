"""Stage 1, weight-free: separate the subject from the background.

Every segmentation stage sets ``mask`` (soft alpha in [0, 1]), ``foreground`` and
``background`` through :func:`set_mask`, so model-backed implementations share the same ending,
and a mask that marks (almost) no subject fails its sample whichever method made it: the pair
would be the input unchanged with a caption claiming a shadow.
"""

from __future__ import annotations

from pathlib import Path

import os

import cv2
import numpy as np

from synth.decode import Limits, check_header, orient
from synth.errors import ConfigError, SampleError
from synth.imaging import gaussian_blur, resize
from synth.params import setting
from synth.sample import Sample
from synth.stages.base import Stage


MIN_SUBJECT = 0.001  # a mask covering less of the frame than this (0.1%) marks no subject


def empty_mask_reason(mask: np.ndarray, what: str = "the mask") -> str | None:
    """Why ``mask`` (bool or [0, 1]) is unusable, or None: its subject covers (almost) nothing,
    or no pixel is even half subject (a label mask of levels 0 and 3 read as soft alpha: its
    shadow would be invisible). A full-frame mask is usable: every stage handles a subject
    without background."""
    covered = float(np.mean(mask, dtype=np.float64))
    if covered < MIN_SUBJECT:
        return f"{what} marks no subject: it covers {covered:.3%} of the frame (less than {MIN_SUBJECT:.1%})"
    strongest = float(np.max(mask))
    if strongest < 0.5:
        return (f"{what} marks no subject: no pixel reaches 50 % (the strongest is {strongest:.1%}); a mask is soft "
                f"alpha, white (255) = subject")
    return None


def set_subject_mask(sample: Sample, mask: np.ndarray, what: str) -> None:
    """:func:`set_mask` for a segmentation stage's result: an (almost) empty mask fails the sample."""
    reason = empty_mask_reason(mask, what)
    if reason:
        raise SampleError(reason)
    set_mask(sample, mask)


def set_mask(sample: Sample, mask: np.ndarray) -> None:
    """Store a soft mask and the stage-1 foreground (the image: written with the mask as alpha).
    The stage-1 background is made from them when it is written (:func:`synth.imaging.cut_out`)."""
    sample.mask = np.clip(mask.astype(np.float32, copy=False), 0.0, 1.0)
    sample.foreground = sample.image



class GrabCut(Stage):
    """OpenCV GrabCut initialised with a centred rectangle: a classical, weight-free cut-out
    that works for the usual centred subject (portraits, product shots).

    Runs on a copy whose long side is ``work_size`` px, then resizes the mask to the image and
    softens its edge with a Gaussian of ``feather`` (fraction of the long side) so composites
    blend. Smaller images are enlarged to ``work_size`` too: at a hundred pixels GrabCut's graph
    cut often labels everything background (an empty mask, which fails the sample).
    """

    name = "segmentation"
    provides = ("mask", "foreground")

    def __init__(self, margin: float = 0.08, iterations: int = 3, work_size: int = 320,
                 feather: float = 0.004):
        self.margin = setting("segmentation.margin", margin, 0.0, 0.5, hi_open=True)
        # bounded: a typo (iterations=30000, work_size=100000) would hang every worker on its first
        # image, or allocate tens of GB per worker (a 64 px photo is enlarged to work_size)
        self.iterations = setting("segmentation.iterations", iterations, 1, 100, integer=True)
        self.work_size = setting("segmentation.work_size", work_size, 32, 8192, integer=True)
        self.feather = setting("segmentation.feather", feather, 0.0, 0.1)

    def process_sample(self, sample: Sample) -> None:
        h, w = sample.image.shape[:2]
        scale = self.work_size / max(h, w)
        sh, sw = max(8, round(h * scale)), max(8, round(w * scale))
        small = resize(sample.image, (sh, sw))
        bgr = np.ascontiguousarray(small[:, :, ::-1])
        # at least one pixel of background on the top and left (margin 0, or a margin that rounds to
        # 0 px): GrabCut needs background samples, and failed every image without them
        x, y = max(1, round(sw * self.margin)), max(1, round(sh * self.margin))
        rect = (x, y, max(1, min(round(sw * (1 - 2 * self.margin)), sw - x)),
                max(1, min(round(sh * (1 - 2 * self.margin)), sh - y)))
        labels = np.zeros((sh, sw), np.uint8)
        # GrabCut's GMM initialisation draws from cv2's global RNG: seed it per sample.
        cv2.setRNGSeed(int(sample.rng("segmentation.grabcut").integers(2**31)))
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(bgr, labels, rect, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_RECT)
        hard = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
        hard = _largest_component(hard)
        mask = resize(hard, (h, w))
        mask = gaussian_blur(mask, self.feather * max(h, w))
        set_subject_mask(sample, mask, "grabcut's mask")  # uniform or tiny images give an empty one


def _largest_component(binary: np.ndarray) -> np.ndarray:
    """Keep the largest connected blob (GrabCut leaves specks in busy backgrounds)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    if count <= 2:
        return binary
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == biggest).astype(np.float32)


class MaskFolder(Stage):
    """Masks you already have: ``<path>/<stem><suffix>`` for each input ``<stem>.<ext>``.

    Lookup, so that equal stems in different sub-folders get their own masks: the mask folder
    may mirror the input tree. For an input ``.../a/b/x.jpg`` the first of
    ``<path>/.../a/b/x.png``, ..., ``<path>/b/x.png``, ``<path>/x.png`` that exists is used
    (the longest matching tail of the input path). A flat mask folder therefore gives every
    input named ``x.*`` the same ``x.png``: with duplicate stems, mirror the sub-folders.

    Modes: grey levels are soft alpha; 8- or 16-bit; a 0/1 label mask (max value 1) is taken as
    binary; float masks are clipped to [0, 1]; colour masks use their luminance, or their alpha
    channel when it is not uniform. Size: resized to the image (which may itself have been
    resized by ``data.max_side``) when the aspect ratio agrees; a mask of another shape is
    refused, since it belongs to another image (or to the image before EXIF rotation).

    A mask file gets the input's header checks before OpenCV reads it (allowed formats, JPEG
    scans, ``max_pixels``: ``data.max_pixels`` by default), and is only ever looked up inside
    ``path``: ``..`` in an input's path (``data.path=../photos``) is not followed out of it.
    """

    name = "segmentation"
    provides = ("mask", "foreground")

    def __init__(self, path: str | None = None, suffix: str = ".png", max_pixels: int | None = 100_000_000):
        if not path:
            raise ConfigError("segmentation.path: required with segmentation=mask_folder, e.g. segmentation.path=/data/masks")
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise ConfigError(f"segmentation.path={path}: not a directory")
        if not isinstance(suffix, str) or not suffix or "/" in suffix or os.sep in suffix or "\0" in suffix:
            raise ConfigError(f"segmentation.suffix={suffix}: must be the text after each input's stem in its "
                              "mask's file name, without a folder, e.g. .png or _mask.png")
        self.suffix = suffix
        max_pixels = setting("segmentation.max_pixels", max_pixels, 1, integer=True, optional=True)  # Limits names data.*
        self.limits = Limits(min_side=1, max_side=None, max_pixels=max_pixels,
                             formats=("PNG", "TIFF", "BMP", "JPEG", "WEBP"))  # what OpenCV reads

    def mask_path(self, sample: Sample) -> Path:
        """The mask for ``sample``: the longest tail of its path that exists here, else the flat name."""
        source = Path(sample.source)
        parts = source.with_name(source.stem + self.suffix).parts
        parts = parts[1:] if source.is_absolute() else parts
        parts = tuple(p for p in parts if p not in ("..", "."))  # every candidate stays inside self.path
        for start in range(len(parts)):
            candidate = self.path.joinpath(*parts[start:])
            if candidate.is_file():
                return candidate
        return self.path / parts[-1]

    def process_sample(self, sample: Sample) -> None:
        path = self.mask_path(sample)
        root = os.path.normpath(self.path.absolute())
        if os.path.commonpath([root, os.path.normpath(path.absolute())]) != root:  # defence in depth
            raise SampleError(f"mask {path} is outside segmentation.path={self.path}")
        if not path.is_file():
            raise SampleError(f"no mask {path} for {sample.source}")
        if _same_file(path, sample.source):  # segmentation.path = data.path, suffix = the photos' extension
            raise SampleError(f"mask {path} is the input itself: segmentation.path holds the photos; name the masks "
                              f"with another segmentation.suffix (e.g. _mask.png), or move them")
        try:
            orientation = check_header(path, self.limits)[2]
        except SampleError as err:
            raise SampleError(f"mask {path} is not a readable image: {err}") from None
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise SampleError(f"mask {path} is not a readable image")
        raw = orient(raw, orientation)  # as the input: a mask file's own EXIF orientation is applied too
        mask = _mask_values(raw, path)
        (mh, mw), (h, w) = mask.shape, sample.image.shape[:2]
        if abs(mh - mw * h / w) > max(1.0, 0.02 * mh):
            raise SampleError(f"mask {path} is {mw}x{mh} but the image is {w}x{h}: the aspect ratio differs")
        set_subject_mask(sample, resize(mask, (h, w)), f"mask {path}")


def _same_file(a: Path, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _mask_values(raw: np.ndarray, path: Path) -> np.ndarray:
    """Any mask file's pixels -> HxW float32 in [0, 1]."""
    if raw.ndim == 3:
        channels = raw.shape[2]
        alpha = raw[:, :, channels - 1] if channels in (2, 4) else None
        if alpha is not None and alpha.min() < alpha.max():
            raw = alpha
        elif channels >= 3:
            raw = cv2.cvtColor(np.ascontiguousarray(raw[:, :, :3]), cv2.COLOR_BGR2GRAY)
        else:
            raw = raw[:, :, 0]
    if raw.dtype in (np.uint8, np.uint16):
        top = 1.0 if raw.max() <= 1 else 255.0 if raw.dtype == np.uint8 else 65535.0  # 0/1 labels
        return raw.astype(np.float32) / top
    if raw.dtype in (np.float32, np.float64):
        return np.clip(np.nan_to_num(raw.astype(np.float32)), 0.0, 1.0)
    raise SampleError(f"mask {path} has unsupported pixel type {raw.dtype}")


class AlphaMask(Stage):
    """The input's own alpha channel as the mask (``segmentation=alpha``): cut-outs and product
    shots saved with transparency (RGBA, grey+alpha, or a palette with a transparent colour).

    The decoder keeps the file's alpha on ``Sample.alpha`` (oriented and resized with the
    image). An input without alpha, or with a uniform one (fully opaque), fails with a reason.
    """

    name = "segmentation"
    provides = ("mask", "foreground")

    def process_sample(self, sample: Sample) -> None:
        alpha = sample.alpha
        if alpha is None:
            raise SampleError("segmentation=alpha: the input has no alpha channel")
        lo, hi = int(alpha.min()), int(alpha.max())
        if lo == hi:
            raise SampleError(f"segmentation=alpha: the alpha channel is uniform ({lo}), so it marks no subject")
        set_subject_mask(sample, alpha.astype(np.float32) / 255.0, "the alpha channel")
