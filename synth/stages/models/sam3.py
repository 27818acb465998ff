"""``segmentation=sam3``: SAM 3 (``transformers`` Sam3Model) segments what a text prompt names."""

from __future__ import annotations

from typing import Any

import numpy as np

from synth.errors import ConfigError
from synth.params import setting
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
        if not prompt or not str(prompt).strip():
            raise ConfigError("segmentation.prompt: required, e.g. segmentation.prompt=person")
        self.threshold = setting("segmentation.threshold", threshold, 0.0, 1.0)
        self.mask_threshold = setting("segmentation.mask_threshold", mask_threshold, 0.0, 1.0)
        if instances not in ("union", "best"):
            raise ConfigError(f"segmentation.instances={instances}: choose union or best")
        self.source = check_source("segmentation.model", model, HOW)
        self.prompt, self.instances = str(prompt).strip(), instances

    def load(self) -> None:
        from transformers import Sam3Model, Sam3Processor

        self.processor = load_pretrained("segmentation.model", self.source, HOW,
                                         lambda s: Sam3Processor.from_pretrained(s, **hub_kwargs()))
        model = load_pretrained("segmentation.model", self.source, HOW,
                                lambda s: Sam3Model.from_pretrained(s, dtype=self.dtype, **hub_kwargs()))
        self.model = model.to(self.device).eval()

    def infer(self, chunk: list[Sample]) -> list[dict]:
        inputs = self.processor(images=[s.image for s in chunk], text=[self.prompt] * len(chunk), return_tensors="pt")
        outputs = self.model(pixel_values=inputs["pixel_values"].to(self.device, self.dtype),
                             input_ids=inputs["input_ids"].to(self.device),
                             attention_mask=inputs["attention_mask"].to(self.device))
        outputs.pred_masks = outputs.pred_masks.float()  # post-processing interpolates; bf16 is coarse there
        return self.processor.post_process_instance_segmentation(
            outputs, threshold=self.threshold, mask_threshold=self.mask_threshold,
            target_sizes=[s.image.shape[:2] for s in chunk])

    def apply(self, sample: Sample, result: dict) -> None:
        scores = result["scores"].float().cpu().numpy()
        masks = result["masks"].cpu().numpy().astype(bool)  # (instances, H, W)
        if len(scores) == 0:
            return self.finish(sample, None, f"sam3 found no {self.prompt!r} scoring above threshold {self.threshold}")
        if self.instances == "best":
            best = int(np.argmax(scores))
            mask, kept = masks[best], [float(scores[best])]
        else:
            mask, kept = masks.any(axis=0), [float(s) for s in scores]
        self.finish(sample, mask, f"sam3 masks for {self.prompt!r} are empty", prompt=self.prompt,
                    instances=len(kept), scores=[round(s, 4) for s in sorted(kept, reverse=True)])
