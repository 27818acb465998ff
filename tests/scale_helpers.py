"""Helpers for the scale tests: small inputs, and comparing run directories file by file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2

from tests.conftest import sample_paths

RESULT_DIRS = ("stage_1", "stage_2", "stage_3", "stage_3_5", "outputs")


def make_inputs(folder: Path, count: int, width: int = 96) -> Path:
    """``count`` JPEGs made from the bundled photos at ``width`` px (cycled, slightly varied)."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = sample_paths()
    for i in range(count):
        image = cv2.imread(str(photos[i % len(photos)]))
        h, w = image.shape[:2]
        image = cv2.resize(image, (width, max(16, round(h * width / w))), interpolation=cv2.INTER_AREA)
        if i >= len(photos):
            image = cv2.flip(image, 1)  # not byte-identical to an earlier input
        cv2.imwrite(str(folder / f"img_{i:03d}.jpg"), image)
    return folder


def result_files(*run_dirs: Path) -> dict[str, Path]:
    """Every per-sample file of one or more run directories (the union of shards), by relative path."""
    files: dict[str, Path] = {}
    for run_dir in run_dirs:
        for sub in RESULT_DIRS:
            for path in sorted((run_dir / sub).glob("*")):
                if path.is_file() and not path.name.startswith("."):
                    rel = path.relative_to(run_dir).as_posix()
                    assert rel not in files, f"{rel} written by two jobs"
                    files[rel] = path
    return files


def comparable(path: Path) -> object:
    """A file's content for comparison: bytes, or JSON without the wall-clock timings (nor the
    size of the per-sample metadata file itself, which the timings' digits change)."""
    if path.suffix == ".json":
        record = json.loads(path.read_text())
        record.pop("timings_ms", None)
        if isinstance(record.get("files"), list):
            record["files"] = [f for f in record["files"] if not str(f.get("path", "")).endswith("_metadata.json")]
        return record
    return path.read_bytes()


def assert_same_results(actual: dict[str, Path], expected: dict[str, Path]) -> None:
    assert sorted(actual) == sorted(expected)
    different = [rel for rel in expected if comparable(actual[rel]) != comparable(expected[rel])]
    assert not different, f"differ from the reference run: {different}"
