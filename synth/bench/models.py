"""Throughput of the model-backed stages: ``python -m synth.bench models [options]``.

Each stage runs with its full-size architecture and random weights: ``config.json`` and the
processor are written to a temporary directory and the stage loads them through its own
``setup`` (so preprocessing, batching and post-processing are the real code paths), with
``from_pretrained`` building the model from the config instead of reading weight files (none can
be downloaded here; speed does not depend on the weight values). SAM gets a random vit_b/l/h
``.pth`` written with ``torch.save``. Inputs are the bundled photos, centre-cropped to SIZE x SIZE.

Random weights mean: captioning is made to generate exactly ``max_new_tokens`` (30 for BLIP, 32
for the VLM: longer than typical real captions, so conservative), and SAM 3
keeps no instances at its default threshold (post-processing of kept masks is not timed).
On CPU, peak memory is the process's resident set; on CUDA, peak allocated GPU memory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import string
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from synth.data import SAMPLES_DIR
from synth.imaging import open_rgb
from synth.sample import Sample
from synth.stages.base import resolve_device
from synth.bench import at_least, numbers

STAGES = ("sam3", "sam", "blip", "vlm", "marigold_iid", "marigold_normals")
QWEN_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
                 "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656}
CHAT_TEMPLATE = (  # Qwen2.5-VL's template, cut down to what the stage sends
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# --- full-size checkpoints with random weights ---------------------------------------------------
def write_sam3(path: Path, tiny: bool) -> dict:
    from transformers import CLIPTokenizer, Sam3Config, Sam3Processor
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

    config = Sam3Config()  # the defaults are facebook/sam3's architecture
    size = 1008
    if tiny:  # every part small (the DETR decoder's defaults alone take seconds per image on a CPU)
        from transformers.models.sam3.configuration_sam3 import (Sam3DETRDecoderConfig, Sam3DETREncoderConfig,
                                                                 Sam3GeometryEncoderConfig, Sam3MaskDecoderConfig,
                                                                 Sam3VisionConfig, Sam3ViTConfig)

        size, small = 224, dict(hidden_size=32, num_attention_heads=4, intermediate_size=64)
        backbone = Sam3ViTConfig(num_hidden_layers=2, image_size=size, window_size=8, global_attn_indexes=[1], **small)
        config = Sam3Config(
            vision_config=Sam3VisionConfig(backbone_config=backbone, fpn_hidden_size=32, scale_factors=[2.0, 1.0]),
            text_config=dict(projection_dim=32, num_hidden_layers=1, max_position_embeddings=32, **small),
            geometry_encoder_config=Sam3GeometryEncoderConfig(num_layers=1, **small),
            detr_encoder_config=Sam3DETREncoderConfig(num_layers=1, **small),
            detr_decoder_config=Sam3DETRDecoderConfig(num_layers=1, num_queries=5, **small),
            mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=32, num_upsampling_stages=2))
    # enough of a CLIP vocabulary for the prompt: letters, and the special tokens at CLIP's ids
    letters = [c + suffix for suffix in ("", "</w>") for c in string.ascii_lowercase]
    vocab = {**{token: i for i, token in enumerate(letters)}, "<|startoftext|>": 49406, "<|endoftext|>": 49407}
    config.save_pretrained(path)
    Sam3Processor(image_processor=Sam3ImageProcessor(size={"height": size, "width": size}),
                  tokenizer=CLIPTokenizer(vocab=vocab, merges=[])).save_pretrained(path)
    return {"model": str(path)}


def write_sam(path: Path, tiny: bool, model_type: str = "vit_b", device: str = "cpu") -> dict:
    import torch
    from segment_anything.build_sam import _build_sam

    from synth.stages.models.sam import ARCHITECTURES

    arch = (32, 2, 2, (1,)) if tiny else ARCHITECTURES[model_type]
    with torch.device(device):  # initialised where it runs: vit_h takes a while on the CPU
        state = _build_sam(*arch).state_dict()
    torch.save(state, path / f"sam_{model_type}_random.pth")  # the stage loads it with map_location="cpu"
    return {"checkpoint": str(path / f"sam_{model_type}_random.pth"), "model_type": "auto"}


def write_blip(path: Path, tiny: bool) -> dict:
    from transformers import BertTokenizer, BlipConfig, BlipImageProcessor, BlipProcessor

    # Salesforce/blip-image-captioning-large: ViT-L/16 at 384 px, BERT-base decoder
    # (BLIP's vision default initializer_range is 1e-10: random weights that small make subnormal
    # activations, which x86 CPUs process many times slower than trained weights' normal floats)
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=384, patch_size=16, initializer_range=0.02)
    text = dict(encoder_hidden_size=1024)
    if tiny:
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      image_size=64, patch_size=16)
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                    encoder_hidden_size=32)
    BlipConfig(vision_config=vision, text_config=text).save_pretrained(path)
    # bert-base-uncased's layout: [PAD]=0, [UNK]=100 ... [SEP]=102, BLIP's [DEC]=30522
    specials = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, "[DEC]": 30522, "[ENC]": 30523}
    taken = set(specials.values())
    vocab = {**{f"w{i}": i for i in range(30524) if i not in taken}, **specials}
    size = vision["image_size"]
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": size, "width": size}),
                  tokenizer=BertTokenizer(vocab=vocab, bos_token="[DEC]")).save_pretrained(path)
    return {"model": str(path), "max_new_tokens": 30}


def write_vlm(path: Path, tiny: bool) -> dict:
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLProcessor, Qwen2Tokenizer, Qwen2VLImageProcessor,
                              Qwen2VLVideoProcessor)

    # Qwen/Qwen2.5-VL-3B-Instruct's config.json
    text = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
                tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645)
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu")
    if tiny:
        text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                            "mrope_section": [2, 1, 1]})
        vision.update(depth=1, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                      fullatt_block_indexes=[0])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=text["tie_word_embeddings"],
                              image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                              vision_end_token_id=151653)
    config.save_pretrained(path)
    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    vocab.update({f"f{i}": i for i in range(len(vocab), min(QWEN_SPECIALS.values()))})  # unreachable filler ids
    vocab.update(QWEN_SPECIALS)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": [s for s in QWEN_SPECIALS if s != "<|endoftext|>"]})
    Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                        video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE).save_pretrained(path)
    return {"model": str(path), "max_new_tokens": 32}


def marigold_pipeline(kind: str, tiny: bool, dtype: Any) -> Any:
    """A Marigold pipeline of ``kind`` (intrinsics: the lighting model's three targets; normals)
    with the v1-1 models' architecture, Stable Diffusion 2's: UNet (4 + 4 x targets input
    channels), VAE and OpenCLIP ViT-H text encoder; 4 steps at 768 px as in their model_index.json.
    Random weights, built where ``torch.device`` points (the bench builds it on the device)."""
    from diffusers import (AutoencoderKL, DDIMScheduler, MarigoldIntrinsicsPipeline, MarigoldNormalsPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    targets = 3 if kind == "intrinsics" else 1
    unet = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20, 20),
                cross_attention_dim=1024, use_linear_projection=True, sample_size=96,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=768,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                projection_dim=512, hidden_act="gelu", vocab_size=49408, bos_token_id=49406, eos_token_id=49407)
    if tiny:
        unet.update(block_out_channels=(8, 16), layers_per_block=1, attention_head_dim=2, cross_attention_dim=8,
                    norm_num_groups=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        vae.update(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)
        text.update(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    letters = [c + suffix for suffix in ("", "</w>") for c in string.ascii_lowercase]  # the prompt is empty
    vocab = {**{token: i for i, token in enumerate(letters)}, "<|startoftext|>": 49406, "<|endoftext|>": 49407}
    parts = dict(
        unet=UNet2DConditionModel(in_channels=4 * (1 + targets), out_channels=4 * targets, **unet).to(dtype),
        vae=AutoencoderKL(latent_channels=4, **vae).to(dtype),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text)).to(dtype),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1,
                                timestep_spacing="trailing"),
        default_denoising_steps=4, default_processing_resolution=64 if tiny else 768)  # tiny: checks the harness
    if kind == "intrinsics":
        linear = {"prediction_space": "linear"}
        props = {"target_names": ["albedo", "shading", "residual"], "albedo": {**linear, "up_to_scale": False},
                 "shading": {**linear, "up_to_scale": True}, "residual": {**linear, "up_to_scale": True}}
        return MarigoldIntrinsicsPipeline(prediction_type="intrinsics", target_properties=props, **parts)
    return MarigoldNormalsPipeline(prediction_type="normals", use_full_z_range=True, **parts)


@contextlib.contextmanager
def random_marigold(tiny: bool, device: str) -> Iterator[None]:
    """The Marigold pipelines' ``from_pretrained`` builds :func:`marigold_pipeline` on ``device``."""
    import torch
    from diffusers import MarigoldIntrinsicsPipeline, MarigoldNormalsPipeline

    def build(kind: str) -> Any:
        def from_pretrained(cls, path, *args, dtype=None, **kwargs):
            with torch.device(device):
                return marigold_pipeline(kind, tiny, dtype or torch.float32)
        return classmethod(from_pretrained)

    MarigoldIntrinsicsPipeline.from_pretrained = build("intrinsics")
    MarigoldNormalsPipeline.from_pretrained = build("normals")
    try:
        yield
    finally:
        del MarigoldIntrinsicsPipeline.from_pretrained, MarigoldNormalsPipeline.from_pretrained  # the inherited one


def write_marigold(path: Path, tiny: bool) -> dict:
    (path / "model_index.json").write_text("{}")  # what the stage checks; random_marigold builds the rest
    return {"model": str(path)}


WRITERS = {"sam3": write_sam3, "sam": write_sam, "blip": write_blip, "vlm": write_vlm,
           "marigold_iid": write_marigold, "marigold_normals": write_marigold}


@contextlib.contextmanager
def random_weights(device: str = "cpu") -> Iterator[None]:
    """``from_pretrained`` builds the model from the directory's config.json with random weights,
    created and initialised directly on ``device`` in the stage's dtype (initialising the 3B VLM
    in float32 on the CPU, then copying it, took minutes; on the GPU it takes seconds)."""
    import torch
    from transformers import AutoConfig, PreTrainedModel
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    def from_config(cls, path, *args, dtype=None, **kwargs):
        config = AutoConfig.from_pretrained(path)
        with torch.device(device):
            if issubclass(cls, _BaseAutoModelClass):
                return cls.from_config(config, dtype=dtype)
            return cls._from_config(config, dtype=dtype)

    saved = PreTrainedModel.__dict__["from_pretrained"], _BaseAutoModelClass.__dict__["from_pretrained"]
    PreTrainedModel.from_pretrained = classmethod(from_config)
    _BaseAutoModelClass.from_pretrained = classmethod(from_config)
    try:
        yield
    finally:
        PreTrainedModel.from_pretrained, _BaseAutoModelClass.from_pretrained = saved


def build_stage(name: str, workdir: Path, device: str, dtype: str, tiny: bool, sam_model_type: str = "vit_b",
                extra: dict | None = None) -> Any:
    """The stage ``name`` with random full-size (or tiny) weights, set up on ``device``; ``extra``:
    more stage options (e.g. a threshold). Its files are in ``workdir / name``."""
    from synth.stages.models.blip import Blip
    from synth.stages.models.sam import Sam
    from synth.stages.models.sam3 import Sam3
    from synth.stages.models.vlm import Vlm

    path = workdir / name
    path.mkdir(parents=True, exist_ok=True)
    options = write_sam(path, tiny, sam_model_type, device) if name == "sam" else WRITERS[name](path, tiny)
    if name.startswith("marigold"):
        return build_marigold(name, options["model"], device, dtype, tiny)
    stage = {"sam3": Sam3, "sam": Sam, "blip": Blip, "vlm": Vlm}[name](device=device, dtype=dtype, **options,
                                                                       **(extra or {}))
    with random_weights(device):
        stage.setup(device)
    if "max_new_tokens" in options:  # random weights stop at random: always generate the full length
        for model in (stage.model, getattr(stage.model, "text_decoder", None)):
            if model is not None:
                model.generation_config.min_new_tokens = options["max_new_tokens"]
    return stage


def build_marigold(name: str, model: str, device: str, dtype: str, tiny: bool) -> Any:
    """albedo=marigold, or shadow=soft_shading with normals=marigold (the whole stage 3, relighting
    included; base=foreground, every draw kept), loaded through their own setup."""
    from synth.stages.models.marigold import Marigold
    from synth.stages.shadow import SoftShading

    with random_marigold(tiny, device):
        if name == "marigold_iid":
            stage = Marigold(model=model, device=device, dtype=dtype)
            stage.setup(device)
            return stage
        if dtype != "auto":
            raise SystemExit("error: --dtype: marigold_normals runs at its stage's own (auto) dtype")
        stage = SoftShading(base="foreground", normals="marigold", normals_model=model, min_visibility=0)
        stage.setup(device)
    stage.device = device  # what measure() reads
    return stage


# --- measuring ---------------------------------------------------------------------------------
def photos(size: int) -> list[np.ndarray]:
    images = []
    for path in sorted(SAMPLES_DIR.glob("*.jpg")):
        image = open_rgb(str(path))
        h, w = image.shape[:2]
        side = min(h, w)
        crop = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        images.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))
    return images


