"""captioning=vlm with a tiny, randomly initialised Qwen2-VL saved the way a user's checkpoint is.

These tests prove the code path (config -> AutoProcessor/AutoModelForImageTextToText ->
chat template -> left-padded batched generation -> keywords -> instruction), not the quality of
the keywords: the weights are random, so the text is too.
"""

import pytest
import torch

from synth.errors import ConfigError
from synth.stages.captioning import describe_degradation
from synth.stages.models.vlm import Vlm
from tests.conftest import batched_and_single, built_stage, two_photos

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
# Qwen2-VL's chat template, cut down to what the stage sends: one user turn, an image and text.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def photos():
    return two_photos({"pattern": "tree_foliage", "blur": 41, "opacity": 0.45})


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    """A ~60k-parameter Qwen2VLForConditionalGeneration with a byte-level tokenizer over printable
    ASCII, an image processor capped at 112x112 px and a chat template."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (Qwen2Tokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    # byte-level symbols of printable ASCII and newline: enough for the prompt, and every token decodes to text
    symbols = sorted({c for c in ByteLevel.alphabet()} & {ByteLevel(add_prefix_space=False).pre_tokenize_str(chr(b))[0][0]
                                                           for b in [10, *range(32, 127)]})
    vocab = {c: i for i, c in enumerate(symbols)}
    vocab.update({s: len(vocab) + i for i, s in enumerate(SPECIALS)})
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
                                 tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                                 chat_template=CHAT_TEMPLATE)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
                         bos_token_id=None, eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"])
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("vlm-tiny")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def make_stage(path, *overrides):
    """The stage exactly as `python -m synth captioning=vlm captioning.model=PATH ...` builds it."""
    return built_stage("captioning", "captioning=vlm", f"captioning.model={path}", "device=cpu",
                       "captioning.max_new_tokens=12", *overrides)


def test_vlm_batch_of_two_photos_equals_one_at_a_time(tiny_vlm):
    """Code path, not quality: differently sized photos give different numbers of image tokens,
    so the batch is left-padded; every sample's keywords match its one-at-a-time run."""
    stage = make_stage(tiny_vlm)
    assert isinstance(stage, Vlm) and type(stage.model).__name__ == "Qwen2VLForConditionalGeneration"
    assert stage.chat.endswith("<|im_start|>assistant\n") and "<|image_pad|>" in stage.chat
    batch, singles = batched_and_single(stage, photos)
    for batched, single in zip(batch, singles):
        assert batched.ok, batched.error
        keywords = batched.params["captioning"]["keywords"]
        assert isinstance(keywords, str) and keywords == keywords.lower() and "\n" not in keywords
        assert batched.caption == f"remove {describe_degradation(batched)} from the subject, lighting: {keywords}"
        assert single.caption == batched.caption


def test_vlm_keywords_are_normalised_and_empty_answers_fail(tiny_vlm):
    """The answer becomes one comma-separated, lower-case list; an empty answer fails the sample."""
    stage = make_stage(tiny_vlm, "captioning.template='{keywords}'")
    sample = photos()[0]
    stage.apply(sample, "Soft Window Light; from the left.\n- indoor\n")
    assert sample.caption == "soft window light, from the left"
    stage.infer = lambda chunk: [" \n"] * len(chunk)
    batch = photos()
    stage.process(batch)
    assert [s.error for s in batch] == ["SampleError: vlm generated no text"] * 2 and batch[0].caption is None


def test_vlm_missing_weights_and_bad_config_name_the_key(tmp_path, tiny_vlm):
    """Error path: one line naming the key (and how to get the weights where that applies)."""
    with pytest.raises(ConfigError) as err:
        Vlm(model=str(tmp_path))
    assert str(err.value).startswith(f"captioning.model={tmp_path}: no config.json in this directory")
    assert "Qwen/Qwen2.5-VL-3B-Instruct" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^captioning.image_size=8: must be an integer >= 28$"):
        Vlm(model=str(tiny_vlm), image_size=8)
    with pytest.raises(ConfigError, match=r"^captioning.device=gpu: choose auto, cpu, cuda or cuda:N"):
        Vlm(model=str(tiny_vlm), device="gpu")
