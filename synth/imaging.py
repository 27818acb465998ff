"""Pixel helpers shared by the stages: colour transfer functions, fast blurs, resizing, codecs."""

from __future__ import annotations

import functools
import logging
from typing import Any

import cv2
import numpy as np

from synth.decode import NO_SIZE_LIMITS, decode
from synth.errors import ConfigError, one_line

log = logging.getLogger("synth")

# cv2's own thread pool fights our decode/encode threads on small machines; the runner
# parallelises across samples instead.
cv2.setNumThreads(1)

# --- sRGB <-> linear ---------------------------------------------------------------------------
_SRGB_TO_LINEAR = np.array(
    [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in np.arange(256) / 255.0],
    dtype=np.float32,
)
_LINEAR_LEVELS = 65535
_lin = np.arange(_LINEAR_LEVELS + 1, dtype=np.float64) / _LINEAR_LEVELS
_LINEAR_TO_SRGB = np.round(
    255.0 * np.where(_lin <= 0.0031308, 12.92 * _lin, 1.055 * np.power(_lin, 1 / 2.4) - 0.055)
).astype(np.uint8)
del _lin


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> float32 linear RGB in [0, 1] (exact, by table; cv2.LUT is ~5x numpy indexing)."""
    if image.size == 0:  # cv2.LUT returns None for empty input
        return _SRGB_TO_LINEAR[image]
    return cv2.LUT(np.ascontiguousarray(image), _SRGB_TO_LINEAR)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """float linear RGB -> uint8 sRGB, clipped, through a 16-bit table (max error < 0.1 level)."""
    q = np.clip(linear, 0.0, 1.0)
    q *= np.float32(_LINEAR_LEVELS)
    q += np.float32(0.5)
    return np.take(_LINEAR_TO_SRGB, q.astype(np.uint16), mode="clip")  # in range: "clip" skips the bounds check


# --- blurs and resizing ------------------------------------------------------------------------
def kernel_to_sigma(ksize: int) -> float:
    """OpenCV's sigma for an odd Gaussian kernel size (what cv2.GaussianBlur uses for sigma=0)."""
    return 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8


