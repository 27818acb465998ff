"""Light maths (shadow colour, penumbra, Lambert/Phong), normals, and the soft-shading stage."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import soft_disc_mask
from synth.errors import ConfigError
from synth.imaging import srgb_to_linear
from synth.sample import Sample
from synth.stages.normals import height_from_depth, inflate, normals_from_height
from synth.stages.shading import blocked_fraction, lambert_phong, light_direction, penumbra, ramp
from synth.stages.shadow import SoftShading


def grey_card(size: int = 128, level: int = 128, mask: np.ndarray | None = None, index: int = 0,
              seed: int = 0) -> Sample:
    sample = Sample(index=index, id=f"{index:06d}", source="grey-card", seed=seed)
    sample.image = np.full((size, size, 3), level, np.uint8)
    sample.mask = soft_disc_mask(size, size, 0.4, 0.02) if mask is None else mask
    sample.albedo = sample.image.copy()
    return sample


# --- cast-shadow maths ---------------------------------------------------------------------------
def test_sky_blocks_less_blue_than_red_and_neutral_is_grey():
    sky = blocked_fraction("sky", 0.6, 0.2)
    assert sky[0] == pytest.approx(0.6) and sky[2] < sky[1] < sky[0]
    assert np.allclose(blocked_fraction("neutral", 0.6, 0.2), 0.6)
    with pytest.raises(ValueError):
        blocked_fraction("green", 0.5, 0.1)


def edge_width(profile: np.ndarray) -> float:
    """10-90 % width of a rising edge, in pixels (linear interpolation between samples)."""
    x = np.arange(profile.size)
    return float(np.interp(0.9, profile, x) - np.interp(0.1, profile, x))


def test_penumbra_is_gaussian_of_the_requested_width():
    hard = np.zeros((64, 400), np.float32)
    hard[:, 200:] = 1.0
    for sigma in (3.0, 8.0, 20.0):
        width = edge_width(penumbra(hard, sigma)[32])
        assert width == pytest.approx(2.563 * sigma, rel=0.08)  # 10-90 % of a Gaussian edge


def test_growing_penumbra_is_softer_along_its_direction():
    """blur_growth: an edge far along the growth direction is softer than one near its start."""
    hard = np.zeros((64, 600), np.float32)
    hard[:, 100:300] = 1.0  # rising edge at x=100, falling edge at x=300
    hard[:, 450:] = 1.0  # rising edge at x=450
    soft = penumbra(hard, 4.0, growth=3.0, direction=0.0)[32]
    near, far = edge_width(soft[50:150]), edge_width(soft[400:500])
    assert far > 1.8 * near
    assert np.allclose(penumbra(hard, 4.0, growth=1.0), penumbra(hard, 4.0))


def test_ramp_spans_the_image_along_its_direction():
    r = ramp(10, 20, 0.0)
    assert r[:, 0] == pytest.approx(0.0, abs=1e-6) and r[:, -1] == pytest.approx(1.0, abs=1e-6)
    r = ramp(10, 20, 90.0)
    assert r[0] == pytest.approx(0.0, abs=1e-6) and r[-1] == pytest.approx(1.0, abs=1e-6)


# --- light ---------------------------------------------------------------------------------------
def test_light_direction_conventions():
    assert np.allclose(light_direction(0, 0), [1, 0, 0], atol=1e-6)  # from the right
    assert np.allclose(light_direction(90, 0), [0, -1, 0], atol=1e-6)  # from above (y points down)
    assert np.allclose(light_direction(180, 0), [-1, 0, 0], atol=1e-6)
    assert np.allclose(light_direction(0, 90), [0, 0, 1], atol=1e-6)  # from the camera
    assert np.linalg.norm(light_direction(37, 21)) == pytest.approx(1.0)


def test_lambert_phong_values():
    light = light_direction(0, 0)
    normals = np.array([[[1, 0, 0], [-1, 0, 0], [0, 0, 1]]], np.float32)
    shading, highlight = lambert_phong(normals, light, ambient=0.7)
    assert np.allclose(shading, [[1.0, 0.7, 0.7]]) and highlight is None
    # Light from the camera: a surface facing it shows the full highlight, a tilted one less.
    tilted = np.array([0, np.sin(0.3), np.cos(0.3)], np.float32)
    normals = np.array([[[0, 0, 1], tilted, [0, 0, -1]]], np.float32)
    _, highlight = lambert_phong(normals, light_direction(0, 90), 0.7, specular=0.5, shininess=10)
    assert highlight[0, 0] == pytest.approx(0.5) and 0 < highlight[0, 1] < 0.5 and highlight[0, 2] == 0


def test_inflated_mask_gives_outward_normals():
    mask = soft_disc_mask(128, 128, 0.35, 0.01)
    normals = normals_from_height(inflate(mask))
    assert np.allclose(np.linalg.norm(normals, axis=2), 1.0, atol=1e-5)
    assert normals[64, 64, 2] > 0.95  # the centre faces the camera
    assert normals[64, 100, 0] > 0.4 and normals[64, 28, 0] < -0.4  # right side faces right
    assert normals[28, 64, 1] < -0.4 and normals[100, 64, 1] > 0.4  # top faces up (y down)
    assert not inflate(np.zeros((8, 8), np.float32)).any()


def test_depth_maps_to_the_same_normals_as_the_shape_they_measure():
    """A sphere's disparity (near = large), whatever its units, gives a sphere's normals."""
    yy, xx = np.mgrid[0:128, 0:128]
    r2 = ((xx - 64) ** 2 + (yy - 64) ** 2) / 40.0 ** 2
    mask = (r2 < 1).astype(np.float32)
    sphere = np.sqrt(np.clip(1 - r2, 0, 1)).astype(np.float32)
    for depth, near_is_larger in ((sphere * 37.0 + 5.0, True), (10.0 - sphere, False)):
        normals = normals_from_height(height_from_depth(depth, mask, near_is_larger))
        assert normals[64, 90, 0] > 0.3 and normals[64, 38, 0] < -0.3
        assert normals[90, 64, 1] > 0.3 and normals[64, 64, 2] > 0.95


# --- the soft-shading stage ----------------------------------------------------------------------
PLAIN = dict(base="foreground", specular_chance=0.0, cast_chance=0.0, ambient=0.6, elevation=20.0)


def halves(sample: Sample) -> dict[str, float]:
    """Mean linear value of the lit subject's four halves."""
    lin = srgb_to_linear(sample.degraded).mean(axis=2)
    inside = sample.mask > 0.99
    h, w = inside.shape
    yy, xx = np.mgrid[0:h, 0:w]
    return {"right": lin[inside & (xx > w / 2)].mean(), "left": lin[inside & (xx < w / 2)].mean(),
            "top": lin[inside & (yy < h / 2)].mean(), "bottom": lin[inside & (yy > h / 2)].mean()}


