"""Behaviour of the model-stage plumbing (models/base.py, loading.py, sam3.py, sam.py, blip.py)
and of the weight-free segmentation options that hand-applied mutation testing found no other
test pinning down. Each test checks a property a user relies on (README "Model-backed stages",
"Segmentation"), with stand-in models or tiny random ones: code paths, not quality. Each names
the mutant it kills."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from synth.errors import ConfigError, SampleError
from synth.imaging import gaussian_blur, to_uint8
from synth.stages.models.base import ModelSegmentation, ModelStage, blur_on_device
from tests.conftest import make_sample
from tests.test_models_blip import make_stage as blip_stage, photos as blip_photos, tiny_blip  # noqa: F401 - fixture
from tests.test_models_sam import make_stage as sam_stage, tiny_sam  # noqa: F401 - fixture


class Counting(ModelStage):
    """A model stage without a model: counts its loads, 'captions' each sample."""

    name = "captioning"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loads = 0

    def load(self):
        self.loads += 1

    def infer(self, chunk):
        return [f"caption {s.index}" for s in chunk]

    def apply(self, sample, result):
        sample.caption = result


def fake_gpus(monkeypatch, count):
    """torch.cuda as a machine with ``count`` GPUs reports it (nothing is moved to a GPU here)."""
    monkeypatch.setattr(torch, "cuda", SimpleNamespace(is_available=lambda: count > 0, device_count=lambda: count))


# --- device and dtype ----------------------------------------------------------------------------
def test_a_stages_own_device_wins_over_the_jobs():
    """README: a stage's ``device`` (null: the job's). Mutant: base.py setup
    ``resolve_device(device or self.device_option)`` (the job's device first): a stage pinned to
    the CPU followed the job onto CUDA (here, without a GPU, a ConfigError)."""
    stage = Counting(device="cpu")
    stage.setup("cuda")
    assert stage.device == "cpu" and stage.dtype == torch.float32 and stage.loads == 1


def test_a_missing_gpu_names_the_stages_key_or_the_jobs(monkeypatch):
    """README: a device this machine lacks stops the job 'with one line naming the key'. Mutant:
    base.py setup ``check_cuda("device", ...)`` always (segmentation.device=cuda:0 was reported
    as device=cuda:0, a key the user never set)."""
    fake_gpus(monkeypatch, 0)
    with pytest.raises(ConfigError, match=r"^captioning\.device=cuda:0: this machine has no CUDA GPU"):
        Counting(device="cuda:0").setup("cpu")
    with pytest.raises(ConfigError, match=r"^device=cuda: this machine has no CUDA GPU"):
        Counting().setup("cuda")


def test_the_last_gpu_is_cuda_n_minus_1(monkeypatch):
    """README: cuda:9 on a 2-GPU node is refused with one line (cuda:0 to cuda:1). Mutant:
    stages/base.py check_cuda ``int(index) <= count`` (cuda:2 on 2 GPUs passed the check and
    ended in torch's 'invalid device ordinal' traceback)."""
    from synth.stages.base import check_cuda

    fake_gpus(monkeypatch, 2)
    check_cuda("segmentation.device", "cuda:1")
    with pytest.raises(ConfigError, match=r"^segmentation\.device=cuda:2: this machine has 2 CUDA GPUs: use cuda or "
                                          r"cuda:0 to cuda:1$"):
        check_cuda("segmentation.device", "cuda:2")


def test_dtype_auto_follows_the_stages_own_device(monkeypatch):
    """README: dtype ``auto`` = bfloat16 on a GPU, float32 on the CPU: the device the stage runs
    on. Mutant: base.py setup ``resolve_dtype(self.dtype_option, device)`` (the job's device):
    a stage on cuda:0 in a job with device=cpu ran in float32, one on the CPU in a CUDA job in
    bfloat16."""
    fake_gpus(monkeypatch, 1)
    on_gpu = Counting(device="cuda:0")
    on_gpu.setup("cpu")
    assert on_gpu.device == "cuda:0" and on_gpu.dtype == torch.bfloat16
    on_cpu = Counting(device="cpu")
    on_cpu.setup("cuda")
    assert on_cpu.device == "cpu" and on_cpu.dtype == torch.float32


def test_a_stage_on_device_auto_follows_the_jobs_gpu(monkeypatch):
    """Bug found in review (base.py setup): README "device: auto = CUDA when present", and a job
    on a node with n GPUs uses cuda:K, K = data.shard_index mod n. A model stage with its own
    ``device=auto`` resolved it alone, as shard 0: every job of a sweep put that model on cuda:0
    while the job's other models spread over the GPUs. Now ``auto`` takes the job's CUDA device;
    on a CPU job it still means CUDA when present."""
    fake_gpus(monkeypatch, 2)
    stage = Counting(device="auto")
    stage.setup("cuda:1")
    assert stage.device == "cuda:1" and stage.dtype == torch.bfloat16
    stage = Counting(device="auto")
    stage.setup("cpu")
    assert stage.device == "cuda:0"
    fake_gpus(monkeypatch, 0)
    stage = Counting(device="auto")
    stage.setup("cpu")
    assert stage.device == "cpu"


def test_a_stage_used_without_setup_loads_its_model_on_the_first_batch():
    """A stage called directly (a notebook, a script) sets itself up once. Mutant: base.py
    process without ``self.setup("auto")`` (infer ran without a model)."""
    stage = Counting(device="cpu")
    batch = [make_sample(index=i, size=8) for i in range(3)]
    stage.process(batch)
    stage.process(batch)
    assert stage.loads == 1 and stage.loaded and stage.device == "cpu"
    assert [s.caption for s in batch] == ["caption 0", "caption 1", "caption 2"]


# --- the segmentation ending ---------------------------------------------------------------------
class Fixed(ModelSegmentation):
    """A model segmentation without a model: 'finds' ``mask`` (uint8, as to_mask gives) or None."""

    method = "fixed"

    def __init__(self, mask=None, **kwargs):
        super().__init__(device="cpu", **kwargs)
        self.found = mask

    def load(self):
        pass

    def infer(self, chunk):
        return [self.found for _ in chunk]

    def apply(self, sample, result):
        self.finish(sample, result, "fixed found nothing", prompt="centre")


def test_an_all_empty_model_mask_fails_with_the_models_own_reason():
    """README: 'when the model finds nothing, the sample fails with the reason' (e.g. "sam
    returned an empty mask for the box prompt"). Mutant: base.py finish
    ``if mask is not None:`` (without ``and mask.any()``): an all-zero mask failed with the
    coverage arithmetic instead ("covers 0.000% of the frame")."""
    sample = make_sample(size=32)
    Fixed(np.zeros((32, 32), np.uint8)).process([sample])
    assert not sample.ok and sample.error == "SampleError: fixed found nothing"
    sample = make_sample(size=32)
    Fixed(np.zeros((32, 32), np.uint8), fallback="grabcut").process([sample])
    assert sample.ok and sample.params["segmentation"]["fallback_reason"] == "fixed found nothing"


# --- feathering on the device --------------------------------------------------------------------
@pytest.mark.parametrize("feather", [0.01, 0.03, 0.05, 0.1])
def test_device_feathering_equals_the_cpus_at_every_feather(feather):
    """README: the device masks 'equal the models' own post-processing followed by CPU
    feathering'; segmentation.feather goes up to 0.1 (sigma 21 px here, the downsampled path).
    The subject touches the top and right borders, where the mirrored border counts.
    Mutants: base.py blur_on_device ``residual = sigma / factor`` (no allowance for the area
    averaging's own blur), ``if factor < 1.0`` (the direct Gaussian never used); _gaussian
    ``2 * n - 2 - index`` (BORDER_REFLECT_101 instead of OpenCV's BORDER_REFLECT)."""
    hard = np.zeros((150, 211), bool)
    hard[:90, 40:] = True
    want = gaussian_blur(hard.astype(np.float32), feather * 211)
    soft = blur_on_device(torch.as_tensor(hard).float(), feather * 211).numpy()
    assert np.abs(soft - want).max() < 1e-5  # float rounding; the mutants are off by 0.001 to 0.004
    got = ModelSegmentation(device="cpu", feather=feather).to_mask(torch.as_tensor(hard))
    assert got.dtype == np.uint8 and got.shape == hard.shape
    assert np.abs(got.astype(int) - to_uint8(want)).max() <= 1


# --- sam3: what is kept and how it is binarised --------------------------------------------------
class FakeSam3:
    """Sam3Model's outputs for a chosen set of instances: ``scores`` (logits of each query) and
    ``masks`` (each query's low-resolution mask logits); ``presence`` None, as some heads give."""

    def __init__(self, logits, masks, presence=None):
        self.logits, self.masks, self.presence = logits, masks, presence

    def __call__(self, pixel_values, input_ids, attention_mask):
        n = len(pixel_values)
        return SimpleNamespace(pred_logits=torch.tensor([self.logits] * n, dtype=torch.float32),
                               presence_logits=None if self.presence is None else torch.full((n, 1), self.presence),
                               pred_masks=torch.stack([torch.as_tensor(self.masks, dtype=torch.float32)] * n))


def fake_processor(images, text, return_tensors, device):
    n = len(images)
    return {"pixel_values": torch.zeros(n, 3, 4, 4), "input_ids": torch.zeros(n, 2, dtype=torch.long),
            "attention_mask": torch.ones(n, 2, dtype=torch.long)}


def sam3_with(tmp_path, model, **options):
    """segmentation=sam3 as built from config, its model replaced by ``model`` (no weights)."""
    from synth.stages.models.sam3 import Sam3

    (tmp_path / "config.json").write_text("{}")
    stage = Sam3(model=str(tmp_path), device="cpu", feather=0.0, **options)
    stage.device, stage.dtype, stage.loaded = "cpu", torch.float32, True
    stage.processor, stage.model = fake_processor, model
    return stage


def test_sam3_keeps_only_instances_scoring_above_the_threshold(tmp_path):
    """README: sam3 keeps the instances 'that score above threshold (0.5)'. Mutant: sam3.py infer
    ``image_scores >= self.threshold``: an instance scoring exactly 0.5 (logit 0) was kept."""
    masks = np.full((2, 16, 16), -10.0, np.float32)
    masks[:, 4:12, 4:12] = 10.0
    sample = make_sample(size=16)
    sam3_with(tmp_path, FakeSam3([0.0, -3.0], masks)).process([sample])
    assert not sample.ok and sample.error == "SampleError: sam3 found no 'person' scoring above threshold 0.5"
    sample = make_sample(size=16)
    sam3_with(tmp_path, FakeSam3([0.01, -3.0], masks)).process([sample])
    assert sample.ok and sample.params["segmentation"]["instances"] == 1


def test_sam3_union_merges_every_kept_instance_however_many(tmp_path):
    """README: ``instances=union`` merges them all. The union is built a few instances at a time;
    with 20 instances (one column each) every column is in the mask. Mutant: sam3.py hard_mask
    ``range(0, len(kept), 9)`` over slices of 8 (instances 8 and 17 left out)."""
    masks = np.full((20, 20, 20), -10.0, np.float32)
    for q in range(20):
        masks[q, :10, q] = 10.0  # instance q: the top half of column q
    sample = make_sample(size=20)
    sam3_with(tmp_path, FakeSam3([2.0] * 20, masks)).process([sample])
    assert sample.ok and sample.params["segmentation"]["instances"] == 20
    assert (sample.mask[:10] == 1).all() and (sample.mask[10:] == 0).all()


def test_sam3_mask_threshold_binarises_the_instance_masks(tmp_path):
    """README: instances are 'binarised at mask_threshold (0.5)'. Mutant: sam3.py hard_mask
    ``resized > 0.5`` (segmentation.mask_threshold ignored)."""
    masks = np.full((1, 16, 16), -10.0, np.float32)
    masks[0, :, :8] = np.log(0.4 / 0.6)  # probability 0.4 on the left half
    masks[0, 6:10, 10:14] = 10.0  # and a certain square on the right
    for mask_threshold, left in [(0.3, True), (0.5, False)]:
        sample = make_sample(size=16)
        sam3_with(tmp_path, FakeSam3([3.0], masks), mask_threshold=mask_threshold).process([sample])
        assert sample.ok and sample.mask[6:10, 10:14].all()
        assert (sample.mask[:, :8] == 1).all() if left else not sample.mask[:, :8].any()


# --- loading: what a load error says -------------------------------------------------------------
def test_a_value_error_while_loading_is_one_line_naming_the_key():
    """README: weights that cannot load stop the job 'with one line naming the key'. transformers
    raises ValueError for a directory holding another model type. Mutant: loading.py
    load_pretrained ``except OSError`` only (a ValueError traceback, exit 1)."""
    from synth.stages.models.loading import load_pretrained

    def wrong_model(source):
        raise ValueError("Unrecognized configuration class <class 'BertConfig'>\nfor this kind of AutoModel")

    with pytest.raises(ConfigError) as err:
        load_pretrained("captioning.model", "/models/bert", "HOW", wrong_model)
    assert str(err.value) == ("captioning.model=/models/bert: cannot load (ValueError: Unrecognized configuration "
                              "class <class 'BertConfig'> for this kind of AutoModel); HOW")


def test_a_long_load_error_is_cut_to_one_short_line():
    """Mutant: loading.py _load_error ``first = str(err)`` (the whole multi-line message)."""
    from synth.stages.models.loading import load_pretrained

    def broken(source):
        raise OSError("Error no file named model.safetensors\n" + "x" * 1000)

    with pytest.raises(ConfigError) as err:
        load_pretrained("albedo.model", "/models/m", "HOW", broken)
    message = str(err.value)
    assert "\n" not in message and message.endswith("; HOW") and len(message) < 400
    assert message.startswith("albedo.model=/models/m: cannot load (OSError: Error no file named model.safetensors x")


def test_an_unknown_hub_id_says_no_such_model():
    """transformers reports an unknown hub id as an OSError '... is not a local folder and is not
    a valid model identifier ...' (the hub's RepositoryNotFoundError is not always chained).
    Mutant: loading.py _load_error without the text check (the generic 'cannot load')."""
    from synth.stages.models.loading import load_pretrained

    def unknown(source):
        raise OSError(f"{source} is not a local folder and is not a valid model identifier listed on "
                      "'https://huggingface.co/models'")

    with pytest.raises(ConfigError) as err:
        load_pretrained("captioning.model", "org/typo", "HOW", unknown)
    assert str(err.value) == "captioning.model=org/typo: no such model on the Hugging Face Hub (or it is private); HOW"


def test_offline_means_never_try_the_network(monkeypatch):
    """README: 'With HF_HUB_OFFLINE=1 nothing is fetched'; without it a hub id is downloaded.
    Mutant: loading.py hub_kwargs inverted (local_files_only when online: a hub id not yet in
    the cache never downloaded)."""
    import huggingface_hub.constants

    from synth.stages.models.loading import hub_kwargs

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert hub_kwargs() == {}
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert hub_kwargs() == {"local_files_only": True}


@pytest.mark.parametrize("source, local", [("org/name", False), ("name", False), ("models/org/name", True),
                                           ("./name", True), ("/abs/name", True), ("~/name", True)])
def test_a_hub_id_has_one_slash_and_a_path_more(source, local):
    """Mutant: loading.py looks_local ``source.count("/") > 2`` (models/org/name, a relative
    directory, was taken for a hub id and looked up on the Hub)."""
    from synth.stages.models.loading import looks_local

    assert looks_local(source) is local


def test_a_numbered_cuda_device_is_a_device():
    """README: a stage's device is auto, cpu, cuda or cuda:N. Mutant: loading.py check_device
    without ``(:\\d+)?`` after cuda (segmentation.device=cuda:1 refused)."""
    from synth.stages.models.loading import check_device

    for device in ("cuda:0", "cuda:1", "cuda:12", "cuda", "cpu", "auto", None):
        assert check_device("segmentation.device", device) == device


def test_out_of_memory_frees_the_cache_before_each_retry(monkeypatch):
    """A pass that ran out of memory leaves cached blocks; the retry with half the batch must not
    compete with them. Mutant: loading.py infer_backing_off without free_accelerator_memory()."""
    import synth.stages.models.loading as loading

    freed = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(True))

    def infer(chunk):
        if len(chunk) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return chunk

    assert [c for c, _ in loading.infer_backing_off([1, 2, 3, 4], infer, 4)] == [[1], [2], [3], [4]]
    assert len(freed) == 2  # after the pass of 4 and the pass of 2


# --- blip: the generation settings reach generate() ----------------------------------------------
def test_blip_max_new_tokens_bounds_the_caption(tiny_blip):
    """README/config: ``captioning.max_new_tokens`` caps the generated caption. Mutant: blip.py
    infer without ``max_new_tokens=`` (the model's default length, 20 tokens)."""
    stage = blip_stage(tiny_blip, "captioning.max_new_tokens=2")
    batch = blip_photos()
    stage.process(batch)
    for sample in batch:
        assert sample.ok, sample.error
        caption = sample.params["captioning"]["caption"]
        assert 1 <= len(stage.processor.tokenizer.tokenize(caption)) <= 2


def test_blip_num_beams_reaches_generation(tiny_blip, monkeypatch):
    """Config ``captioning.num_beams`` (beam search; greedy at 1, README 'Generation is greedy'
    by default). Mutant: blip.py infer without ``num_beams=`` (always greedy)."""
    stage = blip_stage(tiny_blip, "captioning.num_beams=3")
    generate, seen = stage.model.generate, []

    def spy(**kwargs):
        seen.append({k: kwargs.get(k) for k in ("num_beams", "max_new_tokens", "do_sample")})
        return generate(**kwargs)

    monkeypatch.setattr(stage.model, "generate", spy)
    batch = blip_photos()[:1]
    stage.process(batch)
    assert batch[0].ok and seen == [{"num_beams": 3, "max_new_tokens": 8, "do_sample": False}]


# --- the fallback --------------------------------------------------------------------------------
def test_a_fallback_mapping_that_builds_another_kind_of_stage_is_refused():
    """README: the fallback is 'another segmentation option'. A mapping is built by Hydra's
    recursive instantiate before the stage sees it; one naming a stage of another group is
    refused in one line saying so. Mutant: base.py build_fallback without the name check for an
    already built stage (the message became "segmentation.fallback=<synth.stages.albedo.Retinex
    object at 0x...>: give a segmentation option name ...", about what the user did right)."""
    from omegaconf import OmegaConf

    from synth.app import build

    cfg = OmegaConf.create({"segmentation": {"_target_": "tests.test_integrity_inputs.SpeckSegmentation", "device": "cpu",
                                             "fallback": {"_target_": "synth.stages.albedo.Retinex"}}})
    with pytest.raises(ConfigError) as err:
        build(cfg, "segmentation")
    assert str(err.value) == "segmentation.fallback=Retinex: not a segmentation stage"


# --- sam -----------------------------------------------------------------------------------------
def test_sam_reduced_precision_is_autocast_over_float32_weights(tiny_sam):
    """README: 'SAM runs bfloat16 as autocast over float32 weights'. Mutant: sam.py autocast
    ``enabled=False`` (dtype=bfloat16 silently ran in float32)."""
    stage = sam_stage(tiny_sam, "segmentation.dtype=bfloat16", "device=cpu")
    assert stage.dtype == torch.bfloat16 and next(stage.model.parameters()).dtype == torch.float32
    seen = []
    stage.model.image_encoder.register_forward_hook(
        lambda module, args, out: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    batch = [make_sample(index=0, size=64)]
    stage.process(batch)
    assert seen == [(True, torch.bfloat16)]
    assert batch[0].ok or batch[0].error.startswith("SampleError: sam returned an empty mask")  # random weights


def test_sam_auto_ignores_a_mask_of_nearly_the_whole_frame():
    """README: 'the largest mask covering the centre', not the whole frame (95 % or more is the
    background's complement, not a subject). Mutant: sam.py largest_central
    ``c["area"] < 0.99 * h * w``."""
    from synth.stages.models.sam import Sam

    almost = np.ones((10, 10), bool)
    almost[0, :4] = False  # 96 %
    centre = np.zeros((10, 10), bool)
    centre[3:8, 3:8] = True
    candidates = [{"segmentation": m, "area": int(m.sum())} for m in (almost, centre)]
    assert Sam.largest_central(candidates, (10, 10)) is centre


def test_a_model_fallback_loads_with_the_stage_on_the_jobs_device():
    """README: weights load 'at the start of the run' (a problem shows then, not mid-run), on the
    job's device. Mutant: base.py ModelSegmentation.setup without ``self.fallback.setup(device)``
    (the fallback model loaded at its first sample, on device 'auto': the GPU in a device=cpu job)."""
    class Loads(Fixed):
        def __init__(self, **kwargs):
            ModelSegmentation.__init__(self, **kwargs)  # device null: the job's
            self.found, self.loads = None, 0

        def load(self):
            self.loads += 1

    fallback = Loads()
    stage = Fixed(np.zeros((16, 16), np.uint8), fallback=fallback)
    stage.setup("cpu")
    assert fallback.loaded and fallback.loads == 1 and fallback.device == "cpu"


# --- weight-free segmentation: what counts as a subject, and mask files --------------------------
def test_a_mask_at_exactly_the_limits_marks_a_subject():
    """README/segmentation.py: a mask fails when it covers 'less than 0.1 %' of the frame or no
    pixel 'reaches 50 %'. Mutants: segmentation.py empty_mask_reason ``covered <= MIN_SUBJECT``
    and ``strongest <= 0.5`` (a mask exactly at a limit refused)."""
    from synth.stages.segmentation import empty_mask_reason

    tiny = np.zeros((100, 100), np.float32)
    tiny.flat[:10] = 1.0  # exactly 0.1 %
    assert empty_mask_reason(tiny) is None
    tiny.flat[9] = 0.0
    assert "covers 0.090% of the frame" in empty_mask_reason(tiny)
    half = np.full((10, 10), 0.5, np.float32)  # every pixel exactly half subject
    assert empty_mask_reason(half) is None
    assert "no pixel reaches 50 %" in empty_mask_reason(half * 0.99)


def mask_stage(tmp_path):
    from synth.stages.segmentation import MaskFolder

    (tmp_path / "masks").mkdir(exist_ok=True)
    return MaskFolder(path=str(tmp_path / "masks"))


def test_a_relative_input_path_finds_its_mirrored_mask_first(tmp_path):
    """MaskFolder: the mask is 'the longest tail of its path that exists here'; for an input
    a/p.jpg that is <path>/a/p.png, before a flat <path>/p.png. Mutant: segmentation.py
    mask_path ``range(1, len(parts))`` (the whole relative path never tried: every input named
    p.* got the flat mask)."""
    import cv2

    stage = mask_stage(tmp_path)
    (tmp_path / "masks" / "a").mkdir()
    left, right = np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8)
    left[:, :16], right[:, 16:] = 255, 255
    cv2.imwrite(str(tmp_path / "masks" / "a" / "p.png"), left)
    cv2.imwrite(str(tmp_path / "masks" / "p.png"), right)
    sample = make_sample(size=32)
    sample.source = "a/p.jpg"
    assert stage.mask_path(sample) == tmp_path / "masks" / "a" / "p.png"
    stage.process([sample])
    assert sample.ok and (sample.mask[:, :16] == 1).all() and (sample.mask[:, 16:] == 0).all()


def test_a_small_mask_a_pixel_off_in_aspect_is_resized_not_refused(tmp_path):
    """MaskFolder: a mask is resized to the image 'when the aspect ratio agrees'; a mask saved at
    a small size is a rounding pixel off. Mutant: segmentation.py aspect check without the
    one-pixel allowance ``max(1.0, ...)``."""
    import cv2

    stage = mask_stage(tmp_path)
    mask = np.zeros((5, 16), np.uint8)  # the image below is 33 x 10: 16 x 4.85 at this width
    mask[1:4, 4:12] = 255
    cv2.imwrite(str(tmp_path / "masks" / "p.png"), mask)
    sample = make_sample(size=32)
    sample.image = np.zeros((10, 33, 3), np.uint8)
    sample.source = str(tmp_path / "in" / "p.jpg")
    stage.process([sample])
    assert sample.ok, sample.error
    assert sample.mask.shape == (10, 33) and sample.mask.max() == 1


def test_an_opaque_colour_mask_uses_its_grey_levels(tmp_path):
    """MaskFolder: 'colour masks use their luminance, or their alpha channel when it is not
    uniform'. Mutant: segmentation.py _mask_values taking the alpha channel even when uniform
    (an RGBA mask saved fully opaque became a full-frame subject)."""
    import cv2

    stage = mask_stage(tmp_path)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24, :3] = 255
    rgba[:, :, 3] = 255
    cv2.imwrite(str(tmp_path / "masks" / "p.png"), rgba)
    sample = make_sample(size=32)
    sample.source = str(tmp_path / "in" / "p.jpg")
    stage.process([sample])
    assert sample.ok and sample.mask[8:24, 8:24].min() == 1 and sample.mask.sum() == 16 * 16


