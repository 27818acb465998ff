"""Stages for the exit-path tests, loaded by ``python -m synth`` through
``captioning._target_=guarantee_stages.NAME`` with PYTHONPATH=tests, and :class:`GatedJob`, which
drives a job through the :class:`Gated` stage.

Tests of signals and kills wait on conditions (a sample held in flight, a line in the log), never
on the clock: a loaded CI machine may be any amount slower, and a fast one any amount faster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from synth.errors import ConfigError
from synth.stages.captioning import TemplateCaption

TESTS = Path(__file__).resolve().parent
HOLD_S = 600  # a gate never opened holds its samples this long (a job left behind by a failed test ends)


class SetupConfigError(TemplateCaption):
    """Like a model stage whose weights are missing: a ConfigError found at setup()."""

    def setup(self, device: str) -> None:
        raise ConfigError("captioning.model=missing/model: not found; download it first")


class Gated(TemplateCaption):
    """The template caption, behind a gate when ``SYNTH_TEST_GATE`` names a file: a sample of index
    ``SYNTH_TEST_GATE_FROM`` (default 0) or more touches ``SYNTH_TEST_HELD/{id}`` (so that a test
    knows it is in flight) and waits until that file exists. Without ``SYNTH_TEST_GATE`` (a
    reference run, a rerun) it is the template caption: the same outputs."""

    def process_sample(self, sample) -> None:
        if sample.index >= int(os.environ.get("SYNTH_TEST_GATE_FROM", "0")):
            hold(sample.id)
        super().process_sample(sample)


class SlowToStart(Gated):
    """:class:`Gated`, and a worker process that unpickles it (as it starts) is held at the gate
    first, under the name ``starting-{pid}``: a test can send a signal while the workers start."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        hold(f"starting-{os.getpid()}")


def hold(name: str) -> None:
    """With ``SYNTH_TEST_GATE`` set: touch ``SYNTH_TEST_HELD/{name}`` and wait until the gate opens."""
    gate = os.environ.get("SYNTH_TEST_GATE")
    if gate:
        (Path(os.environ["SYNTH_TEST_HELD"]) / name).touch()
        deadline = time.monotonic() + HOLD_S
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)


class KillsItsWorker(TemplateCaption):
    """Like the OOM killer: SIGKILLs the worker process that captions the sample of index 1."""

    def process_sample(self, sample) -> None:
        if sample.index == 1:
            os.kill(os.getpid(), 9)
        super().process_sample(sample)


def tests_on_path() -> dict[str, str]:
    """The environment entry that lets ``python -m synth`` import this module (the caller's
    PYTHONPATH kept after it: a copy of the tree under test, as mutation testing runs)."""
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)}


tests_on_path.__test__ = False  # a helper, though test modules import it under a test-like name


def wait_for(condition: Callable[[], object], what: str, proc: subprocess.Popen | None = None,
             timeout_s: float = 120) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if ``proc`` ends first or after
    ``timeout_s`` (generous: only a broken job takes that long)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the job ended (exit {proc.returncode}) before {what}\n{out or ''}\n{err or ''}")
        assert time.monotonic() < deadline, f"not after {timeout_s} s: {what}"
        time.sleep(0.02)


def _sigint_as_in_a_terminal() -> None:
    """In the job's process, before ``python`` starts: SIGINT at its default action, as a job
    started in a terminal has it. Tests started in the background by a script (``nohup make test &``)
    inherit it ignored, and the job would ignore a second Ctrl-C (its handler gives back the
    previous one)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class GatedJob:
    """``python -m synth ARGS captioning._target_=guarantee_stages.Gated`` in a subprocess, with the
    gate closed: samples from index ``gate_from`` on are held in flight until :meth:`open_gate`
    (never: until the job is killed or aborted). ``new_session``: in its own process group, as a
    terminal's Ctrl-C reaches a job and its worker processes. ``stage``: another class of this module
    for its captioning (a subclass of Gated)."""

    def __init__(self, tmp_path: Path, run_dir: Path, *args: str, gate_from: int = 0, new_session: bool = False,
                 stage: str = "Gated"):
        self.run_dir, self.gate, self.held_dir = run_dir, tmp_path / "gate-open", tmp_path / "held"
        self.new_session = new_session
        self.held_dir.mkdir()
        env = {**os.environ, **tests_on_path(), "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1",
               "SYNTH_TEST_GATE": str(self.gate),
               "SYNTH_TEST_GATE_FROM": str(gate_from), "SYNTH_TEST_HELD": str(self.held_dir)}
        cmd = [sys.executable, "-m", "synth", f"hydra.run.dir={run_dir}", "logger=none", *args,
               f"captioning._target_=guarantee_stages.{stage}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=tmp_path, start_new_session=new_session, preexec_fn=_sigint_as_in_a_terminal)

    def held(self) -> list[str]:
        """Ids of the samples that reached the gate (held there while it was closed)."""
        return sorted(p.name for p in self.held_dir.iterdir())

    def wait_until_held(self, count: int = 1) -> None:
        self._wait(lambda: len(self.held()) >= count, f"{count} sample(s) held at the gate")

    def send(self, sig: signal.Signals) -> None:
        """``sig`` to the job, and to its process group when it has its own (Ctrl-C in a terminal)."""
        if self.new_session:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def stop(self, sig: signal.Signals) -> None:
        """``sig``, then wait until the job's handler has taken it (its log line): the job is
        stopping, and a second signal would reach the previous handler."""
        self.send(sig)
        self._wait(lambda: any(f"{sig.name}: finishing the samples in flight" in p.read_text(errors="replace")
                               for p in self.run_dir.glob("*.log")), f"the {sig.name} handler's log line")

    def open_gate(self) -> None:
        self.gate.touch()

    def communicate(self, timeout_s: float = 120) -> tuple[str, str]:
        try:
            return self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # the job's faulthandler prints where each thread is
            try:
                out, err = self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                out, err = "", ""
            self.kill()
            raise AssertionError(f"the job did not end within {timeout_s} s\n{out[-3000:]}\n{err[-6000:]}") from None

    def kill(self) -> None:
        """SIGKILL to the job (and its worker processes when it has its own group); a test that
        fails leaves no job behind."""
        try:
            self.send(signal.SIGKILL)
        except ProcessLookupError:  # ended already, and its workers with it
            pass
        self.proc.wait()

    def _wait(self, condition: Callable[[], object], what: str) -> None:
        try:
            wait_for(condition, what, self.proc)
        except AssertionError:
            self.kill()
            raise
