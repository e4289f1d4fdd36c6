// The JavaScript client against a real wshub server: commands and acks, events, reconnection
// with backoff, resubscription, and recovery of what was published while it was away.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { WshubClient, WshubError } from "../wshub.js";
import { startServer, until, next } from "./server.mjs";

let srv;
before(async () => {
  srv = await startServer();
});
after(async () => {
  await srv?.stop();
});

function client(opts = {}) {
  return new WshubClient(srv.wsUrl, { minDelay: 50, maxDelay: 400, ...opts });
}

test("commands resolve with their acks; group messages arrive as events", async () => {
  const a = client();
  const b = client();
  const welcome = await a.connect();
  assert.equal(welcome.type, "welcome");
  assert.match(a.connectionId, /^[0-9a-f]{32}$/);
  await b.connect();
  const ack = await a.join("room");
  assert.equal(ack.changed, true);
  assert.equal(typeof ack.epoch, "string");
  await b.join("room");
  const got = next(b, "message");
  const pub = await a.publish("room", { text: "hi" });
  assert.equal(pub.recipients, 2);
  assert.equal(pub.offset, 1);
  const m = await got;
  assert.deepEqual([m.group, m.offset, m.message], ["room", 1, { text: "hi" }]);
  assert.deepEqual(b.position("room"), { epoch: ack.epoch, offset: 1 });
  // Direct messages and errors.
  const direct = next(b, "direct");
  assert.equal((await a.send({ connection: b.connectionId }, 42)).recipients, 1);
  assert.equal((await direct).message, 42);
  await assert.rejects(a.publish("elsewhere", 1), (e) => e instanceof WshubError && e.code === "not_member");
  await assert.rejects(a.send({ user: "nobody" }, 1), (e) => e.code === "not_found");
  assert.equal((await a.ping()).type, "ack");
  a.close();
  b.close();
  assert.equal(a.state, "closed");
});

