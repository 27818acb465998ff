"""Input kinds that were never decoded in a test: float and 16-bit TIFF, LA, every EXIF
orientation (with and without alpha). Decoding goes through ImageFolder.load, as a run does."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.test_robustness_inputs import load

# A 3x2 picture (as displayed) with six distinct colours, and how each EXIF orientation stores it:
# the stored pixels are what the camera wrote; orientation N says how to turn them to display.
DISPLAYED = np.array([[(255, 0, 0), (0, 255, 0), (0, 0, 255)],
                      [(255, 255, 0), (0, 255, 255), (255, 0, 255)]], np.uint8)
STORE = {  # orientation -> displayed picture to stored pixels (the inverse of what the reader does)
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),
}
BLOCK = 16  # each colour a 16x16 block: big enough to survive min_side


def blocks(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(a, BLOCK, axis=0), BLOCK, axis=1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_displays_the_picture_upright(orientation, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(blocks(STORE[orientation](DISPLAYED))).save(tmp_path / "o.png", exif=exif.tobytes())
    sample = load(tmp_path / "o.png")
    assert sample.ok, sample.error
    assert np.array_equal(sample.image[BLOCK // 2::BLOCK, BLOCK // 2::BLOCK], DISPLAYED)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_turns_the_alpha_channel_with_the_colours(orientation, tmp_path):
    alpha = np.array([[255, 0, 255], [0, 255, 0]], np.uint8)
    rgba = np.dstack([DISPLAYED, alpha])
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(blocks(STORE[orientation](rgba)), "RGBA").save(tmp_path / "a.png", exif=exif.tobytes())
    sample = load(tmp_path / "a.png")
    assert sample.ok, sample.error
    centres = (slice(BLOCK // 2, None, BLOCK), slice(BLOCK // 2, None, BLOCK))
    assert np.array_equal(sample.image[centres], DISPLAYED) and np.array_equal(sample.alpha[centres], alpha)


def test_la_image_is_grey_rgb_with_its_alpha(tmp_path):
    grey = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    alpha = np.zeros((48, 64), np.uint8)
    alpha[10:40, 8:56] = 255
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(tmp_path / "la.png")
    sample = load(tmp_path / "la.png")
    assert sample.ok and sample.image.shape == (48, 64, 3)
    assert all(np.array_equal(sample.image[..., c], grey) for c in range(3))
    assert np.array_equal(sample.alpha, alpha)


def test_16_bit_tiff_is_scaled_not_clipped(tmp_path):
    values = np.zeros((40, 50), np.uint16)
    values[:, 25:] = 65535
    values[:, :25] = 128 * 257
    Image.fromarray(values).save(tmp_path / "g16.tif")  # mode I;16
    sample = load(tmp_path / "g16.tif")
    assert sample.ok, sample.error
    assert (sample.image[:, :25] == 128).all() and (sample.image[:, 25:] == 255).all()


def test_float_tiff_in_0_to_1_becomes_8_bit(tmp_path):
    values = np.zeros((40, 50), np.float32)
    values[:, 25:] = 1.0
    values[:, :25] = 0.5
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    sample = load(tmp_path / "f.tif")
    assert sample.ok, sample.error
    assert (sample.image[:, 25:] == 255).all() and (np.abs(sample.image[:, :25].astype(int) - 128) <= 1).all()
