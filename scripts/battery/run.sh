#!/usr/bin/env bash
# The fault battery (issue 19): runs every case of cases.txt (id | command) as a user would,
# from a scratch dir (WORK, default /tmp/battery, after `bash scripts/battery/fixtures.sh`,
# which needs root for its full and read-only tmpfs mounts), and writes $WORK/results.tsv:
# id, exit status, stderr lines, traceback (yes/no), the last stderr line. Not part of CI.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export PATH=$root/.venv/bin:$PATH OMP_NUM_THREADS=1
export T="data.train_subset=64 data.batch_size=16 callbacks.progress_bar=null model.depth=1 trainer.max_steps=2"
work=${WORK:-/tmp/battery}
mkdir -p "$work/runs"; cd "$work"
out=$work/${RESULTS:-results.tsv}; : > "$out"
while IFS='|' read -r id cmd; do
  [[ -z "$id" || "$id" == \#* ]] && continue
  id=$(echo "$id" | xargs)
  export RUN FX; RUN="$work/runs/$id" FX="$work/fx" timeout 300 bash -c "$cmd" > "$work/$id.out" 2> "$work/$id.err" < /dev/null
  rc=$?
  n=$(grep -cv '^\s*$' "$work/$id.err")
  tb=$(grep -q "Traceback" "$work/$id.err" "$work/$id.out" && echo yes || echo no)
  last=$(grep -v '^\s*$' "$work/$id.err" | tail -1 | cut -c1-400)
  [ -z "$last" ] && last="(stdout) $(grep -v '^\s*$' "$work/$id.out" | tail -1 | cut -c1-300)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$id" "$rc" "$n" "$tb" "$last" >> "$out"
  echo "$id rc=$rc lines=$n tb=$tb"
done < "${CASES:-$here/cases.txt}"
