"""``writer=hf``: a Hugging Face dataset on disk, parquet shards that ``datasets.load_dataset`` opens.

Columns (the first three are the defaults of diffusers' InstructPix2Pix training script):
``input_image`` (the degraded composite), ``edit_prompt``, ``edited_image`` (the original),
then ``mask``, ``parameters`` (every drawn value, as JSON), ``degradation_type``, ``image_id``,
``index``, ``source`` and ``seed``. Shards are ``data/train-{data.shard_index:04d}-{seq:06d}.parquet``
(the ``train`` split) and appear only when complete.

Each row is converted to Arrow as its sample is written (in a worker), so a row that
Arrow cannot store fails its own sample there, with the reason, and never the shard it would
have gone into. Non-UTF-8 file names are stored as escaped text.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from synth.errors import SampleError, one_line
from synth.faults import printable
from synth.files import to_json
from synth.params import setting
from synth.sample import Sample
from synth.writers.encoded import EncodedImages
from synth.writers.sharded import ShardedWriter

log = logging.getLogger("synth")

FEATURES = datasets.Features({
    "input_image": datasets.Image(),
    "edit_prompt": datasets.Value("string"),
    "edited_image": datasets.Image(),
    "mask": datasets.Image(),
    "parameters": datasets.Value("string"),
    "degradation_type": datasets.Value("string"),
    "image_id": datasets.Value("string"),
    "index": datasets.Value("int64"),
    "source": datasets.Value("string"),
    "seed": datasets.Value("int64"),
})
# Carries the features in its metadata, so that load_dataset decodes the image columns.
SCHEMA = FEATURES.arrow_schema
ROW_GROUP = 64  # rows per parquet row group: bounds memory, and readers can seek by group


class HFDatasetWriter(ShardedWriter):
    default_dir = "hf"
    subdir = "data"
    prefix = "train"
    suffix = ".parquet"

    def __init__(self, path: str | None = None, rows_per_shard: int = 1000, max_shard_mb: float = 500,
                 format: str = "png", png_compress_level: int = 1, quality: int = 95, png_encoder: str = "auto"):
        super().__init__(path, format, png_compress_level, quality, png_encoder)
        self.rows_per_shard = setting("writer.rows_per_shard", rows_per_shard, 1, integer=True)
        self.max_shard_bytes = setting("writer.max_shard_mb", max_shard_mb, 0.001) * 1e6
        self._buffer: list[pa.Table] = []  # one-row tables of the row group being filled
        self._parquet: pq.ParquetWriter | None = None
        self._paths: tuple[Path, Path] | None = None
        self._rows = self._bytes = 0

    def _row(self, sample: Sample, images: EncodedImages) -> tuple[pa.Table, int]:
        """(the sample's row as a one-row table, its image bytes)."""
        def image(name: str) -> dict | None:
            data = self._image(images, name)
            return None if data is None else {"bytes": data, "path": None}

        row = {
            "input_image": image("composite_image"),
            "edit_prompt": sample.caption,
            "edited_image": image("original"),
            "mask": image("mask"),
            "parameters": to_json(sample.params, indent=None),
            "degradation_type": sample.degradation_type,
            "image_id": sample.id,
            "index": sample.index,
            "source": printable(sample.source),  # a file name need not be UTF-8; Arrow strings must
            "seed": sample.seed,
        }
        try:
            table = pa.Table.from_pylist([row], schema=SCHEMA)
        except Exception as err:  # noqa: BLE001 - ArrowInvalid, OverflowError, UnicodeEncodeError ...
            raise SampleError(f"hf: this sample's row cannot be stored in parquet: {one_line(err)[:300]}") from None
        return table, sum(len(v["bytes"]) for v in row.values() if isinstance(v, dict))

    def _append(self, sample: Sample, row: tuple[pa.Table, int]) -> None:
        table, image_bytes = row
        self._buffer.append(table)
        self._rows += 1
        self._bytes += image_bytes
        if len(self._buffer) >= ROW_GROUP:
            self._flush()
        if self._rows >= self.rows_per_shard or self._bytes >= self.max_shard_bytes:
            self._finish_shard()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._parquet is None:
            self._paths = self._new_shard_paths()
            self._parquet = pq.ParquetWriter(self._paths[0], SCHEMA)
        self._parquet.write_table(pa.concat_tables(self._buffer))
        self._buffer.clear()

    def _finish_shard(self) -> None:
        self._flush()
        if self._parquet is not None:
            self._parquet.close()
            temp, final = self._paths
            temp.replace(final)  # visible only now, complete
            log.debug("hf: wrote %s", printable(str(final)))
        self._parquet, self._paths, self._rows, self._bytes = None, None, 0, 0

    def _drop_shard(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._paths[0].unlink(missing_ok=True)
        self._buffer.clear()
        self._parquet, self._paths, self._rows, self._bytes = None, None, 0, 0

    def _ids_in(self, shard: Path) -> dict[str, str | None]:
        """Each id in ``shard`` -> its ``source`` column."""
        table = pq.ParquetFile(shard).read(columns=["image_id", "source"])
        return dict(zip(table.column("image_id").to_pylist(), table.column("source").to_pylist()))
