// Starts a real wshub binary for the tests (WSHUB_BIN, or target/debug/wshub of this checkout).
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
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
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGKILL");
      await exited;
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
