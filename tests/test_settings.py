"""A rerun never mixes samples made two ways: the settings a sample depends on are recorded by the
first run (manifest header; .synth-settings.json beside tar/parquet shards) and a job with other
ones is refused before it writes anything (synth/settings.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from synth.errors import ConfigError
from synth.settings import first_difference, output_settings
from tests.test_audit import photos
from tests.test_robustness_run import run_job


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (what a refused job must leave as it was)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != "app.log"}


def manifest_settings(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.jsonl").read_text().splitlines()[0])["settings"]


# --- what counts ---------------------------------------------------------------------------------
def test_settings_are_the_sample_shaping_keys_and_leave_out_speed_and_logging():
    config = {"seed": 3, "batch_size": 8, "num_workers": 4, "device": "cuda", "resume": True,
              "data": {"path": "/photos", "max_side": 2048, "limit": 10},
              "shadow": {"opacity": [0.2, 0.5], "batch_size": 2, "device": "cpu", "cast": {"blur": 5, "device": None}},
              "captioning": {"_target_": "synth.stages.captioning.TemplateCaption", "template": "t"},
              "logger": {"project": "p"},
              "writer": {"_target_": "synth.writers.folder.FolderWriter", "format": "png", "quality": 95,
                         "png_encoder": "fpng", "png_compress_level": 1, "intermediates": False},
              "writers": {"hf": {"_target_": "synth.writers.hf.HFDatasetWriter", "format": "jpg", "quality": 90,
                                 "rows_per_shard": 10}}}
    assert output_settings(config, ("segmentation", "shadow", "captioning")) == {
        "seed": 3, "data.max_side": 2048, "shadow.opacity": [0.2, 0.5], "shadow.cast.blur": 5,
        "captioning._target_": "synth.stages.captioning.TemplateCaption", "captioning.template": "t",
        "writer:folder.format": "png", "writer:folder.intermediates": False, "writer:hf.format": "jpg",
        "writer:hf.quality": 90}


def test_the_first_difference_names_both_values_and_a_writer_only_one_side_has_is_no_difference():
    then = {"seed": 0, "shadow.opacity": [0.39, 0.78], "captioning._target_": "x.Template", "writer:folder.format": "png"}
    assert first_difference(then, dict(then)) is None
    assert first_difference(then, dict(then, seed=1)) == ("seed=1", "seed=0")
    assert first_difference(then, dict(then, **{"shadow.opacity": 0.3})) == (
        "shadow.opacity=0.3", "shadow.opacity=[0.39, 0.78]")
    removed = {k: v for k, v in then.items() if k != "captioning._target_"}
    assert first_difference(then, removed) == ("no captioning", "captioning=x.Template")
    assert first_difference(then, dict(then, **{"writer:hf.format": "jpg"})) is None  # a writer added
    assert first_difference(then, dict(then, **{"writer:folder.format": "webp"})) == (
        "the folder writer's format=webp", "the folder writer's format=png")


# --- one run directory ---------------------------------------------------------------------------
@pytest.mark.parametrize("change, named", [
    ("shadow.opacity=0.3", r"shadow\.opacity=0\.3: this run directory's samples were made with "
                           r"shadow\.opacity=\[0\.39, 0\.78\] \(manifest\.jsonl\)"),
    ("seed=1", r"seed=1: .* made with seed=0 "),
    ("~captioning", r"no captioning: .* made with captioning=synth\.stages\.captioning\.TemplateCaption "),
    ("writer.format=webp", r"the folder writer's format=webp: .* made with the folder writer's format=png "),
    ("writer.intermediates=false", r"the folder writer's intermediates=false: .* made with the folder writer's "
                                   r"intermediates=true "),
    ("albedo.sigmas=[10,20]", r"albedo\.sigmas=\[10, 20\]: "),
])
def test_a_rerun_with_other_settings_is_refused_and_changes_nothing(tmp_path, change, named):
    data, run_dir = photos(tmp_path / "in", 2), tmp_path / "run"
    run_job(data, run_dir)
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match=named + r".*rerun into a new hydra\.run\.dir, or resume=false"):
        run_job(data, run_dir, change)
    assert snapshot(run_dir) == before


def test_a_rerun_may_change_speed_settings_and_the_png_encoding(tmp_path):
    data, run_dir = photos(tmp_path / "in", 3), tmp_path / "run"
    run_job(data, run_dir, "data.limit=2")
    summary = run_job(data, run_dir, "num_workers=2", "batch_size=1", "device=cpu", "writer.png_compress_level=4",
                      "writer.png_encoder=cv2", "progress_every_s=5", "max_failure_rate=0.5")
    assert (summary["done"], summary["skipped_complete"]) == (1, 2)


def test_resume_false_starts_over_with_the_new_settings(tmp_path):
    data, run_dir = photos(tmp_path / "in", 2), tmp_path / "run"
    run_job(data, run_dir)
    summary = run_job(data, run_dir, "seed=5", "resume=false")
    assert summary["done"] == 2 and manifest_settings(run_dir)["seed"] == 5
    assert run_job(data, run_dir, "seed=5")["skipped_complete"] == 2


def test_a_run_directory_of_a_version_without_recorded_settings_still_resumes(tmp_path):
    data, run_dir = photos(tmp_path / "in", 2), tmp_path / "run"
    run_job(data, run_dir)
    manifest = run_dir / "manifest.jsonl"
    header, *entries = manifest.read_text().splitlines(keepends=True)
    old = {k: v for k, v in json.loads(header).items() if k != "settings"}
    manifest.write_text(json.dumps(old) + "\n" + "".join(entries))
    assert run_job(data, run_dir, "seed=1")["skipped_complete"] == 2


def test_the_shards_of_one_run_directory_must_share_their_settings(tmp_path):
    """Even resume=false: the other shard's samples would stay beside this one's."""
    data, run_dir = photos(tmp_path / "in", 4), tmp_path / "run"
    shard = ("data.num_shards=2", "data.shard_index=0")
    run_job(data, run_dir, *shard)
    other = ("data.num_shards=2", "data.shard_index=1", "seed=1")
    for extra in ((), ("resume=false",)):
        with pytest.raises(ConfigError, match=r"^seed=1: the samples of another shard in this run directory were "
                                              r"made with seed=0 \(manifest-0000\.jsonl\); use another hydra\.run\.dir"):
            run_job(data, run_dir, *other, *extra)
    assert not (run_dir / "manifest-0001.jsonl").exists()
    assert run_job(data, run_dir, "data.num_shards=2", "data.shard_index=1")["done"] == 2


# --- a writer.path shared by jobs ----------------------------------------------------------------
@pytest.mark.parametrize("writer", ["webdataset", "hf"])
def test_a_shared_writer_path_refuses_a_job_with_other_settings_before_it_writes(tmp_path, writer):
    data, shared = photos(tmp_path / "in", 2), tmp_path / "shared"
    to_shared = (f"writer={writer}", f"writer.path='{shared}'")
    run_job(data, tmp_path / "a", *to_shared)
    before = snapshot(shared)
    assert any(name.endswith(".synth-settings.json") for name in before)
    with pytest.raises(ConfigError, match=rf"^shadow\.opacity=0\.3: the samples in \S+ were made with "
                                          rf"shadow\.opacity=\[0\.39, 0\.78\] \(\.synth-settings\.json\) .*use another "
                                          rf"writer\.path \(writers\.{writer}\.path\), or resume=false"):
        run_job(data, tmp_path / "b", *to_shared, "shadow.opacity=0.3")
    assert snapshot(shared) == before
    assert not (tmp_path / "b" / "manifest.jsonl").exists()  # refused before its own manifest was written
    assert run_job(data, tmp_path / "b", *to_shared, "shadow.opacity=0.3", "writer.format=jpg", "resume=false")["done"] == 2
    # another shard index's samples stay whatever this job does, so then even resume=false is refused
    with pytest.raises(ConfigError, match=r"^seed=2: .*use another writer\.path \(writers\.\w+\.path\)$"):
        run_job(data, tmp_path / "c", *to_shared, "shadow.opacity=0.3", "writer.format=jpg", "seed=2",
                "data.num_shards=2", "data.shard_index=1", "resume=false")


def test_a_writer_added_on_resume_writes_what_it_lacks(tmp_path):
    data, run_dir = photos(tmp_path / "in", 2), tmp_path / "run"
    run_job(data, run_dir)
    summary = run_job(data, run_dir, "writers=[webdataset]", "writers.webdataset.format=jpg")
    assert summary["done"] == 2  # the tar writer lacked both
    assert len(list((run_dir / "webdataset").glob("*.tar"))) == 1


def test_a_job_that_finds_the_settings_file_created_meanwhile_compares_with_it(tmp_path, monkeypatch):
    """Two jobs starting at once into one writer.path: the one that creates the file second reads
    and compares the first one's (create_exclusive, not a plain write that would replace it)."""
    import synth.writers.sharded as sharded

    data, shared = photos(tmp_path / "in", 1), tmp_path / "shared"
    real = sharded.create_exclusive

    def another_job_first(path, data_bytes):
        theirs = json.loads(data_bytes)
        real(path, json.dumps(dict(theirs, seed=9)).encode())
        raise FileExistsError(path)

    monkeypatch.setattr(sharded, "create_exclusive", another_job_first)
    with pytest.raises(ConfigError, match=r"^seed=0: the samples in \S+ were made with seed=9"):
        run_job(data, tmp_path / "a", "writer=webdataset", f"writer.path='{shared}'")


def test_a_multirun_over_a_stage_setting_into_one_writer_path_fails_its_second_job(tmp_path):
    data, shared = photos(tmp_path / "in", 2), tmp_path / "shared"
    proc = subprocess.run(
        [sys.executable, "-m", "synth", "-m", "shadow.opacity=0.3,0.5", "data=folder", f"data.path={data}",
         "logger=none", "writer=webdataset", f"writer.path={shared}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "shadow.opacity=0.5: the samples in" in proc.stderr and "made with shadow.opacity=0.3" in proc.stderr
    assert json.loads((tmp_path / "sweep" / "0" / "metadata.json").read_text())["exit_code"] == 0
