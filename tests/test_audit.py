"""Found by a hostile-user audit: ways a job could end with a wrong or incomplete dataset, or a
traceback instead of one line. Each test fails without the fix it names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synth.errors import ConfigError
from tests.test_robustness_run import photo, run_job


def photos(folder: Path, count: int) -> Path:
    for i in range(count):
        photo(folder / f"p{i}.png", h=40, w=48, seed=i)
    return folder


def ids_in_records(run_dir: Path) -> list[str]:
    return sorted(json.loads(line)["image_id"] for path in run_dir.glob("samples*.jsonl")
                  for line in path.read_text().splitlines())


# --- one run directory, one sharding -------------------------------------------------------------
@pytest.mark.parametrize("first, second", [
    ((), ("data.num_shards=2", "data.shard_index=0")),  # unsharded, then a shard
    (("data.num_shards=2", "data.shard_index=0"), ()),  # a shard, then unsharded
    (("data.num_shards=2", "data.shard_index=0"), ("data.num_shards=4", "data.shard_index=2")),
])
def test_a_run_directory_refuses_a_job_of_another_sharding(tmp_path, first, second):
    """Fix: rundir.check_manifest compares data.num_shards with the run directory's manifests.
    Without it the second job wrote samples-0000.jsonl (or samples.jsonl) beside the first one's:
    ids 000000 and 000002 twice across samples*.jsonl, which the README reads as one dataset."""
    data, run_dir = photos(tmp_path / "in", 4), tmp_path / "run"
    run_job(data, run_dir, "max_failure_rate=1", *first)
    before = ids_in_records(run_dir)
    with pytest.raises(ConfigError, match=r"^data\.num_shards=\d: this run directory holds the samples of a job "
                                          r"with data\.num_shards=\d \(manifest\S*\.jsonl\)"):
        run_job(data, run_dir, "max_failure_rate=1", *second)
    with pytest.raises(ConfigError, match=r"^data\.num_shards"):  # resume=false would leave the others' records
        run_job(data, run_dir, "max_failure_rate=1", "resume=false", *second)
    assert ids_in_records(run_dir) == before and len(set(before)) == len(before)


def test_shards_of_one_sharding_may_share_a_run_directory_one_after_the_other(tmp_path):
    """What the check must still allow: each shard once (the lock keeps them apart), then a resume."""
    data, run_dir = photos(tmp_path / "in", 4), tmp_path / "run"
    for index in (0, 1, 0):
        run_job(data, run_dir, "max_failure_rate=1", "data.num_shards=2", f"data.shard_index={index}")
    ids = ids_in_records(run_dir)
    assert len(ids) == len(set(ids)) >= 3


# --- a full disk while a record is appended ------------------------------------------------------
@pytest.mark.parametrize("log_name", ["samples.jsonl", "failures.jsonl"])
def test_disk_full_while_appending_a_record_is_one_output_error(tmp_path, monkeypatch, log_name):
    """Fix: rundir.JsonlLog.write raises OutputError naming the file. Without it the raw OSError
    left the job with a traceback, exit 1 and metadata.json's exit_code 1 (README: exit 3)."""
    import errno
    import os

    from synth.errors import OutputError
    from tests.conftest import read_summary

    class FullFile:
        def __init__(self, file):
            self.file = file

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a flush on a full disk: no file name

        def __getattr__(self, name):
            return getattr(self.file, name)

    import synth.rundir as rundir
    real_init = rundir.JsonlLog.__init__

    def init(self, path, fresh=False):
        real_init(self, path, fresh)
        if self.path.name == log_name:
            self._file = FullFile(self._file)

    monkeypatch.setattr(rundir.JsonlLog, "__init__", init)
    data, run_dir = photos(tmp_path / "in", 2), tmp_path / "run"
    if log_name == "failures.jsonl":
        photo(data / "p2.png", h=4, w=4)  # fails at load (min_side)
    with pytest.raises(OutputError, match=rf"^cannot write {run_dir}/{log_name}: No space left on device$"):
        run_job(data, run_dir, "max_failure_rate=1")
    assert read_summary(run_dir)["exit_code"] == 3


