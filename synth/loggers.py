"""Experiment loggers. The runner calls them; stages never do."""

from __future__ import annotations

import functools
import html
import json
import itertools
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from synth.errors import ConfigError, OutputError
from synth.faults import check_creatable
from synth.imaging import check_png_encoder, cut_out, encode, linear_to_srgb, shrink, to_uint8, with_alpha
from synth.params import setting
from synth.sample import Sample

MODES = ("online", "offline", "disabled")
MAX_FAILURE_ROWS = 1000  # the W&B failures table; the job keeps O(1) state per sample
MODE_ALIASES = {"run": "online", "dryrun": "offline"}  # older WANDB_MODE spellings
PROJECT_FORBIDDEN = ("/", "\\", "#", "?", "%", ":")  # wandb.init refuses these in a project name


def check_text(key: str, value: Any) -> str | None:
    """A wandb.init text argument: Hydra reads ``logger.name=123`` as a number, meant as text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}={value}: must be text")


def check_tags(tags: Any) -> list[str]:
    """``logger.tags``: one tag (``logger.tags=trial``) or a list; W&B takes 1 to 64 characters each."""
    if tags is None:
        return []
    listed = [tags] if isinstance(tags, (str, int, float)) else tags
    if not isinstance(listed, (list, tuple)) or not all(
            isinstance(t, (str, int, float)) and not isinstance(t, bool) and 1 <= len(str(t)) <= 64 for t in listed):
        raise ConfigError(f"logger.tags={tags}: a tag or a list of tags, each 1 to 64 characters")
    return [str(t) for t in listed]


def _no_sample(index: int) -> bool:
    return False


class NullLogger:
    """``logger=none``: logs nothing. Also the interface every logger implements."""

    def start(self, config: dict[str, Any], run_dir: str) -> None:
        """Called once before the first sample, with the resolved job config."""

    def log_sample(self, sample: Sample, step: int) -> None:
        """Called for every finished sample, in completion order (decide here what to keep)."""

    def image_indices(self) -> Callable[[int], bool]:
        """Which samples' images ``log_sample`` needs, as a picklable test of the global index
        (worker processes send a finished sample's images back only for those)."""
        return _no_sample

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Throughput and timing metrics, called after every batch."""

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        """Called exactly once at the end, also when the job failed (exit_code != 0) or ``start``
        raised."""


class WandbLogger(NullLogger):
    """``logger=wandb``: one W&B run per Hydra job, every stage image of the logged samples.

    Every ``log_every_n``-th sample of the job's shard is logged, up to ``max_images`` per run.
    The choice goes by global index (not completion order), so every job of a sweep logs the
    same inputs and their images line up in the dashboard; and by position within the shard
    (index // data.num_shards), so that every shard logs its share.
    """

    def __init__(self, project: str = "synth", entity: str | None = None, group: str | None = None,
                 job_type: str = "generate", tags: list[str] | None = None, name: str | None = None,
                 notes: str | None = None, mode: str | None = None, dir: str | None = None,
                 log_every_n: int = 1, max_images: int = 100, image_size: int | None = 512,
                 png_encoder: str = "auto"):
        key = "logger.mode" if mode else "WANDB_MODE"  # null reads $WANDB_MODE: name where a bad value came from
        mode = mode or os.environ.get("WANDB_MODE") or "online"
        mode = MODE_ALIASES.get(mode, mode)
        if mode not in MODES:
            raise ConfigError(f"{key}={mode}{'' if key == 'logger.mode' else ' (logger.mode=null)'}: "
                              f"choose from {', '.join(MODES)}")
        self.log_every_n = setting("logger.log_every_n", log_every_n, 1, integer=True)
        self.max_images = setting("logger.max_images", max_images, 0, integer=True)
        self.image_size = setting("logger.image_size", image_size, 16, integer=True, optional=True)  # null: full size
        self.png_encoder = check_png_encoder("logger.png_encoder", png_encoder)
        text = {key: check_text(f"logger.{key}", value) for key, value in dict(
            project=project, entity=entity, group=group, job_type=job_type, name=name, notes=notes).items()}
        if text["project"] and any(c in text["project"] for c in PROJECT_FORBIDDEN):
            raise ConfigError(f"logger.project={text['project']}: W&B project names cannot contain "
                              f"{' '.join(PROJECT_FORBIDDEN)}")
        self.init_kwargs = dict(text, tags=check_tags(tags))
        self.mode, self.dir = mode, dir
        self.run: Any = None
        self.mode_used = mode
        self.num_shards = 1  # from data.num_shards at start
        self.step = 0  # W&B drops rows whose step goes backwards: never log below the highest seen
        self.rows: list[dict[str, Any]] = []
        self.failures: list[list[Any]] = []
        self.ms_sum: dict[str, float] = {}
        self.ms_count: dict[str, int] = {}
        self.tmp: tempfile.TemporaryDirectory | None = None  # our PNGs, until W&B has copied them
        self.tmp_names = itertools.count()

    # -- the run ---------------------------------------------------------------------------------
    def start(self, config: dict[str, Any], run_dir: str) -> None:
        mode = self.mode
        if mode == "disabled":  # like logger=none: no run, no images encoded
            return
        import wandb  # only here, so that logger=none never imports it

        if mode == "online" and not _has_credentials(wandb):
            mode = "offline"  # never prompt: a job must not wait for input on a cluster node
            print("synth: no W&B credentials (wandb login / WANDB_API_KEY); logging offline", flush=True)
        self.num_shards = max(1, int((config.get("data") or {}).get("num_shards") or 1))
        hydra = _hydra_info()
        kwargs = dict(self.init_kwargs)
        kwargs["group"] = kwargs["group"] or hydra.get("group")
        kwargs["name"] = kwargs["name"] or hydra.get("name")
        # WANDB_DIR wins; otherwise the W&B files live in the run directory, beside the outputs.
        wandb_dir = Path(self.dir or os.environ.get("WANDB_DIR") or run_dir)
        try:
            check_creatable(wandb_dir)  # a file there: one line, exit 3, not mkdir's traceback
        except OutputError as err:
            where = "logger.dir" if self.dir else "WANDB_DIR" if os.environ.get("WANDB_DIR") else "run directory"
            raise OutputError(f"{where}: {err}") from None
        wandb_dir.mkdir(parents=True, exist_ok=True)
        config = {**config, "run_dir": str(run_dir), "overrides": hydra.get("overrides", [])}
        try:
            self.run = wandb.init(**kwargs, mode=mode, dir=str(wandb_dir), config=config, reinit="finish_previous")
        except Exception as err:  # noqa: BLE001 - a server problem must not cost the job its images
            if mode != "online":
                raise
            print(f"synth: W&B online init failed ({type(err).__name__}: {err}); logging offline", flush=True)
            mode = "offline"
            self.run = wandb.init(**kwargs, mode=mode, dir=str(wandb_dir), config=config, reinit="finish_previous")
        self.mode_used = mode

    def image_indices(self) -> Callable[[int], bool]:
        """The samples whose images ``log_sample`` may log (by global index), as a picklable test:
        worker processes send a finished sample's images back only for those."""
        if self.run is None or not self.max_images:
            return super().image_indices()
        return functools.partial(_logged_index, self.num_shards, self.log_every_n)

    def log_sample(self, sample: Sample, step: int) -> None:
        if self.run is None:
            return
        if not sample.ok:
            if len(self.failures) < MAX_FAILURE_ROWS:  # bounded: every failure is in failures.jsonl
                self.failures.append([sample.id, sample.source, sample.error_stage, sample.error])
            return
        for stage, ms in sample.timings_ms.items():
            self.ms_sum[stage] = self.ms_sum.get(stage, 0.0) + ms
            self.ms_count[stage] = self.ms_count.get(stage, 0) + 1
        if not _logged_index(self.num_shards, self.log_every_n, sample.index) or len(self.rows) >= self.max_images:
            return
        images = self._images(sample)
        raw_input = images.pop("stage_1/input_raw", None)  # the table's plain input; history shows the overlay
        self.step = max(self.step, step)
        self.run.log(images, step=self.step)
        row = {"id": sample.id, "index": sample.index, "source": sample.source,
               "input": raw_input, "mask": images.get("stage_1/input"),
               "albedo": images.get("stage_2/albedo"), "degraded": images.get("stage_3/degraded"),
               "composite": images.get("stage_3_5/composite"), "caption": sample.caption,
               "degradation_type": sample.degradation_type}
        row.update(flatten_params(sample.params))
        self.rows.append(row)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.run is None:
            return
        self.step = max(self.step, step)
        self.run.log(self._perf(metrics), step=self.step)

    def _perf(self, metrics: dict[str, float]) -> dict[str, float]:
        """The runner's metrics under perf/, plus the mean ms per stage so far under ms/."""
        data = {f"perf/{key}": value for key, value in metrics.items()}
        data.update({f"ms/{stage}": self.ms_sum[stage] / self.ms_count[stage] for stage in self.ms_sum})
        return data

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        if self.run is None:
            return
        import wandb

        run, self.run = self.run, None
        try:
            # The runner's last batches finish after its last log_metrics call: log the final point.
            run.log(self._perf({"images_per_s": summary.get("images_per_s") or 0.0,
                                "done": summary.get("done", 0), "failed": summary.get("failed", 0)}))
            if self.rows:
                run.log({"samples": samples_table(wandb, self.rows)})
            if self.failures:
                run.log({"failures": wandb.Table(columns=["id", "source", "stage", "error"], data=self.failures)})
            totals = {k: summary.get(k) for k in ("total", "complete", "done", "failed", "skipped_complete",
                                                   "elapsed_s", "images_per_s", "exit_code")}
            run_dir = Path(summary.get("run_dir") or ".")
            totals["records"] = str(run_dir / summary.get("samples_file", "samples.jsonl"))  # every sample's record
            totals["records_count"] = _count_lines(run_dir / summary.get("samples_file", "samples.jsonl"))
            totals.update({f"ms_median/{k}": v["median"] for k, v in summary.get("stage_ms", {}).items()})
            run.summary.update(totals)
        finally:
            # Always finish, failing when the job failed, so the next job of a multirun starts fresh.
            run.finish(exit_code=exit_code)
            if self.tmp is not None:
                self.tmp.cleanup()
                self.tmp = None
            if self.mode_used == "offline":
                print(f"synth: W&B run saved offline; upload it with: wandb sync {Path(run.dir).parent}",
                      flush=True)

    # -- helpers ---------------------------------------------------------------------------------
    def _fit(self, image: np.ndarray) -> np.ndarray:
        """Shrink to ``image_size`` on the long side: W&B is for looking, the run dir keeps full size."""
        return image if self.image_size is None else shrink(image, self.image_size)

    def _png(self, image: np.ndarray) -> str:
        """Encode as PNG (``png_encoder``: fpng for RGB/RGBA, OpenCV level 1 for masks) into a
        temporary file: at 512 px about 25x (fpng) or 5x (OpenCV) faster than wandb.Image's own PIL
        encoding of an array, and this runs on the pipeline's main thread."""
        if self.tmp is None:
            self.tmp = tempfile.TemporaryDirectory(prefix="synth-wandb-")
        path = os.path.join(self.tmp.name, f"{next(self.tmp_names)}.png")
        with open(path, "wb") as f:
            f.write(encode(image, "png", 1, 95, self.png_encoder))
        return path

    def _images(self, sample: Sample) -> dict[str, Any]:
        """Every stage image of one sample, keyed by stage so W&B shows them side by side."""
        import wandb

        sid, mask = sample.id, sample.mask
        small_mask = None if mask is None else self._fit(mask.astype(np.float32))
        out: dict[str, Any] = {}

        def put(key: str, image: np.ndarray | str | None, caption: str = sid, **kwargs: Any) -> None:
            if image is not None:
                out[key] = wandb.Image(image if isinstance(image, str) else self._png(image), caption=caption,
                                       **kwargs)

        def layer(image: np.ndarray | None) -> np.ndarray | None:
            """Subject layers as RGBA with the mask as alpha, as the folder writer stores them."""
            if image is None:
                return None
            return with_alpha(self._fit(image), small_mask) if small_mask is not None else self._fit(image)

        image = None if sample.image is None else self._png(self._fit(sample.image))  # encoded once, used twice
        put("stage_1/input_raw", image)
        if small_mask is not None:
            overlay = {"subject": {"mask_data": (small_mask >= 0.5).astype(np.uint8),
                                   "class_labels": {0: "background", 1: "subject"}}}
            put("stage_1/input", image, masks=overlay)
            put("stage_1/mask", to_uint8(small_mask))
        else:
            put("stage_1/input", image)
        put("stage_1/foreground", layer(sample.foreground))
        put("stage_1/background", None if small_mask is None or sample.image is None
            else cut_out(self._fit(sample.image), small_mask))
        put("stage_2/albedo", layer(sample.albedo))
        for name in ("shading", "residual"):  # stage 2's decomposition (linear light), when it has one
            values = getattr(sample, name)
            put(f"stage_2/{name}", None if values is None else layer(linear_to_srgb(values)))
        put("stage_3/degraded", layer(sample.degraded))
        if sample.shadow_matte is not None:
            put("stage_3/shadow_matte", to_uint8(self._fit(sample.shadow_matte.astype(np.float32))))
        put("stage_3_5/composite", None if sample.composite is None else self._fit(sample.composite),
            caption=f"{sid}: {sample.caption}" if sample.caption else sid)
        if sample.caption is not None:
            out["stage_4/caption"] = wandb.Html(f"<p><b>{sid}</b>: {html.escape(sample.caption)}</p>")
        return out


def _logged_index(num_shards: int, log_every_n: int, index: int) -> bool:
    """Every ``log_every_n``-th sample of the shard (by position in the shard: index // num_shards)."""
    return (index // num_shards) % log_every_n == 0


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"shadow": {"opacity": 0.3}} -> {"shadow.opacity": 0.3}: one table column per drawn value.

    Lists become JSON text, so every cell is a number, a string or a bool that W&B can sort.
    """
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, default=str)
        elif isinstance(value, np.generic):
            flat[name] = value.item()
        else:
            flat[name] = value
    return flat


def samples_table(wandb: Any, rows: list[dict[str, Any]]) -> Any:
    """One row per logged sample; parameter columns are the union over rows (missing -> None)."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    data = [[row.get(column) for column in columns] for row in rows]
    return wandb.Table(columns=columns, data=data, allow_mixed_types=True)


def _count_lines(path: Path) -> int:
    """Lines of a JSON-lines file, read in blocks (the records of a million samples are large)."""
    try:
        with open(path, "rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0


def _has_credentials(wandb: Any) -> bool:
    """Whether W&B has an API key (env, settings or .netrc), without ever prompting."""
    try:
        return bool(wandb.login(prompt=False, verify=False))
    except TypeError:  # wandb before `prompt=` existed: look for the usual places ourselves
        import netrc

        if os.environ.get("WANDB_API_KEY"):
            return True
        try:
            return netrc.netrc().authenticators("api.wandb.ai") is not None
        except (OSError, netrc.NetrcParseError):
            return False


def _hydra_info() -> dict[str, Any]:
    """Group, name and overrides from the Hydra job, when there is one.

    ``group`` is the sweep directory in a multirun (after ``multirun/`` when the path has one,
    e.g. ``2026-11-26/09-00-02``, else its last part), so every job of a sweep shares it; the
    name is the job's own overrides (``seed=1,shadow.opacity=0.3``), logger settings left out.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return {}
        hc = HydraConfig.get()
    except Exception:  # noqa: BLE001 - no Hydra job (a library call): nothing to derive
        return {}
    overrides = [o for o in hc.overrides.task if not o.lstrip("+~").startswith(("logger.", "logger="))]
    info: dict[str, Any] = {"overrides": list(hc.overrides.task), "name": ",".join(overrides) or None}
    if hc.mode == RunMode.MULTIRUN:
        parts = Path(hc.sweep.dir).parts
        info["group"] = "/".join(parts[parts.index("multirun") + 1:]) if "multirun" in parts[:-1] else parts[-1]
    return info
