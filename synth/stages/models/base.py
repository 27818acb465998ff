"""The one base every model-backed stage shares: device and dtype, batching, out-of-memory
back-off and per-sample failures; plus the endings of model segmentation and model captioning.

A subclass implements three things:

- ``load()``: build the model on ``self.device`` in ``self.dtype`` (called once per process);
- ``infer(chunk)``: run the model on a list of samples at once, return one result per sample;
- ``apply(sample, result)``: store one result on its sample, raising SampleError when that
  sample has no usable result (for example nothing detected).
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Sequence

import numpy as np

from synth.params import setting
from synth.errors import ConfigError, SampleError, one_line
from synth.sample import Sample
from synth.stages.base import Stage, check_cuda, resolve_device
from synth.stages.captioning import check_subject, check_template, describe_degradation
from synth.stages.models.loading import check_device, check_dtype, infer_backing_off, resolve_dtype
from synth.stages.segmentation import empty_mask_reason, set_mask


class ModelStage(Stage):
    """Batched inference with a model loaded once per process.

    ``batch_size`` caps how many samples go through the model at once (null: the whole batch the
    runner hands over, i.e. the job's ``batch_size``). When a forward pass runs out of GPU memory
    the chunk is halved and retried, down to one sample; a sample that does not fit even alone
    fails with that reason and the others go on. Each runner batch starts again at
    ``batch_size``, so one huge image does not slow the rest of the run
    (:func:`synth.stages.models.loading.infer_backing_off`).
    """

    batched_on_device = True

    def __init__(self, batch_size: int | None = None, device: str | None = None, dtype: str = "auto"):
        self.batch_size = setting(f"{self.name}.batch_size", batch_size, 1, integer=True, optional=True)  # null: the job's
        self.device_option = check_device(f"{self.name}.device", device)
        self.dtype_option = check_dtype(f"{self.name}.dtype", dtype)
        self.device: str | None = None  # resolved in setup
        self.dtype: Any = None  # a torch.dtype, resolved in setup
        self.loaded = False

    # -- for subclasses -------------------------------------------------------------------------
    def load(self) -> None:
        raise NotImplementedError

    def infer(self, chunk: list[Sample]) -> Sequence[Any]:
        raise NotImplementedError

    def apply(self, sample: Sample, result: Any) -> None:
        raise NotImplementedError

    # -- the stage interface --------------------------------------------------------------------
    def setup(self, device: str) -> None:
        if self.loaded:  # once per process, however often the runner asks
            return
        option = self.device_option
        if option == "auto" and str(device).startswith("cuda"):  # the job's GPU: cuda:K for shard K of a sweep
            option = device
        self.device = resolve_device(option or device)
        check_cuda(f"{self.name}.device" if self.device_option else "device", self.device)
        self.dtype = resolve_dtype(self.dtype_option, self.device)
        self.load()
        self.loaded = True

    def process(self, batch: list[Sample]) -> None:
        if not self.loaded:
            self.setup("auto")
        todo = [s for s in batch if s.ok]  # a runner retry may include samples this stage already failed
        for chunk, results in infer_backing_off(todo, self.infer, self.batch_size,
                                                lambda sample, err: sample.fail(self.name, err)):
            for sample, result in zip(chunk, results):
                self._apply_one(sample, result)

    def _apply_one(self, sample: Sample, result: Any) -> None:
        # A sample without a usable result fails alone: raising would make the runner redo the
        # whole batch one sample at a time. Same message as the runner would record.
        try:
            self.apply(sample, result)
        except SampleError as err:
            sample.fail(self.name, err)


# -- segmentation ---------------------------------------------------------------------------------
def build_fallback(spec: Any) -> Stage | None:
    """``fallback=grabcut`` names a file in the segmentation config group; a mapping with
    ``_target_`` is built as it is (for options: ``{_target_: ..., path: ...}``)."""
    if spec is None:
        return None
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from synth.app import group_options

    if isinstance(spec, Stage):  # a mapping with _target_ in the config: Hydra's recursive instantiate built it
        stage = spec
    else:
        if isinstance(spec, str):
            options = group_options("segmentation")
            if spec not in options:
                raise ConfigError(f"segmentation.fallback={spec}: unknown option; choose from {', '.join(options)}")
            node = OmegaConf.create(resources.files("synth.conf").joinpath("segmentation", f"{spec}.yaml").read_text())
        elif isinstance(spec, dict) and "_target_" in spec:
            node = OmegaConf.create(spec)
        else:
            raise ConfigError(f"segmentation.fallback={spec}: give a segmentation option name such as grabcut, "
                              "or a mapping with _target_")
        try:
            stage = instantiate(node, _convert_="all")
        except Exception as err:  # noqa: BLE001 - Hydra wraps the stage's own ConfigError
            cause = err.__cause__ if isinstance(err.__cause__, ConfigError) else err
            how = (" (an option's settings go in a mapping: "
                   f"segmentation.fallback={{_target_:{node.get('_target_')},...}})" if isinstance(spec, str) else "")
            raise ConfigError(f"segmentation.fallback: {one_line(cause)}{how}") from None
    if getattr(stage, "name", None) != "segmentation":
        shown = type(stage).__name__ if stage is spec else spec  # not the object's repr
        raise ConfigError(f"segmentation.fallback={shown}: not a segmentation stage")
    return stage


def blur_on_device(image: Any, sigma: float, max_sigma: float = 4.0) -> Any:
    """:func:`synth.imaging.gaussian_blur` for an HxW float32 torch tensor, on its device.

    The same plan (a direct Gaussian for small sigmas; area-downsample, blur, bilinear upsample for
    large ones), kernel size and mirrored border as OpenCV's, so a mask feathered here matches the
    CPU's to float rounding.
    """
    import torch.nn.functional as F

    if sigma <= 0:
        return image
    h, w = image.shape
    factor = max(1.0, sigma / max_sigma)
    if factor < 2.0:
        return _gaussian(image[None, None], sigma)[0, 0]
    small = _area_resize(image, max(1, round(h / factor)), max(1, round(w / factor)))[None, None]
    residual = max(0.0, (sigma / factor) ** 2 - 1 / 12.0) ** 0.5  # area averaging already blurred a little
    small = _gaussian(small, residual)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0, 0]


def _area_resize(image: Any, h: int, w: int) -> Any:
    """cv2.INTER_AREA downsampling of an HxW tensor: each output pixel averages the source area it
    covers, weighting partly covered pixels (torch's 'area' mode does not, at non-integer ratios)."""
    import torch

    def weights(n_out: int, n_in: int) -> Any:
        scale = n_in / n_out
        lo = torch.arange(n_out, dtype=torch.float64)[:, None] * scale
        left = torch.arange(n_in, dtype=torch.float64)[None, :]
        overlap = (torch.minimum(lo + scale, left + 1) - torch.maximum(lo, left)).clamp(min=0)
        return (overlap / scale).to(image.device, torch.float32)

    return weights(h, image.shape[0]) @ image @ weights(w, image.shape[1]).T


def _gaussian(image: Any, sigma: float) -> Any:
    """Separable Gaussian of a (1, 1, H, W) tensor like cv2.GaussianBlur(float32, sigma, BORDER_REFLECT)."""
    import torch
    import torch.nn.functional as F

    if sigma <= 0:
        return image
    size = round(sigma * 8 + 1) | 1  # OpenCV's kernel size for float images: cvRound(sigma * 4 * 2 + 1) | 1
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).to(image.device, torch.float32)
    r = size // 2
    for axis in (3, 2):
        n = image.shape[axis]
        index = torch.arange(-r, n + r, device=image.device) % (2 * n)  # BORDER_REFLECT: fedcba|abcdef|fedcba
        index = torch.where(index >= n, 2 * n - 1 - index, index)
        padded = image.index_select(axis, index)
        weights = kernel.view(1, 1, 1, size) if axis == 3 else kernel.view(1, 1, size, 1)
        image = F.conv2d(padded, weights)
    return image


class ModelSegmentation(ModelStage):
    """Stage 1 by a model. ``infer`` reduces each image to one hard mask on the device and hands it
    to :meth:`to_mask`, which feathers the edge like grabcut's there and copies the result to the
    CPU as uint8 (HxW): the only per-pixel data that leaves the device. ``apply`` then receives
    that uint8 mask or None (nothing found); 'nothing found' fails the sample unless ``fallback``
    names another segmentation option to use for it instead."""

    name = "segmentation"
    provides = ("mask", "foreground")
    method = ""

    def __init__(self, fallback: Any = None, feather: float = 0.002, **kwargs: Any):
        super().__init__(**kwargs)
        self.feather = setting("segmentation.feather", feather, 0.0, 0.1)
        self.fallback = build_fallback(fallback)
        if isinstance(fallback, Stage):  # built by Hydra from a mapping: its class, as _target_ named it
            self.fallback_name = f"{type(fallback).__module__}.{type(fallback).__name__}"
        else:
            self.fallback_name = fallback if isinstance(fallback, str) else (fallback or {}).get("_target_")

    def setup(self, device: str) -> None:
        super().setup(device)
        if self.fallback is not None:
            self.fallback.setup(device)

    def to_mask(self, hard: Any) -> np.ndarray:
        """A hard HxW torch mask (bool) -> the feathered mask as uint8 on the CPU, rounded as
        :func:`synth.imaging.to_uint8` rounds (so the written mask.png is the same either way)."""
        import torch

        h, w = hard.shape
        with torch.autocast(hard.device.type, enabled=False):  # SAM's autocast would blur in bfloat16
            soft = blur_on_device(hard.float(), self.feather * max(h, w))
        return (soft.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()

    def finish(self, sample: Sample, mask: np.ndarray | None, reason: str, **params: Any) -> None:
        """Store ``mask`` (uint8 from :meth:`to_mask`, image-sized) or, when it is None or (almost)
        empty, fall back: a speck of a few pixels is no subject either."""
        if mask is not None and mask.any():
            reason = empty_mask_reason(mask.astype(np.float32) / 255.0, f"{self.method}'s mask") or ""
        if mask is None or reason:
            if self.fallback is None:
                raise SampleError(reason)
            self.fallback.process([sample])
            # the fallback's own params (if any) stay under its name; ours say why it ran
            sample.params.setdefault(self.name, {}).update(
                {"method": self.method, "fallback": self.fallback_name, "fallback_reason": reason})
            return
        set_mask(sample, mask.astype(np.float32) / 255.0)
        sample.params[self.name] = {"method": self.method, **params}


# -- captioning -----------------------------------------------------------------------------------
def clean_text(text: str) -> str:
    """One printable line: generated text can carry newlines, control bytes or a trailing full stop."""
    printable = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(printable.split()).strip(" .")


class ModelCaption(ModelStage):
    """Stage 4 by a model. ``apply`` receives the generated text; the caption is ``template``
    filled with it (as ``{text_field}``), ``{degradation}`` (the sampled degradation, see
    :func:`synth.stages.captioning.describe_degradation`) and ``{subject}``."""

    name = "captioning"
    requires = ("image",)
    provides = ("caption",)
    method = ""
    source = ""  # the model's hub id or directory, recorded with every caption
    text_field = "text"  # the template placeholder for what the model wrote

    def __init__(self, template: str = "{text}", subject: str = "subject", **kwargs: Any):
        super().__init__(**kwargs)
        self.template = check_template(template, ("degradation", "subject", self.text_field))
        self.subject = check_subject(subject)

    def apply(self, sample: Sample, result: str) -> None:
        text = clean_text(result)
        if not text:
            raise SampleError(f"{self.method} generated no text")
        sample.caption = self.template.format(
            **{self.text_field: text, "degradation": describe_degradation(sample), "subject": self.subject})
        sample.params[self.name] = {"method": self.method, "model": self.source, self.text_field: text}
