// Reconnect storm: a three-node cluster (real Redis or NATS), N clients of the JavaScript
// client on node 1 with every node's URL, a REST publisher through the other nodes; node 1 is
// killed (SIGKILL) and every client reconnects to the survivors at once (the client's own
// backoff and jitter, default options) and recovers by offset. Prints how long until every
// client was back and had recovered, the survivors' peak memory, and whether every message
// arrived once, in order.
//
//   cargo build --release
//   node --experimental-websocket bench/storm.mjs [--clients 2000] [--engine redis|nats]
//        [--groups 10] [--rate 200]
//
// WSHUB_BIN picks the binary (default target/release/wshub). Loopback only; bounded in time.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
process.env.WSHUB_BIN ??= path.join(root, "target/release/wshub");
const { WshubClient } = await import("../clients/js/wshub.js");
const { freePort, startEngine, startServer, until } = await import("../clients/js/test/server.mjs");

const opt = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const CLIENTS = Number(opt("clients", 2000));
const ENGINE = opt("engine", "redis");
const GROUPS = Number(opt("groups", 10));
const RATE = Number(opt("rate", 200)); // messages per second, all groups together
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rss = (pid) => {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
};
/** CPU seconds (user + system) a process has used so far. */
const cpu = (pid) => {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
    return (Number(f[11]) + Number(f[12])) / 100; // clock ticks (USER_HZ = 100)
  } catch {
    return 0;
  }
};
const mb = (b) => (b / 1048576).toFixed(1);
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

const engine = await startEngine(ENGINE);
const nodes = [];
try {
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    nodes.push(
      await startServer({
        port,
        args: ["--node-id", `node${i + 1}`, "--backplane", engine.url, "--history-size", "5000", "--announce", "none"],
      }),
    );
  }
  const [doomed, b, c] = nodes;
  const groups = Array.from({ length: GROUPS }, (_, g) => `g${g}`);

  // The clients, all on node 1; half list node 2 next, half node 3.
  const clients = [];
  const t0 = performance.now();
  for (let i = 0; i < CLIENTS; i++) {
    const urls = i % 2 ? [doomed.wsUrl, b.wsUrl, c.wsUrl] : [doomed.wsUrl, c.wsUrl, b.wsUrl];
    const client = new WshubClient(urls, { commandTimeout: 30000 });
    const st = { client, group: groups[i % GROUPS], seqs: [], welcomeAt: 0, recoveredAt: 0, lost: 0, attempts: 0 };
    client.addEventListener("message", (e) => st.seqs.push(e.detail.message.seq));
    client.addEventListener("welcome", () => (st.welcomeAt = performance.now()));
    client.addEventListener("recovered", (e) => {
      if (e.detail.recovered) st.recoveredAt = performance.now();
      else st.lost++;
    });
    client.addEventListener("close", () => st.attempts++);
    clients.push(st);
  }
  await Promise.all(clients.map((s) => s.client.connect().then(() => s.client.join(s.group))));
  console.log(`${CLIENTS} clients on node1 in ${((performance.now() - t0) / 1000).toFixed(1)} s; engine ${ENGINE}`);

  // The publisher: RATE messages/s over the groups, through nodes 2 and 3.
  const sent = Object.fromEntries(groups.map((g) => [g, 0]));
  let publishing = true;
  const publisher = (async () => {
    let n = 0;
    const start = performance.now();
    while (publishing) {
      const g = groups[n % GROUPS];
      const seq = sent[g] + 1;
      const via = n % 2 ? b : c;
      const res = await fetch(`${via.base}/api/groups/${g}/broadcast`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ message: { seq }, idempotencyKey: `${g}-${seq}` }),
      });
      await res.text();
      if (res.status !== 200) throw new Error(`publish ${res.status}`);
      sent[g] = seq;
      n++;
      const due = start + (n * 1000) / RATE;
      if (due > performance.now()) await sleep(due - performance.now());
    }
  })();
  await sleep(1000);

  // The survivors' memory, sampled every 20 ms from before the kill until the end.
  const base = { b: rss(b.pid), c: rss(c.pid) };
  const peak = { ...base };
  const sampler = setInterval(() => {
    peak.b = Math.max(peak.b, rss(b.pid));
    peak.c = Math.max(peak.c, rss(c.pid));
  }, 20);

  const cpuBefore = { b: cpu(b.pid), c: cpu(c.pid), me: process.cpuUsage() };
  const killedAt = performance.now();
  await doomed.stop(); // SIGKILL
  await until(() => clients.every((s) => s.welcomeAt > killedAt && s.recoveredAt > killedAt), 120000, "every client back");
  const back = clients.map((s) => s.welcomeAt - killedAt);
  const recovered = clients.map((s) => s.recoveredAt - killedAt);
  const storm = {
    seconds: (performance.now() - killedAt) / 1000,
    node2: cpu(b.pid) - cpuBefore.b,
    node3: cpu(c.pid) - cpuBefore.c,
    generator: (() => {
      const u = process.cpuUsage(cpuBefore.me);
      return (u.user + u.system) / 1e6;
    })(),
  };
  await sleep(1000);
  publishing = false;
  await publisher;
  await until(() => clients.every((s) => s.seqs.length >= sent[s.group]), 30000, "every message delivered").catch(() => {});
  clearInterval(sampler);
  const after = { b: rss(b.pid), c: rss(c.pid) };

  let missing = 0;
  let extra = 0;
  let disorder = 0;
  for (const s of clients) {
    const want = sent[s.group];
    const set = new Set(s.seqs);
    for (let k = 1; k <= want; k++) if (!set.has(k)) missing++;
    extra += s.seqs.length - set.size;
    for (let k = 1; k < s.seqs.length; k++) if (s.seqs[k] <= s.seqs[k - 1]) disorder++;
  }
  const total = Object.values(sent).reduce((a, x) => a + x, 0);
  console.log(
    JSON.stringify(
      {
        engine: ENGINE,
        clients: CLIENTS,
        groups: GROUPS,
        rate: RATE,
        messages: total,
        expected_deliveries: clients.reduce((a, s) => a + sent[s.group], 0),
        missing,
        duplicated: extra,
        out_of_order: disorder,
        not_recovered: clients.reduce((a, s) => a + s.lost, 0),
        reconnect_ms: { p50: Math.round(pct(back, 50)), p99: Math.round(pct(back, 99)), max: Math.round(Math.max(...back)) },
        recovered_ms: { p50: Math.round(pct(recovered, 50)), p99: Math.round(pct(recovered, 99)), max: Math.round(Math.max(...recovered)) },
        storm_cpu_seconds: {
          wall: +storm.seconds.toFixed(2),
          node2: +storm.node2.toFixed(2),
          node3: +storm.node3.toFixed(2),
          generator: +storm.generator.toFixed(2),
        },
        closes_per_client_max: Math.max(...clients.map((s) => s.attempts)),
        rss_mb: {
          node2: [mb(base.b), mb(peak.b), mb(after.b)],
          node3: [mb(base.c), mb(peak.c), mb(after.c)],
        },
      },
      null,
      1,
    ),
  );
  for (const s of clients) s.client.close();
  process.exitCode = missing || extra || disorder ? 1 : 0;
} finally {
  for (const n of nodes) await n.stop();
  await engine.stop();
}
