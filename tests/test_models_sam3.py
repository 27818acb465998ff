"""segmentation=sam3 with a tiny, randomly initialised SAM 3 saved the way a user's checkpoint is.

These tests prove the code path (config -> loading -> batched inference -> post-processing ->
mask), not segmentation quality: the weights are random.
"""

import string

import numpy as np
import pytest
import torch

from synth.app import build
from synth.errors import ConfigError
from synth.stages.models.sam3 import Sam3
from tests.conftest import read_samples, built_stage, compose_config, make_sample, read_summary, run_synth, sample_paths, two_photos


@pytest.fixture(scope="module")
def tiny_sam3(tmp_path_factory):
    """A ~230k-parameter Sam3Model and a Sam3Processor (224 px input, 26-letter CLIP vocabulary),
    written with save_pretrained like a downloaded or fine-tuned checkpoint."""
    from transformers import CLIPTokenizer, Sam3Config, Sam3Model, Sam3Processor
    from transformers.models.sam3.configuration_sam3 import (Sam3DETRDecoderConfig, Sam3DETREncoderConfig,
                                                             Sam3GeometryEncoderConfig, Sam3MaskDecoderConfig,
                                                             Sam3VisionConfig, Sam3ViTConfig)
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

    small = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64)
    backbone = Sam3ViTConfig(num_hidden_layers=2, image_size=224, patch_size=14, window_size=8,
                             global_attn_indexes=[1], **small)
    config = Sam3Config(
        vision_config=Sam3VisionConfig(backbone_config=backbone, fpn_hidden_size=32, scale_factors=[2.0, 1.0]),
        text_config=dict(vocab_size=64, projection_dim=32, num_hidden_layers=1, max_position_embeddings=32,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1, **small),
        geometry_encoder_config=Sam3GeometryEncoderConfig(num_layers=1, **small),
        detr_encoder_config=Sam3DETREncoderConfig(num_layers=1, **small),
        detr_decoder_config=Sam3DETRDecoderConfig(num_layers=1, num_queries=5, **small),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=32, num_upsampling_stages=2),
    )
    torch.manual_seed(0)
    model = Sam3Model(config).eval()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) for c in string.ascii_lowercase})
    processor = Sam3Processor(image_processor=Sam3ImageProcessor(size={"height": 224, "width": 224},
                                                                 mask_size={"height": 32, "width": 32}),
                              tokenizer=CLIPTokenizer(vocab=vocab, merges=[]))
    path = tmp_path_factory.mktemp("sam3-tiny")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def make_stage(path, *overrides):
    """The stage exactly as `python -m synth segmentation=sam3 segmentation.model=PATH ...` builds it."""
    return built_stage("segmentation", "segmentation=sam3", f"segmentation.model={path}", "device=cpu", *overrides)


def test_sam3_batch_of_two_photos_gives_image_sized_soft_masks(tiny_sam3):
    """Code path, not quality: random weights score every query near 0.25, so threshold=0.2 keeps them."""
    stage = make_stage(tiny_sam3, "segmentation.threshold=0.2")
    assert isinstance(stage, Sam3) and stage.dtype == torch.float32 and stage.device == "cpu"
    batch = two_photos()
    stage.process(batch)
    for sample in batch:
        assert sample.ok, sample.error
        assert sample.mask.shape == sample.image.shape[:2] and sample.mask.dtype == np.float32
        assert 0.0 <= sample.mask.min() and sample.mask.max() <= 1.0 and sample.mask.max() > 0
        assert sample.foreground is sample.image  # the stage-1 background is made when written
        params = sample.params["segmentation"]
        assert params["method"] == "sam3" and params["prompt"] == "person" and params["instances"] >= 1

    singles = two_photos()
    for sample in singles:
        stage.process([sample])
    for batched, single in zip(batch, singles):
        assert np.abs(batched.mask - single.mask).mean() < 1e-3  # a few edge pixels may flip in float maths
        assert batched.params == single.params


def test_sam3_best_instance_is_inside_the_union(tiny_sam3):
    """Code path: instances=best keeps one instance, which the union contains."""
    union, best = two_photos()[:1], two_photos()[:1]
    make_stage(tiny_sam3, "segmentation.threshold=0.2", "segmentation.feather=0").process(union)
    make_stage(tiny_sam3, "segmentation.threshold=0.2", "segmentation.feather=0",
               "segmentation.instances=best").process(best)
    assert best[0].params["segmentation"]["instances"] == 1
    assert (best[0].mask <= union[0].mask).all()


def test_sam3_no_detection_fails_the_sample_or_uses_the_fallback(tiny_sam3):
    """Code path: nothing above threshold=0.99 fails with the reason, or runs segmentation.fallback."""
    batch = two_photos()
    make_stage(tiny_sam3, "segmentation.threshold=0.99").process(batch)
    for sample in batch:
        assert not sample.ok and sample.error_stage == "segmentation"
        assert sample.error == "SampleError: sam3 found no 'person' scoring above threshold 0.99"
        assert sample.mask is None

    batch = two_photos()
    make_stage(tiny_sam3, "segmentation.threshold=0.99", "segmentation.fallback=grabcut").process(batch)
    for sample in batch:
        assert sample.ok and sample.mask.shape == sample.image.shape[:2]
        assert sample.params["segmentation"]["fallback"] == "grabcut"


