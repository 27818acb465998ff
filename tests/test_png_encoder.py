"""``writer.png_encoder=auto|fpng|cv2``: fpng for RGB/RGBA, OpenCV for the rest, same pixels.

Jobs run in-process (compose_config + build_runner) on two bundled photos with every writer and
every stage image, once per encoder; fpng-written PNGs are recognised by fpng's private ``fdEC``
chunk, so the tests also prove that ``auto`` really used it.
"""

from __future__ import annotations

import io
import logging
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import synth.imaging as imaging
from synth.app import build_runner, build_writers
from synth.errors import ConfigError
from synth.imaging import encode, png_encoder_for, to_uint8, with_alpha
from synth.writers.folder import FolderWriter
from tests.conftest import compose_config, make_sample, soft_disc_mask

JOB = ("data.limit=2", "data.max_side=160", "logger=none", "num_workers=2", "writers=[webdataset,hf]",
       "writers.webdataset.intermediates=true")


def by_fpng(data: bytes) -> bool:
    """fpng marks its files with a private ancillary chunk right after IHDR."""
    return data[:8] == b"\x89PNG\r\n\x1a\n" and b"fdEC" in data[:64]


def pixels(data: bytes) -> np.ndarray:
    """Decoded by Pillow, checked against OpenCV's decode of the same bytes (RGB(A) order)."""
    pil = np.asarray(Image.open(io.BytesIO(data)))
    ocv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if ocv.ndim == 3:
        ocv = cv2.cvtColor(ocv, cv2.COLOR_BGR2RGB if ocv.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    assert np.array_equal(pil, ocv)
    return pil


def images_of(run_dir: Path) -> dict[str, bytes]:
    """Every image the job wrote: folder files by relative path, tar members by name."""
    found = {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*.png")}
    for shard in sorted((run_dir / "webdataset").glob("*.tar")):
        with tarfile.open(shard) as tar:
            found.update({f"{shard.name}/{m.name}": tar.extractfile(m).read()
                          for m in tar.getmembers() if m.name.endswith(".png")})
    return found


def run_job(run_dir: Path, *overrides: str) -> dict[str, bytes]:
    summary = build_runner(compose_config(*JOB, *overrides), run_dir).run()
    assert summary["done"] == 2 and summary["failed"] == 0
    return images_of(run_dir)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("png_encoder")
    runs = {"cv2": root / "cv2", "auto": root / "auto", "auto_again": root / "auto_again"}
    for name, run_dir in runs.items():
        encoder = name.split("_")[0]
        run_job(run_dir, f"writer.png_encoder={encoder}", f"writers.webdataset.png_encoder={encoder}",
                f"writers.hf.png_encoder={encoder}")
    return runs


def test_every_stage_image_has_the_same_pixels_whichever_encoder(jobs):
    cv2_images, auto_images = images_of(jobs["cv2"]), images_of(jobs["auto"])
    assert set(cv2_images) == set(auto_images)
    names = {name.rsplit("_", 1)[-1] for name in auto_images} | {name.rsplit("/", 1)[-1] for name in auto_images}
    assert {"input.png", "output.png", "mask.png", "matte.png", "foreground.png", "degraded.png",
            "000000.mask.png", "000001.edited_image.png"} <= names  # every kind of stage image is here
    grey = 0
    for name, data in auto_images.items():
        decoded = pixels(data)
        assert np.array_equal(decoded, pixels(cv2_images[name])), name
        assert not by_fpng(cv2_images[name]), name
        if decoded.ndim == 2:  # masks and mattes: still OpenCV, identical bytes
            assert data == cv2_images[name], name
            grey += 1
        else:  # RGB and RGBA: fpng
            assert by_fpng(data), name
    assert grey >= 2 * 3  # stage_1 mask, shadow matte, tar mask per sample


def test_the_hf_dataset_decodes_to_the_same_pixels_whichever_encoder(jobs):
    import datasets

    def rows(run_dir: Path) -> list[dict]:
        return list(datasets.load_dataset(str(run_dir / "hf"), split="train"))

    cv2_rows, auto_rows = rows(jobs["cv2"]), rows(jobs["auto"])
    assert len(cv2_rows) == len(auto_rows) == 2
    for a, b in zip(cv2_rows, auto_rows):
        for column in ("input_image", "edited_image", "mask"):
            assert np.array_equal(np.asarray(a[column]), np.asarray(b[column])), column
        assert a["input_image"].mode == "RGB" and a["mask"].mode == "L"


def test_reruns_with_auto_are_byte_identical(jobs):
    first, again = images_of(jobs["auto"]), images_of(jobs["auto_again"])
    assert first == again
    for name in ("webdataset/shard-0000-000000.tar", "hf/data/train-0000-000000.parquet"):
        assert (jobs["auto"] / name).read_bytes() == (jobs["auto_again"] / name).read_bytes(), name


def test_masks_grey_and_high_levels_stay_with_opencv(monkeypatch):
    calls = []
    real = imaging._import_fpng()[0].from_ndarray
    monkeypatch.setattr(imaging._import_fpng()[0], "from_ndarray", lambda a: calls.append(a.shape) or real(a))
    sample = make_sample(size=64)
    mask = to_uint8(soft_disc_mask(64, 64))
    rgba = with_alpha(sample.image, soft_disc_mask(64, 64))

    for grey in (mask, mask[..., None], sample.image.astype(np.uint16) * 257):  # fpng: 8-bit RGB(A) only
        assert png_encoder_for(grey, "auto") == png_encoder_for(grey, "fpng") == "cv2"
        assert encode(grey, "png", 1, 95, "auto") == encode(grey, "png", 1, 95, "cv2")
    assert calls == []
    assert by_fpng(encode(sample.image)) and by_fpng(encode(rgba, "png", 0, 95, "auto"))
    assert calls == [(64, 64, 3), (64, 64, 4)]
    # png_compress_level 2-9 asks for smaller files than fpng makes: auto leaves it to OpenCV
    assert not by_fpng(encode(sample.image, "png", 6, 95, "auto"))
    assert by_fpng(encode(sample.image, "png", 6, 95, "fpng"))
    assert np.array_equal(pixels(encode(rgba, "png", 1, 95, "auto")), rgba)  # channel order kept


def test_with_alpha_takes_the_mask_as_float_or_as_to_uint8_made_it():
    """The writers convert a sample's mask to uint8 once and pass that to every layer."""
    sample = make_sample(size=64)
    mask = soft_disc_mask(64, 64)
    rgba = with_alpha(sample.image, mask)
    assert np.array_equal(with_alpha(sample.image, to_uint8(mask)), rgba)
    assert np.array_equal(rgba[..., 3], to_uint8(mask)) and np.array_equal(rgba[..., :3][mask > 0.002], sample.image[mask > 0.002])


def test_rgba_layers_keep_zeroed_colour_under_alpha_0():
    """fpng stores what with_alpha made: invisible pixels stay (0, 0, 0, 0), so they stay cheap."""
    sample = make_sample(size=96)
    alpha = soft_disc_mask(96, 96)
    rgba = with_alpha(sample.image, alpha)
    decoded = pixels(encode(rgba, "png", 1, 95, "fpng"))
    assert np.array_equal(decoded, rgba)
    assert (decoded[alpha == 0] == 0).all() and (alpha == 0).any()


@pytest.fixture
def no_fpng(monkeypatch):
    """fpng made unimportable (as when its wheel is missing), with the module's caches reset."""
    monkeypatch.setitem(sys.modules, "fpng", None)  # `import fpng` now raises ImportError
    imaging._import_fpng.cache_clear()
    imaging._fpng_or_warn.cache_clear()
    yield
    imaging._import_fpng.cache_clear()
    imaging._fpng_or_warn.cache_clear()


def test_without_fpng_auto_warns_once_and_writes_the_same_files(no_fpng, tmp_path, caplog):
    sample = make_sample(size=64)
    sample.mask = soft_disc_mask(64, 64)
    sample.foreground = sample.composite = sample.image
    with caplog.at_level(logging.WARNING, logger="synth"):
        writers = [FolderWriter(png_encoder="auto"), FolderWriter(png_encoder="auto")]
        for i, writer in enumerate(writers):
            writer.open(tmp_path / f"run{i}")
            writer.write(sample)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "fpng cannot be imported" in warnings[0] and "\n" not in warnings[0]
    assert [w.png_encoder for w in writers] == ["cv2", "cv2"]  # resolved once: worker processes never retry
    for name in ("stage_1/000000_foreground.png", "outputs/000000_input.png", "stage_1/000000_mask.png"):
        data = (tmp_path / "run0" / name).read_bytes()
        assert not by_fpng(data)
        assert data == (tmp_path / "run1" / name).read_bytes()
    assert np.array_equal(pixels((tmp_path / "run0/outputs/000000_input.png").read_bytes()), sample.image)
    assert np.array_equal(pixels((tmp_path / "run0/stage_1/000000_foreground.png").read_bytes()),
                          with_alpha(sample.image, sample.mask))


def test_explicit_fpng_without_fpng_is_a_config_error_naming_the_key(no_fpng):
    with pytest.raises(ConfigError, match=r"^writer\.png_encoder=fpng: the fpng package cannot be imported"):
        build_writers(compose_config("writer.png_encoder=fpng"))
    with pytest.raises(ConfigError, match=r"^writers\.hf\.png_encoder=fpng"):
        build_writers(compose_config("writers=[hf]", "writers.hf.png_encoder=fpng"))


@pytest.mark.parametrize("override, key", [("writer.png_encoder=png", "writer.png_encoder"),
                                           ("writers.webdataset.png_encoder=FPNG", "writers.webdataset.png_encoder")])
def test_unknown_encoders_are_config_errors(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}=\w+: choose from auto, fpng, cv2$"):
        build_writers(compose_config("writers=[webdataset]", override))


def test_the_wandb_logger_follows_writer_png_encoder():
    from synth.app import build

    assert build(compose_config("logger=wandb", "writer.png_encoder=cv2"), "logger").png_encoder == "cv2"
    assert build(compose_config("logger=wandb"), "logger").png_encoder == "auto"
    with pytest.raises(ConfigError, match=r"^logger\.png_encoder=x: choose from"):
        build(compose_config("logger=wandb", "logger.png_encoder=x"), "logger")
