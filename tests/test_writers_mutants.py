"""Behaviour of the writers, the run directory and the settings check that hand-applied mutants
showed no other test pins down: each test names the one-line change it catches."""

from __future__ import annotations

import errno
import json
import os
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synth.data import ImageFolder
from synth.errors import ConfigError, OutputError
from synth.rundir import JsonlLog, RunLock, TimingStats, check_manifest, repair_torn_tail
from synth.settings import first_difference
from synth.writers.encoded import EncodedImages
from synth.writers.folder import FolderWriter
from synth.writers.hf import ROW_GROUP, HFDatasetWriter
from synth.writers.sharded import SETTINGS_FILE
from synth.writers.webdataset import WebDatasetWriter
from tests.conftest import make_sample
from tests.test_audit import photos

SETTINGS = {"seed": 0, "data.max_side": 1024}


def commit_all(writer, samples) -> None:
    for sample in samples:
        writer.commit(sample, writer.write(sample))


def shard_names(folder: Path, pattern: str = "*") -> list[str]:
    return sorted(p.name for p in folder.glob(pattern) if not p.name.startswith("."))


def tar_ids(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return [m.name.split(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".json")]


# --- shards: names, sequence, publication --------------------------------------------------------
def test_a_second_unreadable_shard_of_one_name_is_set_aside_beside_the_first(tmp_path):
    # mutant: the `.corrupt.N` loop skipped, the second one renamed over the first
    writer = WebDatasetWriter(maxcount=10)
    writer.open(tmp_path)
    shard = writer.dir / writer.shard_name(0)
    (writer.dir / (shard.name + ".corrupt")).write_bytes(b"first")
    shard.write_bytes(b"second")
    WebDatasetWriter(maxcount=10).open(tmp_path)
    assert (writer.dir / (shard.name + ".corrupt")).read_bytes() == b"first"
    assert (writer.dir / (shard.name + ".corrupt.1")).read_bytes() == b"second"
    assert not shard.exists()


def test_new_shards_follow_the_highest_one_even_after_a_gap(tmp_path):
    # mutant: next_seq = the number of shards (after a shard set aside, it overwrites the last one)
    writer = WebDatasetWriter(maxcount=1)
    writer.open(tmp_path)
    commit_all(writer, [make_sample(index=i, size=16) for i in range(3)])
    writer.close()
    (writer.dir / writer.shard_name(1)).unlink()  # e.g. set aside, its sample redone by this run
    writer = WebDatasetWriter(maxcount=1)
    writer.open(tmp_path)
    assert writer.next_seq == 3
    commit_all(writer, [make_sample(index=1, size=16)])
    writer.close()
    assert {name: tar_ids(writer.dir / name) for name in shard_names(writer.dir, "*.tar")} == {
        writer.shard_name(0): ["000000"], writer.shard_name(2): ["000002"], writer.shard_name(3): ["000001"]}


def test_a_full_tar_shard_is_published_at_once_not_when_the_next_sample_comes(tmp_path):
    # mutant: `count > maxcount` (a full shard stays a temporary file: lost to a SIGKILL)
    writer = WebDatasetWriter(maxcount=2)
    writer.open(tmp_path)
    commit_all(writer, [make_sample(index=i, size=16) for i in range(2)])
    assert shard_names(writer.dir, "*.tar") == [writer.shard_name(0)]
    assert list(writer.dir.glob(".*.tmp")) == []
    writer.close()


@pytest.mark.parametrize("make, suffix", [(lambda: HFDatasetWriter(rows_per_shard=10), "*.parquet"),
                                          (lambda: WebDatasetWriter(maxcount=10), "*.tar")], ids=["hf", "webdataset"])
def test_a_stopped_shard_is_neither_published_nor_left_as_a_temporary_file(tmp_path, make, suffix):
    # mutants: hf's _drop_shard keeps the buffered rows, which close() then publishes as a partial
    # shard; webdataset's leaves ShardWriter's post hook (stopped() publishes the partial shard)
    writer = make()
    writer.open(tmp_path)
    commit_all(writer, [make_sample(index=i, size=16) for i in range(3)])
    writer.stopped()
    writer.close()
    assert list(writer.dir.glob(suffix)) == [] and list(writer.dir.glob(".*.tmp")) == []


@pytest.mark.parametrize("writer_class, option", [(WebDatasetWriter, "maxcount"), (HFDatasetWriter, "rows_per_shard")])
def test_shards_hold_exactly_their_maximum_count_and_appear_when_full(tmp_path, writer_class, option):
    # mutants: `>` for `>=` in the cut (shards one sample too large, or published one sample late)
    writer = writer_class(**{option: 2})
    writer.open(tmp_path)
    samples = [make_sample(index=i, size=8) for i in range(5)]
    commit_all(writer, samples[:2])
    assert shard_names(writer.dir, f"*{writer.suffix}") == [writer.shard_name(0)]
    commit_all(writer, samples[2:])
    writer.close()
    if writer_class is WebDatasetWriter:
        ids = [tar_ids(writer.dir / name) for name in shard_names(writer.dir, "*.tar")]
    else:
        ids = [pq.read_table(writer.dir / name).column("image_id").to_pylist()
               for name in shard_names(writer.dir, "*.parquet")]
    assert ids == [["000000", "000001"], ["000002", "000003"], ["000004"]]


def test_tar_members_carry_no_wall_clock(tmp_path):
    # mutants: the record keeps timings_ms, or the members get the time of writing as mtime
    # (either makes the same job's shards differ from run to run)
    writer = WebDatasetWriter()
    writer.open(tmp_path)
    sample = make_sample(size=8)
    sample.timings_ms = {"segmentation": 12.5}
    commit_all(writer, [sample])
    writer.close()
    with tarfile.open(writer.dir / writer.shard_name(0)) as tar:
        members = tar.getmembers()
        assert members and all(m.mtime == 0 for m in members)
        record = json.loads(tar.extractfile(next(m for m in members if m.name.endswith(".json"))).read())
    assert "timings_ms" not in record and record["image_id"] == "000000"


def test_parquet_shards_are_written_in_row_groups_of_64(tmp_path):
    # mutant: no flush per ROW_GROUP (one row group per shard: the whole shard in memory)
    writer = HFDatasetWriter(rows_per_shard=1000)
    writer.open(tmp_path)
    commit_all(writer, [make_sample(index=i, size=8) for i in range(ROW_GROUP + 3)])
    writer.close()
    (shard,) = writer.dir.glob("*.parquet")
    meta = pq.ParquetFile(shard).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [ROW_GROUP, 3]


def test_a_sample_id_with_a_dot_is_refused(tmp_path):
    # mutant: the dot check dropped (webdataset would split the key at the dot)
    writer = WebDatasetWriter()
    writer.open(tmp_path)
    sample = make_sample(size=16)
    sample.id = "0.1"
    with pytest.raises(ValueError, match="contains a dot"):
        writer.write(sample)


# --- shards: what resume finds -------------------------------------------------------------------
def test_shards_of_inputs_gone_at_the_end_of_the_listing_still_resume(tmp_path):
    # mutant: `int(sample_id) > source.total` (the id one past the listing looked up: IndexError)
    data = photos(tmp_path / "in", 3)
    writer = WebDatasetWriter(maxcount=10)
    writer.open(tmp_path / "run")
    commit_all(writer, [make_sample(data / f"p{i}.png", index=i) for i in range(3)])
    writer.close()
    (data / "p2.png").unlink()  # the last input gone: its sample stays
    writer = WebDatasetWriter(maxcount=10)
    writer.open(tmp_path / "run", source=ImageFolder(str(data)))
    assert all(writer.is_complete(f"{i:06d}") for i in range(3))


def test_a_link_named_like_a_shard_is_set_aside_not_read(tmp_path):
    # mutant: a symlink to a readable shard elsewhere counted as this folder's shard
    elsewhere = WebDatasetWriter()
    elsewhere.open(tmp_path / "elsewhere")
    commit_all(elsewhere, [make_sample(index=0, size=16)])
    elsewhere.close()
    writer = WebDatasetWriter()
    writer.open(tmp_path / "run")
    link = writer.dir / writer.shard_name(0)
    link.symlink_to(elsewhere.dir / elsewhere.shard_name(0))
    writer = WebDatasetWriter()
    writer.open(tmp_path / "run")
    assert not writer.is_complete("000000")
    assert (writer.dir / (link.name + ".corrupt")).is_symlink() and not link.exists()


def test_the_shards_of_another_shard_index_count_as_complete(tmp_path):
    # mutant: resume reads only this job's own shards (ids are global: another job's are skipped too)
    other = WebDatasetWriter()
    other.open(tmp_path, shard_index=1)
    commit_all(other, [make_sample(index=1, size=16)])
    other.close()
    writer = WebDatasetWriter()
    writer.open(tmp_path, shard_index=0)
    assert writer.is_complete("000001") and not writer.is_complete("000000")


# --- .synth-settings.json ------------------------------------------------------------------------
def settings_of(writer) -> dict:
    return json.loads((writer.dir / SETTINGS_FILE).read_text())


def test_resume_false_beside_another_shard_index_with_other_settings_is_refused(tmp_path):
    # mutant: `if resume:` (resume=false would start over beside another job's samples)
    other = WebDatasetWriter()
    other.open(tmp_path, shard_index=1, settings=dict(SETTINGS, seed=0))
    commit_all(other, [make_sample(index=1, size=16)])
    other.close()
    with pytest.raises(ConfigError, match=r"^seed=1: .* were made with seed=0 .*writers\.webdataset\.path\)$"):
        WebDatasetWriter().open(tmp_path, shard_index=0, resume=False, settings=dict(SETTINGS, seed=1))


def test_resume_false_records_the_new_settings(tmp_path):
    # mutant: resume=false with other settings starts over but keeps the old settings file
    writer = WebDatasetWriter()
    writer.open(tmp_path, settings=dict(SETTINGS, seed=0))
    writer = WebDatasetWriter()
    writer.open(tmp_path, resume=False, settings=dict(SETTINGS, seed=1))
    assert settings_of(writer)["seed"] == 1
    WebDatasetWriter().open(tmp_path, resume=True, settings=dict(SETTINGS, seed=1))  # no error


def test_a_shard_folder_records_only_its_own_writer_entries(tmp_path):
    # mutant: every writer's entry recorded (a job changing only another writer's format is refused)
    first = dict(SETTINGS, **{"writer:folder.format": "png", "writer:webdataset.format": "png"})
    writer = WebDatasetWriter()
    writer.open(tmp_path, settings=first)
    assert settings_of(writer) == dict(SETTINGS, **{"writer:webdataset.format": "png"})
    WebDatasetWriter().open(tmp_path, settings=dict(first, **{"writer:folder.format": "jpg"}))  # no error


def test_a_settings_file_without_this_writers_entry_gets_it(tmp_path):
    # mutant: a file that agrees but lacks an entry (an older version's) is left as it was
    writer = WebDatasetWriter()
    writer.open(tmp_path)
    (writer.dir / SETTINGS_FILE).write_text(json.dumps(SETTINGS))
    mine = dict(SETTINGS, **{"writer:webdataset.format": "png"})
    WebDatasetWriter().open(tmp_path, settings=mine)
    assert settings_of(writer) == mine


def test_a_setting_that_only_the_new_job_has_is_a_difference():
    # mutant: only the recorded keys compared (a stage added on resume went unnoticed)
    then = {"seed": 0}
    assert first_difference(then, dict(then, **{"captioning._target_": "x.Template"})) == (
        "captioning=x.Template", "no captioning")


# --- the folder layout ---------------------------------------------------------------------------
def test_a_record_is_complete_only_when_it_lists_its_own_metadata_file(tmp_path):
    # mutant: `has` returns True once the listed files are there, even when none is listed
    writer = FolderWriter()
    writer.open(tmp_path)
    record = writer.write(make_sample(size=16))
    assert writer.has(record)
    assert not writer.has(dict(record, files=[]))
    without = [f for f in record["files"] if not f["path"].endswith("_metadata.json")]
    assert len(without) == len(record["files"]) - 1 and not writer.has(dict(record, files=without))


def test_a_metadata_file_of_another_id_does_not_make_a_sample_complete(tmp_path):
    # mutant: is_complete without the image_id check
    writer = FolderWriter()
    writer.open(tmp_path)
    writer.write(make_sample(size=16))
    writer.metadata_path("000001").write_bytes(writer.metadata_path("000000").read_bytes())
    assert writer.is_complete("000000") and not writer.is_complete("000001")


# --- encoding once for all writers ---------------------------------------------------------------
def test_encoded_images_are_shared_only_between_equal_formats_and_qualities():
    # mutants: the cache key without the format, or without the quality of lossy formats
    images = EncodedImages(make_sample(size=64))
    png, jpg = images.get("original", "png"), images.get("original", "jpg", quality=95)
    webp = images.get("original", "webp", quality=95)
    assert png.startswith(b"\x89PNG") and jpg.startswith(b"\xff\xd8") and webp[8:12] == b"WEBP"
    low = images.get("original", "jpg", quality=20)
    assert low != jpg and len(low) < len(jpg)
    assert images.get("original", "jpg", png_compress_level=9, quality=95) is jpg  # the PNG level: ignored


# --- the run directory ---------------------------------------------------------------------------
def test_a_torn_line_of_64_kib_leaves_the_line_before_it(tmp_path):
    # mutant: `newline > 0` (a newline at the start of a 64 KiB chunk is missed: one line too many cut)
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b"x" * 65535)
    assert repair_torn_tail(path) == 65535
    assert path.read_bytes() == b'{"a": 1}\n'


