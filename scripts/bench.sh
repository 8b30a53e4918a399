#!/usr/bin/env bash
# Side-by-side copy benchmark: vmshift vs `qemu-img convert` (default, and `-m 16 -W`) vs
# `nbdcopy`, on the same inputs, in one run (the machine may be noisy: compare the ratios).
#
#   scripts/bench.sh [--quick] [--runs N] [--dir DIR] [--cases "a b c d e g s"] [--check-all]
#
# Builds vmshift (release) unless VMSHIFT names a binary, builds its inputs under DIR
# (default /var/tmp/vmshift-bench: put it on the disk you want to measure, not on tmpfs),
# drops the page cache before every run (root), and prints one row per case and tool:
# median seconds of N runs (default 3), MB/s of guest data (10^6 bytes), throughput ratio vs
# `qemu-img convert` default (> 1 is faster), CPU seconds (user + system, median), peak RSS, and the target's allocation.
# Every timed run ends with `sync FILE` of the output, so tools that leave dirty pages
# behind (nbdcopy without --flush) are charged for them too.
# Every output is checked for exact virtual size; the first run of each case and tool (every
# run with --check-all) is also compared with `qemu-img compare`.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
quick=0 runs=3 dir=/var/tmp/vmshift-bench cases="" check_all=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --runs) runs=$2; shift ;;
    --dir) dir=$2; shift ;;
    --cases) cases=$2; shift ;;
    --check-all) check_all=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

# Case s only means something at full size (its input must outgrow the dirty-page limit).
[ -n "$cases" ] || { [ "$quick" = 1 ] && cases="a b c d e g" || cases="a b c d e g s"; }

"$repo/scripts/install-deps.sh"
if [ -z "${VMSHIFT:-}" ]; then
  (cd "$repo" && cargo build --release -q -p vmshift)
  VMSHIFT="${CARGO_TARGET_DIR:-$repo/target}/release/vmshift"
fi
[ -x "$VMSHIFT" ] || { echo "bench: $VMSHIFT is not executable" >&2; exit 2; }

MiB=$((1 << 20)) GiB=$((1 << 30))
if [ "$quick" = 1 ]; then dense=$((512 * MiB)) sparse_virt=$((4 * GiB)); else dense=$((2 * GiB)) sparse_virt=$((20 * GiB)); fi
mkdir -p "$dir/in" "$dir/out" "$dir/state"
export VMSHIFT_STATE_DIR="$dir/state"

drop_note="page cache dropped before every run"
drop_caches() {
  sync
  if ! { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
    drop_note="page cache could NOT be dropped (not root): runs may read from cache"
  fi
}

# Deterministic incompressible bytes: AES-CTR keystream of a seed.
rand() {
  openssl enc -aes-128-ctr -pass "pass:$1" -nosalt -pbkdf2 -in /dev/zero 2>/dev/null | head -c "$2" || true
}

vsize() { qemu-img info -U --output=json "$1" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p' | head -1; }
alloc() { echo $(( $(stat -c %b "$1") * 512 )); }
data_bytes() {
  qemu-img map -U --output=json "$1" | python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))'
}

