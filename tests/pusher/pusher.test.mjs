// Pusher Channels compatibility with the real libraries: pusher-js 8 (the client every
// Pusher/Laravel Echo app ships) and the `pusher` server SDK 5 (signing, trigger, batch,
// channel queries, user sign-in, terminate), against a real wshub server started here.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import Pusher from "pusher-js";
import PusherServer from "pusher";
import { startServer, until } from "../../clients/js/test/server.mjs";
import { next } from "./helpers.mjs";
import { WshubClient } from "../../clients/js/wshub.js";

const APP = { appId: "100", key: "key-one", secret: "secret-one" };
const OTHER = { appId: "200", key: "key-two", secret: "secret-two" };
let srv;
const open = [];

before(async () => {
  srv = await startServer({
    args: [
      "--app", `${APP.appId}:${APP.key}:${APP.secret}`,
      "--app", `${OTHER.appId}:${OTHER.key}:${OTHER.secret}`,
    ],
  });
});

after(async () => {
  for (const c of open) c.disconnect();
  await srv?.stop();
});

function sdk(app = APP, secret = app.secret) {
  return new PusherServer({ appId: app.appId, key: app.key, secret, host: "127.0.0.1", port: String(srv.port), useTLS: false });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const timeout = (ms) => new Promise((r) => setTimeout(r, ms).unref());

/** A pusher-js client whose channel authorizations are signed by `signer` (the SDK) as `user`. */
function client(app = APP, { user = "u1", info = {}, signer = sdk(app), key = app.key } = {}) {
  const c = new Pusher(key, {
    cluster: "mt1",
    wsHost: "127.0.0.1",
    wsPort: srv.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) => {
        const data = channelName.startsWith("presence-") ? { user_id: user, user_info: info } : undefined;
        cb(null, signer.authorizeChannel(socketId, channelName, data));
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, cb) => cb(null, signer.authenticateUser(socketId, { id: user, name: user })),
    },
  });
  open.push(c);
  return c;
}

async function subscribed(c, name) {
  const ch = c.subscribe(name);
  const r = await Promise.race([next(ch, "pusher:subscription_succeeded"), next(ch, "pusher:subscription_error").then((e) => { throw new Error(`subscription error: ${JSON.stringify(e)}`); })]);
  return [ch, r];
}

async function connected(c) {
  if (c.connection.state !== "connected") await next(c.connection, "connected");
  return c;
}

test("a public channel gets what the SDK triggers, except the socket_id it names", async () => {
  const a = await connected(client());
  const b = await connected(client());
  const [cha] = await subscribed(a, "orders");
  const [chb] = await subscribed(b, "orders");
  const got = next(cha, "created");
  const res = await sdk().trigger("orders", "created", { id: 1, text: "ünïcode ✓" });
  assert.equal(res.status, 200);
  assert.deepEqual(await got, { id: 1, text: "ünïcode ✓" });
  // Excluding b's socket: a gets it, b does not.
  const seenByB = [];
  chb.bind("excluded", (d) => seenByB.push(d));
  const gotA = next(cha, "excluded");
  await sdk().trigger("orders", "excluded", "plain string", { socket_id: b.connection.socket_id });
  assert.equal(await gotA, "plain string");
  await sleep(200);
  assert.deepEqual(seenByB, []);
  a.disconnect();
  b.disconnect();
});

test("private channels need the app secret's signature; a wrong one is a 401 subscription_error", async () => {
  const good = await connected(client());
  await subscribed(good, "private-invoices");
  const bad = await connected(client(APP, { signer: sdk(APP, "not-the-secret") }));
  const ch = bad.subscribe("private-invoices");
  const err = await next(ch, "pusher:subscription_error");
  assert.equal(err.status, 401);
  assert.equal(err.type, "AuthError");
  // The connection stays usable.
  await subscribed(bad, "public-after-error");
  assert.equal(bad.connection.state, "connected");
  good.disconnect();
  bad.disconnect();
});

