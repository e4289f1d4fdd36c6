// pusher-js clients with a backend written with Pusher's *Python* server SDK (pusher 3.x from
// PyPI, in target/pyenv, see scripts/install-test-deps.sh): channel and user authorization,
// trigger, batch, queries, sendToUser, terminate, and a refused signature.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import Pusher from "pusher-js";
import { startServer, until } from "../../clients/js/test/server.mjs";
import { next } from "./helpers.mjs";

const ROOT = new URL("../../", import.meta.url).pathname;
const PYTHON = process.env.WSHUB_PYTHON ?? `${ROOT}target/pyenv/bin/python`;
const SCRIPT = new URL("./sdk_backend.py", import.meta.url).pathname;
let srv;
const open = [];

before(async () => {
  assert.ok(existsSync(PYTHON), `no Python with the pusher SDK at ${PYTHON}: run scripts/install-test-deps.sh`);
  srv = await startServer({ args: ["--app", "4242:py-key:py-secret"] });
});

after(async () => {
  for (const c of open) c.disconnect();
  await srv?.stop();
});

/** Runs the Python backend; its JSON answer. */
function py(...args) {
  const out = execFileSync(PYTHON, [SCRIPT, String(srv.port), ...args], { encoding: "utf8", timeout: 20000 });
  return JSON.parse(out);
}

function client() {
  const c = new Pusher("py-key", {
    cluster: "mt1",
    wsHost: "127.0.0.1",
    wsPort: srv.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    channelAuthorization: { customHandler: ({ socketId, channelName }, cb) => cb(null, py("auth", socketId, channelName)) },
    userAuthentication: { customHandler: ({ socketId }, cb) => cb(null, py("signin", socketId)) },
  });
  open.push(c);
  return c;
}

test("a Python backend authorizes, triggers, queries, sends to a user and terminates", async () => {
  const c = client();
  await next(c.connection, "connected");
  const priv = c.subscribe("private-py");
  await next(priv, "pusher:subscription_succeeded");
  const pres = c.subscribe("presence-py");
  const members = await next(pres, "pusher:subscription_succeeded");
  assert.deepEqual(members.me, { id: "py-user", info: { lang: "python" } });

  const got = next(priv, "made");
  assert.deepEqual(py("trigger", "private-py", "made", '{"by": "python", "n": 1}'), {});
  assert.deepEqual(await got, { by: "python", n: 1 });

  const b1 = next(priv, "batched");
  const b2 = next(pres, "batched");
  py("batch", "private-py", "presence-py");
  assert.deepEqual(await b1, { channel: "private-py" });
  assert.deepEqual(await b2, { channel: "presence-py" });

  assert.deepEqual(py("channels", "presence-"), { channels: { "presence-py": { user_count: 1 } } });
  assert.deepEqual(py("channel", "private-py"), { occupied: true, subscription_count: 1 });
  assert.deepEqual(py("users", "presence-py"), { users: [{ id: "py-user" }] });
  assert.equal(py("bad_secret").refused, true);

  c.signin();
  await until(() => c.user.user_data, 8000, "signed in");
  await new Promise((r) => setTimeout(r, 300));
  const notice = next(c.user, "notice");
  py("send_to_user", "py-user");
  assert.deepEqual(await notice, { from: "python" });

  py("terminate", "py-user");
  await until(() => c.connection.state !== "connected", 8000, "terminated");
});
