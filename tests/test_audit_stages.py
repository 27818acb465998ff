"""Found by a hostile-user audit of image inputs, segmentation, stage parameters and the model
stages' configuration: ways a job could end with a wrong dataset, fail every sample over a
setting it should have refused, or end in a traceback. Each test fails without the fix it names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synth.errors import ConfigError
from synth.stages.captioning import TemplateCaption
from tests.conftest import compose_config
from tests.test_robustness_run import photo, run_job


def photos(folder: Path, count: int = 2) -> Path:
    for i in range(count):
        photo(folder / f"p{i}.png", h=48, w=64, seed=i)
    return folder


FAST = ("segmentation.work_size=64", "segmentation.iterations=1")


# --- captioning.template and captioning.subject -------------------------------------------------
@pytest.mark.parametrize("template, shown", [
    ("remove {degradation.upper} from the {subject}", "'degradation.upper'"),  # caption "<built-in method upper ...>"
    ("remove {degradation[0]} from the {subject}", r"'degradation\[0\]'"),  # caption "remove t from ..."
    ("remove {degradation.foo}", "'degradation.foo'"),  # was "captioning: 'str' object has no attribute 'foo'"
    ("remove {degradation} from the {subject!r}", r"\{subject!r\} has a conversion or format"),
    ("remove {degradation} from the {subject:>30}", r"\{subject:>30\} has a conversion or format"),
])
def test_a_template_placeholder_with_attribute_index_or_format_is_refused(template, shown):
    """Fix: captioning.check_template parses the template and takes only the plain placeholders.
    It used to try template.format(degradation="x", subject="x"), which '{degradation.upper}',
    '{degradation[0]}' and '{subject!r}' pass: the job ended 0 with every caption reading
    '<built-in method upper of str object at 0x...>', 't' or "'subject'"."""
    with pytest.raises(ConfigError, match=r"^captioning\.template='.*': only \{degradation\}, \{subject\} may be used.*"
                                          + shown):
        TemplateCaption(template=template)


@pytest.mark.parametrize("template", ["", "   ", 123])
def test_a_blank_or_non_text_template_is_refused(template):
    """Fix: check_template refuses what is not text or is blank. An empty template gave every sample the
    caption '' (exit 0); captioning.template=123 ended in "captioning: 'int' object has no attribute 'format'"."""
    with pytest.raises(ConfigError, match=r"^captioning\.template=.*: must be text using \{degradation\}, \{subject\}$"):
        TemplateCaption(template=template)


def test_plain_placeholders_and_escaped_braces_still_work():
    stage = TemplateCaption(template="{{edit}} remove {degradation} from the {subject}", subject=2024)
    assert stage.template.startswith("{{edit}}") and stage.subject == "2024"  # Hydra reads subject=2024 as a number


@pytest.mark.parametrize("subject", [["a", "b"], {"a": 1}, None, "", True])
def test_a_subject_that_is_not_text_is_refused(subject):
    """Fix: captioning.check_subject. captioning.subject=[a,b] ended 0 with every caption reading
    "remove the soft striped shadow from the ['a', 'b']"."""
    with pytest.raises(ConfigError, match=r"^captioning\.subject=.*: must be text"):
        TemplateCaption(subject=subject)


# --- experiments combined with other groups --------------------------------------------------------
@pytest.mark.parametrize("experiment", ["sun_shadows", "shadow_removal"])
@pytest.mark.parametrize("captioning, placeholder", [("blip", "{caption}"), ("vlm", "{keywords}")])
def test_an_experiment_keeps_a_model_captions_template(experiment, captioning, placeholder):
    """Fix: the experiments no longer set captioning.template (they set the template option's own
    default). With experiment=sun_shadows captioning=blip the BLIP template lost {caption}: the model
    ran on every image and its caption was thrown away, 'remove ... from the subject' (exit 0)."""
    cfg = compose_config(f"experiment={experiment}", f"captioning={captioning}")
    assert placeholder in cfg.captioning.template


@pytest.mark.parametrize("experiment", ["sun_shadows", "shadow_removal"])
def test_an_experiment_without_captioning_runs(tmp_path, experiment):
    """Same fix: experiment=sun_shadows ~captioning left captioning={template: ...} without a
    _target_, and the job ended in AttributeError: 'dict' object has no attribute 'requires'."""
    summary = run_job(photos(tmp_path / "in"), tmp_path / "run", f"experiment={experiment}", "~captioning", *FAST)
    assert summary["exit_code"] == 0 and summary["done"] == 2


def test_a_removed_stage_whose_keys_an_experiment_sets_is_one_config_error(tmp_path):
    """Fix: app.build refuses a group node without _target_. experiment=sun_shadows ~shadow left
    shadow={base: foreground, opacity: ...}, which Hydra 'instantiated' as that dict: the job ended in
    AttributeError: 'dict' object has no attribute 'requires' (a traceback, exit 1)."""
    with pytest.raises(ConfigError, match=r"^shadow: no option of this group is selected \(~shadow\), yet shadow\.base "
                                          r"is set \(e\.g\. by experiment=\.\.\.\)"):
        run_job(photos(tmp_path / "in"), tmp_path / "run", "experiment=sun_shadows", "~shadow", *FAST)
    assert not (tmp_path / "run").exists()


# --- segmentation settings ---------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["/m.png", "sub/m.png", None, 123, ["a"], ""])
def test_a_mask_suffix_that_cannot_name_a_file_is_one_config_error(tmp_path, suffix):
    """Fix: MaskFolder checks segmentation.suffix when built. Every sample used to fail at segmentation
    with "ValueError: Invalid name 'p0/m.png'" or "TypeError: can only concatenate str (not "NoneType")
    to str" (exit 1, the run directory written) instead of one line, exit 2, before any image is read."""
    from synth.stages.segmentation import MaskFolder

    (tmp_path / "masks").mkdir()
    with pytest.raises(ConfigError, match=r"^segmentation\.suffix=.*: must be the text after each input's stem"):
        MaskFolder(path=str(tmp_path / "masks"), suffix=suffix)


