"""Occluder patterns that cast shadows.

Each family draws a matte (float32 HxW in [0, 1], 1 = in shadow) and returns the parameters it
drew. Families are defined in *pattern coordinates* ``q``: units of the image's long side,
centred on the image centre, so sizes scale with the image. A random affine (rotation +-15 deg,
scale 0.8-1.2, shift +-10 % of the side; :class:`Frame`) places the pattern in the image. It is
applied exactly, to coordinates or polygon vertices (or by one resampling for noise rasters),
rather than by warping a finished raster, so no pattern shows empty or mirrored borders.

Everything is vectorised: per-pixel work is numpy on whole arrays, shapes are filled by OpenCV
in one call per batch of polygons. ``COVERAGE`` documents, per family, the range of the matte's
mean over the frame (tests check it across seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from synth.imaging import fit_size

Pattern = Callable[[np.random.Generator, "Frame"], "tuple[np.ndarray, dict]"]
PATTERNS: dict[str, Pattern] = {}

# Documented range of each family's coverage (mean of the matte over a square frame).
COVERAGE: dict[str, tuple[float, float]] = {
    "tree_foliage": (0.25, 0.65),
    "venetian_blind": (0.3, 0.7),
    "window_frame": (0.15, 0.9),
    "branch": (0.05, 0.35),
    "curtain": (0.4, 0.8),
    "fence": (0.15, 0.8),
    "voronoi": (0.15, 0.8),
    "lattice": (0.2, 0.9),
    "cloud": (0.03, 0.8),
    "screen": (0.15, 0.95),
    "geometric": (0.015, 0.8),
}

# A family whose shadow is made of thin parts records their width (q units) as
# ``occluder_width``; the cast shadow then limits its penumbra's sigma to this many widths, so a
# blur never erases them: a bar blurred by sigma = 0.3 x its width keeps 90 % of its umbra, and
# its 10-90 % penumbra is 0.77 x its width (an occluder ~80 widths away, as the sun's 0.53 deg
# disc makes it).
PENUMBRA_PER_WIDTH = 0.3

_SHIFT = 4  # fractional bits for OpenCV drawing (sub-pixel vertex positions)
_RASTER = 256  # long side of the rasters used for smooth patterns (noise, curtains, clouds)


def pattern(name: str):
    def register(fn: Pattern) -> Pattern:
        PATTERNS[name] = fn
        return fn
    return register


def render(name: str, rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, dict]:
    """Draw family ``name`` at h x w: the affine first, then the pattern (both from ``rng``)."""
    frame = Frame.sample(rng, h, w)
    matte, params = PATTERNS[name](rng, frame)
    return matte, {**params, "affine": frame.params()}


# --- where the pattern lands ---------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """The image grid and the pattern's pose: image position p = scale * R(rotation) q + shift,
    with p and q in units of the long side, centred on the image centre."""

    h: int
    w: int
    rotation: float = 0.0  # degrees
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def sample(cls, rng: np.random.Generator, h: int, w: int) -> "Frame":
        return cls(h, w, float(rng.uniform(-15, 15)), float(rng.uniform(0.8, 1.2)),
                   (float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1))))

    def params(self) -> dict:
        return {"rotation": self.rotation, "scale": self.scale, "shift": list(self.shift)}

    def resized(self, h: int, w: int) -> "Frame":
        """The same pose on another pixel grid (for patterns drawn small and upsampled)."""
        return Frame(h, w, self.rotation, self.scale, self.shift)

    def small(self) -> "Frame":
        """This pose on a grid whose long side is at most ``_RASTER`` pixels."""
        return self.resized(*fit_size(self.h, self.w, _RASTER))

    @property
    def side(self) -> int:
        return max(self.h, self.w)

    def _centre(self) -> np.ndarray:
        return np.array([self.w / 2 - 0.5, self.h / 2 - 0.5])

    def to_q(self) -> np.ndarray:
        """2x3 matrix mapping pixel (x, y, 1) to pattern coordinates q."""
        t = np.deg2rad(self.rotation)
        inv = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]) / self.scale
        lin = inv / self.side
        off = inv @ (-self._centre() / self.side - np.asarray(self.shift))
        return np.hstack([lin, off[:, None]])

    def pixels(self, q: np.ndarray) -> np.ndarray:
        """Pattern coordinates (..., 2) -> float pixel coordinates (..., 2)."""
        t = np.deg2rad(self.rotation)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) * self.scale
        return (np.asarray(q) @ rot.T + np.asarray(self.shift)) * self.side + self._centre()

    def from_pixels(self, xy: np.ndarray) -> np.ndarray:
        m = self.to_q()
        return np.asarray(xy) @ m[:, :2].T + m[:, 2]

    def box(self) -> tuple[float, float, float, float]:
        """(u0, v0, u1, v1): the axis-aligned q box that covers the whole image."""
        corners = self.from_pixels(np.array([[-0.5, -0.5], [self.w, -0.5], [-0.5, self.h], [self.w, self.h]]))
        return (*corners.min(axis=0), *corners.max(axis=0))

    def coordinate(self, angle: float = 0.0, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
        """HxW float32: ``scale * (q . (cos angle, sin angle)) + offset`` at every pixel.

        One broadcast add: the pattern's own turn, frequency and phase fold into the coefficients.
        """
        a = np.deg2rad(angle)
        cx, cy, c0 = scale * (np.array([np.cos(a), np.sin(a)]) @ self.to_q())
        xs = (np.float32(cx) * np.arange(self.w, dtype=np.float32))[None, :]
        ys = (np.float32(cy) * np.arange(self.h, dtype=np.float32) + np.float32(c0 + offset))[:, None]
        return xs + ys

    def sample_raster(self, raster: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """Resample ``raster`` (covering the q ``box``) onto the image grid: affine and upsampling
        in one bilinear pass."""
        u0, v0, u1, v1 = box
        rh, rw = raster.shape[:2]
        # raster pixel = (q - corner) * pixels-per-unit - 0.5 (pixel centres)
        to_raster = np.diag([rw / (u1 - u0), rh / (v1 - v0)]) @ self.to_q()
        to_raster[:, 2] -= [u0 * rw / (u1 - u0) + 0.5, v0 * rh / (v1 - v0) + 0.5]
        return cv2.warpAffine(raster, to_raster, (self.w, self.h),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


# --- drawing helpers ---------------------------------------------------------------------------
def _fixed(frame: Frame, q: np.ndarray) -> np.ndarray:
    """q (..., 2) -> int32 pixel coordinates with ``_SHIFT`` fractional bits, for OpenCV."""
    return np.round(frame.pixels(q) * (1 << _SHIFT)).astype(np.int32)


def _fill(canvas: np.ndarray, frame: Frame, polygons: np.ndarray | list, value: int = 255) -> None:
    """Fill non-overlapping polygons (an array (K, N, 2) or a list of (N, 2), in q) in one call.

    Not antialiased: OpenCV's antialiased fill grows shapes by about 0.7 px, which biases the
    coverage of small images; the penumbra blur smooths the edges anyway.
    """
    pts = [_fixed(frame, p) for p in polygons]
    if pts:
        cv2.fillPoly(canvas, pts, value, cv2.LINE_8, _SHIFT)


def _strokes(canvas: np.ndarray, frame: Frame, start: np.ndarray, end: np.ndarray, w0: np.ndarray,
             w1: np.ndarray | None = None) -> None:
    """Segments from ``start`` to ``end`` (E x 2, in q), ``w0`` wide at the start and ``w1`` at
    the end (q units), with round joints.

    Drawn as filled trapezoids and discs rather than with OpenCV's thick lines, whose width only
    comes in odd whole pixels (thickness 3 and 4 both draw 5 px): patterns must look the same at
    every image size. One C call per segment: segments overlap at the joints, and a single
    polygon call would cancel the overlaps (even-odd filling).
    """
    w1 = w0 if w1 is None else w1
    d = end - start
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1) / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    h0, h1 = (normal * np.asarray(w0)[:, None] / 2), (normal * np.asarray(w1)[:, None] / 2)
    quads = _fixed(frame, np.stack([start + h0, end + h1, end - h1, start - h0], axis=1))
    scale = frame.side * frame.scale * (1 << _SHIFT)
    for quad in quads:
        cv2.fillConvexPoly(canvas, quad, 255, cv2.LINE_8, _SHIFT)
    for centre, radius in zip(_fixed(frame, end), np.asarray(w1) * scale / 2):
        cv2.circle(canvas, (int(centre[0]), int(centre[1])), int(round(radius)), 255, -1, cv2.LINE_8, _SHIFT)


def _unit(canvas: np.ndarray) -> np.ndarray:
    return canvas.astype(np.float32) * np.float32(1 / 255)


def _regular(n: int, radius: float | np.ndarray = 1.0, turn: float = 0.0) -> np.ndarray:
    a = turn + np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(a), np.sin(a)], axis=-1) * np.asarray(radius)[..., None]


def _visible_points(rng: np.random.Generator, frame: Frame, n: int, margin: float = 0.1) -> np.ndarray:
    """n points uniformly inside the image (``margin`` of each side left out), in q."""
    xy = rng.uniform([margin * frame.w, margin * frame.h], [(1 - margin) * frame.w, (1 - margin) * frame.h],
                     size=(n, 2))
    return frame.from_pixels(xy)


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], octaves: int, cells: float,
                  persistence: float = 0.5) -> np.ndarray:
    """Value noise on a raster: random grids upsampled bicubically, each octave twice as fine and
    ``persistence`` times as strong as the one before.

    ``cells`` is the coarsest octave's cell count along the raster's long side. Result in [0, 1].
    """
    h, w = shape
    total = np.zeros((h, w), np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        c = cells * 2 ** octave
        gh, gw = max(2, int(round(c * h / max(h, w))) + 2), max(2, int(round(c * w / max(h, w))) + 2)
        total += amplitude * cv2.resize(rng.random((gh, gw), dtype=np.float32), (w, h),
                                        interpolation=cv2.INTER_CUBIC)
        norm += amplitude
        amplitude *= persistence
    total /= norm
    lo, hi = total.min(), total.max()
    return (total - lo) / max(hi - lo, 1e-6)


def _raster_box(frame: Frame) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
    """The q box covering the image and a raster shape for it (``_RASTER`` px per q unit, capped
    at the image's own resolution)."""
    u0, v0, u1, v1 = frame.box()
    per_unit = min(_RASTER, frame.side * frame.scale)
    return (u0, v0, u1, v1), (max(2, int(np.ceil((v1 - v0) * per_unit))), max(2, int(np.ceil((u1 - u0) * per_unit))))


# --- the families --------------------------------------------------------------------------------
@pattern("tree_foliage")
def tree_foliage(rng, frame):
    """Dappled leaf shadow: fractal noise (4-6 octaves) thresholded at a sampled coverage."""
    octaves = int(rng.integers(4, 7))
    coverage = float(rng.uniform(0.3, 0.6))
    cells = float(rng.uniform(2.5, 5.0))  # coarsest octave's cells per long side
    persistence = float(rng.uniform(0.5, 0.7))  # higher: more small leaves and gaps
    box, shape = _raster_box(frame)
    noise = fractal_noise(rng, shape, octaves, cells * (box[2] - box[0]), persistence)
    field = frame.sample_raster(noise, box)
    # Threshold on what is visible, so the coverage holds in the frame, not just the raster.
    threshold = np.quantile(field[::8, ::8], 1.0 - coverage)
    return (field >= threshold).astype(np.float32), {"octaves": octaves, "cells": cells,
                                                     "persistence": persistence, "target_coverage": coverage}


@pattern("venetian_blind")
def venetian_blind(rng, frame):
    """Parallel slats (8-15 per side) at +-20 deg; ``duty`` is the shadowed part of each period."""
    slats = int(rng.integers(8, 16))
    angle = float(rng.uniform(-20, 20))
    duty = float(rng.uniform(0.35, 0.65))
    phase = float(rng.uniform(0, 1))
    along = frame.coordinate(90 + angle, slats, phase)
    along -= np.floor(along)
    return (along < duty).astype(np.float32), {"slats": slats, "angle": angle, "duty": duty,
                                               "occluder_width": duty / slats}


@pattern("window_frame")
def window_frame(rng, frame):
    """Light through a window of 2x2 to 4x3 panes (possibly skewed by the sun's angle): the wall
    around the window and the glazing bars are in shadow."""
    cols, rows = int(rng.integers(2, 5)), int(rng.integers(2, 4))
    width, height = float(rng.uniform(0.55, 0.95)), float(rng.uniform(0.6, 1.0))
    cu, cv = (float(x) for x in rng.uniform(-0.15, 0.15, 2))
    bar = float(rng.uniform(0.015, 0.035))
    skew = float(rng.uniform(-0.3, 0.3))

    def at(x, y):  # pane coordinates (0..cols, 0..rows) -> q; the skew shears u along v
        x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
        v = cv - height / 2 + y * height / rows
        return np.stack([cu - width / 2 + x * width / cols - skew * v, v], axis=-1)

    canvas = np.full((frame.h, frame.w), 255, np.uint8)
    _fill(canvas, frame, [at([0, cols, cols, 0], [0, 0, rows, rows])], 0)
    xs, ys = np.arange(cols + 1), np.arange(rows + 1)
    starts = np.concatenate([at(xs, 0), at(0, ys)])
    ends = np.concatenate([at(xs, rows), at(cols, ys)])
    _strokes(canvas, frame, starts, ends, np.full(len(starts), bar))
    return _unit(canvas), {"cols": cols, "rows": rows, "width": width, "height": height, "bar": bar, "skew": skew,
                           "occluder_width": bar}


@pattern("branch")
def branch(rng, frame):
    """5-9 branches entering from one side and reaching across the middle, tapering, each with
    2-5 twigs. Their penumbra is limited by their width (``occluder_width``: the median branch)."""
    n = int(rng.integers(5, 10))
    canvas = np.zeros((frame.h, frame.w), np.uint8)
    side = float(rng.uniform(0, 2 * np.pi))  # where the tree is
    twig_total = 0
    thicknesses = []

    def stroke(points: np.ndarray, t0: float, t1: float) -> None:
        widths = np.linspace(t0, t1, len(points))
        _strokes(canvas, frame, points[:-1], points[1:], widths[:-1], widths[1:])

    def walk(start: np.ndarray, heading: float, length: float, steps: int, wiggle: float) -> np.ndarray:
        headings = heading + np.cumsum(rng.normal(0, wiggle, steps))
        steps_q = (length / steps) * np.stack([np.cos(headings), np.sin(headings)], axis=1)
        return np.vstack([start, start + np.cumsum(steps_q, axis=0)])

    for _ in range(n):
        origin_angle = side + rng.uniform(-0.6, 0.6)
        start = 0.8 * np.array([np.cos(origin_angle), np.sin(origin_angle)])
        heading = origin_angle + np.pi + rng.uniform(-0.5, 0.5)
        steps = int(rng.integers(6, 11))
        thick = float(rng.uniform(0.02, 0.045))
        thicknesses.append(thick)
        path = walk(start, heading, float(rng.uniform(0.8, 1.3)), steps, 0.15)
        stroke(path, thick, 0.5 * thick)
        twigs = int(rng.integers(2, 6))
        twig_total += twigs
        for at in rng.integers(2, steps, twigs):
            along = at / steps
            d = path[at] - path[at - 1]
            twig_heading = np.arctan2(d[1], d[0]) + rng.choice([-1, 1]) * rng.uniform(0.45, 1.0)
            twig = walk(path[at], twig_heading, float(rng.uniform(0.1, 0.25)), 3, 0.25)
            stroke(twig, 0.5 * thick * (1 - 0.7 * along), 0.1 * thick)
    return _unit(canvas), {"branches": n, "twigs": twig_total, "occluder_width": float(np.median(thicknesses))}


@pattern("curtain")
def curtain(rng, frame):
    """A sheer curtain with 6-12 irregular folds: partial shadow, lighter along the fold valleys."""
    folds = int(rng.integers(6, 13))
    density = float(rng.uniform(0.65, 0.9))  # light blocked where the fabric is flat
    contrast = float(rng.uniform(0.4, 0.9))  # how much lighter the valleys are
    sway = float(rng.uniform(-0.4, 0.4))  # folds curve along their length
    small = frame.small()  # smooth pattern: computed small, upsampled
    u, v = small.coordinate(0), small.coordinate(90)
    phase = u * np.float32(folds) + np.float32(sway) * v * v
    phase += np.float32(0.35) * np.sin(phase * np.float32(0.37 * 2 * np.pi) + np.float32(rng.uniform(0, 6.3)))
    valley = (np.float32(0.5) + np.float32(0.5) * np.cos(np.float32(2 * np.pi) * phase)) ** 2
    matte = np.float32(density) * (1 - np.float32(contrast) * valley)
    matte = cv2.resize(matte, (frame.w, frame.h), interpolation=cv2.INTER_LINEAR)
    return matte, {"folds": folds, "density": density, "contrast": contrast, "sway": sway}


@pattern("fence")
def fence(rng, frame):
    """Picket fence: 6-14 pickets per side with pointed tops, two rails; lit above the fence."""
    pickets = int(rng.integers(6, 15))
    width = float(rng.uniform(0.45, 0.75))  # fraction of the spacing
    top = float(rng.uniform(-0.45, 0.0))
    rail = float(rng.uniform(0.025, 0.05))
    rails = [top + float(rng.uniform(0.12, 0.25)), top + float(rng.uniform(0.55, 0.8))]
    phase = float(rng.uniform(0, 1))
    u0, v0, u1, v1 = frame.box()
    spacing = 1.0 / pickets
    half, tip = width * spacing / 2, width * spacing / 2  # the point rises as high as it is wide
    centres = (np.arange(np.floor(u0 * pickets + phase) - 1, np.ceil(u1 * pickets + phase) + 1) + 0.5 - phase) * spacing
    bottom = v1 + 1.0
    outline = np.array([[-half, bottom], [-half, top + tip], [0.0, top], [half, top + tip], [half, bottom]])
    canvas = np.zeros((frame.h, frame.w), np.uint8)
    _fill(canvas, frame, centres[:, None, None] * [1.0, 0.0] + outline[None])
    ends = np.array([[u0 - 1.0, r] for r in rails]), np.array([[u1 + 1.0, r] for r in rails])
    _strokes(canvas, frame, ends[0], ends[1], np.full(2, rail))
    return _unit(canvas), {"pickets": pickets, "width": width, "top": top, "rail": rail}


@pattern("voronoi")
def voronoi(rng, frame):
    """60-120 Voronoi cells in view: cell walls (a net, cracked glass) and some whole cells shaded."""
    cells = int(rng.integers(60, 121))
    wall = float(rng.uniform(0.006, 0.016))
    fill = float(rng.uniform(0.15, 0.45))
    u0, v0, u1, v1 = frame.box()
    visible = frame.h * frame.w / (frame.side * frame.scale) ** 2
    n = max(4, int(round(cells * (u1 - u0) * (v1 - v0) / visible)))
    # One row per seed (position, shaded?): n depends on the image's aspect, and drawing
    # everything per seed keeps the first seeds identical whatever n is.
    draws = rng.random((n, 3))
    seeds = np.array([u0, v0]) + draws[:, :2] * [u1 - u0, v1 - v0]
    # Subdiv2D works on integer rectangles: use milli-units.
    subdiv = cv2.Subdiv2D((int(np.floor(u0 * 1000)) - 10, int(np.floor(v0 * 1000)) - 10,
                           int(np.ceil((u1 - u0) * 1000)) + 20, int(np.ceil((v1 - v0) * 1000)) + 20))
    subdiv.insert([tuple(map(float, p)) for p in seeds * 1000])
    facets, _ = subdiv.getVoronoiFacetList([])
    facets = [np.asarray(f, np.float64) / 1000 for f in facets]
    canvas = np.zeros((frame.h, frame.w), np.uint8)
    shaded = draws[:, 2] < fill  # facets come in insertion order
    _fill(canvas, frame, [f for f, s in zip(facets, shaded) if s])
    edges = np.concatenate([np.stack([f, np.roll(f, -1, axis=0)], axis=1) for f in facets])
    _strokes(canvas, frame, edges[:, 0], edges[:, 1], np.full(len(edges), wall))
    return _unit(canvas), {"cells": cells, "wall": wall, "fill": fill, "occluder_width": wall}


@pattern("lattice")
def lattice(rng, frame):
    """A trellis: bars in a grid, a diagonal (diamond) grid, or both crossed."""
    kind = ["grid", "diagonal", "cross"][int(rng.integers(3))]
    cells = float(rng.uniform(5, 12))
    bar = float(rng.uniform(0.15, 0.35))  # fraction of the period
    angles = {"grid": [0, 90], "diagonal": [45, 135], "cross": [0, 90, 45, 135]}[kind]
    matte = np.zeros((frame.h, frame.w), bool)
    for angle in angles:
        c = frame.coordinate(angle, cells, float(rng.uniform(0, 1)))
        c -= np.floor(c)
        matte |= c < np.float32(bar)
    return matte.astype(np.float32), {"kind": kind, "cells": cells, "bar": bar, "occluder_width": bar / cells}


@pattern("cloud")
def cloud(rng, frame):
    """2-4 soft, lobed blobs (cloud shadows, or any large soft occluder)."""
    blobs = int(rng.integers(2, 5))
    softness = float(rng.uniform(0.01, 0.04))  # edge blur, in units of the side
    small = frame.small()
    canvas = np.zeros((small.h, small.w), np.uint8)
    centres = _visible_points(rng, frame, blobs, margin=0.15)
    theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    k = np.arange(2, 7)
    for centre in centres:
        radius = float(rng.uniform(0.12, 0.3))
        amp = rng.uniform(0, 0.25, k.size) / np.sqrt(k)
        ph = rng.uniform(0, 2 * np.pi, k.size)
        r = radius * np.maximum(0.3, 1 + (amp * np.cos(np.outer(theta, k) + ph)).sum(axis=1))
        blob = canvas.copy()  # blobs may overlap: fill each on its own, then take the union
        _fill(blob, small, [centre + r[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)])
        np.maximum(canvas, blob, out=canvas)
    matte = cv2.GaussianBlur(_unit(canvas), (0, 0), max(0.5, softness * small.side * small.scale))
    matte = cv2.resize(matte, (frame.w, frame.h), interpolation=cv2.INTER_LINEAR)
    return np.clip(matte, 0.0, 1.0, out=matte), {"blobs": blobs, "softness": softness}


@pattern("screen")
def screen(rng, frame):
    """A perforated screen (mashrabiya): shadow except through holes (circles, squares or
    diamonds; stars; or hexagons in a honeycomb), 6-12 cells per side."""
    kind = ["geometric", "star", "hexagon"][int(rng.integers(3))]
    cells = float(rng.uniform(6, 12))
    hole = float(rng.uniform(0.55, 0.8))  # hole size as a fraction of the cell
    pitch = 1.0 / cells
    params = {"kind": kind, "cells": cells, "hole": hole, "occluder_width": (1.0 - hole) * pitch}
    if kind == "geometric":
        shape = ["circle", "square", "diamond"][int(rng.integers(3))]
        params["shape"] = shape
        template = {"circle": _regular(32, 0.5), "square": _regular(4, 0.5 * np.sqrt(2), np.pi / 4),
                    "diamond": _regular(4, 0.5)}[shape] * hole * pitch
    elif kind == "star":
        points = int(rng.integers(5, 9))
        inner = float(rng.uniform(0.4, 0.6))
        params.update(points=points, inner=inner)
        radii = np.tile([0.5, 0.5 * inner], points)
        template = _regular(2 * points, radii, -np.pi / 2) * hole * pitch
    else:
        # Pointy-top hexagons: a full cell has apothem pitch/2, circumradius pitch/sqrt(3).
        template = _regular(6, hole * pitch / np.sqrt(3), np.pi / 6)
    # Cell centres over the box covering the image (hexagons: offset rows, rows sqrt(3)/2 apart).
    u0, v0, u1, v1 = frame.box()
    row_pitch = pitch * (np.sqrt(3) / 2 if kind == "hexagon" else 1.0)
    us = np.arange(np.floor(u0 / pitch) - 1, np.ceil(u1 / pitch) + 2) * pitch
    vs = np.arange(np.floor(v0 / row_pitch) - 1, np.ceil(v1 / row_pitch) + 2) * row_pitch
    cu, cv = np.meshgrid(us, vs)
    if kind == "hexagon":
        cu = cu + (np.round(cv / row_pitch) % 2)[:, :1] * pitch / 2
    centres = np.stack([cu.ravel(), cv.ravel()], axis=1)
    canvas = np.full((frame.h, frame.w), 255, np.uint8)
    _fill(canvas, frame, centres[:, None, :] + template[None], 0)
    return _unit(canvas), params


@pattern("geometric")
def geometric(rng, frame):
    """1-3 large shapes (ellipses, polygons, rectangles) in view."""
    shapes = int(rng.integers(1, 4))
    canvas = np.zeros((frame.h, frame.w), np.uint8)
    kinds = []
    for centre in _visible_points(rng, frame, shapes, margin=0.15):
        kind = ["ellipse", "polygon", "rectangle"][int(rng.integers(3))]
        kinds.append(kind)
        size = float(rng.uniform(0.2, 0.4))
        turn = float(rng.uniform(0, np.pi))
        if kind == "ellipse":
            outline = _regular(64) * [size, size * rng.uniform(0.4, 1.0)]
        elif kind == "rectangle":
            outline = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [size / 2, size * rng.uniform(0.2, 0.5)]
        else:
            n = int(rng.integers(3, 7))
            # Evenly spread vertices, jittered: irregular but never a sliver.
            angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2 * np.pi / n)
            outline = np.stack([np.cos(angles), np.sin(angles)], axis=1) * size * rng.uniform(0.6, 1.0, (n, 1))
        rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
        shape = canvas.copy()  # shapes may overlap: fill each on its own, then take the union
        _fill(shape, frame, [centre + outline @ rot.T])
        np.maximum(canvas, shape, out=canvas)
    return _unit(canvas), {"shapes": kinds}
