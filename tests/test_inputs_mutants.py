"""Behaviour of the input side (synth.data, synth.decode) and of the W&B logger that
hand-applied mutants showed no other test pins down: each test names the one-line change it catches."""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, JpegImagePlugin

from synth import decode as decode_module
from synth.data import CsvSource, ImageFolder
from synth.decode import Limits, check_header, formats_for, jpeg_scans, orient
from synth.errors import ConfigError
from tests.test_robustness_inputs import assert_refused, gradient, load


# --- decode: limits ------------------------------------------------------------------------------
def test_max_side_may_equal_min_side():
    # mutant: `max_side <= min_side` refused (README: max_side >= min_side)
    assert Limits(min_side=16, max_side=16).max_side == 16


def test_max_pixels_zero_is_refused_with_the_key():
    # mutant: `max_pixels < 0` (0 accepted: every image refused as a bomb, the job fails every sample)
    with pytest.raises(ConfigError, match=r"^data\.max_pixels=0: must be null or an integer >= 1$"):
        Limits(max_pixels=0)


def test_an_image_of_exactly_max_pixels_is_decoded(tmp_path):
    # mutant: `w * h >= max_pixels` (the limit itself refused)
    Image.fromarray(gradient(50, 100)).save(tmp_path / "a.png")
    assert load(tmp_path / "a.png", max_pixels=5000).ok
    assert_refused(load(tmp_path / "a.png", max_pixels=4999), "5000 pixels exceeds data.max_pixels=4999")


def test_formats_for_takes_extensions_in_any_case_with_or_without_the_dot():
    # mutant: formats_for without the `"." +` for a bare extension (data.extensions=[png] allowed no format)
    assert formats_for(["PNG", ".JPG", "jpeg", ".xyz"]) == ("PNG", "JPEG")


# --- decode: JPEG scans --------------------------------------------------------------------------
def progressive(size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gradient(size, size)).save(buf, "JPEG", progressive=True)
    return buf.getvalue()


def test_a_jpeg_with_exactly_the_scan_limit_is_decoded(tmp_path, monkeypatch):
    # mutant: `scans >= MAX_JPEG_SCANS` (a file at the limit refused)
    data = progressive()
    assert data.count(b"\xff\xda") == 10  # libjpeg's progressive colour JPEG
    (tmp_path / "p.jpg").write_bytes(data)
    monkeypatch.setattr(decode_module, "MAX_JPEG_SCANS", 10)
    assert load(tmp_path / "p.jpg").ok
    monkeypatch.setattr(decode_module, "MAX_JPEG_SCANS", 9)
    assert_refused(load(tmp_path / "p.jpg"), "JPEG with 10 scans", "(9)", "not decoded")


def test_fill_bytes_before_a_scan_marker_do_not_hide_the_scan():
    # mutant: the fill byte case (`i -= 1`) dropped: 0xFF 0xFF 0xDA skipped the SOS after the fill byte
    scan = b"\xff\xff\xda\x00\x02"  # a fill byte, then SOS with an empty header
    data = b"\xff\xd8" + scan * 300 + b"\xff\xd9"
    assert jpeg_scans(data) == 300


# --- decode: orientation -------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_turns_pixels_as_pillow_turns_the_input(orientation):
    # mutants: orientation 5 not transposed; orientation 2 flipped upside down instead of mirrored
    # (orient turns masks read by OpenCV, which must line up with their photo)
    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(im))
    assert np.array_equal(orient(stored, orientation), expected)
    assert np.array_equal(orient(stored[..., 0], orientation), expected[..., 0])  # HxW too


def test_an_orientation_outside_1_to_8_reads_as_upright(tmp_path):
    # mutant: check_header's `1 <= orientation <= 8` dropped (9 returned; orient took it as upright
    # only by luck of its lookup table)
    exif = Image.Exif()
    exif[0x0112] = 9
    Image.fromarray(gradient(20, 30)).save(tmp_path / "m.png", exif=exif.tobytes())
    assert check_header(tmp_path / "m.png", Limits()) == (30, 20, 1)


def test_an_upright_image_records_no_exif_orientation(tmp_path):
    # mutant: `orientation is not None` (orientation 1 recorded as if the image had been turned)
    exif = Image.Exif()
    exif[0x0112] = 1
    Image.fromarray(gradient()).save(tmp_path / "up.png", exif=exif.tobytes())
    sample = load(tmp_path / "up.png")
    assert sample.ok and "exif_orientation" not in sample.params["load"]



