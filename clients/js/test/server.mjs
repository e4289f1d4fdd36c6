// Starts a real wshub binary for the tests (WSHUB_BIN, or target/debug/wshub of this checkout).
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const BIN = process.env.WSHUB_BIN ?? path.join(root, "target/debug/wshub");

/** Spawns `wshub serve` on 127.0.0.1:<port> (0: any free one) and waits until it listens. */
export async function startServer({ port = 0, args = [] } = {}) {
  const child = spawn(BIN, ["serve", "--listen", `127.0.0.1:${port}`, "--log-format", "json", ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout });
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("wshub did not start within 10 s")), 10000);
    child.once("exit", (code) => reject(new Error(`wshub exited with ${code} before listening`)));
    lines.on("line", (line) => {
      try {
        const local = JSON.parse(line)?.fields?.local;
        if (local) {
          clearTimeout(timer);
          resolve(local);
        }
      } catch {}
    });
  });
  const base = `http://${addr}`;
  return {
    addr,
    port: Number(addr.split(":").pop()),
    wsUrl: `ws://${addr}/ws`,
    base,
    async api(method, p, body) {
      const res = await fetch(base + p, {
        method,
        headers: body === undefined ? {} : { "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : null };
    },
    pid: child.pid,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return; // exited, or killed
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGKILL");
      await exited;
    },
    /** SIGTERM (a rolling restart's drain); resolves with the exit code, within `ms`. */
    async terminate(ms = 15000) {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode ?? child.signalCode;
      const exited = new Promise((r) => child.once("exit", (code, sig) => r(code ?? sig)));
      child.kill("SIGTERM");
      let timer;
      const late = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`wshub did not exit within ${ms} ms of SIGTERM`)), ms);
      });
      try {
        return await Promise.race([exited, late]);
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** A free TCP port on 127.0.0.1 (bound and released: use it at once). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function which(names) {
  return names.find((p) => existsSync(p)) ?? path.basename(names[0]);
}

/** A `redis-server` (no persistence) or `nats-server -js` of the test's own on a free port;
 * `url` is what `--backplane` takes, `stop()` kills it and removes its storage. */
export async function startEngine(kind) {
  const port = await freePort();
  let dir = null;
  let child;
  if (kind === "redis") {
    const bin = which(["/usr/bin/redis-server", "/usr/sbin/redis-server"]);
    child = spawn(bin, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  } else if (kind === "nats") {
    dir = mkdtempSync(path.join(os.tmpdir(), "wshub-js-nats-"));
    const bin = which(["/usr/sbin/nats-server", "/usr/bin/nats-server"]);
    child = spawn(bin, ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", dir], { stdio: "ignore" });
  } else {
    throw new Error(`unknown engine ${kind}`);
  }
  let exited = false;
  child.once("exit", () => (exited = true));
  child.once("error", () => (exited = true));
  await until(
    () =>
      exited ||
      new Promise((resolve) => {
        const s = net.connect(port, "127.0.0.1");
        s.once("connect", () => (s.destroy(), resolve(true)));
        s.once("error", () => resolve(false));
      }),
    10000,
    `${kind} listening`,
  );
  if (exited) throw new Error(`${kind}-server exited (is it installed?)`);
  return {
    url: `${kind}://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null && !exited) {
        const gone = new Promise((r) => child.once("exit", r));
        child.kill("SIGKILL");
        await gone;
      }
      if (dir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Resolves when `pred()` is true; rejects after `ms`. */
export async function until(pred, ms = 10000, what = "condition") {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The next `type` event of `target`, within `ms`. */
export function next(target, type, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} event within ${ms} ms`)), ms);
    target.addEventListener(
      type,
      (e) => {
        clearTimeout(timer);
        resolve(e.detail);
      },
      { once: true },
    );
  });
}
