"""Smoke runs of every benchmark and of the figure scripts (contact sheet, decomposition) at their
smallest settings, so the numbers and figures in the README come from code that still runs. They prove the harness runs end to end
and prints its table, not any speed (speed is what the benchmarks themselves print)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from synth.bench.__main__ import available
from tests.conftest import REPO

pytestmark = pytest.mark.slow

# name -> (smallest arguments, a line fragment its report must print)
SMALLEST = {
    "pipeline": (["--count", "2", "--size", "64", "--repeats", "1", "--baseline-count", "0", "--encoders", "cv2"],
                 "images/s"),
    "scale": (["--count", "2", "--size", "64", "--repeats", "1", "--jobs", "1", "--writers", "webdataset"],
              "| webdataset |"),
    "cores": (["--count", "2", "--size", "64", "--repeats", "1", "--workers", "1"], "speed-up"),
    "memory": (["--counts", "3", "--size", "32", "--csv-rows", "0", "--folder-files", "0"], "peak RSS"),
    "shadow": (["--size", "64", "--repeats", "1"], "kernel 111 / kernel 31"),
    # The whole job without model stages (so no bound); the model stages are the models benchmark's.
    "e2e": (["--tiny", "--segmentation", "mask_folder", "--captioning", "template", "--count", "2", "--size", "64",
             "--batch-size", "1", "--repeats", "1"], "job: "),
    # Every model stage on tiny random architectures takes about a minute on 2 cores: --help here;
    # tests/test_models_*.py run the same model code paths.
    "models": (["--help"], "--tiny"),
    "lanes": (["--count", "4", "--size", "16", "--batch-size", "2", "--device-ms", "1,1", "--cpu-ms", "1",
               "--num-workers", "2", "--workers", "threads,processes", "--repeats", "1"], "lanes / serial"),
}


def test_every_benchmark_has_a_smoke_run():
    assert sorted(SMALLEST) == available()


@pytest.mark.parametrize("name", sorted(SMALLEST))
def test_benchmark_runs_at_its_smallest_setting(name, tmp_path):
    args, expected = SMALLEST[name]
    proc = subprocess.run([sys.executable, "-m", "synth.bench", name, *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert expected in proc.stdout, proc.stdout


def figure_of(script: str, tmp_path) -> tuple[str, tuple[int, int]]:
    """Run ``scripts/{script} --out FILE``; the figure's format and size."""
    out = tmp_path / "figure.png"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Image.open(out) as figure:
        return figure.format, figure.size


def test_contact_sheet_script_writes_a_sheet(tmp_path):
    form, size = figure_of("contact_sheet.py", tmp_path)
    assert form == "PNG" and min(size) > 600  # several 300 px tiles


def test_decomposition_figure_script_writes_a_figure(tmp_path):
    """The README's figure beside the contact sheet (weight-free: no model involved)."""
    form, size = figure_of("decomposition_figure.py", tmp_path)
    assert form == "PNG" and size[0] > 1000  # six tiles across
