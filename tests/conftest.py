"""Shared fixtures: compose configs the way the app does, and run real jobs in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hypothesis import settings

from synth.data import SAMPLES_DIR
from synth.imaging import open_rgb
from synth.sample import Sample

REPO = Path(__file__).resolve().parent.parent

# `make mutants` runs the tests once per mutant: fewer Hypothesis examples there (setup.cfg [mutmut]).
settings.register_profile("mutmut", max_examples=20, database=None)

# Tests run as from a terminal: started in the background by a script, the suite (and every job it
# starts, which inherits it) would have SIGINT ignored, and a job leaves an ignored SIGINT alone.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def compose_config(*overrides: str):
    """The job config exactly as ``python -m synth`` composes it (no Hydra run directory)."""
    with initialize_config_module(config_module="synth.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def built_stage(group: str, *overrides: str):
    """The ``group`` stage exactly as ``python -m synth OVERRIDES`` builds it, set up on the CPU."""
    from synth.app import build

    stage = build(compose_config(*overrides), group)
    stage.setup("cpu")
    return stage


def run_synth(run_dir: Path, *overrides: str, check: bool = True, env: dict | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m synth hydra.run.dir=RUN_DIR overrides...`` in a subprocess (logger off by default)."""
    cmd = [sys.executable, "-m", "synth", f"hydra.run.dir={run_dir}", *overrides]
    if not any(o.startswith("logger=") for o in overrides):
        cmd.append("logger=none")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=run_dir.parent)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "metadata.json").read_text())


def read_samples(run_dir: Path | str) -> list[dict]:
    """The per-sample records of a run directory: every line of its samples*.jsonl, in file order."""
    return [json.loads(line) for path in sorted(Path(run_dir).glob("samples*.jsonl"))
            for line in path.read_text().splitlines()]


def sample_paths() -> list[Path]:
    return sorted(SAMPLES_DIR.glob("*.jpg"))


def make_sample(path: Path | None = None, index: int = 0, seed: int = 0, size: int | None = None) -> Sample:
    """A decoded Sample of a bundled photo (optionally resized to size x size)."""
    path = path or SAMPLES_DIR / "astronaut.jpg"
    sample = Sample(index=index, id=f"{index:06d}", source=str(path), seed=seed)
    image = open_rgb(str(path))
    if size:
        import cv2
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    sample.image = image
    return sample


def two_photos(shadow: dict | None = None) -> list[Sample]:
    """The first two bundled photos as samples 0 and 1; ``shadow`` fills what stage 3 would record."""
    batch = [make_sample(p, index=i) for i, p in enumerate(sample_paths()[:2])]
    for sample in batch if shadow else []:
        sample.degradation_type = "hard_shadow"
        sample.params["shadow"] = dict(shadow)
    return batch


def batched_and_single(stage, make_batch) -> tuple[list[Sample], list[Sample]]:
    """Run ``stage`` on one batch, and on a fresh copy of it one sample at a time."""
    batch = make_batch()
    stage.process(batch)
    singles = make_batch()
    for sample in singles:
        stage.process([sample])
    return batch, singles


def soft_disc_mask(h: int, w: int, radius: float = 0.35, edge: float = 0.05) -> np.ndarray:
    """A centred disc whose edge ramps from 1 to 0 (tests soft-edge handling)."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
    return np.clip((radius + edge - r) / (2 * edge), 0.0, 1.0).astype(np.float32)


@pytest.fixture
def samples_dir() -> Path:
    return SAMPLES_DIR
