#!/usr/bin/env bash
# The GPU check of issue 10, as one command for a lent H200/H100 (16 cores), run from the repository root:
#
#   bash scripts/gpu_check.sh            # on the device machine: wheels from .whl/, then every step
#   bash scripts/gpu_check.sh --tiny     # here, on the CPU: the same steps with tiny models (checks the script)
#
# Steps, the short ones first, each under `timeout` and inside a total budget (GPU_CHECK_BUDGET_S,
# default 500 s), so a hang or failure costs only that step and the next still runs:
#   models    python -m synth.bench models: sam3, sam (vit_b), blip, vlm at batch 32 (peak GPU memory per row)
#   pipeline  python -m synth.bench pipeline: the weight-free job, masks given, every core (num_workers default),
#             workers=processes (--tiny: threads and processes interleaved)
#   e2e       python -m synth.bench e2e --segmentation sam3 --captioning blip at 1024 px, 96 photos, batch 32,
#             one job with workers=threads and one with workers=processes over the same models
#   marigold  the marigold rows of the models bench, when the bench has them
# Output: $OUT/*.txt (one file per step, plus summary.txt with each step's exit status and key lines).
# The device image lacks hydra-core, omegaconf, segment-anything, ...: `bash scripts/gpu_wheels.sh` puts their
# wheels in .whl/ (git-ignored), which the device call must carry (carry: [".whl"]).
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
TINY=0
[ "${1:-}" = "--tiny" ] && TINY=1
OUT=${OUT:-$(mktemp -d /tmp/gpu_check_out.XXXX)}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-500}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

note() { echo "[$(date -u +%T)] $*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_S CMD...: run CMD (in a scratch directory) into $OUT/NAME.txt, at most LIMIT_S
# seconds and never past the budget; log its exit status and its result lines.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 30 ]; then
        note "SKIP $name: only ${left}s of the ${BUDGET}s budget left"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    note "RUN  $name (timeout ${limit}s): $*"
    (cd "$WORK" && timeout -k 10 "$limit" "$@") >"$OUT/$name.txt" 2>&1
    local rc=$?
    if [ $rc -eq 0 ]; then
        note "OK   $name"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        note "FAIL $name: timed out after ${limit}s (partial output in $name.txt)"
    else
        note "FAIL $name: exit $rc; last lines:"
        tail -n 5 "$OUT/$name.txt" | sed 's/^/       /' | tee -a "$SUMMARY"
    fi
    grep -E '^(\||job:|models-only|  [a-z_0-9]+ alone:|  per-stage|  job process|png_encoder|variant|[a-z0-9/]+ vs |[a-z0-9/]+ +[0-9.]+ )' "$OUT/$name.txt" \
        | sed 's/^/       /' | tee -a "$SUMMARY"
}

WORK=$(mktemp -d /tmp/gpu_check_work.XXXX)  # outside the repo, so the installed synth (with synth.conf) is imported
if [ $TINY -eq 1 ]; then
    PY=${PYTHON:-$REPO/.venv/bin/python}
    note "gpu_check --tiny: CPU, tiny models, $PY"
    E2E=(--tiny --count 3 --repeats 1 --workers threads,processes)
    MODELS=(--tiny --batch-sizes 2 --repeats 1 --size 256)
    MARIGOLD=("${MODELS[@]}")
    PIPELINE=(--count 4 --size 256 --repeats 1 --baseline-count 0 --encoders auto --workers threads,processes)
else
    PY=${PYTHON:-python3}
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
        nproc
        "$PY" -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)"
    } >"$OUT/env.txt" 2>&1
    note "gpu_check: $(head -n 1 "$OUT/env.txt"), $(sed -n 2p "$OUT/env.txt") cores"
    {
        if ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$REPO"/.whl/*.whl
        fi
        (cd "$REPO" && "$PY" -m pip install -q --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/site .)
    } >"$OUT/install.txt" 2>&1 || note "FAIL install (see install.txt); the steps run with what is there"
    export PYTHONPATH=/tmp/site
    if ! (cd "$WORK" && "$PY" -c "import synth.conf") >>"$OUT/install.txt" 2>&1; then
        # no setuptools there, say: the wheel's layout by hand (conf/ is the package synth.conf)
        mkdir -p /tmp/synth_src && cp -r "$REPO/synth" /tmp/synth_src/ && cp -r "$REPO/conf" /tmp/synth_src/synth/conf
        export PYTHONPATH=/tmp/site:/tmp/synth_src
        note "synth not installed by pip (see install.txt); using a copy of the source tree"
    fi
    (cd "$WORK" && "$PY" -c "import synth.conf, hydra, segment_anything") >>"$OUT/install.txt" 2>&1 \
        || note "FAIL install: synth.conf, hydra or segment_anything not importable"
    E2E=(--count 96 --size 1024 --batch-size 32 --workers threads,processes)
    MODELS=(--batch-sizes 32 --repeats 2 --size 1024)
    MARIGOLD=(--batch-sizes 1,8 --repeats 2 --size 1024)  # the issue asks for batch 1 and 8
    # 96 photos, 6 per worker: 48 were too few to fill and drain 16 workers (threads were measured at 48)
    PIPELINE=(--count 96 --size 1024 --repeats 2 --baseline-count 0 --encoders auto --workers processes)
fi

step e2e 240 "$PY" -m synth.bench e2e --segmentation sam3 --captioning blip "${E2E[@]}"
step pipeline 100 "$PY" -m synth.bench pipeline "${PIPELINE[@]}"
step models 150 "$PY" -m synth.bench models --stages sam3,sam,blip,vlm "${MODELS[@]}"
if "$PY" -c "import sys, synth.bench.models as m; sys.exit('marigold_iid' not in m.STAGES)" 2>/dev/null; then
    step marigold 100 "$PY" -m synth.bench models --stages marigold_iid,marigold_normals "${MARIGOLD[@]}"
else
    note "SKIP marigold: the models bench has no marigold rows"
fi
note "done in $(($(date +%s) - START))s; outputs in $OUT"
rm -rf "$WORK"
