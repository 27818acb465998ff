"""The guarantees users rely on, as behaviours they would notice, through public entry points only
(``build_runner(...).run()``, ``python -m synth``, the stages): they must hold whatever the runner
looks like inside. Each test names the one-line source change it exists to catch (README,
"Development": the mutation table).

* resume: a failed sample leaves no files and is redone; a lost ``{id}_metadata.json`` is redone;
  ``resume=false`` redoes everything;
* a file too large for the filesystem (EFBIG) fails its sample, not the run;
* the exit status of the process equals ``exit_code`` in ``metadata.json`` on every path;
* SIGINT stops cleanly with 130, a second Ctrl-C aborts at once;
* writers: webp / jpg, size-based shard rollover, one ``writer.path`` shared by shard jobs;
* shadow maths in linear light, and recorded parameters that were really applied.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synth.sample import Sample
from tests.conftest import read_samples, built_stage, read_summary, run_synth
from tests.guarantee_stages import GatedJob, tests_on_path
from tests.test_robustness_run import assert_no_partial_files, files_of, photo, run_job


def photos(folder: Path, count: int, h: int = 40, w: int = 48) -> Path:
    for i in range(count):
        photo(folder / f"p{i}.png", h=h, w=w, seed=i)
    return folder


# --- resume and cleanup --------------------------------------------------------------------------
def test_a_sample_whose_later_writer_fails_leaves_no_folder_files_and_a_rerun_redoes_it(tmp_path, monkeypatch):
    """Catches: the runner skipping the other writers' cleanup (``discard``) when a later writer
    fails. The folder writer wrote sample 1 completely, then the tar writer failed on it: the
    sample is reported failed, so its folder files must go, or resume would skip it forever."""
    from synth.writers.webdataset import WebDatasetWriter

    data, run_dir = photos(tmp_path / "in", 3), tmp_path / "run"
    real_row = WebDatasetWriter._row

    def fails_on_sample_1(self, sample, images):
        if sample.id == "000001":
            raise ValueError("simulated tar writer bug")
        return real_row(self, sample, images)

    monkeypatch.setattr(WebDatasetWriter, "_row", fails_on_sample_1)
    first = run_job(data, run_dir, "writers=[webdataset]", "max_failure_rate=1.0")
    assert [(f["id"], f["stage"]) for f in first["failures"]] == [("000001", "write")]
    assert files_of(run_dir, "000001") == []
    assert len(files_of(run_dir, "000000")) > 5
    assert_no_partial_files(run_dir)

    monkeypatch.setattr(WebDatasetWriter, "_row", real_row)
    again = run_job(data, run_dir, "writers=[webdataset]")
    assert (again["skipped_complete"], again["done"], again["failed"]) == (2, 1, 0)
    assert (run_dir / "outputs" / "000001_metadata.json").is_file()


def test_a_sample_whose_metadata_was_lost_is_redone(tmp_path):
    """Catches: the folder writer's completeness check looking at the composite (or any file
    but ``outputs/{id}_metadata.json``, which is written last)."""
    data, run_dir = photos(tmp_path / "in", 2), tmp_path / "run"
    run_job(data, run_dir)
    (run_dir / "outputs" / "000001_metadata.json").unlink()
    kept = (run_dir / "outputs" / "000000_metadata.json").stat().st_ino
    again = run_job(data, run_dir)
    assert (again["skipped_complete"], again["done"]) == (1, 1)
    assert (run_dir / "outputs" / "000000_metadata.json").stat().st_ino == kept  # the other one untouched
    assert (run_dir / "outputs" / "000001_metadata.json").is_file()


def test_resume_false_with_only_the_folder_writer_redoes_every_sample(tmp_path):
    """Catches: ``resume=false`` ignored (then every sample looks complete and nothing is redone)."""
    data, run_dir = photos(tmp_path / "in", 2), tmp_path / "run"
    run_job(data, run_dir)
    outputs = sorted((run_dir / "outputs").glob("*_output.png"))
    before = {p: p.stat().st_ino for p in outputs}  # files are replaced by rename: a new inode
    again = run_job(data, run_dir, "resume=false")
    assert (again["skipped_complete"], again["done"]) == (0, 2)
    assert all(p.stat().st_ino != ino for p, ino in before.items())


def test_a_file_too_large_for_the_filesystem_fails_its_sample_not_the_run(tmp_path, monkeypatch):
    """EFBIG is the sample's fault (its image is too big), unlike ENOSPC, which stops the run."""
    import synth.writers.folder as folder

    real = folder.atomic_write

    def too_big_for_sample_1(path, data):
        if path.name.startswith("000001_"):
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))
        real(path, data)

    monkeypatch.setattr(folder, "atomic_write", too_big_for_sample_1)
    data, run_dir = photos(tmp_path / "in", 3), tmp_path / "run"
    summary = run_job(data, run_dir, "max_failure_rate=0.5")
    assert (summary["done"], summary["exit_code"]) == (2, 0)
    [failure] = summary["failures"]
    assert (failure["id"], failure["stage"]) == ("000001", "write") and "File too large" in failure["error"]
    assert files_of(run_dir, "000001") == []