def test_a_torn_line_of_exactly_64_kib_is_cut_after_a_chunk_that_ends_a_line(tmp_path):
    # mutant: "ends with a newline: nothing torn" tested on every chunk, not only the last one
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b"x" * 65536)
    assert repair_torn_tail(path) == 65536
    assert path.read_bytes() == b'{"a": 1}\n'


def test_the_median_of_an_even_number_of_timings_is_the_mean_of_the_middle_two():
    # mutant: the upper middle value
    stats = TimingStats()
    for ms in (4.0, 1.0, 3.0, 2.0):
        stats.add(ms)
    assert stats.summary() == {"median": 2.5, "mean": 2.5, "min": 1.0, "max": 4.0, "count": 4}


def test_a_jsonl_line_is_on_disk_as_soon_as_it_is_written(tmp_path):
    # mutant: no flush after each line (a SIGKILLed job loses the lines it reported)
    log = JsonlLog(tmp_path / "samples.jsonl")
    log.write({"image_id": "000000"})
    assert json.loads((tmp_path / "samples.jsonl").read_bytes()) == {"image_id": "000000"}
    log.close()


def test_releasing_a_lock_that_another_job_took_over_leaves_it(tmp_path):
    # mutant: release removes synth.lock whoever holds it now
    lock = RunLock(tmp_path).acquire()
    theirs = json.dumps({"pid": 1, "host": "elsewhere"})
    lock.path.write_text(theirs)
    lock.release()
    assert lock.path.read_text() == theirs


