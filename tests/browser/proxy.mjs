// A TCP proxy on 127.0.0.1 that can cut the network: `drop()` destroys every connection through
// it and refuses new ones until `restore()`. To the browser it is a real network failure.
// With `refuseUpgrades`, it is the corporate proxy that answers every WebSocket upgrade 403.
import net from "node:net";

const UPGRADE = /\r\nupgrade:\s*websocket\s*\r\n/i;

export async function startProxy(targetPort, { refuseUpgrades = false } = {}) {
  const sockets = new Set();
  let up = true;
  const server = net.createServer((client) => {
    if (!up) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    if (refuseUpgrades) {
      client.on("data", (chunk) => {
        if (UPGRADE.test(chunk.toString("latin1"))) {
          client.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
          upstream.destroy();
          return;
        }
        upstream.write(chunk);
      });
    } else {
      client.pipe(upstream);
    }
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: server.address().port,
    drop() {
      up = false;
      for (const s of sockets) s.resetAndDestroy?.() ?? s.destroy();
    },
    restore() {
      up = true;
    },
    close() {
      this.drop();
      return new Promise((r) => server.close(r));
    },
  };
}