test("presence: members by user, member_added/removed only for a user's first and last connection", async () => {
  const alice = await connected(client(APP, { user: "alice", info: { name: "Alice" } }));
  const [chA, first] = await subscribed(alice, "presence-room");
  assert.equal(first.count, 1);
  assert.deepEqual(first.me, { id: "alice", info: { name: "Alice" } });
  const added = [];
  const removed = [];
  chA.bind("pusher:member_added", (m) => added.push(m.id));
  chA.bind("pusher:member_removed", (m) => removed.push(m.id));
  const bob1 = await connected(client(APP, { user: "bob", info: { name: "Bob" } }));
  const [, seenByBob] = await subscribed(bob1, "presence-room");
  assert.equal(seenByBob.count, 2);
  assert.deepEqual(seenByBob.members.alice, { name: "Alice" });
  const bob2 = await connected(client(APP, { user: "bob" }));
  await subscribed(bob2, "presence-room");
  await until(() => added.length >= 1, 5000, "member_added");
  await sleep(200);
  assert.deepEqual(added, ["bob"], "one member_added for two connections of bob");
  const users = await sdk().get({ path: "/channels/presence-room/users" });
  assert.deepEqual((await users.json()).users.map((u) => u.id).sort(), ["alice", "bob"]);
  const info = await sdk().get({ path: "/channels/presence-room", params: { info: "user_count,subscription_count" } });
  assert.deepEqual(await info.json(), { occupied: true, user_count: 2, subscription_count: 3 });
  bob1.disconnect();
  await sleep(300);
  assert.deepEqual(removed, [], "bob still has a connection");
  bob2.disconnect();
  await until(() => removed.length === 1, 5000, "member_removed");
  assert.deepEqual(removed, ["bob"]);
  alice.disconnect();
});

test("client events reach the others on private channels, never the sender, and are refused on public ones", async () => {
  const a = await connected(client());
  const b = await connected(client());
  const [cha] = await subscribed(a, "private-chat");
  const [chb] = await subscribed(b, "private-chat");
  const echoed = [];
  cha.bind("client-typing", (d) => echoed.push(d));
  const got = next(chb, "client-typing");
  assert.equal(cha.trigger("client-typing", { who: "a" }), true);
  assert.deepEqual(await got, { who: "a" });
  await sleep(200);
  assert.deepEqual(echoed, [], "the sender does not get its own client event");
  const [pub] = await subscribed(a, "lobby");
  const err = next(a.connection, "error");
  pub.trigger("client-nope", {});
  const e = await err;
  assert.equal(e.type, "PusherError");
  assert.match(e.data.message, /private- and presence- channels/);
  a.disconnect();
  b.disconnect();
});

test("a client's events over the app's rate are refused with 4301, the connection stays", async () => {
  const a = await connected(client());
  const b = await connected(client());
  const [cha] = await subscribed(a, "private-burst");
  const [chb] = await subscribed(b, "private-burst");
  let received = 0;
  chb.bind("client-x", () => received++);
  const errors = [];
  a.connection.bind("error", (e) => errors.push(e.data?.code));
  for (let i = 0; i < 30; i++) cha.trigger("client-x", { i });
  await until(() => errors.length > 0, 5000, "a rate-limit error");
  await sleep(300);
  assert.ok(errors.every((c) => c === 4301), JSON.stringify(errors));
  assert.ok(received >= 10 && received < 30, `received ${received}`);
  assert.equal(a.connection.state, "connected");
  const metrics = await (await fetch(`${srv.base}/metrics`)).text();
  const dropped = Number(/wshub_drops_total\{reason="client_event_rate"\} (\d+)/.exec(metrics)?.[1]);
  assert.equal(dropped, 30 - received, "every refused client event is counted");
  a.disconnect();
  b.disconnect();
});

test("cache channels send their last event on subscribe, or pusher:cache_miss", async () => {
  const a = await connected(client());
  const empty = a.subscribe("cache-empty");
  await next(empty, "pusher:cache_miss");
  await sdk().trigger("cache-prices", "tick", { price: 1 });
  await sdk().trigger("cache-prices", "tick", { price: 2 });
  const ch = a.subscribe("cache-prices");
  assert.deepEqual(await next(ch, "tick"), { price: 2 });
  a.disconnect();
});

