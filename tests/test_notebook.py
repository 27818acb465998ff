"""notebooks/review.ipynb runs top to bottom against a tiny run, and is committed without outputs."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO, run_synth

NOTEBOOK = REPO / "notebooks" / "review.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", [])  # papermill can set RUN_DIR
    assert "RUN_DIR" in code[0].source


@pytest.mark.slow
def test_notebook_runs_against_a_tiny_run(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_synth(run_dir, "data.limit=2")
    monkeypatch.setenv("SYNTH_RUN_DIR", str(run_dir))  # the kernel inherits this environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # python3 is ipykernel's own kernel, started with this interpreter (sys.executable).
    # Generous limits (per cell, kernel start: 60 s by default): a loaded CI machine starts a kernel slowly.
    NotebookClient(nb, timeout=600, startup_timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert f"run: {run_dir}" in text and "2 finished samples read" in text
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(figures) == 3  # a strip per sample, then the histograms
