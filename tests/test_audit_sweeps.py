"""Found by a hostile-user audit of sweeps, launchers, logging and configuration (round 2). Each
test fails without the fix it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import sample_paths

FAST = ("logger=none", "segmentation.work_size=64", "segmentation.iterations=1", "num_workers=1")


def synth(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synth", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture
def good_and_bad(tmp_path):
    """Two input folders: one photo, and one file that is not an image (its job fails: exit 1)."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    os.symlink(sample_paths()[0], good / "a.jpg")
    (bad / "x.png").write_text("not an image")
    return good, bad


# --- a failed job of a multirun ------------------------------------------------------------------
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_failed_sweep_job_does_not_stop_the_others(tmp_path, good_and_bad, launcher):
    """Fix: app._end_job raises JobFailed (an Exception, which Hydra's launchers record per job)
    instead of SystemExit in a multirun. Without it the basic launcher stopped at the failed job
    (job 1 never ran) and joblib's pool was torn down with job 1 half done (only its app.log)."""
    good, bad = good_and_bad
    sweep = tmp_path / "sweep"
    proc = synth("-m", f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}", "data=folder",
                 f"data.path={bad},{good}", *FAST, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert json.loads((sweep / "0" / "metadata.json").read_text())["exit_code"] == 1
    assert json.loads((sweep / "1" / "metadata.json").read_text())["exit_code"] == 0
    assert (sweep / "1" / "outputs" / "000000_output.png").is_file()
    assert "Traceback" not in proc.stderr
    assert f"error: job 0 of the multirun ({sweep / '0'}) failed: every sample failed (1 of 1), exit 1" in proc.stderr


