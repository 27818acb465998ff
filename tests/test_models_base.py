"""The shared model-stage base: batching, out-of-memory back-off, device/dtype, weight errors,
fallback. A stand-in 'model' records the batch sizes it is given; the real stages are tested
with tiny models in the other test_models_*.py files."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from synth.errors import ConfigError, SampleError
from synth.stages.models.base import ModelStage, build_fallback, clean_text
from synth.stages.models.loading import check_source, load_pretrained, resolve_dtype
from synth.stages.segmentation import GrabCut
from tests.conftest import make_sample


class Recording(ModelStage):
    """'Runs out of memory' for chunks larger than ``fits``; ``too_big`` ids never fit."""

    name = "captioning"

    def __init__(self, fits=99, too_big=(), error=torch.cuda.OutOfMemoryError, **kwargs):
        super().__init__(**kwargs)
        self.fits, self.too_big, self.error, self.sizes, self.loads = fits, set(too_big), error, [], 0

    def load(self):
        self.loads += 1

    def infer(self, chunk):
        self.sizes.append(len(chunk))
        if len(chunk) > self.fits or any(s.id in self.too_big for s in chunk):
            raise self.error("CUDA out of memory. Tried to allocate 20.00 GiB")
        return [f"caption {s.index}" for s in chunk]

    def apply(self, sample, result):
        if sample.index == 13:
            raise SampleError("nothing found")
        sample.caption = result


def samples(n):
    return [make_sample(index=i, size=8) for i in range(n)]


def test_batch_size_splits_the_runner_batch():
    stage = Recording(batch_size=3)
    batch = samples(8)
    stage.process(batch)
    assert stage.sizes == [3, 3, 2] and [s.caption for s in batch] == [f"caption {i}" for i in range(8)]
    stage = Recording()  # null: the whole runner batch at once
    stage.process(samples(8))
    assert stage.sizes == [8]


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, RuntimeError])
def test_out_of_memory_halves_the_chunk_down_to_what_fits(error):
    """torch.cuda.OutOfMemoryError and a plain RuntimeError('... out of memory ...') both back off."""
    stage = Recording(batch_size=8, fits=2, error=error)
    batch = samples(8)
    stage.process(batch)
    assert stage.sizes == [8, 4, 2, 2, 2, 2]
    assert all(s.ok for s in batch) and [s.caption for s in batch] == [f"caption {i}" for i in range(8)]
    stage.sizes.clear()
    stage.process(samples(3))  # every runner batch starts again at batch_size
    assert stage.sizes == [3, 1, 1, 1]


def test_a_sample_that_does_not_fit_alone_fails_and_the_rest_go_on():
    stage = Recording(batch_size=4, too_big={"000002"})
    batch = samples(4)
    stage.process(batch)
    assert stage.sizes == [4, 2, 2, 1, 1]  # [0..3] OOM; [0,1] ok; [2,3] OOM; [2] OOM alone: fails; [3] ok
    assert [s.ok for s in batch] == [True, True, False, True]
    assert batch[2].error_stage == "captioning"
    assert batch[2].error.startswith("SampleError: out of GPU memory even at batch size 1 (CUDA out of memory.")


def test_other_errors_propagate_and_per_sample_errors_fail_only_that_sample():
    stage = Recording(error=ValueError, fits=0)
    with pytest.raises(ValueError):
        stage.process(samples(2))
    stage = Recording()
    batch = [make_sample(index=i, size=8) for i in (12, 13, 14)]
    stage.process(batch)
    assert [s.ok for s in batch] == [True, False, True] and batch[1].error == "SampleError: nothing found"
    stage.sizes.clear()
    stage.process(batch)  # a runner retry skips what this stage already failed
    assert stage.sizes == [2]


def test_setup_loads_once_and_resolves_device_and_dtype():
    stage = Recording(device=None, dtype="auto")
    stage.setup("cpu")
    stage.setup("cpu")
    assert stage.loads == 1 and stage.device == "cpu" and stage.dtype == torch.float32
    assert Recording(device="cpu").device_option == "cpu"
    assert resolve_dtype("auto", "cuda:1") == torch.bfloat16 and resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float16", "cpu") == torch.float16
    for kwargs, message in [({"dtype": "fp8"}, "captioning.dtype=fp8: choose from auto, float32, bfloat16, float16"),
                            ({"device": "tpu"}, "captioning.device=tpu: choose auto, cpu, cuda or cuda:N"),
                            ({"batch_size": 0}, "captioning.batch_size=0: must be an integer >= 1 or null")]:
        with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.")):
            Recording(**kwargs)


def test_load_errors_become_one_line_naming_the_key():
    """Gated, unknown and unreachable hub ids, as transformers raises them (OSError from the hub error)."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    def gated(source):
        hub_error = GatedRepoError.__new__(GatedRepoError)  # its constructor wants a live HTTP response
        Exception.__init__(hub_error, "401 Client Error. Cannot access gated repo")
        raise OSError(f"You are trying to access a gated repo. {source}") from hub_error

    with pytest.raises(ConfigError) as err:
        load_pretrained("segmentation.model", "facebook/sam3", "HOW", gated)
    assert str(err.value) == ("segmentation.model=facebook/sam3: gated on the Hugging Face Hub; request access at "
                              "https://huggingface.co/facebook/sam3, then `hf auth login` (or set HF_TOKEN), or HOW")

    def unreachable(source):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from \
            LocalEntryNotFoundError("no network")

    with pytest.raises(ConfigError, match=r"^captioning.model=org/model: not in the local Hugging Face cache and "
                                          r"the Hub cannot be reached; run `hf download org/model`"):
        load_pretrained("captioning.model", "org/model", "HOW", unreachable)
    with pytest.raises(ConfigError, match=r"^captioning.model: required; HOW"):
        check_source("captioning.model", None, "HOW")


def test_fallback_by_option_name_or_mapping():
    assert isinstance(build_fallback("grabcut"), GrabCut)
    stage = build_fallback({"_target_": "synth.stages.segmentation.GrabCut", "margin": 0.2})
    assert isinstance(stage, GrabCut) and stage.margin == 0.2
    with pytest.raises(ConfigError, match=r"^segmentation.fallback: segmentation.margin=0.7: must be a number >= 0 and < 0.5$"):
        build_fallback({"_target_": "synth.stages.segmentation.GrabCut", "margin": 0.7})
    with pytest.raises(ConfigError, match=r"^segmentation.fallback=3: give a segmentation option name"):
        build_fallback(3)


def test_clean_text_keeps_one_printable_line():
    assert clean_text(" a man\n in a\x0f space suit. ") == "a man in a space suit"
    assert clean_text("\x00\n") == ""
    assert clean_text("two\r\nlines\tand\u2028more.") == "two lines and more"
    assert clean_text("x") == "x" and clean_text("3.5 stops") == "3.5 stops"  # inner dots stay


@given(st.text())
def test_clean_text_is_always_one_printable_line(text):
    cleaned = clean_text(text)
    assert cleaned.isprintable() and "  " not in cleaned
    assert cleaned == cleaned.strip(" .")
