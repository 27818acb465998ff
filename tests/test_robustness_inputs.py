"""Bad and unusual input files: each has a defined behaviour and a one-line reason.

Every file is generated in tmp_path; decoding goes through ImageFolder.load, the path the
runner uses, so the failure stage ("load") and message are what failures.jsonl records.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from synth.data import ImageFolder
from synth.decode import Limits, decode
from synth.errors import ConfigError, SampleError
from synth.sample import Sample
from synth.stages.segmentation import AlphaMask, MaskFolder


def gradient(h: int = 48, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.dstack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full((h, w), 90)]).astype(np.uint8)


def load(path: Path, **limits) -> Sample:
    """Decode ``path`` exactly as a run would (its folder as data.path)."""
    folder = ImageFolder(path=str(path.parent), **limits)
    item = next(it for it in folder.items() if Path(it.path) == path)
    return folder.load(item, seed=0)


def assert_refused(sample: Sample, *words: str) -> None:
    assert not sample.ok and sample.error_stage == "load" and sample.image is None
    assert "\n" not in sample.error
    for word in words:
        assert word in sample.error, sample.error


# --- refused -----------------------------------------------------------------------------------
def test_truncated_jpeg_is_refused(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(gradient()).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    (tmp_path / "cut_data.jpg").write_bytes(data[: len(data) * 3 // 4])  # header whole, scan cut
    (tmp_path / "cut_header.jpg").write_bytes(data[:300])  # cut inside the header tables
    assert_refused(load(tmp_path / "cut_data.jpg"), "corrupt or truncated JPEG data")
    assert_refused(load(tmp_path / "cut_header.jpg"), "truncated")


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert_refused(load(tmp_path / "empty.jpg"), "empty file")


def test_text_file_named_png_is_refused(tmp_path):
    (tmp_path / "notes.png").write_text("this is not a picture\n")
    assert_refused(load(tmp_path / "notes.png"), "not an image", "text")


def test_tiny_and_thin_images_are_refused_by_min_side(tmp_path):
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    Image.new("RGB", (400, 3), (200, 10, 10)).save(tmp_path / "strip.png")
    assert_refused(load(tmp_path / "dot.png"), "1x1", "data.min_side=16")
    assert_refused(load(tmp_path / "strip.png"), "400x3", "data.min_side=16")
    assert load(tmp_path / "strip.png", min_side=3).ok
    # a side that max_side would shrink below min_side counts too
    Image.new("RGB", (2000, 20), 0).save(tmp_path / "long.png")
    assert_refused(load(tmp_path / "long.png", max_side=1000), "1000x10 after data.max_side=1000")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height RGB but holds almost no data (a decompression-bomb shape)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_the_header(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(png_header_only(100_000, 100_000))  # 10^10 pixels, 100 bytes
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self))
    sample = load(tmp_path / "bomb.png")
    assert_refused(sample, "100000x100000", "data.max_pixels=100000000", "not decoded")
    assert not decoded  # refused before any pixel was decoded
    # the limit is a config value: a small one refuses an ordinary image the same way
    monkeypatch.undo()
    Image.fromarray(gradient(100, 100)).save(tmp_path / "ok.png")
    assert_refused(load(tmp_path / "ok.png", max_pixels=5000), "10000 pixels exceeds data.max_pixels=5000")


# --- accepted, converted ----------------------------------------------------------------------
def test_wrong_extension_is_decoded_by_content_with_a_warning(tmp_path, caplog):
    Image.fromarray(gradient()).save(tmp_path / "really_png.jpg", format="PNG")
    with caplog.at_level(logging.WARNING, logger="synth"):
        sample = load(tmp_path / "really_png.jpg")
    assert sample.ok and np.array_equal(sample.image, gradient())
    assert sample.params["load"]["format"] == "PNG"
    assert "content is PNG but the name ends in .jpg" in caplog.text


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # red ink
    sample = load(tmp_path / "cmyk.jpg")
    assert sample.ok and sample.image.shape == (48, 64, 3) and sample.image.dtype == np.uint8
    r, g, b = sample.image.reshape(-1, 3).mean(axis=0)
    assert r > 240 and g < 15 and b < 15
    assert sample.params["load"]["mode"] == "CMYK"


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    grey16 = np.full((40, 50), 32896, np.uint16)  # 128 * 257: mid-grey in 16 bits
    grey16[:, 25:] = 65535
    cv2.imwrite(str(tmp_path / "grey16.png"), grey16)
    rgb16 = np.zeros((40, 50, 3), np.uint16)
    rgb16[..., 2] = 16448  # BGR order for cv2: red = 64 * 257
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16)
    grey = load(tmp_path / "grey16.png")
    assert grey.ok and grey.image.dtype == np.uint8
    assert (grey.image[:, :25] == 128).all() and (grey.image[:, 25:] == 255).all()
    rgb = load(tmp_path / "rgb16.png")
    assert rgb.ok and (rgb.image[..., 0] == 64).all() and (rgb.image[..., 1:] == 0).all()


def test_greyscale_is_expanded_to_three_channels(tmp_path):
    Image.fromarray(gradient()[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(gradient()[..., 0] > 128).save(tmp_path / "bilevel.png")  # mode "1"
    for name in ("grey.png", "bilevel.png"):
        sample = load(tmp_path / name)
        assert sample.ok and sample.image.shape == (48, 64, 3) and sample.alpha is None
        image = sample.image
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def test_palette_image_keeps_its_colours_and_transparency(tmp_path):
    index = np.zeros((48, 64), np.uint8)
    index[10:30, 20:40] = 1
    pal = Image.fromarray(index, mode="P")
    pal.putpalette([0, 0, 255, 255, 200, 0] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    sample = load(tmp_path / "pal.png")
    assert sample.ok and sample.alpha is None
    assert tuple(sample.image[0, 0]) == (0, 0, 255) and tuple(sample.image[20, 30]) == (255, 200, 0)
    pal.save(tmp_path / "pal_transparent.png", transparency=0)  # index 0 transparent
    sample = load(tmp_path / "pal_transparent.png")
    assert sample.ok and sample.alpha is not None
    assert sample.alpha[0, 0] == 0 and sample.alpha[20, 30] == 255


def test_rgba_keeps_alpha_and_segmentation_alpha_uses_it(tmp_path):
    rgba = np.dstack([gradient(), np.zeros((48, 64), np.uint8)])
    rgba[8:40, 16:48, 3] = 255
    rgba[8:40, 16, 3] = 128  # a soft edge
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    Image.fromarray(gradient()).save(tmp_path / "opaque.png")
    sample = load(tmp_path / "cutout.png")
    assert sample.ok and np.array_equal(sample.image, gradient()) and np.array_equal(sample.alpha, rgba[..., 3])
    AlphaMask().process([sample])
    assert np.allclose(sample.mask, rgba[..., 3] / 255.0) and sample.mask.dtype == np.float32
    # without alpha, or with a uniform one, the sample fails with a reason
    plain = load(tmp_path / "opaque.png")
    with pytest.raises(SampleError, match="no alpha channel"):
        AlphaMask().process([plain])
    Image.fromarray(np.dstack([gradient(), np.full((48, 64), 255, np.uint8)]), "RGBA").save(tmp_path / "full.png")
    with pytest.raises(SampleError, match="uniform"):
        AlphaMask().process([load(tmp_path / "full.png")])


def test_exif_orientation_is_applied_first(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red, right half blue, as stored
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left edge ends up on top
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    sample = load(tmp_path / "rotated.jpg")
    assert sample.ok and sample.image.shape == (40, 20, 3)
    assert sample.image[5, 10, 0] > 200 and sample.image[35, 10, 2] > 200  # red on top, blue below
    assert sample.params["load"]["exif_orientation"] == 6
    # the limits see the oriented image: max_side resizes it as displayed
    small = load(tmp_path / "rotated.jpg", max_side=20, min_side=8)
    assert small.image.shape == (20, 10, 3)


def test_large_image_is_resized_to_max_side_with_its_alpha(tmp_path):
    rgba = np.dstack([gradient(300, 200), np.zeros((300, 200), np.uint8)])
    rgba[50:250, 40:160, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "big.png")
    sample = load(tmp_path / "big.png", max_side=150)
    assert sample.image.shape == (150, 100, 3) and sample.alpha.shape == (150, 100)
    assert sample.params["load"]["resized_to"] == [100, 150] and sample.params["load"]["width"] == 200
    assert sample.alpha[75, 50] == 255 and sample.alpha[5, 5] == 0
    # a JPEG is decoded at a reduced DCT scale and lands on exactly the same size
    Image.fromarray(gradient(1000, 600)).save(tmp_path / "big.jpg", quality=90)
    assert load(tmp_path / "big.jpg", max_side=150).image.shape == (150, 90, 3)
    assert load(tmp_path / "big.jpg", max_side=None).image.shape == (1000, 600, 3)


def test_limits_are_validated_with_the_key_named():
    with pytest.raises(ConfigError, match="data.min_side=0"):
        Limits(min_side=0)
    with pytest.raises(ConfigError, match="data.max_side=8"):
        Limits(min_side=16, max_side=8)
    with pytest.raises(ConfigError, match="data.max_pixels=-1"):
        Limits(max_pixels=-1)



def test_decode_accepts_bytes():
    buf = io.BytesIO()
    Image.fromarray(gradient(30, 40)).save(buf, "PNG")
    assert np.array_equal(decode(buf.getvalue()).rgb, gradient(30, 40))
    with pytest.raises(SampleError, match="empty file"):
        decode(b"")


# --- masks ------------------------------------------------------------------------------------
def masked_sample(tmp_path: Path, name: str = "photo.jpg", h: int = 40, w: int = 60) -> Sample:
    (tmp_path / "in").mkdir(exist_ok=True)
    Image.fromarray(gradient(h, w)).save(tmp_path / "in" / name)
    return load(tmp_path / "in" / name)


def test_masks_of_another_size_mode_or_shape(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    stage = MaskFolder(path=str(masks))
    sample = masked_sample(tmp_path)  # 60x40

    half = np.zeros((20, 30), np.uint8)
    half[:, 15:] = 255
    cv2.imwrite(str(masks / "photo.png"), half)  # half the size, same aspect: resized
    stage.process([sample])
    assert sample.mask.shape == (40, 60) and sample.mask[:, :28].max() == 0 and sample.mask[:, 32:].min() == 1

    labels = (half > 0).astype(np.uint8)  # a 0/1 label mask is binary, not nearly black
    cv2.imwrite(str(masks / "photo.png"), labels)
    stage.process([sample])
    assert sample.mask.max() == 1.0

    cv2.imwrite(str(masks / "photo.png"), (half.astype(np.uint16) * 257))  # 16-bit
    stage.process([sample])
    assert sample.mask.max() == 1.0 and sample.mask.min() == 0.0

    colour = np.dstack([half] * 3)  # colour: its luminance
    cv2.imwrite(str(masks / "photo.png"), colour)
    stage.process([sample])
    assert sample.mask.max() == 1.0

    bgra = np.dstack([np.full((20, 30, 3), 255, np.uint8), half])  # white RGB, the shape in alpha
    cv2.imwrite(str(masks / "photo.png"), bgra)
    stage.process([sample])
    assert sample.mask[:, :28].max() == 0 and sample.mask[:, 32:].min() == 1

    cv2.imwrite(str(masks / "photo.png"), np.zeros((60, 40), np.uint8))  # rotated / another image
    with pytest.raises(SampleError, match="40x60 but the image is 60x40: the aspect ratio differs"):
        stage.process([sample])

    (masks / "photo.png").write_text("not a mask")
    with pytest.raises(SampleError, match="not a readable image"):
        stage.process([sample])
