// The real Pusher libraries against a two-node wshub cluster on a real redis-server (started
// here on a free port): clients on different nodes, the SDK talking to either node.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import Pusher from "pusher-js";
import PusherServer from "pusher";
import { startServer, until } from "../../clients/js/test/server.mjs";
import { connected, next, startRedis } from "./helpers.mjs";

const APP = { appId: "100", key: "key-one", secret: "secret-one" };
let redis, n1, n2;
const open = [];

before(async () => {
  redis = await startRedis();
  // Subscription counting and watchlist events on (Pusher's app settings), as JSON: the
  // command line's other form.
  const app = JSON.stringify({ id: APP.appId, key: APP.key, secret: APP.secret, subscription_count: true, watchlist_events: true });
  const args = (id) => ["--app", app, "--backplane", `redis://127.0.0.1:${redis.port}`, "--node-id", id, "--node-ttl", "2s"];
  n1 = await startServer({ args: args("n1") });
  n2 = await startServer({ args: args("n2") });
  for (const n of [n1, n2]) {
    await until(async () => (await fetch(`${n.base}/readyz`)).status === 200, 10000, "node ready");
  }
});

after(async () => {
  for (const c of open) c.disconnect();
  await n1?.stop();
  await n2?.stop();
  redis?.stop();
});

const sdk = (n) => new PusherServer({ appId: APP.appId, key: APP.key, secret: APP.secret, host: "127.0.0.1", port: String(n.port), useTLS: false });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function client(n, user, watchlist) {
  const signer = sdk(n);
  const c = new Pusher(APP.key, {
    cluster: "mt1",
    wsHost: "127.0.0.1",
    wsPort: n.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) =>
        cb(null, signer.authorizeChannel(socketId, channelName, channelName.startsWith("presence-") ? { user_id: user, user_info: { name: user } } : undefined)),
    },
    userAuthentication: { customHandler: ({ socketId }, cb) => cb(null, signer.authenticateUser(socketId, watchlist ? { id: user, watchlist } : { id: user })) },
  });
  open.push(c);
  return c;
}

async function subscribed(c, name) {
  await connected(c);
  const ch = c.subscribe(name);
  const r = await next(ch, "pusher:subscription_succeeded");
  return [ch, r];
}

test("presence, events, client events, queries and terminate across two nodes", async () => {
  const alice = client(n1, "alice");
  const [chA] = await subscribed(alice, "presence-lobby");
  const added = [];
  const removed = [];
  chA.bind("pusher:member_added", (m) => added.push(m.id));
  chA.bind("pusher:member_removed", (m) => removed.push(m.id));
  // The presence join travels through Redis: bob on node 2 sees alice once it has.
  await until(async () => (await (await sdk(n2).get({ path: "/channels/presence-lobby/users" })).json()).users.length === 1, 8000, "alice known on node 2");
  const bob = client(n2, "bob");
  const [chB, members] = await subscribed(bob, "presence-lobby");
  assert.equal(members.count, 2);
  assert.deepEqual(Object.keys(members.members).sort(), ["alice", "bob"]);
  await until(() => added.includes("bob"), 8000, "member_added on node 1");
  // Either node answers the cluster's counts.
  for (const n of [n1, n2]) {
    const info = await (await sdk(n).get({ path: "/channels/presence-lobby", params: { info: "user_count,subscription_count" } })).json();
    assert.deepEqual(info, { occupied: true, user_count: 2, subscription_count: 2 });
  }
  // An event triggered through node 2 reaches alice on node 1, and bob.
  const gotA = next(chA, "news");
  const gotB = next(chB, "news");
  await sdk(n2).trigger("presence-lobby", "news", { n: 1 });
  assert.deepEqual(await gotA, { n: 1 });
  assert.deepEqual(await gotB, { n: 1 });
  // A client event from bob (node 2) reaches alice (node 1), with bob's user id.
  const whisper = new Promise((resolve) => chA.bind("client-hi", (d, meta) => resolve([d, meta?.user_id])));
  chB.trigger("client-hi", { from: "bob" });
  assert.deepEqual(await whisper, [{ from: "bob" }, "bob"]);
  // bob signs in on node 2 and is terminated through node 1.
  bob.signin();
  await until(() => bob.user.user_data, 8000, "bob signed in");
  await sleep(200);
  await sdk(n1).terminateUserConnections("bob");
  await until(() => bob.connection.state !== "connected", 8000, "bob's connection closed");
  await until(() => removed.includes("bob"), 8000, "member_removed on node 1");
  assert.deepEqual(added, ["bob"]);
  assert.deepEqual(removed, ["bob"]);
  alice.disconnect();
});