@pytest.mark.parametrize("margin", [0.0, 0.001])
def test_grabcut_with_margin_zero_segments(tmp_path, margin):
    """Fix: GrabCut keeps at least one pixel of background outside its rectangle. segmentation.margin=0
    (allowed: [0, 0.5)) made the rectangle the whole frame and every sample failed with OpenCV's
    "(-215:Assertion failed) !bgdSamples.empty() && !fgdSamples.empty() in function 'initGMMs'"."""
    summary = run_job(photos(tmp_path / "in"), tmp_path / "run", f"segmentation.margin={margin}", *FAST)
    assert summary["failed"] == 0 and summary["done"] == 2


# --- model stages' text settings ---------------------------------------------------------------------
@pytest.mark.parametrize("stage, key", [("synth.stages.models.sam3.Sam3", "segmentation.prompt"),
                                        ("synth.stages.models.blip.Blip", "captioning.prompt"),
                                        ("synth.stages.models.vlm.Vlm", "captioning.prompt")])
@pytest.mark.parametrize("prompt, shown", [(["a", "b"], r"\[a,b\]"), ({"a": 1}, r"\{'a': 1\}"), (True, "True")])
def test_a_model_prompt_that_is_not_text_is_one_config_error(stage, key, prompt, shown):
    """Fix: params.text. segmentation=sam3 segmentation.prompt=[a,b] prompted SAM 3 with the text
    "['a', 'b']" on every image; captioning=vlm (or blip) captioning.prompt=[a,b] ended in
    "captioning: 'list' object has no attribute 'strip'", a message without the key."""
    import importlib

    module, name = stage.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(ConfigError, match=rf"^{key}={shown}: must be text$"):
        cls(model="/nonexistent", prompt=prompt)


