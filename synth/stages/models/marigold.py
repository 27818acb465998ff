"""Marigold through ``diffusers``: ``albedo=marigold`` (intrinsic image decomposition), and the
pipeline runner that ``shadow.normals=marigold`` shares (:class:`synth.stages.normals.MarigoldNormals`).

Marigold fine-tunes Stable Diffusion 2 into dense predictors. ``MarigoldIntrinsicsPipeline`` with
``prs-eth/marigold-iid-lighting-v1-1`` predicts albedo A, diffuse shading S and a non-diffuse
residual R in linear light, with I ~ A S + R (S and R known up to one scale);
``prs-eth/marigold-iid-appearance-v1-1`` predicts albedo and materials (no shading).
``MarigoldNormalsPipeline`` (``prs-eth/marigold-normals-v1-1``) predicts unit surface normals.

Both run on the subject: a square around its mask's bounding box with some real context around
it (edge pixels repeated only where the square leaves the image), resized to
``processing_resolution``. Every crop of a batch then has the same size, so a batch is one
pipeline call; each sample draws its starting noise from generators seeded by the job's seed
and its own index, so a batch gives what one sample at a time gives.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synth.errors import ConfigError, SampleError
from synth.imaging import linear_to_srgb, resize, srgb_to_linear, to_uint8
from synth.params import setting
from synth.sample import Sample
from synth.stages.models.base import ModelStage
from synth.stages.models.loading import check_source, hub_kwargs, load_pretrained

HOW_IID = ("use a hub id such as prs-eth/marigold-iid-lighting-v1-1 (or prs-eth/marigold-iid-appearance-v1-1), "
           "or a local directory holding MarigoldIntrinsicsPipeline save_pretrained output "
           "(`hf download prs-eth/marigold-iid-lighting-v1-1 --local-dir DIR`)")
HOW_NORMALS = ("use a hub id such as prs-eth/marigold-normals-v1-1, or a local directory holding "
               "MarigoldNormalsPipeline save_pretrained output "
               "(`hf download prs-eth/marigold-normals-v1-1 --local-dir DIR`)")
MARGIN = 0.1  # context kept around the subject's box on each side, as a fraction of its long side
MULTIPLE = 8  # Stable Diffusion's VAE downsamples by 8: processing sizes are multiples of it


# --- the subject's square ------------------------------------------------------------------------
def subject_square(mask: np.ndarray, margin: float = MARGIN) -> tuple[int, int, int]:
    """(top, left, side) of the square the model sees: centred on the bounding box of ``mask`` > 0,
    ``margin`` of its long side wider on each side, moved inside the image where it fits. No
    subject: the image's own square around its centre."""
    from synth.stages.shadow import subject_box  # stage 3 imports the normals, which import this

    h, w = mask.shape
    ys, xs = subject_box(mask)
    if ys.stop <= ys.start:
        ys, xs = slice(0, h), slice(0, w)
    side = max(1, int(round(max(ys.stop - ys.start, xs.stop - xs.start) * (1 + 2 * margin))))

    def start(lo: int, hi: int, size: int) -> int:
        s = int(round((lo + hi - side) / 2))
        return min(max(s, 0), size - side) if side <= size else (size - side) // 2

    return start(ys.start, ys.stop, h), start(xs.start, xs.stop, w), side


def take_square(image: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """``image[top:top+side, left:left+side]``, edge pixels repeated where it leaves the image."""
    h, w = image.shape[:2]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + side, h), min(left + side, w)
    inside = image[y0:y1, x0:x1]
    pad = ((y0 - top, top + side - y1), (x0 - left, left + side - x1)) + ((0, 0),) * (image.ndim - 2)
    return inside if not any(a or b for a, b in pad[:2]) else np.pad(inside, pad, mode="edge")


def paste(full: np.ndarray, square: np.ndarray, top: int, left: int) -> np.ndarray:
    """Write the part of a side x side ``square`` that lies inside ``full`` (in place)."""
    h, w = full.shape[:2]
    side = square.shape[0]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + side, h), min(left + side, w)
    full[y0:y1, x0:x1] = square[y0 - top:y1 - top, x0 - left:x1 - left]
    return full


