#!/usr/bin/env bash
# Fixtures for scripts/battery/run.sh under /tmp/battery/fx: a finished tiny run, image folders
# (grey, mixed), broken checkpoints, and tmpfs mounts (as root): /mnt/full (full), /mnt/ro
# (read-only), /mnt/small (3 MB, fills during training).
set -eu
export PATH=$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin:$PATH OMP_NUM_THREADS=1
fx=/tmp/battery/fx; rm -rf /tmp/battery; mkdir -p $fx/empty $fx/imgs $fx/mixed; cd /tmp/battery
T="data.train_subset=64 data.batch_size=16 callbacks.progress_bar=null model.depth=1"
glowlab-train $T trainer.max_steps=4 hydra.run.dir=$fx/done > /dev/null 2>&1
python - <<'PY'
from PIL import Image
import numpy as np
r = np.random.default_rng(0)
for i in range(12):
    Image.fromarray(r.integers(0, 255, (28, 28), dtype=np.uint8)).save(f"/tmp/battery/fx/imgs/{i}.png")
    mode = "RGB" if i % 2 else "L"
    shape = (28, 28, 3) if i % 2 else (28, 28)
    Image.fromarray(r.integers(0, 255, shape, dtype=np.uint8)).save(f"/tmp/battery/fx/mixed/{i}.png")
open("/tmp/battery/fx/noise.ckpt", "wb").write(r.bytes(4096))
PY
: > $fx/empty.ckpt
cp $fx/imgs/0.png $fx/picture.ckpt
echo "not a dir" > $fx/afile
mkdir -p /mnt/full /mnt/ro
mountpoint -q /mnt/full || mount -t tmpfs -o size=256k tmpfs /mnt/full
dd if=/dev/zero of=/mnt/full/fill bs=1k count=300 2>/dev/null || true
mountpoint -q /mnt/ro || { mount -t tmpfs -o size=1m tmpfs /mnt/ro && mount -o remount,ro /mnt/ro; }
mountpoint -q /mnt/small || { mkdir -p /mnt/small; mount -t tmpfs -o size=3m tmpfs /mnt/small; }
ls $fx/done/checkpoints