/** Resolves when `ch` is told its count is `n` (pusher:subscription_count), within `ms`. */
function countIs(ch, n, ms = 8000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no subscription_count ${n} within ${ms} ms (last: ${ch.subscriptionCount})`)), ms);
    timer.unref();
    const handler = (data) => {
      if (data.subscription_count !== n) return;
      clearTimeout(timer);
      ch.unbind("pusher:subscription_count", handler);
      resolve(data);
    };
    ch.bind("pusher:subscription_count", handler);
  });
}

test("subscription counts are the cluster's, sent to subscribers on both nodes as they come and go", async () => {
  const a = client(n1, "ca");
  const b = client(n2, "cb");
  await connected(a);
  await connected(b);
  const cha = a.subscribe("watchers");
  const one = countIs(cha, 1);
  await next(cha, "pusher:subscription_succeeded");
  await one;
  // b joins on the other node: both hear 2 (within the channel's one-second window).
  const two = countIs(cha, 2);
  const chb = b.subscribe("watchers");
  const bTwo = countIs(chb, 2);
  await Promise.all([two, bTwo]);
  assert.equal(cha.subscriptionCount, 2);
  assert.equal(chb.subscriptionCount, 2);
  // The HTTP API agrees, from either node.
  const res = await sdk(n2).get({ path: "/channels/watchers", params: { info: "subscription_count" } });
  assert.equal((await res.json()).subscription_count, 2);
  // b leaves: a hears 1.
  const back = countIs(cha, 1);
  b.unsubscribe("watchers");
  await back;
  assert.equal(cha.subscriptionCount, 1);
  // A presence channel's members say more: no count there (its subscribe answers with members).
  const p = a.subscribe("presence-counted");
  let counted = false;
  p.bind("pusher:subscription_count", () => { counted = true; });
  await next(p, "pusher:subscription_succeeded");
  // Proof that nothing was sent: a count would have gone out as the subscription was
  // counted, ahead (in the bus's order) of an event triggered after it.
  const ev = next(p, "after");
  await sdk(n1).trigger("presence-counted", "after", {});
  await ev;
  assert.equal(counted, false);
});

/** The next watchlist event `name` (online/offline) whose user_ids include `user`. */
function watched(c, name, user, ms = 8000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${name} for ${user} within ${ms} ms`)), ms);
    timer.unref();
    const handler = (e) => {
      if (!e.user_ids.includes(user)) return;
      clearTimeout(timer);
      c.user.watchlist.unbind(name, handler);
      resolve(e);
    };
    c.user.watchlist.bind(name, handler);
  });
}

test("watchlist events: a user hears its friends come online and go offline on the other node", async () => {
  const w = client(n1, "watcher", ["friend-1", "friend-2"]);
  // At sign-in: the status of everyone watched (nobody is online yet).
  const initial = watched(w, "offline", "friend-1");
  await connected(w);
  w.signin();
  const first = await initial;
  assert.deepEqual([...first.user_ids].sort(), ["friend-1", "friend-2"]);
  assert.equal(first.name, "offline");

  // friend-1 signs in on node 2: the watcher on node 1 hears it online.
  const online = watched(w, "online", "friend-1");
  const f = client(n2, "friend-1");
  await connected(f);
  f.signin();
  assert.deepEqual((await online).user_ids, ["friend-1"]);

  // A second watcher signing in now hears friend-1 online at once.
  const w2 = client(n2, "watcher-2", ["friend-1"]);
  const now = watched(w2, "online", "friend-1");
  await connected(w2);
  w2.signin();
  await now;

  // friend-1 leaves: both watchers hear it offline.
  const gone = [watched(w, "offline", "friend-1"), watched(w2, "offline", "friend-1")];
  f.disconnect();
  await Promise.all(gone);
});