def fresh_batch(images: list[np.ndarray], n: int) -> list[Sample]:
    batch = []
    for i in range(n):
        sample = Sample(index=i, id=f"{i:06d}", source=f"bench/{i}", seed=0, image=images[i % len(images)])
        sample.mask = np.ones(sample.image.shape[:2], np.float32)  # marigold runs on the subject: the photo
        sample.degradation_type = "hard_shadow"
        sample.params["shadow"] = {"pattern": "venetian_blind", "blur": 71, "opacity": 0.35}
        batch.append(sample)
    return batch


class PeakMemory:
    """Peak CUDA allocation, or peak resident set size sampled every 5 ms on the CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak, self.running = 0, False

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak, self.running = self.rss(), True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.running = False
            self.thread.join()


def measure(stage: Any, images: list[np.ndarray], batch_size: int, repeats: int) -> dict:
    """The fastest of ``repeats`` timed batches: on a shared machine, slower ones measure the neighbours."""
    import torch

    times = []
    with PeakMemory(stage.device) as memory:
        for _ in range(repeats):
            batch = fresh_batch(images, batch_size)
            if stage.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            stage.process(batch)
            if stage.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    best = min(times)
    return {"batch": batch_size, "images_per_s": batch_size / best, "s_per_image": best / batch_size,
            "peak_gib": memory.peak / 2**30}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m synth.bench models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default=None,
                        help=f"comma-separated, from {','.join(STAGES)} (default: all on CUDA, sam,blip on CPU)")
    parser.add_argument("--batch-sizes", type=numbers(int, 1), default="1,4,8,16")
    parser.add_argument("--repeats", type=at_least(1), default=None,
                        help="timed batches per size, the fastest reported (default 3 on CUDA, 2 on CPU)")
    parser.add_argument("--size", type=at_least(64), default=1024, help="input photos are SIZE x SIZE")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto = bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--sam-model-type", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--tiny", action="store_true", help="tiny architectures: checks the harness in seconds")
    args = parser.parse_args(argv)

    import torch

    torch.set_flush_denormal(True)  # the same concern for any other random weights (CPU only)
    device = resolve_device(args.device)
    on_cuda = device.startswith("cuda")
    names = args.stages.split(",") if args.stages else (list(STAGES) if on_cuda else ["sam", "blip"])
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise SystemExit(f"error: --stages: unknown {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    sizes = args.batch_sizes
    repeats = args.repeats or (3 if on_cuda else 2)
    images = photos(args.size)
    where = torch.cuda.get_device_name(device) if on_cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"# synth.bench models: {where}, dtype {args.dtype}, {args.size}px inputs, fastest of {repeats} timed "
          f"batch(es) per size, random weights{' (TINY architectures)' if args.tiny else ''}")
    print("| stage | batch | images/s | s/image | peak memory (GiB) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="synth-bench-models-") as tmp:
        for name in names:
            stage = build_stage(name, Path(tmp), device, args.dtype, args.tiny, args.sam_model_type)
            label = f"sam ({'tiny' if args.tiny else args.sam_model_type})" if name == "sam" else name
            measure(stage, images, 1, 1)  # warm-up: kernels, allocator, lazy initialisation
            for batch_size in sizes:
                row = measure(stage, images, batch_size, repeats)
                print(f"| {label} | {row['batch']} | {row['images_per_s']:.2f} | {row['s_per_image']:.3f} | "
                      f"{row['peak_gib']:.2f} |", flush=True)
            del stage
            if on_cuda:
                torch.cuda.empty_cache()
