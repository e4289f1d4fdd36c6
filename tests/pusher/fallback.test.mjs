// Pusher's HTTP fallbacks with the real pusher-js 8 in a real headless Chromium: behind a
// proxy that refuses every WebSocket upgrade (a corporate proxy), pusher-js falls back by
// itself to xhr_streaming, and a page limited to xhr_polling works too; both chat (client
// events, presence) with a pusher-js client on WebSocket, and get what the `pusher` server SDK
// triggers. The page is on another origin than the server (CORS), as a real app's is. A
// stream that passes pusher-js's 256 KiB is reopened by the client and the session goes on,
// nothing lost or doubled.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";
import Pusher from "pusher-js";
import PusherServer from "pusher";
import { startServer, until } from "../../clients/js/test/server.mjs";
import { startProxy } from "../browser/proxy.mjs";
import { next, connected } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const APP = { appId: "fb-app", key: "fb-key", secret: "fb-secret" };
const modules = new URL("./node_modules/", import.meta.url).pathname;
let srv, proxy, web, browser;
const open = [];

const sdk = () => new PusherServer({ appId: APP.appId, key: APP.key, secret: APP.secret, host: "127.0.0.1", port: String(srv.port), useTLS: false });

/** The app's own web server (another origin than wshub's): the page, pusher-js, and the
 * channel authorization endpoint. */
function startWeb() {
  const script = readFileSync(modules + "pusher-js/dist/web/pusher.min.js");
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    if (url.pathname === "/pusher.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      return res.end(script);
    }
    if (url.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html" });
      return res.end(`<!doctype html><meta charset="utf-8"><title>fallback</title><script src="/pusher.js"></script>`);
    }
    if (url.pathname === "/auth" && req.method === "POST") {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        const form = new URLSearchParams(body);
        const user = req.headers["x-user"];
        const channel = form.get("channel_name");
        const presence = channel.startsWith("presence-") ? { user_id: user, user_info: { name: user } } : undefined;
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify(sdk().authorizeChannel(form.get("socket_id"), channel, presence)));
      });
      return;
    }
    res.writeHead(404);
    res.end();
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

before(async () => {
  srv = await startServer({ args: ["--app", `${APP.appId}:${APP.key}:${APP.secret}`, "--ping-interval", "2s", "--idle-timeout", "5s"] });
  proxy = await startProxy(srv.port, { refuseUpgrades: true });
  web = await startWeb();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  for (const c of open) c.disconnect();
  await browser?.close();
  web?.close();
  await proxy?.close();
  await srv?.stop();
});

/** A page (a browser context of its own: pusher-js remembers transports per origin) whose
 * pusher-js reaches wshub only through the proxy, as `user`. */
async function page(user, options = {}) {
  const ctx = await browser.newContext();
  const p = await ctx.newPage();
  p.on("pageerror", (e) => console.error("page error:", e));
  p.streams = 0;
  p.on("request", (r) => {
    if (r.url().includes("/xhr_streaming")) p.streams++;
  });
  await p.goto(`http://127.0.0.1:${web.address().port}/`);
  await p.evaluate(
    ({ key, port, user, options }) => {
      window.events = [];
      window.log = (kind, data) => window.events.push({ kind, data });
      window.pusher = new Pusher(key, {
        cluster: "mt1",
        wsHost: "127.0.0.1",
        wsPort: port,
        httpHost: "127.0.0.1",
        httpPort: port,
        forceTLS: false,
        channelAuthorization: { endpoint: "/auth", transport: "ajax", headers: { "X-User": user } },
        ...options,
      });
    },
    { key: APP.key, port: proxy.port, user, options },
  );
  await p.waitForFunction(() => window.pusher.connection.state === "connected", null, { timeout: 30000 });
  return p;
}

/** A pusher-js client on WebSocket, straight to the server. */
function wsClient(user) {
  const c = new Pusher(APP.key, {
    cluster: "mt1",
    wsHost: "127.0.0.1",
    wsPort: srv.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) => {
        const data = channelName.startsWith("presence-") ? { user_id: user, user_info: { name: user } } : undefined;
        cb(null, sdk().authorizeChannel(socketId, channelName, data));
      },
    },
  });
  open.push(c);
  return c;
}

