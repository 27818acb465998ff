"""Sources: which images a job processes, with global ids and deterministic sharding."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from synth.decode import Limits, decode, formats_for
from synth.errors import ConfigError, SampleError
from synth.faults import printable
from synth.files import atomic_write
from synth.params import setting, switch
from synth.rundir import marks_run_dir
from synth.sample import Sample
from synth.schedule import ordered_map

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
        recursive = switch("data.recursive", recursive)
        if isinstance(extensions, str):  # data.extensions=.png: that one extension, not its characters
            extensions = [extensions]
        if not isinstance(extensions, (list, tuple)) or not all(isinstance(e, str) and e for e in extensions):
            raise ConfigError(f"data.extensions={extensions}: a list of file extensions, e.g. "
                              f"data.extensions=[.jpg,.png]")
        self.extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        self.recursive, self.num_shards, self.shard_index, self.limit = recursive, num_shards, shard_index, limit
        self.limits = Limits(min_side=min_side, max_side=max_side, max_pixels=max_pixels,  # validates
                             formats=formats_for(self.extensions))  # a file opens only as a format it may have
        self.skip_dirs: set[str] = set()  # the run directory: never listed as input (see skip())
        self.skip_endings: tuple[str, ...] = ()  # masks beside the photos (see skip_names_ending())
        self._paths: list[str] | None = None
        self._id_width: int | None = None

    def skip(self, directory: str | Path) -> None:
        """Never list ``directory`` (the job's run directory) as input, even inside ``path``.
        Call before the listing is first used."""
        self.skip_dirs.add(os.path.realpath(directory))

    def skip_names_ending(self, ending: str) -> None:
        """Never list a file whose name ends with ``ending`` (``_mask.png``: the masks that
        ``segmentation=mask_folder`` finds beside the photos). Call before the listing is used."""
        self.skip_endings += (ending,)

    @property
    def paths(self) -> list[str]:
        """Every input (every shard), sorted, as compact strings relative to ``root``; ``limit``
        keeps the first N. One string per input is all a job holds per input."""
        if self._paths is None:
            where = f"data.path={printable(str(self.root))}"
            if os.path.realpath(self.root) in self.skip_dirs:  # every photo would be skipped as an output
                raise ConfigError(f"{where}: is the run directory (hydra.run.dir): its photos would be "
                                  f"skipped as the job's outputs; choose another hydra.run.dir")
            found = _list_images(self.root, self.extensions, self.recursive, self.skip_dirs, self.skip_endings)
            if not found and self.limit != 0:
                raise ConfigError(f"{where}: no images (data.extensions: {', '.join(self.extensions)}"
                                  f"{'' if self.recursive else '; data.recursive=false'})")
            self._paths = found[: self.limit] if self.limit is not None else found
        return self._paths

    @property
    def total(self) -> int:
        """Inputs in the listing, all shards."""
        return len(self.paths)

    def indices(self) -> range:
        """This shard's global indices, in order (no per-item objects for other shards)."""
        return range(self.shard_index, self.total, self.num_shards)

    def __getstate__(self) -> dict:
        """Worker processes get the source only to decode items (``load``): the listing, which
        grows with the input, stays in the main process."""
        return {**self.__dict__, "_paths": None}

    def id_of(self, index: int) -> str:
        if self._id_width is None:  # zero-padded to at least 6 digits, the same for every id of the listing
            self._id_width = max(6, len(str(max(self.total - 1, 0))))
        return f"{index:0{self._id_width}d}"

    def item(self, index: int) -> Item:
        return Item(index, self.id_of(index), str(self.root / self.paths[index]))

    def made_from(self, index: int, recorded: Any) -> bool:
        """Whether ``recorded``, the ``source`` an earlier run wrote for id ``index``, is this
        listing's input ``index``: the path as listed, under any spelling of data.path."""
        listed = str(Path(self.paths[index]))
        return isinstance(recorded, str) and (recorded == listed or recorded.endswith(os.sep + listed))

    def items(self) -> Iterator[Item]:
        """This shard's items, in order, built one at a time."""
        return (self.item(i) for i in self.indices())

    def entries(self) -> Iterator[tuple[int, str, str, int, int]]:
        """This shard's ``(index, id, path as listed, size, mtime_ns)``: what the run directory's
        manifest pins (one stat per input of this shard, -1 where it cannot be read; in 16
        threads, a bounded window of blocks ahead: network file systems answer slowly)."""
        root, paths = str(self.root), self.paths

        def stat_block(block: range) -> list[tuple[int, int, int]]:
            out = []
            for index in block:
                try:
                    st = os.stat(os.path.join(root, paths[index]))
                    if not stat.S_ISREG(st.st_mode):  # a folder (an empty data=csv cell: the CSV's own),
                        raise IsADirectoryError  # whose mtime moves with its files: no input to pin
                    out.append((index, st.st_size, st.st_mtime_ns))
                except (OSError, ValueError):  # ValueError: a NUL byte in a data=csv path
                    out.append((index, -1, 0))
            return out

        shard, step = self.indices(), 1024
        blocks = (shard[start:start + step] for start in range(0, len(shard), step))
        with ThreadPoolExecutor(16, thread_name_prefix="stat") as pool:
            for stats in ordered_map(pool, stat_block, blocks, 65):
                for index, size, mtime in stats:
                    yield index, self.id_of(index), paths[index], size, mtime

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
        self.column = column
        with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            with self._csv_errors(reader.reader):
                self.fieldnames = list(reader.fieldnames or [])
            if column not in self.fieldnames:
                raise ConfigError(f"data.column={column}: not a column of {path} "
                                  f"(columns: {', '.join(self.fieldnames) or 'none'})")
        super().__init__(path=str(self.csv_path.parent), num_shards=num_shards, shard_index=shard_index,
                         limit=limit, **limits)

    def _rows(self) -> Iterator[list[str]]:
        """The CSV's data rows as lists of cells, streamed (read again when needed, never all held):
        the header and blank lines left out, so that ``paths`` (the ids) and ``write_outputs``
        count the same rows."""
        with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            with self._csv_errors(reader):
                next(reader, None)  # the header
                yield from (row for row in reader if row)

    @property
    def paths(self) -> list[str]:
        """Every row's path as written (every shard), in file order; ``limit`` keeps the first N rows.
        Relative paths are relative to the CSV's folder (``root``)."""
        if self._paths is None:
            column = self.fieldnames.index(self.column)
            self._paths = [os.path.expanduser(row[column].strip()) if len(row) > column else ""
                           for row in itertools.islice(self._rows(), self.limit)]
            if not self._paths and self.limit != 0:
                raise ConfigError(f"data.path={printable(str(self.csv_path))}: no rows below the header")
        return self._paths

    @contextlib.contextmanager
    def _csv_errors(self, reader: Any) -> Iterator[None]:
        """A row the csv module refuses (a field over its 128 KiB limit): one ConfigError naming
        the file and line, not a traceback."""
        try:
            yield
        except csv.Error as err:
            raise ConfigError(f"data.path={printable(str(self.csv_path))}: line {reader.line_num}: {err}") from None

    def write_outputs(self, run_dir: Path, output_of: Callable[[int], str | None]) -> Path:
        """Write ``<stem>_with_outputs.csv``: this shard's rows (streamed), each with the output
        path ``output_of(index)`` returns (empty for None). Cells are copied by position, so
        columns that share a name keep their own values; a short row is padded with empty cells."""
        fields = self.fieldnames + [self.OUTPUT_COLUMN] * (self.OUTPUT_COLUMN not in self.fieldnames)
        at = fields.index(self.OUTPUT_COLUMN)
        target = Path(run_dir) / f"{self.csv_path.stem}_with_outputs.csv"

        def lines() -> Iterator[bytes]:
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(fields)
            for index, row in enumerate(itertools.islice(self._rows(), self.limit)):
                if index % self.num_shards == self.shard_index:
                    cells = (row + [""] * len(fields))[:len(fields)]
                    cells[at] = output_of(index) or ""
                    writer.writerow(cells)
                if text.tell() > 1 << 16:
                    yield text.getvalue().encode()
                    text.seek(0)
                    text.truncate()
            yield text.getvalue().encode()

        atomic_write(target, lines())
        return target


def _list_images(root: Path, extensions: tuple[str, ...], recursive: bool, skip: set[str],
                 skip_endings: tuple[str, ...] = ()) -> list[str]:
    """Relative posix paths of the image files under ``root``, sorted. Skipped: the folders
    ``skip``, the files whose names end with one of ``skip_endings``, and any synth run directory
    (see ``marks_run_dir``: Hydra's outputs/ inside ``data.path`` must not feed a job its own outputs). A path the system cannot open (longer
    than PATH_MAX, unreadable) is skipped with one warning, not fatal."""
    found: list[str] = []
    unreadable: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [("", str(root))]
    while stack:
        rel_dir, directory = stack.pop()
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen or os.path.realpath(directory) in skip:
                continue  # a symlink loop, or the run directory
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError as err:
            unreadable.append(f"{directory} ({err.strerror or err})")
            continue
        if rel_dir and any(marks_run_dir(e.name) for e in entries):
            continue  # a run directory: synth's own outputs
        for entry in entries:
            rel = f"{rel_dir}{entry.name}"
            try:
                if entry.is_file():
                    if (os.path.splitext(entry.name)[1].lower() in extensions
                            and not (skip_endings and entry.name.endswith(skip_endings))):
                        found.append(rel)
                elif recursive and entry.is_dir():
                    stack.append((rel + "/", entry.path))
            except OSError as err:  # e.g. ENAMETOOLONG where the file system needs a stat
                unreadable.append(f"{entry.path} ({err.strerror or err})")
    if unreadable:
        log.warning("data.path: skipped %d paths that cannot be read (first: %s)", len(unreadable),
                    printable(unreadable[0]))
    found.sort()
    return found


def bundled_samples(**kwargs) -> ImageFolder:
    """The small photos shipped with the package (see synth/samples/LICENSE.md)."""
    return ImageFolder(path=str(SAMPLES_DIR), **kwargs)
