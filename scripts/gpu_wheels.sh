#!/usr/bin/env bash
# The wheels the device machine's image lacks (Python 3.12, x86_64; it has torch, transformers 5.17
# and opencv), into the git-ignored .whl/ that scripts/gpu_check.sh installs from. Run here, with
# PyPI reachable, before the device call that carries .whl/:
#
#   bash scripts/gpu_wheels.sh && ls .whl
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$REPO/.whl}
PY=${PYTHON:-$REPO/.venv/bin/python}
mkdir -p "$DEST"
# Versions that worked there together (transformers 5.24 for SAM 3; its hub client and the rest).
PINNED=(hydra-core==1.3.8 omegaconf==2.3.1 segment-anything==1.0 webdataset==1.0.2 braceexpand==0.1.7
        datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 diffusers==0.42.1 fpng==0.1.0 transformers==5.24.0
        huggingface-hub==2.4.0 tokenizers==0.23.3 safetensors==0.8.0 hf-xet==1.8.0 httpx2==2.16.2
        httpcore2==2.16.2 click==8.5.1 importlib-metadata==10.2.0 lazy-importer==0.1.0 truststore==0.10.5
        idna==3.20 anyio==4.16.0 zipp==4.1.2 h11==0.16.0)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "${PINNED[@]}"
"$PY" -m pip wheel -q --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3  # no wheel on PyPI: built here (pure Python)
echo "$(ls "$DEST"/*.whl | wc -l) wheels in $DEST"
