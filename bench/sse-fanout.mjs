// Fan-out over Server-Sent Events next to WebSocket, measured by the same generator (this
// script, Node.js) the same way: N sessions in one group (`/events?group=fan` streams, or
// `wshub.v1` WebSockets on `/ws` that joined it), M REST publications to the group one after
// another, and the time until every session has every one. Reports deliveries per second and
// the server's CPU time per delivery (user + system, from /proc).
//
//   node --experimental-websocket bench/sse-fanout.mjs [sse|ws] [N=1000] [M=200] [BIN=target/release/wshub] [WINDOW=16]
//
// WINDOW publications are in flight at once (as `wshub-bench fanout --window 16`).
//
// Bounded: at most N sessions, M publications, and 60 s of waiting.
import { readFileSync } from "node:fs";
import http from "node:http";
import { startWshub } from "./serve.mjs";

const MODE = process.argv[2] ?? "sse";
const N = Number(process.argv[3] ?? 1000);
const M = Number(process.argv[4] ?? 200);
const BIN = process.argv[5] ?? "target/release/wshub";
const WINDOW = Number(process.argv[6] ?? 16);
if (!["sse", "ws"].includes(MODE)) throw new Error("mode: sse or ws");

const { child, addr } = await startWshub(BIN, N);
const [host, port] = addr.split(":");
const cpu = () => {
  const f = readFileSync(`/proc/${child.pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, in seconds (USER_HZ 100)
};
const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
let got = 0;
let lastAt = 0;
const delivered = () => {
  got++;
  lastAt = performance.now();
};

function openSse() {
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port, path: "/events?group=fan", agent }, (res) => {
      let buf = "";
      let subscribed = false;
      res.setEncoding("utf8");
      res.on("data", (d) => {
        buf += d;
        const events = buf.split("\n\n");
        buf = events.pop();
        for (const e of events) {
          if (!subscribed) {
            if (e.includes("event: subscribed")) {
              subscribed = true;
              resolve(res);
            }
          } else if (e.includes('"type":"message"')) delivered();
        }
      });
    });
    req.on("error", reject);
  });
}

function openWs() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${addr}/ws`, "wshub.v1");
    let joined = false;
    ws.onopen = () => ws.send(JSON.stringify({ id: 1, type: "join", group: "fan" }));
    ws.onmessage = (m) => {
      if (!joined) {
        if (m.data.includes('"type":"ack"')) {
          joined = true;
          resolve(ws);
        }
      } else if (m.data.includes('"type":"message"')) delivered();
    };
    ws.onerror = reject;
  });
}

const sessions = [];
for (let i = 0; i < N; i += 250) {
  const batch = [];
  for (let j = i; j < Math.min(N, i + 250); j++) batch.push(MODE === "sse" ? openSse() : openWs());
  sessions.push(...(await Promise.all(batch)));
}
await new Promise((r) => setTimeout(r, 500));
const body = JSON.stringify({ message: { text: "x".repeat(64) } });
const cpu0 = cpu();
const t0 = performance.now();
let next = 0;
await Promise.all(
  Array.from({ length: Math.min(WINDOW, M) }, async () => {
    while (next < M) {
      next++;
      const res = await fetch(`http://${addr}/api/groups/fan/broadcast`, { method: "POST", headers: { "content-type": "application/json" }, body });
      await res.arrayBuffer();
    }
  }),
);
const want = N * M;
const deadline = Date.now() + 60000;
while (got < want && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
const secs = (lastAt - t0) / 1000;
const used = cpu() - cpu0;
console.log(
  `${MODE}: ${N} sessions x ${M} publications: ${got}/${want} delivered in ${secs.toFixed(2)} s = ${Math.round(got / secs)} deliveries/s; server CPU ${used.toFixed(2)} s = ${((used / got) * 1e6).toFixed(2)} µs per delivery`,
);
for (const s of sessions) (s.destroy ?? s.close).call(s);
child.kill("SIGKILL");
process.exit(0);
