"""Unit tests of the weight-free stages: segmentation, albedo, recombine, captioning.
(Stage 3 has its own files: test_shadow.py, test_patterns.py.)"""

import cv2
import numpy as np
import pytest

from synth.errors import ConfigError, SampleError
from synth.imaging import cut_out, srgb_to_linear
from synth.stages.albedo import Retinex
from synth.stages.captioning import TemplateCaption
from synth.stages.recombine import AlphaComposite
from synth.stages.segmentation import GrabCut, MaskFolder, set_mask
from synth.stages.shadow import HardShadow
from tests.conftest import make_sample, soft_disc_mask


def test_grabcut_finds_the_centred_portrait():
    sample = make_sample()  # astronaut portrait, 512 x 512
    GrabCut().process_sample(sample)
    mask = sample.mask
    assert mask.shape == sample.image.shape[:2] and mask.dtype == np.float32
    assert 0.15 < mask.mean() < 0.8
    assert mask[40:120, 160:240].mean() > 0.85 and mask[280:400, 120:300].mean() > 0.85  # face, chest
    assert mask[:20, :20].mean() < 0.05 and mask[:20, -20:].mean() < 0.05  # corners are background
    assert ((mask > 0.02) & (mask < 0.98)).any(), "edge should be soft"
    # stage-1 layers follow from the mask; the background is made when written
    assert sample.foreground is sample.image
    assert np.array_equal(cut_out(sample.image, mask), (sample.image * (1 - mask)[..., None] + 0.5).astype(np.uint8))


def test_grabcut_is_deterministic_per_sample():
    a, b = make_sample(), make_sample()
    GrabCut().process_sample(a)
    GrabCut().process_sample(b)
    assert np.array_equal(a.mask, b.mask)


def test_mask_folder_resizes_and_keeps_grey_levels(tmp_path):
    sample = make_sample()
    small = (soft_disc_mask(128, 128) * 255).astype(np.uint8)
    small[0, 0] = 128
    cv2.imwrite(str(tmp_path / "astronaut.png"), small)
    MaskFolder(path=str(tmp_path)).process_sample(sample)
    assert sample.mask.shape == (512, 512)
    assert sample.mask.max() == pytest.approx(1.0) and sample.mask.min() == 0.0
    grey = ((sample.mask > 0.05) & (sample.mask < 0.95)).mean()
    assert grey > 0.01, "soft edge must survive"


def test_mask_folder_errors_name_the_key_or_file(tmp_path):
    with pytest.raises(ConfigError, match="segmentation.path: required"):
        MaskFolder()
    with pytest.raises(ConfigError, match="segmentation.path=.*not a directory"):
        MaskFolder(path=str(tmp_path / "nope"))
    with pytest.raises(SampleError, match="no mask .*astronaut.png"):
        MaskFolder(path=str(tmp_path)).process_sample(make_sample())


