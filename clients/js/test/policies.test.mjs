// Delivery policies with the real client: a client that stops reading a `drop-oldest` group is
// sent a `gap`, recovers what it lost from history by itself, and hands the application every
// message once, in order.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { Worker } from "node:worker_threads";
import { WshubClient } from "../wshub.js";
import { startServer, until } from "./server.mjs";

const N = 800;
let srv;
before(async () => {
  srv = await startServer({
    args: ["--delivery-policy", "feed:*=drop-oldest", "--history-size", "5000", "--history-max-bytes", "256MiB", "--announce", "none", "--compression", "false"],
  });
});
after(async () => {
  await srv?.stop();
});

test("a client too slow for a drop-oldest group gets gaps, recovers them, and sees every message once in order", async () => {
  const c = new WshubClient(srv.wsUrl, { minDelay: 50, maxDelay: 400 });
  await c.connect();
  await c.join("feed:slow");
  const offsets = [];
  const gaps = [];
  const recovered = [];
  c.addEventListener("message", (e) => {
    if (e.detail.group === "feed:slow") offsets.push(e.detail.offset);
  });
  c.addEventListener("gap", (e) => gaps.push(e.detail));
  c.addEventListener("recovered", (e) => recovered.push(e.detail));

  // A publisher on another thread; this one stops reading (blocked) until it is done.
  const flag = new Int32Array(new SharedArrayBuffer(4));
  const worker = new Worker(
    `const { workerData } = require("node:worker_threads");
     (async () => {
       const pad = "x".repeat(64 * 1024);
       for (let i = 1; i <= workerData.n; i++) {
         const res = await fetch(workerData.base + "/api/groups/feed:slow/broadcast", {
           method: "POST", headers: { "content-type": "application/json" },
           body: JSON.stringify({ message: { i, pad } }),
         });
         if (res.status !== 200) throw new Error("publish " + res.status);
       }
       Atomics.store(workerData.flag, 0, 1);
       Atomics.notify(workerData.flag, 0);
     })();`,
    { eval: true, workerData: { base: srv.base, n: N, flag } },
  );
  const stopped = Atomics.wait(flag, 0, 0, 60000);
  assert.notEqual(stopped, "timed-out", "the publisher finished");
  await worker.terminate();

  await until(() => offsets.length >= N, 30000, "every message").catch((e) => {
    console.error("DEBUG", offsets.length, JSON.stringify(gaps), JSON.stringify(recovered), offsets.slice(0, 5), offsets.slice(-5));
    throw e;
  });
  assert.ok(gaps.length >= 1, "the server dropped something and said so");
  assert.ok(recovered.some((r) => r.group === "feed:slow" && r.recovered), JSON.stringify(recovered));
  assert.deepEqual(offsets, Array.from({ length: N }, (_, i) => i + 1), "each once, in order");
  assert.equal(c.state, "open", "never disconnected");
  c.close();
});
