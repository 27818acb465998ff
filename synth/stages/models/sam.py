"""``segmentation=sam``: Segment Anything (the ``segment-anything`` package) from a point, a box
or its automatic mask generator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synth.errors import ConfigError, one_line
from synth.params import setting
from synth.sample import Sample
from synth.stages.models.base import ModelSegmentation

# embed dim, depth, heads, global-attention blocks: segment_anything.build_sam's three models
ARCHITECTURES = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
CHECKPOINTS = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
PROMPTS = ("center_point", "box", "auto")


def how_to_get(model_type: str) -> str:
    name = CHECKPOINTS.get(model_type, CHECKPOINTS["vit_h"])
    return f"download https://dl.fbaipublicfiles.com/segment_anything/{name} and set segmentation.checkpoint=/path/to/{name}"


def architecture(state: dict) -> tuple[int, int, int, tuple[int, ...]]:
    """Read (embed dim, depth, heads, global-attention blocks) off a SAM state dict.

    Windowed blocks carry relative positions for a 14-token window, global ones for the whole
    64-token grid; the head size is the second dimension of those tables.
    """
    dim = state["image_encoder.patch_embed.proj.weight"].shape[0]
    blocks = {int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks.")}
    depth = max(blocks) + 1
    grid = state["image_encoder.pos_embed"].shape[1]
    head_dim = state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    global_blocks = tuple(i for i in range(depth)
                          if state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] == 2 * grid - 1)
    return dim, depth, dim // head_dim, global_blocks


def fused_attention(encoder: Any) -> None:
    """Make the image encoder's attention blocks use torch's fused attention.

    segment-anything writes out each attention matrix, adds the relative positions and takes a
    float32 softmax: about 2 GiB per 1024 px image in each global block, 64.7 GiB at batch 32.
    The fused kernel takes the relative positions as an additive bias and never holds the
    probabilities; the bias (heads x 4096 x 4096 per image in a global block) is built for a few
    images at a time (:data:`BIAS_ELEMENTS`), so it does not grow with the batch. Same maths, so
    the masks match to float rounding.
    """
    import types

    from segment_anything.modeling.image_encoder import Attention

    for module in encoder.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(_fused_forward, module)


BIAS_ELEMENTS = 1 << 28  # at most this many bias elements at once: one image's in a global block (vit_h: 16 heads)


def _fused_forward(self: Any, x: Any) -> Any:
    import torch
    import torch.nn.functional as F
    from segment_anything.modeling.image_encoder import get_rel_pos

    b, h, w, _ = x.shape
    q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (b, heads, hw, c)
    if not self.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
    else:  # segment_anything's add_decomposed_rel_pos, as a bias instead of a sum into the attention matrix
        rel_pos_h, rel_pos_w = get_rel_pos(h, h, self.rel_pos_h), get_rel_pos(w, w, self.rel_pos_w)
        out = torch.empty_like(q)
        step = max(1, BIAS_ELEMENTS // (self.num_heads * (h * w) ** 2))  # windowed blocks: many windows at once
        for i in range(0, b, step):
            part = q[i:i + step]
            r_q = part.reshape(-1, h, w, part.shape[-1])
            rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rel_pos_h)
            rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rel_pos_w)
            bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(len(part), self.num_heads, h * w, h * w)
            out[i:i + step] = F.scaled_dot_product_attention(part, k[i:i + step], v[i:i + step],
                                                             attn_mask=bias.to(part.dtype), scale=self.scale)
            del bias  # before the next one is built
    return self.proj(out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1))


class Sam(ModelSegmentation):
    """``prompt=center_point`` asks for the object under the image centre (the best of SAM's three
    candidate masks by predicted IoU), ``box`` for the object inside a centred box inset by
    ``margin``, ``auto`` runs the automatic mask generator and keeps the largest mask that covers
    the image centre. ``model_type=auto`` reads the architecture off the checkpoint."""

    method = "sam"

    def __init__(self, checkpoint: str | None = None, model_type: str = "vit_h", prompt: str = "center_point",
                 margin: float = 0.08, points_per_side: int = 16, pred_iou_thresh: float = 0.88,
                 stability_score_thresh: float = 0.95, **kwargs: Any):
        super().__init__(**kwargs)
        if model_type not in (*ARCHITECTURES, "auto"):
            raise ConfigError(f"segmentation.model_type={model_type}: choose from {', '.join(ARCHITECTURES)}, auto")
        if prompt not in PROMPTS:
            raise ConfigError(f"segmentation.prompt={prompt}: choose from {', '.join(PROMPTS)}")
        if not checkpoint:
            raise ConfigError(f"segmentation.checkpoint: required with segmentation=sam; {how_to_get(model_type)}")
        path = Path(str(checkpoint)).expanduser()
        if not path.is_file():
            raise ConfigError(f"segmentation.checkpoint={checkpoint}: no such file; {how_to_get(model_type)}")
        self.margin = setting("segmentation.margin", margin, 0.0, 0.5, hi_open=True)
        self.generator_options = {
            # points_per_side**2 prompts per image: 1000 would run a million mask decodes on each
            "points_per_side": setting("segmentation.points_per_side", points_per_side, 1, 128, integer=True),
            "pred_iou_thresh": setting("segmentation.pred_iou_thresh", pred_iou_thresh, 0.0, 1.0),
            "stability_score_thresh": setting("segmentation.stability_score_thresh", stability_score_thresh, 0.0, 1.0),
        }
        self.checkpoint, self.model_type, self.prompt = path, model_type, prompt

    def load(self) -> None:
        import torch
        from segment_anything.build_sam import _build_sam
        from segment_anything.utils.transforms import ResizeLongestSide

        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
            found = architecture(state)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
            raise ConfigError(f"segmentation.checkpoint={self.checkpoint}: not a segment-anything checkpoint "
                              f"({type(err).__name__}: {one_line(err)[:200]}); "
                              f"{how_to_get(self.model_type)}") from None
        if self.model_type != "auto" and ARCHITECTURES[self.model_type] != found:
            named = next((k for k, v in ARCHITECTURES.items() if v == found), "a non-standard model")
            raise ConfigError(f"segmentation.model_type={self.model_type}: the checkpoint is {named}; "
                              f"set segmentation.model_type={named if named in ARCHITECTURES else 'auto'}")
        model = _build_sam(*found)  # the builder behind segment_anything.sam_model_registry
        model.load_state_dict(state)
        fused_attention(model.image_encoder)
        self.model = model.to(self.device).eval()
        self.resize = ResizeLongestSide(model.image_encoder.img_size)
        if self.prompt == "auto":
            from segment_anything import SamAutomaticMaskGenerator

            self.generator = SamAutomaticMaskGenerator(self.model, **self.generator_options)

    def autocast(self) -> Any:
        """SAM's prompt encoder mixes fp32 buffers into its maths, so reduced precision is autocast
        over fp32 weights rather than converted weights."""
        import torch

        return torch.autocast(self.device.split(":")[0], dtype=self.dtype, enabled=self.dtype != torch.float32)

    def infer(self, chunk: list[Sample]) -> list[np.ndarray | None]:
        """One feathered uint8 mask (or None) per sample; see :meth:`ModelSegmentation.to_mask`."""
        import torch

        with self.autocast():
            if self.prompt == "auto":  # the generator prompts one image at a time with a point grid
                found = [self.largest_central(self.generator.generate(s.image), s.image.shape[:2]) for s in chunk]
                return [None if m is None else self.to_mask(torch.as_tensor(m, device=self.device)) for m in found]
            return self.prompted(chunk)

    def prompted(self, chunk: list[Sample]) -> list[np.ndarray]:
        """What ``Sam.forward`` does, except that the best of the candidate masks is chosen at low
        resolution and only that one is resized to the image (forward resizes all three)."""
        import torch

        model, images, sizes, prompts = self.model, [], [], []
        for sample in chunk:
            h, w = sample.image.shape[:2]
            resized = torch.as_tensor(self.resize.apply_image(sample.image), device=self.device)
            images.append(model.preprocess(resized.permute(2, 0, 1).contiguous().float()))
            sizes.append(tuple(resized.shape[:2]))
            if self.prompt == "center_point":
                point = self.resize.apply_coords(np.array([[[w / 2, h / 2]]], np.float32), (h, w))
                prompts.append({"points": (torch.as_tensor(point, dtype=torch.float32, device=self.device),
                                           torch.ones((1, 1), dtype=torch.int, device=self.device))})
            else:
                m = self.margin
                box = self.resize.apply_boxes(np.array([[w * m, h * m, w * (1 - m), h * (1 - m)]], np.float32), (h, w))
                prompts.append({"boxes": torch.as_tensor(box, dtype=torch.float32, device=self.device)})
        embeddings = model.image_encoder(torch.stack(images))  # one batched pass; the light decoder runs per image
        masks = []
        for sample, embedding, size, prompt in zip(chunk, embeddings, sizes, prompts):
            sparse, dense = model.prompt_encoder(points=prompt.get("points"), boxes=prompt.get("boxes"), masks=None)
            low_res, iou = model.mask_decoder(image_embeddings=embedding[None], image_pe=model.prompt_encoder.get_dense_pe(),
                                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                              multimask_output=self.prompt == "center_point")
            best = int(iou[0].float().argmax())
            logits = model.postprocess_masks(low_res[:, best:best + 1].float(), size, sample.image.shape[:2])
            masks.append(self.to_mask(logits[0, 0] > model.mask_threshold))
        return masks

    @staticmethod
    def largest_central(candidates: list[dict], shape: tuple[int, int]) -> np.ndarray | None:
        """The largest generated mask that covers the image centre and is not the whole frame."""
        h, w = shape
        central = [c for c in candidates
                   if c["segmentation"][h // 2, w // 2] and c["area"] < 0.95 * h * w]
        return max(central, key=lambda c: c["area"])["segmentation"] if central else None

    def apply(self, sample: Sample, mask: np.ndarray | None) -> None:
        reason = ("sam's automatic masks: none covers the image centre" if self.prompt == "auto"
                  else f"sam returned an empty mask for the {self.prompt.replace('_', ' ')} prompt")
        self.finish(sample, mask, reason, prompt=self.prompt)
