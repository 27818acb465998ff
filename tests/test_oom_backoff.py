"""Out-of-memory back-off of every model: a model stage (albedo=marigold, through ModelStage) and
the depth and Marigold normals models behind ``shadow.normals=depth|marigold``.

No GPU is needed: the tiny randomly initialised models of the other model tests get a forward
pass that raises CUDA's out-of-memory error for batches larger than ``fits`` (or for one chosen
image). These tests prove the back-off's code path (split, retry, results unchanged, a sample
that does not fit alone failing with a reason), not the models' quality: their weights are random.
"""

import numpy as np
import pytest
import torch

from synth.schedule import run_stage
from synth.stages.shadow import SoftShading
from tests.conftest import built_stage
from tests.test_models_marigold import masked_photos, tiny_iid, tiny_normals  # noqa: F401 - fixtures
from tests.test_shading import grey_card, tiny_depth_model  # noqa: F401 - fixture

OOM_ERRORS = [torch.OutOfMemoryError, RuntimeError]  # RuntimeError("CUDA out of memory ...") as older torch raised
REASON = "SampleError: out of GPU memory even at batch size 1 (CUDA out of memory."


def limit_memory(monkeypatch, module, fits=99, error=torch.OutOfMemoryError, too_big=lambda x: False):
    """Make ``module``'s forward raise ``error`` for a batch of more than ``fits`` items, or one
    in which ``too_big(input)`` holds. Returns the list of batch sizes it was called with."""
    sizes, forward = [], module.forward

    def limited(*args, **kwargs):
        x = args[0] if args else next(iter(kwargs.values()))
        sizes.append(len(x))
        if len(x) > fits or too_big(x):
            raise error("CUDA out of memory. Tried to allocate 20.00 GiB")
        return forward(*args, **kwargs)

    monkeypatch.setattr(module, "forward", limited)
    return sizes


# --- shadow.normals=depth ------------------------------------------------------------------------
def depth_stage(path):
    stage = SoftShading(normals="depth", depth_model=str(path), base="foreground", specular_chance=0.0,
                        cast_chance=0.0, min_visibility=0)  # random model: flat light
    stage.setup("cpu")
    return stage


def noisy_cards(white=None):
    """Four 64 px cards of random pixels (one shape: one batch for the depth model); card
    ``white`` all white instead (the one the tests make too big)."""
    batch = [grey_card(64, index=i) for i in range(4)]
    for s in batch:
        s.image = np.random.default_rng(s.index).integers(0, 256, s.image.shape, dtype=np.uint8)
    if white is not None:
        batch[white].image[:] = 255
    return batch


@pytest.mark.parametrize("error", OOM_ERRORS)
def test_depth_model_splits_the_batch_and_gives_the_same_images(tiny_depth_model, monkeypatch, error):
    """Code path, not quality: a depth model that fits one image at a time still relights all
    four images as the unconstrained batch does."""
    stage = depth_stage(tiny_depth_model)
    reference = noisy_cards()
    stage.process(reference)
    sizes = limit_memory(monkeypatch, stage.depth.model, fits=1, error=error)
    batch = noisy_cards()
    stage.process(batch)  # without a back-off this raises
    assert sizes == [4, 2, 1, 1, 1, 1]
    for s, r in zip(batch, reference):
        assert s.ok, s.error
        assert np.abs(s.degraded.astype(int) - r.degraded).max() <= 1


def test_depth_image_that_does_not_fit_alone_fails_and_the_others_go_on(tiny_depth_model, monkeypatch):
    """Code path, not quality: the image that runs out of memory even alone fails with the
    reason; the job goes on and the other images come out as without the limit."""
    stage = depth_stage(tiny_depth_model)
    reference = noisy_cards(white=1)
    stage.process(reference)
    # the processor normalises to [-1, 1]: only the white card is 1 everywhere
    limit_memory(monkeypatch, stage.depth.model, too_big=lambda x: bool((x.amin(dim=(1, 2, 3)) > 0.99).any()))
    batch = noisy_cards(white=1)
    run_stage(stage, batch)  # as the runner calls a stage
    assert [s.ok for s in batch] == [True, False, True, True]
    assert batch[1].error_stage == "shadow" and batch[1].error.startswith(REASON), batch[1].error
    for s, r in zip(batch, reference):
        if s.ok:
            assert np.abs(s.degraded.astype(int) - r.degraded).max() <= 1


# --- shadow.normals=marigold ---------------------------------------------------------------------
def marigold_normals_stage(path):
    return built_stage("shadow", "shadow=soft_shading", "shadow.normals=marigold", f"shadow.normals_model={path}",
                       "shadow.min_visibility=0", "device=cpu")


def lit_photos():
    batch = masked_photos()
    for sample in batch:
        sample.albedo = sample.image
    return batch


@pytest.mark.parametrize("error", OOM_ERRORS)
def test_marigold_normals_split_the_batch_and_give_the_same_normals(tiny_normals, monkeypatch, error):
    """Code path, not quality: with room for one image at a time, the normals equal the
    unconstrained batch's (each sample's noise is its own, so batching does not change them)."""
    stage = marigold_normals_stage(tiny_normals)
    reference = stage.surface_normals(lit_photos())
    sizes = limit_memory(monkeypatch, stage.marigold.runner.pipe.unet, fits=1, error=error)
    normals = stage.surface_normals(lit_photos())
    assert sizes == [2, 1, 1]
    for n, r in zip(normals, reference):
        np.testing.assert_allclose(n, r, atol=1e-3)


def test_marigold_normals_that_do_not_fit_alone_fail_the_samples(tiny_normals, monkeypatch):
    """Code path: a model that fits no image at all fails every sample with the reason (the
    runner goes on to the next batch) instead of stopping the job."""
    stage = marigold_normals_stage(tiny_normals)
    limit_memory(monkeypatch, stage.marigold.runner.pipe.unet, fits=0)
    batch = lit_photos()
    run_stage(stage, batch)
    for s in batch:
        assert not s.ok and s.error_stage == "shadow" and s.error.startswith(REASON), s.error


# --- a model stage (albedo=marigold): the same back-off through ModelStage -----------------------
def test_marigold_albedo_backs_off_the_same_way(tiny_iid, monkeypatch):
    """Code path, not quality: the albedo is the same with room for one image at a time, and
    with room for none each sample fails alone with the reason (no exception reaches the runner)."""
    stage = built_stage("albedo", "albedo=marigold", f"albedo.model={tiny_iid}", "device=cpu")
    reference = masked_photos()
    stage.process(reference)
    sizes = limit_memory(monkeypatch, stage.runner.pipe.unet, fits=1)
    batch = masked_photos()
    stage.process(batch)
    assert sizes == [2, 1, 1]
    for s, r in zip(batch, reference):
        assert s.ok, s.error
        assert np.abs(s.albedo.astype(int) - r.albedo).max() <= 1
    limit_memory(monkeypatch, stage.runner.pipe.unet, fits=0)
    batch = masked_photos()
    stage.process(batch)
    for s in batch:
        assert not s.ok and s.error_stage == "albedo" and s.error.startswith(REASON), s.error
