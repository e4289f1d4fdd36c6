// The demo page in Debian's Chromium, headless, driven by Playwright: two pages chat; the
// network drops in the middle of a stream of messages and comes back; the server is killed and
// restarted. Every message is counted.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import { startServer, until } from "../../clients/js/test/server.mjs";
import { startProxy } from "./proxy.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = new URL("../../target/browser/", import.meta.url).pathname;
let srv, proxy, browser;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  srv = await startServer();
  proxy = await startProxy(srv.port);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  await proxy?.close();
  await srv?.stop();
});

async function openChat(group) {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(`http://127.0.0.1:${proxy.port}/?group=${group}`);
  await page.waitForSelector('#status[data-state="open"]', { timeout: 10000 });
  await page.waitForSelector(`#groups li[data-group="${group}"]`, { timeout: 10000 });
  return page;
}

const texts = (page) => page.$$eval("#messages li.msg .text", (els) => els.map((e) => e.textContent));
const notes = (page) => page.$$eval("#messages li.note .text", (els) => els.map((e) => e.textContent));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test("a message typed in one page appears in the other; the page shows status and id", async () => {
  const a = await openChat("lobby");
  const b = await openChat("lobby");
  assert.match(await a.textContent("#me"), /^you are [0-9a-f]{8} · node \S+$/);
  // Who is here: both pages (anonymous: no token).
  await a.waitForFunction(() => document.querySelector("#here-count")?.textContent.startsWith("2 here"), null, { timeout: 10000 });
  assert.match(await a.textContent("#here-count"), /^2 here · 2 anonymous$/);
  await a.fill("#msg-input", "hello from A");
  await a.click("#send-btn");
  await b.waitForFunction(() => [...document.querySelectorAll("#messages li.msg .text")].some((e) => e.textContent === "hello from A"), null, { timeout: 10000 });
  // A server broadcast from the page's form reaches both.
  await b.fill("#broadcast-input", "attention all");
  await b.click("#broadcast-btn");
  await a.waitForSelector("#messages li.broadcast", { timeout: 10000 });
  assert.equal(await a.textContent("#messages li.broadcast .text"), "attention all");
  await a.screenshot({ path: SHOTS + "chat.png" });
  await a.close();
  await b.close();
});

const metric = async (base, name) => {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  assert.ok(line, `${name} missing from /metrics`);
  return Number(line.split(" ")[1]);
};

test("Chromium negotiates permessage-deflate: long messages arrive compressed both ways", async () => {
  const a = await openChat("squeeze");
  const b = await openChat("squeeze");
  for (const page of [a, b]) {
    const ext = await page.evaluate(() => window.wshub._ws?.extensions);
    assert.match(ext, /^permessage-deflate/, "the extension Chromium agreed to");
    assert.match(ext, /server_no_context_takeover/);
    assert.match(ext, /client_no_context_takeover/);
  }
  const sentBefore = await metric(srv.base, "wshub_deflate_frames_sent_total");
  const inflatedBefore = await metric(srv.base, "wshub_deflate_messages_inflated_total");
  const long = "a long chat line that repeats itself, ".repeat(40).trim();
  await a.fill("#msg-input", long);
  await a.click("#send-btn");
  await b.waitForFunction((t) => [...document.querySelectorAll("#messages li.msg .text")].some((e) => e.textContent === t), long, { timeout: 10000 });
  // Chromium compressed what it sent; the hub compressed the publication for both pages.
  assert.ok((await metric(srv.base, "wshub_deflate_messages_inflated_total")) > inflatedBefore, "the browser's message arrived compressed");
  assert.ok((await metric(srv.base, "wshub_deflate_frames_sent_total")) >= sentBefore + 2, "the publication went out compressed to both pages");
  await a.close();
  await b.close();
});

