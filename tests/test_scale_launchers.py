"""Sharding through Hydra's real launchers: a two-shard multirun equals a one-shard run, byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

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


def test_slurm_launcher_config_composes():
    with initialize_config_module(config_module="synth.conf", version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "hydra.launcher.partition=a100"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.cpus_per_task) == ("a100", 1, 8)
    assert launcher.timeout_min > 0 and launcher.max_num_timeout > 0  # timeouts requeue and resume
