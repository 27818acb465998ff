"""``writer=webdataset``: WebDataset tar shards, ready for ``webdataset.WebDataset``.

Each sample is stored under its id (the key, which has no dots) with the fields
``input_image.<ext>`` (the degraded composite: the training input), ``edited_image.<ext>`` (the
original photo: the target), ``mask.<ext>``, ``edit_prompt.txt`` and ``json`` (the per-sample
record without timings, whose file entries name these fields); ``intermediates=true`` adds
the stage layers.
Shards are ``shard-{data.shard_index:04d}-{seq:06d}.tar`` and appear only when complete.
"""

from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path

import webdataset as wds

from synth.faults import printable
from synth.files import to_json
from synth.params import setting, switch
from synth.sample import Sample
from synth.writers.encoded import INTERMEDIATES, EncodedImages
from synth.writers.folder import sample_record
from synth.writers.sharded import ShardedWriter

log = logging.getLogger("synth")

# tar field -> layer (the per-sample record's key)
FIELDS = {"input_image": "composite_image", "edited_image": "original", "mask": "mask"}


class WebDatasetWriter(ShardedWriter):
    default_dir = "webdataset"
    prefix = "shard"
    suffix = ".tar"

    def __init__(self, path: str | None = None, maxcount: int = 1000, maxsize_mb: float = 1000,
                 format: str = "png", png_compress_level: int = 1, quality: int = 95, intermediates: bool = False,
                 png_encoder: str = "auto"):
        super().__init__(path, format, png_compress_level, quality, png_encoder)
        self.maxcount = setting("writer.maxcount", maxcount, 1, integer=True)
        self.maxsize = setting("writer.maxsize_mb", maxsize_mb, 0.001) * 1e6
        intermediates = switch("writer.intermediates", intermediates)
        self.fields = dict(FIELDS, **({name: name for name in INTERMEDIATES} if intermediates else {}))
        self._sink: wds.ShardWriter | None = None

    def _row(self, sample: Sample, images: EncodedImages) -> dict:
        row: dict = {"__key__": sample.id}
        files: dict[str, str] = {}
        for field, layer in self.fields.items():
            data = self._image(images, layer)
            if data is not None:
                row[f"{field}.{self.format}"] = data
                files[layer] = f"{field}.{self.format}"
        if sample.caption is not None:
            row["edit_prompt.txt"] = sample.caption.encode()
        record = sample_record(sample, files)
        del record["timings_ms"]  # wall-clock: would make the same job's shards differ from run to run
        row["json"] = to_json(record).encode()
        return row

    def _append(self, sample: Sample, row: dict) -> None:
        if self._sink is None:  # opened on the first sample, so a job with nothing to do writes no shard
            temp = self.temp_path(self.dir / f"{self.prefix}-{self.shard_index:04d}-%06d{self.suffix}")
            pattern = str(self.dir).replace("%", "%%") + "/" + temp.name  # ShardWriter fills in the number
            self._sink = wds.ShardWriter(pattern, maxcount=self.maxcount, maxsize=self.maxsize,
                                         start_shard=self.next_seq, post=self._publish, verbose=0,
                                         encoder=False, mtime=0)  # fixed mtime: same job, same bytes
        self._sink.write(row)
        if self._sink.count >= self.maxcount:
            self._finish_shard()  # publish a full shard now, not when the next sample arrives


    def _publish(self, temp: str) -> None:
        """ShardWriter closed a shard: give it its final name (it becomes visible now)."""
        final = self.final_path(Path(temp))
        Path(temp).replace(final)
        log.debug("webdataset: wrote %s", printable(str(final)))

    def _finish_shard(self) -> None:
        if self._sink is not None:
            self.next_seq = self._sink.shard  # the number its next shard would have had
            self._sink.close()
            self._sink = None

    def _drop_shard(self) -> None:
        if self._sink is not None:
            self._sink.post = None  # closed, not published
            temp = self._sink.fname
            self._sink.close()
            if temp:
                Path(temp).unlink(missing_ok=True)
            self._sink = None

    def _ids_in(self, shard: Path) -> dict[str, str | None]:
        """Each id in ``shard`` -> the ``source`` its ``json`` record names (None without one)."""
        size = shard.stat().st_size
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
            # tarfile lists a member whose data was cut off (it stops at the missing header): check
            end = max((m.offset_data + m.size for m in members), default=0)
            if not members or end > size:
                raise tarfile.ReadError(f"truncated: {size} bytes, its members need {end}" if members else "no members")
            ids: dict[str, str | None] = {m.name.split(".", 1)[0]: None for m in members}
            for m in members:
                if m.name.endswith(".json") and m.isfile():
                    try:
                        source = json.loads(tar.extractfile(m).read()).get("source")
                    except (ValueError, AttributeError):  # not a record: nothing to compare
                        continue
                    ids[m.name.split(".", 1)[0]] = source if isinstance(source, str) else None
        return ids
