"""Issue 16, inputs and masks: crafted files are refused cheaply with one line, masks come only
from the mask folder and must mark a subject, and no printed path can forge a log line."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from synth.data import SAMPLES_DIR
from synth.decode import MAX_JPEG_SCANS, Limits, decode, formats_for, jpeg_scans
from synth.errors import SampleError
from synth.faults import printable
from synth.sample import Sample
from synth.stages.models.base import ModelSegmentation
from synth.stages.segmentation import AlphaMask, GrabCut, MaskFolder, set_mask
from tests.conftest import built_stage, make_sample, run_synth
from tests.test_robustness_inputs import assert_refused, gradient, load, png_header_only


# --- formats: an allow-list, whatever the extension (item 12) ------------------------------------
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 48\n%%EndComments\n"
       b"0 0 moveto 64 48 lineto stroke\nshowpage\n%%EOF\n")


def test_eps_named_png_never_reaches_the_eps_plugin(tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(self))
    (tmp_path / "vector.png").write_bytes(EPS)
    assert_refused(load(tmp_path / "vector.png"), "not an image", "allowed formats: JPEG, PNG")
    assert not opened  # Ghostscript (run by the plugin's load) is out of reach


def test_allowed_formats_are_those_of_the_extensions(tmp_path):
    Image.fromarray(gradient()).save(tmp_path / "photo.png", format="JPEG")  # JPEG named .png
    assert load(tmp_path / "photo.png").ok  # both are default extensions: decoded by content
    assert formats_for([".png", "TIF", ".jpeg", ".jpg", ".eps"]) == ("PNG", "TIFF", "JPEG")
    with pytest.raises(SampleError, match=r"allowed formats: PNG\)"):
        decode(tmp_path / "photo.png", Limits(formats=formats_for([".png"])))


def test_data_extensions_set_the_allowed_formats(tmp_path):
    """A GIF is refused by default and decoded once `.gif` is among data.extensions."""
    from synth.data import ImageFolder
    Image.fromarray(gradient()).convert("P").save(tmp_path / "anim.gif")
    default = ImageFolder(path=str(tmp_path), extensions=[".gif", ".png"][1:])
    assert "GIF" not in default.limits.formats
    with_gif = ImageFolder(path=str(tmp_path), extensions=[".gif"])
    assert with_gif.limits.formats == ("GIF",)
    item = with_gif.item(0)
    assert with_gif.load(item, 0).ok
    assert not default.load(item, 0).ok


# --- progressive JPEG with thousands of scans (item 10) ------------------------------------------
def segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment of a JPEG written by Pillow (scans include their data)."""
    out, i = [], 2
    while True:
        marker = data[i + 1]
        if marker == 0xD9:
            return out + [(marker, i, i + 2)]
        end = i + 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
        out.append((marker, i, end))
        i = end


def progressive_jpeg(repeats: int = 0) -> bytes:
    """A small progressive JPEG whose smallest scan is repeated ``repeats`` more times (the shape
    of the crafted files that take minutes to decode)."""
    buf = io.BytesIO()
    Image.fromarray(gradient(64, 64)).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    segs = segments(data)
    _, start, end = min((s for s in segs if s[0] == 0xDA), key=lambda s: s[2] - s[1])
    eoi = segs[-1][1]
    return data[:eoi] + data[start:end] * repeats + data[eoi:]


def test_jpeg_with_thousands_of_scans_is_refused_undecoded(tmp_path, monkeypatch):
    (tmp_path / "scans.jpg").write_bytes(progressive_jpeg(repeats=3000))
    (tmp_path / "normal.jpg").write_bytes(progressive_jpeg())
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self))
    assert_refused(load(tmp_path / "scans.jpg"), "3010 scans", f"({MAX_JPEG_SCANS})", "not decoded")
    assert not decoded
    monkeypatch.undo()
    assert load(tmp_path / "normal.jpg").ok


def test_scan_marker_bytes_inside_metadata_are_not_counted(tmp_path):
    data = progressive_jpeg()
    comment = b"\xff\xda" * (MAX_JPEG_SCANS + 10)  # the SOS marker's bytes inside a COM segment
    data = data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]
    assert jpeg_scans(data) == 10
    (tmp_path / "commented.jpg").write_bytes(data)
    assert load(tmp_path / "commented.jpg").ok


# --- masks: header checks and where they may come from (items 2, 11) ----------------------------
def photo_and_mask_folders(tmp_path: Path, monkeypatch, mask: np.ndarray | None = None) -> tuple[Sample, MaskFolder]:
    """photos/a.png and masks/ beside it, the job started from work/ with relative paths
    (data.path=../photos segmentation.path=../masks)."""
    for name in ("photos", "masks", "work"):
        (tmp_path / name).mkdir()
    Image.fromarray(gradient(40, 60)).save(tmp_path / "photos" / "a.png")
    if mask is not None:
        cv2.imwrite(str(tmp_path / "masks" / "a.png"), mask)
    monkeypatch.chdir(tmp_path / "work")
    sample = Sample(index=0, id="000000", source="../photos/a.png", seed=0)
    sample.image = gradient(40, 60)
    return sample, MaskFolder(path="../masks")


def test_mask_lookup_never_leaves_the_mask_folder(tmp_path, monkeypatch):
    sample, stage = photo_and_mask_folders(tmp_path, monkeypatch)
    # ../masks/../photos/a.png is the photo itself: it must not become its own mask
    with pytest.raises(SampleError, match=r"no mask \.\./masks/a\.png"):
        stage.process([sample])
    half = np.zeros((40, 60), np.uint8)
    half[:, 30:] = 255
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), half)
    stage.process([sample])
    assert sample.mask[:, :28].max() == 0 and sample.mask[:, 32:].min() == 1


