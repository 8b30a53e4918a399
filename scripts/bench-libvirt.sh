#!/usr/bin/env bash
# bench-libvirt.sh -- time to ready and pivot time of one live move through libvirt
# (`migrate --domain`) against the same move over QMP (`migrate --qmp`), same guest, same
# disk, one run each, in turns. Prints one line per run and the ratios.
#
#   scripts/bench-libvirt.sh [SIZE_MIB (default 1024)] [ROUNDS (default 3)]
#
# Needs root, a libvirt daemon answering at qemu:///system (started here when none does),
# the test guest (scripts/build-guest.sh) and a release build of vmshift (built here).
# The guest writes 4 MiB/s to the first 8 MiB of its disk throughout.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
size=${1:-1024}
rounds=${2:-3}
cargo build --release --quiet --bin vmshift --manifest-path "$repo/Cargo.toml"
vm="$repo/target/release/vmshift"
guest=$(bash "$repo/scripts/build-guest.sh" | tail -1)
virsh -c qemu:///system version >/dev/null 2>&1 || { virtlogd -d || true; libvirtd -d; sleep 2; }
root=/var/lib/libvirt/images/vmshift-bench
rm -rf "$root"; mkdir -p "$root/a" "$root/b"; chmod 755 "$root" "$root/a" "$root/b"
cp "$guest/vmlinuz" "$guest/initrd.gz" "$root/"
# The QMP socket must not be under /var/lib/libvirt (vmshift refuses libvirt's monitors there).
sockdir=$(mktemp -d)
export VMSHIFT_STATE_DIR="$root/state"
params="console=ttyS0 quiet panic=-1 vmshift.mode=write vmshift.devs=vda vmshift.blocks=2048 vmshift.rate=4194304"
# A fully allocated disk: every byte is data the mirror must copy.
head -c "$((size << 20))" /dev/urandom > "$root/a/bench.raw"

field() { python3 -c "import json,sys
for l in sys.stdin:
    e=json.loads(l)
    if e.get('event')=='report':
        r=e['report']; d=r['disks'][0]
        print(r['status'], d.get('time_to_ready_ms'), d.get('pivot_ms'))"; }

wait_serial() { for _ in $(seq 1 300); do grep -q VMSHIFT-SEQ "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "bench: guest did not start writing" >&2; exit 1; }

qmp_round() { # $1 from-dir $2 to-dir
  rm -f "$root/serial.log" "$sockdir/qmp.sock"
  qemu-system-x86_64 -machine q35 -accel tcg -m 256 -nodefaults -display none \
    -serial "file:$root/serial.log" -kernel "$root/vmlinuz" -initrd "$root/initrd.gz" -append "$params" \
    -qmp "unix:$sockdir/qmp.sock,server=on,wait=off" \
    -blockdev "{\"driver\":\"file\",\"node-name\":\"disk0-file\",\"filename\":\"$1/bench.raw\"}" \
    -blockdev '{"driver":"raw","node-name":"disk0","file":"disk0-file"}' \
    -device virtio-blk-pci,drive=disk0,id=vd0 & local pid=$!
  wait_serial "$root/serial.log"
  local out; out=$("$vm" migrate --qmp "$sockdir/qmp.sock" --to "$2" --json 2>"$root/err.log" | field) || true
  [ -n "$out" ] || { echo "bench: migrate --qmp failed: $(tail -1 "$root/err.log")" >&2; }
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$1/bench.raw"
  echo "qmp     $out"
}

virt_round() { # $1 from-dir $2 to-dir
  rm -f "$root/serial.log"
  cat > "$root/dom.xml" <<EOF
<domain type='qemu'><name>vmshift-bench</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><kernel>$root/vmlinuz</kernel><initrd>$root/initrd.gz</initrd><cmdline>$params</cmdline></os>
<on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$1/bench.raw'/><target dev='vda' bus='virtio'/></disk>
<serial type='file'><source path='$root/serial.log'/><target port='0'/></serial>
<memballoon model='none'/></devices></domain>
EOF
  virsh -q -c qemu:///system create "$root/dom.xml" >/dev/null
  wait_serial "$root/serial.log"
  local out; out=$("$vm" migrate --domain vmshift-bench --connect qemu:///system --to "$2" --json 2>"$root/err.log" | field) || true
  [ -n "$out" ] || { echo "bench: migrate --domain failed: $(tail -1 "$root/err.log")" >&2; }
  virsh -q -c qemu:///system destroy vmshift-bench >/dev/null
  rm -f "$1/bench.raw"
  echo "libvirt $out"
}

echo "bench-libvirt: ${size} MiB raw disk, guest writing 4 MiB/s, $rounds round(s); columns: path status time_to_ready_ms pivot_ms"
from="$root/a"; to="$root/b"
results=()
for _ in $(seq 1 "$rounds"); do
  results+=("$(qmp_round "$from" "$to")"); echo "${results[-1]}"; t=$from; from=$to; to=$t
  results+=("$(virt_round "$from" "$to")"); echo "${results[-1]}"; t=$from; from=$to; to=$t
done
printf '%s\n' "${results[@]}" | awk '
  $2=="succeeded" { n[$1]++; r[$1]+=$3; p[$1]+=$4 }
  END { for (k in n) printf "%-7s mean time_to_ready %.0f ms, mean pivot %.1f ms (%d runs)\n", k, r[k]/n[k], p[k]/n[k], n[k]
        if (n["qmp"] && n["libvirt"]) printf "ratio libvirt/qmp: ready %.2f, pivot %.2f\n", (r["libvirt"]/n["libvirt"])/(r["qmp"]/n["qmp"]), (p["libvirt"]/n["libvirt"])/(p["qmp"]/n["qmp"]) }'
rm -rf "$root" "$sockdir"
