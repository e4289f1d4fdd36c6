#!/usr/bin/env bash
# The floor of a Tokio task per connection (docs/BENCHMARKS.md, "Idle memory"): opens N plain
# TCP connections (from 127.0.0.2-4) to a server that only holds them, and prints the server's
# RSS growth per connection, for `hold` (a socket) and `task` (a socket and a task).
#   bench/floor/run.sh [N]
set -euo pipefail
cd "$(dirname "$0")"
n="${1:-10000}"
JEMALLOC_SYS_WITH_MALLOC_CONF="dirty_decay_ms:1000,muzzy_decay_ms:0" cargo build --release --quiet
for mode in hold task; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  ./target/release/floor "$mode" "$port" & pid=$!
  sleep 0.5
  python3 - "$pid" "$n" "$mode" "$port" <<'PY'
import socket, sys, time
pid, n, mode, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
before = rss()
socks = []
for i in range(n):
    s = socket.socket()
    s.bind((f"127.0.0.{2 + i % 3}", 0))
    s.connect(("127.0.0.1", port))
    socks.append(s)
time.sleep(3)
after = rss()
print(f"{mode}: {before/1e6:.1f} MB -> {after/1e6:.1f} MB = {(after-before)/n:.0f} B per connection")
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
