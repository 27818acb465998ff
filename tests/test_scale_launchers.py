"""Sharding through Hydra's real launchers: a two-shard multirun equals a one-shard run, byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from tests.conftest import read_summary, run_synth
from tests.scale_helpers import assert_same_results, make_inputs, result_files

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return make_inputs(tmp_path_factory.mktemp("inputs"), 4)


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    """One job over every input, default batch size and workers."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_synth(run_dir, "data=folder", f"data.path={inputs}")
    return run_dir


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_two_shard_multirun_equals_one_run(launcher, inputs, reference, tmp_path):
    sweep = tmp_path / "sweep"
    # Other batch size and worker count too: neither may change a byte.
    cmd = [sys.executable, "-m", "synth", "-m", f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}",
           "data=folder", f"data.path={inputs}", "data.num_shards=2", "data.shard_index=0,1",
           "batch_size=1", "num_workers=1", "logger=none"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = [sweep / "0", sweep / "1"]
    assert [read_summary(job)["done"] for job in jobs] == [2, 2]
    assert_same_results(result_files(*jobs), result_files(reference))


def test_slurm_jobs_are_submitted_to_requeue_on_timeout_and_resume(tmp_path, monkeypatch):
    """What Slurm would be asked for, without a cluster: hydra-submitit-launcher builds the sbatch
    script from conf/hydra/launcher/slurm.yaml (a fake ``srun`` on PATH lets submitit build it).
    A job is signalled before its time limit (``--signal=USR2``), submitit then calls the
    launcher's ``checkpoint``, which resubmits the same job (same overrides, same sweep
    directory) up to ``max_num_timeout`` times; ``resume=true`` makes that rerun skip what the
    first attempt finished (tests/test_scale_resume.py)."""
    import submitit

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with initialize_config_module(config_module="synth.conf", version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "hydra.launcher.partition=a100",
                                 f"hydra.sweep.dir={tmp_path / 'sweep'}",
                                 f"hydra.launcher.submitit_folder={tmp_path / 'submitit'}"])
    assert cfg.resume is True
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    submitted = {}

    def capture(executor, fn, *arg_lists):  # instead of sbatch
        submitted.update(executor=executor, fn=fn, args=[list(a) for a in zip(*arg_lists)])
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    launcher.launch([["data.shard_index=0"], ["data.shard_index=1"]], initial_job_idx=0)

    slurm = submitted["executor"]._executor
    script = slurm._make_submission_file_text("python -m synth", "uid")
    for line in ("#SBATCH --partition=a100", "#SBATCH --time=240", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --signal=USR2@"):
        assert line in script, line
    assert slurm.max_num_timeout == 3
    assert [args[0] for args in submitted["args"]] == [["data.shard_index=0"], ["data.shard_index=1"]]
    requeued = launcher.checkpoint(*submitted["args"][1])  # what submitit resubmits at the time limit
    assert requeued.function is launcher and list(requeued.args) == submitted["args"][1]
