// The client's token lifecycle against a real wshub server with JWT auth: it refreshes its token
// before expiry without dropping the socket, and after a 4401 close it reconnects with the
// token function's next token (a fixed token that is refused is final).
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { WshubClient, tokenExpiry } from "../wshub.js";
import { startServer, until, next } from "./server.mjs";

const SECRET = "client-token-test-secret-of-32-bytes!";
let srv;

/** An HS256 JWT, minted as the application's backend would. */
function jwt(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

const now = () => Math.floor(Date.now() / 1000);

before(async () => {
  srv = await startServer({ args: ["--jwt-secret", SECRET, "--jwt-leeway", "0s"] });
});
after(async () => {
  await srv?.stop();
});

test("tokenExpiry reads exp", () => {
  assert.equal(tokenExpiry(jwt({ sub: "a", exp: 1234 })), 1234);
  assert.equal(tokenExpiry("not-a-jwt"), null);
});

test("a short-lived token is refreshed before it expires, on the same socket", async () => {
  let calls = 0;
  const c = new WshubClient(srv.wsUrl, {
    token: () => {
      calls += 1;
      return jwt({ sub: "ann", exp: now() + 3, iat: now() });
    },
  });
  let welcomes = 0;
  c.addEventListener("welcome", () => (welcomes += 1));
  await c.connect();
  const first = c.connectionId;
  await until(() => calls >= 2, 5000, "a refresh");
  // Well past the first token's expiry: same connection, still answering.
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal((await c.ping()).type, "ack");
  assert.equal(c.connectionId, first);
  assert.equal(welcomes, 1);
  c.close();
});

test("after a 4401 the client reconnects with the token function's next token; a fixed token does not", async () => {
  let calls = 0;
  const renewing = new WshubClient(srv.wsUrl, {
    minDelay: 50,
    token: () => {
      calls += 1;
      return jwt({ sub: "bo", exp: now() + 600, iat: now() - 5 });
    },
  });
  await renewing.connect();
  const fixed = new WshubClient(srv.wsUrl, { minDelay: 50, token: jwt({ sub: "bo", exp: now() + 600 }) });
  await fixed.connect();
  const closedFixed = next(fixed, "close");
  const welcomed = next(renewing, "welcome");
  const res = await srv.api("DELETE", "/api/users/bo/connections?code=4401&reason=sign%20in%20again");
  assert.equal(res.status, 200);
  assert.deepEqual(await closedFixed, { code: 4401, reason: "sign in again", willReconnect: false });
  await welcomed;
  assert.equal(calls, 2);
  assert.equal(renewing.user, "bo");
  renewing.close();
});

test("presence lists a group's users with their info; presenceStats counts a user's tabs once", async () => {
  const mk = (sub) => new WshubClient(srv.wsUrl, { token: jwt({ sub, exp: now() + 600, info: { name: sub.toUpperCase() } }) });
  const [a1, a2, b] = [mk("ann"), mk("ann"), mk("cy")];
  for (const c of [a1, a2, b]) {
    await c.connect();
    await c.join("here");
  }
  const page = await b.presence("here", { limit: 2 });
  assert.equal(page.members.length, 2);
  const rest = await b.presence("here", { cursor: page.cursor });
  const all = [...page.members, ...rest.members];
  assert.deepEqual(all.map((m) => m.user).sort(), ["ann", "ann", "cy"]);
  assert.deepEqual(all.find((m) => m.user === "cy").info, { name: "CY" });
  const stats = await b.presenceStats("here");
  assert.deepEqual([stats.connections, stats.users, stats.total], [3, 2, 3]);
  for (const c of [a1, a2, b]) c.close();
});
