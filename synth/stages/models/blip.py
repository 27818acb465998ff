"""``captioning=blip``: a BLIP image caption (``transformers`` BlipForConditionalGeneration)."""

from __future__ import annotations

from typing import Any

from synth.params import setting, text
from synth.sample import Sample
from synth.stages.models.base import ModelCaption
from synth.stages.models.loading import check_source, hub_kwargs, load_pretrained

HOW = ("use a hub id such as Salesforce/blip-image-captioning-large, or a local directory holding "
       "BlipForConditionalGeneration and BlipProcessor save_pretrained output")


class Blip(ModelCaption):
    """Captions each image, optionally continuing ``prompt`` (conditional captioning, e.g.
    "a photography of"); the caption is ``template`` with ``{caption}`` filled in."""

    method = "blip"
    text_field = "caption"

    def __init__(self, model: str = "Salesforce/blip-image-captioning-large", prompt: str | None = None,
                 max_new_tokens: int = 30, num_beams: int = 1,
                 template: str = "remove {degradation} from {caption}", subject: str = "subject", **kwargs: Any):
        super().__init__(template=template, subject=subject, **kwargs)
        self.prompt = text("captioning.prompt", prompt)  # null or blank: unconditional captions
        self.max_new_tokens = setting("captioning.max_new_tokens", max_new_tokens, 1, integer=True)
        self.num_beams = setting("captioning.num_beams", num_beams, 1, integer=True)
        self.source = check_source("captioning.model", model, HOW)

    def load(self) -> None:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.processor = load_pretrained("captioning.model", self.source, HOW,
                                         lambda s: BlipProcessor.from_pretrained(s, **hub_kwargs()))
        model = load_pretrained("captioning.model", self.source, HOW,
                                lambda s: BlipForConditionalGeneration.from_pretrained(s, dtype=self.dtype, **hub_kwargs()))
        self.model = model.to(self.device).eval()

    def infer(self, chunk: list[Sample]) -> list[str]:
        # every sample gets the same prefix, so the batch needs no padding
        text = [self.prompt] * len(chunk) if self.prompt else None
        inputs = self.processor(images=[s.image for s in chunk], text=text, return_tensors="pt",
                                device=self.device).to(self.device)  # resizing and normalising on the device
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                     do_sample=False)
        return self.processor.batch_decode(tokens, skip_special_tokens=True)