def test_the_lock_heartbeat_touches_the_lock(tmp_path):
    # mutant: no os.utime (a job on another node would take over a running job's lock)
    lock = RunLock(tmp_path)
    lock.path.write_text(lock.mine)
    os.utime(lock.path, (0, 0))
    beats = iter([False, True])  # one beat, then stopped
    lock._stop.wait = lambda timeout: next(beats)
    lock._heartbeat()
    assert lock.path.stat().st_mtime > 0


def test_a_fresh_lock_of_another_host_is_honoured_whatever_its_pid_is_here(tmp_path):
    # mutant: the pid checked on this host also for another host's lock (no such process here: taken over)
    lock = RunLock(tmp_path)
    lock.path.write_text(json.dumps({"pid": 999999999, "host": "node-elsewhere"}))
    with pytest.raises(OutputError, match=r"busy: another synth job \(pid 999999999 on node-elsewhere\)"):
        lock.acquire()
    assert json.loads(lock.path.read_text())["host"] == "node-elsewhere"


def test_a_lock_of_another_host_touched_a_minute_ago_is_honoured(tmp_path):
    # mutant: stale after HEARTBEAT_S instead of STALE_AFTER_S (one late heartbeat: two jobs in one directory)
    lock = RunLock(tmp_path)
    lock.path.write_text(json.dumps({"pid": 1, "host": "node-elsewhere"}))
    minute_ago = time.time() - 60
    os.utime(lock.path, (minute_ago, minute_ago))
    with pytest.raises(OutputError, match=r"busy: another synth job \(pid 1 on node-elsewhere\)"):
        lock.acquire()