@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_an_invalid_exif_orientation_is_neither_applied_nor_recorded(tmp_path, orientation):
    """Fix: decode recorded any Orientation value but 1 in params.load.exif_orientation ("the EXIF
    orientation applied", README), also 0, 9 or 65535, which nothing applies (Pillow leaves the
    pixels as stored, and check_header reads such a mask's as 1)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(gradient()).save(tmp_path / "odd.png", exif=exif.tobytes())
    sample = load(tmp_path / "odd.png")
    assert sample.ok and np.array_equal(sample.image, gradient())
    assert "exif_orientation" not in sample.params["load"]

# --- decode: formats and conversions -------------------------------------------------------------
def test_a_camera_mpo_named_jpg_decodes_without_a_wrong_extension_warning(tmp_path, caplog):
    # mutant: MPO not read as a JPEG when comparing with the extension (every camera MPO warned)
    first = Image.fromarray(gradient())
    first.save(tmp_path / "camera.jpg", format="MPO", save_all=True, append_images=[Image.new("RGB", (64, 48))])
    with caplog.at_level(logging.WARNING, logger="synth"):
        sample = load(tmp_path / "camera.jpg")
    assert sample.ok and sample.params["load"]["format"] == "MPO"
    assert "content is" not in caplog.text


def test_a_large_jpeg_is_decoded_at_a_reduced_dct_scale(tmp_path, monkeypatch):
    # mutant: draft() never asked for (the whole JPEG decoded, then resized: slower, more memory)
    Image.fromarray(gradient(1000, 600)).save(tmp_path / "big.jpg", quality=90)
    asked = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: asked.append(size) or draft(self, mode, size))
    assert load(tmp_path / "big.jpg", max_side=150).image.shape == (150, 90, 3)
    assert asked == [(90, 150)]


def test_resizing_rounds_the_short_side_to_the_nearest_pixel(tmp_path):
    # mutant: `int(w * scale)` (truncated: 90.75 px became 90, the aspect ratio off by a pixel)
    Image.fromarray(gradient(1000, 605)).save(tmp_path / "tall.png")
    sample = load(tmp_path / "tall.png", max_side=150)
    assert sample.image.shape == (150, 91, 3) and sample.params["load"]["resized_to"] == [91, 150]


def test_a_float_tiff_whose_maximum_is_exactly_one_is_white_not_black(tmp_path):
    # mutant: `nanmax < 1.0` (a [0, 1] image that reaches 1.0 read as 0..255: nearly black)
    values = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (48, 1))
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    sample = load(tmp_path / "f.tif")
    assert sample.ok and sample.image[0, -1].tolist() == [255, 255, 255]
    assert sample.image[0, 32].tolist() == [int(32 / 63 * 255 + 0.5)] * 3  # rounded, not truncated


def test_a_32_bit_integer_tiff_is_scaled_like_16_bit(tmp_path):
    # mutant: mode "I" left out of SIXTEEN_BIT_MODES (PIL's convert clipped it: mid-grey became white)
    Image.fromarray(np.full((40, 50), 32896, np.int32)).save(tmp_path / "i32.tif")
    sample = load(tmp_path / "i32.tif")
    assert sample.ok and sample.params["load"]["mode"] == "I" and (sample.image == 128).all()


def test_a_file_of_blanks_is_unrecognised_content_not_text(tmp_path):
    # mutant: `bool(head.strip()) and` dropped (whitespace only called text)
    (tmp_path / "blank.png").write_bytes(b"   \n\n  ")
    assert_refused(load(tmp_path / "blank.png"), "not an image: unrecognised content")


# --- data: the listing ---------------------------------------------------------------------------
def pngs(folder: Path, *names: str) -> Path:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gradient(20, 24)).save(folder / name, format="PNG")
    return folder


def test_the_last_shard_index_is_num_shards_minus_one(tmp_path):
    # mutant: `shard_index > num_shards` (shard_index=num_shards accepted: a job with no inputs)
    pngs(tmp_path, "a.png", "b.png")
    assert list(ImageFolder(str(tmp_path), num_shards=2, shard_index=1).indices()) == [1]
    with pytest.raises(ConfigError, match=r"^data\.shard_index=2: must be in \[0, 1\] for data\.num_shards=2$"):
        ImageFolder(str(tmp_path), num_shards=2, shard_index=2)


@pytest.mark.parametrize("extensions", [[".PNG"], ["png"], ["PNG"]])
def test_data_extensions_match_names_in_any_case_with_or_without_the_dot(tmp_path, extensions):
    # mutants: the configured extension not lower-cased; a bare `png` not given its dot;
    # the file's own extension not lower-cased (Photo.PNG, IMG_1.JPG not listed)
    pngs(tmp_path, "a.png", "B.PNG", "c.Png", "d.jpg")
    assert ImageFolder(str(tmp_path), extensions=extensions).paths == ["B.PNG", "a.png", "c.Png"]


def test_data_limit_0_on_an_empty_folder_is_an_empty_job_not_an_error(tmp_path):
    # mutant: `if not found` (README, exit codes: "no input listed ... data.limit=0 excepted")
    (tmp_path / "notes.txt").write_text("no photos here")
    folder = ImageFolder(str(tmp_path), limit=0)
    assert folder.paths == [] and list(folder.items()) == []
    with pytest.raises(ConfigError, match="no images"):
        _ = ImageFolder(str(tmp_path)).paths


def test_data_limit_keeps_the_first_n_of_the_sorted_listing(tmp_path):
    # mutant: `found[: limit + 1]` (one input more than asked for)
    pngs(tmp_path, "c.png", "a.png", "b.png")
    assert ImageFolder(str(tmp_path), limit=2).paths == ["a.png", "b.png"]
    assert list(ImageFolder(str(tmp_path), limit=2, num_shards=2, shard_index=1).indices()) == [1]


def test_the_listing_is_sorted_by_relative_path_across_folders(tmp_path):
    # mutant: found.sort() dropped (folder walk order: ids would depend on the file system)
    pngs(tmp_path, "b/z.png", "a.png", "b/a.png", "c.png", "a/b.png")
    assert ImageFolder(str(tmp_path)).paths == ["a.png", "a/b.png", "b/a.png", "b/z.png", "c.png"]


def test_recursive_false_lists_only_the_top_folder(tmp_path):
    # mutant: `recursive and` dropped from the walk
    pngs(tmp_path, "top.png", "sub/deep.png")
    assert ImageFolder(str(tmp_path), recursive=False).paths == ["top.png"]
    assert ImageFolder(str(tmp_path)).paths == ["sub/deep.png", "top.png"]


def test_a_skipped_directory_is_never_listed(tmp_path):
    # mutant: the walk's `realpath(directory) in skip` dropped (the run directory inside data.path listed)
    pngs(tmp_path, "a.png", "run/outputs/000000_output.png")
    folder = ImageFolder(str(tmp_path))
    folder.skip(tmp_path / "run")
    assert folder.paths == ["a.png"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symlinks")
def test_a_symlink_loop_is_walked_once(tmp_path):
    # mutant: the (st_dev, st_ino) `seen` check dropped (a link to a parent listed its photos
    # again at every depth until the path was too long)
    pngs(tmp_path, "a/p.png")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    assert ImageFolder(str(tmp_path)).paths == ["a/p.png"]


def test_data_path_itself_may_be_an_earlier_run_directory(tmp_path):
    # mutant: `rel_dir and` dropped (a data.path holding .hydra listed nothing); its sub-folders
    # that are run directories are still left out
    pngs(tmp_path, "outputs/000000_output.png", "older_run/a.png")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "older_run" / ".hydra").mkdir()
    assert ImageFolder(str(tmp_path)).paths == ["outputs/000000_output.png"]


# --- data: ids -----------------------------------------------------------------------------------
@pytest.mark.parametrize("total, width", [(1, 6), (1_000_000, 6), (1_000_001, 7)])
def test_ids_are_zero_padded_to_at_least_6_digits_and_to_the_highest_index(tmp_path, total, width):
    # mutants: width from `total` instead of `total - 1` (a million inputs got 7 digits);
    # `max(5, ...)` (README: at least 6 digits)
    pngs(tmp_path, "a.png")
    folder = ImageFolder(str(tmp_path))
    folder._paths = ["a.png"] * total  # the listing itself is not what is tested here
    assert folder.id_of(0) == "0" * width and len(folder.id_of(total - 1)) == width


def test_a_recorded_source_is_this_input_only_at_a_path_boundary(tmp_path):
    # mutant: `recorded.endswith(listed)` without the separator ("/old/xa.png" taken for "a.png")
    pngs(tmp_path, "a.png")
    folder = ImageFolder(str(tmp_path))
    assert folder.made_from(0, "a.png") and folder.made_from(0, str(Path("/elsewhere") / "a.png"))
    assert not folder.made_from(0, str(Path("/elsewhere") / "xa.png")) and not folder.made_from(0, None)


def test_worker_processes_get_the_source_without_its_listing(tmp_path):
    # mutant: __getstate__ keeps `_paths` (every input's path pickled to every worker process)
    pngs(tmp_path, "a.png", "b.png")
    folder = ImageFolder(str(tmp_path))
    assert folder.total == 2
    copy = pickle.loads(pickle.dumps(folder))
    assert copy._paths is None and copy.limits == folder.limits
    assert copy.load(folder.item(1), seed=0).ok  # what a worker does with it


def test_an_input_that_cannot_be_stat_ed_is_pinned_with_size_minus_1(tmp_path):
    # mutant: size 0 for an unreadable input (an empty file and a missing one looked alike)
    pngs(tmp_path, "a.png", "b.png")
    folder = ImageFolder(str(tmp_path))
    assert folder.total == 2
    (tmp_path / "b.png").unlink()
    entries = list(folder.entries())
    assert entries[0][:3] == (0, "000000", "a.png") and entries[0][3] == (tmp_path / "a.png").stat().st_size
    assert entries[1] == (1, "000001", "b.png", -1, 0)



def test_a_csv_row_naming_a_folder_or_nothing_pins_no_size_or_mtime(tmp_path):
    """Fix: entries() pinned an empty CSV cell (the CSV's folder) or a row naming a folder with the
    folder's size and mtime. The sample fails at load either way, but any file added to that folder
    later changed its mtime: the resume was refused, exit 2, `data.path:  (id 000001) changed since
    this run directory's first run`. A path that is not a file is pinned as one that cannot be read."""
    pngs(tmp_path, "a.png", "sub/b.png")
    (tmp_path / "t.csv").write_text("image_path,note\na.png,x\n,empty\nsub,a folder\n")
    entries = list(CsvSource(path=str(tmp_path / "t.csv")).entries())
    assert entries[0][3] == (tmp_path / "a.png").stat().st_size
    assert entries[1:] == [(1, "000001", "", -1, 0), (2, "000002", "sub", -1, 0)]

# --- data: what load puts on the sample ----------------------------------------------------------
def test_load_records_the_decode_info_and_keeps_the_alpha(tmp_path):
    # mutants: params["load"] not set; the decoded alpha dropped (segmentation=alpha had none)
    rgba = np.dstack([gradient(), np.full((48, 64), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    sample = load(tmp_path / "a.png")
    assert sample.params["load"] == {"format": "PNG", "mode": "RGBA", "width": 64, "height": 48}
    assert sample.alpha is not None and (sample.alpha == 200).all()


def test_a_wrong_extension_is_a_warning_not_a_debug_line(tmp_path, caplog):
    # mutant: decoded.warnings logged at debug level (nobody sees a PNG named .jpg)
    Image.fromarray(gradient()).save(tmp_path / "really_png.jpg", format="PNG")
    with caplog.at_level(logging.DEBUG, logger="synth"):
        load(tmp_path / "really_png.jpg")
    assert [r.levelno for r in caplog.records if "content is PNG" in r.getMessage()] == [logging.WARNING]


# --- data: CSV in, CSV out -----------------------------------------------------------------------
def csv_rows(path: Path) -> list[list[str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_paths_are_stripped_and_home_expanded(tmp_path, monkeypatch):
    # mutants: `.strip()` dropped (" a.png" a missing file); expanduser dropped ("~/b.png" taken
    # as a folder named ~ beside the CSV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    pngs(tmp_path, "a.png", "home/b.png")
    (tmp_path / "t.csv").write_text("image_path,note\n a.png ,x\n~/b.png,y\n")
    source = CsvSource(path=str(tmp_path / "t.csv"))
    items = list(source.items())
    assert [Path(it.path) for it in items] == [tmp_path / "a.png", tmp_path / "home" / "b.png"]
    assert all(source.load(it, seed=0).ok for it in items)


def test_csv_outputs_hold_this_shards_rows_padded_to_the_header(tmp_path):
    # mutants: every row written by every shard; a short row not padded (its output landed in
    # another column, or the row was cut short)
    (tmp_path / "t.csv").write_text("image_path,note,extra\n0.png,a,x\n1.png\n2.png,c,z\n3.png,d\n")
    source = CsvSource(path=str(tmp_path / "t.csv"), num_shards=2, shard_index=1)
    out = source.write_outputs(tmp_path, lambda index: f"out{index}.png")
    assert csv_rows(out) == [["image_path", "note", "extra", "output_image_path"],
                             ["1.png", "", "", "out1.png"], ["3.png", "d", "", "out3.png"]]


def test_an_existing_output_column_is_filled_not_repeated(tmp_path):
    # mutant: output_image_path appended even when the CSV has one (a CSV out fed back in got two)
    (tmp_path / "t.csv").write_text("image_path,output_image_path,note\n0.png,old.png,a\n1.png,,b\n")
    out = CsvSource(path=str(tmp_path / "t.csv")).write_outputs(tmp_path, lambda index: None if index else "new.png")
    assert csv_rows(out) == [["image_path", "output_image_path", "note"], ["0.png", "new.png", "a"], ["1.png", "", "b"]]


def test_csv_outputs_stop_at_data_limit(tmp_path):
    # mutant: write_outputs without `islice(..., limit)` (rows the job never read written too)
    (tmp_path / "t.csv").write_text("image_path\n0.png\n1.png\n2.png\n")
    source = CsvSource(path=str(tmp_path / "t.csv"), limit=2)
    assert source.total == 2
    out = source.write_outputs(tmp_path, lambda index: f"out{index}.png")
    assert csv_rows(out) == [["image_path", "output_image_path"], ["0.png", "out0.png"], ["1.png", "out1.png"]]


# --- loggers: W&B (in process: wandb.init replaced by a recording fake run) ----------------------
class Run:
    """What WandbLogger uses of a wandb Run, recorded."""

    def __init__(self, **init):
        self.init, self.logged, self.summary, self.exit_code = init, [], {}, None
        self.dir = str(Path(init.get("dir") or ".") / "wandb" / "offline-run-x" / "files")

    def log(self, data, step=None):
        self.logged.append((data, step))

    def finish(self, exit_code=None):
        self.exit_code = exit_code


@pytest.fixture
def fake_init(monkeypatch):
    """wandb.init records its arguments and returns a Run; ``fake_init.fail`` raises for the modes it names."""
    import wandb

    calls: list[Run] = []

    def init(**kwargs):
        if kwargs["mode"] in init.fail:
            raise RuntimeError(f"{kwargs['mode']} init failed on purpose")
        calls.append(Run(**kwargs))
        return calls[-1]

    init.fail, init.calls = (), calls
    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    return init


def finished(index: int, caption: str | None = "remove the shadow"):
    from tests.conftest import make_sample, soft_disc_mask

    sample = make_sample(index=index, size=64)
    sample.mask = soft_disc_mask(64, 64)
    sample.composite, sample.caption = sample.image, caption
    sample.timings_ms = {"segmentation": 10.0 * (index + 1)}
    return sample


def started(tmp_path, config=None, **settings):
    from synth.loggers import WandbLogger

    logger = WandbLogger(mode="offline", **{"image_size": 32, **settings})
    logger.start(config or {}, str(tmp_path / "run"))
    return logger


@pytest.mark.parametrize("env, mode", [("disabled", "disabled"), ("dryrun", "offline"), ("run", "online")])
def test_logger_mode_null_reads_wandb_mode_and_its_old_spellings(monkeypatch, env, mode):
    # mutants: $WANDB_MODE ignored; the aliases dryrun/run not mapped (refused as unknown modes)
    from synth.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", env)
    assert WandbLogger().mode == mode
    assert WandbLogger(mode="offline").mode == "offline"  # logger.mode wins


def test_a_bad_wandb_mode_in_the_environment_is_named_as_such(monkeypatch):
    """Fix: with logger.mode unset, a value of $WANDB_MODE that synth does not take (a typo, or
    wandb's newer `shared`) was refused as `logger.mode=shared`, a key the user never set."""
    from synth.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "shared")
    with pytest.raises(ConfigError, match=r"^WANDB_MODE=shared \(logger\.mode=null\): choose from online, offline, "
                                          r"disabled$"):
        WandbLogger()
    with pytest.raises(ConfigError, match=r"^logger\.mode=sometimes: choose from"):
        WandbLogger(mode="sometimes")


@pytest.mark.parametrize("key, value, message", [
    ("project", "team/synth", r"^logger\.project=team/synth: W&B project names cannot contain"),
    ("tags", ["ok", ""], r"^logger\.tags=\['ok', ''\]: a tag or a list of tags, each 1 to 64 characters$"),
    ("image_size", 8, r"^logger\.image_size=8: "),
])
def test_logger_settings_w_and_b_would_refuse_are_refused_up_front(key, value, message):
    # mutants: the project's forbidden characters not checked; an empty tag accepted; image_size min 1
    from synth.loggers import WandbLogger

    with pytest.raises(ConfigError, match=message):
        WandbLogger(**{key: value})


def test_numbers_given_as_logger_text_become_text():
    # mutant: check_text without its number case (logger.name=123 refused)
    from synth.loggers import WandbLogger

    logger = WandbLogger(name=123, group=2.5, tags=7)
    kwargs = logger.init_kwargs
    assert kwargs["name"] == "123" and kwargs["group"] == "2.5" and kwargs["tags"] == ["7"]


def test_max_images_0_logs_no_images_and_asks_workers_for_none(tmp_path, fake_init):
    # mutants: max_images min 1 (0 refused); image_indices ignoring max_images=0 (workers sent every
    # logged-index image back for nothing)
    logger = started(tmp_path, max_images=0)
    indices = logger.image_indices()
    assert not any(indices(i) for i in range(10))
    logger.log_sample(finished(0), 1)
    assert logger.rows == [] and fake_init.calls[0].logged == []


def test_the_shard_count_comes_from_data_num_shards(tmp_path, fake_init):
    # mutant: num_shards not read at start (shard 3 of 4 with log_every_n=4 logged nothing)
    logger = started(tmp_path, {"data": {"num_shards": 4}}, log_every_n=4)
    assert logger.image_indices()(7) is False and logger.image_indices()(19) is True
    assert [i for i in range(3, 40, 4) if logger.image_indices()(i)] == [3, 19, 35]


def test_logger_dir_beats_wandb_dir_which_beats_the_run_dir(tmp_path, fake_init, monkeypatch):
    # mutant: $WANDB_DIR preferred to an explicit logger.dir
    started(tmp_path)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "env"))
    started(tmp_path)
    started(tmp_path, dir=str(tmp_path / "mine"))
    assert [c.init["dir"] for c in fake_init.calls] == [str(tmp_path / "run"), str(tmp_path / "env"),
                                                        str(tmp_path / "mine")]


