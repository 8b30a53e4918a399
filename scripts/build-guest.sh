#!/usr/bin/env bash
# build-guest.sh -- build (once) and cache the vmshift test guest.
#
# Output in $VMSHIFT_GUEST_CACHE (default <repo>/.guest-cache):
#   vmlinuz     the Debian cloud kernel (the exact package linux-image-cloud-amd64 depends on)
#   initrd.gz   busybox-static initramfs: guest/init + guest/stamper (static C) + virtio modules
#   KEY         cache key (kernel package + hash of guest/ and this script); rebuilt on change
# Prints the cache directory on stdout. Boot with e.g.
#   qemu-system-x86_64 -machine q35,accel=tcg -m 256 -nodefaults -display none \
#     -serial file:serial.log -kernel vmlinuz -initrd initrd.gz -append 'console=ttyS0 vmshift.mode=write'
# Needs: apt-get (network to the Debian mirror on first build), dpkg-deb, gcc (static glibc),
# busybox-static, cpio, gzip, xz, zstd (scripts/install-deps.sh installs them).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${VMSHIFT_GUEST_CACHE:-$repo/.guest-cache}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
# Parallel tests may build at the same time: one builds, the others wait and reuse it.
exec 9>"$cache/.lock"
flock 9

resolve() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
kpkg=$(resolve)
if [ -z "$kpkg" ] && [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq >&2 || true          # fresh containers ship without package lists
  kpkg=$(resolve)
fi
[ -n "$kpkg" ] || { echo "build-guest: cannot resolve linux-image-cloud-amd64 (run apt-get update)" >&2; exit 1; }
key="$kpkg $(cat "$repo/guest/init" "$repo/guest/stamper.c" "$repo/scripts/build-guest.sh" | sha256sum | cut -c1-16)"
if [ -f "$cache/KEY" ] && [ "$(cat "$cache/KEY")" = "$key" ] && [ -s "$cache/vmlinuz" ] && [ -s "$cache/initrd.gz" ]; then
  echo "$cache"; exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 777 "$work"                      # apt-get download runs as _apt
mkdir -p "$work/dl" && chmod 777 "$work/dl"
( cd "$work/dl" && apt-get download -q "$kpkg" >&2 )
deb=$(ls "$work/dl"/*.deb)
dpkg-deb -x "$deb" "$work/kernel"
vmlinuz=$(ls "$work"/kernel/boot/vmlinuz-* | head -n1)
kver=${vmlinuz##*/vmlinuz-}
moddir="$work/kernel/lib/modules/$kver/kernel"

root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,lib/modules,tmp}
cp "$(command -v busybox)" "$root/bin/busybox"
file "$root/bin/busybox" 2>/dev/null | grep -q static || ldd "$root/bin/busybox" 2>&1 | grep -q "not a dynamic" \
  || { echo "build-guest: busybox is not static (install busybox-static)" >&2; exit 1; }
ln -s busybox "$root/bin/sh"
cp "$repo/guest/init" "$root/init"; chmod 755 "$root/init"
gcc -static -O2 -Wall -o "$root/bin/stamper" "$repo/guest/stamper.c"
strip "$root/bin/stamper" 2>/dev/null || true

# Wanted modules in the order the brief names; each is placed after the modules its
# `depends=` modinfo line names (6.1: virtio itself depends on virtio_ring).
want="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk"
declare -A deps=()
present=""
for m in $want; do
  src=$(find "$moddir" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) | head -n1)
  if [ -z "$src" ]; then
    # built into the kernel (or absent in this version): nothing to load
    if grep -q "/$m.ko" "$work/kernel/lib/modules/$kver/modules.builtin" 2>/dev/null; then
      echo "build-guest: $m is built in" >&2
    else
      echo "build-guest: $m not found, skipped" >&2
    fi
    continue
  fi
  case "$src" in
    *.xz) xz -dc "$src" > "$root/lib/modules/$m.ko" ;;
    *.zst) zstd -qdc "$src" > "$root/lib/modules/$m.ko" ;;
    *.gz) gzip -dc "$src" > "$root/lib/modules/$m.ko" ;;
    *) cp "$src" "$root/lib/modules/$m.ko" ;;
  esac
  deps[$m]=$( (strings "$root/lib/modules/$m.ko" 2>/dev/null || tr -c '[:print:]' '\n' < "$root/lib/modules/$m.ko") \
              | sed -n 's/^depends=//p' | head -n1 | tr ',' ' ')
  present="$present $m"
done
order=""
left="$present"
while [ -n "${left// /}" ]; do
  progress=0 next=""
  for m in $left; do
    ok=1
    for d in ${deps[$m]}; do
      case " $present " in *" $d "*) case " $order " in *" $d "*) ;; *) ok=0 ;; esac ;; esac
    done
    if [ $ok = 1 ]; then order="$order $m"; progress=1; else next="$next $m"; fi
  done
  left="$next"
  [ $progress = 1 ] || { echo "build-guest: module dependency cycle in:$left" >&2; exit 1; }
done
echo $order | tr ' ' '\n' > "$root/lib/modules/order"

( cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet ) | gzip -9n > "$work/initrd.gz"
cp "$vmlinuz" "$cache/vmlinuz.new" && mv "$cache/vmlinuz.new" "$cache/vmlinuz"
cp "$work/initrd.gz" "$cache/initrd.gz.new" && mv "$cache/initrd.gz.new" "$cache/initrd.gz"
echo "$key" > "$cache/KEY"
echo "build-guest: $kpkg ($kver), modules:$order" >&2
echo "$cache"
