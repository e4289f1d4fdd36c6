#!/usr/bin/env bash
# A bounded soak (opt-in, not part of the test suite): starts a release wshub on a free port,
# runs `wshub-bench soak` against it for DURATION (default 10m), prints the JSON report and
# exits non-zero when counts did not reconcile or the server did not return to its baseline.
#
#   scripts/soak.sh [DURATION] [extra `wshub-bench soak` options]
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-600s}"; shift || true
cargo build --release --quiet --workspace
source scripts/lib.sh
start_wshub ./target/release/wshub target/soak-server.log
./target/release/wshub-bench soak --url "ws://127.0.0.1:$port/ws" --server-pid "$pid" --duration "$duration" "$@"