async function metric(name) {
  const text = await (await fetch(`${srv.base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  assert.ok(line, `${name} missing from /metrics`);
  return Number(line.split(" ")[1]);
}

test("Node's WebSocket negotiates permessage-deflate: a large publication arrives compressed, once for all", async () => {
  const clients = [client(), client(), client()];
  for (const c of clients) {
    await c.connect();
    assert.match(c._ws.extensions, /^permessage-deflate; server_no_context_takeover; client_no_context_takeover/);
    await c.join("zipped");
  }
  const compressions = await metric("wshub_deflate_compressions_total");
  const sent = await metric("wshub_deflate_frames_sent_total");
  const rows = Array.from({ length: 50 }, (_, i) => ({ id: i, symbol: "WSH", price: 100 + i / 10, side: i % 2 ? "buy" : "sell" }));
  const got = clients.map((c) => next(c, "message"));
  await clients[0].publish("zipped", { rows });
  for (const m of await Promise.all(got)) assert.deepEqual(m.message, { rows });
  assert.equal(await metric("wshub_deflate_compressions_total"), compressions + 1, "compressed once");
  assert.equal(await metric("wshub_deflate_frames_sent_total"), sent + 3, "sent compressed to each");
  // (Node's WebSocket inflates what it receives but sends uncompressed; Chromium, which
  // compresses its own messages, is tested in tests/browser.)
  for (const c of clients) c.close();
});

test("commands issued before the connection opens are sent once it does", async () => {
  const a = client();
  const joined = a.join("early");
  const published = a.publish("early", "first");
  const got = next(a, "message");
  a.connect();
  assert.equal((await joined).changed, true);
  assert.equal((await published).recipients, 1);
  assert.equal((await got).message, "first");
  a.close();
});

test("a dropped connection reconnects, rejoins and recovers what was published meanwhile", async () => {
  const a = client();
  await a.connect();
  await a.join("feed");
  const seen = [];
  a.addEventListener("message", (e) => seen.push(e.detail.message));
  const recoveries = [];
  a.addEventListener("recovered", (e) => recoveries.push(e.detail));
  await srv.api("POST", "/api/groups/feed/broadcast", { message: 0 });
  await until(() => seen.length === 1, 5000, "the first message");
  const firstId = a.connectionId;
  // The server drops it (4000: not a final code, so the client comes back).
  const closed = next(a, "close");
  assert.equal((await srv.api("DELETE", `/api/connections/${firstId}?code=4000&reason=test`)).status, 204);
  assert.equal((await closed).willReconnect, true);
  // A stream of publishes spanning the reconnect: some missed (then replayed), some live.
  for (let i = 1; i <= 30; i++) {
    await srv.api("POST", "/api/groups/feed/broadcast", { message: i });
    await new Promise((r) => setTimeout(r, 5));
  }
  await until(() => seen.length >= 31, 10000, "all 31 messages");
  assert.deepEqual(seen, Array.from({ length: 31 }, (_, i) => i), "every message once, in order");
  assert.notEqual(a.connectionId, firstId);
  assert.deepEqual(recoveries.find((r) => r.group === "feed"), { group: "feed", recovered: true });
  assert.equal(a.position("feed").offset, 31);
  a.close();
});

test("broadcasts to everyone are recovered too", async () => {
  const a = client();
  await a.connect();
  const seen = [];
  a.addEventListener("broadcast", (e) => seen.push(e.detail.message));
  await srv.api("POST", "/api/connections/broadcast", { message: "b0" });
  await until(() => seen.length === 1, 5000, "the first broadcast");
  const recovered = next(a, "recovered");
  await srv.api("DELETE", `/api/connections/${a.connectionId}?code=4001`);
  for (let i = 1; i <= 5; i++) await srv.api("POST", "/api/connections/broadcast", { message: `b${i}` });
  assert.deepEqual(await recovered, { group: null, recovered: true });
  await until(() => seen.length >= 6, 5000, "six broadcasts");
  assert.deepEqual(seen, ["b0", "b1", "b2", "b3", "b4", "b5"]);
  a.close();
});

test("a restarted server (a new epoch) is reported as not recovered", async () => {
  const own = await startServer();
  const a = new WshubClient(own.wsUrl, { minDelay: 50, maxDelay: 200 });
  await a.connect();
  const ack = await a.join("g");
  await own.api("POST", "/api/groups/g/broadcast", { message: 1 });
  await until(() => a.position("g")?.offset === 1, 5000, "offset 1");
  await own.stop();
  const again = await startServer({ port: own.port });
  try {
    const r = await next(a, "recovered", 10000);
    assert.equal(r.recovered, false);
    await until(() => a.state === "open" && a.position("g")?.epoch !== ack.epoch, 5000, "the new epoch");
    const got = next(a, "message");
    await again.api("POST", "/api/groups/g/broadcast", { message: "after restart" });
    assert.equal((await got).message, "after restart");
  } finally {
    a.close();
    await again.stop();
  }
});

test("reconnection backs off exponentially with jitter, and close() stops it", async () => {
  const dead = await startServer();
  const url = dead.wsUrl;
  await dead.stop();
  const a = new WshubClient(url, { minDelay: 20, maxDelay: 160, factor: 2, jitter: 0.5 });
  const stamps = [];
  a.addEventListener("close", () => stamps.push(Date.now()));
  a.connect().catch(() => {});
  await until(() => stamps.length >= 6, 10000, "six failed attempts");
  a.close();
  const gaps = stamps.slice(1).map((t, i) => t - stamps[i]);
  // The n-th retry waits 20·2^n ms capped at 160, minus up to half: each gap is at least half
  // its nominal delay, and the later ones are longer than the first.
  const nominal = [20, 40, 80, 160, 160];
  gaps.forEach((g, i) => assert.ok(g >= nominal[i] / 2 - 5, `gap ${i} was ${g} ms`));
  assert.ok(gaps[3] + gaps[4] > gaps[0] + gaps[1], `delays grow: ${gaps}`);
  assert.ok(gaps.every((g) => g < 1000), `delays are capped: ${gaps}`);
  const n = stamps.length;
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(stamps.length, n, "no attempt after close()");
  assert.equal(a.state, "closed");
});

test("a server close with 1000 is final", async () => {
  const a = client();
  await a.connect();
  const closed = next(a, "close");
  await srv.api("DELETE", `/api/connections/${a.connectionId}?code=1000&reason=bye`);
  assert.deepEqual(await closed, { code: 1000, reason: "bye", willReconnect: false });
  assert.equal(a.state, "closed");
});

test("a token function that fails is reported and retried", async () => {
  let calls = 0;
  const a = client({
    token: async () => {
      calls += 1;
      if (calls === 1) throw new Error("token service down");
      return undefined; // the test server needs no token
    },
  });
  const error = next(a, "error");
  const welcomed = a.connect();
  assert.deepEqual(await error, { type: "error", id: null, code: "token", message: "token service down" });
  assert.equal((await welcomed).type, "welcome");
  assert.equal(calls, 2);
  a.close();
});
