"""Resume's completeness check reads samples.jsonl in blocks of whole lines, checked by worker
threads or processes: the blocks cover every line once, and whatever the block size or the kind
of worker, exactly the damaged, repeated and unreadable lines are dropped and their samples
redone, the other lines kept byte for byte (python -m synth.bench memory --resume times it)."""

from __future__ import annotations

import json

import pytest

import synth.runner
from synth.rundir import drop_jsonl_lines, jsonl_blocks, read_jsonl, read_jsonl_block
from tests.test_resume_integrity import photos
from tests.test_robustness_run import run_job

LINES = [b'{"a": 1}\n', b'{"b": "' + b"x" * 50 + b'"}\n', b"garbage{\n", b"[1, 2]\n", b"\n", b'{"c": [3]}\n',
         b'{"d": 4}']  # the last one without its newline


@pytest.mark.parametrize("size", [1, 5, 64, 1 << 20])
def test_blocks_hold_every_line_once_and_read_as_read_jsonl_reads(tmp_path, size):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"".join(LINES))
    blocks = list(jsonl_blocks(path, size))
    assert blocks[0][0] == 0 and blocks[-1][1] == path.stat().st_size
    assert all(end == start for (_, end), (start, _) in zip(blocks, blocks[1:]))  # contiguous
    lines = [line for block in blocks for line in read_jsonl_block(path, *block)]
    starts = [sum(map(len, LINES[:k])) for k in range(len(LINES))]
    assert [offset for offset, _ in lines] == starts
    assert [record for _, record in lines if record is not None] == list(read_jsonl(path))
    assert [record is None for _, record in lines] == [False, False, True, True, True, False, False]


def test_dropping_lines_keeps_the_others_byte_for_byte(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"".join(LINES))
    starts = [sum(map(len, LINES[:k])) for k in range(len(LINES))]
    drop_jsonl_lines(path, {starts[1], starts[2]})
    assert path.read_bytes() == b"".join(LINES[:1] + LINES[3:])


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_only_damaged_repeated_and_unreadable_lines_are_dropped_whatever_the_blocks(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(synth.runner, "_RESUME_BLOCK_BYTES", 700)  # a record is ~3 KB: a block per line
    started = []
    if workers == "processes":  # even for this small file, and see that processes did the check
        monkeypatch.setattr(synth.runner, "_RESUME_PROCESSES_FROM_BYTES", 0)

        class Spy(synth.runner.ProcessPoolExecutor):
            def __init__(self, *args, **kwargs):
                started.append(args)
                super().__init__(*args, **kwargs)
        monkeypatch.setattr(synth.runner, "ProcessPoolExecutor", Spy)
    data, run_dir = photos(tmp_path / "in", "a.png", "b.png", "c.png", "d.png"), tmp_path / "run"
    run_job(data, run_dir)
    samples = run_dir / "samples.jsonl"
    lines = samples.read_bytes().splitlines(keepends=True)
    by_id = {json.loads(line)["image_id"]: line for line in lines}
    (run_dir / "stage_1" / "000001_mask.png").write_bytes(b"short")  # damaged: redone
    samples.write_bytes(lines[0] + b"not json{\n" + b"".join(lines[1:]) + by_id["000002"])  # unreadable, repeated
    summary = run_job(data, run_dir, f"workers={workers}", "num_workers=2")
    assert (summary["done"], summary["skipped_complete"]) == (1, 3)
    assert started == ([] if workers == "threads" else [(2,)])
    kept = samples.read_bytes().splitlines(keepends=True)
    assert kept[:3] == [by_id["000000"], by_id["000002"], by_id["000003"]]  # untouched, in their order
    assert [json.loads(line)["image_id"] for line in kept] == ["000000", "000002", "000003", "000001"]
    assert (run_dir / "stage_1" / "000001_mask.png").stat().st_size > len(b"short")
