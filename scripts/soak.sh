#!/usr/bin/env bash
# Soak test for crash safety (not run in CI): until CYCLES kills have landed mid-copy,
# `kill -9` an offline migration of
# a 1 GiB image (data, zero runs, holes) at a random moment of its copy, sometimes kill the
# first resume too, then resume to the end and check the target with `qemu-img compare` and
# its exact size. Prints the journal overhead (copy time with vs without the journal) first
# and the pass count last.
#
#   scripts/soak.sh [CYCLES] [SEED]      # defaults: 100 cycles, seed 1
set -euo pipefail
cd "$(dirname "$0")/.."
CYCLES=${1:-100}
SEED=${2:-1}
cargo build --release -q -p vmshift
V=$PWD/target/release/vmshift
work=$(mktemp -d /var/tmp/vmshift-soak.XXXXXX)
trap 'rm -rf "$work"' EXIT
export VMSHIFT_STATE_DIR=$work/state
src=$work/disk.raw

# 1 GiB: ~25% random data in 1-6 MiB runs (half of them with a zero run inside), ~10%
# allocated zeroes, the rest holes.
python3 - "$src" "$SEED" <<'EOF'
import os, random, sys
path, seed = sys.argv[1], int(sys.argv[2])
r = random.Random(seed)
G, M = 1 << 30, 1 << 20
with open(path, "wb") as f:
    f.truncate(G)
    pos = 0
    while pos < G:
        n = min(r.randint(1, 6) * M, G - pos)
        k = r.random()
        if k < 0.25:
            d = bytearray(r.randbytes(n))
            if r.random() < 0.5:
                d[n // 4 : n // 2] = bytes(n // 4)
            f.seek(pos); f.write(d)
        elif k < 0.35:
            f.seek(pos); f.write(bytes(n))
        pos += n
EOF
src_sum=$(sha256sum "$src" | cut -d' ' -f1)

copy_ms() { # report.json → duration of its copy phase
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print([p["duration_ms"] for p in r["phases"] if p["name"]=="copy"][0])' "$1"
}

# Journal overhead: the same copy with and without the journal, alternating, 7 runs each,
# each starting with no dirty pages left from the run before.
with=(); without=()
for i in 1 2 3 4 5 6 7; do
  for mode in journal nojournal; do
    d=$work/ovh-$mode; rm -rf "$d"; mkdir -p "$d"; sync
    extra=(); [ $mode = nojournal ] && extra=(--no-journal)
    "$V" migrate "$src" --to "$d/" --report "$work/ovh.json" "${extra[@]}" 2>/dev/null
    ms=$(copy_ms "$work/ovh.json")
    if [ $mode = journal ]; then with+=("$ms"); else without+=("$ms"); fi
  done
done
med() { printf '%s\n' "$@" | sort -n | sed -n 4p; }
mw=$(med "${with[@]}"); mo=$(med "${without[@]}")
echo "copy phase ms with the journal: ${with[*]}; without: ${without[*]}"
echo "journal overhead: copy phase median ${mw} ms with the journal, ${mo} ms without ($(python3 -c "print(f'{($mw-$mo)*100/$mo:+.1f}')")%)"

# The kill runs are limited to 256 MiB/s of data so each copy lasts about a second whatever
# the machine's load: the kill lands at a random moment of it (0-1.2 s after the copy starts).
KILL_WINDOW_MS=1200
RANDOM=$SEED
pass=0; fail=0; skipped=0
# Starts `vmshift ARGS... --json` in the background, waits for its copy phase, sleeps a
# random part of the copy time and kills it with SIGKILL. Returns 0 if the kill landed.
kill_during_copy() {
  local out=$work/run.ndjson
  "$V" "$@" --json >"$out" 2>/dev/null &
  local pid=$!
  for _ in $(seq 1 400); do grep -q '"phase":"copy"' "$out" 2>/dev/null && break; sleep 0.01; done
  local d=$((RANDOM % (KILL_WINDOW_MS + 1)))
  sleep "$((d / 1000)).$(printf %03d $((d % 1000)))"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null && return 1
  return 0
}
c=0
while [ $((pass + fail)) -lt "$CYCLES" ]; do
  c=$((c + 1))
  [ "$c" -le $((3 * CYCLES)) ] || { echo "soak: too many runs finished before the kill"; break; }
  dst=$work/dst; rm -rf "$dst"; mkdir -p "$dst"
  if ! kill_during_copy migrate "$src" --to "$dst/" --bwlimit 256M || [ -e "$dst/disk.raw" ]; then
    skipped=$((skipped + 1)); continue
  fi
  id=$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1])][0]["job_id"])' "$work/run.ndjson")
  if [ $((RANDOM % 2)) -eq 0 ]; then
    kill_during_copy resume "$id" || true   # a crash during the resume, too
  fi
  ok=1; : >"$work/resume.err"
  if [ ! -e "$dst/disk.raw" ]; then
    "$V" resume "$id" >/dev/null 2>"$work/resume.err" || ok=0
  fi
  if [ $ok -eq 1 ] && qemu-img compare -q -f raw -F raw "$src" "$dst/disk.raw" \
     && [ "$(stat -c %s "$dst/disk.raw")" -eq $((1 << 30)) ] \
     && [ ! -e "$dst/disk.raw.vmshift-partial" ]; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1)); echo "cycle $c (job $id) FAILED: $(tail -1 "$work/resume.err")"
  fi
done
[ "$(sha256sum "$src" | cut -d' ' -f1)" = "$src_sum" ] || { echo "SOURCE CHANGED"; fail=$((fail + 1)); }
echo "soak: $pass/$((pass + fail)) kill/resume cycles passed ($skipped runs finished before the kill landed; seed $SEED)"
[ "$fail" -eq 0 ]