def test_an_offline_init_failure_is_raised_an_online_one_retried_offline(tmp_path, fake_init, monkeypatch, capsys):
    # mutant: the `mode != "online": raise` dropped (an offline failure reported as an online one and
    # retried as the same offline init)
    from synth.loggers import WandbLogger

    fake_init.fail = ("offline",)
    with pytest.raises(RuntimeError, match="offline init failed"):
        started(tmp_path)
    assert "online init failed" not in capsys.readouterr().out  # not retried, not mislabelled
    fake_init.fail = ("online",)
    monkeypatch.setattr("synth.loggers._has_credentials", lambda wandb: True)
    logger = WandbLogger(mode="online")
    logger.start({}, str(tmp_path / "run"))
    assert logger.mode_used == "offline" and [c.init["mode"] for c in fake_init.calls] == ["offline"]
    assert "W&B online init failed (RuntimeError" in capsys.readouterr().out


def test_failure_rows_stop_at_1000(tmp_path, fake_init):
    # mutant: the MAX_FAILURE_ROWS bound dropped (the job's memory grew with its failures)
    from synth.loggers import MAX_FAILURE_ROWS

    logger = started(tmp_path)
    for index in range(MAX_FAILURE_ROWS + 5):
        sample = finished(index)
        sample.fail("load", "bad")
        logger.log_sample(sample, index)
    assert len(logger.failures) == MAX_FAILURE_ROWS == 1000


