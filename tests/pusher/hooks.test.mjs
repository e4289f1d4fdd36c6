// wshub's own webhooks and its connect hook, checked with what a backend would really use: the
// Standard Webhooks library (`standardwebhooks` from npm) verifies every request wshub sends,
// and a real headless Chromium connects with nothing but a session cookie, admitted or refused
// by the backend's connect hook.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { Webhook } from "standardwebhooks";
import { chromium } from "playwright-core";
import { startServer, until } from "../../clients/js/test/server.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
// A Standard Webhooks secret: `whsec_` and the key in base64.
const SECRET = "whsec_" + Buffer.from("a-key-of-the-backend-24b").toString("base64");
const verifier = new Webhook(SECRET);
let backend, srv, browser;
const events = [];
const refused = [];
const asked = [];

/** The application's backend: receives webhooks (verified), answers the connect hook. */
function startBackend() {
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      let payload;
      try {
        payload = verifier.verify(body, req.headers);
      } catch (e) {
        refused.push(String(e));
        res.writeHead(401);
        return res.end();
      }
      if (req.url === "/events") {
        events.push(...payload.events);
        res.writeHead(204);
        return res.end();
      }
      if (req.url === "/connect") {
        asked.push(payload);
        const session = /(?:^|; )session=([^;]+)/.exec(payload.headers.cookie ?? "")?.[1];
        const answer = session === "ann-cookie"
          ? { allow: true, user: "ann", info: { name: "Ann" }, groups: ["room-*"] }
          : { allow: false, code: 4401, reason: "please sign in" };
        res.writeHead(200, { "content-type": "application/json" });
        return res.end(JSON.stringify(answer));
      }
      res.writeHead(404);
      res.end();
    });
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

before(async () => {
  backend = await startBackend();
  const b = `http://127.0.0.1:${backend.address().port}`;
  srv = await startServer({
    args: ["--webhook", `${b}/events`, "--webhook-secret", SECRET, "--connect-hook", `${b}/connect`],
  });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  backend?.close();
  await srv?.stop();
});

/** In a page of the server's origin (with or without the session cookie): the welcome, or
 * the close code and reason. */
async function connectFromBrowser(cookie) {
  const context = await browser.newContext();
  if (cookie) {
    await context.addCookies([{ name: "session", value: cookie, url: srv.base }]);
  }
  const page = await context.newPage();
  // A page of the same origin that opens nothing by itself (the demo page would connect).
  await page.goto(srv.base + "/healthz");
  const result = await page.evaluate((url) => new Promise((resolve) => {
    const ws = new WebSocket(url, "wshub.v1");
    ws.onmessage = (m) => {
      const v = JSON.parse(m.data);
      if (v.type === "welcome") {
        ws.send(JSON.stringify({ id: 1, type: "join", group: "room-1" }));
        ws.onmessage = (a) => {
          ws.close(4000, "done");
          resolve({ welcome: v, joined: JSON.parse(a.data) });
        };
      }
    };
    ws.onclose = (e) => resolve({ code: e.code, reason: e.reason });
  }), srv.wsUrl);
  await context.close();
  return result;
}

test("a browser with a session cookie is admitted by the connect hook, without one refused with its code", async () => {
  const ok = await connectFromBrowser("ann-cookie");
  assert.equal(ok.welcome.user, "ann");
  assert.equal(ok.joined.type, "ack");
  const no = await connectFromBrowser(null);
  assert.deepEqual(no, { code: 4401, reason: "please sign in" });
  // The backend saw the cookie the browser sent, and the page's origin.
  assert.equal(asked.length, 2);
  assert.match(asked[0].headers.cookie, /session=ann-cookie/);
  assert.equal(asked[0].headers.origin, srv.base);
  assert.equal(asked[0].protocol, "wshub.v1");
});

test("every webhook verifies with the Standard Webhooks library and tells the browser's session", async () => {
  await until(() => events.some((e) => e.type === "connection.closed" && e.data.user === "ann"), 10000, "ann's connection.closed");
  assert.deepEqual(refused, []);
  const ann = events.filter((e) => e.data.user === "ann").map((e) => e.type);
  assert.deepEqual(ann, ["connection.opened", "group.joined", "group.left", "connection.closed"]);
  const closed = events.find((e) => e.type === "connection.closed" && e.data.user === "ann");
  assert.equal(closed.data.code, 4000);
  // A forged request is refused by the same library.
  const forged = JSON.stringify({ time_ms: Date.now(), events: [] });
  assert.throws(() => verifier.verify(forged, {
    "webhook-id": "msg_x",
    "webhook-timestamp": String(Math.floor(Date.now() / 1000)),
    "webhook-signature": "v1,AAAA",
  }));
});