# --- Ctrl-C outside the pipeline's handler -------------------------------------------------------
def test_a_second_ctrl_c_records_exit_130_in_metadata_json(tmp_path, monkeypatch):
    """Fix: Runner._process records a KeyboardInterrupt (the second Ctrl-C, which the handler
    gives back to Python) as 130. Without it metadata.json said exit_code 1, "stopped by an
    error", while the process ended by SIGINT (130)."""
    import synth.runner as runner
    from tests.conftest import read_summary

    real_commit = runner.Runner._commit

    def commit(self, sample, written, step):
        if sample.index == 1:
            raise KeyboardInterrupt  # as the second Ctrl-C arrives
        real_commit(self, sample, written, step)

    monkeypatch.setattr(runner.Runner, "_commit", commit)
    data, run_dir = photos(tmp_path / "in", 3), tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_job(data, run_dir)
    summary = read_summary(run_dir)
    assert summary["exit_code"] == 130 and summary["exit_reason"].startswith("aborted by a second SIGINT")


def test_ctrl_c_before_processing_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """Fix: app.main turns a KeyboardInterrupt (Ctrl-C while listing, checking the manifest or
    the resume state, before the handler is installed, or a second Ctrl-C) into one line and
    exit 130. Without it: a traceback through Hydra and the resume check's thread pool."""
    import sys

    import synth.app as app
    import synth.runner as runner

    def interrupted(self):
        raise KeyboardInterrupt  # Ctrl-C in the middle of the resume check

    monkeypatch.setattr(runner.Runner, "_resume_state", interrupted)
    data, run_dir = photos(tmp_path / "in", 1), tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["synth", f"hydra.run.dir={run_dir}", "data=folder", f"data.path={data}",
                                      "logger=none", "num_workers=1"])
    with pytest.raises(SystemExit) as stopped:
        app.cli()
    err = capsys.readouterr().err
    assert stopped.value.code == 130
    assert err.strip().splitlines() == ["error: interrupted by SIGINT; files are written atomically: rerun the "
                                        "same command to resume"], err
    assert not (run_dir / "synth.lock").exists()


# --- data=csv: rows the csv module or the OS cannot take -----------------------------------------
def csv_job(tmp_path: Path, table: str) -> dict:
    from synth.app import build_runner
    from tests.conftest import compose_config

    photos(tmp_path, 2)
    (tmp_path / "pairs.csv").write_text(table)
    cfg = compose_config("data=csv", f"data.path='{tmp_path / 'pairs.csv'}'", "logger=none", "num_workers=1",
                         "max_failure_rate=1")
    return build_runner(cfg, tmp_path / "run").run()


def test_csv_path_with_a_nul_byte_fails_its_sample_only(tmp_path):
    """Fix: ImageFolder.entries treats a path the OS refuses (ValueError: embedded null byte) like
    an unreadable one. Without it the manifest's stat raised ValueError: a traceback, exit 1."""
    summary = csv_job(tmp_path, "image_path\np0.png\np\x001.png\np1.png\n")
    assert (summary["done"], summary["failed"]) == (2, 1)
    [failure] = summary["failures"]
    assert (failure["id"], failure["stage"]) == ("000001", "load")


def test_csv_field_over_the_csv_limit_is_one_config_error(tmp_path):
    """Fix: CsvSource reports csv.Error as a ConfigError naming the file and line. Without it
    ``_csv.Error: field larger than field limit (131072)`` was a traceback, exit 1."""
    with pytest.raises(ConfigError, match=r"^data\.path=\S+pairs\.csv: line 3: field larger than field limit"):
        csv_job(tmp_path, f'image_path,note\np0.png,a\np1.png,"{"x" * 200_000}"\n')