def test_image_rows_never_go_back_a_step(tmp_path, fake_init):
    # mutant: `self.step = step` (W&B drops a row whose step is below one already logged)
    logger = started(tmp_path)
    logger.log_metrics({"done": 1}, 5)
    logger.log_sample(finished(0), 3)  # samples complete out of order
    logger.log_sample(finished(1), 7)
    assert [step for _, step in fake_init.calls[0].logged] == [5, 5, 7]


def test_mean_ms_per_stage_and_the_final_summary(tmp_path, fake_init, capsys):
    # mutants: ms/<stage> the sum, not the mean; exit_code left out of the summary;
    # records_count not counted; the run finished as a success whatever the job's exit code;
    # the failures table not logged; no `wandb sync` hint for an offline run
    import wandb

    logger = started(tmp_path)
    logger.log_sample(finished(0), 1)
    logger.log_sample(finished(1), 2)
    failed = finished(2)
    failed.fail("shadow", "boom")
    logger.log_sample(failed, 3)
    logger.log_metrics({"done": 2}, 3)
    run = fake_init.calls[0]
    assert run.logged[-1][0] == {"perf/done": 2, "ms/segmentation": 15.0}
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / "samples.jsonl").write_text("{}\n{}\n{}\n")
    logger.finish({"run_dir": str(tmp_path / "run"), "done": 2, "failed": 1, "exit_code": 1,
                   "stage_ms": {"segmentation": {"median": 12.5}}}, exit_code=1)
    assert run.exit_code == 1
    assert run.summary["exit_code"] == 1 and run.summary["records_count"] == 3
    assert run.summary["ms_median/segmentation"] == 12.5
    tables = {key: value for data, _ in run.logged for key, value in data.items() if isinstance(value, wandb.Table)}
    assert sorted(tables) == ["failures", "samples"]
    assert tables["failures"].data == [["000002", failed.source, "shadow", "boom"]]
    assert f"upload it with: wandb sync {Path(run.dir).parent}" in capsys.readouterr().out


