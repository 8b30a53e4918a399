#!/usr/bin/env bash
# Quick start 2: installs what the tests need (QEMU 7.2 tools, busybox, the guest kernel),
# then runs the whole test suite: unit tests, and integration tests against real qemu-img,
# qemu-io and qemu-system-x86_64 (TCG).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
if [ -x scripts/build-guest.sh ]; then
  bash scripts/build-guest.sh
fi
# Integration tests start QEMU processes and mount small tmpfs datastores (as root);
# two test threads keep them from starving each other on a 2-core machine. --no-fail-fast: every
# test binary runs, so one failure does not hide the others.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --lib --bins --tests --no-fail-fast -- --test-threads="${VMSHIFT_TEST_THREADS:-2}" 2>&1 | tee "$log" || status=$?
# The runner's rustdoc example migrates a real image: it is a test too.
cargo test --workspace --doc 2>&1 | tee -a "$log" || status=$?
# One closing line over every test binary (cargo prints one "test result" per target).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
