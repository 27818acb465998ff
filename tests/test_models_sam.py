"""segmentation=sam with a small-depth segment-anything model saved as a .pth state dict, the
format Meta's checkpoints use.

These tests prove the code path (config -> checkpoint -> batched image encoder -> prompts ->
mask), not segmentation quality: the weights are random.
"""

import numpy as np
import pytest
import torch

from synth.errors import ConfigError
from synth.stages.models.sam import ARCHITECTURES, Sam, architecture
from tests.conftest import batched_and_single, built_stage, make_sample, run_synth, sample_paths, two_photos


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    """SAM's own modules at 32-wide, two blocks (one windowed, one global): ~5M parameters, most
    of them the standard prompt encoder and mask decoder."""
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    model = _build_sam(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])
    path = tmp_path_factory.mktemp("sam-tiny") / "sam_tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def make_stage(checkpoint, *overrides):
    """The stage exactly as `python -m synth segmentation=sam segmentation.checkpoint=PATH ...` builds it."""
    return built_stage("segmentation", "segmentation=sam", f"segmentation.checkpoint={checkpoint}",
                       "segmentation.model_type=auto", *overrides)


@pytest.mark.parametrize("prompt", ["center_point", "box"])
def test_sam_batch_of_two_photos_equals_one_at_a_time(tiny_sam, prompt):
    """Code path, not quality: one batched image-encoder pass, prompt per image, image-sized mask."""
    stage = make_stage(tiny_sam, f"segmentation.prompt={prompt}")
    assert isinstance(stage, Sam) and stage.dtype == torch.float32
    batch, singles = batched_and_single(stage, two_photos)
    for batched, single in zip(batch, singles):
        for sample in (batched, single):
            if not sample.ok:  # random weights may return an empty mask: then it must say so
                assert sample.error == f"SampleError: sam returned an empty mask for the {prompt.replace('_', ' ')} prompt"
                continue
            assert sample.mask.shape == sample.image.shape[:2] and sample.mask.dtype == np.float32
            assert 0.0 <= sample.mask.min() and sample.mask.max() <= 1.0
            assert sample.params["segmentation"] == {"method": "sam", "prompt": prompt}
        assert batched.ok == single.ok
        if batched.ok:
            assert np.abs(batched.mask - single.mask).mean() < 1e-3
    assert any(s.ok for s in batch), "with these seeded weights the mask path must run at least once"


