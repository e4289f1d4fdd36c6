#!/usr/bin/env bash
# How a node's cost grows: memory per connection and CPU per delivery at 1k, 5k, 10k and 19k
# `wshub.v1` connections, each a member of 1, 10 or 100 groups, under a steady REST publish
# load of about 100,000 deliveries per second (every message reaches every connection).
#
#   bench/cost.sh [OUTDIR]            # ~6 minutes; CONNS="1000 5000" GROUPS_EACH="1 10" to narrow
#
# Each cell starts a fresh release server (--announce none, --silent-groups '*'), measures its
# RSS before the clients and after they joined and the publishing ran, and its CPU time during
# publishing. Results: OUTDIR/cost-N-G.json and a markdown table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/bench-results}"
mkdir -p "$out"
conns="${CONNS:-1000 5000 10000 19000}"
groups="${GROUPS_EACH:-1 10 100}"
deliveries="${DELIVERIES:-100000}"
sources="${SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4}"
cargo build --release --quiet --workspace
bin=./target/release/wshub
gen=./target/release/wshub-bench
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }

for n in $conns; do
  for g in $groups; do
    port=$(free_port)
    $bin serve --listen "127.0.0.1:$port" --announce none --silent-groups '*' >"$out/cost-$n-$g.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    sleep 0.3
    base=$(rss $pid)
    rate=$(python3 -c "print(max(1, round($deliveries / $n)))")
    echo "== $n connections × $g groups, $rate msg/s" >&2
    "$gen" fanout -n "$n" --groups "$g" --via rest --rate "$rate" --duration 5s --size 64 \
      --sources "$sources" --server-pid "$pid" --json --url "ws://127.0.0.1:$port/ws" \
      | python3 -c "import json,sys; r=json.load(sys.stdin); r['rss_before']=$base; print(json.dumps(r))" \
      >"$out/cost-$n-$g.json" || echo '{"error":"failed"}' >"$out/cost-$n-$g.json"
    kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
    sleep 1
  done
done

python3 - "$out" "$conns" "$groups" <<'PY'
import json, sys, os
out, conns, groups = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
print("| connections | groups each | memberships | RSS per connection | server CPU per delivery | deliveries/s | p99 latency | lost |")
print("|---|---|---|---|---|---|---|---|")
for n in conns:
    for g in groups:
        try:
            r = json.load(open(os.path.join(out, f"cost-{n}-{g}.json")))
        except Exception:
            r = {}
        if not r.get("delivered"):
            print(f"| {n} | {g} | | failed | | | | |")
            continue
        per_conn = (r["rss_after"] - r["rss_before"]) / int(n)
        cpu_us = r["server_cores"] * r["secs"] / r["delivered"] * 1e6
        print(f"| {int(n):,} | {g} | {int(n)*int(g):,} | {per_conn/1024:.2f} KiB | {cpu_us:.2f} µs | {r['per_sec']:,.0f} | {r['latency']['p99_us']/1000:.1f} ms | {r['lost']} |")
PY
