"""``segmentation=sam3``: SAM 3 (``transformers`` Sam3Model) segments what a text prompt names."""

from __future__ import annotations

from typing import Any

import numpy as np

from synth.errors import ConfigError
from synth.params import setting, text
from synth.sample import Sample
from synth.stages.models.base import ModelSegmentation
from synth.stages.models.loading import check_source, hub_kwargs, load_pretrained

HOW = ("facebook/sam3 is gated: accept its licence at https://huggingface.co/facebook/sam3 and run `hf auth login`, "
       "or set segmentation.model to a local directory holding Sam3Model and Sam3Processor save_pretrained output")


class Sam3(ModelSegmentation):
    """Text-prompted instance segmentation. Instances scoring above ``threshold`` are kept and
    binarised at ``mask_threshold`` (the processor's post-processing arguments of the same
    names); ``instances=union`` merges them all, ``best`` keeps the highest-scoring one."""

    method = "sam3"

    def __init__(self, model: str = "facebook/sam3", prompt: str = "person", threshold: float = 0.5,
                 mask_threshold: float = 0.5, instances: str = "union", **kwargs: Any):
        super().__init__(**kwargs)
        prompt = text("segmentation.prompt", prompt)
        if prompt is None:
            raise ConfigError("segmentation.prompt: required, e.g. segmentation.prompt=person")
        self.threshold = setting("segmentation.threshold", threshold, 0.0, 1.0)
        self.mask_threshold = setting("segmentation.mask_threshold", mask_threshold, 0.0, 1.0)
        if instances not in ("union", "best"):
            raise ConfigError(f"segmentation.instances={instances}: choose union or best")
        self.source = check_source("segmentation.model", model, HOW)
        self.prompt, self.instances = prompt, instances

    def load(self) -> None:
        from transformers import Sam3Model, Sam3Processor

        self.processor = load_pretrained("segmentation.model", self.source, HOW,
                                         lambda s: Sam3Processor.from_pretrained(s, **hub_kwargs()))
        model = load_pretrained("segmentation.model", self.source, HOW,
                                lambda s: Sam3Model.from_pretrained(s, dtype=self.dtype, **hub_kwargs()))
        self.model = model.to(self.device).eval()

    def infer(self, chunk: list[Sample]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(kept scores, feathered uint8 mask or None) per sample. Everything per pixel stays on the
        device: the processor's post-processing would resize every kept instance to the full image
        and hand them all to the CPU as int64 (1.6 s per 1024 px image at threshold 0)."""
        inputs = self.processor(images=[s.image for s in chunk], text=[self.prompt] * len(chunk), return_tensors="pt",
                                device=self.device)  # resizing and normalising on the device too
        outputs = self.model(pixel_values=inputs["pixel_values"].to(self.device, self.dtype),
                             input_ids=inputs["input_ids"].to(self.device),
                             attention_mask=inputs["attention_mask"].to(self.device))
        # the processor's scores: query probability times presence probability
        scores = outputs.pred_logits.float().sigmoid()
        if outputs.presence_logits is not None:
            scores = scores * outputs.presence_logits.float().sigmoid()
        scores = scores.cpu().numpy()  # one number per query: all the choosing happens on the CPU
        results = []
        for logits, image_scores, sample in zip(outputs.pred_masks, scores, chunk):
            kept = np.flatnonzero(image_scores > self.threshold)
            if self.instances == "best" and len(kept):
                kept = kept[[int(np.argmax(image_scores[kept]))]]
            mask = self.to_mask(self.hard_mask(logits, kept, sample.image.shape[:2])) if len(kept) else None
            results.append((image_scores[kept], mask))
        return results

    def hard_mask(self, logits: Any, kept: np.ndarray, size: tuple[int, int]) -> Any:
        """The union of the ``kept`` instances' masks at ``size``, computed as the processor does
        (sigmoid, bilinear resize in float32, > mask_threshold), a few instances at a time so
        memory stays at a few image-sized planes whatever the number of instances."""
        import torch
        import torch.nn.functional as F

        hard = torch.zeros(size, dtype=torch.bool, device=logits.device)
        for start in range(0, len(kept), 8):
            index = torch.as_tensor(kept[start:start + 8], device=logits.device)
            probabilities = logits.index_select(0, index).float().sigmoid()
            resized = F.interpolate(probabilities[None], size=size, mode="bilinear", align_corners=False)[0]
            hard |= (resized > self.mask_threshold).any(dim=0)
        return hard

    def apply(self, sample: Sample, result: tuple[np.ndarray, np.ndarray | None]) -> None:
        scores, mask = result
        if len(scores) == 0:
            return self.finish(sample, None, f"sam3 found no {self.prompt!r} scoring above threshold {self.threshold}")
        self.finish(sample, mask, f"sam3 masks for {self.prompt!r} are empty", prompt=self.prompt,
                    instances=len(scores), scores=[round(float(s), 4) for s in sorted(scores, reverse=True)])