def test_image_size_null_logs_full_size(tmp_path, fake_init):
    # mutant: images always shrunk (README: logger.image_size=null is full size)
    from tests.conftest import soft_disc_mask

    logger = started(tmp_path, image_size=None)
    sample = finished(0)
    sample.image = sample.composite = np.repeat(np.repeat(sample.image, 10, axis=0), 10, axis=1)  # 640 px
    sample.mask = soft_disc_mask(640, 640)
    logger.log_sample(sample, 1)
    images, _ = fake_init.calls[0].logged[0]
    assert images["stage_3_5/composite"].image.size == (640, 640)


def test_the_overlay_counts_a_half_covered_pixel_as_subject(tmp_path, fake_init):
    # mutant: `small_mask > 0.5` (the overlay disagreed with the writers' 0.5 threshold)
    logger = started(tmp_path)
    sample = finished(0)
    sample.mask = np.full((64, 64), 0.5, np.float32)
    logger.log_sample(sample, 1)
    images, _ = fake_init.calls[0].logged[0]
    overlay = images["stage_1/input"]._masks["subject"]
    assert overlay._val["mask_data"].min() == 1


def test_the_samples_table_has_every_rows_columns(tmp_path):
    # mutant: columns from the first row only (a parameter only later samples drew was lost)
    import wandb

    from synth.loggers import samples_table

    table = samples_table(wandb, [{"id": "0", "a": 1}, {"id": "1", "b": 2}])
    assert table.columns == ["id", "a", "b"] and table.data == [["0", 1, None], ["1", None, 2]]