# --- a mask file's own EXIF orientation ------------------------------------------------------------
@pytest.mark.parametrize("orientation", [6, 8, 3])
@pytest.mark.parametrize("h, w", [(64, 64), (48, 64)])
def test_a_mask_with_exif_orientation_is_turned_like_its_photo(tmp_path, orientation, h, w):
    """Fix: MaskFolder applies the mask file's EXIF orientation (decode.check_header reads it,
    decode.orient turns the pixels), as decode does for the photo. OpenCV's IMREAD_UNCHANGED ignores
    it: a mask JPEG saved with its photo's orientation tag (as shown by every viewer, aligned with
    the photo) was used as stored, so a square photo's mask ended turned by 90 degrees (exit 0, the
    subject in the wrong place) and a non-square one failed ('the aspect ratio differs')."""
    from PIL import Image

    from synth.decode import orient

    shown = np.asarray(Image.open(photo(tmp_path / "shown.png", h=h, w=w)))  # the photo as a viewer shows it
    subject = np.zeros((h, w), np.uint8)
    subject[4:h - 4, 4:w // 2] = 255  # the left half, as shown
    inverse = {6: 8, 8: 6, 3: 3}[orientation]  # stored pixels: what the orientation turns into `shown`
    for folder, pixels in (("in", shown), ("masks", subject)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        (tmp_path / folder).mkdir()
        Image.fromarray(orient(pixels, inverse)).save(tmp_path / folder / "p.jpg", exif=exif, quality=98)
    run_job(tmp_path / "in", tmp_path / "run", "segmentation=mask_folder", f"segmentation.path='{tmp_path / 'masks'}'",
            "segmentation.suffix=.jpg", "data.extensions=[.jpg]")
    mask = np.asarray(Image.open(tmp_path / "run" / "stage_1" / "000000_mask.png")).astype(np.float32) / 255
    assert mask.shape == (h, w)
    assert mask[8:h - 8, 8:w // 2 - 4].mean() > 0.9 and mask[:, w // 2 + 4:].mean() < 0.05


@pytest.mark.parametrize("key, value, rule", [("iterations", 1_000_000, r">= 1 and <= 100"),
                                              ("work_size", 100_000, r">= 32 and <= 8192")])
def test_grabcut_refuses_absurd_work(key, value, rule):
    """Fix: upper bounds on segmentation.iterations and segmentation.work_size. iterations=1000000
    hung the job on its first 64 px image (still running after 2 minutes); work_size=100000 enlarged
    each photo to 100000 px: 22.5 GB per worker, an out-of-memory failure of every sample (or the
    kernel's OOM killer for the whole job)."""
    from synth.stages.segmentation import GrabCut

    with pytest.raises(ConfigError, match=rf"^segmentation\.{key}={value}: must be an integer {rule}$"):
        GrabCut(**{key: value})


@pytest.mark.parametrize("override, message", [
    ("captioning.template='remove ${x} from the {subject}'", r"^captioning: Interpolation key 'x' not found \(in a \$\{\.\.\.\} "),
    ("shadow.opacity=${oc.env:SYNTH_AUDIT_UNSET}", r"^shadow: KeyError raised while resolving interpolation: .*SYNTH_AUDIT_UNSET"),
])
def test_an_interpolation_that_cannot_resolve_in_a_stage_value_is_one_config_error(tmp_path, override, message):
    """Fix: app.build turns OmegaConf's InterpolationResolutionError into one line naming the group.
    A shell-style template (captioning.template='remove ${x} ...') ended in Hydra's traceback, exit 1."""
    with pytest.raises(ConfigError, match=message):
        run_job(photos(tmp_path / "in"), tmp_path / "run", override, *FAST)
    assert not (tmp_path / "run").exists()


def test_sam_refuses_an_absurd_point_grid(tmp_path):
    """Fix: segmentation.points_per_side at most 128. The automatic mask generator prompts
    points_per_side**2 points per image: points_per_side=100000 was accepted, and the generator
    built in setup (after the run directory is written) would hold a grid of 10**10 float64 points
    (160 GB), then decode a mask for each."""
    from synth.stages.models.sam import Sam

    checkpoint = tmp_path / "sam.pth"
    checkpoint.write_bytes(b"only its existence is checked when the stage is built")
    with pytest.raises(ConfigError, match=r"^segmentation\.points_per_side=100000: must be an integer >= 1 and <= 128$"):
        Sam(checkpoint=str(checkpoint), prompt="auto", points_per_side=100_000)
    assert Sam(checkpoint=str(checkpoint), prompt="auto", points_per_side=64).generator_options["points_per_side"] == 64


def test_a_photo_is_never_its_own_mask(tmp_path):
    """Fix: with segmentation.path = data.path and the photos' extension as segmentation.suffix
    (the default .png), each photo was found as its own mask: the job ended 0 with masks that were
    the photos' luminance. Now app.skip_mask_folders refuses it before anything is written, and
    MaskFolder fails a sample whose mask is its input file (another spelling of the folder, data=csv)."""
    from synth.sample import Sample
    from synth.stages.segmentation import MaskFolder

    data = photos(tmp_path / "in")
    with pytest.raises(ConfigError, match=r"^segmentation\.suffix=\.png: segmentation\.path is data\.path, so each "
                                          r"photo would be its own mask"):
        run_job(data, tmp_path / "run", "segmentation=mask_folder", f"segmentation.path='{data}'")
    assert not (tmp_path / "run").exists()

    sample = Sample(index=0, id="000000", source=str(data / "p0.png"), seed=0)
    sample.image = np.zeros((48, 64, 3), np.uint8)
    with pytest.raises(Exception, match=r"is the input itself"):
        MaskFolder(path=str(tmp_path / "in" / ".")).process_sample(sample)


@pytest.mark.parametrize("spec", [51.0, [31.0, 51.0, 71.0], {31.0: 1, 51.0: 2}, [31.0, 51.0]])
def test_an_integer_parameter_written_as_a_float_draws_integers(spec):
    """Fix: Param.number keeps an integer parameter's values as ints. shadow.blur=51.0 (or a choice
    [31.0,51.0,71.0]) was drawn as 51.0 and recorded so in every sample's metadata ("blur": 51.0)."""
    from synth.params import Param

    param = Param.number("shadow.blur", spec, 1, 1001, integer=True, odd=True)
    drawn = {param.sample(0, index) for index in range(20)}
    assert all(type(v) is int and v % 2 for v in drawn)


def test_a_fallback_mask_folder_inside_data_path_is_not_listed_as_input(tmp_path):
    """Fix: app.skip_mask_folders also looks at a model stage's fallback. With segmentation=sam3
    segmentation.fallback={_target_: ...MaskFolder, path: DATA/masks} the masks under data.path
    were listed as photos (each then its own fallback mask), as segmentation=mask_folder's are not."""
    from synth.app import build_runner

    data = photos(tmp_path / "in")
    photo(data / "masks" / "p0.png", h=48, w=64)
    model = tmp_path / "sam3"
    model.mkdir()
    (model / "config.json").write_text("{}")  # checked when built; the weights load in setup, never here
    cfg = compose_config("data=folder", f"data.path='{data}'", "logger=none", "segmentation=sam3",
                         f"segmentation.model='{model}'",
                         f"+segmentation.fallback={{_target_:synth.stages.segmentation.MaskFolder,path:'{data / 'masks'}'}}")
    assert build_runner(cfg, tmp_path / "run").source.paths == ["p0.png", "p1.png"]


def test_a_fallback_given_as_a_mapping_in_the_config_is_used(tmp_path):
    """Fix: build_fallback takes the stage Hydra's recursive instantiate already built from a
    mapping with _target_. README offers fallback=mask_folder, but by name it cannot get its
    segmentation.path, and as a mapping every job stopped with "segmentation.fallback=<synth.stages.
    segmentation.MaskFolder object at 0x...>: give a segmentation option name such as grabcut, or a
    mapping with _target_": a model stage could not fall back on masks at all."""
    import cv2
    from omegaconf import OmegaConf

    from synth.app import build
    from synth.sample import Sample

    masks = tmp_path / "masks"
    masks.mkdir()
    subject = np.zeros((48, 64), np.uint8)
    subject[8:40, 10:30] = 255
    cv2.imwrite(str(masks / "p0.png"), subject)
    cfg = OmegaConf.create({"segmentation": {"_target_": "tests.test_integrity_inputs.SpeckSegmentation", "device": "cpu",
                                             "fallback": {"_target_": "synth.stages.segmentation.MaskFolder",
                                                          "path": str(masks)}}})
    stage = build(cfg, "segmentation")
    sample = Sample(index=0, id="000000", source=str(tmp_path / "in" / "p0.png"), seed=0)
    sample.image = np.zeros((48, 64, 3), np.uint8)
    stage.process([sample])
    assert sample.ok and np.array_equal(sample.mask > 0.5, subject > 0)
    assert sample.params["segmentation"]["fallback"] == "synth.stages.segmentation.MaskFolder"


def test_a_fallback_option_missing_a_setting_says_how_to_give_it():
    """Fix: the error for fallback=mask_folder (no path) says how to give the option's settings;
    it pointed at segmentation.path=..., a key the model stage does not have."""
    from synth.stages.models.base import build_fallback

    with pytest.raises(ConfigError, match=r"^segmentation\.fallback: segmentation\.path: required .* \(an option's settings "
                                          r"go in a mapping: segmentation\.fallback=\{_target_:synth\.stages\.segmentation"
                                          r"\.MaskFolder,\.\.\.\}\)$"):
        build_fallback("mask_folder")


@pytest.mark.parametrize("device", ["cuda:abc", "cuda:", "cuda:0x", "mpsx", "cuda:-1"])
def test_a_device_that_is_not_one_is_refused_when_the_stage_is_built(device):
    """Fix: check_device (a stage's device) and app.job_device (the job's) take cuda:N with digits only.
    segmentation.device=cuda:abc (or device=cuda:abc) passed the build and was refused when the model
    set up, after the run directory was written (manifest.jsonl, samples.jsonl, metadata.json)."""
    from synth.app import job_device
    from synth.stages.models.sam3 import Sam3

    with pytest.raises(ConfigError, match=rf"^segmentation\.device={device}: choose auto, cpu, cuda or cuda:N"):
        Sam3(model="/nonexistent", device=device)
    if device.startswith("cuda"):
        with pytest.raises(ConfigError, match=rf"^device={device}: choose auto, cpu, cuda, cuda:N or mps$"):
            job_device(device)
    assert job_device("cuda:1") == "cuda:1"


@pytest.mark.parametrize("value", [0, "abc", 1.5])
def test_a_bad_mask_max_pixels_names_its_own_key(tmp_path, value):
    """Fix: MaskFolder checks segmentation.max_pixels itself; the error named data.max_pixels
    ("data.max_pixels=0: must be null or an integer >= 1"), a key the user had not set."""
    from synth.stages.segmentation import MaskFolder

    with pytest.raises(ConfigError, match=rf"^segmentation\.max_pixels={value}: must be an integer >= 1 or null$"):
        MaskFolder(path=str(tmp_path), max_pixels=value)


@pytest.mark.parametrize("shadow, key", [("soft_shading", "opacity"), ("mix", "base")])
def test_an_experiment_for_another_option_names_the_key_it_set(tmp_path, shadow, key):
    """Fix: app.build names the key a stage option does not take. experiment=sun_shadows sets
    shadow=hard's keys; with shadow=soft_shading the job said "shadow: SoftShading.__init__() got an
    unexpected keyword argument 'opacity'" (Python's words, no key)."""
    with pytest.raises(ConfigError, match=rf"^shadow\.{key}: not a setting of synth\.stages\.shadow\.\w+ \(set by an "
                                          rf"experiment=\.\.\. or \+shadow\.{key}=\.\.\.\)"):
        run_job(photos(tmp_path / "in"), tmp_path / "run", "experiment=sun_shadows", f"shadow={shadow}", *FAST)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sigmas", [5, [True], [15, False], "15"])
def test_albedo_sigmas_must_be_a_list_of_numbers(sigmas):
    """Fix: Retinex checks the type before list(sigmas). albedo.sigmas=5 said "albedo: 'int' object
    is not iterable" (no key), [true] ran with a sigma of 1.0, and "15" with a sigma of... a string."""
    from synth.stages.albedo import Retinex

    with pytest.raises(ConfigError, match=r"^albedo\.sigmas=.*: expected a list of positive numbers$"):
        Retinex(sigmas=sigmas)
    assert Retinex(sigmas=(15, 80.5)).sigmas == [15.0, 80.5]


@pytest.mark.parametrize("color", [[True, 0, 0], [128.5, 0, 0], [float("nan"), 0, 0], "128", 300])
def test_recombine_gray_color_takes_whole_levels_only(color):
    """Fix: AlphaComposite refuses bools and fractions. [true,0,0] composited over [1,0,0], and
    128.5 was cut to 128 by the uint8 conversion, each with exit 0."""
    from synth.stages.recombine import AlphaComposite

    with pytest.raises(ConfigError, match=r"^recombine\.gray_color=.*: expected \[r, g, b\], whole numbers in 0\.\.255$"):
        AlphaComposite(background="gray", gray_color=color)
    assert AlphaComposite(background="gray", gray_color=[128.0, 0, 255]).gray_color.tolist() == [128, 0, 255]
    assert AlphaComposite(background="gray", gray_color=7).gray_color.tolist() == [7, 7, 7]


def test_a_label_mask_of_low_levels_fails_its_sample_saying_what_a_mask_is(tmp_path):
    """Fix: empty_mask_reason refuses a mask no pixel of which is half subject. A label mask of
    levels 0 and 3 (a class id) was read as 1.2 % alpha: it passed the coverage check and the
    sample failed later with "degradation not visible", which points at the shadow, not the mask."""
    from PIL import Image

    data = photos(tmp_path / "in", 1)
    masks = tmp_path / "masks"
    masks.mkdir()
    [name] = [p.stem for p in data.iterdir()]
    label = np.zeros((48, 64), np.uint8)  # photos() makes 64 x 48 photos
    label[6:42, 10:54] = 3
    Image.fromarray(label).save(masks / f"{name}.png")
    summary = run_job(data, tmp_path / "run", "segmentation=mask_folder", f"segmentation.path='{masks}'",
                      "max_failure_rate=1")
    [failure] = summary["failures"]
    assert failure["stage"] == "segmentation"
    assert "no pixel reaches 50 % (the strongest is 1.2%); a mask is soft alpha, white (255) = subject" in failure["error"]
