#!/usr/bin/env bash
# Runs wshub, the Node.js `ws` peer and, when one is built, the native ceiling (a uWebSockets
# server speaking the same protocol) one after another under the same load, on this machine,
# with the project's generator (`wshub-bench`), and prints a markdown comparison table.
#
#   bench/compare.sh [OUTDIR]        # ~4 minutes per server
#   UWS_BIN=/path/to/uws-peer bench/compare.sh
#   WSHUB_BIN=/tmp/before/target/release/wshub SERVERS=wshub bench/compare.sh before  # an older build, for a before/after
#
# The ceiling is never part of the project: a uWebSockets server speaking plain mode, built
# outside it from uWebSockets' sources (see docs/BENCHMARKS.md). UWS_BIN names the binary
# (default: the benchmark workspace's copy), and the column is left out when there is none. SERVERS="wshub uws" picks servers.
#
# Every server is started fresh for every measurement (idle memory is measured from a clean
# process), on a free loopback port, and stopped afterwards. Results: OUTDIR/*.json, table on
# stdout and in OUTDIR/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/bench-results}"
mkdir -p "$out"
dur="${DURATION:-5s}"
# Connect benchmarks spread their client ports over several loopback addresses: one address's
# ephemeral ports fill with TIME_WAIT entries from earlier runs and slow connect() down.
sources="${SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4}"

cargo build --release --quiet --workspace
bin="${WSHUB_BIN:-./target/release/wshub}"
gen=./target/release/wshub-bench
uws="${UWS_BIN:-../shared/peers/uws/uws-peer}"
servers="${SERVERS:-wshub node$([[ -x $uws ]] && echo " uws")}"
if [[ ! -d bench/peers/node-ws/node_modules/ws ]]; then
  (cd bench/peers/node-ws && npm ci --no-audit --no-fund --silent)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pid=""
start() { # start NAME ANNOUNCE
  local port; port=$(free_port)
  url="ws://127.0.0.1:$port/ws"
  if [[ $1 == wshub ]]; then
    $bin serve --listen "127.0.0.1:$port" --announce "$2" >"$out/$1.log" 2>&1 &
  elif [[ $1 == uws ]]; then
    ANNOUNCE=$2 "$uws" "$port" >"$out/$1.log" 2>&1 &
  else
    (cd bench/peers/node-ws && PORT=$port ANNOUNCE=$2 exec node server.js) >"$out/$1.log" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
  sleep 0.3
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; sleep 1; }
trap stop EXIT

run() { # run SERVER ANNOUNCE NAME bench-args...
  local server=$1 announce=$2 name=$3; shift 3
  start "$server" "$announce"
  echo "== $server $name" >&2
  "$gen" "$@" --url "$url" --server-pid "$pid" --label "$server" --json >"$out/$server-$name.json" \
    || echo '{"error":"failed"}' >"$out/$server-$name.json"
  stop
}

for s in $servers; do
  run $s none idle10k   connect -n 10000 --hold 3s --sources "$sources"
  run $s none idle15k   connect -n 15000 --hold 3s --sources "$sources"
  run $s all  storm2k   connect -n 2000 --hold 1s --sources "$sources"
  run $s none fan1k-max fanout -n 1000 --window 16 --duration "$dur"
  run $s none fan1k-100 fanout -n 1000 --rate 100 --duration "$dur"
  run $s none fan10k-max fanout -n 10000 --window 16 --duration "$dur"
  run $s none fan10k-20 fanout -n 10000 --rate 20 --duration "$dur"
  run $s none echo16    echo -c 16 --duration "$dur"
  run $s none bcast16   echo --broadcast -c 16 --duration "$dur"
done

python3 - "$out" $servers <<'PY' | tee "$out/table.md"
import json, sys, os
out = sys.argv[1]
servers = sys.argv[2:]
names = {"wshub": "wshub", "node": "Node `ws` 8.23", "uws": "uWebSockets (native ceiling)"}
def get(server, name):
    try:
        with open(os.path.join(out, f"{server}-{name}.json")) as f:
            return json.load(f)
    except Exception:
        return {}
def fmt(v, unit=""):
    if v is None: return "n/a"
    if isinstance(v, float) and v >= 1000: return f"{v:,.0f}{unit}"
    if isinstance(v, float): return f"{v:.2f}{unit}"
    return f"{v}{unit}"
