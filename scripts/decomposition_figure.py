"""Relighting with a decomposition, shown on the bundled portrait: photo = A x S + R, and
``shadow=soft_shading`` replacing S with a new shading S' (A x S' + R).

    .venv/bin/python scripts/decomposition_figure.py [--out docs/decomposition_relight.png]

No Marigold weights can be used here (none ship, and a random-weight model gives noise), so the
decomposition is a synthetic one from the weight-free stages: A is the Retinex albedo of stage 2,
S = I / A in linear light (clipped to [0, 4]) and R = I - A x S (zero where S is not clipped).
The mechanism shown, stage 3's code path for ``sample.shading``, is the one albedo=marigold feeds;
with Marigold, A is a real albedo and S the photo's own light. The bottom row is today's path
without a decomposition (the Retinex albedo under the new light) for comparison.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import cv2
import numpy as np

from synth.data import SAMPLES_DIR
from synth.imaging import linear_to_srgb, open_rgb, srgb_to_linear
from synth.sample import Sample
from synth.stages.albedo import Retinex
from synth.stages.recombine import AlphaComposite
from synth.stages.segmentation import GrabCut
from synth.stages.shadow import SoftShading

from contact_sheet import labelled, writable_out  # scripts/ is on sys.path when a script runs

TILE = 220  # px, long side of each tile
LIGHTS = {"light from the left": 160.0, "light from the right": 20.0}


def prepared(decomposed: bool) -> Sample:
    sample = Sample(index=0, id="000000", source=str(SAMPLES_DIR / "astronaut.jpg"), seed=0)
    sample.image = open_rgb(sample.source)
    GrabCut().process([sample])
    Retinex().process([sample])
    if decomposed:
        photo, albedo = srgb_to_linear(sample.image), srgb_to_linear(sample.albedo)
        sample.shading = np.clip(photo / np.maximum(albedo, 1e-4), 0.0, 4.0)
        sample.residual = photo - albedo * sample.shading
    return sample


def relit(sample: Sample, azimuth: float) -> np.ndarray:
    s = copy.copy(sample)
    s.params = {}
    SoftShading(azimuth=azimuth, elevation=30.0, ambient=0.5, specular_chance=0.0, cast_chance=0.0,
                min_visibility=0.0).process([s])
    AlphaComposite().process([s])
    return s.composite


def tile(image: np.ndarray, label: str) -> np.ndarray:
    return labelled(image, label, TILE)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/decomposition_relight.png")
    args = parser.parse_args(argv)
    out = writable_out(parser, args.out)
    sample, plain = prepared(True), prepared(False)
    rebuilt = linear_to_srgb(srgb_to_linear(sample.albedo) * sample.shading + sample.residual)
    top = [tile(sample.image, "photo I"), tile(sample.albedo, "albedo A (Retinex)"),
           tile(linear_to_srgb(sample.shading / 2), "shading S = I / A (x 1/2)"), tile(rebuilt, "A x S + R")]
    top += [tile(relit(sample, az), f"A x S' + R: {name}") for name, az in LIGHTS.items()]
    bottom = [np.full_like(top[0], 255)] * 4 + [tile(relit(plain, az), f"no decomposition: {name}")
                                                for name, az in LIGHTS.items()]
    sheet = np.vstack([np.hstack(top), np.hstack(bottom)])
    if not cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        parser.error(f"--out {out}: OpenCV could not write it")  # imwrite reports failure only as False
    print(out, sheet.shape[1], "x", sheet.shape[0])
    return out


if __name__ == "__main__":
    main()
