"""One sample's images as the writers store them, each encoded at most once per job.

Several writers in one job (``writer=folder writers=[webdataset,hf]``) ask for the same images
in the same format; the runner hands them one ``EncodedImages`` per sample, so the PNG of the
composite is made once and shared by the folder, the tar shard and the parquet row.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from synth.imaging import cut_out, encode, linear_to_srgb, to_uint8, with_alpha
from synth.sample import Sample


def _layered(rgb: np.ndarray | None, alpha: np.ndarray | None) -> np.ndarray | None:
    return None if rgb is None or alpha is None else with_alpha(rgb, alpha)


# Every image a writer may store, named by its key in the per-sample record, from the sample and
# its mask as uint8 (made once per sample: the mask and every layer use it). Layers of the
# subject carry the mask as alpha; masks and mattes are 8-bit grey.
LAYERS: dict[str, Callable[[Sample, np.ndarray | None], np.ndarray | None]] = {
    "original": lambda s, alpha: s.image,
    "mask": lambda s, alpha: alpha,
    "foreground": lambda s, alpha: _layered(s.foreground, alpha),
    "background": lambda s, alpha: None if s.image is None or s.mask is None else cut_out(s.image, s.mask),
    "albedo": lambda s, alpha: _layered(s.albedo, alpha),
    # stage 2's decomposition (linear light) as sRGB: 1 = white = the albedo unchanged; clipped at 1
    "shading": lambda s, alpha: _layered(None if s.shading is None else linear_to_srgb(s.shading), alpha),
    "residual": lambda s, alpha: _layered(None if s.residual is None else linear_to_srgb(s.residual), alpha),
    "degraded_foreground": lambda s, alpha: _layered(s.degraded, alpha),
    "shadow_matte": lambda s, alpha: None if s.shadow_matte is None else to_uint8(s.shadow_matte),
    "composite_image": lambda s, alpha: s.composite,
}
INTERMEDIATES = ("foreground", "background", "albedo", "shading", "residual", "degraded_foreground", "shadow_matte")


class EncodedImages:
    """Lazily encoded images of one sample, cached by (layer, format, settings).

    Used by one thread at a time: the runner calls a sample's writers one after another.
    """

    def __init__(self, sample: Sample):
        self.sample = sample
        self._cache: dict[tuple, bytes | None] = {}

    @functools.cached_property
    def _alpha(self) -> np.ndarray | None:
        return None if self.sample.mask is None else to_uint8(self.sample.mask)

    def get(self, name: str, fmt: str = "png", png_compress_level: int = 1, quality: int = 95,
            png_encoder: str = "auto") -> bytes | None:
        """The encoded bytes of layer ``name``, or None when no stage produced it."""
        # Settings a format ignores are left out of the key, so e.g. jpg at any PNG level is shared.
        png = fmt == "png"
        key = (name, fmt, png_compress_level if png else None, None if png else quality, png_encoder if png else None)
        if key not in self._cache:
            image = LAYERS[name](self.sample, self._alpha)
            self._cache[key] = None if image is None else encode(image, fmt, png_compress_level, quality, png_encoder)
        return self._cache[key]
