"""logger=wandb: offline runs into a temporary directory, read back from their .wandb files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_sample, run_synth, soft_disc_mask
from synth.errors import ConfigError
from synth.loggers import WandbLogger, flatten_params

STAGE_KEYS = ["stage_1/input", "stage_1/mask", "stage_1/foreground", "stage_1/background", "stage_2/albedo",
              "stage_3/degraded", "stage_3/shadow_matte", "stage_3_5/composite", "stage_4/caption"]
TABLE_COLUMNS = ["id", "input", "mask", "albedo", "degraded", "composite", "caption",
                 "shadow.opacity", "shadow.blur", "shadow.pattern", "albedo.blend"]


# -- reading an offline run back ------------------------------------------------------------------
def read_records(path: Path):
    """The protobuf records of a .wandb file (a LevelDB-style log of 32 KiB blocks after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


class OfflineRun:
    """What one offline-run-* directory holds: run record, history, summary, exit code, tables."""

    def __init__(self, path: Path):
        self.path, self.files = path, path / "files"
        self.history: list[dict] = []
        self.summary: dict = {}
        self.config: dict = {}
        self.exit_code: int | None = None
        self.artifacts: dict[str, dict[str, str]] = {}
        for record in read_records(next(path.glob("*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.run = record.run
                self.config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "config":
                self.config.update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                self.history.append(nested(record.history.item))
            elif kind == "summary":
                self.summary.update(nested(record.summary.update))
            elif kind == "exit":
                self.exit_code = record.exit.exit_code
            elif kind == "artifact":
                self.artifacts[record.artifact.name] = {e.path: e.local_path for e in record.artifact.manifest.contents}

    def table(self, key: str) -> dict:
        """A logged wandb.Table: its JSON lives in the run_table artifact (staged under WANDB_DATA_DIR)."""
        (name,) = [n for n in self.artifacts if n.endswith(f"-{key}")]
        (local,) = [p for path, p in self.artifacts[name].items() if path.endswith(".table.json")]
        return json.loads(Path(local).read_text())


def nested(items) -> dict:
    """History/summary items ("stage_1/input", "caption") -> {"stage_1/input": {"caption": ...}}."""
    out: dict = {}
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = json.loads(item.value_json)
    return out


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    return [OfflineRun(p) for p in sorted((wandb_dir / "wandb").glob("offline-run-*"))]


def wandb_env(root: Path) -> dict[str, str]:
    """W&B offline, every directory it writes inside ``root``, no credentials from this machine."""
    env = {name: str(root / name.lower()) for name in
           ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")}
    for path in env.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    env.update(WANDB_MODE="offline", HOME=str(root), NETRC=str(root / "no-netrc"),
               WANDB__SERVICE_WAIT="300", WANDB_INIT_TIMEOUT="300")  # a loaded machine starts wandb-core slowly
    return env


# -- one job, logged offline ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def logged_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb_job")
    env = wandb_env(root)
    proc = run_synth(root / "run", "data.limit=2", "logger=wandb", "logger.mode=offline", env=env)
    (run,) = offline_runs(Path(env["WANDB_DIR"]))
    return proc, run


@pytest.mark.slow
def test_media_for_every_stage_of_every_logged_sample(logged_job):
    _, run = logged_job
    rows = [row for row in run.history if "stage_3_5/composite" in row]
    assert len(rows) == 2
    for row in rows:
        assert set(STAGE_KEYS) <= set(row)
        for key in STAGE_KEYS:
            assert (run.files / row[key]["path"]).is_file(), (key, row[key])
        sid = row["stage_1/input"]["caption"]
        assert row["stage_3_5/composite"]["caption"].startswith(f"{sid}: remove ")
        assert "masks" in row["stage_1/input"]  # the mask as a W&B overlay on the input
    assert sorted(r["stage_1/input"]["caption"] for r in rows) == ["000000", "000001"]


@pytest.mark.slow
def test_samples_table_has_a_row_per_logged_sample_and_a_column_per_parameter(logged_job):
    _, run = logged_job
    table = run.table("samples")
    assert set(TABLE_COLUMNS) <= set(table["columns"])
    assert len(table["data"]) == 2
    cells = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [c["id"] for c in cells] == ["000000", "000001"]
    for cell in cells:
        assert isinstance(cell["shadow.opacity"], float) and 0.0 <= cell["shadow.opacity"] <= 1.0
        assert cell["composite"]["_type"] == "image-file" and cell["caption"].startswith("remove ")


@pytest.mark.slow
def test_config_metrics_summary_and_sync_hint(logged_job):
    proc, run = logged_job
    assert run.config["seed"] == 0 and run.config["data"]["limit"] == 2
    assert run.config["overrides"] == ["data.limit=2", "logger=wandb", "logger.mode=offline"]
    assert run.run.display_name == "data.limit=2"  # logger settings are left out of the name
    assert run.summary["done"] == 2 and run.summary["failed"] == 0 and run.summary["exit_code"] == 0
    assert run.summary["records_count"] == 2 and run.summary["records"].endswith("samples.jsonl")  # read from it
    assert run.summary["ms/segmentation"] > 0 and run.summary["perf/images_per_s"] > 0
    assert run.exit_code == 0
    assert f"wandb sync {run.path}" in proc.stdout


# -- jobs that go wrong, sweeps -------------------------------------------------------------------
@pytest.mark.slow
def test_failing_job_without_credentials_runs_offline_and_finishes_with_a_failing_exit_code(tmp_path, monkeypatch):
    """No mode given and no API key: offline without prompting; a stage that raises fails the run."""
    env = {**wandb_env(tmp_path), "PYTHONPATH": str(REPO / "tests")}
    del env["WANDB_MODE"]
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    proc = run_synth(tmp_path / "run", "logger=wandb", "captioning._target_=raising_stage.RaisingStage",
                     env=env, check=False)
    assert proc.returncode != 0 and "setup failed on purpose" in proc.stderr
    assert "no W&B credentials" in proc.stdout
    (run,) = offline_runs(Path(env["WANDB_DIR"]))
    assert run.exit_code not in (None, 0)
    assert f"wandb sync {run.path}" in proc.stdout


@pytest.mark.slow
def test_multirun_jobs_are_separate_runs_in_one_group(tmp_path):
    env = wandb_env(tmp_path)
    sweep = tmp_path / "opacity_sweep"
    cmd = [sys.executable, "-m", "synth", "-m", "seed=0,1", "data.limit=1", "logger=wandb", "logger.mode=offline",
           f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    runs = offline_runs(Path(env["WANDB_DIR"]))
    assert len(runs) == 2 and runs[0].run.run_id != runs[1].run.run_id
    assert {r.run.run_group for r in runs} == {"opacity_sweep"}
    assert sorted(r.run.display_name for r in runs) == ["seed=0,data.limit=1", "seed=1,data.limit=1"]
    assert sorted(r.config["seed"] for r in runs) == [0, 1] and all(r.exit_code == 0 for r in runs)


# -- in-process: what gets logged ------------------------------------------------------------------
class FakeRun:
    def __init__(self):
        self.logged: list[tuple[dict, int | None]] = []

    def log(self, data, step=None):
        self.logged.append((data, step))


def finished_sample(index: int):
    sample = make_sample(index=index, size=64)
    sample.mask = soft_disc_mask(64, 64)
    sample.composite = sample.image
    sample.caption = "remove the shadow from the subject"
    sample.params = {"shadow": {"opacity": np.float64(0.3), "pattern": "cloud", "pattern_params": {"octaves": 4}},
                     "albedo": {"sigmas": [15, 80, 250]}}
    sample.timings_ms = {"segmentation": 10.0}
    return sample


def test_log_every_n_and_max_images_bound_what_is_logged():
    logger = WandbLogger(log_every_n=3, max_images=2, image_size=32)
    logger.run = FakeRun()
    for step, index in enumerate(range(10), start=1):
        logger.log_sample(finished_sample(index), step)
    failed = finished_sample(10)
    failed.fail("shadow", "boom")
    logger.log_sample(failed, 11)
    assert [row["index"] for row in logger.rows] == [0, 3]  # multiples of 3, at most 2
    assert len(logger.run.logged) == 2 and logger.failures == [["000010", failed.source, "shadow", "boom"]]
    images, _ = logger.run.logged[0]
    assert max(images["stage_3_5/composite"].image.size) == 32  # shrunk to image_size
    assert logger.ms_count["segmentation"] == 10  # timings come from every finished sample


def test_every_shard_logs_its_share():
    """With data.num_shards=4 and log_every_n=4, shard 3 (indices 3, 7, 11, ...) still logs."""
    logger = WandbLogger(log_every_n=4, max_images=10, image_size=16)
    logger.run, logger.num_shards = FakeRun(), 4
    for step, index in enumerate(range(3, 40, 4), start=1):
        logger.log_sample(finished_sample(index), step)
    assert [row["index"] for row in logger.rows] == [3, 19, 35]


def test_flatten_params_gives_one_sortable_column_per_value():
    flat = flatten_params(finished_sample(0).params)
    assert flat == {"shadow.opacity": 0.3, "shadow.pattern": "cloud", "shadow.pattern_params.octaves": 4,
                    "albedo.sigmas": "[15, 80, 250]"}
    assert type(flat["shadow.opacity"]) is float


@pytest.mark.parametrize("key, value", [("mode", "sometimes"), ("log_every_n", 0), ("max_images", -1)])
def test_bad_settings_are_refused_up_front(key, value):
    with pytest.raises(ConfigError, match=f"logger.{key}="):
        WandbLogger(**{key: value})
