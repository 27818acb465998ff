"""``python -m synth``: compose the config, build everything from it, run, print a summary."""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from synth.errors import ConfigError, OutputError
from synth.faults import EXIT_CONFIG_ERROR, JOB_ERRORS, check_creatable, exit_code_of, printable
from synth.params import switch
from synth.runner import STAGE_GROUPS, Runner
from synth.settings import output_settings
from synth.stages.segmentation import MaskFolder

log = logging.getLogger("synth")


def build(cfg: DictConfig, key: str) -> Any:
    """instantiate(cfg[key]) with a one-line ConfigError instead of Hydra's wrapped traceback."""
    node = cfg[key]
    if isinstance(node, DictConfig) and "_target_" not in node:  # instantiate would return the dict itself
        raise ConfigError(f"{key}: no option of this group is selected (~{key}), yet {key}.{next(iter(node), '')} "
                          f"is set (e.g. by experiment=...); select one, {key}=..., or leave out what sets it")
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        unexpected = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", str(cause))
        if unexpected and str(node.get("_target_")).endswith("." + unexpected[1]):  # experiment=sun_shadows shadow=mix
            raise ConfigError(f"{key}.{unexpected[2]}: not a setting of {node._target_} (set by an experiment=... "
                              f"or +{key}.{unexpected[2]}=...); leave it out or choose another {key} option") from None
        raise ConfigError(f"{key}: {cause or err}".splitlines()[0]) from err
    except InterpolationResolutionError as err:  # captioning.template='remove ${x}': Hydra's traceback, exit 1
        raise ConfigError(f"{key}: {err}".splitlines()[0] + " (in a ${...} of one of its values)") from None


def build_writers(cfg: DictConfig) -> list[Any]:
    """``writer`` (default folder) plus every extra one in ``writers=[webdataset,hf]``."""
    writers = [build(cfg, "writer")] if cfg.get("writer") is not None else []
    for name in cfg.get("writers") or {}:
        try:
            writer = build(cfg.writers, name)
        except ConfigError as err:  # the writer names its keys "writer.*"; here they are writers.NAME.*
            message = str(err)
            raise ConfigError(f"writers.{name}." + message[len("writer."):] if message.startswith("writer.")
                              else f"writers.{message}") from None
        if any(type(w) is type(writer) for w in writers):
            raise ConfigError(f"writers.{name}: already selected by `writer` or earlier in `writers`; list each writer once")
        writers.append(writer)
    if not writers:  # every sample would be processed and thrown away
        raise ConfigError("writer: none selected (writer=null or ~writer, and no writers=[...]): nothing would "
                          "be written; choose one, e.g. writer=folder")
    return writers


def build_runner(cfg: DictConfig, run_dir: Path) -> Runner:
    """Every object from config; stages in the order the config lists them."""
    stages = [build(cfg, key) for key in cfg if key in STAGE_GROUPS]
    source = build(cfg, "data")
    skip_mask_folders(source, stages)
    return Runner(
        source=source,
        stages=stages,
        writers=build_writers(cfg),
        logger=build(cfg, "logger"),
        run_dir=run_dir,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        workers=cfg.get("workers", "auto"),
        device=job_device(cfg.device),
        resume=switch("resume", cfg.resume),
        progress_every_s=cfg.get("progress_every_s", 30),
        max_failure_rate=cfg.get("max_failure_rate", 0.1),
        settings=output_settings(OmegaConf.to_container(cfg, resolve=True), STAGE_GROUPS),
    )


def job_device(value: Any) -> str:
    """The top-level ``device``: a torch device string (whether this machine has it is checked
    when a model stage sets up; the weight-free stages never use it)."""
    if value is None or value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", str(value)):
        return value
    raise ConfigError(f"device={value}: choose auto, cpu, cuda, cuda:N or mps")