# --- writer.format changed on resume -------------------------------------------------------------
def test_a_sample_that_fails_after_a_format_change_leaves_none_of_its_earlier_files(tmp_path):
    """Fix: FolderWriter.discard removes the sample's files in every format. Without it a rerun
    with writer.format=jpg removed only .jpg names: the earlier run's .png images of a sample
    that now failed stayed (README: a failed sample leaves no files, from this run or an earlier
    one). A resume with another format is refused (test_settings); starting over is not."""
    from tests.test_robustness_run import files_of

    data, run_dir = photos(tmp_path / "in", 2), tmp_path / "run"
    run_job(data, run_dir)
    assert len(files_of(run_dir, "000000")) > 5
    summary = run_job(data, run_dir, "writer.format=jpg", "resume=false", "data.min_side=1000", "max_failure_rate=1")
    assert sorted(f["id"] for f in summary["failures"]) == ["000000", "000001"]
    assert files_of(run_dir, "000000") == files_of(run_dir, "000001") == []


# --- a mask folder inside data.path --------------------------------------------------------------
def mask(path: Path) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((40, 48), np.uint8)
    m[8:32, 10:38] = 255
    Image.fromarray(m).save(path)
    return path


def test_a_mask_folder_inside_data_path_is_not_input(tmp_path):
    """Fix: app.build_runner tells the source to skip segmentation.path when it lies inside
    data.path. Without it the masks were listed as photos, each found itself as its own mask
    (ds/masks/p0.png -> <masks>/p0.png) and became a sample: 4 samples of 2 photos, exit 0."""
    data = photos(tmp_path / "ds", 2)
    for i in range(2):
        mask(data / "masks" / f"p{i}.png")
    summary = run_job(data, tmp_path / "run", "segmentation=mask_folder", f"segmentation.path='{data / 'masks'}'")
    assert (summary["total"], summary["done"]) == (2, 2)
    from tests.conftest import read_samples
    assert sorted(Path(r["source"]).name for r in read_samples(tmp_path / "run")) == ["p0.png", "p1.png"]


def test_masks_beside_the_photos_leave_the_photos_listed(tmp_path):
    """What the fix must not do: a mask folder that is data.path itself is not skipped (that
    would list no input at all)."""
    data = photos(tmp_path / "ds", 2)
    for i in range(2):
        mask(data / f"p{i}_mask.tif")  # not an input: data.extensions=[.png]
    summary = run_job(data, tmp_path / "run", "data.extensions=[.png]", "segmentation=mask_folder",
                      f"segmentation.path='{data}'", "segmentation.suffix=_mask.tif")
    assert (summary["total"], summary["done"]) == (2, 2)


def test_png_masks_beside_png_photos_are_not_listed_as_photos(tmp_path):
    """Fix: app.skip_mask_folders has the listing leave out the files ending with
    segmentation.suffix when the masks lie beside the photos (ImageFolder.skip_names_ending).
    Without it each p0_mask.png was a photo of its own, whose mask p0_mask_mask.png did not exist:
    half the samples failed, exit 1, and there was no data.extensions that listed only the photos."""
    data = photos(tmp_path / "ds", 2)
    photos(data / "sub", 1)  # recursive: sub/p0.png with sub/p0_mask.png
    for name in ("p0", "p1", "sub/p0"):
        mask(data / f"{name}_mask.png")
    summary = run_job(data, tmp_path / "run", "segmentation=mask_folder", f"segmentation.path='{data}'",
                      "segmentation.suffix=_mask.png")
    assert (summary["total"], summary["done"], summary["failed"]) == (3, 3, 0)
    from tests.conftest import read_samples
    assert sorted(Path(r["source"]).relative_to(data).as_posix() for r in read_samples(tmp_path / "run")) == [
        "p0.png", "p1.png", "sub/p0.png"]


