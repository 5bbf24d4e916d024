#!/usr/bin/env bash
# Check the wheel: build it from a clean copy of the source, check that it ships every
# glowlab/conf/**/*.yaml, install it (not editable) into a brand-new virtualenv, and from a
# directory outside the clone train a tiny model for 3 steps and run every tool on it.
# Any failure stops the script with a non-zero exit. Set GLOWLAB_TORCH to pin other
# torch/torchvision versions (as scripts/setup.sh does), PYTHON for another interpreter and
# KEEP=1 to keep the temporary folder.
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python3}
TORCH_PINS=${GLOWLAB_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
FASHION_MNIST=/usr/share/datasets/fashion-mnist
TMP="$(mktemp -d "${TMPDIR:-/tmp}/glowlab-wheel.XXXXXX")"
started=$SECONDS

cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "check_wheel: kept $TMP"; else rm -rf "$TMP"; fi; }
trap cleanup EXIT
step() { echo "check_wheel: $*"; }
fail() { echo "check_wheel: FAILED: $*" >&2; exit 1; }

copy_source() {
    # tracked and untracked-but-not-ignored files: what a fresh clone of this tree would hold
    mkdir -p "$TMP/src"
    if git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$SRC" && git ls-files -z --cached --others --exclude-standard \
            | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' \
            | tar --null -T - -cf -) | tar -C "$TMP/src" -xf -
    else
        tar -C "$SRC" --exclude=.venv --exclude=logs --exclude=build --exclude='*.egg-info' \
            -cf - . | tar -C "$TMP/src" -xf -
    fi
}

check_wheel_contents() {
    "$PYTHON" - "$1" "$TMP/src/glowlab/conf" <<'EOF'
import sys, zipfile
from pathlib import Path
wheel, conf = sys.argv[1], Path(sys.argv[2])
shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("glowlab/conf/")}
wanted = {f"glowlab/conf/{p.relative_to(conf).as_posix()}" for p in conf.rglob("*.yaml")}
missing = sorted(wanted - shipped)
if missing:
    sys.exit(f"check_wheel: FAILED: the wheel lacks {len(missing)} config(s): {missing}")
groups = sorted({str(Path(n).parent) for n in wanted})
print(f"check_wheel: wheel ships all {len(wanted)} configs in {len(groups)} folders")
EOF
}

step "building the wheel from a clean copy of $SRC"
copy_source
"$PYTHON" -m pip wheel "$TMP/src" --no-deps --quiet -w "$TMP/dist"
WHEEL=$(ls "$TMP"/dist/glowlab-*.whl)
check_wheel_contents "$WHEEL"

step "new virtualenv in $TMP/venv: $TORCH_PINS, then $(basename "$WHEEL")"
"$PYTHON" -m venv "$TMP/venv"
BIN="$TMP/venv/bin"
"$BIN/pip" install --quiet --upgrade pip
# shellcheck disable=SC2086 # the pins are several words
"$BIN/pip" install --quiet $TORCH_PINS
"$BIN/pip" install --quiet "$WHEEL"

mkdir -p "$TMP/work"
cd "$TMP/work"  # outside the clone: nothing may come from the source tree
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
where=$("$BIN/python" -c 'import glowlab, pathlib; print(pathlib.Path(glowlab.__file__).parent)')
case "$where" in
    "$TMP/venv/"*) step "glowlab imported from $where" ;;
    *) fail "glowlab imported from $where, not from the new virtualenv" ;;
esac

if [ -f "$FASHION_MNIST/train-images-idx3-ubyte.gz" ]; then
    DATA=(data=fashion_mnist)
else
    step "no Fashion-MNIST in $FASHION_MNIST; training on data=synthetic (28x28) instead"
    DATA=(data=synthetic data.image_size=28)
fi

step "glowlab-train (3 steps of a tiny Glow)"
"$BIN/glowlab-train" "${DATA[@]}" model=glow_small model.depth=1 model.conditioner.hidden=8 \
    trainer.max_steps=3 trainer.val_check_interval=3 data.train_subset=640 data.val_size=64 \
    module.init_batch_size=64 callbacks.sample_grid.n=4 callbacks.progress_bar=null \
    hydra.run.dir=logs/train/runs/tiny
RUN=logs/train/runs/tiny
CKPT=$RUN/checkpoints/last.ckpt
[ -f "$CKPT" ] || fail "glowlab-train wrote no $CKPT"
[ -f "$RUN/metrics.json" ] || fail "glowlab-train wrote no $RUN/metrics.json"

step "composing nested config groups from the installed package"
"$BIN/glowlab-train" --cfg job experiment=fmnist_glow_cpu debug=fdr logger=csv >/dev/null
"$BIN/glowlab-train" --cfg hydra hydra/launcher=joblib >/dev/null

mkdir -p images
"$BIN/python" - <<'EOF'
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for i in range(4):
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(f"images/{i}.png")
EOF

tool() {
    local name=$1 out=$2
    shift 2
    step "$name"
    "$BIN/$name" "ckpt=$CKPT" device=cpu progress=false "hydra.run.dir=logs/$out" "$@"
}
tool glowlab-eval eval samples=1
# FID/KID from the wheel (torch-fidelity installed with it): a small feature classifier
tool glowlab-eval eval_fid "metrics=[fid,kid]" fid.n=64 +fid.classifier_images=2000 \
    +fid.classifier_epochs=1 +kid.classifier_images=2000 +kid.classifier_epochs=1
tool glowlab-sample sample n=4 "temperatures=[0.5,1.0]"
tool glowlab-interpolate interpolate a=0 b=1 steps=3 gif=true
tool glowlab-manipulate manipulate class_a=9 class_b=7 "indices=[0,1]" max_images=128
tool glowlab-score score inputs=images reference=test train_images=64
step "glowlab-report"
"$BIN/glowlab-report" logs/train/runs
step "glowlab-compare (its config composes)"
"$BIN/glowlab-compare" --cfg job >/dev/null

for file in eval/eval.json eval_fid/eval.json sample/temperatures.png interpolate/interpolation.gif \
    manipulate/manipulation.png score/scores.csv train/runs/report.md; do
    [ -s "logs/$file" ] || fail "logs/$file is missing or empty"
done
step "passed in $((SECONDS - started)) s"
