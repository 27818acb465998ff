"""Run behaviour under faults: bad samples fail alone and leave nothing behind, the exit status
says when too many failed, SIGTERM stops cleanly and resumes, an unwritable output is one line.

Jobs run in-process (compose_config + build_runner) on tiny generated images; only the SIGTERM
and the unwritable-directory tests start a real ``python -m synth``.

Tests run as root, for whom ``chmod`` does not make a directory unwritable; an output path
*under a regular file* (ENOTDIR) and an injected ENOSPC stand in for "not writable" and
"disk full".
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synth.app import build_runner, format_summary
from synth.errors import ConfigError, OutputError
from synth.faults import exit_status
from synth.loggers import NullLogger
from tests.conftest import read_samples, compose_config, read_summary, run_synth
from tests.guarantee_stages import GatedJob, tests_on_path

def photo(path: Path, h: int = 48, w: int = 64, seed: int = 0, mode: str = "RGB") -> Path:
    """A small smooth image with a brighter centre (GrabCut finds a subject in it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    centre = np.exp(-(((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2))
    base = rng.integers(40, 90, 3)
    rgb = np.clip(base + 150 * centre[..., None] + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).convert(mode).save(path)
    return path


def run_job(data_dir: Path, run_dir: Path, *overrides: str) -> dict:
    """``python -m synth data=folder data.path=DATA_DIR overrides...`` in this process."""
    cfg = compose_config("data=folder", f"data.path='{data_dir}'", "logger=none", "num_workers=1", *overrides)
    return build_runner(cfg, run_dir).run()


def files_of(run_dir: Path, sample_id: str) -> list[Path]:
    return sorted(p for p in run_dir.rglob(f"*{sample_id}_*") if p.is_file())


def assert_no_partial_files(run_dir: Path) -> None:
    """Every id with any file has its metadata (is complete); no temporary files are left."""
    assert not list(run_dir.rglob(".*.tmp"))
    for path in run_dir.rglob("*_*.*"):
        sample_id = path.name.split("_")[0]
        if sample_id.isdigit():
            assert (run_dir / "outputs" / f"{sample_id}_metadata.json").is_file(), f"partial: {path}"


# --- bad samples, failures.jsonl, exit status ----------------------------------------------------
def test_bad_files_fail_alone_with_reasons_in_failures_jsonl(tmp_path):
    data = tmp_path / "in"
    for i in range(3):
        photo(data / f"good{i}.png", seed=i)
    (data / "empty.jpg").write_bytes(b"")
    (data / "notes.png").write_text("not a picture")
    Image.new("RGB", (1, 1)).save(data / "dot.png")
    summary = run_job(data, tmp_path / "run")

    assert summary["done"] == 3 and summary["failed"] == 3 and summary["total"] == 6
    lines = [json.loads(x) for x in (tmp_path / "run" / "failures.jsonl").read_text().splitlines()]
    assert lines == [{k: f[k] for k in ("id", "path", "stage", "error")} for f in summary["failures"]]
    by_name = {Path(f["path"]).name: f for f in lines}
    assert set(by_name) == {"empty.jpg", "notes.png", "dot.png"} and {f["stage"] for f in lines} == {"load"}
    assert "empty file" in by_name["empty.jpg"]["error"] and "text" in by_name["notes.png"]["error"]
    assert "data.min_side" in by_name["dot.png"]["error"]
    for failure in lines:
        assert files_of(tmp_path / "run", failure["id"]) == []
    # half failed: above the default max_failure_rate (0.1), so the job exits 1 and says why
    assert summary["exit_code"] == 1
    assert summary["exit_reason"] == "failure rate 50.0% (3 of 6) exceeds max_failure_rate=0.1"
    assert "exit 1: failure rate 50.0%" in format_summary(summary)


def test_exit_status_rules():
    assert exit_status(done=9, failed=1, todo=10, max_failure_rate=0.1) == (0, None)
    assert exit_status(done=8, failed=2, todo=10, max_failure_rate=0.1)[0] == 1
    assert exit_status(done=0, failed=3, todo=3, max_failure_rate=1.0) == (1, "every sample failed (3 of 3)")
    assert exit_status(done=0, failed=0, todo=0, max_failure_rate=0.0) == (0, None)
    code, reason = exit_status(done=2, failed=0, todo=10, max_failure_rate=0.1, stopped=signal.SIGTERM)
    assert code == 143 and "interrupted by SIGTERM with 8 of 10 samples not processed" in reason
    with pytest.raises(ConfigError, match="max_failure_rate=1.5"):
        build_runner(compose_config("logger=none", "max_failure_rate=1.5"), Path("/nonexistent"))


def test_every_sample_failed_exits_non_zero_even_when_failures_are_allowed(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.png").write_text("no")
    summary = run_job(data, tmp_path / "run", "max_failure_rate=1.0")
    assert summary["exit_code"] == 1 and summary["exit_reason"] == "every sample failed (1 of 1)"


def test_failed_write_leaves_no_partial_files(tmp_path, monkeypatch):
    import synth.writers.folder as folder

    real = folder.atomic_write_json

    def metadata_fails_for_one(path, obj):  # the very last file of sample 000001
        if path.name == "000001_metadata.json":
            raise ValueError("simulated encoder bug")
        real(path, obj)

    monkeypatch.setattr(folder, "atomic_write_json", metadata_fails_for_one)
    data = tmp_path / "in"
    for i in range(3):
        photo(data / f"p{i}.png", seed=i)
    summary = run_job(data, tmp_path / "run", "max_failure_rate=1.0")
    assert summary["done"] == 2 and [(f["id"], f["stage"]) for f in summary["failures"]] == [("000001", "write")]
    assert files_of(tmp_path / "run", "000001") == []  # its stage files were written, then removed
    assert len(files_of(tmp_path / "run", "000002")) > 5
    assert_no_partial_files(tmp_path / "run")


# --- input kinds through a whole run -------------------------------------------------------------
def test_names_with_spaces_and_non_ascii(tmp_path):
    data = tmp_path / "my photos é"
    names = ["a photo ü 写真.png", "plain.png"]
    for i, name in enumerate(names):
        photo(data / name, seed=i)
    raw = os.fsencode(data) + b"/not-utf8-\xff.png"  # a byte name that is not UTF-8 at all
    photo(Path(os.fsdecode(raw)), seed=5)
    summary = run_job(data, tmp_path / "run")
    assert summary["done"] == 3 and summary["failed"] == 0
    sources = {r["image_id"]: r["source"] for r in read_samples(summary["run_dir"])}
    assert sorted(Path(s).name for s in sources.values()) == sorted(names + [os.fsdecode(b"not-utf8-\xff.png")])
    for sample_id in sources:
        assert (tmp_path / "run" / "outputs" / f"{sample_id}_output.png").is_file()
    json.loads((tmp_path / "run" / "metadata.json").read_text())  # still valid JSON


def test_duplicate_stems_in_sub_folders_keep_distinct_ids_and_masks(tmp_path):
    data, masks = tmp_path / "in", tmp_path / "masks"
    photo(data / "day" / "a.png", seed=1)
    photo(data / "night" / "a.png", seed=2)
    left, right = np.zeros((48, 64), np.uint8), np.zeros((48, 64), np.uint8)
    left[:, :32], right[:, 32:] = 255, 255
    (masks / "day").mkdir(parents=True)
    (masks / "night").mkdir()
    Image.fromarray(left).save(masks / "day" / "a.png")  # masks mirror the input sub-folders
    Image.fromarray(right).save(masks / "night" / "a.png")
    summary = run_job(data, tmp_path / "run", "segmentation=mask_folder", f"segmentation.path='{masks}'")
    assert summary["done"] == 2
    by_id = {r["image_id"]: r for r in read_samples(summary["run_dir"])}
    assert sorted(by_id) == ["000000", "000001"]
    assert [Path(by_id[i]["source"]).parent.name for i in ("000000", "000001")] == ["day", "night"]
    out = tmp_path / "run"
    day_mask = np.asarray(Image.open(out / by_id["000000"]["mask"]))
    night_mask = np.asarray(Image.open(out / by_id["000001"]["mask"]))
    assert day_mask[:, :30].min() == 255 and day_mask[:, 34:].max() == 0
    assert night_mask[:, :30].max() == 0 and night_mask[:, 34:].min() == 255
    for sample_id in by_id:  # each input kept as its own file
        assert np.array_equal(np.asarray(Image.open(out / "outputs" / f"{sample_id}_input.png")),
                              np.asarray(Image.open(by_id[sample_id]["source"])))


def test_large_image_is_resized_with_its_mask_and_every_output(tmp_path):
    data, masks = tmp_path / "in", tmp_path / "masks"
    photo(data / "big.png", h=120, w=180)
    masks.mkdir()
    full_mask = np.zeros((120, 180), np.uint8)
    full_mask[30:90, 45:135] = 255
    Image.fromarray(full_mask).save(masks / "big.png")  # at the original size
    summary = run_job(data, tmp_path / "run", "data.max_side=60", "segmentation=mask_folder",
                      f"segmentation.path='{masks}'")
    record = read_samples(summary["run_dir"])[0]
    assert (record["width"], record["height"]) == (60, 40)
    assert record["params"]["load"]["resized_to"] == [60, 40] and record["params"]["load"]["width"] == 180
    for path in (tmp_path / "run").rglob("000000_*.png"):
        assert Image.open(path).size == (60, 40), path
    mask = np.asarray(Image.open(tmp_path / "run" / record["mask"]))
    assert mask[20, 30] == 255 and mask[2, 2] == 0 and mask[20, 10] == 0


def test_rgba_inputs_with_segmentation_alpha(tmp_path):
    data = tmp_path / "in"
    photo(data / "a_cutout.png", mode="RGBA")
    rgba = np.asarray(Image.open(data / "a_cutout.png")).copy()
    rgba[..., 3] = 0
    rgba[10:40, 20:44, 3] = 255
    Image.fromarray(rgba, "RGBA").save(data / "a_cutout.png")
    photo(data / "b_plain.jpg")
    summary = run_job(data, tmp_path / "run", "segmentation=alpha", "max_failure_rate=1.0")
    assert summary["done"] == 1 and summary["failures"][0]["stage"] == "segmentation"
    assert "no alpha channel" in summary["failures"][0]["error"]
    mask = np.asarray(Image.open(tmp_path / "run" / read_samples(summary["run_dir"])[0]["mask"]))
    assert np.array_equal(mask, rgba[..., 3])


# --- the output location -------------------------------------------------------------------------
@pytest.mark.slow
def test_output_directory_under_a_file_is_one_clear_line(tmp_path):
    """Root can write anywhere chmod allows, so the directory is made impossible instead."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file")
    run_dir = blocker / "run"
    proc = subprocess.run([sys.executable, "-m", "synth", f"hydra.run.dir={run_dir}", "logger=none"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 3
    assert proc.stderr.strip() == f"error: cannot write to {run_dir}: {blocker} is not a directory"
    assert "Traceback" not in proc.stderr + proc.stdout


def test_output_that_breaks_mid_run_stops_with_one_error(tmp_path):
    data = tmp_path / "in"
    for i in range(3):
        photo(data / f"p{i}.png", seed=i)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "stage_1").write_text("a file where a directory should be")
    with pytest.raises(OutputError, match=rf"cannot write {run_dir}/stage_1\S*: (File exists|Not a directory)$"):
        run_job(data, run_dir)
    assert_no_partial_files(run_dir)
    assert read_summary(run_dir)["exit_reason"].startswith("cannot write")


def disk_full(path, _data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def one_photo_runner(tmp_path: Path):
    """The default job, in this process, over one small photo into tmp_path/run."""
    photo(tmp_path / "in" / "p.png")
    return build_runner(compose_config("data=folder", f"data.path='{tmp_path / 'in'}'", "logger=none"), tmp_path / "run")


class FinishRecorder(NullLogger):
    """Records (exit code, summary) of every finish() call."""

    def __init__(self):
        self.finished = []

    def finish(self, summary, exit_code):
        self.finished.append((exit_code, summary))


def test_disk_full_stops_with_one_error_naming_the_path(tmp_path, monkeypatch):
    import synth.files as files

    runner = one_photo_runner(tmp_path)
    monkeypatch.setattr(files, "atomic_write", disk_full)
    monkeypatch.setattr("synth.writers.folder.atomic_write", disk_full)
    with pytest.raises(OutputError, match=rf"cannot write {tmp_path}/run/\S+: No space left on device"):
        runner.run()
    assert_no_partial_files(tmp_path / "run")


def test_unwritable_summary_still_closes_the_writers_and_finishes_the_logger(tmp_path, monkeypatch):
    """metadata.json fails (disk full) after every sample was written: the writers are still
    closed and the logger still hears the end, with the output-error exit code."""
    runner = one_photo_runner(tmp_path)
    runner.logger = FinishRecorder()
    closed = []
    real_close = runner.writers[0].close
    runner.writers[0].close = lambda: closed.append(1) or real_close()
    monkeypatch.setattr("synth.runner.atomic_write_json", disk_full)  # the run's metadata.json only
    message = f"cannot write {tmp_path}/run/metadata.json: No space left on device"
    with pytest.raises(OutputError, match=f"^{message}$"):
        runner.run()
    assert closed == [1]
    [(exit_code, summary)] = runner.logger.finished
    assert (exit_code, summary["exit_code"], summary["exit_reason"]) == (3, 3, message)
    assert (tmp_path / "run/outputs/000000_metadata.json").is_file()  # the sample itself was written


def test_a_logger_that_fails_to_start_still_gets_a_summary_and_finish(tmp_path):
    class BrokenStart(FinishRecorder):
        def start(self, config, run_dir):
            raise RuntimeError("logger server unreachable")

    runner = one_photo_runner(tmp_path)
    runner.logger = BrokenStart()
    with pytest.raises(RuntimeError, match="logger server unreachable"):
        runner.run()
    assert [exit_code for exit_code, _ in runner.logger.finished] == [1]
    summary = read_summary(tmp_path / "run")
    assert (summary["exit_code"], summary["done"]) == (1, 0)


def test_a_reader_that_goes_away_costs_the_console_log_lines_not_a_traceback_each(tmp_path):
    """``synth ... | head -1``: stdout's reader is gone before the job logs anything. The job still
    ends 0 with its dataset, the log file keeps every line, and stderr has no logging tracebacks."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "synth", f"hydra.run.dir={run_dir}", "logger=none", "data.limit=2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()  # the reader goes away at once
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, stderr
    assert "Logging error" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert read_summary(run_dir)["done"] == 2
    assert "samples to process" in (run_dir / "app.log").read_text()  # Hydra names it after the task


# --- signals -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_stops_cleanly_and_a_rerun_resumes(tmp_path):
    """Samples 0 and 1 pass; sample 2 is held in flight until the SIGTERM has been taken."""
    data, run_dir = tmp_path / "in", tmp_path / "run"
    n = 24
    for i in range(n):
        photo(data / f"p{i:02d}.png", h=32, w=40, seed=i)
    args = ["data=folder", f"data.path={data}", "batch_size=2", "num_workers=1"]
    job = GatedJob(tmp_path, run_dir, *args, gate_from=2)
    job.wait_until_held()
    job.stop(signal.SIGTERM)
    job.open_gate()
    out, err = job.communicate()

    assert job.proc.returncode == 143, out + err
    summary = read_summary(run_dir)
    assert 0 < summary["done"] < n and summary["failed"] == 0 and summary["exit_code"] == 143
    assert summary["exit_reason"].startswith("interrupted by SIGTERM")
    assert "interrupted by SIGTERM" in out and "Traceback" not in err
    assert len(list((run_dir / "outputs").glob("*_metadata.json"))) == summary["done"]
    assert_no_partial_files(run_dir)

    run_synth(run_dir, *args, "captioning._target_=guarantee_stages.Gated",  # no gate: the template caption
              env=tests_on_path())
    again = read_summary(run_dir)
    assert again["skipped_complete"] == summary["done"] and again["done"] == n - summary["done"]
    assert len(list((run_dir / "outputs").glob("*_metadata.json"))) == n
