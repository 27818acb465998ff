"""Sources: which images a job processes, with global ids and deterministic sharding."""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from synth.decode import Limits, decode
from synth.errors import ConfigError, SampleError
from synth.faults import printable
from synth.files import atomic_write
from synth.params import setting
from synth.sample import Sample

log = logging.getLogger("synth")
SAMPLES_DIR = Path(__file__).parent / "samples"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Item:
    """One input before decoding: its global index, id and path."""

    index: int
    id: str
    path: str


class ImageFolder:
    """Every image under ``path`` (recursively by default), sorted by relative path.

    ``{id}`` is the zero-padded position in that sorted list, the same in every shard:
    shard ``shard_index`` of ``num_shards`` takes the items whose index ``% num_shards`` equals
    ``shard_index``. Ids are positions, not names, so names with spaces or non-ASCII
    characters and equal stems in different sub-folders never collide in the outputs.

    ``min_side``, ``max_side`` and ``max_pixels`` are the input limits (see synth.decode).
    """

    def __init__(self, path: str | None = None, recursive: bool = True,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, num_shards: int = 1, shard_index: int = 0,
                 limit: int | None = None, min_side: int = 16, max_side: int | None = 4096,
                 max_pixels: int | None = 100_000_000):
        if not path:
            raise ConfigError("data.path: required with data=folder, e.g. data.path=/data/photos")
        self.root = Path(path).expanduser()
        if not self.root.is_dir():
            raise ConfigError(f"data.path={path}: not a directory")
        num_shards = setting("data.num_shards", num_shards, 1, integer=True)
        shard_index = setting("data.shard_index", shard_index, 0, integer=True)
        if shard_index >= num_shards:
            raise ConfigError(f"data.shard_index={shard_index}: must be in [0, {num_shards - 1}] for data.num_shards={num_shards}")
        limit = setting("data.limit", limit, 0, integer=True, optional=True)
        self.extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        self.recursive, self.num_shards, self.shard_index, self.limit = recursive, num_shards, shard_index, limit
        self.limits = Limits(min_side=min_side, max_side=max_side, max_pixels=max_pixels)  # validates
        self._paths: list[Path] | None = None

    @property
    def paths(self) -> list[Path]:
        """All input paths (every shard), sorted; ``limit`` keeps the first N."""
        if self._paths is None:
            pattern = "**/*" if self.recursive else "*"
            found = [p for p in self.root.glob(pattern) if p.suffix.lower() in self.extensions and p.is_file()]
            found.sort(key=lambda p: p.relative_to(self.root).as_posix())
            self._paths = found[: self.limit] if self.limit is not None else found
        return self._paths

    def items(self) -> list[Item]:
        """This shard's items, in order."""
        width = max(6, len(str(max(len(self.paths) - 1, 0))))
        return [Item(i, f"{i:0{width}d}", str(p)) for i, p in enumerate(self.paths)
                if i % self.num_shards == self.shard_index]

    def load(self, item: Item, seed: int) -> Sample:
        """Decode one item into a fresh Sample (runs in a worker thread).

        A file that cannot be used fails this sample only, with a one-line reason."""
        sample = Sample(index=item.index, id=item.id, source=item.path, seed=seed)
        try:
            decoded = decode(item.path, self.limits)
        except SampleError as err:
            sample.fail("load", str(err))
            return sample
        except Exception as err:  # noqa: BLE001 - anything else the decoder hits fails this sample only
            sample.fail("load", f"cannot decode: {type(err).__name__}: {err}")
            return sample
        sample.image, sample.alpha = decoded.rgb, decoded.alpha
        sample.params["load"] = decoded.info  # source format, size, orientation, resize: in the metadata
        for note in decoded.notes:
            log.debug("%s (%s): %s", item.id, printable(item.path), note)
        for warning in decoded.warnings:
            log.warning("%s (%s): %s", item.id, printable(item.path), warning)
        return sample


class CsvSource(ImageFolder):
    """``data=csv``: the images listed in one column of a CSV file (the reference's workflow).

    Ids are row positions in file order (the header excluded); relative paths are relative
    to the CSV file's folder. At the end of the job, ``<stem>_with_outputs.csv`` in the run
    directory holds this shard's rows with ``output_image_path`` added: the composite
    (``outputs/{id}_output.<ext>`` of the folder writer), empty where a sample failed.
    """

    OUTPUT_COLUMN = "output_image_path"

    def __init__(self, path: str | None = None, column: str = "image_path", num_shards: int = 1,
                 shard_index: int = 0, limit: int | None = None, **limits):
        if not path:
            raise ConfigError("data.path: required with data=csv, e.g. data.path=/data/images.csv")
        self.csv_path = Path(path).expanduser()
        if not self.csv_path.is_file():
            raise ConfigError(f"data.path={path}: not a file")
        with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            self.fieldnames = list(reader.fieldnames or [])
            if column not in self.fieldnames:
                raise ConfigError(f"data.column={column}: not a column of {path} "
                                  f"(columns: {', '.join(self.fieldnames) or 'none'})")
            self.rows = list(reader)
        super().__init__(path=str(self.csv_path.parent), num_shards=num_shards, shard_index=shard_index,
                         limit=limit, **limits)
        self.column = column

    @property
    def paths(self) -> list[Path]:
        """Every row's path (every shard), in file order; ``limit`` keeps the first N rows."""
        if self._paths is None:
            rows = self.rows if self.limit is None else self.rows[: self.limit]
            self._paths = [self.root / os.path.expanduser((row.get(self.column) or "").strip()) for row in rows]
        return self._paths

    def write_outputs(self, run_dir: Path, outputs: dict[str, Path | None]) -> Path:
        """Write ``<stem>_with_outputs.csv``: this shard's rows, each with its output path."""
        fields = self.fieldnames + [self.OUTPUT_COLUMN] * (self.OUTPUT_COLUMN not in self.fieldnames)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for item in self.items():
            output = outputs.get(item.id)
            writer.writerow({**self.rows[item.index], self.OUTPUT_COLUMN: os.path.abspath(output) if output else ""})
        target = Path(run_dir) / f"{self.csv_path.stem}_with_outputs.csv"
        atomic_write(target, text.getvalue().encode())
        return target


def bundled_samples(**kwargs) -> ImageFolder:
    """The small photos shipped with the package (see synth/samples/LICENSE.md)."""
    return ImageFolder(path=str(SAMPLES_DIR), **kwargs)