@pytest.mark.parametrize("azimuth, bright, dark", [(0, "right", "left"), (90, "top", "bottom"),
                                                   (180, "left", "right"), (270, "bottom", "top")])
def test_soft_shading_is_brighter_on_the_side_facing_the_light(azimuth, bright, dark):
    sample = grey_card()
    SoftShading(azimuth=float(azimuth), **PLAIN).process([sample])
    means = halves(sample)
    assert means[bright] > 1.2 * means[dark], means
    assert sample.degradation_type == "soft_shading"
    assert sample.params["shadow"]["azimuth"] == azimuth


def test_soft_shading_never_brightens_without_a_highlight_and_keeps_the_ambient_floor():
    sample = grey_card()
    SoftShading(azimuth=30.0, **PLAIN).process([sample])
    before, after = srgb_to_linear(sample.image), srgb_to_linear(sample.degraded)
    inside = sample.mask > 0.99
    ratio = after[inside] / before[inside]
    assert ratio.max() <= 1.0 + 1e-3 and ratio.min() >= 0.6 - 1e-3


def test_specular_is_really_applied_when_chosen():
    plain, shiny = grey_card(level=100), grey_card(level=100)
    settings = {**PLAIN, "elevation": 60.0, "azimuth": 45.0}
    SoftShading(**settings).process([plain])
    SoftShading(**{**settings, "specular_chance": 1.0, "specular": 0.3, "shininess": 10.0}).process([shiny])
    assert shiny.params["shadow"]["specular"] is True and plain.params["shadow"]["specular"] is False
    gain = srgb_to_linear(shiny.degraded) - srgb_to_linear(plain.degraded)
    assert gain.min() >= -1e-3 and gain.max() > 0.1  # a real highlight, added only
    assert np.allclose(gain[..., 0], gain[..., 2], atol=2e-3)  # white light


