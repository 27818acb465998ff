"""Stage 3.5: put the degraded subject back into its scene."""

from __future__ import annotations

import cv2
import numpy as np

from synth.errors import ConfigError
from synth.sample import Sample
from synth.stages.base import Stage

BACKGROUNDS = ("original", "gray")


class AlphaComposite(Stage):
    """composite = layer x mask + background x (1 - mask).

    The background is the ORIGINAL image, not the cut-out ``background`` layer: at a soft mask
    edge the cut-out is already darkened by (1 - mask), and compositing over it again leaves a
    dark halo (the reference's fault). ``background=gray`` composites over ``gray_color``
    instead. The layer is the degraded subject, or the unchanged image when no degradation ran.
    """

    name = "recombine"
    requires = ("image", "mask")
    reads = ("image", "mask", "degraded")  # the degraded subject when stage 3 ran
    provides = ("composite",)

    def __init__(self, background: str = "original", gray_color=(128, 128, 128)):
        if background not in BACKGROUNDS:
            raise ConfigError(f"recombine.background={background}: choose from {', '.join(BACKGROUNDS)}")
        gray = [gray_color] * 3 if isinstance(gray_color, (int, float)) else gray_color
        # whole numbers only: a PNG level is one (128.5 would be cut to 128, true read as 1)
        if not isinstance(gray, (list, tuple)) or len(gray) != 3 or any(
                isinstance(c, bool) or not isinstance(c, (int, float)) or not float(c).is_integer()
                or not 0 <= c <= 255 for c in gray):
            raise ConfigError(f"recombine.gray_color={gray_color}: expected [r, g, b], whole numbers in 0..255")
        self.background, self.gray_color = background, np.array(gray, np.float32)

    def process_sample(self, sample: Sample) -> None:
        layer = sample.degraded if sample.degraded is not None else sample.image
        if self.background == "original":
            back = sample.image
        else:
            back = np.empty_like(sample.image)
            back[:] = self.gray_color.astype(np.uint8)
        # cv2.blendLinear: layer x mask + back x (1 - mask), rounded, in one pass over uint8
        # (about 4x the float32 numpy expression).
        mask = np.ascontiguousarray(sample.mask, dtype=np.float32)
        sample.composite = cv2.blendLinear(np.ascontiguousarray(layer), np.ascontiguousarray(back), mask, 1.0 - mask)
        sample.params[self.name] = {"background": self.background}