test("desktop and phone widths: no console errors, no failed requests, no sideways scroll; joins are confirmed and bad names caught", async () => {
  for (const [name, viewport] of [["desktop", { width: 1280, height: 800 }], ["phone", { width: 390, height: 844 }]]) {
    const context = await browser.newContext({ viewport });
    const page = await context.newPage();
    const problems = [];
    page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") problems.push(`console ${m.type()}: ${m.text()}`); });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
    page.on("response", (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`); });
    await page.goto(`http://127.0.0.1:${proxy.port}/`);
    await page.waitForSelector('#status[data-state="open"]', { timeout: 10000 });
    // Joining says so, with the member count from the ack.
    await page.fill("#join-input", `layout-${name}`);
    await page.click("#join-btn");
    await page.waitForFunction((g) => [...document.querySelectorAll("#messages li.note .text")].some((e) => e.textContent.startsWith(`joined #${g}`)), `layout-${name}`, { timeout: 10000 });
    // A long word wraps inside its bubble instead of pushing the page sideways.
    await page.fill("#msg-input", "x".repeat(400));
    await page.click("#send-btn");
    await page.waitForSelector("#messages li.msg", { timeout: 10000 });
    const overflow = await page.evaluate(() => ({
      page: document.documentElement.scrollWidth - window.innerWidth,
      bubble: Math.max(...[...document.querySelectorAll("#messages li")].map((li) => li.scrollWidth - li.clientWidth)),
    }));
    assert.ok(overflow.page <= 0, `${name}: the page scrolls sideways by ${overflow.page}px`);
    assert.ok(overflow.bubble <= 0, `${name}: a bubble overflows by ${overflow.bubble}px`);
    // A group name breaking the rules is caught in the page, before the server sees it.
    await page.fill("#join-input", "not a group!");
    assert.equal(await page.$eval("#join-input", (e) => e.checkValidity()), false);
    await page.click("#join-btn");
    assert.equal(await page.$$eval("#groups li", (els) => els.length), 1);
    // Leaving says so too.
    await page.click(`#groups li[data-group="layout-${name}"] button`);
    await page.waitForFunction((g) => [...document.querySelectorAll("#messages li.note .text")].some((e) => e.textContent === `left #${g}`), `layout-${name}`, { timeout: 10000 });
    await page.screenshot({ path: SHOTS + `layout-${name}.png` });
    assert.deepEqual(problems, [], `${name}: ${problems.join("; ")}`);
    await context.close();
  }
});

test("a network drop mid-stream: the page reconnects and recovers every message, once, in order", async () => {
  const page = await openChat("stream");
  const other = await openChat("stream");
  const N = 60;
  const expected = Array.from({ length: N }, (_, i) => `s${i + 1}`);
  for (let i = 1; i <= N; i++) {
    if (i === 20) {
      proxy.drop();
      await page.waitForSelector('#status[data-state="reconnecting"]', { timeout: 10000 });
    }
    if (i === 40) proxy.restore();
    const r = await srv.api("POST", "/api/groups/stream/broadcast", { message: `s${i}` });
    assert.equal(r.status, 200);
    await sleep(15);
  }
  for (const p of [page, other]) {
    await until(async () => (await texts(p)).length >= N, 15000, "all stream messages in the page");
    await sleep(200); // anything extra (a duplicate) would show up now
    assert.deepEqual(await texts(p), expected);
    assert.ok((await notes(p)).includes("reconnected: #stream recovered"), `notes: ${await notes(p)}`);
    assert.equal(await p.getAttribute("#status", "data-state"), "open");
  }
  await page.screenshot({ path: SHOTS + "recovered.png" });
  await page.close();
  await other.close();
});

test("the server is killed and restarted: the pages reconnect, say history was lost, and chat again", async () => {
  const a = await openChat("restart");
  const b = await openChat("restart");
  const port = srv.port;
  await srv.stop();
  await a.waitForSelector('#status[data-state="reconnecting"]', { timeout: 10000 });
  srv = await startServer({ port });
  for (const p of [a, b]) {
    await p.waitForFunction(() => [...document.querySelectorAll("#messages li.note .text")].some((e) => e.textContent.includes("history of #restart was lost")), null, { timeout: 15000 });
    await p.waitForSelector('#status[data-state="open"]', { timeout: 10000 });
  }
  await a.fill("#msg-input", "back again");
  await a.click("#send-btn");
  await b.waitForFunction(() => [...document.querySelectorAll("#messages li.msg .text")].some((e) => e.textContent === "back again"), null, { timeout: 10000 });
  await b.screenshot({ path: SHOTS + "restarted.png" });
  await a.close();
  await b.close();
});

test("across a cluster: pages on two nodes sharing Redis chat with each other", async () => {
  const { spawn } = await import("node:child_process");
  const net = await import("node:net");
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
  const redisBin = ["/usr/bin/redis-server", "/usr/sbin/redis-server"].find((p) => existsSync(p)) ?? "redis-server";
  const redis = spawn(redisBin, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  const nodes = [];
  try {
    await until(
      () =>
        new Promise((resolve) => {
          const c = net.connect(port, "127.0.0.1", () => {
            c.destroy();
            resolve(true);
          });
          c.on("error", () => resolve(false));
        }),
      10000,
      "redis-server",
    );
    for (const id of ["n1", "n2"]) {
      nodes.push(await startServer({ args: ["--backplane", `redis://127.0.0.1:${port}`, "--node-id", id] }));
    }
    for (const n of nodes) await until(async () => (await fetch(`${n.base}/readyz`)).status === 200, 10000, "the backplane");
    const pages = [];
    for (const n of nodes) {
      const page = await browser.newPage();
      await page.goto(`${n.base}/?group=cluster`);
      await page.waitForSelector('#status[data-state="open"]', { timeout: 10000 });
      await page.waitForSelector('#groups li[data-group="cluster"]', { timeout: 10000 });
      pages.push(page);
    }
    await pages[0].fill("#msg-input", "from node one");
    await pages[0].click("#send-btn");
    await pages[1].waitForFunction(() => [...document.querySelectorAll("#messages li.msg .text")].some((e) => e.textContent === "from node one"), null, { timeout: 10000 });
    // A server broadcast pushed through node two's REST API reaches the page on node one.
    await pages[1].fill("#broadcast-input", "cluster-wide");
    await pages[1].click("#broadcast-btn");
    await pages[0].waitForSelector("#messages li.broadcast", { timeout: 10000 });
    assert.equal(await pages[0].textContent("#messages li.broadcast .text"), "cluster-wide");
    await pages[1].screenshot({ path: SHOTS + "cluster.png" });
    for (const p of pages) await p.close();
  } finally {
    for (const n of nodes) await n.stop();
    redis.kill("SIGKILL");
  }
});