# --- the exit status equals metadata.json's exit_code on every path --------------------------------
def job(tmp_path: Path, *overrides: str, run: str = "run") -> tuple[subprocess.CompletedProcess, dict | None]:
    """``python -m synth`` over tmp_path/in into tmp_path/RUN: (process, metadata.json or None)."""
    run_dir = tmp_path / run
    proc = run_synth(run_dir, "data=folder", f"data.path={tmp_path / 'in'}", "num_workers=1", *overrides,
                     check=False, env=tests_on_path())
    summary = read_summary(run_dir) if (run_dir / "metadata.json").is_file() else None
    return proc, summary


@pytest.mark.slow
def test_exit_0_and_1_agree_with_metadata(tmp_path):
    photos(tmp_path / "in", 1)
    (tmp_path / "in" / "broken.png").write_text("not a picture")
    proc, summary = job(tmp_path)  # 1 of 2 failed: above max_failure_rate
    assert (proc.returncode, summary["exit_code"]) == (1, 1), proc.stderr
    proc, summary = job(tmp_path, "max_failure_rate=1.0", run="tolerant")
    assert (proc.returncode, summary["exit_code"]) == (0, 0), proc.stderr


@pytest.mark.slow
def test_exit_3_for_an_output_error_agrees_with_metadata(tmp_path):
    photos(tmp_path / "in", 1)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "stage_1").write_text("a file where the writer needs a directory")
    proc, summary = job(tmp_path)
    assert proc.returncode == 3 and proc.stderr.startswith("error: cannot write"), proc.stderr
    assert summary["exit_code"] == 3


def test_an_output_error_while_closing_a_writer_is_in_metadata(tmp_path, monkeypatch):
    """Catches: metadata.json written before the writers close, so a disk that fills while the
    last parquet shard is written exits 3 while metadata.json says 0."""
    from synth.errors import OutputError
    from synth.writers.hf import HFDatasetWriter

    def disk_full(self):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "dataset"))

    monkeypatch.setattr(HFDatasetWriter, "close", disk_full)
    with pytest.raises(OutputError, match="No space left"):
        run_job(photos(tmp_path / "in", 1), tmp_path / "run", "writers=[hf]")
    summary = read_summary(tmp_path / "run")
    assert (summary["exit_code"], summary["done"]) == (3, 1)
    assert "No space left" in summary["exit_reason"]


@pytest.mark.slow
def test_exit_2_for_a_config_error_at_stage_setup_agrees_with_metadata(tmp_path):
    photos(tmp_path / "in", 1)
    proc, summary = job(tmp_path, "captioning._target_=guarantee_stages.SetupConfigError")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: captioning.model=missing/model: not found; download it first"
    assert summary["exit_code"] == 2


@pytest.mark.slow
def test_a_worker_process_killed_by_the_system_stops_the_job_in_one_line(tmp_path):
    """The OOM killer takes a worker process: exit 1 with one line (no traceback), metadata.json
    says so, and the samples committed before it stay complete."""
    photos(tmp_path / "in", 4)
    proc, summary = job(tmp_path, "workers=processes", "num_workers=2", "batch_size=1",
                        "captioning._target_=guarantee_stages.KillsItsWorker")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: a worker process died"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert summary["exit_code"] == 1 and summary["exit_reason"].startswith("a worker process died")


def start_gated_job(tmp_path: Path, count: int, workers: tuple[str, ...] = ("num_workers=1",), held: int = 1,
                    new_session: bool = False) -> GatedJob:
    """A job over ``count`` photos whose captioning holds every sample at a closed gate
    (``workers``: its worker overrides; ``new_session``: in its own process group); returns once
    ``held`` samples are in flight (one per worker: every worker process has started)."""
    photos(tmp_path / "in", count, h=32, w=40)
    job = GatedJob(tmp_path, tmp_path / "run", "data=folder", f"data.path={tmp_path / 'in'}", "batch_size=1", *workers,
                   new_session=new_session)
    job.wait_until_held(held)
    return job


