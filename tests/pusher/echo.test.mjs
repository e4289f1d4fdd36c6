// Laravel Echo 2 with pusher-js in a real headless Chromium, against a real wshub server, the
// way a Laravel app uses it: the scripts are served from node_modules (no CDN), channel
// authorizations come from a small /broadcasting/auth endpoint written with the `pusher` server
// SDK, events are triggered with the SDK. Public, private and presence channels, whispers, and a
// server restart in the middle.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";
import PusherServer from "pusher";
import { startServer, until } from "../../clients/js/test/server.mjs";
import { startRedis } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const APP = { appId: "echo-app", key: "echo-key", secret: "echo-secret" };
const ARGS = ["--app", `${APP.appId}:${APP.key}:${APP.secret}`];
const modules = new URL("./node_modules/", import.meta.url).pathname;
let srv, web, browser, wsPort;

const sdk = (port = wsPort) => new PusherServer({ appId: APP.appId, key: APP.key, secret: APP.secret, host: "127.0.0.1", port: String(port), useTLS: false });

/** The application's web server: the page, the scripts, and Laravel's /broadcasting/auth. */
function startWeb() {
  const files = {
    "/pusher.js": readFileSync(modules + "pusher-js/dist/web/pusher.min.js"),
    "/echo.js": readFileSync(modules + "laravel-echo/dist/echo.iife.js"),
  };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    if (files[url.pathname]) {
      res.writeHead(200, { "content-type": "text/javascript" });
      return res.end(files[url.pathname]);
    }
    if (url.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html" });
      return res.end(`<!doctype html><meta charset="utf-8"><title>echo</title><script src="/pusher.js"></script><script src="/echo.js"></script><body><ul id="log"></ul></body>`);
    }
    if (url.pathname === "/broadcasting/auth" && req.method === "POST") {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        const form = new URLSearchParams(body);
        const user = req.headers["x-user"];
        const channel = form.get("channel_name");
        if (!user || channel.includes("forbidden")) {
          res.writeHead(403);
          return res.end();
        }
        const presence = channel.startsWith("presence-") ? { user_id: user, user_info: { name: user.toUpperCase() } } : undefined;
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
  srv = await startServer({ args: ARGS });
  wsPort = srv.port;
  web = await startWeb();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  web?.close();
  await srv?.stop();
});

/** A page of the app, signed in as `user`, with Echo connected to the server on `port`. */
async function page(user, port = wsPort) {
  const p = await browser.newPage();
  p.on("pageerror", (e) => console.error("page error:", e));
  await p.goto(`http://127.0.0.1:${web.address().port}/`);
  await p.evaluate(
    ({ key, port, user }) => {
      window.events = [];
      window.log = (kind, data) => window.events.push({ kind, data });
      window.echo = new Echo.default({
        broadcaster: "pusher",
        key,
        cluster: "mt1",
        wsHost: "127.0.0.1",
        wsPort: port,
        forceTLS: false,
        enabledTransports: ["ws"],
        authEndpoint: "/broadcasting/auth",
        auth: { headers: { "X-User": user } },
      });
      window.echo.connector.pusher.connection.bind("state_change", (s) => window.log("state", s.current));
    },
    { key: APP.key, port, user },
  );
  await p.waitForFunction(() => window.echo.connector.pusher.connection.state === "connected", null, { timeout: 10000 });
  return p;
}

const events = (p, kind) => p.evaluate((k) => window.events.filter((e) => e.kind === k).map((e) => e.data), kind);
const waitFor = (p, kind, pred = () => true) =>
  until(async () => (await events(p, kind)).some(pred), 10000, `${kind} on the page`);