def skip_mask_folders(source: Any, stages: list[Any]) -> None:
    """A mask folder (``segmentation=mask_folder``) inside ``data.path`` is never listed as input:
    its masks would each be found as their own mask. When it is ``data.path`` itself (masks beside
    the photos, ``segmentation.suffix=_mask.png``) the files ending with the suffix are not listed;
    one that holds ``data.path`` is left alone. A model stage's ``fallback=mask_folder`` counts too."""
    root = getattr(source, "root", None)
    for stage in [s for each in stages for s in (each, getattr(each, "fallback", None))]:
        if isinstance(stage, MaskFolder) and root is not None and hasattr(source, "skip"):
            masks, top = os.path.realpath(stage.path), os.path.realpath(root)
            if masks == top and stage.suffix.lower() in getattr(source, "extensions", ()):
                raise ConfigError(f"segmentation.suffix={stage.suffix}: segmentation.path is data.path, so each photo "
                                  "would be its own mask; name the masks e.g. <stem>_mask.png (segmentation.suffix="
                                  "_mask.png) or move them")
            if masks == top and hasattr(source, "skip_names_ending"):
                source.skip_names_ending(stage.suffix)  # each mask would be a photo without a mask
            elif masks != top and os.path.commonpath([masks, top]) == top:
                source.skip(masks)


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"synth: {summary['done']} done, {summary['failed']} failed, "
             f"{summary['skipped_complete']} already complete, of {summary['total']} "
             f"in {summary['elapsed_s']:.1f} s ({summary['images_per_s'] or 0:.2f} images/s)"]
    if summary["stage_ms"]:
        lines.append("  ms per image: " + ", ".join(f"{k} {v['median']:.0f}" for k, v in summary["stage_ms"].items()))
    for failure in summary["failures"]:  # the first few: metadata.json's list is bounded
        lines.append(f"  failed {failure['id']} {failure['path']} at {failure['stage']}: {failure['error']}")
    if summary["failed"] > len(summary["failures"]):
        lines.append(f"  ... {summary['failed'] - len(summary['failures'])} more failures in {summary['failures_file']}")
    lines.append(f"  outputs: {summary['run_dir']} (records: {summary['samples_file']})")
    if summary.get("exit_reason"):
        lines.append(f"  exit {summary['exit_code']}: {summary['exit_reason']}")
    return "\n".join(printable(line) for line in lines)  # each line escaped: a path cannot add one


