// The comparison peer for `wshub-bench`: what a backend engineer would write by hand with the
// `ws` package, speaking wshub's plain mode (docs/PROTOCOL.md: join/leave, echo + message, binary
// relay, REST broadcast, /ws/echo, keep-alive).
//
//   PORT=5290 ANNOUNCE=all|none node server.js
'use strict';
const http = require('http');
const crypto = require('crypto');
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.env.PORT || 5290);
const host = process.env.HOST || '127.0.0.1';
const announce = (process.env.ANNOUNCE || 'all') !== 'none';
const maxPayload = 64 * 1024;

const clients = new Map(); // id -> { ws, connectedAt, remoteAddr }
const now = () => new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');

function broadcast(data, isBinary) {
  for (const { ws } of clients.values()) {
    if (ws.readyState === WebSocket.OPEN) ws.send(data, { binary: isBinary });
  }
}
const system = (message) => broadcast(JSON.stringify({ type: 'system', message, timestamp: now() }), false);

function problem(res, status, detail) {
  res.writeHead(status, { 'content-type': 'application/problem+json' });
  res.end(JSON.stringify({ type: 'about:blank', title: http.STATUS_CODES[status], status, detail }));
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/api/connections') {
    const connections = [...clients.entries()].map(([id, c]) => ({
      id, shortId: id.slice(0, 8), connectedAt: c.connectedAt, remoteAddr: c.remoteAddr,
    }));
    res.writeHead(200, { 'content-type': 'application/json' });
    return res.end(JSON.stringify({ count: connections.length, connections }));
  }
  if (req.method === 'POST' && req.url === '/api/connections/broadcast') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      let parsed;
      try { parsed = JSON.parse(body); } catch { return problem(res, 400, 'malformed JSON body'); }
      const message = parsed && parsed.message;
      if (typeof message !== 'string' || message.trim() === '') {
        return problem(res, 400, '`message` must not be empty or whitespace');
      }
      const recipients = clients.size;
      broadcast(JSON.stringify({ type: 'server-broadcast', message, timestamp: now() }), false);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ recipients }));
    });
    return;
  }
  if (req.url === '/ws' || req.url === '/ws/echo') return problem(res, 400, 'expected a WebSocket upgrade');
  problem(res, 404, 'not found');
});

const hub = new WebSocketServer({ noServer: true, maxPayload, perMessageDeflate: false });
const echo = new WebSocketServer({ noServer: true, maxPayload: 16 * 1024 * 1024, perMessageDeflate: false });

server.on('upgrade', (req, socket, head) => {
  socket.setNoDelay(true);
  const target = req.url === '/ws' ? hub : req.url === '/ws/echo' ? echo : null;
  if (!target) return socket.destroy();
  target.handleUpgrade(req, socket, head, (ws) => target.emit('connection', ws, req));
});

hub.on('connection', (ws, req) => {
  const id = crypto.randomUUID().replace(/-/g, '');
  const short = id.slice(0, 8);
  clients.set(id, { ws, connectedAt: now(), remoteAddr: `${req.socket.remoteAddress}:${req.socket.remotePort}` });
  ws.isAlive = true;
  ws.on('pong', () => { ws.isAlive = true; });
  if (announce) system(`Client ${short} joined.`);
  ws.on('message', (data, isBinary) => {
    ws.isAlive = true;
    if (isBinary) {
      ws.send(data, { binary: true });
      return broadcast(data, true);
    }
    const message = data.toString('utf8');
    ws.send(JSON.stringify({ type: 'echo', from: short, message, timestamp: now() }));
    broadcast(JSON.stringify({ type: 'message', from: short, message, timestamp: now() }), false);
  });
  ws.on('close', () => {
    clients.delete(id);
    if (announce) system(`Client ${short} left.`);
  });
  ws.on('error', () => {});
});

echo.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});

// Keep-alive: the ws README's heartbeat pattern.
setInterval(() => {
  for (const { ws } of clients.values()) {
    if (!ws.isAlive) { ws.terminate(); continue; }
    ws.isAlive = false;
    ws.ping();
  }
}, 30000).unref();

const stop = () => {
  for (const { ws } of clients.values()) ws.close(1001, 'server shutting down');
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

server.listen({ port, host, backlog: 4096 }, () => console.log(`listening on ${host}:${port}`));
