#!/usr/bin/env bash
# A bounded soak (opt-in, not part of the test suite): starts a release wshub on a free port,
# runs `wshub bench soak` against it for DURATION (default 10m), prints the JSON report and
# exits non-zero when counts did not reconcile or the server did not return to its baseline.
#
#   scripts/soak.sh [DURATION] [extra `wshub bench soak` options]
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-600s}"; shift || true
cargo build --release --quiet
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/release/wshub serve --listen "127.0.0.1:$port" >target/soak-server.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done
./target/release/wshub bench soak --url "ws://127.0.0.1:$port/ws" --server-pid "$pid" --duration "$duration" "$@"