# ---- inputs (built once, reused while their size matches) ----
build_inputs() {
  local in=$dir/in stamp="$dense $sparse_virt v1"
  if [ -f "$in/stamp" ] && [ "$(cat "$in/stamp")" = "$stamp" ]; then return; fi
  echo "bench: building inputs in $in" >&2
  rm -rf "${in:?}"/*
  rand dense "$dense" > "$in/dense.raw"
  qemu-img convert -f raw -O qcow2 "$in/dense.raw" "$in/dense.qcow2"
  # 5% of the virtual size in 8 MiB extents, one in every 20 slots, scattered inside the slot.
  local slots=$((sparse_virt / (8 * MiB))) i=0
  truncate -s "$sparse_virt" "$in/sparse.raw"
  while [ $((i * 20 + 19)) -lt "$slots" ]; do
    rand "sparse$i" $((8 * MiB)) | dd of="$in/sparse.raw" bs=8M seek=$((i * 20 + (i * 7) % 13)) \
      conv=notrunc iflag=fullblock status=none
    i=$((i + 1))
  done
  qemu-img convert -f raw -O qcow2 "$in/sparse.raw" "$in/sparse.qcow2"
  rm "$in/sparse.raw"
  # 3-layer chain: dense base, two overlays with data, and zero clusters over the base on top.
  cp "$in/dense.qcow2" "$in/base.qcow2"
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$in/mid.qcow2"
  qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$in/top.qcow2"
  local q=$((dense / 8))
  qemu-io -f qcow2 -c "write -P 0x11 $q $q" -c "write -P 0x12 $((4 * q)) $((q / 2))" "$in/mid.qcow2" >/dev/null
  qemu-io -f qcow2 -c "write -P 0x22 $((2 * q)) $q" -c "write -z $((6 * q)) $((q / 2))" "$in/top.qcow2" >/dev/null
  # 1 TiB virtual, 64 MiB of data at its start, middle and end.
  qemu-img create -q -f qcow2 "$in/huge.qcow2" 1T
  qemu-io -f qcow2 -c "write -P 0x33 0 32M" -c "write -P 0x34 512G 16M" -c "write -P 0x35 $((1024 * GiB - 16 * MiB)) 16M" "$in/huge.qcow2" >/dev/null
  echo "$stamp" > "$in/stamp"
}

# Case s: the dense input four times over, more than the kernel lets a writer keep dirty
# (vm.dirty_ratio, 20 % of memory by default), so every tool reaches the steady state where
# the disk reads and writes at once, as in any copy of a large image.
build_steady() {
  steady=$((4 * dense))
  if [ -f "$in/steady.raw" ] && [ "$(stat -c %s "$in/steady.raw")" = "$steady" ]; then return; fi
  echo "bench: building $in/steady.raw" >&2
  for _ in 1 2 3 4; do cat "$in/dense.raw"; done > "$in/steady.raw"
}

# ---- one timed run ----
# run_tool CASE TOOL SRC SRCFMT OUTFMT -> sets secs, rss_kib, out_file
qemu_img_cmd() { # extra-args...
  local o=$run_dir/out.$outfmt
  cmd=(qemu-img convert "$@" -f "$srcfmt" -O "$outfmt" "$src" "$o"); out_file=$o
}
run_once() {
  local tool=$1 o
  run_dir=$dir/out/run; rm -rf "$run_dir"; mkdir -p "$run_dir"
  case "$tool" in
    vmshift*)
      cmd=("$VMSHIFT" migrate "$src" --to "$run_dir/" --format "$outfmt" ${tool#vmshift})
      out_file="" ;;
    "qemu-img") qemu_img_cmd ;;
    "qemu-img -m16 -W") qemu_img_cmd -m 16 -W ;;
    "qemu-img -m16 -W -t none") qemu_img_cmd -m 16 -W -t none -T none ;;
    nbdcopy)
      o=$run_dir/out.$outfmt; out_file=$o
      local s=("$src") d=("$o")
      [ "$srcfmt" = qcow2 ] && s=("[" qemu-nbd -r -f qcow2 "$src" "]")
      if [ "$outfmt" = qcow2 ]; then
        d=("[" qemu-nbd -f qcow2 "$o" "]")
        cmd=(bash -c 'qemu-img create -q -f qcow2 "$1" "$2" && shift 2 && exec nbdcopy "$@"' _ "$o" "$vsz" -- "${s[@]}" "${d[@]}")
      else
        cmd=(bash -c 'truncate -s "$1" "$2" && shift 2 && exec nbdcopy "$@"' _ "$vsz" "$o" -- "${s[@]}" "${d[@]}")
      fi ;;
  esac
  drop_caches
  local t0 t1
  t0=$(date +%s%N)
  if ! /usr/bin/time -f '%M %U %S' -o "$dir/out/rss" "${cmd[@]}" >"$dir/out/log" 2>&1; then
    echo "bench: $tool failed on case $case:" >&2; cat "$dir/out/log" >&2; exit 1
  fi
  [ -n "$out_file" ] || out_file=$(find "$run_dir" -maxdepth 1 -type f | head -1)
  sync "$out_file"
  t1=$(date +%s%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)/1e9}')
  read -r rss_kib cpu_u cpu_s < <(tail -1 "$dir/out/rss")
  cpu=$(awk -v u="$cpu_u" -v s="$cpu_s" 'BEGIN{printf "%.2f", u+s}')
}

check_output() {
  local f=$1 full=$2 got
  got=$(vsize "$f")
  [ "$outfmt" = raw ] && got=$(stat -c %s "$f")
  if [ "$got" != "$vsz" ]; then
    echo "bench: $tool on case $case: size $got, expected $vsz" >&2; exit 1
  fi
  if [ "$full" = 1 ] && ! qemu-img compare -q -f "$srcfmt" -F "$outfmt" "$src" "$f"; then
    echo "bench: $tool on case $case: output differs from the source" >&2; exit 1
  fi
}

median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

rows=()
declare -A med_secs best_secs
bench_case() { # case label src srcfmt outfmt tools...
  case=$1 label=$2 src=$3 srcfmt=$4 outfmt=$5; shift 5
  vsz=$(vsize "$src"); local data; data=$(data_bytes "$src")
  local src_alloc
  src_alloc=$(alloc "$src")
  [ "$case" = e ] && src_alloc=$(( $(alloc "$dir/in/base.qcow2") + $(alloc "$dir/in/mid.qcow2") + $(alloc "$dir/in/top.qcow2") ))
  # Round-robin (run 1 of every tool, then run 2, ...) so a burst of noise from other work on
  # the machine lands on all tools alike rather than on one tool's runs.
  local -A times=() rsses=() allocs=() cpus=()
  local r
  for ((r = 1; r <= runs; r++)); do
    for tool in "$@"; do
      run_once "$tool"
      check_output "$out_file" $(( check_all || r == 1 ))
      times[$tool]+="$secs "
      rsses[$tool]+="$rss_kib "
      cpus[$tool]+="$cpu "
      allocs[$tool]+="$(alloc "$out_file") "
    done
  done
  for tool in "$@"; do
    local m rss a c
    m=$(printf '%s\n' ${times[$tool]} | median)
    c=$(printf '%s\n' ${cpus[$tool]} | median)
    rss=$(printf '%s\n' ${rsses[$tool]} | sort -n | tail -1)
    a=$(printf '%s\n' ${allocs[$tool]} | sort -n | tail -1)
    med_secs["$case/$tool"]=$m
    best_secs["$case/$tool"]=$(printf '%s\n' ${times[$tool]} | sort -n | head -1)
    rows+=("$case|$label|$tool|$m|$data|$rss|$a|$src_alloc|$c")
    printf 'bench: %-2s %-26s %-32s %7ss (runs: %s)\n' "$case" "$label" "$tool" "$m" "${times[$tool]}" >&2
  done
}

build_inputs
in=$dir/in
started=$(date +%s) load_start=$(cut -d' ' -f1-3 /proc/loadavg)
vm_tools=(vmshift "vmshift --no-verify")
"$VMSHIFT" migrate --help | grep -q -- '--no-journal' &&
  vm_tools+=("vmshift --no-journal" "vmshift --no-verify --no-journal")
"$VMSHIFT" migrate --help | grep -q -- '--io' &&
  vm_tools+=("vmshift --io direct" "vmshift --io direct --no-verify")
q_tools=("qemu-img" "qemu-img -m16 -W" "qemu-img -m16 -W -t none" nbdcopy)
# The disk's own limit for a copy of BYTES of data: fio reading that much of a file and
# writing as much to a new file at once (8 MiB requests, 8 in flight each, O_DIRECT), the
# slower side's time.
disk_limit() { # case label bytes [source file]
  command -v fio >/dev/null || return 0
  local c=$1 label=$2 bytes=$3 from=${4:-$in/dense.raw} times=() r t
  for ((r = 1; r <= runs; r++)); do
    rm -f "$dir/out/fio.raw"; drop_caches
    t=$(fio --name=r --filename="$from" --rw=read --bs=8M --direct=1 --ioengine=libaio \
          --iodepth=8 --size="$bytes" --name=w --filename="$dir/out/fio.raw" --rw=write --bs=8M \
          --direct=1 --ioengine=libaio --iodepth=8 --size="$bytes" --end_fsync=1 2>&1 |
        sed -n 's/.*run=\([0-9]*\)-\([0-9]*\)msec.*/\2/p' | sort -n | tail -1)
    times+=("$(awk -v t="$t" 'BEGIN{printf "%.3f", t/1000}')")
  done
  rm -f "$dir/out/fio.raw"
  local m; m=$(printf '%s\n' "${times[@]}" | median)
  med_secs["$c/fio (disk limit)"]=$m
  best_secs["$c/fio (disk limit)"]=$(printf '%s\n' "${times[@]}" | sort -n | head -1)
  rows+=("$c|$label|fio (disk limit)|$m|$bytes|0|$bytes|0|-")
  printf 'bench: %-2s %-26s %-32s %7ss (runs: %s)\n' "$c" "disk limit" "fio read+write" "$m" "${times[*]}" >&2
}

