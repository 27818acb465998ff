"""The whole job, as a user runs it: python -m synth in a subprocess."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from synth.imaging import srgb_to_linear
from tests.conftest import read_samples, read_summary, run_synth, sample_paths, soft_disc_mask

REFERENCE_FILES = [
    "stage_1/{id}_foreground.png", "stage_1/{id}_background.png", "stage_1/{id}_mask.png",
    "stage_2/{id}_albedo.png", "stage_3/{id}_degraded.png", "stage_3/{id}_params.json",
    "stage_3_5/{id}_composite.png", "outputs/{id}_input.png", "outputs/{id}_output.png",
    "outputs/{id}_degraded_fg.png", "outputs/{id}_albedo.png", "outputs/{id}_foreground.png",
    "outputs/{id}_background.png", "outputs/{id}_metadata.json",
]
# Keys that switch stage 3's optional effects off, so its attenuation is exactly the opacity.
NEUTRAL: list[str] = ["shadow.color=neutral", "shadow.variation=0", "shadow.blur_growth=1"]
REFERENCE_KEYS = {"image_id", "original", "foreground", "background", "albedo", "degraded_foreground",
                  "composite_image", "degradation_type", "degradation_metadata"}


def rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return image if image.ndim == 2 else cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2RGB)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every output file (not logs, configs or the timing-bearing summaries) by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix == ".png" or p.name.endswith("_params.json")}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("default") / "run"
    proc = run_synth(run_dir)
    return run_dir, proc


def test_default_job_writes_the_reference_layout(default_run):
    run_dir, proc = default_run
    n = len(sample_paths())
    assert 3 <= n <= 6
    for i in range(n):
        for pattern in REFERENCE_FILES:
            assert (run_dir / pattern.format(id=f"{i:06d}")).is_file(), pattern
        record = json.loads((run_dir / f"outputs/{i:06d}_metadata.json").read_text())
        assert REFERENCE_KEYS <= set(record)
        assert record["caption"] and record["degradation_type"] == "hard_shadow"
        assert (run_dir / record["composite_image"]).is_file()
    # outputs/ copies are hard links to the stage files, not second encodes
    assert (run_dir / "outputs/000000_output.png").stat().st_ino == (run_dir / "stage_3_5/000000_composite.png").stat().st_ino
    summary = read_summary(run_dir)
    assert summary["done"] == n and summary["failed"] == 0 and len(read_samples(summary["run_dir"])) == n
    assert f"synth: {n} done, 0 failed" in proc.stdout and str(run_dir) in proc.stdout
    assert "ms per image: segmentation" in proc.stdout


def test_same_seed_is_byte_identical_and_another_seed_differs(default_run, tmp_path):
    run_dir, _ = default_run
    again = tmp_path / "again"
    run_synth(again, "batch_size=3", "num_workers=1")  # other batching must not matter either
    assert tree_bytes(run_dir) == tree_bytes(again)
    other = tmp_path / "other"
    run_synth(other, "seed=1")
    a, b = tree_bytes(run_dir), tree_bytes(other)
    assert a.keys() == b.keys()
    assert a["stage_3_5/000000_composite.png"] != b["stage_3_5/000000_composite.png"]


@pytest.fixture(scope="module")
def disc_masks(tmp_path_factory):
    """Soft-edged disc masks for the bundled photos, so tests know where the subject is."""
    masks = tmp_path_factory.mktemp("masks")
    for path in sample_paths():
        h, w = cv2.imread(str(path)).shape[:2]
        cv2.imwrite(str(masks / f"{path.stem}.png"), (soft_disc_mask(h, w, edge=0.06) * 255 + 0.5).astype(np.uint8))
    return masks


def test_zero_opacity_on_the_foreground_reproduces_the_input(disc_masks, tmp_path):
    run_dir = tmp_path / "run"
    run_synth(run_dir, "segmentation=mask_folder", f"segmentation.path={disc_masks}",
              "shadow.base=foreground", "shadow.opacity=0", "shadow.min_visibility=0")  # nothing to see, on purpose
    for i in range(len(sample_paths())):
        composite = rgb(run_dir / f"stage_3_5/{i:06d}_composite.png").astype(int)
        original = rgb(run_dir / f"outputs/{i:06d}_input.png").astype(int)
        assert np.abs(composite - original).max() <= 1  # soft mask edges included


def test_shadow_darkens_only_the_subject_by_the_recorded_opacity(disc_masks, tmp_path):
    run_dir = tmp_path / "run"
    run_synth(run_dir, "segmentation=mask_folder", f"segmentation.path={disc_masks}",
              "shadow.base=foreground", "shadow.opacity=[0.3,0.5]", "shadow.blur=31",
              "shadow.patterns=venetian_blind", *NEUTRAL)
    for i in range(len(sample_paths())):
        sid = f"{i:06d}"
        params = json.loads((run_dir / f"stage_3/{sid}_params.json").read_text())
        composite = rgb(run_dir / f"stage_3_5/{sid}_composite.png")
        original = rgb(run_dir / f"outputs/{sid}_input.png")
        mask = rgb(run_dir / f"stage_1/{sid}_mask.png")
        matte = rgb(run_dir / f"stage_3/{sid}_shadow_matte.png")
        outside = mask == 0
        assert np.array_equal(composite[outside], original[outside])
        umbra = (mask == 255) & (matte == 255) & (original.min(axis=2) >= 40)
        assert umbra.sum() > 100
        ratio = srgb_to_linear(composite[umbra]) / srgb_to_linear(original[umbra])
        assert np.median(ratio) == pytest.approx(1 - params["opacity"], abs=0.02)
        assert (composite[~outside].astype(int) <= original[~outside].astype(int) + 1).all()


