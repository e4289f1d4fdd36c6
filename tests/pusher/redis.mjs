// A redis-server of the test's own, on a free port (the cluster tests' backplane).
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

