"""Occluder patterns that cast shadows: each returns a hard matte (1 = in shadow) and the
parameters it drew. All vectorised or drawn by OpenCV; sizes scale with the image side."""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

Pattern = Callable[[np.random.Generator, int, int], "tuple[np.ndarray, dict]"]
PATTERNS: dict[str, Pattern] = {}


def pattern(name: str):
    def register(fn: Pattern) -> Pattern:
        PATTERNS[name] = fn
        return fn
    return register


def fractal_noise(rng: np.random.Generator, h: int, w: int, octaves: int, base_cells: float) -> np.ndarray:
    """Value noise summed over octaves, each a random grid upsampled bicubically; in [0, 1]."""
    total = np.zeros((h, w), np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        cells = base_cells * 2 ** octave
        gh, gw = max(2, int(round(cells * h / max(h, w))) + 1), max(2, int(round(cells * w / max(h, w))) + 1)
        grid = rng.random((gh, gw), dtype=np.float32)
        total += amplitude * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        norm += amplitude
        amplitude *= 0.5
    total /= norm
    lo, hi = total.min(), total.max()
    return (total - lo) / max(hi - lo, 1e-6)


@pattern("tree_foliage")
def tree_foliage(rng, h, w):
    octaves = int(rng.integers(4, 7))
    coverage = float(rng.uniform(0.3, 0.6))
    noise = fractal_noise(rng, h, w, octaves, base_cells=float(rng.uniform(2.0, 4.0)))
    threshold = float(np.quantile(noise[::4, ::4], 1.0 - coverage))
    return (noise >= threshold).astype(np.float32), {"octaves": octaves, "target_coverage": coverage}


@pattern("venetian_blind")
def venetian_blind(rng, h, w):
    slats = int(rng.integers(8, 16))
    angle = float(rng.uniform(-20, 20))
    duty = float(rng.uniform(0.35, 0.65))  # fraction of each period in shadow
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = np.deg2rad(angle)
    along = (yy - h / 2) * np.cos(theta) - (xx - w / 2) * np.sin(theta)
    period = max(h, w) / slats
    phase = float(rng.uniform(0, period))
    matte = (np.mod(along + phase, period) < duty * period).astype(np.float32)
    return matte, {"slats": slats, "angle": angle, "duty": duty}


@pattern("geometric")
def geometric(rng, h, w):
    shapes = int(rng.integers(1, 4))
    side = max(h, w)
    matte = np.zeros((h, w), np.uint8)
    kinds = []
    for _ in range(shapes):
        kind = ["ellipse", "polygon", "rectangle"][int(rng.integers(3))]
        kinds.append(kind)
        cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
        size = rng.uniform(0.15, 0.4) * side
        if kind == "ellipse":
            axes = (int(size), int(size * rng.uniform(0.4, 1.0)))
            cv2.ellipse(matte, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        elif kind == "rectangle":
            rect = ((float(cx), float(cy)), (float(size), float(size * rng.uniform(0.3, 1.0))), float(rng.uniform(0, 90)))
            cv2.fillPoly(matte, [cv2.boxPoints(rect).astype(np.int32)], 1)
        else:
            n = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = size * rng.uniform(0.5, 1.0, n)
            pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
            cv2.fillPoly(matte, [pts.astype(np.int32)], 1)
    return matte.astype(np.float32), {"shapes": kinds}
