"""Stage 3: synthesise a degradation on the subject. Light maths runs in linear RGB.

* :class:`HardShadow` (``shadow=hard``): a cast shadow from an occluder pattern.
* :class:`SoftShading` (``shadow=soft_shading``): new light on the subject (Lambert + optional
  Phong), optionally with a subtle cast shadow on top.
* :class:`Mix` (``shadow=mix``): one of hard / soft_shading / both per image, by weight.

Every drawn value is recorded in ``sample.params["shadow"]``; each parameter draws from its own
stream keyed by its config path, so the same seed gives the same image.

Every stage measures how visible its degradation is (:func:`visibility`, recorded as
``visibility``) and redraws a degradation below ``min_visibility`` (:class:`Floor`).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import cv2
import numpy as np

from synth.errors import ConfigError, SampleError
from synth.imaging import kernel_to_sigma, linear_to_srgb, resize, srgb_to_linear
from synth.params import Param, setting
from synth.sample import Sample
from synth.stages.base import Stage
from synth.stages.normals import DepthModel, MarigoldNormals, height_from_depth, inflate, normals_from_height, work_size
from synth.stages.patterns import PATTERNS, PENUMBRA_PER_WIDTH, fractal_noise, render
from synth.stages.shading import (COLORS, blocked_fraction, darken, lambert_phong, light_direction, penumbra,
                                  replace_shading, upsample)

BASES = ("albedo", "foreground")
NORMALS = ("inflate", "depth", "marigold")


def sigma_to_kernel(sigma: float) -> int:
    """The odd kernel whose OpenCV sigma is nearest ``sigma`` (inverse of ``kernel_to_sigma``)."""
    return max(1, 2 * round((sigma - 0.8) / 0.3 + 1) + 1)


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


# --- how visible a degradation is ----------------------------------------------------------------
VISIBLE_DROP = 0.15  # a subject pixel counts as shadowed when its luma drops by at least this much


def luma(srgb: np.ndarray) -> np.ndarray:
    """HxW float32 luma (0.299 R' + 0.587 G' + 0.114 B', 0-255) of a uint8 sRGB image: brightness
    as seen, so a 15 % drop is 15 % of the encoded value (opacity 0.2 on sRGB values takes 20 %)."""
    if srgb.size == 0:  # an empty subject (cvtColor rejects empty input)
        return np.zeros(srgb.shape[:2], np.float32)
    return cv2.cvtColor(srgb.astype(np.float32), cv2.COLOR_RGB2GRAY)


def visibility(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> dict:
    """How visible a degradation is on the subject (``mask`` > 0.5), from the luma of the stage-3
    base (``before``) and of the degraded subject (``after``), both from :func:`luma`.

    ``shadowed``: the fraction of the subject whose luma drops by at least ``VISIBLE_DROP``;
    ``mean_drop``: the mean relative drop over those pixels (0 when none); ``change``: the mean
    absolute luma change over the subject, relative to its mean luma (what relighting changes).
    """
    subject = mask > 0.5
    if not subject.any():
        return {"shadowed": 0.0, "mean_drop": 0.0, "change": 0.0}
    b, a = before[subject], after[subject]
    drop = (b - a) / np.maximum(b, np.float32(1.0))  # near-black pixels cannot show a shadow
    shadowed = drop >= VISIBLE_DROP
    return {"shadowed": round(float(shadowed.mean()), 4),
            "mean_drop": round(float(drop[shadowed].mean()), 4) if shadowed.any() else 0.0,
            "change": round(float(np.abs(a - b).mean() / max(float(b.mean()), 1.0)), 4)}


Draw = Callable[[np.ndarray, Sample, "tuple[slice, slice]"], "tuple[np.ndarray, np.ndarray | None, dict]"]


class Floor:
    """``min_visibility`` and ``max_redraws`` of one stage-3 stage (``key`` is its config path).

    A draw is visible when at least ``min_visibility`` of the subject is shadowed (see
    :func:`visibility`) or, for new light, when its ``change`` is at least ``min_visibility``.
    Below that, every random value is drawn again from the sample's own stream
    ``{key}/redraw{k}`` (so the result does not depend on processing order), up to
    ``max_redraws`` times; then the sample fails with "degradation not visible". 0 = off.
    """

    def __init__(self, key: str, min_visibility: float = 0.05, max_redraws: int = 4):
        self.key = key
        self.min = setting(f"{key}.min_visibility", min_visibility, 0.0, 1.0)
        self.max_redraws = setting(f"{key}.max_redraws", max_redraws, 0, 100, integer=True)

    def passes(self, seen: dict, relit: bool) -> bool:
        return seen["shadowed"] >= self.min or (relit and seen["change"] >= self.min)

    def trial(self, sample: Sample, redraw: int) -> Sample:
        """The sample as the draw functions see it on redraw ``redraw`` (0: the sample itself)."""
        if redraw == 0:
            return sample
        trial = copy.copy(sample)  # shares the arrays; only the seed of every draw changes
        trial.seed = int(sample.rng(f"{self.key}/redraw{redraw}").integers(2**32))
        return trial

    def degrade(self, sample: Sample, base: str, draw: Draw, kind: str, relit: bool) -> None:
        """Run ``draw`` (the base in linear RGB, cropped to the subject's box -> degraded linear,
        matte, params) until it is visible, and store the result on ``sample``."""
        box = subject_box(sample.mask)
        source, subject = _base(sample, base)[box], sample.mask[box]
        before = luma(source)
        best = {"shadowed": 0.0, "change": 0.0}
        for redraw in range(self.max_redraws + 1):
            linear, matte, params = draw(srgb_to_linear(source), self.trial(sample, redraw), box)
            srgb = linear_to_srgb(linear)
            seen = visibility(before, luma(srgb), subject)
            if self.min <= 0 or self.passes(seen, relit):
                _finish(sample, base, box, srgb, matte, kind,
                        {**params, "base": base, "visibility": seen, "redraws": redraw})
                return
            best = {k: max(v, seen[k]) for k, v in best.items()}
        change = f", changes its luma by {best['change']:.1%} on average" if relit else ""
        raise SampleError(f"degradation not visible: the best of {self.max_redraws + 1} draws shadows "
                          f"{best['shadowed']:.1%} of the subject{change}; {self.key}.min_visibility={self.min:g}")


def _finish(sample: Sample, base: str, box: tuple[slice, slice], srgb: np.ndarray, matte: np.ndarray | None,
            kind: str, params: dict) -> None:
    """Store the degraded layer (the base outside ``box``), the matte and the record."""
    degraded = _base(sample, base).copy()
    degraded[box] = srgb
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

    def __init__(self, key: str = "shadow", patterns=None, opacity=(0.39, 0.78), blur=(31, 111),
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
        # Thin occluders (branches, bars, walls) keep a penumbra narrower than themselves: a real
        # one far enough away to blur more casts no visible shadow (penumbra ~ distance x 0.5 deg).
        limit = PENUMBRA_PER_WIDTH * pattern_params.get("occluder_width", np.inf) * max(h, w) \
            * pattern_params["affine"]["scale"]
        near, spread, limited = sigma, growth, sigma * growth > limit
        if limited:
            near = min(sigma, limit)
            spread = limit / near
        matte = penumbra(hard, near, spread, direction) * sample.mask

        strength = matte[box]
        if variation > 0:
            # Slow changes inside the umbra (several occluder layers, bounce light): +-variation.
            noise = fractal_noise(sample.rng(f"{key}.variation_noise"), (32, 32), 2, 3.0)
            strength = strength * upsample(1.0 + variation * (2.0 * noise - 1.0), h, w)[box]
        blocked = blocked_fraction(color, opacity, tint)
        darken(linear, strength, blocked)
        params = {"type": "hard_shadow", "pattern": name, "opacity": opacity, "color": color, "tint": tint,
                  "umbra_scale": [round(float(1 - b), 6) for b in blocked], "blur": blur, "sigma_px": near,
                  "sigma_far_px": near * spread, "penumbra_limited": bool(limited),
                  "blur_used": sigma_to_kernel(near * self.reference_size / max(h, w)) if limited else blur,
                  "blur_growth": growth, "blur_growth_direction": direction, "variation": variation,
                  "pattern_params": pattern_params}
        return linear, matte, params


class HardShadow(Stage):
    """A cast shadow from an occluder pattern, on the subject only (see :class:`CastShadow`).

    ``base=albedo`` (the reference's choice) shadows the albedo, so the subject also loses its
    original light; ``base=foreground`` adds the shadow to the original subject (shadow-removal
    pairs). ``min_visibility`` / ``max_redraws``: see :class:`Floor`.
    """

    name = "shadow"
    provides = ("degraded", "shadow_matte")

    def __init__(self, base: str = "albedo", key: str = "shadow", min_visibility: float = 0.05,
                 max_redraws: int = 4, **cast: Any):
        self.requires = _check_base(key, base)
        self.base, self.key = base, key
        self.cast = CastShadow(key=key, **cast)
        self.floor = Floor(key, min_visibility, max_redraws)

    def degrade(self, linear: np.ndarray, sample: Sample, box: tuple[slice, slice]
                ) -> tuple[np.ndarray, np.ndarray, dict]:
        return self.cast.apply(linear, sample, box)

    def process_sample(self, sample: Sample) -> None:
        self.floor.degrade(sample, self.base, self.degrade, "hard_shadow", relit=False)


class SoftShading(Stage):
    """New light on the subject: Lambertian shading with an ambient term, in linear RGB.

    shaded = base x (ambient + (1 - ambient) max(0, n.l)) + highlight, with the light at
    ``azimuth`` (degrees; 0 = from the right, 90 = from above) and ``elevation`` (degrees above
    the image plane). With probability ``specular_chance`` a white Phong highlight of
    ``specular`` strength and ``shininess`` is added. Normals come from ``normals=inflate``
    (the mask inflated into a dome; weight-free) or ``normals=depth`` (a ``transformers`` depth
    model, ``depth_model`` = hub id or local folder; ``relief`` scales its relative depth) or
    ``normals=marigold`` (a Marigold normals model, ``normals_model``; ``diffusers``).
    When stage 2 decomposed the subject (``sample.shading``: albedo=marigold with the lighting
    model), the new shading replaces the photo's: albedo x S' + residual
    (:func:`synth.stages.shading.replace_shading`), whatever ``base`` says.
    With probability ``cast_chance`` a subtle cast shadow is added on top: ``cast`` is a
    :class:`HardShadow` (its ``base``, ``min_visibility`` and ``max_redraws`` are unused),
    composed from ``shadow=hard`` in the config. ``min_visibility`` / ``max_redraws``: see
    :class:`Floor` (the new light, or its cast shadow, must be visible).
    """

    name = "shadow"
    provides = ("degraded", "shadow_matte")

    def __init__(self, base: str = "albedo", ambient=(0.5, 0.8), elevation=(10.0, 60.0),
                 azimuth=(0.0, 360.0), specular_chance=0.3, specular=(0.05, 0.2), shininess=(16.0, 64.0),
                 normals: str = "inflate", depth_model: str | None = None, relief: float = 0.5,
                 normals_model: str = "prs-eth/marigold-normals-v1-1", cast_chance=0.3,
                 cast: "HardShadow | dict | None" = None, key: str = "shadow",
                 min_visibility: float = 0.05, max_redraws: int = 4):
        self.requires = _check_base(key, base)
        self.base, self.key = base, key
        self.floor = Floor(key, min_visibility, max_redraws)
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
        self.marigold = MarigoldNormals(normals_model, f"{key}.normals_model") if normals == "marigold" else None

    @property
    def batched_on_device(self) -> bool:  # the depth or normals model runs on the device
        return self.depth is not None or self.marigold is not None

    @property
    def reads(self) -> tuple[str, ...]:  # and stage 2's decomposition, when it made one
        return tuple(dict.fromkeys(self.requires + ("albedo", "shading", "residual")))

    def setup(self, device: str) -> None:
        if self.depth is not None:
            self.depth.setup(device)
        if self.marigold is not None:
            self.marigold.setup(device)

    def base_for(self, sample: Sample) -> str:
        """A decomposed subject is relit from its own albedo, shading and residual, which give back
        the photo: the change is measured, and the layer filled, against the photo."""
        return "foreground" if sample.shading is not None else self.base

    def surface_normals(self, batch: list[Sample]) -> list[np.ndarray]:
        """Unit normals at the working size, one per sample (a model: one batched call)."""
        if self.marigold is not None:
            return self.marigold(batch)
        masks = [resize(s.mask, work_size(*s.mask.shape)) for s in batch]
        if self.depth is None:
            # a full-frame mask has no background pixel to measure the dome from: use the frame's edge
            heights = [inflate(m) if (m <= 0.5).any() else inflate(np.pad(m, 1))[1:-1, 1:-1] for m in masks]
        else:
            depths = self.depth([resize(s.image, work_size(*s.mask.shape)) for s in batch])
            heights = [height_from_depth(d, m, self.depth.near_is_larger, self.relief) for d, m in zip(depths, masks)]
        return [normals_from_height(height) for height in heights]

    def degrade(self, linear: np.ndarray, sample: Sample, box: tuple[slice, slice], normals: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """Relight ``linear`` (the base in linear RGB, cropped to ``box``; in place)."""
        seed, index, key = sample.seed, sample.index, self.key
        h, w = sample.mask.shape
        ambient, elevation = self.ambient.sample(seed, index), self.elevation.sample(seed, index)
        azimuth = self.azimuth.sample(seed, index) % 360.0
        use_specular = bool(sample.rng(f"{key}.specular_draw").random() < self.specular_chance.sample(seed, index))
        specular = self.specular.sample(seed, index) if use_specular else 0.0
        shininess = self.shininess.sample(seed, index)
        shading, highlight = lambert_phong(normals, light_direction(azimuth, elevation), ambient, specular, shininess)
        light = upsample(shading, h, w)[box]
        if sample.shading is not None:  # stage 2's decomposition: the new shading replaces the photo's
            linear = replace_shading(srgb_to_linear(sample.albedo[box]), sample.shading[box], sample.residual[box],
                                     light, sample.mask[box])
        else:
            linear *= light[..., None]
        if highlight is not None:
            linear += upsample(highlight, h, w)[box][..., None]
        params = {"type": "soft_shading", "normals": self.normals, "ambient": ambient, "azimuth": azimuth,
                  "elevation": elevation, "specular": use_specular, "specular_strength": specular,
                  "shininess": shininess, "decomposition": sample.shading is not None, "cast_shadow": None}
        if self.depth is not None:
            params["depth_model"] = self.depth.model_id
        if self.marigold is not None:
            params["normals_model"] = self.marigold.model_id
        matte = None
        if sample.rng(f"{key}.cast_draw").random() < self.cast_chance.sample(seed, index):
            linear, matte, params["cast_shadow"] = self.cast.degrade(linear, sample, box)
        return linear, matte, params

    def relight(self, sample: Sample, normals: np.ndarray) -> None:
        """The whole stage for one sample whose normals are known."""
        self.floor.degrade(sample, self.base_for(sample),
                           lambda linear, trial, box: self.degrade(linear, trial, box, normals), "soft_shading",
                           relit=True)

    def process(self, batch: list[Sample]) -> None:
        for sample, normals in zip(batch, self.surface_normals(batch)):
            self.relight(sample, normals)


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

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.requires + self.soft.reads))

    def setup(self, device: str) -> None:
        if any(choice != "hard" for choice in self.weights.values):
            self.soft.setup(device)

    def process(self, batch: list[Sample]) -> None:
        choices = [self.weights.sample(s.seed, s.index) for s in batch]
        lit = [s for s, c in zip(batch, choices) if c != "hard"]
        normals = dict(zip((s.id for s in lit), self.soft.surface_normals(lit))) if lit else {}
        for sample, choice in zip(batch, choices):
            if choice == "hard":
                self.hard.process_sample(sample)
            elif choice == "soft_shading":
                self.soft.relight(sample, normals[sample.id])
            else:
                self.both(sample, normals[sample.id])
            sample.params["shadow"]["mix"] = choice

    def both(self, sample: Sample, normals: np.ndarray) -> None:
        """New light, then the hard stage's cast shadow on the relit subject (redrawn, when not
        visible, under the hard stage's ``min_visibility`` / ``max_redraws``)."""
        def draw(linear: np.ndarray, trial: Sample, box: tuple[slice, slice]):
            linear, matte, params = self.soft.degrade(linear, trial, box, normals)
            linear, hard_matte, hard_params = self.hard.degrade(linear, trial, box)
            if matte is not None:  # the soft stage's subtle shadow and the hard one together
                hard_matte = np.maximum(matte, hard_matte)
            return linear, hard_matte, {"type": "soft_shading+hard_shadow", "soft_shading": params,
                                        "hard_shadow": hard_params}
        self.hard.floor.degrade(sample, self.soft.base_for(sample), draw, "soft_shading+hard_shadow", relit=True)
