"""Decode one input file into RGB (plus its alpha channel), refusing bad files with a one-line reason.

Order of work, so that a bad file costs as little as possible:

1. empty file, or content that is not an image of an allowed format (``Limits.formats``, the
   formats of ``data.extensions``): refused without decoding, and no other Pillow plugin (EPS,
   which runs Ghostscript, PSD, ...) ever sees the file whatever its name;
2. size read from the header: ``max_pixels`` (decompression bombs) and ``min_side`` are
   checked before a single pixel is decoded; a JPEG with more scans than ``MAX_JPEG_SCANS``
   (each progressive scan is one more pass over the whole image) is refused undecoded;
3. decode (a truncated or corrupt file is refused here); JPEGs larger than ``max_side`` are
   decoded at a reduced DCT scale, which is both faster and smaller;
4. EXIF orientation, before anything else looks at the pixels;
5. every mode to 8-bit sRGB RGB: greyscale and palette expanded, 16-bit scaled (not clipped),
   CMYK converted (without its ICC profile), alpha kept separately;
6. long side above ``max_side``: resized (area averaging), alpha with it.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from synth.errors import ConfigError, SampleError, one_line

# synth checks ``max_pixels`` itself, from the header and with the size in the message; PIL's
# own check would refuse (or warn) at its fixed limit with a less useful message.
Image.MAX_IMAGE_PIXELS = None

# What a file's extension says its format is, to notice content that disagrees.
# Also the allow-list: a file is opened only by the Pillow plugins of its job's extensions.
EXTENSION_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG",
                     ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".gif": "GIF"}
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")  # those of data.extensions' default
# libjpeg writes 10 scans for a progressive colour JPEG, mozjpeg and jpegtran scripts a few
# dozen; a crafted file repeats scans by the thousand and takes minutes to decode. Same order
# as libjpeg-turbo's own scan limit (TJFLAG_LIMITSCANS: 500).
MAX_JPEG_SCANS = 256
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class DecodeError(SampleError):
    """This file cannot be used as an input; the message is the one-line reason."""


@dataclass(frozen=True)
class Limits:
    """Input size limits (the ``data.*`` keys of the same names). ``None`` switches one off."""

    min_side: int = 16  # refuse images with a side shorter than this (1x1, thin strips)
    max_side: int | None = 4096  # resize so that the long side is at most this
    max_pixels: int | None = 100_000_000  # refuse larger images from their header, undecoded
    formats: tuple[str, ...] = DEFAULT_FORMATS  # Pillow formats a file may have: formats_for(data.extensions)

    def __post_init__(self):
        if not isinstance(self.min_side, int) or self.min_side < 1:
            raise ConfigError(f"data.min_side={self.min_side}: must be an integer >= 1")
        if self.max_side is not None and (not isinstance(self.max_side, int) or self.max_side < self.min_side):
            raise ConfigError(f"data.max_side={self.max_side}: must be null or an integer "
                              f">= data.min_side ({self.min_side})")
        if self.max_pixels is not None and (not isinstance(self.max_pixels, int) or self.max_pixels < 1):
            raise ConfigError(f"data.max_pixels={self.max_pixels}: must be null or an integer >= 1")


NO_SIZE_LIMITS = Limits(min_side=1, max_side=None)  # bombs are still refused


def formats_for(extensions: Any) -> tuple[str, ...]:
    """The allow-list of Pillow formats for a job's ``data.extensions`` (an extension synth has
    no format for adds none: such files are refused with a reason)."""
    found = (EXTENSION_FORMATS.get(e.lower() if e.startswith(".") else "." + e.lower()) for e in extensions)
    return tuple(dict.fromkeys(f for f in found if f))


@dataclass
class Decoded:
    rgb: np.ndarray  # HxWx3 uint8 sRGB, oriented and resized
    alpha: np.ndarray | None  # HxW uint8 when the file has an alpha channel (or palette transparency)
    info: dict[str, Any] = field(default_factory=dict)  # what the source was and what was done to it
    notes: list[str] = field(default_factory=list)  # what was converted, for a debug log line
    warnings: list[str] = field(default_factory=list)  # surprises worth a warning (wrong extension)


def decode(src: str | os.PathLike | bytes, limits: Limits = Limits()) -> Decoded:
    """Decode ``src`` (a path or the file's bytes) or raise :class:`DecodeError`."""
    with _open(src, limits) as im:
        _check_header(im, src, limits)
        return _decode_open(im, src, limits)


def check_header(path: str | os.PathLike, limits: Limits) -> tuple[int, int, int]:
    """The checks :func:`decode` makes before decoding (format, size, JPEG scans), for files that
    another decoder reads (masks through OpenCV); returns (width, height, EXIF orientation: 1 when
    none) or raises DecodeError. OpenCV's IMREAD_UNCHANGED ignores the orientation: see :func:`orient`."""
    with _open(path, limits) as im:
        _check_header(im, path, limits)
        try:
            orientation = _orientation(im)
        except Exception:  # noqa: BLE001 - a corrupt EXIF block: the pixels as stored
            orientation = 1
        return (*im.size, orientation)


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation to apply, 2 to 8; else 1: none, upright, or not an orientation value
    (left as stored, as Pillow's ``exif_transpose`` leaves it). One rule for photos and masks."""
    value = im.getexif().get(0x0112, 1)  # EXIF Orientation
    return value if value in (2, 3, 4, 5, 6, 7, 8) else 1


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` (HxW or HxWxC, as stored in the file) turned as EXIF ``orientation`` says, the way
    :func:`decode` turns an input (Pillow's ``ImageOps.exif_transpose``)."""
    if orientation in (5, 6, 7, 8):
        pixels = pixels.swapaxes(0, 1)  # transposed: then a flip makes each rotation
    flip_rows, flip_cols = {2: (False, True), 3: (True, True), 4: (True, False), 5: (False, False),
                            6: (False, True), 7: (True, True), 8: (True, False)}.get(orientation, (False, False))
    return np.ascontiguousarray(pixels[::-1 if flip_rows else 1, ::-1 if flip_cols else 1])


def _open(src: str | os.PathLike | bytes, limits: Limits) -> Image.Image:
    data = src if isinstance(src, bytes) else None
    try:
        size = len(data) if data is not None else os.path.getsize(src)
    except OSError as err:
        raise DecodeError(f"cannot open: {err.strerror or err}") from None
    if size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        return Image.open(io.BytesIO(data) if data is not None else src, formats=limits.formats)
    except UnidentifiedImageError:
        reason = _not_an_image(data if data is not None else _head(src))
        raise DecodeError(f"{reason} (allowed formats: {', '.join(limits.formats)})") from None
    except OSError as err:  # with an errno: the file system's complaint; without: the parser's
        reason = f"cannot open: {err.strerror}" if err.errno else f"corrupt or truncated header: {_one_line(err)}"
        raise DecodeError(reason) from None
    except Exception as err:  # noqa: BLE001 - parsers raise SyntaxError, ValueError, struct.error ...
        raise DecodeError(f"corrupt header: {_one_line(err)}") from None


def _check_header(im: Image.Image, src: Any, limits: Limits) -> None:
    """Refuse, from the header alone, what would cost too much to decode."""
    w, h = im.size
    if limits.max_pixels is not None and w * h > limits.max_pixels:
        raise DecodeError(f"{w}x{h} = {w * h} pixels exceeds data.max_pixels={limits.max_pixels} "
                          "(possible decompression bomb); not decoded")
    if im.format in ("JPEG", "MPO"):
        scans = jpeg_scans(src if isinstance(src, bytes) else Path(src).read_bytes())
        if scans > MAX_JPEG_SCANS:
            raise DecodeError(f"JPEG with {scans} scans, more than any encoder writes ({MAX_JPEG_SCANS}); "
                              "possible decoding-time bomb; not decoded")


_JPEG_MARKER = re.compile(rb"\xff[^\x00]")  # 0xFF 0x00 in entropy-coded data is a data byte


def jpeg_scans(data: bytes) -> int:
    """How many scans (SOS segments) a JPEG file has."""
    quick = data.count(b"\xff\xda")  # an upper bound: the usual case ends here
    if quick <= MAX_JPEG_SCANS:
        return quick
    # Walk the markers (found by a regex, in C: ~1 s for 40 MB of entropy-coded data): segments
    # are skipped by their length, since an EXIF thumbnail or ICC profile may hold the same bytes.
    count, i = 0, 2
    while (m := _JPEG_MARKER.search(data, i)) is not None:
        marker, i = data[m.start() + 1], m.end()
        if marker == 0xFF:  # fill bytes before a marker
            i -= 1
        elif marker == 0xD9:  # EOI
            break
        elif not (0xD0 <= marker <= 0xD8 or marker == 0x01):  # RSTn, SOI and TEM have no length
            count += marker == 0xDA
            i += int.from_bytes(data[i:i + 2], "big")
    return count


def _decode_open(im: Image.Image, src: Any, limits: Limits) -> Decoded:
    fmt, mode, (w, h) = im.format, im.mode, im.size
    info: dict[str, Any] = {"format": fmt, "mode": mode, "width": w, "height": h}
    notes: list[str] = []
    warnings: list[str] = []
    out_w, out_h = _fit(w, h, limits.max_side)
    if min(out_w, out_h) < limits.min_side:
        resized = f" ({out_w}x{out_h} after data.max_side={limits.max_side})" if (out_w, out_h) != (w, h) else ""
        raise DecodeError(f"{w}x{h}{resized} has a side shorter than data.min_side={limits.min_side}")
    if not isinstance(src, bytes):
        expected = EXTENSION_FORMATS.get(Path(src).suffix.lower())
        if expected and fmt and expected != {"MPO": "JPEG"}.get(fmt, fmt):  # MPO: a camera's JPEG
            warnings.append(f"content is {fmt} but the name ends in {Path(src).suffix}; decoded as {fmt}")

    if fmt == "JPEG" and (out_w, out_h) != (w, h) and mode in ("RGB", "L"):
        im.draft(mode, (out_w, out_h))  # DCT scaling: decode at 1/2, 1/4 or 1/8, still >= the target
    try:
        im.load()
    except Exception as err:  # noqa: BLE001 - every decoder complaint is a bad file
        raise DecodeError(f"corrupt or truncated {fmt or 'image'} data: {_one_line(err)}") from None

    orientation = _orientation(im)
    if orientation != 1:
        info["exif_orientation"] = orientation
        im = ImageOps.exif_transpose(im)
    try:
        rgb, alpha = _to_rgb8(im)
    except Exception as err:  # noqa: BLE001
        raise DecodeError(f"cannot convert {mode} pixels to RGB: {_one_line(err)}") from None
    if mode != "RGB":
        notes.append(f"converted {mode} to RGB" + (" (alpha kept)" if alpha is not None else ""))

    out_w, out_h = _fit(rgb.shape[1], rgb.shape[0], limits.max_side)
    if (out_w, out_h) != (rgb.shape[1], rgb.shape[0]):
        rgb = cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_AREA)
        if alpha is not None:
            alpha = cv2.resize(alpha, (out_w, out_h), interpolation=cv2.INTER_AREA)
        info["resized_to"] = [out_w, out_h]
        notes.append(f"resized from {w}x{h} to {out_w}x{out_h} (data.max_side={limits.max_side})")
    return Decoded(np.ascontiguousarray(rgb), alpha, info, notes, warnings)


def _fit(w: int, h: int, max_side: int | None) -> tuple[int, int]:
    """(w, h) scaled down so that the long side is at most ``max_side``."""
    if max_side is None or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _to_rgb8(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Any PIL mode -> (HxWx3 uint8, HxW uint8 alpha or None)."""
    mode = im.mode
    if mode in SIXTEEN_BIT_MODES:
        # PIL's convert("RGB") clips 16-bit values at 255 (a white image); scale instead.
        grey = np.asarray(im).astype(np.float32)
        grey = np.clip(grey / 257.0 + 0.5, 0, 255).astype(np.uint8)
        return np.dstack([grey] * 3), None
    if mode == "F":  # float TIFF: [0, 1] when it fits there, else taken as 0..255
        grey = np.asarray(im, dtype=np.float32)
        grey = grey * 255.0 if np.nanmax(grey) <= 1.0 else grey
        grey = np.clip(np.nan_to_num(grey) + 0.5, 0, 255).astype(np.uint8)
        return np.dstack([grey] * 3), None
    has_alpha = mode in ALPHA_MODES or "transparency" in im.info
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"))
        return rgba[:, :, :3], np.ascontiguousarray(rgba[:, :, 3])
    return np.asarray(im if mode == "RGB" else im.convert("RGB")), None


def _head(path: Any) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(512)
    except OSError:
        return b""


def _not_an_image(head: bytes) -> str:
    head = head[:512]
    # Image formats start with binary magic numbers; text has no control bytes but whitespace.
    looks_like_text = bool(head.strip()) and all(b >= 32 or b in b"\t\n\r\f" for b in head)
    return "not an image: " + ("the content is text" if looks_like_text else "unrecognised content")


def _one_line(err: BaseException) -> str:
    return one_line(err) or type(err).__name__