for c in $cases; do
  case "$c" in
    a) bench_case a "dense raw->raw" "$in/dense.raw" raw raw "${vm_tools[@]}" "${q_tools[@]}"
       disk_limit a "dense raw->raw" "$dense" ;;
    b) bench_case b "dense raw->qcow2" "$in/dense.raw" raw qcow2 "${vm_tools[@]}" "${q_tools[@]}" ;;
    c) bench_case c "dense qcow2->raw" "$in/dense.qcow2" qcow2 raw "${vm_tools[@]}" "${q_tools[@]}" ;;
    d) bench_case d1 "sparse 5% qcow2->qcow2" "$in/sparse.qcow2" qcow2 qcow2 "${vm_tools[@]}" "${q_tools[@]}"
       disk_limit d1 "sparse 5% qcow2->qcow2" "$(data_bytes "$in/sparse.qcow2")"
       bench_case d2 "sparse 5% qcow2->raw" "$in/sparse.qcow2" qcow2 raw "${vm_tools[@]}" "${q_tools[@]}" ;;
    e) bench_case e "3-layer chain->qcow2" "$in/top.qcow2" qcow2 qcow2 "${vm_tools[@]}" "${q_tools[@]}" ;;
    g) bench_case g "1 TiB virtual->qcow2" "$in/huge.qcow2" qcow2 qcow2 vmshift "qemu-img" ;;
    s) build_steady
       bench_case s "steady $((steady / GiB)) GiB raw->raw" "$in/steady.raw" raw raw \
         "${vm_tools[@]}" qemu-img "qemu-img -m16 -W -t none" nbdcopy
       disk_limit s "steady $((steady / GiB)) GiB raw->raw" "$steady" "$in/steady.raw" ;;
    *) echo "bench: unknown case $c" >&2; exit 2 ;;
  esac
