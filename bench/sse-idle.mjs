// Idle memory of Server-Sent Events sessions: opens N `/events?group=idle` streams (each one
// session, a member of the group) against a wshub binary, waits until every one got its
// `subscribed` event, and reports the server's resident memory per session above the
// baseline. Then one publication fans out to all of them and the time until the last one has
// it is reported (one encode for all N, framed per session).
//
//   node bench/sse-idle.mjs [N=10000] [BIN=target/release/wshub]
import { readFileSync } from "node:fs";
import http from "node:http";
import { startWshub } from "./serve.mjs";

const N = Number(process.argv[2] ?? 10000);
const BIN = process.argv[3] ?? "target/release/wshub";
const { child, addr } = await startWshub(BIN, N);
const [host, port] = addr.split(":");
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"))[1]) * 1024;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

function open(onData) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port, path: "/events?group=idle", agent }, (res) => {
      let buf = "";
      let subscribed = false;
      res.setEncoding("utf8");
      res.on("data", (d) => {
        buf += d;
        if (!subscribed && buf.includes("event: subscribed")) {
          subscribed = true;
          buf = "";
          resolve(res);
        } else if (subscribed) {
          onData(buf);
          buf = "";
        }
      });
    });
    req.on("error", reject);
  });
}

await sleep(300);
const base = rss();
let got = 0;
let lastAt = 0;
const streams = [];
for (let i = 0; i < N; i += 500) {
  const batch = [];
  for (let j = i; j < Math.min(N, i + 500); j++) {
    batch.push(
      open((d) => {
        if (d.includes('"message"')) {
          got++;
          lastAt = performance.now();
        }
      }),
    );
  }
  streams.push(...(await Promise.all(batch)));
}
await sleep(1000);
const idle = rss();
console.log(`${N} SSE sessions: ${((idle - base) / N / 1024).toFixed(2)} KiB each above the baseline (${(base / 1048576).toFixed(1)} MiB → ${(idle / 1048576).toFixed(1)} MiB)`);
const metrics = await (await fetch(`http://${addr}/metrics`)).text();
for (const l of metrics.split("\n")) if (/^wshub_(connections |disconnects_total)/.test(l)) console.log("  " + l);
const t0 = performance.now();
const res = await fetch(`http://${addr}/api/groups/idle/broadcast`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ message: { text: "hello, all of you" } }) });
const { recipients } = await res.json();
const deadline = Date.now() + 20000;
while (got < N && Date.now() < deadline) await sleep(5);
console.log(`one publication to ${recipients} SSE sessions: the last had it after ${(lastAt - t0).toFixed(1)} ms (${got}/${N} received; ${Math.round(N / ((lastAt - t0) / 1000))} deliveries/s)`);
for (const s of streams) s.destroy();
child.kill("SIGKILL");
process.exit(0);
