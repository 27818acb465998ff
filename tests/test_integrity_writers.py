"""Issue 16, writers: a bad parquet row fails only its own sample, unreadable shards are set
aside and redone, output-location faults are one line (OutputError, exit 3), and a job never
deletes another live job's temporary shards."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synth.app import build_runner
from synth.errors import OutputError, SampleError
from synth.writers.hf import HFDatasetWriter
from synth.writers.webdataset import WebDatasetWriter
from tests.conftest import compose_config, make_sample, run_synth
from tests.scale_helpers import make_inputs


def run_job(data_dir: Path, run_dir: Path, *overrides: str) -> dict:
    cfg = compose_config("data=folder", f"data.path='{data_dir}'", "logger=none", "num_workers=1", *overrides)
    return build_runner(cfg, run_dir).run()


def parquet_ids(folder: Path) -> list[str]:
    return sorted(i for p in folder.glob("*.parquet") for i in pq.read_table(p).column("image_id").to_pylist())


def tar_ids(folder: Path) -> list[str]:
    ids = []
    for shard in folder.glob("*.tar"):
        with tarfile.open(shard) as tar:
            ids += [m.name.split(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".json")]
    return sorted(ids)


# --- one bad parquet row (item 6) ----------------------------------------------------------------
def test_a_non_utf8_file_name_is_stored_as_escaped_text(tmp_path):
    data = make_inputs(tmp_path / "in", 2)
    os.rename(data / "img_001.jpg", os.fsencode(data) + b"/caf\xe9.jpg")  # a Latin-1 name: not UTF-8
    summary = run_job(data, tmp_path / "run", "writers=[hf]")
    assert summary["exit_code"] == 0 and summary["done"] == 2
    table = pq.read_table(next((tmp_path / "run" / "hf" / "data").glob("*.parquet")))
    sources = table.column("source").to_pylist()
    assert any(s.endswith("caf\\udce9.jpg") for s in sources), sources


def test_a_row_that_cannot_be_stored_fails_its_own_sample_only(tmp_path):
    writer = HFDatasetWriter(rows_per_shard=10)
    writer.open(tmp_path)
    samples = [make_sample(index=i, size=32) for i in range(3)]
    samples[1].seed = 2**70  # does not fit the int64 column (the runner refuses such seeds itself)
    for sample in samples:
        row = None
        try:
            row = writer.write(sample)
        except SampleError as err:
            assert sample is samples[1] and "cannot be stored in parquet" in str(err)
            sample.fail("write", err)
        writer.commit(sample, row)
    writer.close()
    assert parquet_ids(tmp_path / "hf" / "data") == ["000000", "000002"]


# --- unreadable shards (item 14) -----------------------------------------------------------------
def test_corrupt_shards_and_directories_named_like_shards_are_set_aside_and_redone(tmp_path, caplog):
    data = make_inputs(tmp_path / "in", 4)
    run_dir = tmp_path / "run"
    overrides = ("writer=webdataset", "writer.maxcount=2", "writers=[hf]", "writers.hf.rows_per_shard=2")
    assert run_job(data, run_dir, *overrides)["done"] == 4
    tars, parquets = run_dir / "webdataset", run_dir / "hf" / "data"
    shard = tars / "shard-0000-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated in a member's data
    (parquets / "train-0000-000001.parquet").write_bytes(b"garbage" * 100)
    (tars / "shard-0000-000007.tar").mkdir()  # a directory named like a shard
    with caplog.at_level(logging.WARNING, logger="synth"):
        summary = run_job(data, run_dir, *overrides)
    assert summary["exit_code"] == 0 and summary["done"] == 4  # redone for the writers that lost them
    assert tar_ids(tars) == parquet_ids(parquets) == ["000000", "000001", "000002", "000003"]
    assert (tars / "shard-0000-000000.tar.corrupt").is_file() and (tars / "shard-0000-000007.tar.corrupt").is_dir()
    assert (parquets / "train-0000-000001.parquet.corrupt").is_file()
    warnings = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(warnings) == 3 and all("\n" not in w for w in warnings), warnings


# --- output location faults (item 15) ------------------------------------------------------------
def test_unwritable_writer_path_is_one_line_exit_3(tmp_path):
    data = make_inputs(tmp_path / "in", 1)
    (tmp_path / "a_file").write_text("x")
    proc = run_synth(tmp_path / "run", "data=folder", f"data.path={data}", "writers=[webdataset]",
                     f"writers.webdataset.path={tmp_path / 'a_file' / 'wds'}", check=False)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "a_file" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("writer_class", [WebDatasetWriter, HFDatasetWriter])
def test_run_directory_removed_or_disk_full_at_close_is_an_output_error(tmp_path, writer_class, monkeypatch):
    writer = writer_class()
    writer.open(tmp_path / "run")
    sample = make_sample(size=32)
    writer.commit(sample, writer.write(sample))
    shutil.rmtree(tmp_path / "run")  # removed while the job runs
    with pytest.raises(OutputError, match="cannot write"):
        writer.close()

    writer = writer_class()
    writer.open(tmp_path / "run2")
    writer.commit(sample, writer.write(sample))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "replace", disk_full)
    with pytest.raises(OutputError, match="No space left on device"):
        writer.close()


# --- a second job's temporary shards (item 16) ---------------------------------------------------
@pytest.mark.parametrize("writer_class", [WebDatasetWriter, HFDatasetWriter])
def test_temporary_shards_carry_the_pid_and_open_removes_only_dead_ones(tmp_path, writer_class):
    writer = writer_class()
    writer.open(tmp_path)
    name = writer.shard_name(0)
    live = writer.dir / f".{name}.{os.getppid()}.tmp"  # another job, still running
    dead = writer.dir / f".{writer.shard_name(1)}.999999999.tmp"  # a killed job's
    own = writer.dir / f".{writer.shard_name(2)}.{os.getpid()}.tmp"  # this process's earlier job
    for path in (live, dead, own):
        path.write_bytes(b"partial")
    writer = writer_class()
    writer.open(tmp_path)
    assert live.exists() and not dead.exists() and not own.exists()
    sample = make_sample(size=32)
    writer.commit(sample, writer.write(sample))
    if writer_class is HFDatasetWriter:
        writer._flush()  # parquet buffers a row group before it opens the file
    temps = [p.name for p in writer.dir.glob(".*.tmp") if p != live]
    assert temps == [f".{name}.{os.getpid()}.tmp"]
    writer.close()
    assert live.read_bytes() == b"partial"  # the other job's file is untouched
    assert sorted(p.name for p in writer.dir.glob(f"{writer.prefix}-*")) == [name]
