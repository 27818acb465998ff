"""Progress of one job: a tqdm bar on a terminal, periodic log lines elsewhere (Slurm logs)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger("synth")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress(contextlib.AbstractContextManager):
    """Counts finished samples of ``total``.

    On a terminal: a bar with images/s, and log records (Hydra's console handler) are routed
    through ``tqdm.write`` so they do not break it. Otherwise: one ``synth`` log line every
    ``every_s`` seconds (0 turns them off), which Hydra sends to the console and the job's log file.
    """

    def __init__(self, total: int, every_s: float = 30.0, terminal: bool | None = None):
        self.total, self.every_s = total, float(every_s)
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.done = self.failed = 0
        self.started = self.last_log = time.perf_counter()
        self._stack = contextlib.ExitStack()
        self.bar = None

    def __enter__(self) -> "Progress":
        if self.terminal:
            self._stack.enter_context(logging_redirect_tqdm())
            self.bar = self._stack.enter_context(tqdm(total=self.total, unit="img", desc="synth", dynamic_ncols=True))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(1)
            if not ok:
                self.bar.set_postfix(failed=self.failed, refresh=False)
        elif self.every_s > 0 and now - self.last_log >= self.every_s:
            self.last_log = now
            log.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = _duration(left) if rate > 0 else "?"
        return (f"progress: {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{self.failed} failed, {rate:.2f} images/s, {_duration(elapsed)} elapsed, about {eta} left")
