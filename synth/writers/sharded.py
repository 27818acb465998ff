"""What the dataset writers (tar shards, parquet shards) share: file names, resume, order.

Shard files are named ``{prefix}-{shard_index:04d}-{seq:06d}{suffix}``, where ``shard_index``
is the job's ``data.shard_index``: jobs of one sweep can write into one folder without
colliding. A shard is written under a hidden temporary name that carries the writing process's
id (``.{name}.{pid}.tmp``) and renamed when complete, so readers (and resume) only ever see
complete shards, and ``open`` removes only its own or dead processes' temporary files, never
those of another job writing into the same folder.

A shard that cannot be read on resume (truncated, garbage, a directory of that name) is set aside
as ``{name}.corrupt`` with one warning and its samples are written again. Failures of the output
location (not writable, disk full, removed) are ``OutputError``: the job stops with one line.

``write`` runs in worker threads or processes and only encodes (through the shared
``EncodedImages``) and returns the row; ``commit`` gets that row on the runner's thread in input
order and appends it, so a job's shards have the same content and order every time.
"""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from synth.faults import as_output_error, printable
from synth.errors import ConfigError, OutputError, one_line
from synth.files import atomic_write_json, create_exclusive, to_json
from synth.sample import Sample
from synth.settings import WRITER_PREFIX, first_difference, writer_name
from synth.writers.encoded import EncodedImages
from synth.writers.folder import check_image_settings

log = logging.getLogger("synth")

SETTINGS_FILE = ".synth-settings.json"  # hidden: readers glob shards, and Hugging Face skips dot files


