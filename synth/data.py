"""Sources: which images a job processes, with global ids and deterministic sharding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from synth.errors import ConfigError, SampleError
from synth.imaging import open_rgb
from synth.sample import Sample

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
    ``shard_index``.
    """

    def __init__(self, path: str | None = None, recursive: bool = True,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, num_shards: int = 1, shard_index: int = 0,
                 limit: int | None = None):
        if not path:
            raise ConfigError("data.path: required with data=folder, e.g. data.path=/data/photos")
        self.root = Path(path).expanduser()
        if not self.root.is_dir():
            raise ConfigError(f"data.path={path}: not a directory")
        if int(num_shards) < 1:
            raise ConfigError(f"data.num_shards={num_shards}: must be >= 1")
        if not 0 <= int(shard_index) < int(num_shards):
            raise ConfigError(f"data.shard_index={shard_index}: must be in [0, {int(num_shards) - 1}] for data.num_shards={num_shards}")
        if limit is not None and int(limit) < 0:
            raise ConfigError(f"data.limit={limit}: must be >= 0 or null")
        self.extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        self.recursive, self.num_shards, self.shard_index = recursive, int(num_shards), int(shard_index)
        self.limit = None if limit is None else int(limit)
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

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items())

    def __len__(self) -> int:
        return len(self.items())

    def load(self, item: Item, seed: int) -> Sample:
        """Decode one item into a fresh Sample (runs in a worker thread)."""
        sample = Sample(index=item.index, id=item.id, source=item.path, seed=seed)
        try:
            sample.image = open_rgb(item.path)
        except Exception as err:  # noqa: BLE001 - any decoder failure fails this sample only
            sample.fail("load", SampleError(f"cannot read {item.path}: {err}"))
        return sample


def bundled_samples(**kwargs) -> ImageFolder:
    """The small photos shipped with the package (see synth/samples/LICENSE.md)."""
    return ImageFolder(path=str(SAMPLES_DIR), **kwargs)
