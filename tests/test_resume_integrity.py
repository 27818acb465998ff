"""A rerun never makes a wrong dataset: inputs are pinned by the run directory's manifest,
completeness is checked against what the records name, failed samples leave nothing, a busy
run directory is refused, and a stopped job's shards split as an uninterrupted job's.

Jobs run in-process on tiny generated images (see test_robustness_run); the CLI only where the
exit status itself is the point."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synth.app import build_runner
from synth.data import ImageFolder
from synth.errors import ConfigError, OutputError
from tests.conftest import compose_config, read_samples, read_summary, run_synth
from tests.test_robustness_run import files_of, photo, run_job


def photos(folder: Path, *names: str) -> Path:
    for i, name in enumerate(names):
        photo(folder / name, seed=i)
    return folder


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


# --- item 1: inputs pinned ------------------------------------------------------------------------
def test_an_input_added_before_existing_ones_is_refused_and_changes_nothing(tmp_path):
    data, run_dir = photos(tmp_path / "in", "b.png", "c.png", "d.png"), tmp_path / "run"
    run_job(data, run_dir, "data.limit=2")
    before = snapshot(run_dir)
    photo(data / "a.png", seed=9)  # sorts first: every id would now mean another file
    with pytest.raises(ConfigError, match=r"id 000000 was b\.png, now a\.png"):
        run_job(data, run_dir)
    assert snapshot(run_dir) == before


def test_inputs_added_after_the_last_one_get_new_ids(tmp_path):
    data, run_dir = photos(tmp_path / "in", "a.png", "b.png"), tmp_path / "run"
    run_job(data, run_dir)
    photo(data / "c.png", seed=7)
    summary = run_job(data, run_dir)
    assert (summary["done"], summary["skipped_complete"]) == (1, 2)
    records = read_samples(run_dir)
    assert [(r["image_id"], Path(r["source"]).name) for r in records] == [
        ("000000", "a.png"), ("000001", "b.png"), ("000002", "c.png")]


def test_without_its_manifest_a_record_of_another_input_is_redone(tmp_path):
    """manifest.jsonl deleted, then a photo inserted before the others: nothing pins the ids, so
    the records say which input each sample was made from, and those that moved are redone."""
    data, run_dir = photos(tmp_path / "in", "b.png", "c.png"), tmp_path / "run"
    run_job(data, run_dir)
    (run_dir / "manifest.jsonl").unlink()
    photo(data / "a.png", seed=9)  # sorts first: b.png is now id 000001, c.png 000002
    summary = run_job(data, run_dir)
    assert (summary["done"], summary["skipped_complete"]) == (3, 0)
    records = read_samples(run_dir)
    assert sorted((r["image_id"], Path(r["source"]).name) for r in records) == [
        ("000000", "a.png"), ("000001", "b.png"), ("000002", "c.png")]


def test_the_same_inputs_under_another_spelling_of_data_path_resume(tmp_path, monkeypatch):
    data, run_dir = photos(tmp_path / "in", "a.png", "b.png"), tmp_path / "run"
    run_job(data, run_dir)
    monkeypatch.chdir(tmp_path)
    summary = run_job(Path("in"), run_dir)  # relative now
    assert (summary["done"], summary["skipped_complete"]) == (0, 2)


def test_inputs_grown_past_a_million_say_that_every_id_got_longer(tmp_path):
    """Ids are zero-padded to the width of the largest: past 1,000,000 inputs each gains a digit,
    so none of the earlier samples would be found; the refusal says why, not "id X was Y"."""
    from synth.rundir import check_manifest

    manifest = tmp_path / "manifest.jsonl"
    check_manifest(manifest, lambda: [(0, "000000", "a.png", 1, 1), (1, "000001", "b.png", 1, 1)], 2)()
    grown = [(0, "0000000", "a.png", 1, 1), (1, "0000001", "b.png", 1, 1), (2, "0000002", "c.png", 1, 1)]
    with pytest.raises(ConfigError, match=r"inputs grew to 1,000,001, which makes every id 7 digits long .*has ids of 6"):
        check_manifest(manifest, lambda: grown, 1_000_001)


def test_a_changed_input_file_is_refused_through_the_cli_with_exit_2(tmp_path):
    data, run_dir = photos(tmp_path / "in", "a.png", "b.png"), tmp_path / "run"
    run_synth(run_dir, "data=folder", f"data.path={data}", "num_workers=1")
    photo(data / "b.png", seed=5, h=50)  # same name, other content
    proc = run_synth(run_dir, "data=folder", f"data.path={data}", check=False)
    assert proc.returncode == 2
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "b.png (id 000001) changed" in line and "resume=false" in line
    run_synth(run_dir, "data=folder", f"data.path={data}", "resume=false")  # starting over is allowed
    assert read_summary(run_dir)["done"] == 2


def test_the_run_directory_inside_data_path_is_never_listed(tmp_path):
    data = photos(tmp_path / "in", "a.png", "b.png")
    old_run = data / "outputs" / "2026-01-01" / "10-00-00"  # Hydra's outputs/ from an earlier job
    run_job(data, old_run)
    (old_run / ".hydra").mkdir()
    run_dir = data / "run"
    summary = run_job(data, run_dir)
    assert summary["total"] == 2 and summary["done"] == 2
    summary = run_job(data, run_dir)  # its own outputs are not new inputs either
    assert (summary["total"], summary["done"], summary["skipped_complete"]) == (2, 0, 2)


def test_a_path_longer_than_path_max_is_skipped_with_one_warning(tmp_path, caplog):
    data = photos(tmp_path / "in", "a.png")
    fd = os.open(data, os.O_RDONLY)
    try:  # nest directories by file descriptor until the path is longer than PATH_MAX (4096)
        for _ in range(25):
            os.mkdir("d" * 200, dir_fd=fd)
            inner = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        with open(os.open("deep.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as f:
            f.write((data / "a.png").read_bytes())
    finally:
        os.close(fd)
    with caplog.at_level("WARNING", logger="synth"):
        assert ImageFolder(path=str(data)).paths == ["a.png"]
    [warning] = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert "cannot be read" in warning


# --- item 4: completeness means the files are there -----------------------------------------------
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:20])


@pytest.mark.parametrize("tamper", [
    lambda run: _truncate(run / "outputs/000001_metadata.json"),
    lambda run: (run / "outputs/000001_metadata.json").write_bytes(b"\x00garbage{"),
    lambda run: (run / "outputs/000001_metadata.json").write_bytes(b""),
    lambda run: (run / "stage_2/000001_albedo.png").unlink(),
    lambda run: (run / "outputs/000001_output.png").unlink(),
    lambda run: _truncate(run / "stage_3_5/000001_composite.png"),
], ids=["truncated-metadata", "garbage-metadata", "empty-metadata", "deleted-stage-image", "deleted-output-link",
        "truncated-image"])
def test_a_damaged_sample_is_redone_and_only_it(tmp_path, tamper):
    data, run_dir = photos(tmp_path / "in", "a.png", "b.png", "c.png"), tmp_path / "run"
    run_job(data, run_dir)
    good = {rel: content for rel, content in snapshot(run_dir).items() if "000001_" in rel}
    tamper(run_dir)
    summary = run_job(data, run_dir)
    assert (summary["done"], summary["skipped_complete"]) == (1, 2)
    repaired = {rel: content for rel, content in snapshot(run_dir).items() if "000001_" in rel}
    assert sorted(repaired) == sorted(good)
    assert json.loads(repaired["outputs/000001_metadata.json"])["image_id"] == "000001"
    assert sorted(r["image_id"] for r in read_samples(run_dir)) == ["000000", "000001", "000002"]  # once each


# --- item 5: a failed sample leaves no files from any run -----------------------------------------
def test_resume_false_removes_the_old_files_of_a_sample_that_now_fails(tmp_path):
    data, run_dir = photos(tmp_path / "in", "a.png", "b.png"), tmp_path / "run"
    run_job(data, run_dir)
    assert files_of(run_dir, "000001")
    (data / "b.png").write_text("not an image any more")
    summary = run_job(data, run_dir, "resume=false", "max_failure_rate=1.0")
    assert summary["failed"] == 1 and summary["failures"][0]["id"] == "000001"
    assert files_of(run_dir, "000001") == []
    assert [r["image_id"] for r in read_samples(run_dir)] == ["000000"]
    summary = run_job(data, run_dir, "max_failure_rate=1.0")  # the next resume retries it
    assert (summary["skipped_complete"], summary["failed"]) == (1, 1)


# --- item 9: nothing written, and the CSV's output column -----------------------------------------
def test_no_writer_at_all_is_a_configuration_error(tmp_path):
    data = photos(tmp_path / "in", "a.png")
    with pytest.raises(ConfigError, match="^writer: none selected"):
        build_runner(compose_config("data=folder", f"data.path='{data}'", "logger=none", "~writer"), tmp_path / "run")
    proc = run_synth(tmp_path / "run", "data=folder", f"data.path={data}", "writer=null", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: writer: none selected")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run" / "outputs").exists()


def test_csv_output_column_follows_each_samples_own_format_after_a_resume(tmp_path):
    photos(tmp_path / "in", "a.png", "b.png")
    table = tmp_path / "in" / "pairs.csv"
    table.write_text("image_path,label\na.png,x\nb.png,y\n")
    run_dir = tmp_path / "run"
    common = ["data=csv", f"data.path='{table}'", "logger=none", "num_workers=1"]
    build_runner(compose_config(*common, "data.limit=1"), run_dir).run()
    # a resume with another format is refused (test_settings), except in a run directory of a
    # version that did not record its settings: such a rerun mixes formats
    manifest = run_dir / "manifest.jsonl"
    header, *entries = manifest.read_text().splitlines(keepends=True)
    manifest.write_text(json.dumps({k: v for k, v in json.loads(header).items() if k != "settings"}) + "\n"
                        + "".join(entries))
    build_runner(compose_config(*common, "writer.format=webp"), run_dir).run()
    with open(run_dir / "pairs_with_outputs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    outputs = [row["output_image_path"] for row in rows]
    assert [Path(p).name for p in outputs] == ["000000_output.png", "000001_output.webp"]
    assert all(Path(p).is_file() for p in outputs)
    assert [row["label"] for row in rows] == ["x", "y"]


# --- exit status in metadata.json ------------------------------------------------------------------
def test_a_configuration_error_in_stage_setup_is_exit_2_in_metadata_json(tmp_path, monkeypatch):
    from synth.stages.albedo import Retinex

    def missing_weights(self, device):
        raise ConfigError("albedo.model=nowhere: not found")

    monkeypatch.setattr(Retinex, "setup", missing_weights)
    data = photos(tmp_path / "in", "a.png")
    with pytest.raises(ConfigError):
        run_job(data, tmp_path / "run")
    assert read_summary(tmp_path / "run")["exit_code"] == 2


# --- a second job ------------------------------------------------------------------------------------
def test_a_second_job_in_a_busy_run_directory_is_refused(tmp_path):
    data, run_dir = photos(tmp_path / "in", "a.png"), tmp_path / "run"
    run_dir.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # alive until killed below
    try:
        import socket
        (run_dir / "synth.lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(OutputError, match=rf"busy: another synth job \(pid {sleeper.pid}\)"):
            run_job(data, run_dir)
        assert sorted(p.name for p in run_dir.iterdir()) == ["synth.lock"]  # nothing else touched
    finally:
        sleeper.kill()
        sleeper.wait()
    # The same lock, its process gone (a SIGKILLed job): stale, taken over.
    summary = run_job(data, run_dir)
    assert summary["done"] == 1 and not (run_dir / "synth.lock").exists()


def test_a_lock_from_another_host_is_stale_only_once_its_heartbeat_stops(tmp_path):
    """A job killed on another node (a Slurm job requeued elsewhere) cannot be checked by pid:
    its lock is honoured while it is touched, and taken over once it has not been for 5 min."""
    from synth.rundir import RunLock

    lock = tmp_path / "synth.lock"
    lock.write_text(json.dumps({"pid": 1, "host": "node-elsewhere"}))
    with pytest.raises(OutputError, match="pid 1 on node-elsewhere"):
        RunLock(tmp_path).acquire()
    old = time.time() - 600
    os.utime(lock, (old, old))
    mine = RunLock(tmp_path).acquire()
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    mine.release()
    assert not lock.exists()


_SEEN_LOCKS: list[bytes] = []  # what synth.lock held at each file-system call, while a test watches
_WATCHED: list[Path] = []


def _watch_lock(event: str, args: tuple) -> None:
    if _WATCHED and event in ("open", "os.link", "os.remove", "os.rename", "os.replace"):
        path = _WATCHED.pop()  # while it reads, its own "open" is not watched
        try:
            _SEEN_LOCKS.append(path.read_bytes())
        except FileNotFoundError:
            pass
        finally:
            _WATCHED.append(path)


sys.addaudithook(_watch_lock)  # audit hooks cannot be removed: inert unless _WATCHED is set


def test_a_lock_is_never_seen_empty_while_it_is_created(tmp_path):
    """An empty lock counts as stale (a torn write): a job starting at the same moment would take
    it over, and two jobs would write in one run directory. So the lock appears with its content."""
    from synth.rundir import RunLock

    _SEEN_LOCKS.clear()
    _WATCHED.append(tmp_path / "synth.lock")
    try:
        lock = RunLock(tmp_path).acquire()
    finally:
        _WATCHED.clear()
    assert _SEEN_LOCKS and all(json.loads(seen)["pid"] == os.getpid() for seen in _SEEN_LOCKS), _SEEN_LOCKS
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary file left either


def test_a_lock_that_is_a_directory_is_one_line(tmp_path):
    from synth.rundir import RunLock

    (tmp_path / "synth.lock").mkdir()
    with pytest.raises(OutputError, match=r"synth.lock: not a lock file that synth wrote .*; remove it if no job runs"):
        RunLock(tmp_path).acquire()


# --- item 18: a stopped job's shards split as an uninterrupted job's --------------------------------
def shard_contents(run_dir: Path) -> tuple[list[list[str]], list[list[str]]]:
    tars = []
    for shard in sorted((run_dir / "webdataset").glob("*.tar")):
        with tarfile.open(shard) as tar:
            tars.append(sorted({n.split(".", 1)[0] for n in tar.getnames()}))
    parquets = [pq.read_table(s, columns=["image_id"]).column("image_id").to_pylist()
                for s in sorted((run_dir / "hf" / "data").glob("*.parquet"))]
    return tars, parquets


def test_shards_after_a_stop_and_rerun_split_as_in_an_uninterrupted_run(tmp_path, monkeypatch):
    """Shards hold up to 100 samples, so an uninterrupted job writes one of 7; a job stopped by
    SIGTERM after a few samples used to publish its partial shard, and the rerun a second one."""
    import signal

    from synth.runner import Runner

    data = photos(tmp_path / "in", *(f"p{i}.png" for i in range(7)))
    args = ["writers=[webdataset,hf]", "writers.webdataset.maxcount=100", "writers.hf.rows_per_shard=100",
            "batch_size=1"]
    run_job(data, tmp_path / "reference", *args)

    real_commit = Runner._commit

    def commit_then_sigterm(self, sample, *rest):  # a SIGTERM (Slurm, kill) after the second sample
        real_commit(self, sample, *rest)
        if sample.index == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Runner, "_commit", commit_then_sigterm)
    stopped = run_job(data, tmp_path / "run", *args)
    assert stopped["exit_code"] == 143 and 2 <= stopped["done"] < 7
    monkeypatch.undo()
    run_job(data, tmp_path / "run", *args)
    assert shard_contents(tmp_path / "run") == shard_contents(tmp_path / "reference")

    def names(run_dir: Path) -> list[str]:
        return sorted(p.relative_to(run_dir).as_posix() for p in [*run_dir.glob("webdataset/*"), *run_dir.glob("hf/data/*")])

    assert names(tmp_path / "run") == names(tmp_path / "reference")  # no partial shard, no stray temporary file