done

# ---- table ----
echo
echo "vmshift bench ($( [ "$quick" = 1 ] && echo quick || echo full ), $runs runs each, median): $(nproc) CPUs, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(df -T "$dir" | awk 'NR==2{print $2" on "$1}'), $(uname -r)"
echo "load average at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine makes runs noisy: compare ratios; 'best' is the fastest run)"
echo "$drop_note; every run ends with sync of the output; $( [ "$check_all" = 1 ] && echo "every output compared" || echo "every output size-checked, first run of each compared") with qemu-img compare"
printf '| %-4s | %-22s | %-32s | %8s | %8s | %7s | %6s | %7s | %6s | %9s | %10s |\n' case input tool seconds MB/s "vs qemu" best "vs best" "CPU s" "RSS MiB" "alloc MiB"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' ------ ------------------------ ---------------------------------- ---------: ---------: --------: -------: --------: -------: ----------: -----------:
for row in "${rows[@]}"; do
  IFS='|' read -r c label tool s data rss a src_alloc cpu <<<"$row"
  base=${med_secs["$c/qemu-img"]} bs=${best_secs["$c/$tool"]} bbase=${best_secs["$c/qemu-img"]}
  awk -v c="$c" -v l="$label" -v t="$tool" -v s="$s" -v d="$data" -v r="$rss" -v a="$a" -v sa="$src_alloc" -v b="$base" -v bs="$bs" -v bb="$bbase" -v cpu="$cpu" 'BEGIN{
    printf "| %-4s | %-22s | %-32s | %8.2f | %8.0f | %6.2fx | %6.2f | %6.2fx | %6s | %9s | %10.1f |\n", c, l, t, s, d/s/1e6, b/s, bs, bb/bs, cpu, (r > 0 ? sprintf("%.1f", r/1024) : "-"), a/1048576 }'
