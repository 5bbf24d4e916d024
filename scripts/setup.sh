#!/usr/bin/env bash
# Set up glowlab on a fresh machine: a virtualenv in .venv with torch, the package and its dev
# tools, and (where apt is usable) Debian's Fashion-MNIST. Safe to run again: it skips what is
# already there. Set GLOWLAB_TORCH to pin other torch/torchvision versions.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_PINS=${GLOWLAB_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
DATASET_DIR=/usr/share/datasets/fashion-mnist

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    echo "setup: installing $TORCH_PINS"
    .venv/bin/pip install --quiet --upgrade pip
    # torch first and pinned, so that no resolver pulls another build later
    .venv/bin/pip install --quiet $TORCH_PINS
fi
if ! .venv/bin/python -c "import glowlab, lightning, hydra, pytest, optuna, litdata, torch_fidelity" 2>/dev/null; then
    echo "setup: installing glowlab (editable) with dev and sweep extras"
    .venv/bin/pip install --quiet -e ".[dev,sweeps]"
fi

if [ ! -f "$DATASET_DIR/train-images-idx3-ubyte.gz" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian's dataset-fashion-mnist"
        apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
    elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
        sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "setup: no apt here; train with data.download=true (needs internet) or" \
             "data.root=<dir with the Fashion-MNIST .gz files>"
    fi
fi
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
