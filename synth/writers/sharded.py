"""What the dataset writers (tar shards, parquet shards) share: file names, resume, order.

Shard files are named ``{prefix}-{shard_index:04d}-{seq:06d}{suffix}``, where ``shard_index``
is the job's ``data.shard_index``: jobs of one sweep can write into one folder without
colliding. A shard is written under a hidden temporary name and renamed when complete, so
readers (and resume) only ever see complete shards.

``write`` runs in worker threads and only encodes (through the shared ``EncodedImages``);
``commit`` runs on the runner's thread in input order and appends, so a job's shards have
the same content and order every time.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

from synth.sample import Sample
from synth.writers.encoded import EncodedImages
from synth.writers.folder import check_image_settings

log = logging.getLogger("synth")


class ShardedWriter:
    """Base class: subclasses set ``default_dir``, ``prefix``, ``suffix`` and implement
    ``_row(sample, images)`` (worker thread), ``_append(sample, row)`` and ``_finish_shard()``,
    and ``_ids_in(path)`` (the sample ids a complete shard holds)."""

    default_dir = "dataset"  # under the run directory when ``path`` is null
    subdir = ""  # where the shards go inside it
    prefix = "shard"
    suffix = ""

    def __init__(self, path: str | None = None, format: str = "png", png_compress_level: int = 1,
                 quality: int = 95, png_encoder: str = "auto"):
        check_image_settings(format, png_compress_level, quality, png_encoder)
        self.path = path
        self.format, self.png_compress_level, self.quality = format, int(png_compress_level), int(quality)
        self.png_encoder = png_encoder
        self.root: Path | None = None  # the dataset: what a reader opens
        self.dir: Path | None = None  # its shards
        self.shard_index = 0
        self.next_seq = 0
        self.complete: set[str] = set()
        self._pending: dict[str, Any] = {}  # encoded in a worker thread, waiting for commit
        self._lock = threading.Lock()

    # -- names ----------------------------------------------------------------------------------
    def shard_name(self, seq: int) -> str:
        return f"{self.prefix}-{self.shard_index:04d}-{seq:06d}{self.suffix}"

    def temp_path(self, final: Path) -> Path:
        return final.with_name(f".{final.name}.tmp")

    def _own_shards(self) -> dict[int, Path]:
        """This job's complete shards by sequence number."""
        pattern = re.compile(rf"{re.escape(self.prefix)}-{self.shard_index:04d}-(\d{{6}}){re.escape(self.suffix)}")
        found = (pattern.fullmatch(p.name) for p in self.dir.glob(f"{self.prefix}-*{self.suffix}"))
        return {int(m.group(1)): self.dir / m.group(0) for m in found if m}

    # -- the writer interface -------------------------------------------------------------------
    def open(self, run_dir: Path, resume: bool = True, shard_index: int = 0, **_: Any) -> None:
        self.root = Path(self.path).expanduser() if self.path else Path(run_dir) / self.default_dir
        self.dir = self.root / self.subdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard_index = int(shard_index)
        for stale in self.dir.glob(f".{self.prefix}-{self.shard_index:04d}-*.tmp"):
            stale.unlink()  # an earlier job of this shard was killed while writing it
        own = self._own_shards()
        if not resume:
            for shard in own.values():  # start over: this job's earlier shards would duplicate samples
                shard.unlink()
            own = {}
        else:  # every job's shards: ids are global, whatever the sharding of earlier runs
            for shard in sorted(self.dir.glob(f"{self.prefix}-*{self.suffix}")):
                self.complete.update(self._ids_in(shard))
        self.next_seq = max(own, default=-1) + 1

    def is_complete(self, sample_id: str) -> bool:
        return sample_id in self.complete

    def write(self, sample: Sample, images: EncodedImages | None = None) -> None:
        if "." in sample.id:  # webdataset splits a file name into key and field at the first dot
            raise ValueError(f"sample id {sample.id!r} contains a dot")
        row = self._row(sample, images or EncodedImages(sample))
        with self._lock:
            self._pending[sample.id] = row

    def commit(self, sample: Sample) -> None:
        with self._lock:
            row = self._pending.pop(sample.id, None)
        if row is not None and sample.ok:
            self._append(sample, row)

    def close(self, finished: bool = True) -> None:
        """Publish the last shard. A job that stopped early (signal, error) drops its partial
        shard instead: its samples are written again by the rerun, which then fills that shard
        from the same first sample, so the shards split exactly as in an uninterrupted run."""
        if finished:
            self._finish_shard()
        else:
            self._drop_shard()

    # -- helpers for subclasses -----------------------------------------------------------------
    def _image(self, images: EncodedImages, name: str) -> bytes | None:
        return images.get(name, self.format, self.png_compress_level, self.quality, self.png_encoder)

    def _new_shard_paths(self) -> tuple[Path, Path]:
        """(temporary, final) paths of the next shard."""
        final = self.dir / self.shard_name(self.next_seq)
        self.next_seq += 1
        return self.temp_path(final), final

    def _row(self, sample: Sample, images: EncodedImages) -> Any:
        raise NotImplementedError

    def _append(self, sample: Sample, row: Any) -> None:
        raise NotImplementedError

    def _finish_shard(self) -> None:
        raise NotImplementedError

    def _drop_shard(self) -> None:
        raise NotImplementedError

    def _ids_in(self, shard: Path) -> list[str]:
        raise NotImplementedError
