"""Contact sheet of stage 3 on the bundled portrait: every shadow family and both degradation
types, so realism can be judged at a glance.

    .venv/bin/python scripts/contact_sheet.py [--out docs/shadow_contact_sheet.png] [--seed 0]

The subject is cut out and its albedo estimated by the default (weight-free) stages 1 and 2;
each tile is the stage-3.5 composite. Family tiles use ``base=foreground`` (the shadow on the
real photo, as in shadow-removal pairs), opacity 0.6 and the other ``shadow=hard`` defaults;
the lighting tiles use the albedo, as ``shadow=soft_shading`` does by default. Labels give the
measured ``visibility``: the share of the subject shadowed (luma down >= 15 %), or the mean
change for new light. One tile shows ``experiment=sun_shadows``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from synth.app import build
from synth.bench import at_least
from synth.data import SAMPLES_DIR
from synth.imaging import open_rgb
from synth.sample import Sample
from synth.stages.albedo import Retinex
from synth.stages.patterns import PATTERNS
from synth.stages.recombine import AlphaComposite
from synth.stages.segmentation import GrabCut
from synth.stages.shadow import HardShadow, Mix, SoftShading

TILE = 300  # px, long side of each tile
COLUMNS = 5
MAX_BYTES = 600_000
FAMILY_OPACITY = 0.6  # fixed for the family tiles, so that every pattern is easy to see


def compose(*overrides: str):
    """The job config as ``python -m synth OVERRIDES`` composes it."""
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module(config_module="synth.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def prepared(seed: int) -> Sample:
    sample = Sample(index=0, id="000000", source=str(SAMPLES_DIR / "astronaut.jpg"), seed=seed)
    sample.image = open_rgb(sample.source)
    GrabCut().process([sample])
    Retinex().process([sample])
    return sample


def tile(sample: Sample, stage, label: str, index: int) -> np.ndarray:
    s = copy.copy(sample)
    s.params, s.index = dict(sample.params), index
    if stage is not None:
        stage.process([s])
        AlphaComposite().process([s])
        image = s.composite
        seen = s.params["shadow"]["visibility"]
        label += f" ({seen['shadowed']:.0%})" if seen["shadowed"] >= 0.05 else f" (change {seen['change']:.0%})"
    else:
        image = s.image if label == "original" else s.albedo
    return labelled(image, label)


def labelled(image: np.ndarray, label: str, size: int = TILE) -> np.ndarray:
    """``image`` shrunk to ``size`` px on its long side, under a white bar with ``label``."""
    h, w = image.shape[:2]
    f = size / max(h, w)
    small = cv2.resize(image, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
    bar = np.full((18, small.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, label, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.pad(np.vstack([bar, small]), ((2, 2), (2, 2), (0, 0)), constant_values=255)


def writable_out(parser: argparse.ArgumentParser, out: str) -> Path:
    """--out's folder, made now: a bad --out is one usage line (exit 2) before the figure is computed."""
    from synth.errors import OutputError
    from synth.faults import check_creatable

    try:
        check_creatable(Path(out).parent)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    except (OutputError, OSError) as err:
        parser.error(f"--out {out}: {err}")
    if Path(out).suffix.lower() != ".png":
        parser.error(f"--out {out}: must end in .png")
    return Path(out)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/shadow_contact_sheet.png")
    parser.add_argument("--seed", type=at_least(0), default=0)
    args = parser.parse_args(argv)
    out = writable_out(parser, args.out)
    sample = prepared(args.seed)
    tiles = [tile(sample, None, "original", 0), tile(sample, None, "albedo (stage 2)", 0)]
    for i, name in enumerate(PATTERNS):
        tiles.append(tile(sample, HardShadow(base="foreground", patterns=name, opacity=FAMILY_OPACITY), name, i))
    tiles.append(tile(sample, HardShadow(base="foreground", patterns="venetian_blind", opacity=0.6, color="neutral",
                                         tint=0.0), "neutral (grey), 0.6", 3))
    tiles.append(tile(sample, HardShadow(base="foreground", patterns="venetian_blind", opacity=0.6, color="sky",
                                         tint=0.15), "sky tint 0.15, 0.6", 3))
    soft = dict(cast_chance=0.0, specular_chance=0.0, elevation=30.0, ambient=0.65)
    tiles.append(tile(sample, SoftShading(azimuth=160.0, **soft), "soft shading: left", 0))
    tiles.append(tile(sample, SoftShading(**{**soft, "azimuth": 20.0, "specular_chance": 1.0, "specular": 0.2,
                                            "shininess": 30.0}),
                      "soft: right + specular", 0))
    tiles.append(tile(sample, SoftShading(**{**soft, "azimuth": 60.0, "elevation": 50.0, "cast_chance": 1.0}),
                      "soft: above + subtle shadow", 0))
    tiles.append(tile(sample, HardShadow(patterns="window_frame"), "window_frame on albedo", 0))
    tiles.append(tile(sample, build(compose("experiment=sun_shadows", "shadow.patterns=tree_foliage"), "shadow"),
                      "sun_shadows: foliage", 0))
    tiles.append(tile(sample, Mix(HardShadow(patterns="tree_foliage", key="shadow.hard"),
                                  SoftShading(azimuth=120.0, **soft, key="shadow.soft_shading"),
                                  weights="both"), "both: light + foliage", 0))
    while len(tiles) % COLUMNS:
        tiles.append(np.full_like(tiles[0], 255))
    height = max(t.shape[0] for t in tiles)
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, height - t.shape[0]), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
    rows = [np.hstack(tiles[i:i + COLUMNS]) for i in range(0, len(tiles), COLUMNS)]
    sheet = Image.fromarray(np.vstack(rows))
    sheet.save(out, optimize=True)
    if out.stat().st_size > MAX_BYTES:  # keep the repository small: a 256-colour palette is plenty to judge
        sheet.quantize(256, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)
    print(f"{out} ({sheet.width}x{sheet.height}, {out.stat().st_size // 1024} KB)")
    return out


if __name__ == "__main__":
    main()
