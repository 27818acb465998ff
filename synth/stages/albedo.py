"""Stage 2, weight-free: an albedo estimate by multi-scale Retinex."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from synth.errors import ConfigError
from synth.imaging import gaussian_blur
from synth.params import Param, setting
from synth.sample import Sample
from synth.stages.base import Stage


class Retinex(Stage):
    """Multi-scale Retinex as the reference runs it: the mean over ``sigmas`` of
    log(I) - log(G_sigma * I), a simplest colour balance clipping ``balance`` of each tail
    (measured on the subject), then a blend with the original at ratio ``blend``.

    The Gaussians run on downsampled copies (see :func:`synth.imaging.gaussian_blur`), so a
    sigma of 250 px costs about as much as a sigma of 15.
    """

    name = "albedo"
    requires = ("image", "mask")
    provides = ("albedo",)

    def __init__(self, sigmas: Sequence[float] = (15, 80, 250), balance: float = 0.01,
                 blend=(0.15, 0.25)):
        if not isinstance(sigmas, (list, tuple)) or not sigmas or any(  # NaN too; true is no sigma
                isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < math.inf for s in sigmas):
            raise ConfigError(f"albedo.sigmas={sigmas}: expected a list of positive numbers")
        self.balance = setting("albedo.balance", balance, 0.0, 0.5, hi_open=True)
        self.sigmas = [float(s) for s in sigmas]
        self.blend = Param.number("albedo.blend", blend, 0.0, 1.0)

    def process_sample(self, sample: Sample) -> None:
        blend = self.blend.sample(sample.seed, sample.index)
        image = sample.image.astype(np.float32) + 1.0
        log_surround = sum(gaussian_blur(image, sigma, then=np.log) for sigma in self.sigmas)
        msr = np.log(image) - log_surround / len(self.sigmas)
        albedo = _colour_balance(msr, sample.mask, self.balance)  # float64, in [0, 1]
        # (1 - blend) * balanced * 255 + blend * image, rounded; in place: 1024 px images make
        # 25 MB float64 planes, and fresh ones cost more to fault in than to compute
        albedo *= 1.0 - blend
        albedo *= 255.0
        albedo += np.multiply(sample.image, blend)
        np.clip(albedo, 0, 255, out=albedo)
        albedo += 0.5
        sample.albedo = albedo.astype(np.uint8)
        sample.params[self.name] = {"method": "retinex", "sigmas": self.sigmas, "balance": self.balance,
                                    "blend": blend}


def _colour_balance(values: np.ndarray, mask: np.ndarray | None, clip: float) -> np.ndarray:
    """Stretch each channel so that its [clip, 1-clip] quantiles map to [0, 1]."""
    step = max(1, int(np.sqrt(values.shape[0] * values.shape[1] / 65536)))  # ~64k pixels suffice
    sub = values[::step, ::step].reshape(-1, values.shape[2])
    if mask is not None:
        inside = mask[::step, ::step].reshape(-1) > 0.5
        if inside.sum() > 64:
            sub = sub[inside]
    lo, hi = np.quantile(sub, [clip, 1.0 - clip], axis=0)
    span = np.maximum(hi - lo, 1e-6)
    out = np.subtract(values, lo)  # float64: the quantiles are
    out /= span
    return np.clip(out, 0.0, 1.0, out=out)
