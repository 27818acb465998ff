"""Stage 3: synthesise a degradation on the subject. Light maths runs in linear RGB.

* :class:`HardShadow` (``shadow=hard``): a cast shadow from an occluder pattern.
* :class:`SoftShading` (``shadow=soft_shading``): new light on the subject (Lambert + optional
  Phong), optionally with a subtle cast shadow on top.
* :class:`Mix` (``shadow=mix``): one of hard / soft_shading / both per image, by weight.

Every drawn value is recorded in ``sample.params["shadow"]``; each parameter draws from its own
stream keyed by its config path, so the same seed gives the same image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synth.errors import ConfigError
from synth.imaging import kernel_to_sigma, linear_to_srgb, resize, srgb_to_linear
from synth.params import Param, setting
from synth.sample import Sample
from synth.stages.base import Stage
from synth.stages.normals import DepthModel, height_from_depth, inflate, normals_from_height, work_size
from synth.stages.patterns import PATTERNS, fractal_noise, render
from synth.stages.shading import COLORS, blocked_fraction, darken, lambert_phong, light_direction, penumbra, upsample

BASES = ("albedo", "foreground")
NORMALS = ("inflate", "depth")


def _check_base(key: str, base: str) -> tuple[str, ...]:
    """Validate ``base`` and return the fields it needs."""
    if base not in BASES:
        raise ConfigError(f"{key}.base={base}: choose from {', '.join(BASES)}")
    return ("image", "mask") + (("albedo",) if base == "albedo" else ())


def subject_box(mask: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of ``mask`` > 0: stage 3 changes nothing outside it, so the colour work
    (the costly part: three channels, sRGB <-> linear) is done on this crop only."""
    rows, cols = np.flatnonzero(mask.max(axis=1) > 0), np.flatnonzero(mask.max(axis=0) > 0)
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _base(sample: Sample, base: str) -> np.ndarray:
    return sample.albedo if base == "albedo" else sample.image


def _finish(sample: Sample, base: str, box: tuple[slice, slice], linear: np.ndarray, matte: np.ndarray | None,
            kind: str, params: dict) -> None:
    """Store the degraded layer (the base outside ``box``), the matte and the record."""
    degraded = _base(sample, base).copy()
    degraded[box] = linear_to_srgb(linear)
    sample.degraded = degraded
    sample.shadow_matte = matte if matte is not None else np.zeros(sample.mask.shape, np.float32)
    sample.degradation_type = kind
    sample.params["shadow"] = params


