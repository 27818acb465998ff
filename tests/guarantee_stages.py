"""Stages for the exit-path tests in test_guarantees.py, loaded by ``python -m synth`` through
``captioning._target_=guarantee_stages.NAME`` with PYTHONPATH=tests."""

import os
import time
from pathlib import Path

from synth.errors import ConfigError
from synth.stages.captioning import TemplateCaption


class SetupConfigError(TemplateCaption):
    """Like a model stage whose weights are missing: a ConfigError found at setup()."""

    def setup(self, device: str) -> None:
        raise ConfigError("captioning.model=missing/model: not found; download it first")


class Sleepy(TemplateCaption):
    """The template caption after ``SYNTH_TEST_SLEEP`` seconds; touches ``SYNTH_TEST_MARK`` when it
    starts a sample, so that a test knows when a sample is in flight."""

    def process_sample(self, sample) -> None:
        Path(os.environ["SYNTH_TEST_MARK"]).touch()
        time.sleep(float(os.environ["SYNTH_TEST_SLEEP"]))
        super().process_sample(sample)


class KillsItsWorker(TemplateCaption):
    """Like the OOM killer: SIGKILLs the worker process that captions the sample of index 1."""

    def process_sample(self, sample) -> None:
        if sample.index == 1:
            os.kill(os.getpid(), 9)
        super().process_sample(sample)
