"""Training-ready outputs: WebDataset and Hugging Face datasets read back with their own libraries,
several writers in one job, writer.intermediates, data=csv, and progress reporting."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import datasets
import numpy as np
import pytest
import webdataset as wds

from synth.app import build_writers
from synth.data import CsvSource
from synth.errors import ConfigError
from synth.progress import Progress
from tests.conftest import compose_config, read_summary, run_synth
from tests.scale_helpers import make_inputs


def rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def metadata(run_dir: Path, sample_id: str) -> dict:
    return json.loads((run_dir / "outputs" / f"{sample_id}_metadata.json").read_text())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return make_inputs(tmp_path_factory.mktemp("inputs"), 4)


@pytest.fixture(scope="module")
def all_writers(inputs, tmp_path_factory) -> Path:
    """One job writing the folder layout, tar shards (two: 3 + 1 samples) and a parquet dataset."""
    run_dir = tmp_path_factory.mktemp("all_writers") / "run"
    run_synth(run_dir, "data=folder", f"data.path={inputs}", "writers=[webdataset,hf]",
              "writers.webdataset.maxcount=3")
    return run_dir


@pytest.mark.slow
def test_webdataset_reads_back_equal_to_the_folder_output(all_writers):
    shards = sorted(str(p) for p in (all_writers / "webdataset").glob("*.tar"))
    assert [Path(s).name for s in shards] == ["shard-0000-000000.tar", "shard-0000-000001.tar"]
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["000000", "000001", "000002", "000003"]
    for s in samples:
        sid, record = s["__key__"], metadata(all_writers, s["__key__"])
        assert s["input_image.png"] == (all_writers / f"outputs/{sid}_output.png").read_bytes()  # the composite
        assert s["edited_image.png"] == (all_writers / f"outputs/{sid}_input.png").read_bytes()  # the original
        assert s["mask.png"] == (all_writers / f"stage_1/{sid}_mask.png").read_bytes()
        assert s["edit_prompt.txt"].decode() == record["caption"]
        tar_record = json.loads(s["json"])
        assert tar_record["params"] == record["params"] and tar_record["composite_image"] == "input_image.png"
    decoded = next(iter(wds.WebDataset(shards, shardshuffle=False).decode("rgb8")))
    np.testing.assert_array_equal(decoded["input_image.png"], rgb(all_writers / "outputs/000000_output.png"))


@pytest.mark.slow
def test_hf_dataset_loads_with_load_dataset_equal_to_the_folder_output(all_writers, tmp_path):
    train = datasets.load_dataset(str(all_writers / "hf"), cache_dir=str(tmp_path / "cache"))["train"]
    assert train.column_names[:3] == ["input_image", "edit_prompt", "edited_image"]  # diffusers' defaults
    assert {"mask", "parameters"} <= set(train.column_names)
    assert train["image_id"] == ["000000", "000001", "000002", "000003"]
    for row in train:
        sid, record = row["image_id"], metadata(all_writers, row["image_id"])
        np.testing.assert_array_equal(np.asarray(row["input_image"]), rgb(all_writers / f"outputs/{sid}_output.png"))
        np.testing.assert_array_equal(np.asarray(row["edited_image"]), rgb(all_writers / f"outputs/{sid}_input.png"))
        np.testing.assert_array_equal(np.asarray(row["mask"]), rgb(all_writers / f"stage_1/{sid}_mask.png"))
        assert row["edit_prompt"] == record["caption"]
        assert json.loads(row["parameters"]) == record["params"]


@pytest.mark.slow
def test_dataset_writers_without_the_folder_resume_and_log_progress(inputs, tmp_path):
    run_dir = tmp_path / "run"
    args = ["writer=hf", "writers=[webdataset]", "data=folder", f"data.path={inputs}", "data.limit=2"]
    proc = run_synth(run_dir, *args, "progress_every_s=0.000001")  # not a terminal: log lines
    assert "progress: 2/2 (100%), 0 failed" in proc.stdout + proc.stderr
    assert not (run_dir / "outputs").exists() and not (run_dir / "stage_1").exists()
    assert len(list((run_dir / "webdataset").glob("*.tar"))) == 1
    assert len(list((run_dir / "hf" / "data").glob("*.parquet"))) == 1
    run_synth(run_dir, *args)
    summary = read_summary(run_dir)
    assert (summary["done"], summary["skipped_complete"]) == (0, 2)


@pytest.mark.slow
def test_intermediates_false_writes_only_the_training_files(inputs, tmp_path):
    run_dir = tmp_path / "run"
    run_synth(run_dir, "data=folder", f"data.path={inputs}", "data.limit=1", "writer.intermediates=false",
              "writers=[webdataset]", "writers.webdataset.intermediates=true")
    files = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")
                   if p.is_file() and p.parts[len(run_dir.parts)] in ("outputs", "stage_1", "stage_2", "stage_3", "stage_3_5"))
    assert files == ["outputs/000000_input.png", "outputs/000000_mask.png", "outputs/000000_metadata.json",
                     "outputs/000000_output.png"]
    assert metadata(run_dir, "000000")["composite_image"] == "outputs/000000_output.png"
    sample = next(iter(wds.WebDataset(str(next((run_dir / "webdataset").glob("*.tar"))), shardshuffle=False)))
    assert {"foreground.png", "background.png", "albedo.png", "degraded_foreground.png"} <= set(sample)
    assert sample["input_image.png"] == (run_dir / "outputs/000000_output.png").read_bytes()


@pytest.mark.parametrize("overrides, message", [
    (["writers=[hf]", "writers.hf.rows_per_shard=0"], "writers.hf.rows_per_shard=0: must be an integer >= 1"),
    (["writers=[webdataset]", "writers.webdataset.format=gif"], "writers.webdataset.format=gif: choose from"),
    (["writer=webdataset", "writer.maxcount=0"], "writer.maxcount=0: must be an integer >= 1"),
    (["writer=webdataset", "writers=[webdataset]"], "writers.webdataset: already selected"),
])
def test_writer_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        build_writers(compose_config(*overrides))


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.slow
def test_csv_source_writes_output_paths_empty_for_failures(inputs, tmp_path):
    images = sorted(inputs.glob("*.jpg"))
    table = write_csv(tmp_path / "pairs.csv", [
        {"image_path": images[0].name, "note": "relative to the CSV, a comma, in a value"},
        {"image_path": str(tmp_path / "missing.jpg"), "note": "fails"},
        {"image_path": str(images[1]), "note": "absolute"},
    ])
    (tmp_path / images[0].name).write_bytes(images[0].read_bytes())  # the relative one lives beside the CSV
    run_dir = tmp_path / "run"
    run_synth(run_dir, "data=csv", f"data.path={table}", check=False)  # a failed row may fail the job
    with open(run_dir / "pairs_with_outputs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["note"] for r in rows] == ["relative to the CSV, a comma, in a value", "fails", "absolute"]
    assert rows[1]["output_image_path"] == ""
    for row, sid in ((rows[0], "000000"), (rows[2], "000002")):
        assert row["output_image_path"] == str(run_dir / f"outputs/{sid}_output.png")
        assert Path(row["output_image_path"]).is_file()
    assert metadata(run_dir, "000002")["source"] == str(images[1])


def test_csv_source_shards_by_row_and_names_a_missing_column(tmp_path):
    table = write_csv(tmp_path / "t.csv", [{"image_path": f"{i}.jpg"} for i in range(5)])
    shard = CsvSource(path=str(table), num_shards=2, shard_index=1)
    assert [(it.id, Path(it.path).name) for it in shard.items()] == [("000001", "1.jpg"), ("000003", "3.jpg")]
    with pytest.raises(ConfigError, match="data.column=path: not a column"):
        CsvSource(path=str(table), column="path")


def test_progress_bar_on_a_terminal(capsys):
    with Progress(total=3, terminal=True) as progress:
        for ok in (True, False, True):
            progress.update(ok)
    err = capsys.readouterr().err
    assert "3/3" in err and "img/s" in err and "failed=1" in err


def test_each_image_is_encoded_once_for_all_writers(tmp_path, monkeypatch):
    import synth.writers.encoded as encoded_module
    from synth.writers.encoded import EncodedImages
    from synth.writers.folder import FolderWriter
    from synth.writers.hf import HFDatasetWriter
    from synth.writers.webdataset import WebDatasetWriter
    from tests.conftest import make_sample, soft_disc_mask

    sample = make_sample(size=64)
    sample.mask = sample.shadow_matte = soft_disc_mask(64, 64)
    sample.foreground = sample.albedo = sample.degraded = sample.composite = sample.image
    sample.caption = "remove the shadow"
    calls = []
    real_encode = encoded_module.encode
    monkeypatch.setattr(encoded_module, "encode", lambda image, *a: calls.append(1) or real_encode(image, *a))
    writers = [FolderWriter(), WebDatasetWriter(), HFDatasetWriter()]
    images = EncodedImages(sample)
    for writer in writers:
        writer.open(tmp_path)
        writer.write(sample, images)
    assert len(calls) == 8  # the folder's eight layers; the tar and the parquet row reuse three of them
    assert (tmp_path / "outputs/000000_output.png").stat().st_nlink == 2  # a hard link, not a copy