def test_an_os_error_while_taking_over_a_stale_lock_is_one_output_error(tmp_path, monkeypatch):
    # found here: only the lock's creation was turned into an OutputError, not the take-over of a
    # stale one (its temporary file and rename), which raised the bare OSError: a traceback
    lock = RunLock(tmp_path)
    lock.path.write_text(json.dumps({"pid": 999999999, "host": json.loads(lock.mine)["host"]}))  # a dead job's

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device", str(lock.path))
    monkeypatch.setattr("synth.rundir.os.replace", disk_full)
    with pytest.raises(OutputError, match=r"^cannot write .*synth\.lock: No space left on device$"):
        lock.acquire()
    assert not lock.held
    assert [p.name for p in tmp_path.iterdir()] == ["synth.lock"]  # its temporary file is not left behind


def entries(data: Path, count: int):
    return lambda: [(i, f"{i:06d}", f"p{i}.png", 10, 20) for i in range(count)]


def test_a_manifest_grows_with_inputs_added_at_the_end(tmp_path):
    # mutant: new inputs leave the manifest as the first run wrote it
    path = tmp_path / "manifest.jsonl"
    check_manifest(path, entries(tmp_path, 2), 2)()
    check_manifest(path, entries(tmp_path, 3), 3)()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["total"] == 3 and json.loads(lines[-1]) == [2, "000002", "p2.png", 10, 20]


def test_resume_false_still_refuses_another_shards_manifest_with_other_settings(tmp_path):
    # mutant: start_over skips the settings of every manifest, not only this job's own
    check_manifest(tmp_path / "manifest-0001.jsonl", entries(tmp_path, 2), 2, num_shards=2, settings={"seed": 0})()
    with pytest.raises(ConfigError, match=r"^seed=1: the samples of another shard .*manifest-0001\.jsonl"):
        check_manifest(tmp_path / "manifest-0000.jsonl", entries(tmp_path, 2), 2, start_over=True, num_shards=2,
                       settings={"seed": 1})


def test_files_named_like_manifests_but_not_synths_are_not_compared(tmp_path):
    # mutant: every manifest*.jsonl counts (a user's manifest-old.jsonl would refuse the job)
    (tmp_path / "manifest-old.jsonl").write_text(json.dumps({"manifest": 1, "num_shards": 5}) + "\n")
    check_manifest(tmp_path / "manifest.jsonl", entries(tmp_path, 2), 2, settings={"seed": 0})()
    assert (tmp_path / "manifest.jsonl").exists()