@contextmanager
def output_errors() -> Iterator[None]:
    """OS errors inside as ``OutputError`` (one line, exit 3), the way the runner reports them."""
    try:
        yield
    except OSError as err:
        output_error = as_output_error(err)
        if output_error is None:
            raise
        raise output_error from err


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class ShardedWriter:
    """Base class: subclasses set ``default_dir``, ``prefix``, ``suffix`` and implement
    ``_row(sample, images)`` (in a worker), ``_append(sample, row)`` and ``_finish_shard()``,
    and ``_ids_in(path)`` (the sample ids a complete shard holds)."""

    default_dir = "dataset"  # under the run directory when ``path`` is null
    subdir = ""  # where the shards go inside it
    prefix = "shard"
    suffix = ""

    @property
    def name(self) -> str:
        """The config option (``webdataset``, ``hf``): names its settings and keys in errors."""
        return writer_name(f"{type(self).__module__}.{type(self).__name__}")

    def __init__(self, path: str | None = None, format: str = "png", png_compress_level: int = 1,
                 quality: int = 95, png_encoder: str = "auto"):
        self.png_encoder = check_image_settings(format, png_compress_level, quality, png_encoder)
        self.path = path
        self.format, self.png_compress_level, self.quality = format, int(png_compress_level), int(quality)
        self.root: Path | None = None  # the dataset: what a reader opens
        self.dir: Path | None = None  # its shards
        self.shard_index = 0
        self.next_seq = 0
        self.complete: set[str] = set()

    # -- names ----------------------------------------------------------------------------------
    def shard_name(self, seq: int) -> str:
        return f"{self.prefix}-{self.shard_index:04d}-{seq:06d}{self.suffix}"

    def temp_path(self, final: Path) -> Path:
        return final.with_name(f".{final.name}.{os.getpid()}.tmp")

    @staticmethod
    def final_path(temp: Path) -> Path:
        """The shard that ``temp_path`` is the temporary name of."""
        return temp.with_name(temp.name[1:].rsplit(".", 2)[0])

    def _remove_stale_temps(self) -> None:
        """Temporary shards of this shard index left by a killed job (ours, or a dead process's)."""
        for temp in self.dir.glob(f".{self.prefix}-{self.shard_index:04d}-*.tmp"):
            pid = temp.name.rsplit(".", 2)[-2]
            if not pid.isdigit() or int(pid) == os.getpid() or not process_alive(int(pid)):
                temp.unlink(missing_ok=True)

    def _readable_ids(self, shard: Path) -> dict[str, str | None]:
        """The ids in ``shard``, each with the source it was made from (``_ids_in``); a shard that
        cannot be read is renamed ``*.corrupt`` (no ids)."""
        problem = None if shard.is_file() and not shard.is_symlink() else "not a regular file"
        if problem is None:
            try:
                return self._ids_in(shard)
            except Exception as err:  # noqa: BLE001 - every reader complaint means the same here
                problem = one_line(err) or type(err).__name__
        aside = shard.with_name(shard.name + ".corrupt")
        n = 1
        while aside.exists() or aside.is_symlink():
            aside, n = shard.with_name(f"{shard.name}.corrupt.{n}"), n + 1
        try:
            shard.rename(aside)
        except FileNotFoundError:  # another job sharing writer.path set it aside first
            return {}
        log.warning("%s: cannot be read (%s); set aside as %s, its samples will be written again",
                    printable(str(shard)), printable(problem[:200]), aside.name)
        return {}

    @staticmethod
    def _check_sources(shard: Path, found: dict[str, str | None], source: Any) -> None:
        """Raise ConfigError when an id in ``shard`` was made from another input than the one
        ``source`` (the job's listing) gives it: the folder holds another job's dataset, whose
        samples would count as this job's. Compared: the path as listed (relative to data.path, or
        as the CSV writes it) against the end of the recorded source, so that the same inputs under
        another data.path spelling still match."""
        if not hasattr(source, "made_from"):
            return
        for sample_id, recorded in found.items():
            if recorded is None or not sample_id.isdigit() or int(sample_id) >= source.total:
                continue
            index = int(sample_id)
            if source.id_of(index) != sample_id:
                continue  # another listing's id width: not one of this job's ids
            if not source.made_from(index, recorded):
                raise ConfigError(f"{printable(str(shard))}: sample {sample_id} was made from {printable(recorded)}, "
                                  f"but this job's {sample_id} is {printable(source.paths[index])}: this folder "
                                  f"holds another job's dataset; use another writer.path (writers.NAME.path)")

    def _check_settings(self, settings: dict[str, Any], resume: bool) -> None:
        """Record the settings this folder's samples are made with (``SETTINGS_FILE``), or raise
        ConfigError when it holds samples made with others (named by their first difference):
        always when another shard index's shards are there, unless ``resume=false`` otherwise.
        The first of several jobs starting at once records its settings; the others compare."""
        mine = {key: value for key, value in settings.items()
                if not key.startswith(WRITER_PREFIX) or key.startswith(f"{WRITER_PREFIX}{self.name}.")}
        path = self.dir / SETTINGS_FILE
        for _ in range(2):  # a second pass: another job created the file between our read and link
            try:
                recorded = json.loads(path.read_bytes())
            except FileNotFoundError:
                try:
                    create_exclusive(path, (to_json(mine) + "\n").encode())
                    return
                except FileExistsError:
                    continue
            except (OSError, ValueError):  # unreadable: nothing to compare with
                recorded = {}
            difference = first_difference(recorded, mine) if isinstance(recorded, dict) and recorded else None
            if difference is not None:
                own = set(self._own_shards().values())
                others = any(shard not in own for shard in self.dir.glob(f"{self.prefix}-*{self.suffix}"))
                if resume or others:
                    now, then = difference
                    raise ConfigError(f"{now}: the samples in {printable(str(self.dir))} were made with {then} "
                                      f"({SETTINGS_FILE}) and would be kept beside this job's; use another "
                                      f"writer.path (writers.{self.name}.path)"
                                      + ("" if others else ", or resume=false to start this shard over"))
            if recorded != mine:  # starting over, a writer entry added, or unreadable
                atomic_write_json(path, mine)
            return
        raise OutputError(f"{printable(str(path))}: created and removed by other jobs while this one started; rerun")

    def _own_shards(self) -> dict[int, Path]:
        """This job's complete shards by sequence number."""
        pattern = re.compile(rf"{re.escape(self.prefix)}-{self.shard_index:04d}-(\d{{6}}){re.escape(self.suffix)}")
        found = (pattern.fullmatch(p.name) for p in self.dir.glob(f"{self.prefix}-*{self.suffix}"))
        return {int(m.group(1)): self.dir / m.group(0) for m in found if m}

    # -- the writer interface -------------------------------------------------------------------
    def open(self, run_dir: Path, resume: bool = True, shard_index: int = 0, source: Any = None,
             settings: dict[str, Any] | None = None, **_: Any) -> None:
        """``source`` (the job's listing), on resume: every id in the folder's shards must have been
        made from the input this job lists under it (``_check_sources``). ``settings``: what the
        samples depend on (``synth.settings``), the same as the folder's (``_check_settings``)."""
        self.root = Path(self.path).expanduser() if self.path else Path(run_dir) / self.default_dir
        self.dir = self.root / self.subdir
        self.shard_index = int(shard_index)
        with output_errors():  # writer.path not writable, or a file: one line, exit 3
            self.dir.mkdir(parents=True, exist_ok=True)
            if settings is not None:
                self._check_settings(settings, resume)
            self._remove_stale_temps()
            if not resume:  # start over: this job's earlier shards would duplicate samples
                for shard in self._own_shards().values():
                    if shard.is_dir() and not shard.is_symlink():
                        self._readable_ids(shard)  # a directory is set aside, not deleted
                    else:
                        shard.unlink()
            else:  # every job's shards: ids are global, whatever the sharding of earlier runs
                for shard in sorted(self.dir.glob(f"{self.prefix}-*{self.suffix}")):
                    found = self._readable_ids(shard)
                    self._check_sources(shard, found, source)
                    self.complete.update(found)
        self.next_seq = max(self._own_shards(), default=-1) + 1

    def __getstate__(self) -> dict[str, Any]:
        """What a worker process gets (it only encodes rows): not the ids of every complete sample."""
        return dict(self.__dict__, complete=set())

    def is_complete(self, sample_id: str) -> bool:
        return sample_id in self.complete

    def write(self, sample: Sample, images: EncodedImages | None = None) -> Any:
        """The sample's encoded row (in a worker thread or process), for ``commit``."""
        if "." in sample.id:  # webdataset splits a file name into key and field at the first dot
            raise ValueError(f"sample id {sample.id!r} contains a dot")
        return self._row(sample, images or EncodedImages(sample))

    def commit(self, sample: Sample, row: Any) -> None:
        """Append ``row`` (what ``write`` returned for the sample), on the runner's thread in input order."""
        if row is not None and sample.ok:
            with output_errors():
                self._append(sample, row)

    def stopped(self) -> None:
        """The job stopped before its last sample (signal, error): drop the partial shard. Its
        samples are written again by the rerun, which then fills that shard from the same first
        sample, so the shards split exactly as in an uninterrupted run."""
        with output_errors():
            self._drop_shard()

    def close(self) -> None:
        with output_errors():  # disk full, run directory removed: one line, exit 3
            self._finish_shard()

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