def label_keys(label):
    if "memory" in label: return ("rss_per_connection",)
    if "connect rate" in label: return ("connect_rate",)
    return ("per_sec",)
rows = [
    ("idle memory per connection, 10k conns", "idle10k", lambda r: r.get("rss_per_connection") and f"{r['rss_per_connection']/1024:.2f} KiB"),
    ("idle memory per connection, 15k conns", "idle15k", lambda r: r.get("rss_per_connection") and f"{r['rss_per_connection']/1024:.2f} KiB"),
    ("memory per connection after a 2k connect storm, announce all", "storm2k", lambda r: r.get("rss_per_connection") and f"{r['rss_per_connection']/1024:.2f} KiB"),
    ("connect rate, 15k conns, no announcements", "idle15k", lambda r: r.get("connect_rate") and f"{r['connect_rate']:,.0f}/s"),
    ("connect rate, 2k conns, announce all (N²/2 frames)", "storm2k", lambda r: r.get("connect_rate") and f"{r['connect_rate']:,.0f}/s"),
    ("fan-out 1k subs, max (16 in flight): deliveries/s", "fan1k-max", lambda r: r.get("per_sec") and f"{r['per_sec']:,.0f}"),
    ("fan-out 1k subs, max: p99 latency", "fan1k-max", lambda r: r.get("latency") and f"{r['latency']['p99_us']/1000:.1f} ms"),
    ("fan-out 1k subs × 100 msg/s: p99 latency", "fan1k-100", lambda r: r.get("latency") and f"{r['latency']['p99_us']/1000:.1f} ms"),
    ("fan-out 10k subs, max (16 in flight): deliveries/s", "fan10k-max", lambda r: r.get("per_sec") and f"{r['per_sec']:,.0f}"),
    ("fan-out 10k subs × 20 msg/s: p50 / p99 latency", "fan10k-20", lambda r: r.get("latency") and f"{r['latency']['p50_us']/1000:.1f} / {r['latency']['p99_us']/1000:.1f} ms"),
    ("echo on /ws/echo, 16 clients: round trips/s", "echo16", lambda r: r.get("per_sec") and f"{r['per_sec']:,.0f}"),
    ("echo on /ws/echo, 16 clients: p99 RTT", "echo16", lambda r: r.get("latency") and f"{r['latency']['p99_us']/1000:.2f} ms"),
    ("echo + broadcast on /ws, 16 clients: round trips/s", "bcast16", lambda r: r.get("per_sec") and f"{r['per_sec']:,.0f}"),
    ("echo + broadcast on /ws, 16 clients: p99 RTT", "bcast16", lambda r: r.get("latency") and f"{r['latency']['p99_us']/1000:.2f} ms"),
]
print("| measurement | " + " | ".join(names[s] for s in servers) + (" | wshub ÷ ceiling |" if "uws" in servers and "wshub" in servers else " |"))
print("|---|" + "---|" * len(servers) + ("---|" if "uws" in servers and "wshub" in servers else ""))
for label, name, f in rows:
    cells = []
    for s in servers:
        r = get(s, name)
        v = f(r) if r else None
        lost = r.get("lost") if r else None
        cpu = r.get("server_cores") if r else None
        extra = []
        if lost: extra.append(f"lost {lost}")
        if cpu is not None and name.startswith(("fan", "echo")) and "latency" not in label: extra.append(f"server {cpu:.2f} cores")
        cells.append((v or "n/a") + (f" ({', '.join(extra)})" if extra else ""))
    ratio = ""
    if "uws" in servers and "wshub" in servers:
        key = next((k for k in ("rss_per_connection", "connect_rate", "per_sec") if k in label_keys(label)), None)
        w, u = get("wshub", name), get("uws", name)
        if ("latency" in label or "RTT" in label) and w.get("latency") and u.get("latency"):
            ratio = f"{w['latency']['p99_us'] / max(u['latency']['p99_us'], 1):.2f}× (p99)"
        elif key and w.get(key) and u.get(key):
            ratio = f"{w[key] / u[key]:.2f}×"
        ratio = f" {ratio or 'n/a'} |"
    print(f"| {label} | " + " | ".join(cells) + " |" + ratio)
PY
