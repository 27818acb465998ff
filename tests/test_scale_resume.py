"""Resume: a run killed with SIGKILL part-way, then rerun, ends exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import read_summary, run_synth
from tests.guarantee_stages import GatedJob, tests_on_path
from tests.scale_helpers import assert_same_results, make_inputs, result_files

pytestmark = pytest.mark.slow
COUNT = 12


def dataset_ids(run_dir: Path) -> tuple[list[str], list[str]]:
    """Sample ids in the complete tar shards and in the complete parquet shards."""
    tar_ids = []
    for shard in sorted((run_dir / "webdataset").glob("*.tar")):
        with tarfile.open(shard) as tar:
            tar_ids += sorted({name.split(".", 1)[0] for name in tar.getnames()})
    parquet_ids = []
    for shard in sorted((run_dir / "hf" / "data").glob("*.parquet")):
        parquet_ids += pq.read_table(shard, columns=["image_id"]).column("image_id").to_pylist()
    return tar_ids, parquet_ids


def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path):
    """Killed while sample 7 is held in flight: shards of 3, so the first is published, the second
    may be, the third holds sample 6 at most (the kill may fall anywhere in 6's commit)."""
    inputs = make_inputs(tmp_path / "inputs", COUNT, width=160)
    args = ["data=folder", f"data.path={inputs}", "batch_size=1", "num_workers=1",
            "writers=[webdataset,hf]", "writers.webdataset.maxcount=3", "writers.hf.rows_per_shard=3"]
    gated = ["captioning._target_=guarantee_stages.Gated"]  # without a gate: the template caption
    env = tests_on_path()
    reference = tmp_path / "reference"
    run_synth(reference, *args, *gated, env=env)

    run_dir = tmp_path / "run"
    job = GatedJob(tmp_path, run_dir, *args, gate_from=7)
    job.wait_until_held()
    os.kill(job.proc.pid, signal.SIGKILL)
    job.communicate()
    complete_at_kill = len(list((run_dir / "outputs").glob("*_metadata.json")))
    assert 3 <= complete_at_kill < COUNT, "killed too late to test resume"
    # Complete at the kill: recorded in samples.jsonl (a record comes after its tar and parquet rows,
    # so the kill may fall between a shard's publication and its last record) and in a published
    # tar shard and parquet shard. Exactly those are skipped; the rest is redone.
    lines = (run_dir / "samples.jsonl").read_text().splitlines(keepends=True)
    recorded = {json.loads(line)["image_id"] for line in lines if line.endswith("\n")}
    tar_ids, parquet_ids = dataset_ids(run_dir)
    complete_at_kill = recorded & set(tar_ids) & set(parquet_ids)
    assert len(complete_at_kill) >= 3, "the first shards were not published before sample 7 started"

    run_synth(run_dir, *args, *gated, env=env)
    summary = read_summary(run_dir)
    assert summary["skipped_complete"] == len(complete_at_kill)
    assert summary["skipped_complete"] + summary["done"] == COUNT and summary["failed"] == 0
    assert_same_results(result_files(run_dir), result_files(reference))
    # Each dataset holds every sample exactly once: no loss, no duplicate from the killed shard.
    everything = [f"{i:06d}" for i in range(COUNT)]
    tar_ids, parquet_ids = dataset_ids(run_dir)
    assert sorted(tar_ids) == everything and sorted(parquet_ids) == everything


def test_rerun_skips_complete_samples_and_resume_false_starts_over(tmp_path):
    inputs = make_inputs(tmp_path / "inputs", 2)
    run_dir = tmp_path / "run"
    args = ["data=folder", f"data.path={inputs}", "writers=[webdataset,hf]"]
    run_synth(run_dir, *args)
    first = result_files(run_dir)
    shards = sorted([*run_dir.glob("webdataset/*.tar"), *run_dir.glob("hf/data/*.parquet")])
    first_shards = {p.name: p.read_bytes() for p in shards}

    run_synth(run_dir, *args)
    summary = read_summary(run_dir)
    assert (summary["done"], summary["skipped_complete"]) == (0, 2)

    run_synth(run_dir, *args, "resume=false")
    summary = read_summary(run_dir)
    assert (summary["done"], summary["skipped_complete"]) == (2, 0)
    assert_same_results(result_files(run_dir), first)
    tar_ids, parquet_ids = dataset_ids(run_dir)
    assert tar_ids == parquet_ids == ["000000", "000001"]  # the earlier shards were replaced, not kept beside
    shards = sorted([*run_dir.glob("webdataset/*.tar"), *run_dir.glob("hf/data/*.parquet")])
    assert {p.name: p.read_bytes() for p in shards} == first_shards  # the same job, the same bytes


def test_a_sample_missing_from_one_writer_is_written_to_that_writer_only(tmp_path):
    inputs = make_inputs(tmp_path / "inputs", 2)
    run_dir = tmp_path / "run"
    run_synth(run_dir, "data=folder", f"data.path={inputs}")
    before = {rel: path.stat().st_mtime_ns for rel, path in result_files(run_dir).items()}
    run_synth(run_dir, "data=folder", f"data.path={inputs}", "writers=[webdataset]")
    summary = read_summary(run_dir)
    assert (summary["done"], summary["skipped_complete"]) == (2, 0)
    assert {rel: path.stat().st_mtime_ns for rel, path in result_files(run_dir).items()} == before
    assert sorted(dataset_ids(run_dir)[0]) == ["000000", "000001"]