test("triggerBatch, channel listings and counts answer as Pusher's API does", async () => {
  const a = await connected(client());
  const [c1] = await subscribed(a, "batch-1");
  const [c2] = await subscribed(a, "batch-2");
  const got1 = next(c1, "e1");
  const got2 = next(c2, "e2");
  const res = await sdk().triggerBatch([
    { channel: "batch-1", name: "e1", data: { n: 1 } },
    { channel: "batch-2", name: "e2", data: "two" },
  ]);
  assert.equal(res.status, 200);
  assert.deepEqual(await got1, { n: 1 });
  assert.equal(await got2, "two");
  const list = await (await sdk().get({ path: "/channels", params: { filter_by_prefix: "batch-" } })).json();
  assert.deepEqual(list, { channels: { "batch-1": {}, "batch-2": {} } });
  const counted = await (await sdk().trigger(["batch-1"], "e3", {}, { info: "subscription_count" })).json();
  assert.deepEqual(counted, { channels: { "batch-1": { subscription_count: 1 } } });
  const none = await (await sdk().get({ path: "/channels/nobody-here" })).json();
  assert.deepEqual(none, { occupied: false });
  a.disconnect();
});

test("the API refuses bad signatures, wrong keys and oversized events with Pusher's statuses", async () => {
  await assert.rejects(sdk(APP, "wrong-secret").trigger("x", "e", {}), (e) => e.status === 401);
  await assert.rejects(
    new PusherServer({ appId: APP.appId, key: "not-the-key", secret: APP.secret, host: "127.0.0.1", port: String(srv.port) }).trigger("x", "e", {}),
    (e) => e.status === 401,
  );
  await assert.rejects(sdk({ ...APP, appId: "999" }).trigger("x", "e", {}), (e) => e.status === 404);
  await assert.rejects(sdk().trigger("x", "e", "y".repeat(11 * 1024)), (e) => e.status === 413);
  // Within the limit it goes through.
  assert.equal((await sdk().trigger("x", "e", "y".repeat(9 * 1024))).status, 200);
});

test("user sign-in: sendToUser reaches every connection of the user; terminate closes them", async () => {
  const a = await connected(client(APP, { user: "carol" }));
  const b = await connected(client(APP, { user: "carol" }));
  const other = await connected(client(APP, { user: "dave" }));
  for (const c of [a, b, other]) c.signin();
  await until(() => [a, b, other].every((c) => c.user.user_data), 5000, "sign-ins");
  assert.equal(a.user.user_data.id, "carol");
  // The user's own channel is subscribed after sign-in.
  await sleep(300);
  const gotA = next(a.user, "notice");
  const gotB = next(b.user, "notice");
  const seenByDave = [];
  other.user.bind("notice", (d) => seenByDave.push(d));
  await sdk().sendToUser("carol", "notice", { hi: "carol" });
  assert.deepEqual(await gotA, { hi: "carol" });
  assert.deepEqual(await gotB, { hi: "carol" });
  const closedA = next(a.connection, "state_change");
  const res = await sdk().terminateUserConnections("carol");
  assert.equal(res.status, 200);
  await closedA;
  await until(() => a.connection.state !== "connected" && b.connection.state !== "connected", 5000, "carol's connections closed");
  await sleep(200);
  assert.equal(other.connection.state, "connected");
  assert.deepEqual(seenByDave, []);
  other.disconnect();
});

test("an unknown app key is refused with pusher:error 4001", async () => {
  const c = client(APP, { key: "no-such-key" });
  const err = await next(c.connection, "error");
  // pusher-js reports it as the socket's error, wrapping the protocol's.
  assert.equal((err.error ?? err).data.code, 4001);
  assert.match((err.error ?? err).data.message, /no app has the key/);
  await until(() => c.connection.state === "disconnected", 5000, "disconnected");
  c.disconnect();
});

