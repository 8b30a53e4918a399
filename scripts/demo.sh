#!/usr/bin/env bash
# Quick start 1: installs what vmshift needs, builds it, and runs `vmshift demo` — the main job
# (an offline migration with verification and a report) on a bundled sample VM disk.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
echo "demo: building vmshift (release; the first build takes a few minutes)" >&2
cargo build --release --bin vmshift
exec cargo run --release --quiet --bin vmshift -- demo "$@"
