"""Colour transfer functions, the constant-cost blur, and the codecs."""

import cv2
import numpy as np
import pytest

from synth.imaging import encode, fit_size, gaussian_blur, linear_to_srgb, open_rgb, shrink, srgb_to_linear


def test_srgb_linear_round_trip_is_exact_for_every_8bit_level():
    levels = np.arange(256, dtype=np.uint8)
    assert np.array_equal(linear_to_srgb(srgb_to_linear(levels)), levels)


def test_linear_half_of_mid_grey_is_not_srgb_half():
    grey = np.full((1,), 128, np.uint8)
    half = linear_to_srgb(srgb_to_linear(grey) * 0.5)[0]
    assert 90 <= half <= 96  # 50% of the light of sRGB 128 is sRGB ~93, not 64


@pytest.mark.parametrize("sigma", [3.0, 10.0, 12.0, 15.0, 80.0, 250.0])
def test_downsampled_blur_matches_a_full_resolution_gaussian(sigma):
    """Hard-edged blocks, the worst case: within 1.5 8-bit levels anywhere (measured worst 1.35,
    at sigma 12, the first downsampled size), 0.25 on average (measured at most 0.2)."""
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.random((32, 32), dtype=np.float32), (1024, 1024), interpolation=cv2.INTER_NEAREST)
    exact = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    fast = gaussian_blur(image, sigma)
    inner = slice(64, -64)  # resampling differs only near the border
    error = 255 * np.abs(fast[inner, inner] - exact[inner, inner])
    assert error.max() < 1.5 and error.mean() < 0.25


def test_png_encode_decode_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(encode(image, "png", 1))
    assert np.array_equal(open_rgb(str(path)), image)
    rgba = np.dstack([image, rng.integers(0, 256, (37, 53), dtype=np.uint8)])
    decoded = cv2.imdecode(np.frombuffer(encode(rgba, "png"), np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA), rgba)


def test_fit_size_and_shrink_only_ever_shrink_the_long_side():
    assert fit_size(1000, 500, 256) == (256, 128)
    assert fit_size(333, 1000, 100) == (33, 100)
    assert fit_size(3, 5000, 100) == (1, 100)  # never a zero side
    assert fit_size(100, 50, 256) == (100, 50)  # never enlarged
    image = np.zeros((60, 40, 3), np.uint8)
    assert shrink(image, 64) is image
    assert shrink(image, 30).shape == (30, 20, 3)
