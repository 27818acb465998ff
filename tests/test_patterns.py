"""Occluder pattern families: coverage in their documented ranges, drawn parameters in the
issue's ranges, sizes relative to the image, determinism per seed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from synth.stages.patterns import COVERAGE, PATTERNS, Frame, render

SEEDS = range(8)


def test_every_family_has_a_documented_coverage():
    assert set(COVERAGE) == set(PATTERNS)
    assert set(PATTERNS) >= {"tree_foliage", "venetian_blind", "window_frame", "branch", "curtain", "fence",
                             "voronoi", "lattice", "cloud", "screen", "geometric"}
    for lo, hi in COVERAGE.values():
        assert 0.0 < lo < hi < 1.0


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_family_gives_nontrivial_matte_with_coverage_in_range(name):
    lo, hi = COVERAGE[name]
    for seed in SEEDS:
        matte, params = render(name, np.random.default_rng(seed), 192, 192)
        assert matte.shape == (192, 192) and matte.dtype == np.float32
        assert matte.min() >= 0.0 and matte.max() <= 1.0
        assert matte.std() > 0.05, f"{name} seed {seed}: flat matte"  # shadow and light both present
        assert lo <= matte.mean() <= hi, f"{name} seed {seed}: coverage {matte.mean():.3f} not in [{lo}, {hi}]"


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_family_is_deterministic_per_seed(name):
    a, pa = render(name, np.random.default_rng(3), 96, 128)
    b, pb = render(name, np.random.default_rng(3), 96, 128)
    c, _ = render(name, np.random.default_rng(4), 96, 128)
    assert np.array_equal(a, b) and pa == pb
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_sizes_scale_with_the_image(name):
    """The same draw at 256 px and at 1024 px gives the same picture (not fixed pixel sizes)."""
    small, _ = render(name, np.random.default_rng(5), 256, 256)
    large, _ = render(name, np.random.default_rng(5), 1024, 1024)
    shrunk = cv2.resize(large, (256, 256), interpolation=cv2.INTER_AREA)
    assert abs(small.mean() - shrunk.mean()) < 0.04
    assert np.abs(small - shrunk).mean() < 0.1


def test_affine_is_recorded_within_its_ranges():
    for seed in range(20):
        _, params = render("lattice", np.random.default_rng(seed), 64, 64)
        affine = params["affine"]
        assert -15 <= affine["rotation"] <= 15
        assert 0.8 <= affine["scale"] <= 1.2
        assert all(-0.1 <= s <= 0.1 for s in affine["shift"])


def test_affine_moves_the_pattern():
    """A frame's pose really transforms the pattern: shifting by 10 % of the side moves an edge
    by 10 % of the side."""
    base = Frame(100, 200)
    moved = Frame(100, 200, shift=(0.1, 0.0))
    edge = lambda f: int(np.argmax(f.coordinate(0)[50] > 0))  # noqa: E731 - first column with u > 0
    assert edge(moved) - edge(base) == pytest.approx(20, abs=1)
    turned = Frame(100, 100, rotation=90.0)
    # Rotated by 90 deg, the u axis points down the image.
    u = turned.coordinate(0)
    assert u[90, 50] > u[10, 50] and abs(u[50, 90] - u[50, 10]) < 1e-4


CHECKS = {
    "tree_foliage": lambda p: 4 <= p["octaves"] <= 6,
    "venetian_blind": lambda p: 8 <= p["slats"] <= 15 and -20 <= p["angle"] <= 20,
    "window_frame": lambda p: 2 <= p["cols"] <= 4 and 2 <= p["rows"] <= 3,
    "branch": lambda p: 4 <= p["branches"] <= 8 and p["twigs"] >= 2 * p["branches"],
    "curtain": lambda p: 6 <= p["folds"] <= 12,
    "fence": lambda p: p["pickets"] >= 6 and p["rail"] > 0,
    "voronoi": lambda p: 60 <= p["cells"] <= 120,
    "lattice": lambda p: p["kind"] in ("grid", "diagonal", "cross"),
    "cloud": lambda p: 2 <= p["blobs"] <= 4,
    "screen": lambda p: p["kind"] in ("geometric", "star", "hexagon"),
    "geometric": lambda p: 1 <= len(p["shapes"]) <= 3,
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_drawn_parameters_are_in_the_catalogue_ranges(name):
    seen = set()
    for seed in range(12):
        _, params = render(name, np.random.default_rng(seed), 64, 64)
        assert CHECKS[name](params), params
        seen.add(params.get("kind"))
    if name in ("lattice", "screen"):
        assert len(seen) == 3  # every variant turns up


def test_non_square_images():
    for name in PATTERNS:
        matte, _ = render(name, np.random.default_rng(1), 90, 160)
        assert matte.shape == (90, 160)
