"""The settings a sample's content depends on, so that a resume never mixes samples made two ways.

Resume skips the samples a run directory (or a shared ``writer.path``) already holds. Made with
another ``seed``, other stage parameters or another image format, they would sit beside the new
ones as if one job had made both. So the first run records its settings (the manifest header;
``.synth-settings.json`` beside tar/parquet shards) and a later job with other ones is refused
with the first difference.

What counts: ``seed``, ``data.max_side`` (the images are resized to it), every key of the stage
groups but ``batch_size`` and ``device`` (they change how fast, not what; model stages stay
within float rounding), and each writer's ``format`` (and ``quality`` for webp/jpg) and
``intermediates``. Not: the inputs (the manifest checks those), workers, logging, shard sizes,
PNG encoder and level (lossless: the same pixels). Settings are flattened to dotted keys (``shadow.opacity``).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

# how fast, not what: the same samples (model stages up to float rounding) whatever their value
RUNTIME_KEYS = frozenset({"batch_size", "device"})
WRITER_PREFIX = "writer:"  # writers' entries: a writer added on resume writes what it lacks, so
# such an entry is compared only when both sides have it


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key not in RUNTIME_KEYS:
                _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = json.loads(json.dumps(value))  # plain JSON values: tuples as lists, as read back


def writer_name(target: str) -> str:
    """``synth.writers.webdataset.WebDatasetWriter`` -> ``webdataset`` (the config option's name)."""
    return str(target).rsplit(".", 2)[-2] if str(target).count(".") >= 2 else str(target)


def writer_settings(name: str, writer: Mapping[str, Any]) -> dict[str, Any]:
    """A writer's entry: the image format, the quality when the format is lossy, and whether it
    writes the intermediates (a reader expects the same files or fields in every sample)."""
    fmt = writer.get("format", "png")
    entry: dict[str, Any] = {f"{WRITER_PREFIX}{name}.format": fmt}
    if fmt != "png":
        entry[f"{WRITER_PREFIX}{name}.quality"] = writer.get("quality")
    if "intermediates" in writer:
        entry[f"{WRITER_PREFIX}{name}.intermediates"] = writer["intermediates"]
    return entry


def output_settings(config: Mapping[str, Any], stage_groups: Iterable[str]) -> dict[str, Any]:
    """The flattened settings of a resolved job config (``OmegaConf.to_container``) that shape its
    samples (see the module docstring)."""
    out: dict[str, Any] = {"seed": config.get("seed")}
    data = config.get("data") or {}
    out["data.max_side"] = data.get("max_side")
    for group in stage_groups:
        if config.get(group) is not None:
            _flatten(group, config[group], out)
    writers = [("writer", config["writer"])] if config.get("writer") else []
    writers += [(f"writers.{name}", cfg) for name, cfg in (config.get("writers") or {}).items()]
    for key, writer in writers:
        out.update(writer_settings(writer_name(writer.get("_target_", key)), writer))
    return out


def first_difference(then: Mapping[str, Any], now: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(now, then)``, each as ``key=value`` (or ``no key``), for the first setting that differs;
    None when they agree. A key missing on one side differs (a stage added or removed), except a
    writer's entry."""
    for key in sorted(set(then) | set(now)):
        if key.startswith(WRITER_PREFIX) and (key not in then or key not in now):
            continue
        if then.get(key, _ABSENT) != now.get(key, _ABSENT):
            name = key
            if key.startswith(WRITER_PREFIX):  # writer:folder.format -> the folder writer's format
                name = key.replace(WRITER_PREFIX, "the ", 1).replace(".", " writer's ", 1)
            return _setting(name, now.get(key, _ABSENT)), _setting(name, then.get(key, _ABSENT))
    return None


_ABSENT = object()


def _setting(name: str, value: Any) -> str:
    name = name.removesuffix("._target_")  # a stage's class: "captioning=synth.stages...", "no captioning"
    if value is _ABSENT:
        return f"no {name}"
    return f"{name}={value if isinstance(value, str) else json.dumps(value)}"
