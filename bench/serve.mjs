// What the Node.js benchmarks share: a wshub binary started on a free loopback port for N
// sessions (no announcements, no joined/left events: the measurements are of delivery, not
// of membership storms), and its address once it listens.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";

export async function startWshub(bin, sessions) {
  const child = spawn(bin, ["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--announce", "none", "--silent-groups", "*", "--max-connections", String(sessions + 100)], { stdio: ["ignore", "pipe", "inherit"] });
  const addr = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("no listen line")), 10000);
    createInterface({ input: child.stdout }).on("line", (l) => {
      try {
        const local = JSON.parse(l)?.fields?.local;
        if (local) {
          clearTimeout(t);
          resolve(local);
        }
      } catch {}
    });
  });
  return { child, addr };
}
