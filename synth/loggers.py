"""Experiment loggers. The runner calls them; stages never do."""

from __future__ import annotations

from typing import Any

from synth.sample import Sample


class NullLogger:
    """``logger=none``: logs nothing. Also the interface every logger implements."""

    def start(self, config: dict[str, Any], run_dir: str) -> None:
        """Called once before the first sample, with the resolved job config."""

    def log_sample(self, sample: Sample, step: int) -> None:
        """Called for every finished sample, in completion order (decide here what to keep)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Throughput and timing metrics, called after every batch."""

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        """Called exactly once at the end, also when the job failed (exit_code != 0)."""
