// A three-node cluster on a real Redis, then a real NATS, with the real client: every node is
// restarted in turn (SIGTERM, then started again on its port) while publishers run, and then
// one is killed (SIGKILL); every subscriber must see every message of every group once, in
// order, having moved from node to node by itself.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { WshubClient } from "../wshub.js";
import { freePort, startEngine, startServer, until } from "./server.mjs";

const GROUPS = ["orders", "prices", "chat"];
const SUBSCRIBERS = 12;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => {});
});

async function cluster(kind) {
  const engine = await startEngine(kind);
  cleanup.push(() => engine.stop());
  const ports = [await freePort(), await freePort(), await freePort()];
  const args = (i) => [
    "--node-id", `node${i + 1}`,
    "--backplane", engine.url,
    "--history-size", "10000",
    "--shutdown-timeout", "5s",
    "--announce", "none",
  ];
  const nodes = [];
  for (let i = 0; i < 3; i++) {
    nodes.push(await startServer({ port: ports[i], args: args(i) }));
  }
  cleanup.push(async () => {
    for (const n of nodes) await n.stop();
  });
  const ready = (n) =>
    until(
      async () => (await fetch(n.base + "/readyz").catch(() => null))?.status === 200,
      10000,
      `${n.addr} ready`,
    );
  for (const n of nodes) await ready(n);
  return {
    nodes,
    urls: nodes.map((n) => n.wsUrl),
    async restart(i) {
      const code = await nodes[i].terminate();
      assert.equal(code, 0, `node${i + 1} exits 0 after SIGTERM`);
      nodes[i] = await startServer({ port: ports[i], args: args(i) });
      await ready(nodes[i]);
    },
    async kill(i) {
      await nodes[i].stop();
    },
    async start(i) {
      nodes[i] = await startServer({ port: ports[i], args: args(i) });
      await ready(nodes[i]);
    },
  };
}

/** Subscribers in every group, spread over the nodes, each knowing every node. */
async function subscribers(c) {
  const subs = [];
  for (let i = 0; i < SUBSCRIBERS; i++) {
    // Each starts on node i % 3 and moves on to the following ones.
    const urls = [0, 1, 2].map((k) => c.urls[(i + k) % 3]);
    const client = new WshubClient(urls, { minDelay: 50, maxDelay: 500, commandTimeout: 5000 });
    const sub = { client, seen: Object.fromEntries(GROUPS.map((g) => [g, []])), closes: [], lost: [] };
    client.addEventListener("message", (e) => {
      const m = e.detail;
      if (m.group in sub.seen) sub.seen[m.group].push({ seq: m.message.seq, offset: m.offset });
    });
    client.addEventListener("close", (e) => sub.closes.push(e.detail.code));
    client.addEventListener("recovered", (e) => {
      if (!e.detail.recovered) sub.lost.push(e.detail.group);
    });
    await client.connect();
    for (const g of GROUPS) await client.join(g);
    cleanup.push(async () => client.close());
    subs.push(sub);
  }
  return subs;
}

/** One publisher per group: sequential REST publishes with an idempotency key, sent to the
 * nodes in turn; a refused or failed one is retried on the next node with the same key. */
function publishers(c) {
  let running = true;
  const sent = Object.fromEntries(GROUPS.map((g) => [g, 0]));
  const retries = { count: 0 };
  const loops = GROUPS.map(async (g, gi) => {
    let node = gi;
    for (let seq = 1; running; seq++) {
      for (let attempt = 0; ; attempt++) {
        assert.ok(attempt < 500, `publish ${g}#${seq} kept failing`);
        const base = c.nodes[node % 3].base;
        node++;
        try {
          const res = await fetch(`${base}/api/groups/${g}/broadcast`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ message: { seq }, idempotencyKey: `${g}-${seq}` }),
            signal: AbortSignal.timeout(5000),
          });
          const body = await res.text();
          if (res.status === 200) {
            // An offset says the cluster has it (0 would be "this node only").
            assert.ok(JSON.parse(body).offset > 0, `${g}#${seq}: ${body}`);
            break;
          }
        } catch {}
        retries.count++;
        await sleep(10);
      }
      sent[g] = seq;
      await sleep(3);
    }
  });
  return {
    sent,
    retries,
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

function assertEveryMessageOnceInOrder(subs, sent) {
  for (const [i, sub] of subs.entries()) {
    assert.deepEqual(sub.lost, [], `subscriber ${i} recovered every stream`);
    for (const g of GROUPS) {
      const seqs = sub.seen[g].map((m) => m.seq);
      const want = Array.from({ length: sent[g] }, (_, k) => k + 1);
      if (seqs.length !== want.length || seqs.some((s, k) => s !== want[k])) {
        const dup = seqs.filter((s, k) => seqs.indexOf(s) !== k);
        const missing = want.filter((s) => !seqs.includes(s));
        assert.fail(
          `subscriber ${i}, ${g}: ${seqs.length} of ${sent[g]}; missing ${missing.slice(0, 10)}; ` +
            `duplicated ${dup.slice(0, 10)}; closes ${sub.closes}`,
        );
      }
      const offsets = sub.seen[g].map((m) => m.offset);
      assert.ok(offsets.every((o, k) => k === 0 || o > offsets[k - 1]), `subscriber ${i}, ${g}: offsets increase`);
    }
  }
}

/** A cluster with its subscribers, publishing. */
async function underLoad(kind) {
  const c = await cluster(kind);
  const subs = await subscribers(c);
  const pub = publishers(c);
  await until(() => GROUPS.every((g) => pub.sent[g] >= 20), 10000, "publishing started");
  return { c, subs, pub };
}

/** Stops publishing, lets what is in flight arrive, and counts every message everywhere. */
async function stopAndCount(subs, pub) {
  await pub.stop();
  await until(
    () => subs.every((s) => GROUPS.every((g) => s.seen[g].length >= pub.sent[g])),
    20000,
    "every subscriber has every message",
  ).catch(() => {}); // what is missing is named by the assertion below
  assertEveryMessageOnceInOrder(subs, pub.sent);
}

for (const kind of ["redis", "nats"]) {
  test(`${kind}: every node restarted in turn under load loses nothing and duplicates nothing`, async () => {
    const { c, subs, pub } = await underLoad(kind);
    for (let i = 0; i < 3; i++) {
      await c.restart(i);
      // Let the clients settle on their next node while publishing goes on.
      await sleep(600);
    }
    await stopAndCount(subs, pub);
    // Every subscriber was told to move at least once, each time with "service restart".
    for (const [i, s] of subs.entries()) {
      assert.ok(s.closes.includes(1012), `subscriber ${i} saw 1012 (closes: ${s.closes})`);
      assert.ok(
        s.closes.every((code) => code === 1012 || code === 1006),
        `subscriber ${i}: only restarts and refused attempts (closes: ${s.closes})`,
      );
    }
    const total = GROUPS.reduce((n, g) => n + pub.sent[g], 0);
    console.log(`${kind}: ${total} messages × ${SUBSCRIBERS} subscribers, ${pub.retries.count} publish retries`);
    assert.ok(total > 300, `enough traffic went through the restarts (${total})`);
  });

  test(`${kind}: a node killed under load: its clients move to the survivors and recover everything`, async () => {
    const { c, subs, pub } = await underLoad(kind);
    await c.kill(0);
    await sleep(800);
    await c.start(0);
    await sleep(400);
    await stopAndCount(subs, pub);
    const moved = subs.filter((s) => s.closes.includes(1006)).length;
    assert.equal(moved, SUBSCRIBERS / 3, "the killed node's clients lost their connection");
  });
}