const transportOf = (p) => p.evaluate(() => window.pusher.connection.connection.transport.name);
const events = (p, kind) => p.evaluate((k) => window.events.filter((e) => e.kind === k).map((e) => e.data), kind);
const waitFor = (p, kind, pred = () => true, what = kind) =>
  until(async () => (await events(p, kind)).some(pred), 15000, `${what} on the page`);

async function subscribed(count, channel) {
  await until(async () => {
    const r = await (await sdk().get({ path: `/channels/${channel}`, params: { info: "subscription_count" } })).json();
    return r.subscription_count === count;
  }, 15000, `${count} subscribers of ${channel}`);
}

test("behind a proxy that refuses WebSocket, pusher-js falls back to xhr_streaming and chats with a WebSocket client", async () => {
  const ws = wsClient("wanda");
  await connected(ws);
  const p = await page("sam");
  const transport = await transportOf(p);
  assert.ok(["xhr_streaming", "xhr_polling"].includes(transport), transport);
  assert.equal(transport, "xhr_streaming", "streaming is pusher-js's first HTTP choice");
  await p.evaluate(() => {
    const ch = window.pusher.subscribe("private-chat");
    ch.bind("client-typing", (d) => log("typing", d));
    ch.bind("pusher:subscription_succeeded", () => log("subscribed", true));
    window.pusher.subscribe("news").bind("headline", (d) => log("headline", d));
  });
  const chat = ws.subscribe("private-chat");
  await next(chat, "pusher:subscription_succeeded");
  await waitFor(p, "subscribed");
  await subscribed(1, "news");
  // The SDK's trigger reaches the streaming page.
  await sdk().trigger("news", "headline", { title: "over HTTP" });
  await waitFor(p, "headline", (d) => d.title === "over HTTP");
  // Client events both ways between the transports.
  const got = next(chat, "client-typing");
  await p.evaluate(() => window.pusher.channel("private-chat").trigger("client-typing", { who: "sam" }));
  assert.deepEqual(await got, { who: "sam" });
  chat.trigger("client-typing", { who: "wanda" });
  await waitFor(p, "typing", (d) => d.who === "wanda");
  await p.context().close();
});

test("a page limited to xhr_polling joins presence with a WebSocket client; a stream past 256 KiB is reopened and loses nothing", async () => {
  const ws = wsClient("walt");
  await connected(ws);
  const poller = await page("polly", { enabledTransports: ["xhr_polling"] });
  assert.equal(await transportOf(poller), "xhr_polling");
  const room = ws.subscribe("presence-room");
  await next(room, "pusher:subscription_succeeded");
  const added = next(room, "pusher:member_added");
  await poller.evaluate(() => {
    const ch = window.pusher.subscribe("presence-room");
    ch.bind("pusher:subscription_succeeded", (m) => log("members", Object.keys(m.members).sort()));
    ch.bind("pusher:member_removed", (m) => log("removed", m.id));
  });
  assert.equal((await added).id, "polly");
  await waitFor(poller, "members", (ids) => ids.join() === "polly,walt");

  // A streaming page takes 40 events of 8 KiB (320 KiB): pusher-js reopens its stream after
  // 256 KiB; every event arrives once, in order.
  const streamer = await page("stella", { enabledTransports: ["xhr_streaming"] });
  assert.equal(await transportOf(streamer), "xhr_streaming");
  await streamer.evaluate(() => window.pusher.subscribe("bulk").bind("chunk", (d) => log("chunk", d.n)));
  await subscribed(1, "bulk");
  const pad = "x".repeat(8 * 1024);
  for (let n = 0; n < 40; n++) await sdk().trigger("bulk", "chunk", { n, pad });
  await waitFor(streamer, "chunk", (n) => n === 39, "the 40th chunk");
  assert.deepEqual(await events(streamer, "chunk"), [...Array(40).keys()]);
  assert.ok(streamer.streams >= 2, `the stream was reopened (${streamer.streams} streams)`);
  assert.equal(await streamer.evaluate(() => window.pusher.connection.state), "connected");

  // The poller leaves: the WebSocket client sees it go.
  const removed = next(room, "pusher:member_removed", 15000);
  await poller.evaluate(() => window.pusher.disconnect());
  assert.equal((await removed).id, "polly");
  await poller.context().close();
  await streamer.context().close();
});