def to_linear(values: np.ndarray, space: str) -> np.ndarray:
    """A prediction in [0, 1] as linear light: Marigold's targets say ``linear`` or ``srgb``."""
    return values.astype(np.float32) if space == "linear" else srgb_to_linear(to_uint8(np.clip(values, 0, 1)))


# --- the pipeline --------------------------------------------------------------------------------
class MarigoldRunner:
    """A diffusers Marigold pipeline (``kind`` = ``intrinsics`` or ``normals``) run on square crops
    of the subject. ``key`` is the config key of the weights, named in errors; ``prefix`` the
    config path of the settings. ``num_inference_steps`` / ``processing_resolution`` null: the
    model's own defaults (its config's ``default_denoising_steps`` and
    ``default_processing_resolution``: 4 and 768 for the v1-1 models); 0 = the crop's own size.
    """

    def __init__(self, kind: str, key: str, model: str | None, how: str, prefix: str,
                 num_inference_steps: int | None = None, ensemble_size: int = 1,
                 processing_resolution: int | None = None):
        self.kind, self.key, self.how = kind, key, how
        self.source = check_source(key, model, how, marker="model_index.json")
        self.steps = setting(f"{prefix}.num_inference_steps", num_inference_steps, 1, integer=True, optional=True)
        self.ensemble_size = setting(f"{prefix}.ensemble_size", ensemble_size, 1, integer=True)
        self.resolution = setting(f"{prefix}.processing_resolution", processing_resolution, 0, integer=True,
                                  optional=True)
        if self.resolution and self.resolution % MULTIPLE:
            raise ConfigError(f"{prefix}.processing_resolution={self.resolution}: must be a multiple of {MULTIPLE} "
                              "(or 0: the subject's own size; null: the model's default)")
        self.pipe: Any = None
        self.targets: dict[str, str] = {}  # target name -> prediction space (intrinsics)

    def load(self, device: str, dtype: Any) -> None:
        import diffusers

        diffusers.utils.logging.set_verbosity_error()  # no per-component progress bars or install hints
        diffusers.utils.logging.disable_progress_bar()
        cls = diffusers.MarigoldIntrinsicsPipeline if self.kind == "intrinsics" else diffusers.MarigoldNormalsPipeline
        pipe = load_pretrained(self.key, self.source, self.how,
                               lambda s: cls.from_pretrained(s, dtype=dtype, **hub_kwargs()))
        if getattr(pipe.config, "prediction_type", None) != self.kind:
            raise ConfigError(f"{self.key}={self.source}: a Marigold {pipe.config.prediction_type} model, not "
                              f"{self.kind}; {self.how}")
        if self.kind == "intrinsics":
            props = pipe.target_properties or {}
            names = list(props.get("target_names") or [])
            if "albedo" not in names or len(names) != pipe.n_targets:
                raise ConfigError(f"{self.key}={self.source}: its target_properties name no albedo among "
                                  f"{pipe.n_targets} targets ({', '.join(names) or 'none'}); {self.how}")
            self.targets = {n: (props.get(n) or {}).get("prediction_space", "srgb") for n in names}
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)
        for name, default in (("steps", "default_denoising_steps"), ("resolution", "default_processing_resolution")):
            if getattr(self, name) is None:
                value = getattr(pipe, default, None)
                if value is None:
                    raise ConfigError(f"{self.key}={self.source}: its model_index.json has no {default}; "
                                      f"is it a Marigold v1-1 model? {self.how}")
                setattr(self, name, int(value))

    def size(self, side: int) -> int:
        """The processing size of a crop of ``side`` pixels."""
        return self.resolution or -(-side // MULTIPLE) * MULTIPLE

    def params(self) -> dict[str, Any]:
        return {"model": self.source, "num_inference_steps": self.steps, "ensemble_size": self.ensemble_size,
                "processing_resolution": self.resolution}

    def predict(self, samples: list[Sample]) -> list[tuple[tuple[int, int, int], np.ndarray]]:
        """Per sample: its square (top, left, side) and the model's maps on it, float32
        [targets, P, P, 3] at the processing size P (normals: one target, values in [-1, 1])."""
        import torch

        squares = [subject_square(s.mask) for s in samples]
        out: list[Any] = [None] * len(samples)
        groups: dict[int, list[int]] = {}  # one pipeline call per processing size
        for i, (_, _, side) in enumerate(squares):
            groups.setdefault(self.size(side), []).append(i)
        for p, indices in groups.items():
            images = np.stack([resize(take_square(samples[i].image, *squares[i]), (p, p)) for i in indices])
            generators = [torch.Generator().manual_seed(int(seed)) for i in indices
                          for seed in samples[i].rng(f"{self.key}.noise").integers(0, 2**62, self.ensemble_size)]
            maps = self.pipe(images, num_inference_steps=self.steps, ensemble_size=self.ensemble_size,
                             processing_resolution=0, batch_size=len(generators), generator=generators,
                             output_type="np").prediction
            maps = np.asarray(maps, np.float32).reshape(len(indices), -1, p, p, 3)
            for i, m in zip(indices, maps):
                out[i] = (squares[i], m)
        return out


# --- stage 2 -------------------------------------------------------------------------------------
class Marigold(ModelStage):
    """Stage 2 by Marigold intrinsic image decomposition, on the subject (see the module docstring).

    The albedo is stage 2's albedo (sRGB; the photo outside the subject's square). With a model
    that also predicts ``shading`` (the lighting model), the sample keeps the diffuse shading and
    the residual in linear light, in the photo's units: the model's A S + R is fitted to the photo
    on the subject with one scale (Marigold's S and R are known up to scale), and the residual
    kept is what remains, photo - A S, with A the albedo as stored. So albedo x shading +
    residual gives back the photo, and relighting (stage 3) changes only what a new shading
    changes: the model's reconstruction error never reaches the degraded image.
    """

    name = "albedo"
    requires = ("image", "mask")
    provides = ("albedo",)  # shading and residual too, with a lighting model

    def __init__(self, model: str = "prs-eth/marigold-iid-lighting-v1-1", num_inference_steps: int | None = None,
                 ensemble_size: int = 1, processing_resolution: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.runner = MarigoldRunner("intrinsics", "albedo.model", model, HOW_IID, "albedo", num_inference_steps,
                                     ensemble_size, processing_resolution)

    def load(self) -> None:
        self.runner.load(self.device, self.dtype)

    def infer(self, chunk: list[Sample]) -> list[tuple[tuple[int, int, int], np.ndarray]]:
        return self.runner.predict(chunk)

    def apply(self, sample: Sample, result: tuple[tuple[int, int, int], np.ndarray]) -> None:
        (top, left, side), maps = result
        space = self.runner.targets
        square = {name: resize(m, (side, side)) for name, m in zip(space, maps)}
        albedo = to_linear(square["albedo"], space["albedo"])
        sample.albedo = paste(sample.image.copy(), linear_to_srgb(albedo), top, left)
        params: dict[str, Any] = {"method": "marigold", **self.runner.params(), "square": [top, left, side]}
        if "shading" in square:
            shading = to_linear(square["shading"], space["shading"])
            residual = to_linear(square["residual"], space["residual"]) if "residual" in square else 0.0
            photo = take_square(srgb_to_linear(sample.image), top, left, side)
            stored = take_square(srgb_to_linear(sample.albedo), top, left, side)  # the albedo as quantised
            weight = take_square(sample.mask, top, left, side)[..., None]
            model = stored * shading + residual
            den = float((weight * model * model).sum())
            scale = float((weight * model * photo).sum()) / den if den > 1e-12 else 1.0
            if not np.isfinite(scale) or scale <= 0:
                raise SampleError(f"marigold's shading does not fit the photo (scale {scale:g})")
            h, w = sample.mask.shape
            sample.shading = paste(np.ones((h, w, 3), np.float32), scale * shading, top, left)
            sample.residual = srgb_to_linear(sample.image) - srgb_to_linear(sample.albedo) * sample.shading
            params["shading_scale"] = scale
        sample.params[self.name] = params
