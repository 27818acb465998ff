"""``python -m synth.bench e2e --tiny``: the end-to-end benchmark's harness on the CPU.

Tiny random-weight models: this proves the code path (models built, timed alone, saved, loaded
by a real ``python -m synth`` job, figures read back), not any speed. The job runs with worker
processes, so the model stages get their samples with only the images they read (``Stage.reads``).
"""

import re
import subprocess
import sys


def test_e2e_tiny_runs_a_real_job_and_reports_the_bound():
    proc = subprocess.run([sys.executable, "-m", "synth.bench", "e2e", "--tiny", "--count", "3", "--repeats", "1",
                           "--segmentation", "sam3", "--captioning", "blip", "--workers", "processes"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^  sam3 alone: [\d.]+ images/s at batch 2", out, re.M)
    assert re.search(r"^  blip alone: [\d.]+ images/s at batch 2", out, re.M)
    # the job loaded the saved random weights and every photo went through both model stages
    assert re.search(r"^job: [\d.]+ images/s \(3 done, 0 failed.*workers=processes", out, re.M), out
    stages = re.search(r"^  per-stage ms per image \(median\): (.*)$", out, re.M).group(1)
    assert {"segmentation", "captioning", "write"} <= {part.split()[0] for part in stages.split(", ")}
    bound = re.search(r"^models-only bound: ([\d.]+) images/s; job reached (\d+)% of it$", out, re.M)
    assert bound and float(bound.group(1)) > 0 and int(bound.group(2)) > 0
