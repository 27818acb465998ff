"""Light maths for stage 3, in linear RGB float32: how a cast shadow darkens (colour, penumbra,
umbra variation) and how a new light shades a surface (Lambert + Phong).

Kept free of configuration and randomness: the stages in :mod:`synth.stages.shadow` draw the
values, these functions apply them.
"""

from __future__ import annotations

import cv2
import numpy as np

from synth.imaging import gaussian_blur

COLORS = ("sky", "neutral")

# Blur a downsampled copy once sigma exceeds this many pixels (see imaging.gaussian_blur): the
# matte is smooth, so even kernel 31 at 1024 px (sigma 5) can blur at 1/2.5 size, and kernel 111
# costs the same as kernel 31.
_MAX_SIGMA = 2.0


# --- cast shadows --------------------------------------------------------------------------------
def blocked_fraction(color: str, opacity: float, tint: float) -> np.ndarray:
    """Fraction of each channel's light (R, G, B) that the umbra blocks.

    ``sky``: outdoors the umbra is still lit by the blue sky, so blue loses less light than red.
    Shadow datasets fitted with a per-channel linear (affine) shadow model show the green and
    blue factors following red's, blue the least attenuated (Le & Samaras 2019; SynShadow,
    Inoue & Yamasaki 2021). We keep that shape: red blocks ``opacity``, blue ``opacity * (1 -
    tint)``, green in between (``1 - 0.35 tint``). In linear light the model's offset is 0: a
    positive offset would lighten dark surfaces inside the umbra, which no occluder does.
    ``neutral``: every channel blocks ``opacity`` (the grey model, for comparison).
    """
    if color == "neutral":
        weights = np.ones(3, np.float32)
    elif color == "sky":
        weights = np.array([1.0, 1.0 - 0.35 * tint, 1.0 - tint], np.float32)
    else:
        raise ValueError(f"unknown shadow colour {color!r}; choose from {', '.join(COLORS)}")
    return np.float32(opacity) * weights


def penumbra(hard: np.ndarray, sigma: float, growth: float = 1.0, direction: float = 0.0) -> np.ndarray:
    """Soften a hard matte with a Gaussian penumbra, in a time that does not depend on ``sigma``.

    ``growth`` > 1 makes the penumbra grow across the image along ``direction`` (degrees, 0 =
    towards +x, 90 = towards +y) from ``sigma`` to ``growth * sigma``, as a shadow softens with
    the distance between occluder and receiver (Zhang et al. 2020, "Portrait Shadow
    Manipulation"). It blends two blurs with a linear ramp, which is the same as a blur whose
    width varies smoothly between the two.
    """
    near = gaussian_blur(hard, sigma, _MAX_SIGMA)
    if growth <= 1.0:
        return np.clip(near, 0.0, 1.0)
    far = gaussian_blur(hard, sigma * growth, _MAX_SIGMA)
    t = ramp(hard.shape[0], hard.shape[1], direction)
    return np.clip(near + (far - near) * t, 0.0, 1.0)


def ramp(h: int, w: int, direction: float) -> np.ndarray:
    """HxW float32 going linearly from 0 to 1 across the image along ``direction`` (degrees)."""
    a = np.deg2rad(direction)
    gx = np.float32(np.cos(a)) * (np.arange(w, dtype=np.float32) - np.float32((w - 1) / 2))
    gy = np.float32(np.sin(a)) * (np.arange(h, dtype=np.float32) - np.float32((h - 1) / 2))
    extent = abs(np.cos(a)) * (w - 1) / 2 + abs(np.sin(a)) * (h - 1) / 2
    return (gx[None, :] + gy[:, None]) * np.float32(0.5 / max(extent, 1e-6)) + np.float32(0.5)


def darken(linear: np.ndarray, strength: np.ndarray, blocked: np.ndarray) -> np.ndarray:
    """Apply a shadow in place: ``linear *= 1 - strength * blocked`` per channel.

    ``strength`` is HxW (the matte, possibly modulated inside the umbra), ``blocked`` is
    :func:`blocked_fraction`. The factor is clipped at 0, so no channel goes negative.
    """
    # Clip the 1-channel strength rather than the 3-channel factor: one pass instead of three.
    strength = np.minimum(strength, np.float32(1.0 / max(float(blocked.max()), 1e-6)))
    factor = strength[..., None] * -blocked
    factor += np.float32(1.0)
    linear *= factor
    return linear


# --- new light -----------------------------------------------------------------------------------
def light_direction(azimuth: float, elevation: float) -> np.ndarray:
    """Unit vector towards the light in image axes (x right, y down, z towards the viewer).

    ``azimuth`` in degrees counter-clockwise as seen in the image: 0 = from the right, 90 = from
    above, 180 = from the left, 270 = from below. ``elevation`` above the image plane: 90 = from
    the camera's direction.
    """
    az, el = np.deg2rad(azimuth), np.deg2rad(elevation)
    return np.array([np.cos(el) * np.cos(az), -np.cos(el) * np.sin(az), np.sin(el)], np.float32)


def lambert_phong(normals: np.ndarray, light: np.ndarray, ambient: float, specular: float = 0.0,
                  shininess: float = 20.0) -> tuple[np.ndarray, np.ndarray | None]:
    """Shading and highlight maps (HxW float32) for unit ``normals`` (HxWx3).

    shading = ambient + (1 - ambient) * max(0, n.l): 1 where the surface faces the light.
    highlight = specular * max(0, r.v) ** shininess with r the mirrored light and v the view
    direction (0, 0, 1); only on surfaces the light reaches. None when ``specular`` is 0.
    """
    n_dot_l = normals @ light
    shading = np.float32(ambient) + np.float32(1.0 - ambient) * np.maximum(n_dot_l, 0.0)
    if specular <= 0.0:
        return shading, None
    r_dot_v = 2.0 * n_dot_l * normals[..., 2] - light[2]
    highlight = np.float32(specular) * np.maximum(r_dot_v, 0.0) ** np.float32(shininess)
    highlight[n_dot_l <= 0] = 0.0
    return shading, highlight


def upsample(values: np.ndarray, h: int, w: int) -> np.ndarray:
    """A smooth map computed small -> h x w (bilinear)."""
    if values.shape[:2] == (h, w):
        return values
    return cv2.resize(values, (w, h), interpolation=cv2.INTER_LINEAR)


def replace_shading(albedo: np.ndarray, old: np.ndarray, residual: np.ndarray, new: np.ndarray,
                    weight: np.ndarray) -> np.ndarray:
    """Relight a decomposed subject: albedo x S' + residual, all HxWx3 linear RGB but ``new`` (HxW).

    S' is the new shading map (1 where the surface faces the new light, as from
    :func:`lambert_phong`) times the old shading's mean luminance over ``weight`` (the mask): the
    new light has the photo's strength. It is white, like the light without a decomposition: a
    per-channel level would carry any colour cast of the estimated shading over the whole
    subject. The residual (the photo's non-diffuse light) is kept as it is.
    """
    w = weight.astype(np.float32)
    luminance = old @ np.float32([0.2126, 0.7152, 0.0722])  # Rec. 709, linear light
    level = np.float32((luminance * w).sum() / max(float(w.sum()), 1e-6))
    return albedo * (new * level)[..., None] + residual
