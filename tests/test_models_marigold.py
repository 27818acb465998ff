"""albedo=marigold and shadow.normals=marigold with tiny, randomly initialised Marigold pipelines
(diffusers), saved with save_pretrained the way a user's local checkpoint is.

These tests prove the code path (config -> loading -> the subject's square -> batched pipeline
call -> pasting back -> the decomposition reaching stage 3 -> files), not quality: the weights
are random, so the albedo, shading and normals are noise.
"""

import json
import string

import numpy as np
import pytest
import torch

from synth.errors import ConfigError
from synth.imaging import linear_to_srgb, srgb_to_linear
from synth.stages.models.marigold import Marigold, subject_square, take_square
from tests.conftest import (batched_and_single, built_stage, compose_config, run_synth, soft_disc_mask,
                            two_photos)

RESOLUTION = 32  # processing size of the tiny models (a multiple of their VAE's factor, 2)


def write_tiny_marigold(path, kind: str) -> None:
    """A ~30k-parameter Marigold pipeline of ``kind`` (intrinsics: the lighting model's three
    linear targets; normals) with 1 default step at 32 px, saved to ``path``."""
    from diffusers import (AutoencoderKL, DDIMScheduler, MarigoldIntrinsicsPipeline, MarigoldNormalsPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    targets = 3 if kind == "intrinsics" else 1
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, norm_num_groups=4,
                                in_channels=4 * (1 + targets), out_channels=4 * targets, cross_attention_dim=8,
                                attention_head_dim=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    vae = AutoencoderKL(block_out_channels=[8, 8], norm_num_groups=4, layers_per_block=1, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1,
                              timestep_spacing="trailing")
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                                num_hidden_layers=1, vocab_size=64, max_position_embeddings=8,
                                                bos_token_id=0, eos_token_id=1, pad_token_id=1))
    letters = [c + end for end in ("", "</w>") for c in string.ascii_lowercase]  # the prompt is empty anyway
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{t: i + 2 for i, t in enumerate(letters)}}
    parts = dict(unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder,
                 tokenizer=CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8),
                 default_denoising_steps=1, default_processing_resolution=RESOLUTION)
    if kind == "intrinsics":  # prs-eth/marigold-iid-lighting-v1-1's targets
        linear = {"prediction_space": "linear"}
        props = {"target_names": ["albedo", "shading", "residual"], "albedo": {**linear, "up_to_scale": False},
                 "shading": {**linear, "up_to_scale": True}, "residual": {**linear, "up_to_scale": True}}
        pipe = MarigoldIntrinsicsPipeline(prediction_type="intrinsics", target_properties=props, **parts)
    else:
        pipe = MarigoldNormalsPipeline(prediction_type="normals", use_full_z_range=True, **parts)
    pipe.save_pretrained(path)


@pytest.fixture(scope="module")
def tiny_iid(tmp_path_factory):
    path = tmp_path_factory.mktemp("marigold-iid-tiny")
    write_tiny_marigold(path, "intrinsics")
    return path


@pytest.fixture(scope="module")
def tiny_normals(tmp_path_factory):
    path = tmp_path_factory.mktemp("marigold-normals-tiny")
    write_tiny_marigold(path, "normals")
    return path