def test_a_caption_is_escaped_in_its_html_panel(tmp_path, fake_init):
    # mutant: html.escape dropped (a caption with <script> ran in the dashboard)
    logger = started(tmp_path)
    logger.log_sample(finished(0, caption="<script>alert(1)</script> & co"), 1)
    images, _ = fake_init.calls[0].logged[0]
    html = Path(images["stage_4/caption"]._path).read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html


@pytest.fixture
def multirun_job():
    """A Hydra multirun job of the default sweep directory, as HydraConfig shows it to the logger."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    with initialize_config_module(config_module="synth.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["seed=1", "logger.mode=offline"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = "outputs/multirun/2026-11-26/09-00-02"
    HydraConfig.instance().set_config(cfg)
    yield cfg
    HydraConfig.instance().cfg = None


def test_a_multirun_job_is_named_by_its_overrides_and_grouped_by_its_sweep(tmp_path, fake_init, multirun_job):
    # mutants: the group not taken from Hydra; the sweep dir's last part only ("09-00-02", shared by
    # sweeps of other days); logger overrides kept in the name
    started(tmp_path)
    init = fake_init.calls[0].init
    assert init["group"] == "2026-11-26/09-00-02" and init["name"] == "seed=1"
    assert init["config"]["overrides"] == ["seed=1", "logger.mode=offline"]
