"""Stage 3: synthesise a degradation on the subject. Light maths runs in linear RGB."""

from __future__ import annotations

import numpy as np

from synth.errors import ConfigError
from synth.imaging import gaussian_blur, kernel_to_sigma, linear_to_srgb, srgb_to_linear
from synth.params import Param
from synth.sample import Sample
from synth.stages.base import Stage
from synth.stages.patterns import PATTERNS

BASES = ("albedo", "foreground")


class HardShadow(Stage):
    """A cast shadow from an occluder pattern, on the subject only.

    ``base=albedo`` (the reference's choice) shadows the albedo, so the subject also loses its
    original light; ``base=foreground`` adds the shadow to the original subject (shadow-removal
    pairs). ``blur`` is an odd Gaussian kernel size for a 1024 px image side (scaled with the
    image); ``opacity`` is the fraction of light the umbra blocks, applied in linear RGB.
    """

    name = "shadow"
    provides = ("degraded", "shadow_matte")

    def __init__(self, patterns=None, opacity=(0.2, 0.5), blur=(31, 111), base: str = "albedo",
                 reference_size: int = 1024):
        self.patterns = Param.option("shadow.patterns", patterns, list(PATTERNS))
        self.opacity = Param.number("shadow.opacity", opacity, 0.0, 1.0)
        self.blur = Param.number("shadow.blur", blur, 1, 1001, integer=True, odd=True)
        if base not in BASES:
            raise ConfigError(f"shadow.base={base}: choose from {', '.join(BASES)}")
        if int(reference_size) < 16:
            raise ConfigError(f"shadow.reference_size={reference_size}: must be >= 16")
        self.base, self.reference_size = base, int(reference_size)
        self.requires = ("image", "mask") + (("albedo",) if base == "albedo" else ())

    def process_sample(self, sample: Sample) -> None:
        h, w = sample.image.shape[:2]
        name = self.patterns.sample(sample.seed, sample.index)
        opacity = self.opacity.sample(sample.seed, sample.index)
        blur = self.blur.sample(sample.seed, sample.index)
        hard, pattern_params = PATTERNS[name](sample.rng(f"shadow.pattern.{name}"), h, w)
        sigma = kernel_to_sigma(blur) * max(h, w) / self.reference_size
        matte = np.clip(gaussian_blur(hard, sigma), 0.0, 1.0) * sample.mask
        base = sample.albedo if self.base == "albedo" else sample.image
        linear = srgb_to_linear(base)
        linear *= (1.0 - opacity * matte)[..., None]
        sample.degraded = linear_to_srgb(linear)
        sample.shadow_matte = matte
        sample.degradation_type = "hard_shadow"
        sample.params[self.name] = {"type": "hard_shadow", "base": self.base, "pattern": name,
                                    "opacity": opacity, "blur": blur, "sigma_px": sigma,
                                    "pattern_params": pattern_params}
