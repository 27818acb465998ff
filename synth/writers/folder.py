"""The reference layout in the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synth.errors import ConfigError
from synth.files import atomic_write, atomic_write_json, link_or_copy
from synth.sample import Sample
from synth.writers.encoded import EncodedImages

FORMATS = ("png", "webp", "jpg")


def check_image_settings(format: str, png_compress_level: int, quality: int) -> None:
    """Validate the image settings every writer shares (messages name ``writer.<key>``)."""
    if format not in FORMATS:
        raise ConfigError(f"writer.format={format}: choose from {', '.join(FORMATS)}")
    if not 0 <= int(png_compress_level) <= 9:
        raise ConfigError(f"writer.png_compress_level={png_compress_level}: must be in 0..9")
    if not 1 <= int(quality) <= 100:
        raise ConfigError(f"writer.quality={quality}: must be in 1..100")


class FolderWriter:
    """The reference layout in the run directory (see README, "Outputs").

    Each image is encoded once; the ``outputs/`` copies of stage files are hard links.
    ``{id}_metadata.json`` is written last, so its presence marks a complete sample.
    ``intermediates=False`` writes only ``outputs/``: input, output (the composite), mask and
    metadata.
    """

    def __init__(self, format: str = "png", png_compress_level: int = 1, quality: int = 95,
                 intermediates: bool = True):
        check_image_settings(format, png_compress_level, quality)
        self.format, self.png_compress_level, self.quality = format, int(png_compress_level), int(quality)
        self.intermediates = bool(intermediates)
        self.root: Path | None = None

    def open(self, run_dir: Path, **_: Any) -> None:
        self.root = Path(run_dir)

    def metadata_path(self, sample_id: str) -> Path:
        return self.root / "outputs" / f"{sample_id}_metadata.json"

    def is_complete(self, sample_id: str) -> bool:
        return self.metadata_path(sample_id).is_file()

    def output_path(self, sample_id: str) -> Path | None:
        """The composite (``outputs/{id}_output.{ext}``) of a complete sample, else None."""
        return self.root / "outputs" / f"{sample_id}_output.{self.format}" if self.is_complete(sample_id) else None

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
        that the sample never looks complete while its files go)."""
        ext = self.format
        names = ["outputs/{id}_metadata.json", "outputs/{id}_input.{ext}", "outputs/{id}_mask.{ext}",
                 "outputs/{id}_output.{ext}", "outputs/{id}_degraded_fg.{ext}", "outputs/{id}_albedo.{ext}",
                 "outputs/{id}_foreground.{ext}", "outputs/{id}_background.{ext}", "stage_1/{id}_mask.{ext}",
                 "stage_1/{id}_foreground.{ext}", "stage_1/{id}_background.{ext}", "stage_2/{id}_albedo.{ext}",
                 "stage_3/{id}_degraded.{ext}", "stage_3/{id}_shadow_matte.{ext}", "stage_3/{id}_params.json",
                 "stage_3_5/{id}_composite.{ext}"]
        for name in names:
            try:
                (self.root / name.format(id=sample_id, ext=ext)).unlink(missing_ok=True)
            except OSError:  # e.g. the path runs through a file: nothing was written there
                pass

    def _write_files(self, sample: Sample, images: EncodedImages | None) -> dict[str, Any]:
        root, sid, ext = self.root, sample.id, self.format
        images = images or EncodedImages(sample)
        files: dict[str, str] = {}

        def put(key: str, rel: str) -> None:
            data = images.get(key, self.format, self.png_compress_level, self.quality)
            if data is not None:
                atomic_write(root / rel, data)
                files[key] = rel

        def alias(key: str, rel: str) -> None:
            if key in files:
                link_or_copy(root / files[key], root / rel)

        put("original", f"outputs/{sid}_input.{ext}")
        if not self.intermediates:
            put("mask", f"outputs/{sid}_mask.{ext}")
            put("composite_image", f"outputs/{sid}_output.{ext}")
        else:
            put("mask", f"stage_1/{sid}_mask.{ext}")
            put("foreground", f"stage_1/{sid}_foreground.{ext}")
            put("background", f"stage_1/{sid}_background.{ext}")
            put("albedo", f"stage_2/{sid}_albedo.{ext}")
            put("degraded_foreground", f"stage_3/{sid}_degraded.{ext}")
            put("shadow_matte", f"stage_3/{sid}_shadow_matte.{ext}")
            put("composite_image", f"stage_3_5/{sid}_composite.{ext}")
            alias("composite_image", f"outputs/{sid}_output.{ext}")
            alias("degraded_foreground", f"outputs/{sid}_degraded_fg.{ext}")
            alias("albedo", f"outputs/{sid}_albedo.{ext}")
            alias("foreground", f"outputs/{sid}_foreground.{ext}")
            alias("background", f"outputs/{sid}_background.{ext}")
            if "shadow" in sample.params:
                atomic_write_json(root / f"stage_3/{sid}_params.json", sample.params["shadow"])

        record = sample_record(sample, files)
        atomic_write_json(self.metadata_path(sid), record)  # last: marks the sample complete
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
