#!/usr/bin/env bash
# Fuzzes the REST API against its own OpenAPI document with schemathesis (property-based:
# schema-valid requests must be accepted, schema-violating ones refused, no 5xx ever).
#
#   scripts/schemathesis.sh [MAX_EXAMPLES]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v schemathesis >/dev/null || pip install -q schemathesis
cargo build --quiet
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/debug/wshub serve --listen "127.0.0.1:$port" >target/schemathesis-server.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done
schemathesis run "http://127.0.0.1:$port/openapi.json" --max-examples "${1:-100}"