class CastShadow:
    """The cast-shadow model, shared by every stage-3 implementation that casts shadows.

    ``patterns``: which occluder families (a name, a list, or {name: weight}; null = all).
    ``opacity``: fraction of red light the umbra blocks. ``color``: ``sky`` (blue darkened less,
    by ``tint``; see :func:`synth.stages.shading.blocked_fraction`) or ``neutral`` (grey).
    ``blur``: odd Gaussian kernel of the penumbra for a ``reference_size`` px image side,
    scaled with the image. ``blur_growth``: the penumbra widens to ``blur_growth`` times that
    across the image (1 = uniform). ``variation``: relative strength of slow intensity changes
    inside the umbra (0 = none). ``key`` is the config path, used in errors and random streams.
    """

    def __init__(self, key: str = "shadow", patterns=None, opacity=(0.3, 0.7), blur=(31, 111),
                 blur_growth=(1.0, 2.0), color="sky", tint=(0.0, 0.2), variation=(0.0, 0.15),
                 reference_size: int = 1024):
        self.key = key
        self.patterns = Param.option(f"{key}.patterns", patterns, list(PATTERNS))
        self.opacity = Param.number(f"{key}.opacity", opacity, 0.0, 1.0)
        self.blur = Param.number(f"{key}.blur", blur, 1, 1001, integer=True, odd=True)
        self.blur_growth = Param.number(f"{key}.blur_growth", blur_growth, 1.0, 10.0)
        self.color = Param.option(f"{key}.color", color, list(COLORS))
        self.tint = Param.number(f"{key}.tint", tint, 0.0, 1.0)
        self.variation = Param.number(f"{key}.variation", variation, 0.0, 1.0)
        self.reference_size = setting(f"{key}.reference_size", reference_size, 16, integer=True)

    def apply(self, linear: np.ndarray, sample: Sample, box: tuple[slice, slice]
              ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Darken ``linear`` (the base in linear RGB, cropped to ``box``; in place) on the subject.
        Return it, the full-frame matte and the drawn parameters."""
        seed, index, key = sample.seed, sample.index, self.key
        h, w = sample.mask.shape
        name = self.patterns.sample(seed, index)
        opacity, blur = self.opacity.sample(seed, index), self.blur.sample(seed, index)
        growth, color = self.blur_growth.sample(seed, index), self.color.sample(seed, index)
        tint = self.tint.sample(seed, index) if color == "sky" else 0.0
        variation = self.variation.sample(seed, index)

        hard, pattern_params = render(name, sample.rng(f"{key}.pattern.{name}"), h, w)
        sigma = kernel_to_sigma(blur) * max(h, w) / self.reference_size
        direction = float(sample.rng(f"{key}.blur_growth_direction").uniform(0, 360))
        matte = penumbra(hard, sigma, growth, direction) * sample.mask

        strength = matte[box]
        if variation > 0:
            # Slow changes inside the umbra (several occluder layers, bounce light): +-variation.
            noise = fractal_noise(sample.rng(f"{key}.variation_noise"), (32, 32), 2, 3.0)
            strength = strength * upsample(1.0 + variation * (2.0 * noise - 1.0), h, w)[box]
        blocked = blocked_fraction(color, opacity, tint)
        darken(linear, strength, blocked)
        params = {"type": "hard_shadow", "pattern": name, "opacity": opacity, "color": color, "tint": tint,
                  "umbra_scale": [round(float(1 - b), 6) for b in blocked], "blur": blur, "sigma_px": sigma,
                  "blur_growth": growth, "blur_growth_direction": direction, "variation": variation,
                  "pattern_params": pattern_params}
        return linear, matte, params


class HardShadow(Stage):
    """A cast shadow from an occluder pattern, on the subject only (see :class:`CastShadow`).

    ``base=albedo`` (the reference's choice) shadows the albedo, so the subject also loses its
    original light; ``base=foreground`` adds the shadow to the original subject (shadow-removal
    pairs).
    """

    name = "shadow"
    provides = ("degraded", "shadow_matte")

    def __init__(self, base: str = "albedo", key: str = "shadow", **cast: Any):
        self.requires = _check_base(key, base)
        self.base, self.key = base, key
        self.cast = CastShadow(key=key, **cast)

    def degrade(self, linear: np.ndarray, sample: Sample, box: tuple[slice, slice]
                ) -> tuple[np.ndarray, np.ndarray, dict]:
        return self.cast.apply(linear, sample, box)

    def process_sample(self, sample: Sample) -> None:
        box = subject_box(sample.mask)
        linear, matte, params = self.degrade(srgb_to_linear(_base(sample, self.base)[box]), sample, box)
        _finish(sample, self.base, box, linear, matte, "hard_shadow", {**params, "base": self.base})


class SoftShading(Stage):
    """New light on the subject: Lambertian shading with an ambient term, in linear RGB.

    shaded = base x (ambient + (1 - ambient) max(0, n.l)) + highlight, with the light at
    ``azimuth`` (degrees; 0 = from the right, 90 = from above) and ``elevation`` (degrees above
    the image plane). With probability ``specular_chance`` a white Phong highlight of
    ``specular`` strength and ``shininess`` is added. Normals come from ``normals=inflate``
    (the mask inflated into a dome; weight-free) or ``normals=depth`` (a ``transformers`` depth
    model, ``depth_model`` = hub id or local folder; ``relief`` scales its relative depth).
    With probability ``cast_chance`` a subtle cast shadow is added on top: ``cast`` is a
    :class:`HardShadow` (its ``base`` is unused), composed from ``shadow=hard`` in the config.
    """

    name = "shadow"
    provides = ("degraded", "shadow_matte")

    def __init__(self, base: str = "albedo", ambient=(0.6, 0.85), elevation=(10.0, 80.0),
                 azimuth=(0.0, 360.0), specular_chance=0.3, specular=(0.05, 0.2), shininess=(16.0, 64.0),
                 normals: str = "inflate", depth_model: str | None = None, relief: float = 0.5,
                 cast_chance=0.3, cast: "HardShadow | dict | None" = None, key: str = "shadow"):
        self.requires = _check_base(key, base)
        self.base, self.key = base, key
        self.ambient = Param.number(f"{key}.ambient", ambient, 0.0, 1.0)
        self.elevation = Param.number(f"{key}.elevation", elevation, 0.0, 90.0)
        self.azimuth = Param.number(f"{key}.azimuth", azimuth, -360.0, 720.0)
        self.specular_chance = Param.number(f"{key}.specular_chance", specular_chance, 0.0, 1.0)
        self.specular = Param.number(f"{key}.specular", specular, 0.0, 1.0)
        self.shininess = Param.number(f"{key}.shininess", shininess, 1.0, 1000.0)
        self.cast_chance = Param.number(f"{key}.cast_chance", cast_chance, 0.0, 1.0)
        if not isinstance(cast, HardShadow):  # the config composes shadow=hard here; dicts for Python use
            cast = HardShadow(key=f"{key}.cast", **{"opacity": (0.1, 0.25), **(cast or {})})
        self.cast = cast
        if normals not in NORMALS:
            raise ConfigError(f"{key}.normals={normals}: choose from {', '.join(NORMALS)}")
        if normals == "depth" and not depth_model:
            raise ConfigError(f"{key}.depth_model: required with {key}.normals=depth; a hub id such as "
                              "depth-anything/Depth-Anything-V2-Small-hf or a local folder")
        if not isinstance(relief, (int, float)) or relief <= 0:
            raise ConfigError(f"{key}.relief={relief}: must be a positive number")
        self.normals, self.relief = normals, float(relief)
        self.depth = DepthModel(depth_model, f"{key}.depth_model") if normals == "depth" else None

    @property
    def batched_on_device(self) -> bool:  # the depth model runs on the device
        return self.depth is not None

    def setup(self, device: str) -> None:
        if self.depth is not None:
            self.depth.setup(device)

    def heights(self, batch: list[Sample]) -> list[np.ndarray]:
        """Height fields at the working size, one per sample (depth model: one batched call)."""
        masks = [resize(s.mask, work_size(*s.mask.shape)) for s in batch]
        if self.depth is None:
            return [inflate(m) for m in masks]
        depths = self.depth([resize(s.image, work_size(*s.mask.shape)) for s in batch])
        return [height_from_depth(d, m, self.depth.near_is_larger, self.relief) for d, m in zip(depths, masks)]

    def degrade(self, linear: np.ndarray, sample: Sample, box: tuple[slice, slice], height: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """Relight ``linear`` (the base in linear RGB, cropped to ``box``; in place)."""
        seed, index, key = sample.seed, sample.index, self.key
        h, w = sample.mask.shape
        ambient, elevation = self.ambient.sample(seed, index), self.elevation.sample(seed, index)
        azimuth = self.azimuth.sample(seed, index) % 360.0
        use_specular = bool(sample.rng(f"{key}.specular_draw").random() < self.specular_chance.sample(seed, index))
        specular = self.specular.sample(seed, index) if use_specular else 0.0
        shininess = self.shininess.sample(seed, index)
        shading, highlight = lambert_phong(normals_from_height(height), light_direction(azimuth, elevation),
                                           ambient, specular, shininess)
        linear *= upsample(shading, h, w)[box][..., None]
        if highlight is not None:
            linear += upsample(highlight, h, w)[box][..., None]
        params = {"type": "soft_shading", "normals": self.normals, "ambient": ambient, "azimuth": azimuth,
                  "elevation": elevation, "specular": use_specular, "specular_strength": specular,
                  "shininess": shininess, "cast_shadow": None}
        if self.depth is not None:
            params["depth_model"] = self.depth.model_id
        matte = None
        if sample.rng(f"{key}.cast_draw").random() < self.cast_chance.sample(seed, index):
            linear, matte, params["cast_shadow"] = self.cast.degrade(linear, sample, box)
        return linear, matte, params

    def relight(self, sample: Sample, height: np.ndarray) -> None:
        """The whole stage for one sample whose height field is known."""
        box = subject_box(sample.mask)
        linear, matte, params = self.degrade(srgb_to_linear(_base(sample, self.base)[box]), sample, box, height)
        _finish(sample, self.base, box, linear, matte, "soft_shading", {**params, "base": self.base})

    def process(self, batch: list[Sample]) -> None:
        for sample, height in zip(batch, self.heights(batch)):
            self.relight(sample, height)


MIX_TYPES = ("hard", "soft_shading", "both")


class Mix(Stage):
    """Per image, one of ``hard`` (a cast shadow), ``soft_shading`` (new light) or ``both``
    (new light, then a cast shadow on the relit subject), drawn by ``weights``. ``hard`` and
    ``soft_shading`` are the two stages, configured as in their own groups
    (``shadow.hard.opacity=...``, ``shadow.soft_shading.ambient=...``). The choice is recorded
    as ``params["shadow"]["mix"]``.
    """

    name = "shadow"
    provides = ("degraded", "shadow_matte")

    def __init__(self, hard: HardShadow, soft_shading: SoftShading, weights=None, key: str = "shadow"):
        if not isinstance(hard, HardShadow) or not isinstance(soft_shading, SoftShading):
            raise ConfigError(f"{key}.hard / {key}.soft_shading: must be shadow=hard and shadow=soft_shading configs")
        self.hard, self.soft = hard, soft_shading
        self.weights = Param.option(f"{key}.weights", weights, list(MIX_TYPES))
        # Only the stages that can be drawn (a weight of 0 still counts: it is a listed choice).
        needs = ([self.hard] if set(self.weights.values) != {"soft_shading"} else []) + \
                ([self.soft] if set(self.weights.values) != {"hard"} else [])
        self.requires = tuple(dict.fromkeys(f for stage in needs for f in stage.requires))

    @property
    def batched_on_device(self) -> bool:
        return self.soft.batched_on_device and any(choice != "hard" for choice in self.weights.values)

    def setup(self, device: str) -> None:
        if any(choice != "hard" for choice in self.weights.values):
            self.soft.setup(device)

    def process(self, batch: list[Sample]) -> None:
        choices = [self.weights.sample(s.seed, s.index) for s in batch]
        lit = [s for s, c in zip(batch, choices) if c != "hard"]
        heights = dict(zip((s.id for s in lit), self.soft.heights(lit))) if lit else {}
        for sample, choice in zip(batch, choices):
            if choice == "hard":
                self.hard.process_sample(sample)
            elif choice == "soft_shading":
                self.soft.relight(sample, heights[sample.id])
            else:
                self.both(sample, heights[sample.id])
            sample.params["shadow"]["mix"] = choice

    def both(self, sample: Sample, height: np.ndarray) -> None:
        """New light, then the hard stage's cast shadow on the relit subject."""
        base, box = self.soft.base, subject_box(sample.mask)
        linear, matte, params = self.soft.degrade(srgb_to_linear(_base(sample, base)[box]), sample, box, height)
        linear, hard_matte, hard_params = self.hard.degrade(linear, sample, box)
        if matte is not None:  # the soft stage's subtle shadow and the hard one together
            hard_matte = np.maximum(matte, hard_matte)
        _finish(sample, base, box, linear, hard_matte, "soft_shading+hard_shadow",
                {"type": "soft_shading+hard_shadow", "base": base, "soft_shading": params, "hard_shadow": hard_params})