def masked_photos():
    """The first two bundled photos (different sizes) with an off-centre soft disc as the subject."""
    batch = two_photos()
    for sample in batch:
        h, w = sample.image.shape[:2]
        sample.mask = np.roll(soft_disc_mask(h, w, radius=0.25), (h // 8, -w // 10), axis=(0, 1))
    return batch


def albedo_stage(path, *overrides):
    """The stage exactly as `python -m synth albedo=marigold albedo.model=PATH ...` builds it."""
    return built_stage("albedo", "albedo=marigold", f"albedo.model={path}", "device=cpu", *overrides)


def test_subject_square_is_centred_and_padded_by_the_image_edge():
    """The model sees a square around the subject; outside the image, edge pixels repeat."""
    mask = np.zeros((100, 200), np.float32)
    mask[40:60, 2:42] = 1  # 20 x 40 box at the left edge
    top, left, side = subject_square(mask, margin=0.1)
    assert side == 48 and top == 26 and left == 0  # moved right to stay inside the image
    mask[:] = 1  # the whole 100 x 200 frame: the square is taller than the image
    top, left, side = subject_square(mask, margin=0.0)
    assert (top, left, side) == (-50, 0, 200)
    image = np.arange(100 * 200, dtype=np.int64).reshape(100, 200)
    square = take_square(image, top, left, side)
    assert square.shape == (200, 200)
    assert (square[:50] == image[0]).all() and (square[150:] == image[-1]).all() and (square[50:150] == image).all()


def test_albedo_batch_equals_one_at_a_time_shapes_and_ranges(tiny_iid):
    """Code path, not quality: albedo (sRGB) and shading / residual (linear) on every sample, the
    photo outside the subject's square, and a batch of two photos of different sizes gives what
    each gives alone."""
    stage = albedo_stage(tiny_iid, "albedo.batch_size=2")
    assert isinstance(stage, Marigold) and stage.dtype == torch.float32
    batch, singles = batched_and_single(stage, masked_photos)
    for batched, single in zip(batch, singles):
        assert batched.ok and single.ok, (batched.error, single.error)
        h, w = batched.image.shape[:2]
        assert batched.albedo.shape == (h, w, 3) and batched.albedo.dtype == np.uint8
        for name in ("shading", "residual"):
            values = getattr(batched, name)
            assert values.shape == (h, w, 3) and values.dtype == np.float32 and np.isfinite(values).all()
        assert batched.shading.min() >= 0
        params = batched.params["albedo"]
        assert params["method"] == "marigold" and params["model"] == str(tiny_iid)
        assert params["num_inference_steps"] == 1 and params["processing_resolution"] == RESOLUTION  # the model's
        top, left, side = params["square"]
        assert side < max(h, w)  # the subject's square, not the frame
        outside = np.ones((h, w), bool)
        outside[max(top, 0):top + side, max(left, 0):left + side] = False
        assert (batched.albedo[outside] == batched.image[outside]).all() and (batched.shading[outside] == 1).all()
        assert np.abs(batched.albedo.astype(int) - single.albedo).max() <= 1
        np.testing.assert_allclose(batched.shading, single.shading, rtol=1e-3, atol=1e-4)


def test_settings_reach_the_pipeline(tiny_iid):
    """Code path: steps, ensemble and resolution overrides are used and recorded."""
    stage = albedo_stage(tiny_iid, "albedo.num_inference_steps=2", "albedo.ensemble_size=3",
                         "albedo.processing_resolution=16")
    batch = masked_photos()[:1]
    stage.process(batch)
    assert batch[0].ok, batch[0].error
    params = batch[0].params["albedo"]
    assert (params["num_inference_steps"], params["ensemble_size"], params["processing_resolution"]) == (2, 3, 16)


def test_decomposition_reproduces_the_subject_and_reaches_stage_3(tiny_iid):
    """Code path, not quality: albedo x shading + residual is the photo (before relighting), and
    soft_shading relights with the decomposition: albedo x S' + residual, S' the new shading
    scaled to the old one's mean luminance (here ambient=1: a uniform new light)."""
    batch = masked_photos()
    albedo_stage(tiny_iid).process(batch)
    shadow = built_stage("shadow", "shadow=soft_shading", "shadow.ambient=1", "shadow.specular_chance=0",
                         "shadow.cast_chance=0", "shadow.min_visibility=0")
    shadow.process(batch)
    for sample in batch:
        assert sample.ok, sample.error
        subject = sample.mask > 0.5
        photo = srgb_to_linear(sample.image)
        rebuilt = srgb_to_linear(sample.albedo) * sample.shading + sample.residual
        assert np.abs(rebuilt - photo)[subject].max() < 1e-4
        params = sample.params["shadow"]
        assert params["decomposition"] is True and params["base"] == "foreground"
        luminance = sample.shading @ np.float32([0.2126, 0.7152, 0.0722])
        level = (luminance * sample.mask).sum() / sample.mask.sum()
        expected = linear_to_srgb(srgb_to_linear(sample.albedo) * level + sample.residual)
        assert np.abs(sample.degraded.astype(int) - expected)[subject].max() <= 1
        # a uniform light is not the photo's own: the relit subject differs from the photo
        assert np.abs(sample.degraded.astype(int) - sample.image)[subject].mean() > 1
    mix = built_stage("shadow", "shadow=mix", "shadow.weights={both:1}", "shadow.soft_shading.ambient=1",
                      "shadow.soft_shading.specular_chance=0", "shadow.soft_shading.cast_chance=0",
                      "shadow.hard.min_visibility=0")
    mix.process(batch)
    for sample in batch:  # mix's lighting part relights the decomposition too
        assert sample.ok, sample.error
        params = sample.params["shadow"]
        assert params["soft_shading"]["decomposition"] is True and params["base"] == "foreground"


def test_without_a_decomposition_soft_shading_is_unchanged():
    """The Retinex path keeps today's behaviour: no shading on the sample, base x new shading."""
    batch = masked_photos()[:1]
    built_stage("albedo").process(batch)
    assert batch[0].shading is None and batch[0].residual is None
    built_stage("shadow", "shadow=soft_shading", "shadow.ambient=1", "shadow.specular_chance=0",
                "shadow.cast_chance=0", "shadow.min_visibility=0").process(batch)
    assert batch[0].params["shadow"]["decomposition"] is False
    subject = batch[0].mask > 0.5
    assert np.abs(batch[0].degraded.astype(int) - batch[0].albedo)[subject].max() <= 1  # ambient 1: unchanged


def test_marigold_normals_for_soft_shading(tiny_normals):
    """Code path, not quality: unit normals at the working size, the same batched or alone, used
    by soft_shading and recorded."""
    stage = built_stage("shadow", "shadow=soft_shading", "shadow.normals=marigold",
                        f"shadow.normals_model={tiny_normals}", "shadow.min_visibility=0", "device=cpu")
    assert stage.batched_on_device
    batch, singles = masked_photos(), masked_photos()
    for sample in batch + singles:
        sample.albedo = sample.image
    normals = stage.surface_normals(batch)
    alone = [stage.surface_normals([s])[0] for s in singles]
    for sample, n, n1 in zip(batch, normals, alone):
        h, w = sample.mask.shape
        assert n.shape == (round(h * 256 / max(h, w)), round(w * 256 / max(h, w)), 3) or max(n.shape[:2]) == 256
        np.testing.assert_allclose(np.linalg.norm(n, axis=2), 1.0, atol=1e-4)
        np.testing.assert_allclose(n, n1, atol=1e-3)
    stage.process(batch)
    assert all(s.ok for s in batch)
    assert batch[0].params["shadow"]["normals"] == "marigold"
    assert batch[0].params["shadow"]["normals_model"] == str(tiny_normals)


def test_missing_or_wrong_weights_are_one_line_naming_the_key(tmp_path, tiny_normals, monkeypatch):
    """Missing, empty or offline weights stop the job with one line naming the config key."""
    from synth.app import build

    def error(group, *overrides):
        with pytest.raises(ConfigError) as info:
            built_stage(group, *overrides)
        message = str(info.value)
        assert "\n" not in message
        return message

    assert error("albedo", "albedo=marigold", "albedo.model=/nonexistent").startswith(
        "albedo.model=/nonexistent: no such directory; use a hub id such as prs-eth/marigold-iid-lighting-v1-1")
    assert error("albedo", "albedo=marigold", f"albedo.model={tmp_path}").startswith(
        f"albedo.model={tmp_path}: no model_index.json in this directory")
    assert error("albedo", "albedo=marigold", f"albedo.model={tiny_normals}", "device=cpu").startswith(
        f"albedo.model={tiny_normals}: a Marigold normals model, not intrinsics")
    assert error("shadow", "shadow=soft_shading", "shadow.normals=marigold",
                 "shadow.normals_model=/nonexistent").startswith("shadow.normals_model=/nonexistent: no such directory")
    assert error("albedo", "albedo=marigold", "albedo.processing_resolution=100").startswith(
        "albedo.processing_resolution=100: must be a multiple of 8")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"^albedo.model=prs-eth/marigold-iid-lighting-v1-1: not in the local "
                                          r"Hugging Face cache and HF_HUB_OFFLINE is set"):
        build(compose_config("albedo=marigold"), "albedo")


@pytest.mark.slow
def test_job_writes_the_decomposition(tmp_path, tiny_iid):
    """Code path, end to end: a job with albedo=marigold and shadow=soft_shading writes
    stage_2/{id}_shading.png and _residual.png and records the decomposition in stage 3."""
    run_dir = tmp_path / "run"
    run_synth(run_dir, "albedo=marigold", f"albedo.model={tiny_iid}", "shadow=soft_shading", "device=cpu",
              "data.limit=1", "~captioning")
    record = json.loads((run_dir / "outputs" / "000000_metadata.json").read_text())
    for name in ("albedo", "shading", "residual"):
        assert (run_dir / "stage_2" / f"000000_{name}.png").is_file()
    assert record["params"]["albedo"]["method"] == "marigold"
    assert record["params"]["shadow"]["decomposition"] is True
