#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets) for a bounded time each.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# The machines have only a stable toolchain: cargo-fuzz's flags are unstable, so this sets
# RUSTC_BOOTSTRAP=1 and disables the sanitizer (`-s none`: libFuzzer's coverage guidance and
# Rust's own checks, no AddressSanitizer; the project has no unsafe code). Crashes land in
# fuzz/artifacts/TARGET/; turn each into a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"; shift || true
targets=("$@")
((${#targets[@]})) || targets=(frame_decoder v1_command rest_body config_file)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  echo "== $t ($secs s)"
  cargo fuzz run -O -s none "$t" -- -max_total_time="$secs" -rss_limit_mb=2048
done
