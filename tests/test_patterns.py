"""Occluder pattern families: coverage in their documented ranges, drawn parameters in the
issue's ranges, sizes relative to the image, determinism per seed."""

from __future__ import annotations

from pathlib import Path

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


# The README's catalogue table ("drawn per image" column), and what each row promises about the
# recorded parameters. A change to either side fails test_catalogue_matches_the_readme_table.
CATALOGUE = {
    "tree_foliage": ("4-6 octaves, target coverage 0.3-0.6",
                     lambda p: 4 <= p["octaves"] <= 6 and 0.3 <= p["target_coverage"] <= 0.6),
    "venetian_blind": ("8-15 slats, +-20 deg, duty 0.35-0.65",
                       lambda p: 8 <= p["slats"] <= 15 and -20 <= p["angle"] <= 20 and 0.35 <= p["duty"] <= 0.65),
    "window_frame": ("2x2 to 4x3 panes, skew +-0.3",
                     lambda p: 2 <= p["cols"] <= 4 and 2 <= p["rows"] <= 3 and -0.3 <= p["skew"] <= 0.3),
    "branch": ("5-9 branches, 2-5 twigs each",
               lambda p: 5 <= p["branches"] <= 9 and 2 * p["branches"] <= p["twigs"] <= 5 * p["branches"]),
    "curtain": ("6-12 folds, density 0.65-0.9", lambda p: 6 <= p["folds"] <= 12 and 0.65 <= p["density"] <= 0.9),
    "fence": ("6-14 pickets", lambda p: 6 <= p["pickets"] <= 14 and p["rail"] > 0),
    "voronoi": ("60-120 cells", lambda p: 60 <= p["cells"] <= 120),
    "lattice": ("grid, diagonal or cross; 5-12 cells",
                lambda p: p["kind"] in ("grid", "diagonal", "cross") and 5 <= p["cells"] <= 12),
    "cloud": ("2-4 blobs", lambda p: 2 <= p["blobs"] <= 4),
    "screen": ("circle/square/diamond, star or hexagon holes",
               lambda p: p["kind"] in ("star", "hexagon") or (p["kind"] == "geometric"
                                                             and p["shape"] in ("circle", "square", "diamond"))),
    "geometric": ("1-3 ellipses, polygons, rectangles",
                  lambda p: 1 <= len(p["shapes"]) <= 3
                  and set(p["shapes"]) <= {"ellipse", "polygon", "rectangle"}),
}


def readme_catalogue() -> dict[str, tuple[str, tuple[float, float]]]:
    """family -> (drawn per image, coverage) from the README's pattern table."""
    rows = {}
    for line in (Path(__file__).resolve().parent.parent / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].strip("`") in PATTERNS:
            lo, hi = cells[3].split("-")
            rows[cells[0].strip("`")] = (cells[2], (float(lo), float(hi)))
    return rows


def test_catalogue_matches_the_readme_table():
    assert readme_catalogue() == {name: (drawn, COVERAGE[name]) for name, (drawn, _) in CATALOGUE.items()}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_drawn_parameters_are_in_the_catalogue_ranges(name):
    seen = set()
    for seed in range(40):
        _, params = render(name, np.random.default_rng(seed), 64, 64)
        assert CATALOGUE[name][1](params), params
        seen.add(params.get("kind"))
    if name in ("lattice", "screen"):
        assert len(seen) == 3  # every variant turns up


def test_non_square_images():
    for name in PATTERNS:
        matte, _ = render(name, np.random.default_rng(1), 90, 160)
        assert matte.shape == (90, 160)