def test_a_config_error_in_one_sweep_job_does_not_stop_the_others(tmp_path, good_and_bad):
    """The same for a job refused with exit 2 (a bad value in one job of the sweep)."""
    good, _ = good_and_bad
    sweep = tmp_path / "sweep"
    proc = synth("-m", f"hydra.sweep.dir={sweep}", "data=folder", f"data.path={good}", "shadow.opacity=1.7,0.5",
                 *FAST, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert not (sweep / "0" / "metadata.json").exists()
    assert json.loads((sweep / "1" / "metadata.json").read_text())["exit_code"] == 0
    assert (f"error: job 0 of the multirun ({sweep / '0'}) failed: shadow.opacity=1.7: 1.7 is not a number in "
            "[0, 1], exit 2") in proc.stderr


# --- the job's device ----------------------------------------------------------------------------
def test_a_device_that_is_not_one_is_a_config_error(tmp_path):
    """Fix: app.build_runner checks the top-level ``device``. Without it ``device=tpu`` ran the
    weight-free job (exit 0) and, with a model stage, ended in torch's RuntimeError traceback."""
    run_dir = tmp_path / "run"
    proc = synth(f"hydra.run.dir={run_dir}", "device=tpu", "data.limit=1", *FAST, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, "error: device=tpu: choose auto, cpu, cuda, cuda:N or mps\n")
    assert not (run_dir / "metadata.json").exists() and not (run_dir / "samples.jsonl").exists()


@pytest.mark.parametrize("gpus, device, key", [(0, "cuda", "device"), (0, "cuda:0", "captioning.device"),
                                               (2, "cuda:9", "device"), (2, "cuda:x", "device")])
def test_a_cuda_device_this_machine_lacks_is_a_config_error(monkeypatch, gpus, device, key):
    """Fix: stages.base.check_cuda (a model stage's setup, the runner's job device) checks a CUDA
    device against torch.cuda. Without it
    ``device=cuda:9`` (or ``cuda`` on a CPU machine) with a model stage ended in torch's
    'Found no NVIDIA driver' / 'invalid device ordinal' traceback, exit 1."""
    from types import SimpleNamespace

    import torch

    from synth.errors import ConfigError
    from synth.stages.base import check_cuda

    monkeypatch.setattr(torch, "cuda", SimpleNamespace(is_available=lambda: gpus > 0, device_count=lambda: gpus))
    with pytest.raises(ConfigError, match=rf"^{key}={device}: .*(no CUDA GPU|2 CUDA GPUs)"):
        check_cuda(key, device)
    if gpus:
        check_cuda("device", "cuda:1"), check_cuda("device", "cuda")
    check_cuda("device", "cpu"), check_cuda("device", None)


# --- logger.* settings that wandb.init refuses --------------------------------------------------
def test_one_tag_is_one_tag():
    """Fix: loggers.check_tags. Without it ``logger.tags=trial`` (one string) became the tags
    't', 'r', 'i', 'a', 'l' (list() of the string), as data.extensions=.png once did."""
    from synth.loggers import WandbLogger

    assert WandbLogger(tags="trial").init_kwargs["tags"] == ["trial"]
    assert WandbLogger(tags=["a", 2]).init_kwargs["tags"] == ["a", "2"]  # Hydra reads [a,2] as 'a', 2
    assert WandbLogger(name=123, project=7).init_kwargs | {"tags": None} == {
        "project": "7", "entity": None, "group": None, "job_type": "generate", "tags": None, "name": "123",
        "notes": None}


@pytest.mark.parametrize("override, message", [
    ("logger.tags=[[a]]", r"logger\.tags=\[\['a'\]\]: a tag or a list of tags, each 1 to 64 characters"),
    ("logger.tags=[" + "x" * 65 + "]", r"logger\.tags=\['x{65}'\]: a tag or a list of tags, each 1 to 64 characters"),
    ("logger.project=a/b", r"logger\.project=a/b: W&B project names cannot contain"),
    ("logger.job_type=[x]", r"logger\.job_type=\['x'\]: must be text"),
])
def test_a_logger_setting_wandb_refuses_is_one_config_error(tmp_path, override, message):
    """Fix: WandbLogger checks its wandb.init arguments when it is built. Without it each ended in
    wandb's or pydantic's traceback at the start of the run, exit 1, with the run directory's
    samples.jsonl and metadata.json already written."""
    run_dir = tmp_path / "run"
    proc = synth(f"hydra.run.dir={run_dir}", "data.limit=1", *FAST[1:], "logger=wandb", "logger.mode=offline",
                 override, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    import re
    assert re.fullmatch(f"error: {message}.*\n", proc.stderr), proc.stderr
    assert not (run_dir / "metadata.json").exists()


def test_a_logger_dir_that_is_a_file_is_one_output_error(tmp_path):
    """Fix: WandbLogger.start checks logger.dir with faults.check_creatable. Without it the job
    ended in a FileExistsError traceback, exit 1 (README: an unwritable output location is exit 3)."""
    (tmp_path / "afile").write_text("")
    run_dir = tmp_path / "run"
    proc = synth(f"hydra.run.dir={run_dir}", "data.limit=1", *FAST[1:], "logger=wandb", "logger.mode=offline",
                 f"logger.dir={tmp_path / 'afile'}", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr == f"error: logger.dir: cannot write to {tmp_path / 'afile'}: {tmp_path / 'afile'} is not a directory\n"


# --- benchmarks with absurd arguments ------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["pipeline", "--count", "0"], "argument --count: must be an integer >= 1, not 0"),
    (["pipeline", "--repeats", "0"], "argument --repeats: must be an integer >= 1, not 0"),
    (["cores", "--size", "1"], "argument --size: must be an integer >= 64, not 1"),
    (["shadow", "--visibility", "--seeds", "0"], "argument --seeds: must be an integer >= 1, not 0"),
    (["lanes", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1, not 0"),
    (["lanes", "--device-ms", "abc"], "argument --device-ms: 'abc': expected comma-separated numbers"),
    (["memory", "--counts", "0"], "argument --counts: must be an integer >= 1, not 0"),
    (["memory", "--size", "1"], "argument --size: must be an integer >= 16, not 1"),
    (["scale", "--jobs", "0"], "argument --jobs: must be an integer >= 1, not 0"),
    (["models", "--batch-sizes", "4,0"], "argument --batch-sizes: '4,0': expected comma-separated numbers >= 1"),
    (["e2e", "--count", "0"], "argument --count: must be an integer >= 1, not 0"),
])
def test_a_benchmark_refuses_absurd_arguments_in_one_line(tmp_path, args, message):
    """Fix: synth.bench.at_least / numbers as argparse types. Without them each ended in a
    traceback (no images listed, a median of no runs, a division by zero, int('abc')) or, for
    e2e, went on to load models for a job of no images."""
    proc = subprocess.run([sys.executable, "-m", "synth.bench", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == f"python -m synth.bench {args[0]}: error: {message}"
    assert "Traceback" not in proc.stderr


# --- the review notebook -------------------------------------------------------------------------
def notebook_function(name: str):
    """A function defined in notebooks/review.ipynb, run here without a kernel."""
    import ast

    import nbformat

    from tests.conftest import REPO

    nb = nbformat.read(REPO / "notebooks" / "review.ipynb", as_version=4)
    namespace: dict = {"Path": Path}
    for cell in nb.cells:
        if cell.cell_type == "code":
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.FunctionDef):
                    exec(compile(ast.Module([node], []), "review.ipynb", "exec"), namespace)
    return namespace[name]


def test_the_notebook_refuses_a_sweep_directory_or_one_where_no_job_ran(tmp_path, monkeypatch):
    """Fix: review.ipynb's check_run. Without it RUN_DIR=<sweep dir> (the directory a multirun
    prints) or a job directory refused before it started showed '0 finished samples read' and
    '0 failed', as if the run had made nothing."""
    find_run = notebook_function("find_run")
    sweep = tmp_path / "sweep"
    for job in ("0", "1", "10"):
        (sweep / job).mkdir(parents=True)
        (sweep / job / "metadata.json").write_text("{}")
    (sweep / "multirun.yaml").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=rf"^RUN_DIR=sweep: a multirun sweep directory; set RUN_DIR to one of its "
                                         rf"jobs: {sweep / '0'}, {sweep / '1'}, {sweep / '10'}$"):
        find_run("sweep")
    assert find_run("sweep/1") == sweep / "1"
    (tmp_path / "refused" / ".hydra").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"^RUN_DIR=refused: no synth job ran there"):
        find_run("refused")


# --- the figure scripts --------------------------------------------------------------------------
@pytest.mark.parametrize("script, args, message", [
    ("contact_sheet.py", ["--seed", "-1"], "argument --seed: must be an integer >= 0, not -1"),
    ("contact_sheet.py", ["--out", "{afile}/x.png"], "--out {afile}/x.png: cannot write to {afile}: {afile} is not a "
                                                    "directory"),
    ("decomposition_figure.py", ["--out", "{afile}/x.png"], "--out {afile}/x.png: cannot write to {afile}: {afile} "
                                                            "is not a directory"),
    ("decomposition_figure.py", ["--out", "{tmp}/figure.xyz"], "--out {tmp}/figure.xyz: must end in .png"),
])
def test_a_figure_script_refuses_a_bad_argument_in_one_line(tmp_path, script, args, message):
    """Fix: scripts/contact_sheet.py writable_out (and --seed's type). Without it each was a
    traceback after the figure was computed (mkdir under a file, a negative seed), and
    decomposition_figure.py reported a figure cv2.imwrite had not written (exit 0, no file)."""
    from tests.conftest import REPO

    (tmp_path / "afile").write_text("")
    fill = {"afile": tmp_path / "afile", "tmp": tmp_path}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), *(a.format(**fill) for a in args)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == f"{script}: error: {message.format(**fill)}"


# --- num_workers beyond reason -------------------------------------------------------------------
def test_an_absurd_worker_count_is_one_config_error(tmp_path):
    """Fix: schedule.worker_count caps num_workers at MAX_WORKERS (1024). Without it
    num_workers=100000 ended in "RuntimeError: can't start new thread" (threads) or hung starting
    processes, after the run directory's manifest and synth.lock were written."""
    from synth.errors import ConfigError
    from synth.schedule import MAX_WORKERS, worker_count

    assert worker_count(MAX_WORKERS) == MAX_WORKERS
    with pytest.raises(ConfigError, match=r"^num_workers=100000: at most 1024 \(this process may use \d+ cores\)$"):
        worker_count(100000)
    run_dir = tmp_path / "run"
    proc = synth(f"hydra.run.dir={run_dir}", "num_workers=100000", "workers=threads", "data.limit=1", *FAST[:-1],
                 cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: num_workers=100000: at most 1024"), proc.stderr
    assert not (run_dir / "manifest.jsonl").exists()