test("public, private and presence channels, whispers, and a server restart", async () => {
  const alice = await page("alice");
  const bob = await page("bob");
  for (const p of [alice, bob]) {
    await p.evaluate(() => {
      echo.channel("news").listen(".headline", (e) => log("headline", e));
      echo.private("orders").listen(".shipped", (e) => log("shipped", e));
      echo.private("chat").listenForWhisper("typing", (e) => log("typing", e));
      echo.private("forbidden-room").error((e) => log("denied", e.status ?? e));
    });
  }
  // Presence: alice first, then bob.
  await alice.evaluate(() =>
    echo.join("room")
      .here((users) => log("here", users.map((u) => u.name).sort()))
      .joining((u) => log("joining", u.name))
      .leaving((u) => log("leaving", u.name)),
  );
  await waitFor(alice, "here");
  await bob.evaluate(() => echo.join("room").here((users) => log("here", users.map((u) => u.name).sort())));
  await waitFor(bob, "here", (names) => names.length === 2);
  assert.deepEqual((await events(bob, "here"))[0], ["ALICE", "BOB"]);
  await waitFor(alice, "joining", (n) => n === "BOB");
  // An authorization the app refuses is the channel's error, with its status.
  await waitFor(alice, "denied");
  // Wait until the subscriptions are in (the server counts them), then publish with the SDK.
  await until(async () => {
    const r = await (await sdk().get({ path: "/channels/private-orders", params: { info: "subscription_count" } })).json();
    return r.subscription_count === 2;
  }, 10000, "both pages subscribed");
  await sdk().trigger("news", "headline", { title: "hello" });
  await sdk().trigger("private-orders", "shipped", { id: 42 });
  for (const p of [alice, bob]) {
    await waitFor(p, "headline", (e) => e.title === "hello");
    await waitFor(p, "shipped", (e) => e.id === 42);
  }
  // Chromium offered permessage-deflate to the Pusher endpoint and it was agreed: a long
  // event goes out compressed, once for both pages.
  for (const p of [alice, bob]) {
    const ext = await p.evaluate(() => echo.connector.pusher.connection.connection.transport.socket.extensions);
    assert.match(ext, /^permessage-deflate; server_no_context_takeover; client_no_context_takeover/);
  }
  const metric = async (name) => Number((await (await fetch(`${srv.base}/metrics`)).text()).split("\n").find((l) => l.startsWith(name + " ")).split(" ")[1]);
  const sent = await metric("wshub_deflate_frames_sent_total");
  const body = "all the news that fits, ".repeat(30);
  await sdk().trigger("news", "headline", { title: "long", body });
  for (const p of [alice, bob]) await waitFor(p, "headline", (e) => e.body === body);
  assert.equal(await metric("wshub_deflate_frames_sent_total"), sent + 2);
  // A whisper (client event) reaches bob, not alice herself.
  await until(async () => {
    const r = await (await sdk().get({ path: "/channels/private-chat", params: { info: "subscription_count" } })).json();
    return r.subscription_count === 2;
  }, 10000, "both pages on private-chat");
  await alice.evaluate(() => echo.private("chat").whisper("typing", { who: "alice" }));
  await waitFor(bob, "typing", (e) => e.who === "alice");
  assert.deepEqual(await events(alice, "typing"), []);

  // The server is killed and comes back on the same port: pusher-js reconnects, Echo
  // resubscribes, events flow again.
  await srv.stop();
  await waitFor(alice, "state", (s) => s !== "connected");
  srv = await startServer({ port: wsPort, args: ARGS });
  for (const p of [alice, bob]) {
    await p.waitForFunction(() => window.echo.connector.pusher.connection.state === "connected", null, { timeout: 20000 });
  }
  await until(async () => {
    const r = await (await sdk().get({ path: "/channels/news", params: { info: "subscription_count" } })).json();
    return r.subscription_count === 2;
  }, 20000, "resubscribed after the restart");
  await sdk().trigger("news", "headline", { title: "after restart" });
  for (const p of [alice, bob]) await waitFor(p, "headline", (e) => e.title === "after restart");

  // Bob leaves: alice is told.
  await bob.close();
  await waitFor(alice, "leaving", (n) => n === "BOB");
  await alice.close();
});

test("two pages on two nodes of a cluster: presence, events and whispers cross nodes", async () => {
  const redis = await startRedis();
  const args = (id) => [...ARGS, "--backplane", `redis://127.0.0.1:${redis.port}`, "--node-id", id, "--node-ttl", "2s"];
  const n1 = await startServer({ args: args("e1") });
  const n2 = await startServer({ args: args("e2") });
  try {
    for (const n of [n1, n2]) {
      await until(async () => (await fetch(`${n.base}/readyz`)).status === 200, 10000, "node ready");
    }
    const alice = await page("alice", n1.port);
    const bob = await page("bob", n2.port);
    await alice.evaluate(() =>
      echo.join("team")
        .here((users) => log("here", users.map((u) => u.name).sort()))
        .joining((u) => log("joining", u.name))
        .leaving((u) => log("leaving", u.name)),
    );
    await waitFor(alice, "here");
    // Bob's node has learned alice through the backplane before bob joins there.
    await until(async () => (await (await sdk(n2.port).get({ path: "/channels/presence-team/users" })).json()).users.length === 1, 10000, "alice known on node 2");
    await bob.evaluate(() => {
      echo.join("team").here((users) => log("here", users.map((u) => u.name).sort()));
      echo.private("ops").listen(".deployed", (e) => log("deployed", e));
      echo.private("ops").listenForWhisper("typing", (e) => log("typing", e));
    });
    await alice.evaluate(() => echo.private("ops"));
    await waitFor(bob, "here", (names) => names.length === 2);
    assert.deepEqual((await events(bob, "here"))[0], ["ALICE", "BOB"]);
    await waitFor(alice, "joining", (n) => n === "BOB");
    await until(async () => (await (await sdk(n1.port).get({ path: "/channels/private-ops", params: { info: "subscription_count" } })).json()).subscription_count === 2, 10000, "both on private-ops");
    // Triggered through node 1, received by bob on node 2; a whisper from alice (node 1) too.
    await sdk(n1.port).trigger("private-ops", "deployed", { version: 7 });
    await waitFor(bob, "deployed", (e) => e.version === 7);
    await alice.evaluate(() => echo.private("ops").whisper("typing", { who: "alice" }));
    await waitFor(bob, "typing", (e) => e.who === "alice");
    await bob.close();
    await waitFor(alice, "leaving", (n) => n === "BOB");
    await alice.close();
  } finally {
    await n1.stop();
    await n2.stop();
    redis.stop();
  }
});
