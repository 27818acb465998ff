"""``captioning=vlm``: lighting keywords from a chat vision-language model (any
``AutoModelForImageTextToText`` with a chat template, e.g. Qwen2.5-VL), combined with the
sampled degradation into an edit instruction."""

from __future__ import annotations

from typing import Any

from synth.errors import ConfigError
from synth.params import setting, text
from synth.imaging import shrink
from synth.sample import Sample
from synth.stages.models.base import ModelCaption
from synth.stages.models.loading import check_source, hub_kwargs, load_pretrained

HOW = ("use a hub id such as Qwen/Qwen2.5-VL-3B-Instruct, or a local directory holding the model's and "
       "its processor's save_pretrained output (AutoModelForImageTextToText, AutoProcessor)")
PROMPT = ("Describe the lighting of this photo as 4 short comma-separated keywords: light type, light "
          "direction, light quality, setting. Answer with the keywords only.")


class Vlm(ModelCaption):
    """Asks ``prompt`` about each image (shrunk so its long side is at most ``image_size`` px,
    which bounds the number of image tokens), keeps the answer as comma-separated
    ``{keywords}`` and fills ``template`` with them."""

    method = "vlm"
    text_field = "keywords"

    def __init__(self, model: str = "Qwen/Qwen2.5-VL-3B-Instruct", prompt: str = PROMPT, image_size: int = 448,
                 max_new_tokens: int = 32, template: str = "remove {degradation} from the {subject}, lighting: {keywords}",
                 subject: str = "subject", **kwargs: Any):
        super().__init__(template=template, subject=subject, **kwargs)
        prompt = text("captioning.prompt", prompt)
        if prompt is None:
            raise ConfigError("captioning.prompt: required with captioning=vlm")
        self.image_size = setting("captioning.image_size", image_size, 28, integer=True)
        self.max_new_tokens = setting("captioning.max_new_tokens", max_new_tokens, 1, integer=True)
        self.source = check_source("captioning.model", model, HOW)
        self.prompt = prompt

    def load(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = load_pretrained("captioning.model", self.source, HOW,
                                         lambda s: AutoProcessor.from_pretrained(s, **hub_kwargs()))
        if getattr(self.processor, "chat_template", None) is None:
            raise ConfigError(f"captioning.model={self.source}: its processor has no chat template; "
                              "use an instruction-tuned (chat) vision-language model")
        self.processor.tokenizer.padding_side = "left"  # batched generation continues every prompt at the end
        model = load_pretrained("captioning.model", self.source, HOW,
                                lambda s: AutoModelForImageTextToText.from_pretrained(s, dtype=self.dtype, **hub_kwargs()))
        self.model = model.to(self.device).eval()
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        self.chat = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def infer(self, chunk: list[Sample]) -> list[str]:
        images = [shrink(s.image, self.image_size) for s in chunk]
        inputs = self.processor(text=[self.chat] * len(chunk), images=images,
                                padding=True, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(tokens[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def apply(self, sample: Sample, result: str) -> None:
        # one keyword list however the model punctuates it: "Soft window light; from left." -> "soft window light, from left"
        first_line = result.strip().splitlines()[0] if result.strip() else ""
        keywords = [k.strip(" .;:-*\"'").lower() for k in first_line.replace(";", ",").split(",")]
        super().apply(sample, ", ".join(k for k in keywords if k))