test("apps are isolated: the same channel name in two apps are two channels", async () => {
  const one = await connected(client(APP));
  const two = await connected(client(OTHER));
  const [ch1] = await subscribed(one, "shared-name");
  const [ch2] = await subscribed(two, "shared-name");
  const leaked = [];
  ch1.bind("only-two", (d) => leaked.push(d));
  const got = next(ch2, "only-two");
  await sdk(OTHER).trigger("shared-name", "only-two", { app: 2 });
  assert.deepEqual(await got, { app: 2 });
  await sleep(200);
  assert.deepEqual(leaked, []);
  one.disconnect();
  two.disconnect();
});

test("one hub, two protocols: a wshub group is the default app's channel of the same name", async () => {
  const p = await connected(client(APP));
  const [ch] = await subscribed(p, "orders-both");
  const ws = new WshubClient(srv.wsUrl);
  await ws.connect();
  await ws.join("orders-both");
  // A REST group publish reaches the Pusher subscriber as event `message`.
  const gotP = next(ch, "message");
  const r = await srv.api("POST", "/api/groups/orders-both/broadcast", { message: { from: "rest" } });
  assert.equal(r.status, 200);
  assert.deepEqual(await gotP, { from: "rest" });
  // An SDK trigger reaches the wshub.v1 member as {event, data}.
  const gotW = new Promise((resolve) => ws.addEventListener("message", (e) => e.detail.group === "orders-both" && e.detail.message?.event === "shipped" && resolve(e.detail), { once: false }));
  await sdk().trigger("orders-both", "shipped", { id: 7 });
  const m = await Promise.race([gotW, timeout(5000).then(() => null)]);
  assert.ok(m, "the wshub client got the Pusher event");
  assert.deepEqual(JSON.parse(m.message.data), { id: 7 });
  ws.close();
  p.disconnect();
});

test("webhooks: the SDK's own validation accepts them, and they say what happened", async () => {
  const got = [];
  const receiver = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      got.push({ headers: req.headers, rawBody: body });
      res.writeHead(200);
      res.end();
    });
  });
  await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
  const W = { appId: "300", key: "key-w", secret: "secret-w" };
  const hooked = await startServer({ args: ["--app", `${W.appId}:${W.key}:${W.secret}`, "--app-webhook", `http://127.0.0.1:${receiver.address().port}/hook`] });
  try {
    const signer = new PusherServer({ appId: W.appId, key: W.key, secret: W.secret, host: "127.0.0.1", port: String(hooked.port), useTLS: false });
    const c = new Pusher(W.key, {
      cluster: "mt1", wsHost: "127.0.0.1", wsPort: hooked.port, forceTLS: false, enabledTransports: ["ws"],
      channelAuthorization: { customHandler: ({ socketId, channelName }, cb) => cb(null, signer.authorizeChannel(socketId, channelName, { user_id: "wes" })) },
    });
    open.push(c);
    const ch = c.subscribe("presence-hooked");
    await next(ch, "pusher:subscription_succeeded");
    c.disconnect();
    await until(() => got.flatMap((g) => JSON.parse(g.rawBody).events).some((e) => e.name === "channel_vacated"), 10000, "channel_vacated webhook");
    const events = [];
    for (const g of got) {
      const hook = signer.webhook(g);
      assert.equal(hook.isValid(), true, "the SDK validates the signature");
      assert.ok(hook.getTime() instanceof Date);
      events.push(...hook.getEvents());
    }
    assert.deepEqual(events.map((e) => e.name), ["channel_occupied", "member_added", "member_removed", "channel_vacated"]);
    assert.deepEqual(events[1], { name: "member_added", channel: "presence-hooked", user_id: "wes" });
    // A forged one is not valid.
    assert.equal(signer.webhook({ ...got[0], headers: { ...got[0].headers, "x-pusher-signature": "00" } }).isValid(), false);
  } finally {
    await hooked.stop();
    receiver.close();
  }
});