@pytest.mark.slow
def test_sigint_finishes_the_sample_in_flight_and_exits_130(tmp_path):
    job = start_gated_job(tmp_path, count=20)
    job.stop(signal.SIGINT)
    job.open_gate()  # only now can the sample in flight finish: after the stop, whatever the machine's speed
    out, err = job.communicate()
    assert job.proc.returncode == 130, out + err
    summary = read_summary(job.run_dir)
    assert summary["exit_code"] == 130 and summary["exit_reason"].startswith("interrupted by SIGINT")
    assert 1 <= summary["done"] < 20 and summary["failed"] == 0
    assert summary["done"] == len(job.held())  # every sample in flight was finished, not dropped
    assert len(list((job.run_dir / "outputs").glob("*_metadata.json"))) == summary["done"]
    assert "Traceback" not in err
    assert_no_partial_files(job.run_dir)


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_without_waiting_for_the_sample_in_flight(tmp_path):
    """The gate is never opened: only an abort ends the job (it would wait 10 minutes)."""
    job = start_gated_job(tmp_path, count=2)
    job.stop(signal.SIGINT)  # the first handler has run (it restored the previous one)
    job.send(signal.SIGINT)
    out, err = job.communicate(timeout_s=60)
    assert job.proc.returncode != 0
    assert not list((job.run_dir / "outputs").glob("*_metadata.json"))  # nothing half-written looks complete
    assert_no_partial_files(job.run_dir)


# --- writers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, pil_format", [("webp", "WEBP"), ("jpg", "JPEG")])
def test_writer_format_writes_that_format_everywhere_and_resumes(fmt, pil_format, tmp_path):
    data, run_dir = photos(tmp_path / "in", 1), tmp_path / "run"
    summary = run_job(data, run_dir, f"writer.format={fmt}")
    record = read_samples(summary["run_dir"])[0]
    images = [p for p in files_of(run_dir, "000000") if p.suffix != ".json"]
    assert images and all(p.suffix == f".{fmt}" for p in images)
    for key in ("original", "composite_image", "mask", "albedo"):
        assert record[key].endswith(f".{fmt}")
        with Image.open(run_dir / record[key]) as image:
            assert image.format == pil_format and image.size == (48, 40)
    again = run_job(data, run_dir, f"writer.format={fmt}")
    assert again["skipped_complete"] == 1


def test_tar_and_parquet_shards_roll_over_by_size(tmp_path):
    """A size limit below one sample: every sample gets its own shard, none is lost or doubled."""
    data, run_dir = photos(tmp_path / "in", 3), tmp_path / "run"
    run_job(data, run_dir, "writers=[webdataset,hf]", "writers.webdataset.maxsize_mb=0.001",
            "writers.hf.max_shard_mb=0.001")
    tars = sorted((run_dir / "webdataset").glob("*.tar"))
    assert [p.name for p in tars] == [f"shard-0000-00000{i}.tar" for i in range(3)]
    tar_ids = []
    for shard in tars:
        with tarfile.open(shard) as tar:
            tar_ids.append(sorted({n.split(".", 1)[0] for n in tar.getnames()}))
    assert tar_ids == [["000000"], ["000001"], ["000002"]]
    parquets = sorted((run_dir / "hf" / "data").glob("*.parquet"))
    assert len(parquets) == 3
    assert [pq.read_table(p, columns=["image_id"]).column("image_id").to_pylist() for p in parquets] == \
        [["000000"], ["000001"], ["000002"]]


def test_shard_jobs_share_one_writer_path(tmp_path):
    """Two shard jobs with their own run directories write into one dataset folder: names carry
    data.shard_index, so nothing collides, and a rerun of one shard skips what it has."""
    data, shared = photos(tmp_path / "in", 4), tmp_path / "dataset"
    for index in (0, 1):
        run_job(data, tmp_path / f"run{index}", "writer=webdataset", f"writer.path={shared}",
                "writers=[hf]", f"writers.hf.path={shared / 'hf'}", "data.num_shards=2", f"data.shard_index={index}")
    tars = sorted(shared.glob("*.tar"))
    assert [p.name for p in tars] == ["shard-0000-000000.tar", "shard-0001-000000.tar"]
    ids = set()
    for shard in tars:
        with tarfile.open(shard) as tar:
            ids |= {n.split(".", 1)[0] for n in tar.getnames()}
    assert ids == {"000000", "000001", "000002", "000003"}
    parquet_ids = [i for p in sorted((shared / "hf" / "data").glob("*.parquet"))
                   for i in pq.read_table(p, columns=["image_id"]).column("image_id").to_pylist()]
    assert sorted(parquet_ids) == ["000000", "000001", "000002", "000003"]
    again = run_job(data, tmp_path / "run1", "writer=webdataset", f"writer.path={shared}", "writers=[hf]",
                    f"writers.hf.path={shared / 'hf'}", "data.num_shards=2", "data.shard_index=1")
    assert (again["skipped_complete"], again["done"]) == (2, 0)
    assert len(list(shared.glob("*.tar"))) == 2