# --- a writer.path shared by jobs over different inputs ------------------------------------------
@pytest.mark.parametrize("writer", ["webdataset", "hf"])
def test_a_writer_path_holding_another_inputs_samples_is_refused(tmp_path, writer):
    """Fix: ShardedWriter.open compares the source recorded with each id in the shards of
    writer.path with this job's listing. Without it a second job over other photos found its ids
    "complete" in the first job's shards: 0 done, 2 already complete, exit 0, and its photos were
    in no shard."""
    shared = tmp_path / "dataset"
    first = photos(tmp_path / "first", 2)
    run_job(first, tmp_path / "run1", f"writer={writer}", f"writer.path={shared}")
    other = tmp_path / "other"
    for i in range(2):
        photo(other / f"q{i}.png", h=40, w=48, seed=10 + i)
    with pytest.raises(ConfigError, match=rf"^{shared}\S*: sample 000000 was made from \S*first/p0\.png, but "
                                          rf"this job's 000000 is q0\.png"):
        run_job(other, tmp_path / "run2", f"writer={writer}", f"writer.path={shared}")


def test_the_same_inputs_spelled_another_way_still_resume_from_a_shared_writer_path(tmp_path, monkeypatch):
    """What the check must allow: the same photos, data.path relative in one job and absolute in
    the next (another run directory, one writer.path): every sample is complete, none is written twice."""
    shared = tmp_path / "dataset"
    photos(tmp_path / "in", 2)
    monkeypatch.chdir(tmp_path)
    run_job(Path("in"), tmp_path / "run1", "writer=webdataset", f"writer.path={shared}")
    again = run_job(tmp_path / "in", tmp_path / "run2", "writer=webdataset", f"writer.path={shared}")
    assert (again["done"], again["skipped_complete"]) == (0, 2)


# --- nothing to list -----------------------------------------------------------------------------
def test_a_run_directory_that_is_data_path_is_refused(tmp_path):
    """Fix: ImageFolder.paths refuses a data.path that is the run directory (skipped as our own
    outputs). Without it every photo there was skipped: 0 done of 0, exit 0, an empty dataset."""
    data = photos(tmp_path / "photos", 2)
    with pytest.raises(ConfigError, match=rf"^data\.path={data}: is the run directory \(hydra\.run\.dir\)"):
        run_job(data, data)


def test_a_listing_without_images_is_refused(tmp_path):
    """Fix: an empty listing (no file with one of data.extensions) is a ConfigError, exit 2.
    Without it the job reported 0 done of 0 and exit 0 (e.g. a folder of .heic photos)."""
    data = tmp_path / "photos"
    data.mkdir()
    (data / "IMG_0001.heic").write_bytes(b"not listed")
    with pytest.raises(ConfigError, match=rf"^data\.path={data}: no images \(data\.extensions: \.jpg, "):
        run_job(data, tmp_path / "run")
    summary = run_job(photos(data, 1), tmp_path / "run", "data.num_shards=2", "data.shard_index=1")
    assert summary["total"] == 0  # an empty shard of a non-empty listing is fine


def test_a_csv_without_rows_is_refused(tmp_path):
    """Fix: as an empty folder, a CSV with a header only is a ConfigError (was 0 of 0, exit 0)."""
    with pytest.raises(ConfigError, match=r"^data\.path=\S+pairs\.csv: no rows below the header$"):
        csv_job(tmp_path, "image_path,note\n")


def csv_outputs(tmp_path: Path) -> list[list[str]]:
    import csv

    with open(tmp_path / "run" / "pairs_with_outputs.csv", newline="") as f:
        return list(csv.reader(f))


def test_a_blank_line_in_the_csv_does_not_shift_the_output_column(tmp_path):
    """Fix: CsvSource.paths and write_outputs count rows alike (blank lines are not rows). Without
    it the ids counted the blank line (a failed sample) while the output table (DictReader) skipped
    it: the row of p1.png got the blank line's (failed, empty) output and the row of p2.png the
    composite of p1.png."""
    photos(tmp_path, 3)
    summary = csv_job(tmp_path, "image_path,note\np0.png,a\n\np1.png,b\np2.png,c\n")
    assert (summary["done"], summary["failed"]) == (3, 0)
    from tests.conftest import read_samples
    source_of = {r["image_id"]: Path(r["source"]).name for r in read_samples(tmp_path / "run")}
    rows = csv_outputs(tmp_path)
    assert rows[0] == ["image_path", "note", "output_image_path"]
    for image, note, output in rows[1:]:
        assert source_of[Path(output).name.split("_")[0]] == image, rows