def test_sam3_out_of_memory_halves_the_batch_down_to_one(tiny_sam3, monkeypatch):
    """OOM back-off through the real stage: a forward that 'runs out of GPU memory' above one
    image makes the stage retry with 2, then 1; results equal an unconstrained run."""
    stage = make_stage(tiny_sam3, "segmentation.threshold=0.2", "segmentation.batch_size=4")
    reference = [make_sample(p, index=i) for i, p in enumerate(sample_paths())]
    stage.process(reference)

    forward, seen = stage.model.forward, []

    def small_gpu(*args, **kwargs):
        seen.append(len(kwargs["pixel_values"]))
        if len(kwargs["pixel_values"]) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(*args, **kwargs)

    monkeypatch.setattr(stage.model, "forward", small_gpu)
    batch = [make_sample(p, index=i) for i, p in enumerate(sample_paths())]
    stage.process(batch)
    assert seen == [4, 2, 1, 1, 1, 1]
    for got, want in zip(batch, reference):
        assert got.ok and np.abs(got.mask - want.mask).mean() < 1e-3


def test_sam3_missing_or_unreachable_weights_name_the_key(tmp_path, monkeypatch):
    """Error path: a missing directory, a directory without a checkpoint, and an uncached hub id
    under HF_HUB_OFFLINE each give one line naming segmentation.model."""
    for model, message in [(tmp_path / "nope", "no such directory"), (tmp_path, "no config.json")]:
        with pytest.raises(ConfigError) as err:
            Sam3(model=str(model))
        assert str(err.value).startswith(f"segmentation.model={model}: {message}") and "\n" not in str(err.value)
        assert "huggingface.co/facebook/sam3" in str(err.value)  # says how to get the weights
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"^segmentation.model=facebook/sam3: not in the local Hugging Face "
                                          r"cache and HF_HUB_OFFLINE is set; run `hf download facebook/sam3`"):
        Sam3()


@pytest.mark.parametrize("override, message", [
    ("segmentation.instances=all", "segmentation.instances=all: choose union or best"),
    ("segmentation.threshold=1.5", "segmentation.threshold=1.5: must be a number >= 0 and <= 1"),
    ("segmentation.dtype=fp8", "segmentation.dtype=fp8: choose from auto, float32, bfloat16, float16"),
    ("segmentation.batch_size=0", "segmentation.batch_size=0: must be an integer >= 1 or null"),
    ("segmentation.fallback=nope", "segmentation.fallback=nope: unknown option"),
])
def test_sam3_bad_config_is_one_line(tiny_sam3, override, message):
    with pytest.raises(ConfigError) as err:
        build(compose_config("segmentation=sam3", f"segmentation.model={tiny_sam3}", override), "segmentation")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_sam3_job_end_to_end_through_the_cli(tiny_sam3, tmp_path):
    """Code path of a whole job: the CLI loads the checkpoint once, batches the bundled photos
    through SAM 3 (grabcut for any without a detection) and the rest of the pipeline."""
    run_dir = tmp_path / "run"
    run_synth(run_dir, "segmentation=sam3", f"segmentation.model={tiny_sam3}", "segmentation.threshold=0.2",
              "segmentation.fallback=grabcut", "device=cpu", "batch_size=2")
    summary = read_summary(run_dir)
    assert summary["done"] == 4 and summary["failed"] == 0
    for record in read_samples(summary["run_dir"]):
        assert (run_dir / "stage_1" / f"{record['image_id']}_mask.png").is_file()
        assert record["params"]["segmentation"]["method"] == "sam3"


@pytest.mark.parametrize("instances", ["union", "best"])
def test_sam3_device_post_processing_matches_the_processors(tiny_sam3, instances):
    """Code path, not quality: the mask reduced, resized and feathered on the device (here CPU
    tensors, the same code) equals the processor's own post-processing (every kept instance at
    full size) followed by the CPU feathering, to 8-bit rounding; only that one uint8 HxW mask
    per image reaches apply()."""
    from synth.imaging import gaussian_blur, to_uint8

    stage = make_stage(tiny_sam3, "segmentation.threshold=0.2", f"segmentation.instances={instances}")
    crossed, apply = [], stage.apply
    stage.apply = lambda sample, result: (crossed.append(result[1]), apply(sample, result))
    batch = two_photos()
    stage.process(batch)

    inputs = stage.processor(images=[s.image for s in batch], text=["person"] * 2, return_tensors="pt")
    with torch.inference_mode():
        outputs = stage.model(**inputs)
    outputs.pred_masks = outputs.pred_masks.float()
    results = stage.processor.post_process_instance_segmentation(
        outputs, threshold=0.2, mask_threshold=0.5, target_sizes=[s.image.shape[:2] for s in batch])
    for sample, result, mask in zip(batch, results, crossed):
        h, w = sample.image.shape[:2]
        assert mask.dtype == np.uint8 and mask.shape == (h, w)
        scores, masks = result["scores"].numpy(), result["masks"].numpy().astype(bool)
        hard = masks[int(np.argmax(scores))] if instances == "best" else masks.any(axis=0)
        assert 0 < hard.mean() < 1, "the comparison needs a mask with an edge"
        want = gaussian_blur(hard.astype(np.float32), stage.feather * max(h, w))
        assert np.abs(sample.mask - want).max() <= 0.5 / 255 + 1e-6
        assert np.abs(to_uint8(sample.mask).astype(int) - to_uint8(want)).max() <= 1
        kept = [scores.max()] if instances == "best" else sorted(scores, reverse=True)
        assert sample.params["segmentation"]["scores"] == [round(float(s), 4) for s in kept]