def test_retinex_albedo_flattens_shading_and_records_blend():
    sample = make_sample()
    h, w = sample.image.shape[:2]
    set_mask(sample, soft_disc_mask(h, w))
    # darken the left half: an albedo estimate should largely undo a smooth illumination change
    ramp = np.linspace(0.35, 1.0, w, dtype=np.float32)[None, :, None]
    sample.image = (sample.image * ramp).astype(np.uint8)
    Retinex(blend=0.2).process_sample(sample)
    assert sample.albedo.shape == sample.image.shape and sample.albedo.dtype == np.uint8
    assert sample.params["albedo"]["blend"] == 0.2
    left_in, right_in = sample.image[:, : w // 4].mean(), sample.image[:, -w // 4:].mean()
    left_out, right_out = sample.albedo[:, : w // 4].mean(), sample.albedo[:, -w // 4:].mean()
    assert left_out / right_out > 1.3 * (left_in / right_in)


def test_retinex_albedo_is_the_documented_formula_to_the_byte():
    """The stage computes its tail in place; it must equal the formula written out plainly."""
    from synth.imaging import gaussian_blur

    sample = make_sample(size=96)
    set_mask(sample, soft_disc_mask(96, 96))
    Retinex(blend=0.3).process_sample(sample)
    image = sample.image.astype(np.float32) + 1.0
    msr = np.log(image) - sum(gaussian_blur(image, s, then=np.log) for s in (15.0, 80.0, 250.0)) / 3
    step = max(1, int(np.sqrt(96 * 96 / 65536)))
    inside = msr[::step, ::step].reshape(-1, 3)[sample.mask[::step, ::step].reshape(-1) > 0.5]
    lo, hi = np.quantile(inside, [0.01, 0.99], axis=0)
    balanced = np.clip((msr - lo) / np.maximum(hi - lo, 1e-6), 0.0, 1.0)
    expected = (np.clip(0.7 * balanced * 255.0 + 0.3 * sample.image, 0, 255) + 0.5).astype(np.uint8)
    assert np.array_equal(sample.albedo, expected)


def test_retinex_blend_range_is_sampled_per_image():
    values = set()
    for index in range(6):
        sample = make_sample(index=index, size=64)
        set_mask(sample, soft_disc_mask(64, 64))
        Retinex().process_sample(sample)
        values.add(sample.params["albedo"]["blend"])
    assert len(values) == 6 and all(0.15 <= v <= 0.25 for v in values)


def test_composite_over_original_has_no_halo_at_soft_edges():
    sample = make_sample()
    h, w = sample.image.shape[:2]
    set_mask(sample, soft_disc_mask(h, w, edge=0.08))
    sample.degraded = sample.image.copy()  # an identity degradation
    AlphaComposite().process_sample(sample)
    assert np.abs(sample.composite.astype(int) - sample.image).max() <= 1
    # the reference composited over the cut-out background: dark ring at the soft edge
    cutout = cut_out(sample.image, sample.mask).astype(np.float32)
    ref = (sample.image * sample.mask[..., None] + cutout * (1 - sample.mask[..., None])).astype(np.uint8)
    edge = (sample.mask > 0.3) & (sample.mask < 0.7)
    assert (sample.image[edge].astype(int) - ref[edge]).mean() > 5


def test_composite_over_gray_and_bad_colour():
    sample = make_sample(size=64)
    set_mask(sample, np.zeros((64, 64), np.float32))
    AlphaComposite(background="gray", gray_color=[10, 20, 30]).process_sample(sample)
    assert (sample.composite == np.array([10, 20, 30], np.uint8)).all()
    with pytest.raises(ConfigError, match="recombine.gray_color"):
        AlphaComposite(gray_color=[300, 0, 0])
    with pytest.raises(ConfigError, match="recombine.background=black: choose from original, gray"):
        AlphaComposite(background="black")


def test_shadow_stays_on_the_subject_and_darkens_in_linear_light():
    sample = make_sample()
    h, w = sample.image.shape[:2]
    set_mask(sample, soft_disc_mask(h, w))
    stage = HardShadow(patterns="venetian_blind", opacity=0.5, blur=31, base="foreground")
    stage.process_sample(sample)
    outside = sample.mask == 0
    assert sample.shadow_matte[outside].max() == 0
    AlphaComposite().process_sample(sample)
    assert np.array_equal(sample.composite[outside], sample.image[outside])
    assert sample.composite.mean() < sample.image.mean()
    assert sample.params["shadow"]["opacity"] == 0.5 and sample.params["shadow"]["blur"] == 31


def test_template_caption_describes_the_sampled_shadow():
    sample = make_sample(size=64)
    set_mask(sample, soft_disc_mask(64, 64))
    HardShadow(patterns="venetian_blind", opacity=0.45, blur=101, base="foreground").process_sample(sample)
    TemplateCaption(subject="person").process_sample(sample)
    assert sample.caption.startswith("remove the ") and "shadow from the person" in sample.caption
    assert "striped" in sample.caption
    with pytest.raises(ConfigError, match=r"^captioning.template='remove \{what\}': only \{degradation\}, "
                                          r"\{subject\} may be used \('what'\)$"):
        TemplateCaption(template="remove {what}")


def test_linear_tables_are_used_for_light():
    # a guard that the stage maths runs on linear values: sRGB 128 is ~0.216 linear
    assert srgb_to_linear(np.array([128], np.uint8))[0] == pytest.approx(0.2158605, abs=1e-6)
