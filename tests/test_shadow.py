"""Stage 3: cast-shadow physics on a grey card, penumbra width, subject-only shadows, recorded
parameters, the mix, configs and captions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import compose_config, make_sample, soft_disc_mask
from synth.app import build
from synth.errors import ConfigError, SampleError
from synth.imaging import kernel_to_sigma, srgb_to_linear
from synth.sample import Sample
from synth.stages.captioning import describe_degradation
from synth.stages.patterns import PATTERNS
from synth.stages.shadow import HardShadow, Mix, SoftShading, subject_box
from test_shading import grey_card

# Everything but the umbra's colour fixed: uniform penumbra, no variation inside the umbra.
STEADY = dict(base="foreground", blur_growth=1.0, variation=0.0)


def umbra_and_lit(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel linear attenuation (out / in) in the umbra and in the lit part of the subject."""
    ratio = srgb_to_linear(sample.degraded) / srgb_to_linear(sample.image)
    inside = sample.mask > 0.999
    umbra, lit = inside & (sample.shadow_matte > 0.999), inside & (sample.shadow_matte < 1e-3)
    assert umbra.sum() > 100 and lit.sum() > 100
    return ratio[umbra].mean(axis=0), ratio[lit].mean(axis=0)


@pytest.fixture
def half_plane(monkeypatch):
    """A straight shadow edge (through the centre, placed by the random affine like any family):
    whatever the draws, about half of a centred subject is in the umbra and half lit."""
    def draw(rng, frame):
        return (frame.coordinate(0) > 0).astype(np.float32), {}
    monkeypatch.setitem(PATTERNS, "half_plane", draw)
    return "half_plane"


@pytest.mark.parametrize("seed", range(4))
def test_half_shadow_halves_the_linear_value_not_the_srgb_value(half_plane, seed):
    sample = grey_card(256, level=128, seed=seed)
    HardShadow(patterns=half_plane, opacity=0.5, color="neutral", blur=31, **STEADY).process([sample])
    umbra, lit = umbra_and_lit(sample)
    assert np.allclose(umbra, 0.5, atol=0.01) and np.allclose(lit, 1.0, atol=1e-3)
    darkest = sample.degraded[(sample.shadow_matte > 0.999) & (sample.mask > 0.999)]
    assert abs(int(np.median(darkest)) - 92) <= 1  # linear 0.216 / 2 = sRGB 92, not 128 / 2 = 64


@pytest.mark.parametrize("seed", range(4))
def test_sky_umbra_is_bluer_than_the_lit_part_and_neutral_is_not(half_plane, seed):
    sky, neutral = grey_card(256, seed=seed), grey_card(256, seed=seed)
    HardShadow(patterns=half_plane, opacity=0.6, color="sky", tint=0.2, blur=31, **STEADY).process([sky])
    HardShadow(patterns=half_plane, opacity=0.6, color="neutral", blur=31, **STEADY).process([neutral])
    umbra, lit = umbra_and_lit(sky)
    # tint 0.2: blue blocks 0.6 x 0.8 = 0.48 of its light, red 0.6
    assert umbra == pytest.approx([0.4, 1 - 0.6 * (1 - 0.35 * 0.2), 0.52], abs=0.01)
    assert lit == pytest.approx([1.0, 1.0, 1.0], abs=1e-3)
    umbra, _ = umbra_and_lit(neutral)
    assert umbra == pytest.approx([0.4, 0.4, 0.4], abs=0.01)
    assert sky.params["shadow"]["umbra_scale"] == pytest.approx([0.4, 1 - 0.6 * (1 - 0.35 * 0.2), 0.52], abs=1e-6)
    assert neutral.params["shadow"]["tint"] == 0.0


def test_edge_width_grows_monotonically_with_the_kernel(half_plane):
    """10-90 % width of the penumbra, measured across rows, for kernels 31..111 (1024 px side)."""
    widths = []
    for kernel in (31, 51, 71, 91, 111):
        sample = grey_card(512, mask=np.ones((512, 512), np.float32))
        HardShadow(patterns=half_plane, blur=kernel, opacity=0.5, **STEADY).process([sample])
        matte = sample.shadow_matte
        rotation = np.deg2rad(sample.params["shadow"]["pattern_params"]["affine"]["rotation"])
        rows = [np.sort(matte[y]) for y in range(192, 320, 16)]  # sorted: a rising profile
        width = float(np.median([np.interp(0.9, r, np.arange(512)) - np.interp(0.1, r, np.arange(512))
                                 for r in rows]))
        sigma = kernel_to_sigma(kernel) * 512 / 1024
        assert width * np.cos(rotation) == pytest.approx(2.563 * sigma, rel=0.12)
        widths.append(width)
    assert all(a < b for a, b in zip(widths, widths[1:])), widths