def test_specular_and_cast_chances_are_drawn_per_image():
    stage = SoftShading(base="foreground", specular_chance=0.5, cast_chance=0.5, min_visibility=0)  # first draws
    draws = []
    for index in range(12):
        sample = grey_card(32, index=index)
        stage.process([sample])
        p = sample.params["shadow"]
        draws.append((p["specular"], p["cast_shadow"] is not None))
        assert (p["cast_shadow"] is not None) == bool(sample.shadow_matte.any())
    assert {d[0] for d in draws} == {True, False} and {d[1] for d in draws} == {True, False}


def test_soft_shading_is_deterministic_per_seed():
    a, b, c = grey_card(seed=1), grey_card(seed=1), grey_card(seed=2)
    for s in (a, b, c):
        SoftShading(base="foreground", specular_chance=0.5, cast_chance=1.0).process([s])
    assert np.array_equal(a.degraded, b.degraded) and a.params == b.params
    assert not np.array_equal(a.degraded, c.degraded)


def test_depth_normals_need_a_model():
    with pytest.raises(ConfigError, match="shadow.depth_model"):
        SoftShading(normals="depth")
    with pytest.raises(ConfigError, match="shadow.normals=bumpy"):
        SoftShading(normals="bumpy")


def test_missing_depth_model_names_the_key(tmp_path):
    empty = tmp_path / "no-model-here"  # a local folder without weights: refused when the stage is built
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"^shadow.depth_model=.*no-model-here: no config.json in this directory.*"
                                          r"hf download depth-anything/Depth-Anything-V2-Small-hf"):
        SoftShading(normals="depth", depth_model=str(empty))
    (empty / "config.json").write_text("{}")  # looks like a model folder, but is none: refused at setup
    stage = SoftShading(normals="depth", depth_model=str(empty))
    with pytest.raises(ConfigError, match=r"^shadow.depth_model=.*no-model-here: cannot load .*hf download"):
        stage.setup("cpu")


@pytest.fixture(scope="module")
def tiny_depth_model(tmp_path_factory):
    """A randomly initialised DPT a few kB in size, saved the way a downloaded model is."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    config = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                       image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8)
    path = tmp_path_factory.mktemp("tiny-dpt")
    DPTForDepthEstimation(config).save_pretrained(path)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(path)
    return path


def test_depth_normals_through_transformers(tiny_depth_model):
    """Proves the code path only (load with from_pretrained, one batched call for images of one
    shape and another for a different shape, depth -> normals -> shading), not depth quality: the
    model is tiny and random."""
    stage = SoftShading(normals="depth", depth_model=str(tiny_depth_model), base="foreground",
                        specular_chance=0.0, cast_chance=0.0, min_visibility=0)  # random model: flat light
    stage.setup("cpu")
    batch = [grey_card(64, index=0), grey_card(64, index=1), grey_card(48, index=2)]
    for s in batch:
        s.image = np.random.default_rng(s.index).integers(0, 256, s.image.shape, dtype=np.uint8)
    stage.process(batch)
    for s in batch:
        assert s.degraded.shape == s.image.shape and s.params["shadow"]["normals"] == "depth"
        assert s.params["shadow"]["depth_model"] == str(tiny_depth_model)
        ratio = srgb_to_linear(s.degraded) / np.maximum(srgb_to_linear(s.image), 1e-3)
        assert np.all(ratio[s.mask > 0.99] <= 1.0 + 1e-2)  # shaded, never brighter