def test_csv_columns_that_share_a_name_keep_their_values(tmp_path):
    """Fix: the output table copies cells by position. Without it (DictWriter) the last of two
    columns named ``note`` overwrote the first in every row."""
    csv_job(tmp_path, "image_path,note,note\np0.png,first,second\n")
    rows = csv_outputs(tmp_path)
    assert rows[0] == ["image_path", "note", "note", "output_image_path"]
    assert rows[1][:3] == ["p0.png", "first", "second"] and rows[1][3].endswith("000000_output.png")


@pytest.mark.slow
def test_a_second_ctrl_c_in_a_real_job_is_one_line_130_and_says_so_in_metadata_json(tmp_path):
    """End to end (both Ctrl-C fixes above): the gate is never opened, only the abort ends the job."""
    import signal

    from tests.conftest import read_summary
    from tests.test_guarantees import start_gated_job

    job = start_gated_job(tmp_path, count=2)
    job.stop(signal.SIGINT)
    job.send(signal.SIGINT)
    out, err = job.communicate(timeout_s=60)
    assert job.proc.returncode == 130, out + err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted by SIGINT"), err
    assert read_summary(job.run_dir)["exit_code"] == 130


# --- a run directory that is a broken symbolic link ----------------------------------------------
def test_a_run_directory_that_is_a_broken_symlink_is_one_line_and_exit_3(tmp_path):
    """Fix: app's output-directory check names a dangling symlink. Without it the check looked
    past the link (it does not exist) and Hydra's makedirs raised FileExistsError: a traceback, exit 1."""
    import subprocess
    import sys

    data = photos(tmp_path / "in", 1)
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone" / "run")
    for run_dir in (link, link / "sub"):
        proc = subprocess.run([sys.executable, "-m", "synth", f"hydra.run.dir={run_dir}", "data=folder",
                               f"data.path={data}", "logger=none"], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 3, proc.stderr
        assert proc.stderr.strip().splitlines() == [f"error: cannot write to {run_dir}: {link} is a symbolic link "
                                                    f"to {tmp_path / 'gone' / 'run'}, which does not exist"], proc.stderr


# --- data.extensions given as one string ---------------------------------------------------------
def test_data_extensions_as_one_string_is_that_one_extension(tmp_path):
    """Fix: ImageFolder takes ``data.extensions=.png`` as ``[.png]`` and refuses a non-list in one
    line. Without it the string was iterated as the extensions ".", ".p", ".n", ".g": no image
    listed (0 of 0, exit 0), and ``data.extensions=null`` was "'NoneType' object is not iterable"."""
    data = photos(tmp_path / "in", 2)
    summary = run_job(data, tmp_path / "run", "data.extensions=.png")
    assert summary["total"] == 2
    with pytest.raises(ConfigError, match=r"^data\.extensions=None: a list of file extensions, e\.g\. "):
        run_job(data, tmp_path / "run2", "data.extensions=null")


# --- switches that are not true or false ---------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("resume=no", r"^resume=no: true or false"),
    ("data.recursive=maybe", r"^data\.recursive=maybe: true or false"),
    ("writer.intermediates=maybe", r"^writer\.intermediates=maybe: true or false"),
    ("writers=[webdataset]", None),
])
def test_a_switch_that_is_not_true_or_false_is_refused(tmp_path, override, message):
    """Fix: resume, data.recursive and writer(s).intermediates must be booleans. Without it
    ``resume=no`` (a string for Hydra) counted as true: the job resumed, keeping every earlier
    sample, where the user asked to start over; ``maybe`` was taken as true everywhere."""
    data = photos(tmp_path / "in", 1)
    if message is None:  # the webdataset writer's own switch, under its own key
        override, message = "writers.webdataset.intermediates=no", r"^writers\.webdataset\.intermediates=no: true"
        with pytest.raises(ConfigError, match=message):
            run_job(data, tmp_path / "run", "writers=[webdataset]", override)
        return
    with pytest.raises(ConfigError, match=message):
        run_job(data, tmp_path / "run", override)
