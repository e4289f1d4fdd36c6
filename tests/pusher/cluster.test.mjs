// The real Pusher libraries against a two-node wshub cluster on a real redis-server (started
// here on a free port): clients on different nodes, the SDK talking to either node.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import Pusher from "pusher-js";
import PusherServer from "pusher";
import { startServer, until } from "../../clients/js/test/server.mjs";
import { next, startRedis } from "./helpers.mjs";

const APP = { appId: "100", key: "key-one", secret: "secret-one" };
let redis, n1, n2;
const open = [];

before(async () => {
  redis = await startRedis();
  const args = (id) => ["--app", `${APP.appId}:${APP.key}:${APP.secret}`, "--backplane", `redis://127.0.0.1:${redis.port}`, "--node-id", id, "--node-ttl", "2s"];
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

function client(n, user) {
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
    userAuthentication: { customHandler: ({ socketId }, cb) => cb(null, signer.authenticateUser(socketId, { id: user })) },
  });
  open.push(c);
  return c;
}

async function subscribed(c, name) {
  if (c.connection.state !== "connected") await next(c.connection, "connected");
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
