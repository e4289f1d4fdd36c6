// What the Pusher tests share: the next event of a pusher-js object, and a redis-server of the
// test's own on a free port (the cluster tests' backplane).
import { spawn } from "node:child_process";
import net from "node:net";
import { until } from "../../clients/js/test/server.mjs";

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export async function startRedis() {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  await until(
    () => new Promise((r) => {
      const c = net.connect(port, "127.0.0.1", () => { c.end(); r(true); });
      c.on("error", () => r(false));
    }),
    10000,
    "redis-server listening",
  );
  return { port, stop: () => child.kill("SIGKILL") };
}


/** The next `event` on `target` (a channel, a connection, a user), within `ms`. */
export function next(target, event, ms = 8000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    timer.unref();
    const handler = (data) => {
      clearTimeout(timer);
      target.unbind(event, handler);
      resolve(data);
    };
    target.bind(event, handler);
  });
}

/** Resolves once the pusher-js client `c` is connected (at once if it already is). */
export async function connected(c, ms = 8000) {
  if (c.connection.state !== "connected") await next(c.connection, "connected", ms);
}