@hydra.main(version_base="1.3", config_path="pkg://synth.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    _drop_console_logs_once_stdout_is_gone()
    try:
        runner = build_runner(cfg, run_dir)
        summary = runner.run(config=OmegaConf.to_container(cfg, resolve=True))
    except tuple(JOB_ERRORS) as err:  # a bad config, an unwritable output, a worker killed: one line
        print(f"error: {printable(str(err))}", file=sys.stderr)
        _end_job(exit_code_of(err), str(err))
    except KeyboardInterrupt:  # Ctrl-C before the job's handler (listing, resume check) or a second one
        print("error: interrupted by SIGINT; files are written atomically: rerun the same command to resume",
              file=sys.stderr)
        raise SystemExit(128 + int(signal.SIGINT)) from None
    _print_summary(format_summary(summary))
    if summary["exit_code"]:
        _end_job(summary["exit_code"], summary.get("exit_reason") or "")


class JobFailed(CompactHydraException):
    """A multirun job that failed (exit 1-3). Raised instead of SystemExit, which Hydra's launchers
    do not catch: the basic launcher stopped the sweep there, joblib tore down its other jobs.
    Hydra records this per job, runs the rest and then ends the multirun with this line, exit 1."""


def _end_job(code: int, reason: str) -> None:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and code < 128:  # a signal still stops the whole sweep
        raise JobFailed(f"error: job {hydra_cfg.job.num} of the multirun ({hydra_cfg.runtime.output_dir}) failed: "
                        f"{printable(reason.splitlines()[0] if reason else 'see its output')}, exit {code}; "
                        "the other jobs ran (each job's metadata.json has its exit_code)")
    raise SystemExit(code)


def _print_summary(text: str) -> None:
    """A closed stdout, or a pipe whose reader has gone, must not turn a finished job into exit 1:
    the job is done and metadata.json says so."""
    try:
        print(text, flush=True)
    except (OSError, ValueError):
        _stdout_to_devnull()


def _stdout_to_devnull() -> None:
    """Point stdout's descriptor at /dev/null: what is still buffered, and the exit-time flush,
    would fail again on a closed stdout or a gone reader."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        pass


def _drop_console_logs_once_stdout_is_gone() -> None:
    """Hydra's console handler logs to stdout: once that is closed or its reader has gone
    (``synth ... | head -1``), its lines are dropped, not each reported with a traceback on stderr
    (the log file keeps them)."""
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and handler.stream is sys.stdout:
            handler.handleError = functools.partial(_unless_stdout_is_gone, handler.handleError)


def _unless_stdout_is_gone(handle_error: Callable[[logging.LogRecord], None], record: logging.LogRecord) -> None:
    err = sys.exc_info()[1]
    if isinstance(err, BrokenPipeError) or (isinstance(err, ValueError) and sys.stdout.closed):
        _stdout_to_devnull()
    else:  # e.g. a log call with the wrong arguments: reported as logging always does
        handle_error(record)


def group_options(group: str) -> list[str]:
    """The options of config group ``group`` (its YAML files in synth.conf), sorted."""
    return sorted(p.name[:-5] for p in resources.files("synth.conf").joinpath(group).iterdir()
                  if p.name.endswith(".yaml"))


def check_group_choices(argv: list[str]) -> str | None:
    """Hydra prints a multi-line block for ``shadow=typo``; name the key and options in one line."""
    for arg in argv:
        name, sep, value = arg.lstrip("+~").partition("=")
        group_dir = resources.files("synth.conf").joinpath(name)
        if value.startswith("[") and value.endswith("]"):  # several options: writers=[webdataset,hf]
            chosen = [v.strip() for v in value[1:-1].split(",") if v.strip()]
        elif "," in value:  # a sweep: Hydra names a bad one itself
            continue
        else:
            chosen = [value]
        if not sep or "/" in name or not group_dir.is_dir() or not value or value == "null":
            continue
        options = group_options(name)
        for choice in chosen:
            if choice not in options:
                which = f" {choice}" if len(chosen) > 1 else ""
                return f"{name}={value}: unknown option{which}; choose from {', '.join(options)}"
    return None


class CheckOutputDir(Callback):
    """Hydra creates the run directory before synth starts and reports a failure there as a
    traceback; check it first (``hydra.callbacks.output_dir`` in config.yaml) and say what is
    wrong in one line. Hydra caches ``${now:...}``, so this is the directory it will create."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_unless_creatable(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_unless_creatable(config.hydra.sweep.dir)


def _exit_unless_creatable(path: str) -> None:
    try:
        link = Path(path).absolute()  # its nearest part that is there, a broken link included
        while not os.path.lexists(link) and link.parent != link:
            link = link.parent
        if link.is_symlink() and not link.exists():  # Hydra's makedirs would fail with a traceback
            raise OutputError(f"cannot write to {Path(path).absolute()}: {link} is a symbolic link to "
                              f"{os.readlink(link)}, which does not exist")
        check_creatable(Path(path))
    except OutputError as err:
        _exit_with(err)


def _exit_with(err: BaseException) -> None:
    """One line on stderr and the error's exit status (faults.JOB_ERRORS), no traceback."""
    print(f"error: {printable(str(err))}", file=sys.stderr)
    raise SystemExit(exit_code_of(err)) from None


def drop_null_groups(argv: list[str]) -> list[str]:
    """``writer=null`` means "no writer", as ``~writer`` does (Hydra refuses null for a group
    override with a traceback); a group left empty is then checked like any other config."""
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        is_group = sep and name.isidentifier() and resources.files("synth.conf").joinpath(name).is_dir()
        out.append(f"~{name}" if is_group and value == "null" else arg)
    return out


def cli() -> None:
    problem = check_group_choices(sys.argv[1:])
    if problem:
        print(f"error: {printable(problem)}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR)
    sys.argv[1:] = drop_null_groups(sys.argv[1:])
    main()
