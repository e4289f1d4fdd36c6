// GET /events read by EventSource implementations no one here wrote: the npm `eventsource`
// package and Chromium's own. Each drops (the network is cut, the server is killed and
// restarted on a Redis backplane that keeps history) and reconnects by itself with
// Last-Event-ID: every message arrives once, in order, nothing missed.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { EventSource } from "eventsource";
import { chromium } from "playwright-core";
import { startServer, freePort, until } from "../../clients/js/test/server.mjs";
import { startRedis } from "../pusher/helpers.mjs";
import { startProxy } from "./proxy.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
let redis, port, srv, proxy, browser;

const start = () => startServer({ port, args: ["--backplane", `redis://127.0.0.1:${redis.port}`] });

before(async () => {
  redis = await startRedis();
  port = await freePort();
  srv = await start();
  proxy = await startProxy(port);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  await proxy?.close();
  await srv?.stop();
  redis?.stop();
});

async function publish(group, n) {
  const r = await srv.api("POST", `/api/groups/${group}/broadcast`, { message: { n } });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.offset;
}

/** Kills the server (no goodbye), restarts it on the same port and Redis. */
async function restart() {
  await srv.stop();
  srv = await start();
}

/** The offsets received must be exactly 1..n, once each, in order. */
function assertExactly(got, n) {
  assert.deepEqual(got, Array.from({ length: n }, (_, i) => i + 1));
}

test("npm eventsource: resumes across a cut network and a server restart, nothing missed or twice", async () => {
  const es = new EventSource(`http://127.0.0.1:${proxy.port}/events?group=ticker`);
  const got = [];
  const subscribed = [];
  let lastId = "";
  es.onmessage = (e) => {
    got.push(JSON.parse(e.data).offset);
    lastId = e.lastEventId;
  };
  es.addEventListener("subscribed", (e) => subscribed.push(JSON.parse(e.data)));
  try {
    await until(() => subscribed.length === 1, 10000, "subscribed");
    for (let i = 1; i <= 20; i++) await publish("ticker", i);
    await until(() => got.length === 20, 10000, "the first 20");
    // The network goes; messages are published meanwhile; it comes back.
    proxy.drop();
    for (let i = 21; i <= 40; i++) await publish("ticker", i);
    proxy.restore();
    await until(() => got.length === 40, 15000, "the 20 published while cut");
    // The server is killed and restarted; messages are published before the client is back.
    await restart();
    for (let i = 41; i <= 60; i++) await publish("ticker", i);
    await until(() => got.length === 60, 15000, "the 20 published across the restart");
    assertExactly(got, 60);
    assert.ok(subscribed.length >= 3, "a subscribed event per connection");
    assert.ok(subscribed.slice(1).every((s) => s.recovered === true), JSON.stringify(subscribed));
    assert.match(lastId, /^[0-9a-f]+:60$/);
  } finally {
    es.close();
  }
});

test("Chromium's EventSource: two groups, a cut network and a restart, every message once", async () => {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(`http://127.0.0.1:${proxy.port}/`);
  await page.evaluate(() => {
    window.got = { a: [], b: [] };
    window.subs = [];
    const es = new EventSource("/events?group=tv-a&group=tv-b");
    es.onmessage = (e) => {
      const m = JSON.parse(e.data);
      window.got[m.group === "tv-a" ? "a" : "b"].push(m.offset);
    };
    es.addEventListener("subscribed", (e) => window.subs.push(JSON.parse(e.data)));
    window.es = es;
  });
  const got = () => page.evaluate(() => window.got);
  const count = async () => {
    const g = await got();
    return g.a.length + g.b.length;
  };
  await until(async () => (await page.evaluate(() => window.subs.length)) === 2, 10000, "subscribed to both");
  for (let i = 1; i <= 10; i++) {
    await publish("tv-a", i);
    await publish("tv-b", i);
  }
  await until(async () => (await count()) === 20, 10000, "the first 20");
  proxy.drop();
  for (let i = 11; i <= 20; i++) {
    await publish("tv-a", i);
    await publish("tv-b", i);
  }
  proxy.restore();
  await until(async () => (await count()) === 40, 20000, "what was published while cut");
  await restart();
  for (let i = 21; i <= 30; i++) {
    await publish("tv-a", i);
    await publish("tv-b", i);
  }
  await until(async () => (await count()) === 60, 20000, "what was published across the restart");
  const g = await got();
  assertExactly(g.a, 30);
  assertExactly(g.b, 30);
  const subs = await page.evaluate(() => window.subs);
  assert.ok(subs.slice(2).every((s) => s.recovered === true), JSON.stringify(subs));
  await page.close();
});

test("the demo page behind a proxy that refuses WebSocket upgrades falls back to SSE and chats with a WebSocket client", async () => {
  const { WshubClient } = await import("../../clients/js/wshub.js");
  const blocking = await startProxy(port, { refuseUpgrades: true });
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  try {
    await page.goto(`http://127.0.0.1:${blocking.port}/?group=behind-proxy`);
    await page.waitForSelector('#status[data-state="open"]', { timeout: 15000 });
    assert.equal(await page.getAttribute("#status", "data-transport"), "sse");
    assert.equal(await page.textContent("#status-text"), "open · sse");
    await page.waitForSelector('#groups li[data-group="behind-proxy"]', { timeout: 10000 });
    const ws = new WshubClient(srv.wsUrl);
    await ws.connect();
    assert.equal(ws.transport, "websocket");
    await ws.join("behind-proxy");
    await ws.publish("behind-proxy", { text: "hello from a WebSocket" });
    await page.waitForFunction(() => [...document.querySelectorAll("#messages li.msg .text")].some((e) => e.textContent === "hello from a WebSocket"), null, { timeout: 10000 });
    const got = new Promise((resolve) => ws.addEventListener("message", (e) => e.detail.message?.text === "hello from SSE" && resolve(e.detail)));
    await page.fill("#msg-input", "hello from SSE");
    await page.click("#send-btn");
    const m = await Promise.race([got, new Promise((_, reject) => setTimeout(() => reject(new Error("the page's message did not reach the WebSocket client")), 10000))]);
    assert.equal(m.group, "behind-proxy");
    ws.close();
  } finally {
    await page.close();
    await blocking.close();
  }
});
