"""captioning=blip with a tiny, randomly initialised BLIP saved the way a user's checkpoint is.

These tests prove the code path (config -> loading -> batched generation -> decoding ->
instruction), not caption quality: the weights are random, so the words are too.
"""

import string

import pytest
import torch

from synth.errors import ConfigError
from synth.stages.captioning import describe_degradation
from synth.stages.models.blip import Blip
from tests.conftest import batched_and_single, built_stage, two_photos


def photos():
    return two_photos({"pattern": "venetian_blind", "blur": 71, "opacity": 0.35})


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """A ~50k-parameter BlipForConditionalGeneration (64 px input) and a BlipProcessor with a
    word-piece vocabulary of a few words and the letters."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *"a of the photo photography person man woman "
             "cat rocket cup sitting on in with light".split(), *string.ascii_lowercase]
    vocab = {w: i for i, w in enumerate(words)}
    small = dict(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1, num_attention_heads=4)
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), encoder_hidden_size=32, max_position_embeddings=64,
                         bos_token_id=vocab["[DEC]"], eos_token_id=vocab["[SEP]"], sep_token_id=vocab["[SEP]"],
                         pad_token_id=vocab["[PAD]"], **small),
        vision_config=dict(image_size=64, patch_size=16, initializer_range=0.02, **small),
        projection_dim=32)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 64, "width": 64}),
                              tokenizer=BertTokenizer(vocab=vocab, bos_token="[DEC]"))
    path = tmp_path_factory.mktemp("blip-tiny")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def make_stage(path, *overrides):
    """The stage exactly as `python -m synth captioning=blip captioning.model=PATH ...` builds it."""
    return built_stage("captioning", "captioning=blip", f"captioning.model={path}", "device=cpu",
                       "captioning.max_new_tokens=8", *overrides)


@pytest.mark.parametrize("prompt", [None, "a photo of"])
def test_blip_batch_of_two_photos_equals_one_at_a_time(tiny_blip, prompt):
    """Code path, not quality: captions are strings in the template, the same batched or alone."""
    overrides = [f"captioning.prompt='{prompt}'"] if prompt else []
    stage = make_stage(tiny_blip, *overrides)
    assert isinstance(stage, Blip) and stage.dtype == torch.float32
    batch, singles = batched_and_single(stage, photos)
    for batched, single in zip(batch, singles):
        assert batched.ok, batched.error
        caption = batched.params["captioning"]["caption"]
        assert isinstance(caption, str) and caption and "\n" not in caption
        assert batched.caption == f"remove {describe_degradation(batched)} from {caption}"
        assert batched.params["captioning"] == {"method": "blip", "model": str(tiny_blip), "caption": caption}
        if prompt:
            assert caption.startswith(prompt)  # BLIP continues the conditional prefix
        assert single.caption == batched.caption


def test_blip_template_and_config_errors(tiny_blip):
    """Code path, not quality: the template's placeholders are filled; bad values are one line."""
    stage = make_stage(tiny_blip, "captioning.template='{caption} ({subject}, {degradation})'",
                       "captioning.subject=astronaut")
    batch = photos()[:1]
    stage.process(batch)
    assert batch[0].caption.endswith(f"(astronaut, {describe_degradation(batch[0])})")
    with pytest.raises(ConfigError, match=r"^captioning.template='\{keywords\}': only \{degradation\}, \{subject\}, "
                                          r"\{caption\} may be used"):
        Blip(model=str(tiny_blip), template="{keywords}")
    with pytest.raises(ConfigError, match=r"^captioning.max_new_tokens=0: must be an integer >= 1$"):
        Blip(model=str(tiny_blip), max_new_tokens=0)


def test_blip_missing_weights_name_the_key(tmp_path, monkeypatch):
    """Error path: one line naming captioning.model and how to get the weights."""
    with pytest.raises(ConfigError) as err:
        Blip(model=str(tmp_path / "blip"))
    assert str(err.value).startswith(f"captioning.model={tmp_path / 'blip'}: no such directory; use a hub id such as "
                                     "Salesforce/blip-image-captioning-large")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"^captioning.model=Salesforce/blip-image-captioning-large: not in the "
                                          r"local Hugging Face cache and HF_HUB_OFFLINE is set"):
        Blip()
