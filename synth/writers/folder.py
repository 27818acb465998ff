"""The reference layout in the run directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from synth.errors import ConfigError
from synth.files import atomic_write, atomic_write_json, link_or_copy, to_json
from synth.imaging import check_png_encoder
from synth.params import setting, switch
from synth.sample import Sample
from synth.writers.encoded import EncodedImages

FORMATS = ("png", "webp", "jpg")

# Where each image goes: its key in the per-sample record -> its path in the run directory,
# without the extension. ``outputs/`` links the stage files it shares (the reference's layout).
STAGE_FILES = {
    "original": "outputs/{id}_input",
    "mask": "stage_1/{id}_mask",
    "foreground": "stage_1/{id}_foreground",
    "background": "stage_1/{id}_background",
    "albedo": "stage_2/{id}_albedo",
    "shading": "stage_2/{id}_shading",
    "residual": "stage_2/{id}_residual",
    "degraded_foreground": "stage_3/{id}_degraded",
    "shadow_matte": "stage_3/{id}_shadow_matte",
    "composite_image": "stage_3_5/{id}_composite",
}
OUTPUT_LINKS = {
    "composite_image": "outputs/{id}_output",
    "degraded_foreground": "outputs/{id}_degraded_fg",
    "albedo": "outputs/{id}_albedo",
    "foreground": "outputs/{id}_foreground",
    "background": "outputs/{id}_background",
}
TRAINING_FILES = {  # intermediates=False
    "original": "outputs/{id}_input",
    "mask": "outputs/{id}_mask",
    "composite_image": "outputs/{id}_output",
}
PARAMS_FILE = "stage_3/{id}_params.json"
METADATA_FILE = "outputs/{id}_metadata.json"


def check_image_settings(format: str, png_compress_level: int, quality: int, png_encoder: str = "auto") -> str:
    """Validate the image settings every writer shares (messages name ``writer.<key>``); return
    the PNG encoder to use (``check_png_encoder``)."""
    if format not in FORMATS:
        raise ConfigError(f"writer.format={format}: choose from {', '.join(FORMATS)}")
    setting("writer.png_compress_level", png_compress_level, 0, 9, integer=True)
    setting("writer.quality", quality, 1, 100, integer=True)
    return check_png_encoder("writer.png_encoder", png_encoder)


class FolderWriter:
    """The reference layout in the run directory (see README, "Outputs").

    Each image is encoded once; the ``outputs/`` copies of stage files are hard links.
    ``{id}_metadata.json`` is written last and records every other file with its size, so a
    sample is complete when its metadata parses and names files that are all there (``has``).
    ``intermediates=False`` writes only ``outputs/``: input, output (the composite), mask and
    metadata.
    """

    def __init__(self, format: str = "png", png_compress_level: int = 1, quality: int = 95,
                 intermediates: bool = True, png_encoder: str = "auto"):
        self.png_encoder = check_image_settings(format, png_compress_level, quality, png_encoder)
        self.format, self.png_compress_level, self.quality = format, int(png_compress_level), int(quality)
        self.intermediates = switch("writer.intermediates", intermediates)
        self.root: Path | None = None

    def open(self, run_dir: Path, **_: Any) -> None:
        self.root = Path(run_dir)

    def _path(self, name: str, sample_id: str) -> Path:
        """A layout entry (``STAGE_FILES`` etc.) as a path; image entries get the format's extension."""
        return self.root / (name.format(id=sample_id) + ("" if name.endswith(".json") else f".{self.format}"))

    def metadata_path(self, sample_id: str) -> Path:
        return self._path(METADATA_FILE, sample_id)

    def is_complete(self, sample_id: str) -> bool:
        """``{id}_metadata.json`` parses and every file it names is there, at its recorded size."""
        try:
            record = json.loads(self.metadata_path(sample_id).read_bytes())
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and record.get("image_id") == sample_id and self.has(record)

    def has(self, record: dict[str, Any]) -> bool:
        """Whether the sample of ``record`` (a line of samples.jsonl) is on disk complete: every
        file in its ``files``, ``{id}_metadata.json`` included, has its recorded size. One stat
        per file, nothing read or encoded; safe to call from worker threads (or, pickled, processes)."""
        files = record.get("files")
        sample_id = record.get("image_id")
        if not isinstance(files, list) or not isinstance(sample_id, str):
            return False
        # plain strings and a plain loop: resume calls this for every record
        root, metadata, listed = f"{self.root}{os.sep}", METADATA_FILE.format(id=sample_id), False
        try:
            for f in files:
                path = f["path"]
                if os.stat(root + path).st_size != f["bytes"]:
                    return False
                listed = listed or path == metadata
        except (OSError, ValueError, TypeError, KeyError):
            return False
        return listed

    def output_path(self, sample_id: str, suffix: str) -> Path:
        """The composite's link ``outputs/{id}_output{suffix}``; ``suffix`` is the one in the sample's
        record (a resume with another ``writer.format`` keeps the earlier samples' files)."""
        return self.root / (OUTPUT_LINKS["composite_image"].format(id=sample_id) + suffix)

    def write(self, sample: Sample, images: EncodedImages | None = None) -> dict[str, Any]:
        """Write every file of one finished sample; return its metadata record. On any error the
        sample's files are removed again: a sample is on disk complete or not at all."""
        try:
            return self._write_files(sample, images)
        except BaseException:
            self.discard(sample.id)
            raise

    def discard(self, sample_id: str) -> None:
        """Remove every file this writer may have written for ``sample_id`` (metadata first, so
        that the sample never looks complete while its files go), in every format: an earlier run
        may have written another ``writer.format``."""
        names = [METADATA_FILE, *STAGE_FILES.values(), *OUTPUT_LINKS.values(), *TRAINING_FILES.values(), PARAMS_FILE]
        for name in dict.fromkeys(names):
            path = self._path(name, sample_id)
            for suffix in dict.fromkeys([path.suffix] + ([] if name.endswith(".json") else [f".{f}" for f in FORMATS])):
                try:
                    path.with_suffix(suffix).unlink(missing_ok=True)
                except OSError:  # e.g. the path runs through a file: nothing was written there
                    pass

    def _write_files(self, sample: Sample, images: EncodedImages | None) -> dict[str, Any]:
        sid = sample.id
        images = images or EncodedImages(sample)
        files: dict[str, str] = {}  # record key -> path relative to the run directory
        sizes: dict[str, int] = {}  # every file written -> its size in bytes
        written, links = (STAGE_FILES, OUTPUT_LINKS) if self.intermediates else (TRAINING_FILES, {})
        for key, name in written.items():
            data = images.get(key, self.format, self.png_compress_level, self.quality, self.png_encoder)
            if data is not None:
                path = self._path(name, sid)
                atomic_write(path, data)
                files[key] = path.relative_to(self.root).as_posix()
                sizes[files[key]] = len(data)
        for key, name in links.items():
            if key in files:
                link = self._path(name, sid)
                link_or_copy(self.root / files[key], link)
                sizes[link.relative_to(self.root).as_posix()] = sizes[files[key]]
        if self.intermediates and "shadow" in sample.params:
            params = self._path(PARAMS_FILE, sid)
            atomic_write_json(params, sample.params["shadow"])
            sizes[params.relative_to(self.root).as_posix()] = params.stat().st_size

        record = sample_record(sample, files)
        # Every file with its size, what makes the sample complete: a list of {path, bytes} (not a
        # dict keyed by path, so that tables get two columns). It lists this metadata file too, at
        # the size of the text that holds that very number: found in two or three tries, since
        # only the number's digit count can change it. Resume then needs stats only.
        record["files"] = [{"path": path, "bytes": size} for path, size in sizes.items()]
        record = json.loads(metadata_bytes(record))  # plain JSON types, as stored
        own = {"path": self.metadata_path(sid).relative_to(self.root).as_posix(), "bytes": 0}
        record["files"].append(own)
        while own["bytes"] != (size := len(metadata_bytes(record))):
            own["bytes"] = size
        atomic_write_json(self.metadata_path(sid), record)  # last, as metadata_bytes(record)
        return record

    def close(self) -> None:
        pass


def sample_record(sample: Sample, files: dict[str, str]) -> dict[str, Any]:
    """Per-sample metadata: the reference's keys first, then ours."""
    h, w = sample.image.shape[:2] if sample.image is not None else (None, None)
    return {
        "image_id": sample.id,
        "original": files.get("original"),
        "foreground": files.get("foreground"),
        "background": files.get("background"),
        "albedo": files.get("albedo"),
        "degraded_foreground": files.get("degraded_foreground"),
        "composite_image": files.get("composite_image"),
        "degradation_type": sample.degradation_type,
        "degradation_metadata": sample.params.get("shadow", {}),
        "index": sample.index,
        "source": sample.source,
        "seed": sample.seed,
        "width": w,
        "height": h,
        "mask": files.get("mask"),
        "shadow_matte": files.get("shadow_matte"),
        "caption": sample.caption,
        "params": sample.params,
        "timings_ms": sample.timings_ms,
    }


def metadata_bytes(record: dict[str, Any]) -> bytes:
    """``{id}_metadata.json`` as written: its size is checkable from the record alone."""
    return (to_json(record) + "\n").encode()  # as atomic_write_json writes it