def test_mask_files_get_the_inputs_header_checks(tmp_path, monkeypatch):
    sample, _ = photo_and_mask_folders(tmp_path, monkeypatch)
    (tmp_path / "masks" / "a.png").write_bytes(png_header_only(36_000, 27_000))  # ~1 GB of pixels in 100 bytes
    stage = built_stage("segmentation", "segmentation=mask_folder", f"segmentation.path={tmp_path / 'masks'}",
                        "data.max_pixels=500000")
    assert stage.limits.max_pixels == 500_000  # data.max_pixels by default
    read = []
    monkeypatch.setattr(cv2, "imread", lambda *args: read.append(args))
    with pytest.raises(SampleError, match="36000x27000 = 972000000 pixels exceeds data.max_pixels=500000"):
        stage.process([sample])
    (tmp_path / "masks" / "a.png").write_bytes(EPS)
    with pytest.raises(SampleError, match="is not a readable image: not an image"):
        stage.process([sample])
    assert not read  # OpenCV never decoded either


# --- (almost) empty masks fail the sample, for every method (item 3) -----------------------------
def test_grabcut_on_a_uniform_image_fails_instead_of_an_empty_mask():
    sample = make_sample(size=64)
    sample.image[:] = 128
    with pytest.raises(SampleError, match="grabcut's mask marks no subject: it covers 0.000% of the frame"):
        GrabCut().process([sample])


def test_empty_and_speck_masks_fail_for_mask_folder_and_alpha(tmp_path, monkeypatch):
    empty = np.zeros((40, 60), np.uint8)
    sample, stage = photo_and_mask_folders(tmp_path, monkeypatch, empty)
    with pytest.raises(SampleError, match=r"mask \.\./masks/a\.png marks no subject"):
        stage.process([sample])
    speck = empty.copy()
    speck[20, 30] = 255  # 1 pixel of 2400: 0.04%
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), speck)
    with pytest.raises(SampleError, match="marks no subject: it covers 0.042% of the frame"):
        stage.process([sample])
    sample.alpha = speck  # not uniform, so the old check passed it
    with pytest.raises(SampleError, match="the alpha channel marks no subject"):
        AlphaMask().process([sample])
    full = np.full((40, 60), 255, np.uint8)  # a subject filling the frame is a subject
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), full)
    stage.process([sample])
    assert sample.mask.min() == 1.0


class SpeckSegmentation(ModelSegmentation):
    """A model stage without a model: 'detects' one pixel (what a weak detector may return)."""

    method = "speck"

    def load(self) -> None:
        pass

    def infer(self, chunk):
        return [None for _ in chunk]

    def apply(self, sample: Sample, result) -> None:
        mask = np.zeros(sample.image.shape[:2], np.uint8)
        mask[5, 5] = 255
        self.finish(sample, mask, "speck found nothing")


def test_model_segmentation_refuses_a_speck_or_falls_back():
    """Code path, not quality: no model is involved."""
    sample = make_sample(size=64)
    SpeckSegmentation(device="cpu").process([sample])
    assert not sample.ok and "speck's mask marks no subject" in sample.error
    sample = make_sample(size=64)
    stage = SpeckSegmentation(device="cpu", fallback={"_target_": "synth.stages.segmentation.GrabCut"})
    stage.process([sample])
    assert sample.ok and sample.params["segmentation"]["fallback_reason"].startswith("speck's mask marks no subject")


@pytest.mark.parametrize("shadow", ["soft_shading", "mix"])
def test_full_frame_mask_with_shading(shadow):
    """soft_shading inflates the mask into a dome; a mask without background crashed OpenCV."""
    sample = make_sample(size=64)
    set_mask(sample, np.ones((64, 64), np.float32))
    sample.albedo = sample.image.copy()
    built_stage("shadow", f"shadow={shadow}").process([sample])
    assert sample.ok and sample.degraded is not None


# --- log forgery (item 13) -----------------------------------------------------------------------
def test_printable_escapes_control_characters():
    assert printable("a\nERROR forged\r\x1b[2J\x00\u2028\u202e.png") == "a\\nERROR forged\\r\\x1b[2J\\x00\\u2028\\u202e.png"
    assert printable("caf\udce9 été.jpg") == "caf\\udce9 été.jpg"  # non-UTF-8 bytes, as before


def test_a_file_name_with_a_newline_forges_no_log_line(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    shutil.copy(SAMPLES_DIR / "astronaut.jpg", data)
    (data / "x\n[2026-01-01 00:00:00,000][synth][INFO] - all good.png").write_bytes(b"")  # fails: empty
    run_dir = tmp_path / "run"
    proc = run_synth(run_dir, "data=folder", f"data.path={data}", "max_failure_rate=1", check=False)
    for text in (proc.stdout, proc.stderr, (run_dir / "app.log").read_text() if (run_dir / "app.log").exists() else ""):
        assert not any(line.startswith("[2026-01-01") for line in text.splitlines()), text
    assert "x\\n[2026-01-01" in proc.stderr + proc.stdout


def test_a_closed_stdout_does_not_fail_a_finished_job(tmp_path):
    """``python -m synth ... | head -0``: the summary cannot be printed, the job still succeeded."""
    data = tmp_path / "in"
    data.mkdir()
    shutil.copy(SAMPLES_DIR / "astronaut.jpg", data)
    cmd = [sys.executable, "-m", "synth", f"hydra.run.dir={tmp_path / 'run'}", "data=folder", f"data.path={data}",
           "logger=none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    proc.stdout.close()  # the reader is gone before anything is written
    stderr = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, stderr
    assert json.loads((tmp_path / "run" / "metadata.json").read_text())["done"] == 1