done
echo
# Overheads by median and by best run: noise from other work only ever adds time, so the
# fastest runs compare the work itself.
for c in a b c d1 d2 e s; do
  v=${med_secs["$c/vmshift"]:-} n=${med_secs["$c/vmshift --no-verify"]:-}
  vb=${best_secs["$c/vmshift"]:-} nb=${best_secs["$c/vmshift --no-verify"]:-}
  [ -n "$v" ] && [ -n "$n" ] && awk -v c="$c" -v v="$v" -v n="$n" -v vb="$vb" -v nb="$nb" 'BEGIN{printf "case %s: verification adds %+.0f%% to the copy by median, %+.0f%% by best run (vmshift vs --no-verify)\n", c, (v/n-1)*100, (vb/nb-1)*100}'
  dv=${med_secs["$c/vmshift --io direct"]:-} dn=${med_secs["$c/vmshift --io direct --no-verify"]:-}
  dvb=${best_secs["$c/vmshift --io direct"]:-} dnb=${best_secs["$c/vmshift --io direct --no-verify"]:-}
  [ -n "$dv" ] && [ -n "$dn" ] && awk -v c="$c" -v v="$dv" -v n="$dn" -v vb="$dvb" -v nb="$dnb" 'BEGIN{printf "case %s: with --io direct, verification (read back from the disk) adds %+.0f%% by median, %+.0f%% by best run\n", c, (v/n-1)*100, (vb/nb-1)*100}'
  j=${med_secs["$c/vmshift --no-journal"]:-} jb=${best_secs["$c/vmshift --no-journal"]:-}
  [ -n "$v" ] && [ -n "$j" ] && awk -v c="$c" -v v="$v" -v j="$j" -v vb="$vb" -v jb="$jb" 'BEGIN{printf "case %s: the journal adds %+.0f%% by median, %+.0f%% by best run (vmshift vs --no-journal)\n", c, (v/j-1)*100, (vb/jb-1)*100}'
done
for row in "${rows[@]}"; do
  IFS='|' read -r c label tool s data rss a src_alloc _ <<<"$row"
  [ "$tool" = vmshift ] && case "$c" in d1|d2|e|g) awk -v c="$c" -v a="$a" -v sa="$src_alloc" 'BEGIN{printf "case %s: vmshift target allocation %.1f MiB = %.3fx the source allocation %.1f MiB\n", c, a/1048576, a/sa, sa/1048576}' ;; esac
done
echo "bench: took $(( $(date +%s) - started )) s (inputs not counted)"
rm -rf "$dir/out/run"
