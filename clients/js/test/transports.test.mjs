// The client's HTTP transports against a real server: SSE with POSTs and long polling speak
// the same wshub.v1 as WebSocket (chatting with a WebSocket client, recovering across a server
// restart); a client whose WebSocket fails falls back by itself, and moves back to WebSocket
// once it works again.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { WshubClient } from "../wshub.js";
import { startServer, freePort, until, next } from "./server.mjs";

let srv, port;
before(async () => {
  port = await freePort();
  srv = await startServer({ port });
});
after(async () => {
  await srv?.stop();
});

function client(opts = {}) {
  return new WshubClient(srv.wsUrl, { minDelay: 50, maxDelay: 400, ...opts });
}

/** A WebSocket that never connects (an upgrade a proxy refuses), until `works()` says so. */
function flakyWebSocket(works) {
  return class extends EventTarget {
    constructor(url, proto) {
      super();
      if (works()) return new WebSocket(url, proto);
      this.readyState = 0;
      setTimeout(() => {
        this.readyState = 3;
        this.onerror?.({});
        this.onclose?.({ code: 1006, reason: "" });
      }, 5);
    }
    send() {
      throw new Error("not open");
    }
    close() {}
  };
}

for (const transport of ["sse", "longpolling"]) {
  test(`${transport}: commands, acks and messages, with a WebSocket client in the same group`, async () => {
    const h = client({ transports: [transport] });
    const ws = client();
    await h.connect();
    assert.equal(h.transport, transport);
    assert.match(h.connectionId, /^[0-9a-f]{32}$/);
    await ws.connect();
    assert.equal(ws.transport, "websocket");
    await h.join("mixed-" + transport);
    await ws.join("mixed-" + transport);
    const toWs = next(ws, "message");
    const pub = await h.publish("mixed-" + transport, { from: transport });
    assert.equal(pub.recipients, 2);
    assert.deepEqual((await toWs).message, { from: transport });
    const toH = next(h, "message");
    await ws.publish("mixed-" + transport, "from ws");
    assert.equal((await toH).message, "from ws");
    const pings = await Promise.all(Array.from({ length: 50 }, () => h.ping()));
    assert.equal(pings.length, 50);
    h.close();
    ws.close();
  });

  test(`${transport}: recovers across a server restart like WebSocket does`, async () => {
    const h = client({ transports: [transport] });
    const pub = client();
    await h.connect();
    await pub.connect();
    const group = "restart-" + transport;
    await h.join(group);
    await pub.join(group);
    const first = next(h, "message");
    await pub.publish(group, 1);
    assert.equal((await first).message, 1);
    // The server goes; the client reconnects by itself and rejoins (history is in memory, so
    // after a restart it says `recovered: false`, as on WebSocket).
    pub.close();
    await srv.stop();
    srv = await startServer({ port });
    const recovered = next(h, "recovered", 15000);
    assert.equal((await recovered).recovered, false);
    assert.equal(h.state, "open");
    assert.equal(h.transport, transport);
    h.close();
  });
}

test("a client whose WebSocket fails falls back to SSE, then moves back once WebSocket works", async () => {
  let wsWorks = false;
  const h = client({ WebSocket: flakyWebSocket(() => wsWorks), upgradeRetry: 300 });
  await h.connect();
  assert.equal(h.transport, "sse");
  await h.join("fallback");
  const ws = client();
  await ws.connect();
  await ws.join("fallback");
  const got = next(h, "message");
  await ws.publish("fallback", "over sse");
  assert.equal((await got).message, "over sse");
  wsWorks = true;
  await until(() => h.transport === "websocket" && h.state === "open", 10000, "back on WebSocket");
  const again = next(h, "message");
  await ws.publish("fallback", "over websocket");
  assert.equal((await again).message, "over websocket");
  h.close();
  ws.close();
});

test("transports: [websocket, longpolling] skips SSE; a bad list is refused", async () => {
  const h = client({ WebSocket: flakyWebSocket(() => false), transports: ["websocket", "longpolling"] });
  await h.connect();
  assert.equal(h.transport, "longpolling");
  h.close();
  assert.throws(() => client({ transports: ["carrier-pigeon"] }), /transports/);
});