def test_sam_auto_keeps_the_largest_central_mask(tiny_sam):
    """Code path of the automatic mask generator (filters off so random weights yield masks)."""
    stage = make_stage(tiny_sam, "segmentation.prompt=auto", "segmentation.points_per_side=1",
                       "segmentation.pred_iou_thresh=0", "segmentation.stability_score_thresh=0")
    batch = [make_sample(p, index=i, size=160) for i, p in enumerate(sample_paths()[:2])]  # the generator is slow on CPU
    stage.process(batch)
    for sample in batch:
        if sample.ok:
            h, w = sample.mask.shape
            assert sample.mask.shape == sample.image.shape[:2] and sample.mask[h // 2, w // 2] > 0.5
        else:
            assert sample.error == "SampleError: sam's automatic masks: none covers the image centre"
    assert any(s.ok for s in batch), "with these seeded weights the mask path must run at least once"
    # the selection rule itself, on made-up candidates
    full = np.ones((10, 10), bool)
    left, centre = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    left[:, :3], centre[3:8, 3:8] = True, True
    pick = Sam.largest_central([{"segmentation": m, "area": int(m.sum())} for m in (full, left, centre)], (10, 10))
    assert pick is centre
    assert Sam.largest_central([{"segmentation": left, "area": 30}], (10, 10)) is None


def test_sam_architecture_is_read_off_the_checkpoint(tiny_sam):
    """Code path, not quality: model_type=auto reads the architecture; a wrong model_type is one line."""
    state = torch.load(tiny_sam, weights_only=True)
    assert architecture(state) == (32, 2, 2, (1,))
    with pytest.raises(ConfigError, match=r"segmentation.model_type=vit_b: the checkpoint is a non-standard "
                                          r"model; set segmentation.model_type=auto"):
        make_stage(tiny_sam, "segmentation.model_type=vit_b")
    assert set(ARCHITECTURES) == {"vit_b", "vit_l", "vit_h"}


def test_sam_missing_or_bad_checkpoint_names_the_key(tmp_path):
    """Error path: a missing, absent or unreadable checkpoint is one line naming segmentation.checkpoint
    and where to download the weights."""
    with pytest.raises(ConfigError, match=r"^segmentation.checkpoint: required with segmentation=sam; download "
                                          r"https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"):
        Sam()
    with pytest.raises(ConfigError, match=r"^segmentation.checkpoint=/nonexistent/sam.pth: no such file; download "
                                          r"https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"):
        Sam(checkpoint="/nonexistent/sam.pth", model_type="vit_b")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    stage = Sam(checkpoint=str(junk))
    with pytest.raises(ConfigError, match=r"^segmentation.checkpoint=.*junk.pth: not a segment-anything checkpoint"):
        stage.setup("cpu")


def test_cli_reports_a_missing_sam_checkpoint_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_synth(run_dir, "segmentation=sam", "segmentation.checkpoint=/nonexistent", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: segmentation.checkpoint=/nonexistent: no such file; download "
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth "
        "and set segmentation.checkpoint=/path/to/sam_vit_h_4b8939.pth"]


@pytest.mark.parametrize("prompt", ["center_point", "box"])
def test_sam_device_path_matches_segment_anythings_forward(tiny_sam, prompt):
    """Code path, not quality: fused attention, choosing the candidate at low resolution and
    feathering on the device (here CPU tensors, the same code) give the mask that
    segment-anything's own forward (all candidates at full size) plus CPU feathering gives, to
    8-bit rounding; only that one uint8 HxW mask per image reaches apply()."""
    from segment_anything.build_sam import _build_sam

    from synth.imaging import gaussian_blur, to_uint8

    stage = make_stage(tiny_sam, f"segmentation.prompt={prompt}")
    torch.manual_seed(1)
    for name, param in stage.model.named_parameters():  # non-zero relative positions, so the bias path counts
        if "rel_pos" in name:
            torch.nn.init.normal_(param, std=0.5)
    reference = _build_sam(*architecture(stage.model.state_dict())).eval()
    reference.load_state_dict(stage.model.state_dict())
    crossed, apply = [], stage.apply
    stage.apply = lambda sample, result: (crossed.append(result), apply(sample, result))
    batch = two_photos()
    stage.process(batch)

    records = []
    for sample in batch:
        h, w = sample.image.shape[:2]
        image = torch.as_tensor(stage.resize.apply_image(sample.image)).permute(2, 0, 1).float()
        record = {"image": image, "original_size": (h, w)}
        if prompt == "center_point":
            record["point_coords"] = torch.as_tensor(stage.resize.apply_coords(np.array([[[w / 2, h / 2]]], np.float32), (h, w)))
            record["point_labels"] = torch.ones((1, 1), dtype=torch.int)
        else:
            m = stage.margin
            record["boxes"] = torch.as_tensor(stage.resize.apply_boxes(
                np.array([[w * m, h * m, w * (1 - m), h * (1 - m)]], np.float32), (h, w)))
        records.append(record)
    with torch.inference_mode():
        outputs = reference(records, multimask_output=prompt == "center_point")
    compared = 0
    for sample, out, mask in zip(batch, outputs, crossed):
        h, w = sample.image.shape[:2]
        assert mask.dtype == np.uint8 and mask.shape == (h, w)
        hard = out["masks"][0, int(out["iou_predictions"][0].argmax())].numpy()
        want = gaussian_blur(hard.astype(np.float32), stage.feather * max(h, w))
        # random weights put many logits near the threshold, where float rounding flips a few pixels
        diff = np.abs(to_uint8(want).astype(int) - mask)
        assert (diff > 1).mean() < 0.001 and diff.mean() < 0.05
        compared += sample.ok and 0 < hard.mean() < 1
    assert compared, "with these seeded weights at least one mask must have an edge"


def test_feathering_stays_float32_under_sams_autocast():
    """SAM runs under bfloat16 autocast on a GPU; the mask's blur must not (8-bit levels would be off)."""
    from synth.imaging import gaussian_blur, to_uint8
    from synth.stages.models.base import ModelSegmentation

    stage = ModelSegmentation(device="cpu", feather=0.02)
    hard = np.zeros((200, 240), bool)
    hard[40:150, 60:200] = True
    want = to_uint8(gaussian_blur(hard.astype(np.float32), 0.02 * 240))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = stage.to_mask(torch.as_tensor(hard))
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - want).max() <= 1
