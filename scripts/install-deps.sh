#!/usr/bin/env bash
# Installs the system packages vmshift and its tests need on Debian 12 (idempotent).
# qemu-utils and qemu-system-x86 must come from the same release: images that ship a newer
# qemu-utils make a plain `apt-get install qemu-system-x86` fail, so both are pinned to the
# candidate version of qemu-system-x86 (a downgrade where a newer qemu-utils is installed).
set -euo pipefail
need=()
have_qemu_pair() {
  command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null || return 1
  [ "$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null)" = \
    "$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null)" ]
}
have_qemu_pair || need+=(qemu)
# chromium + chromedriver (chromium-driver): crates/cli/tests/browser.rs drives the dashboard
# in headless Chromium over WebDriver
for bin in mkfs.ext4:e2fsprogs busybox:busybox-static cpio:cpio nbdkit:nbdkit nbdcopy:libnbd-bin \
           python3:python3 zstd:zstd xz:xz-utils gzip:gzip gcc:gcc strings:binutils \
           dpkg-deb:dpkg fio:fio openssl:openssl pkg-config:pkg-config \
           libvirtd:libvirt-daemon-system virsh:libvirt-clients \
           dpkg-shlibdeps:dpkg-dev man:man-db systemd-analyze:systemd curl:curl \
           chromium:chromium chromedriver:chromium-driver; do
  command -v "${bin%%:*}" >/dev/null || need+=("${bin#*:}")
done
# scripts/build-deb.sh: dpkg-shlibdeps finds the package's library dependencies; the packaging
# tests read the installed man pages (man-db) and check the unit (systemd-analyze verify).
# scripts/bench.sh measures peak RSS with GNU time (`time` alone is the shell keyword)
[ -x /usr/bin/time ] || need+=(time)
# the test guest's stamper is linked statically (scripts/build-guest.sh)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
# the libvirt front end links libvirt.so (crates/libvirt, through the virt crate)
[ -f /usr/lib/x86_64-linux-gnu/libvirt.so ] || need+=(libvirt-dev)
# /dev/kvm as udev sets it up on Debian (root:kvm 0660; libvirt-qemu is in group kvm). Hosts
# without udev leave it root-only, and then libvirtd finds its QEMU capabilities stale on every
# call (KVM "was enabled when probing but is not available now") and probes QEMU again: each
# `virsh define` takes a minute. Guests still run under TCG (`type='qemu'`, `-accel tcg`).
kvm_device() {
  if [ -c /dev/kvm ] && [ "$(id -u)" -eq 0 ] && getent group kvm >/dev/null \
     && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
  fi
}
trap kvm_device EXIT   # after the packages (libvirt-daemon-system creates the group)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
pkgs=()
for p in "${need[@]}"; do
  if [ "$p" = qemu ]; then
    v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
    [ -n "$v" ] && [ "$v" != "(none)" ] || { echo "install-deps: no qemu-system-x86 package in the apt sources" >&2; exit 1; }
    pkgs+=("qemu-utils=$v" "qemu-system-x86=$v" "qemu-system-common=$v" "qemu-block-extra=$v")
  else
    pkgs+=("$p")
  fi
done
$SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades "${pkgs[@]}" >/dev/null
echo "install-deps: installed ${pkgs[*]}"