def test_shadow_stays_on_the_subject():
    sample = make_sample(size=96)
    sample.mask = soft_disc_mask(96, 96, 0.25, 0.02)
    sample.albedo = sample.image
    HardShadow(patterns="lattice", base="foreground").process([sample])
    outside = sample.mask == 0
    assert not sample.shadow_matte[outside].any()
    assert np.array_equal(sample.degraded[outside], sample.image[outside])
    assert sample.shadow_matte.dtype == np.float32 and sample.shadow_matte.shape == (96, 96)


def test_subject_box():
    mask = np.zeros((10, 20), np.float32)
    mask[2:5, 7:9] = 0.3
    assert subject_box(mask) == (slice(2, 5), slice(7, 9))
    empty = grey_card(32, mask=np.zeros((32, 32), np.float32))
    HardShadow(base="foreground", min_visibility=0).process([empty])  # nothing to shadow: unchanged
    assert np.array_equal(empty.degraded, empty.image) and not empty.shadow_matte.any()
    with pytest.raises(SampleError, match="degradation not visible"):  # and no pair to learn from
        HardShadow(base="foreground").process([grey_card(32, mask=np.zeros((32, 32), np.float32))])


def test_every_drawn_value_is_recorded_and_serialisable():
    sample = grey_card(64, index=3)
    HardShadow(base="albedo").process([sample])
    params = sample.params["shadow"]
    for key in ("type", "base", "pattern", "opacity", "color", "tint", "umbra_scale", "blur", "sigma_px",
                "blur_growth", "blur_growth_direction", "variation", "pattern_params"):
        assert key in params, key
    assert set(params["pattern_params"]["affine"]) == {"rotation", "scale", "shift"}
    assert 0.3 <= params["opacity"] <= 0.7 and 31 <= params["blur"] <= 111 and params["blur"] % 2 == 1
    assert json.loads(json.dumps(params)) == params
    assert sample.degradation_type == "hard_shadow"


@pytest.mark.parametrize("make", [
    lambda: HardShadow(base="foreground"),
    lambda: SoftShading(base="foreground", specular_chance=0.5, cast_chance=0.5),
    lambda: Mix(HardShadow(base="foreground", key="shadow.hard"),
                SoftShading(base="foreground", key="shadow.soft_shading")),
])
def test_deterministic_per_seed_and_independent_of_batching(make):
    def run(seed: int, indices: list[int]) -> dict[int, Sample]:
        batch = [grey_card(48, index=i, seed=seed) for i in indices]
        make().process(batch)
        return {s.index: s for s in batch}
    alone, together, other = run(0, [2]), run(0, [0, 1, 2, 3]), run(1, [2])
    assert np.array_equal(alone[2].degraded, together[2].degraded)
    assert np.array_equal(alone[2].shadow_matte, together[2].shadow_matte)
    assert alone[2].params == together[2].params
    assert not np.array_equal(alone[2].degraded, other[2].degraded)


def test_pattern_selection_and_weights():
    only = HardShadow(base="foreground", patterns="cloud")
    weighted = HardShadow(base="foreground", patterns={"fence": 3, "screen": 1})
    seen = []
    for index in range(16):
        a, b = grey_card(32, index=index), grey_card(32, index=index)
        only.process([a])
        weighted.process([b])
        assert a.params["shadow"]["pattern"] == "cloud"
        seen.append(b.params["shadow"]["pattern"])
    assert set(seen) == {"fence", "screen"} and seen.count("fence") > seen.count("screen")


def mix(**kw) -> Mix:
    return Mix(HardShadow(base="foreground", key="shadow.hard"),
               SoftShading(base="foreground", key="shadow.soft_shading"), **kw)