def test_not_a_number_in_a_float_mask_is_background(tmp_path):
    """MaskFolder: 'float masks are clipped to [0, 1]'; NaN pixels are background, never NaN in
    mask.png and the composites. Mutant: segmentation.py _mask_values without nan_to_num."""
    import cv2

    stage = mask_stage(tmp_path)
    mask = np.full((32, 32), np.nan, np.float32)
    mask[8:24, 8:24] = 1.0
    assert cv2.imwrite(str(tmp_path / "masks" / "p.tiff"), mask)
    stage.suffix = ".tiff"
    sample = make_sample(size=32)
    sample.source = str(tmp_path / "in" / "p.jpg")
    stage.process([sample])
    assert sample.ok, sample.error
    assert np.isfinite(sample.mask).all() and sample.mask.sum() == 16 * 16


def test_sam3_best_keeps_the_highest_scoring_instance(tmp_path):
    """README: ``instances=best`` keeps the highest-scoring one. Mutant: sam3.py infer
    ``kept = kept[:1]`` (the first instance above threshold; the tiny random model's happens to
    be its best, so the other sam3 tests pass)."""
    masks = np.full((3, 16, 16), -10.0, np.float32)
    masks[0, :8, :8], masks[1, 8:, 8:], masks[2, :8, 8:] = 10.0, 10.0, 10.0
    sample = make_sample(size=16)
    sam3_with(tmp_path, FakeSam3([1.0, 3.0, 2.0], masks), instances="best").process([sample])
    assert sample.ok and sample.params["segmentation"]["instances"] == 1
    assert sample.params["segmentation"]["scores"] == [round(float(torch.sigmoid(torch.tensor(3.0))), 4)]
    assert (sample.mask[8:, 8:] == 1).all() and sample.mask.sum() == 64


def test_sam_auto_keeps_the_largest_of_several_central_masks():
    """README: ``prompt=auto`` keeps 'the largest mask covering the centre' (the generator lists
    masks by its own score, not by size). Mutant: sam.py largest_central ``central[0]``."""
    from synth.stages.models.sam import Sam

    small, large, off = np.zeros((10, 10), bool), np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    small[4:7, 4:7], large[2:9, 2:9], off[:, :2] = True, True, True
    candidates = [{"segmentation": m, "area": int(m.sum())} for m in (off, small, large)]
    assert Sam.largest_central(candidates, (10, 10)) is large