# --- shadow maths ----------------------------------------------------------------------------------
def grey_card(level: int = 128, size: int = 96) -> Sample:
    sample = Sample(index=0, id="000000", source="grey-card", seed=3)
    sample.image = np.full((size, size, 3), level, np.uint8)
    sample.mask = np.ones((size, size), np.float32)
    return sample


def to_linear(srgb: np.ndarray) -> np.ndarray:
    """The sRGB transfer function (IEC 61966-2-1), written out here so the test is independent."""
    c = np.asarray(srgb, np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def to_srgb(linear: np.ndarray) -> np.ndarray:
    c = np.clip(linear, 0.0, 1.0)
    return 255.0 * np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


HARD_GREY = ("shadow=hard", "shadow.base=foreground", "shadow.color=neutral", "shadow.patterns=venetian_blind",
             "shadow.blur=1", "shadow.blur_growth=1.0")


@pytest.mark.parametrize("opacity", [0.3, 0.5, 0.8])
def test_a_shadow_on_a_grey_card_blocks_opacity_of_the_linear_light(opacity):
    """Catches: shadow maths on sRGB values. Blocking half the light of sRGB grey 128 gives sRGB
    93 in linear light, where multiplying the sRGB value would give 64."""
    stage = built_stage("shadow", *HARD_GREY, f"shadow.opacity={opacity}", "shadow.variation=0")
    sample = grey_card()
    stage.process([sample])
    matte = sample.shadow_matte
    expected = to_srgb(to_linear(128) * (1 - opacity * matte))
    assert (matte > 0.99).mean() > 0.1 and (matte < 0.01).mean() > 0.1  # umbra and lit areas both present
    assert np.abs(sample.degraded[..., 0].astype(float) - expected).max() <= 1.0
    umbra = sample.degraded[matte > 0.99]
    assert abs(float(umbra.mean()) - float(to_srgb(to_linear(128) * (1 - opacity)))) < 1.0
    assert abs(float(umbra.mean()) - 128 * (1 - opacity)) > 10  # far from the sRGB-multiplied value


def test_recorded_variation_changes_the_umbra_by_that_much():
    """Catches: ``shadow.variation`` recorded but never applied. In the umbra, the fraction of
    light blocked is opacity x (1 +- variation)."""
    opacity, variation = 0.5, 0.4
    plain, varied = grey_card(200), grey_card(200)
    built_stage("shadow", *HARD_GREY, f"shadow.opacity={opacity}", "shadow.variation=0").process([plain])
    built_stage("shadow", *HARD_GREY, f"shadow.opacity={opacity}", f"shadow.variation={variation}").process([varied])
    assert varied.params["shadow"]["variation"] == variation
    umbra = plain.shadow_matte > 0.99
    blocked = 1 - to_linear(varied.degraded[..., 0][umbra]) / to_linear(200)
    relative = blocked / opacity - 1
    assert variation / 4 < np.abs(relative).max() <= variation * 1.05 + 0.02
    assert relative.min() < -variation / 8 and relative.max() > variation / 8  # both lighter and darker


def test_recorded_blur_growth_widens_the_penumbra():
    """Catches: ``shadow.blur_growth`` recorded but forced to 1 when rendering."""
    uniform, growing = grey_card(), grey_card()
    common = [o for o in HARD_GREY if not o.startswith("shadow.blur")] + ["shadow.opacity=0.5", "shadow.variation=0",
                                                                          "shadow.blur=9"]
    built_stage("shadow", *common, "shadow.blur_growth=1.0").process([uniform])
    built_stage("shadow", *common, "shadow.blur_growth=4.0").process([growing])
    assert growing.params["shadow"]["blur_growth"] == 4.0

    def soft(sample):  # pixels in a penumbra, neither lit nor fully shadowed
        return int(((sample.shadow_matte > 0.02) & (sample.shadow_matte < 0.98)).sum())

    assert soft(growing) > 1.3 * soft(uniform)
