"""The one record that flows through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from synth.errors import one_line
from synth.params import rng_for


@dataclass
class Sample:
    """Everything known about one input image. Stages fill their own fields.

    Images are HxWx3 uint8 sRGB; ``mask`` and ``shadow_matte`` are HxW float32 in [0, 1].
    ``foreground``, ``albedo`` and ``degraded`` are full-frame layers: they are meaningful where
    ``mask`` > 0 and the writer stores them with the mask as alpha. The stage-1 background (the
    input with the subject cut out, kept for the reference layout; compositing uses ``image``) is
    made from ``image`` and ``mask`` when written: see :func:`synth.imaging.cut_out`.
    """

    index: int  # position in the sorted, global source list
    id: str  # zero-padded index: the stem of every output file
    source: str  # input path as given
    seed: int
    image: np.ndarray | None = None
    alpha: np.ndarray | None = None  # HxW uint8 alpha of the input file, if it has one (segmentation=alpha)
    mask: np.ndarray | None = None
    foreground: np.ndarray | None = None
    albedo: np.ndarray | None = None
    # Stage 2's decomposition when it has one (albedo=marigold, lighting model): HxWx3 float32
    # linear light with linear(image) = linear(albedo) x shading + residual on the subject.
    shading: np.ndarray | None = None
    residual: np.ndarray | None = None
    degraded: np.ndarray | None = None
    shadow_matte: np.ndarray | None = None
    composite: np.ndarray | None = None
    caption: str | None = None
    degradation_type: str | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> sampled values
    timings_ms: dict[str, float] = field(default_factory=dict)  # stage -> milliseconds
    error: str | None = None
    error_stage: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def rng(self, key: str) -> np.random.Generator:
        """A generator for ``key`` that depends only on the seed and this sample's index."""
        return rng_for(self.seed, self.index, key)

    def fail(self, stage: str, error: BaseException | str) -> None:
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.error = one_line(message)  # whatever the exception said
        self.error_stage = stage


# The fields that hold images (every ``np.ndarray`` field): what need not travel once written.
IMAGE_FIELDS = tuple(f.name for f in fields(Sample) if str(f.type).startswith("np.ndarray"))


def freeze_images(sample: Sample) -> None:
    """Make the sample's images read-only. A stage makes new images and never changes one in
    place: with worker processes the other process's copy would not see the change (the scheduler
    sends an image on only when it is a new array). So one that tries fails its sample with
    "assignment destination is read-only", whatever ``workers`` says."""
    for name in IMAGE_FIELDS:
        image = getattr(sample, name)
        if image is not None:
            image.flags.writeable = False