def test_mix_draws_every_type_and_records_it():
    stage = mix()
    batch = [grey_card(32, index=i) for i in range(24)]
    stage.process(batch)
    kinds = {s.params["shadow"]["mix"]: s.degradation_type for s in batch}
    assert kinds == {"hard": "hard_shadow", "soft_shading": "soft_shading", "both": "soft_shading+hard_shadow"}
    for s in batch:
        assert s.degraded is not None and s.shadow_matte is not None
        json.dumps(s.params["shadow"])


def test_mix_both_is_relit_then_shadowed():
    (both,) = batch = [grey_card(64, index=5)]
    mix(weights="both").process(batch)
    params = both.params["shadow"]
    assert params["type"] == "soft_shading+hard_shadow"
    assert params["soft_shading"]["type"] == "soft_shading" and params["hard_shadow"]["type"] == "hard_shadow"
    assert both.shadow_matte.max() > 0.5
    # Same draws as the two stages alone: shading with the soft stage's, shadow with the hard stage's.
    relit = grey_card(64, index=5)
    SoftShading(base="foreground", key="shadow.soft_shading").process([relit])
    assert params["soft_shading"]["azimuth"] == relit.params["shadow"]["azimuth"]
    assert srgb_to_linear(both.degraded).sum() < srgb_to_linear(relit.degraded).sum()


def test_mix_weights_choose_and_requirements_follow():
    batch = [grey_card(32, index=i) for i in range(8)]
    mix(weights={"hard": 1, "soft_shading": 0, "both": 0}).process(batch)
    assert {s.degradation_type for s in batch} == {"hard_shadow"}
    only_hard = Mix(HardShadow(base="foreground"), SoftShading(base="albedo"), weights="hard")
    assert "albedo" not in only_hard.requires
    with pytest.raises(ConfigError, match="shadow.weights"):
        mix(weights={"hard": 1, "sparkle": 1})


# --- configs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, cls", [("hard", HardShadow), ("soft_shading", SoftShading), ("mix", Mix)])
def test_configs_build_their_stage(option, cls):
    stage = build(compose_config(f"shadow={option}"), "shadow")
    assert isinstance(stage, cls)
    sample = grey_card(48)
    stage.process([sample])
    assert sample.degraded is not None and sample.params["shadow"]


@pytest.mark.parametrize("overrides, message", [
    (["shadow.opacity=1.7"], "shadow.opacity=1.7"),
    (["shadow.blur=30"], "shadow.blur=30: 30 is even"),
    (["shadow.color=green"], "shadow.color=green: unknown option"),
    (["shadow.patterns=stripes"], "shadow.patterns=stripes: unknown option"),
    (["shadow=soft_shading", "shadow.ambient=[0.9,0.5]"], r"shadow.ambient=\[0.9, 0.5\]: range has lo > hi"),
    (["shadow=soft_shading", "shadow.cast.blur=2"], "shadow.cast.blur=2"),
    (["shadow=soft_shading", "shadow.normals=depth"], "shadow.depth_model: required"),
    (["shadow=mix", "shadow.hard.opacity=-1"], "shadow.hard.opacity=-1"),
    (["shadow=mix", "shadow.soft_shading.elevation=95"], "shadow.soft_shading.elevation=95"),
    (["shadow=mix", "shadow.soft_shading.cast.tint=2"], "shadow.soft_shading.cast.tint=2"),
    (["shadow=mix", "shadow.weights={hard:1,glow:1}"], "shadow.weights=.*unknown option 'glow'"),
])
def test_bad_values_name_their_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(compose_config(*overrides), "shadow")


# --- captions ------------------------------------------------------------------------------------
def test_captions_read_well_for_every_type():
    phrases = {}
    for kind, stage in (("hard", HardShadow(base="foreground", patterns="venetian_blind")),
                        ("soft", SoftShading(base="foreground", azimuth=180.0, elevation=20.0, ambient=0.6,
                                             cast_chance=0.0, specular_chance=0.0)),
                        ("both", mix(weights="both"))):
        sample = grey_card(32)
        stage.process([sample])
        phrases[kind] = describe_degradation(sample)
    assert "striped shadow" in phrases["hard"]
    assert phrases["soft"].startswith("the ") and "left" in phrases["soft"] and "light" in phrases["soft"]
    assert " and the " in phrases["both"] and "shadow" in phrases["both"]
    assert all("_" not in p and "  " not in p for p in phrases.values()), phrases
