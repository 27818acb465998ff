"""A non-editable install finds its configs and runs the default job from any directory."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_installed_wheel_runs_from_another_directory(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", str(target), str(REPO)],
        capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert (target / "synth" / "conf" / "config.yaml").is_file()
    assert (target / "synth" / "samples" / "LICENSE.md").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy must shadow the editable checkout: put it first on the path.
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import synth; print(synth.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    info = subprocess.run([sys.executable, "-m", "synth", "--info", "searchpath"],
                          capture_output=True, text=True, cwd=elsewhere, env=env)
    assert "pkg://synth.conf" in info.stdout, info.stdout + info.stderr
    job = subprocess.run([sys.executable, "-m", "synth", "logger=none", "hydra.run.dir=run"],
                         capture_output=True, text=True, cwd=elsewhere, env=env)
    assert job.returncode == 0, job.stdout + job.stderr
    assert (elsewhere / "run" / "stage_3_5" / "000000_composite.png").is_file()
    assert "4 done, 0 failed" in job.stdout