def gaussian_blur(image: np.ndarray, sigma: float, max_sigma: float = 4.0, then=None) -> np.ndarray:
    """Gaussian blur whose cost does not grow with sigma.

    Large sigmas blur a downsampled copy (so that at most ``max_sigma`` px of blur is done at
    the small size) and upsample it again; the result is smooth, so the resampling error is
    at most about one 8-bit level (1.35 on hard edges at sigma 12, 0.2 on average; see
    tests/test_imaging.py). Small sigmas blur directly.
    ``then`` (e.g. ``np.log``) is applied to the blurred values before upsampling, which is
    cheaper than at full size and as accurate, since the blurred image is smooth.
    """
    then = then or (lambda x: x)
    if sigma <= 0:
        return then(image)
    h, w = image.shape[:2]
    factor = max(1.0, sigma / max_sigma)
    if factor < 2.0:
        return then(cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT))
    small_size = (max(1, round(w / factor)), max(1, round(h / factor)))
    small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
    # INTER_AREA averaging already blurs by about factor/sqrt(12) px per axis.
    residual = max(0.0, (sigma / factor) ** 2 - 1 / 12.0) ** 0.5
    small = then(cv2.GaussianBlur(small, (0, 0), residual, borderType=cv2.BORDER_REFLECT))
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def fit_size(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(h, w) scaled down so that the long side is at most ``long_side`` (never enlarged)."""
    f = min(1.0, long_side / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


def shrink(image: np.ndarray, long_side: int) -> np.ndarray:
    """``image`` resized so that its long side is at most ``long_side``; itself if it already is."""
    return resize(image, fit_size(*image.shape[:2], long_side))


def resize(image: np.ndarray, size_hw: tuple[int, int], smooth: bool = True) -> np.ndarray:
    """Resize to (height, width): area averaging when shrinking, bilinear when enlarging."""
    h, w = size_hw
    if image.shape[:2] == (h, w):
        return image
    shrinking = h * w < image.shape[0] * image.shape[1]
    interp = (cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR) if smooth else cv2.INTER_NEAREST
    return cv2.resize(image, (w, h), interpolation=interp)


# --- codecs ------------------------------------------------------------------------------------
def open_rgb(data: bytes | str) -> np.ndarray:
    """Decode to HxWx3 uint8 sRGB, EXIF orientation first, any mode converted (see synth.decode);
    no size limits but the decompression-bomb one. Raises synth.decode.DecodeError."""
    return decode(data, NO_SIZE_LIMITS).rgb


def to_uint8(values: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 with rounding."""
    out = np.clip(values, 0.0, 1.0)  # a new array, then in place: no more temporaries
    out *= 255.0
    out += 0.5
    return out.astype(np.uint8)


def with_alpha(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 + HxW alpha (float in [0, 1], or uint8 as :func:`to_uint8` makes it) -> HxWx4 uint8 RGBA.

    Colour is zeroed where alpha is 0: those pixels are invisible, and flat zeros encode faster
    and 35-40% smaller than the hidden image content (OpenCV and fpng alike).
    """
    a = alpha if alpha.dtype == np.uint8 else to_uint8(alpha)
    rgba = np.zeros((*a.shape, 4), np.uint8)
    cv2.copyTo(cv2.merge([rgb, a]), a, rgba)  # where alpha > 0; 6x faster than dstack + boolean indexing
    return rgba


def cut_out(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The stage-1 background: ``image`` with the subject cut out, image x (1 - mask), rounded.
    Only written and logged, never read by a stage, so it is made then: a sample in flight does
    not carry it, nor does it cross from a model lane back to a worker process."""
    background = image.astype(np.float32)  # in place from here: no more temporaries
    background *= (1.0 - mask)[..., None]
    background += 0.5
    return background.astype(np.uint8)


PNG_ENCODERS = ("auto", "fpng", "cv2")


@functools.cache
def _import_fpng() -> tuple[Any, str | None]:
    """(the fpng module, None), or (None, why it cannot be imported)."""
    try:
        import fpng
    except Exception as err:  # noqa: BLE001 - ImportError, or a wheel whose binary does not load
        return None, f"{type(err).__name__}: {one_line(err)}"
    return fpng, None


@functools.cache
def _fpng_or_warn() -> Any:
    """fpng for ``png_encoder=auto``, or None after one warning line (OpenCV encodes instead)."""
    fpng, why = _import_fpng()
    if fpng is None:
        log.warning("png_encoder=auto: fpng cannot be imported (%s); encoding every PNG with OpenCV "
                    "(slower, same pixels). pip install fpng to fix", why)
    return fpng


def check_png_encoder(key: str, value: str) -> str:
    """Validate a ``png_encoder`` setting before any image is read (ConfigError naming ``key``)
    and return the one to use: ``fpng`` must be importable; ``auto`` without fpng warns once, now,
    and becomes ``cv2`` (so that worker processes do not look for fpng again, nor warn)."""
    if value not in PNG_ENCODERS:
        raise ConfigError(f"{key}={value}: choose from {', '.join(PNG_ENCODERS)}")
    if value == "fpng" and _import_fpng()[0] is None:
        raise ConfigError(f"{key}=fpng: the fpng package cannot be imported ({_import_fpng()[1]}); "
                          "pip install fpng, or use auto (falls back to OpenCV) or cv2")
    if value == "auto" and _fpng_or_warn() is None:
        return "cv2"
    return value


def png_encoder_for(image: np.ndarray, png_encoder: str = "auto", png_compress_level: int = 1) -> str:
    """Which encoder writes ``image`` as PNG: "fpng" or "cv2".

    fpng takes 8-bit RGB and RGBA only, and has one compression setting (about level 1's, 10-20%
    larger, 5-7x faster), so ``auto`` uses it for those at png_compress_level 0 or 1 and leaves
    masks, grey images and the higher levels (asked for to get smaller files) to OpenCV.
    """
    fpng_can = image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] in (3, 4)
    if png_encoder == "fpng":
        return "fpng" if fpng_can else "cv2"
    if png_encoder == "auto" and fpng_can and png_compress_level <= 1 and _fpng_or_warn() is not None:
        return "fpng"
    return "cv2"


def encode(image: np.ndarray, fmt: str = "png", png_compress_level: int = 1, quality: int = 95,
           png_encoder: str = "auto") -> bytes:
    """Encode HxW, HxWx3 (RGB) or HxWx4 (RGBA) uint8; PNGs of RGB(A) with fpng when
    ``png_encoder`` says so (see ``png_encoder_for``), everything else with OpenCV.

    Either way the PNG is lossless and the same input gives the same bytes. OpenCV releases the
    GIL while encoding; fpng does not, but takes a fifth of the time.
    """
    if fmt == "png" and png_encoder_for(image, png_encoder, png_compress_level) == "fpng":
        fpng, why = _import_fpng()
        if fpng is None:  # png_encoder="fpng" without check_png_encoder
            raise RuntimeError(f"png_encoder=fpng: the fpng package cannot be imported ({why})")
        return fpng.from_ndarray(image)  # RGB(A) order, as our arrays are: no channel swap
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    if fmt == "png":
        # The "up" filter with run-length matching encodes photos ~45% faster than libpng's
        # adaptive filter choice at the same level, and about as small.
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_compress_level), cv2.IMWRITE_PNG_FILTER,
                  cv2.IMWRITE_PNG_FILTER_UP, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    elif fmt in ("jpg", "jpeg"):
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]  # JPEG has no alpha; the mask is written separately
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        fmt = "jpg"
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    ok, buf = cv2.imencode("." + fmt, image, params)
    if not ok:
        raise RuntimeError(f"could not encode image as {fmt}")
    return buf.tobytes()
