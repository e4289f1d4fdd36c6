// wshub JavaScript client: an ES module with no dependencies, for browsers and Node.js (>= 22,
// or 20 with --experimental-websocket, or any WebSocket implementation passed as an option).
//
// It speaks wshub.v1 (docs/PROTOCOL.md): commands return promises settled by the server's ack
// or error; it reconnects on its own with exponential backoff and jitter, rejoins its groups and
// recovers what it missed from the offsets it last saw (`join` with `since`, `?recover=` for the
// all-clients stream). When WebSocket is blocked (a proxy refuses the upgrade, or passes
// nothing), it falls back by itself to Server-Sent Events with POSTs, then long polling, and
// tries WebSocket again every minute (`transports`, `fallbackAfter`, `upgradeRetry`). Types:
// wshub.d.ts next to this file.

/** Close codes after which the client does not reconnect: it closed itself (1000 from the
 * server means "go away for good"), or the server said 4400-4499 (don't come back). */
function isFinal(code) {
  return code === 1000 || (code >= 4400 && code <= 4499);
}

/** The `exp` (Unix seconds) of a JWT, read without checking it (the server does); null when
 * it has none or is not a JWT. */
export function tokenExpiry(token) {
  try {
    const part = String(token).split(".")[1];
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

/** A command the server refused: `code` is the protocol's error code (`not_member`, …). */
export class WshubError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "WshubError";
    this.code = code;
  }
}

// --- HTTP transports: WebSocket-shaped, so that the client above does not know which it has ---

/** The HTTP base (`http(s)://host`) and query of a `ws(s)://host/ws?…` URL. */
function httpOf(wsUrl) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  return u;
}

/** What every request of an HTTP session carries: the token, as a header (the server binds a
 * session to the user whose token opened it). */
function authHeaders(u) {
  const t = u.searchParams.get("access_token");
  return t ? { authorization: `Bearer ${t}` } : {};
}

/** Commands up: one POST at a time, what queued meanwhile goes in the next (one per line). */
class Uplink {
  constructor(sock) {
    this.sock = sock;
    this.lines = [];
    this.busy = false;
  }

  push(text) {
    this.lines.push(text);
    if (!this.busy) this._flush();
  }

  async _flush() {
    this.busy = true;
    while (this.lines.length && this.sock.readyState === 1) {
      // Up to 16 KiB a POST (a larger command goes alone): under any `--max-message-size`.
      let n = 0;
      let bytes = 0;
      while (n < this.lines.length && (n === 0 || bytes + this.lines[n].length < 16384)) bytes += this.lines[n++].length + 1;
      const body = this.lines.splice(0, n).join("\n");
      try {
        const res = await fetch(`${this.sock._base.origin}/v1/sessions/${this.sock._session}`, {
          method: "POST",
          headers: { "content-type": "application/x-ndjson", ...this.sock._auth },
          body,
        });
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
      } catch {
        this.sock._closed(1006, "commands could not be sent");
      }
    }
    this.busy = false;
  }
}

/** Base of the HTTP sockets: `readyState`, the callbacks, `send`, `close`. */
class HttpSocket {
  constructor(wsUrl) {
    this.readyState = 0;
    this._base = httpOf(wsUrl);
    this._auth = authHeaders(this._base);
    this._abort = new AbortController();
    this._up = new Uplink(this);
    this._session = null;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
  }

  send(text) {
    if (this.readyState !== 1) throw new Error("not open");
    this._up.push(text);
  }

  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    if (this._session) {
      fetch(`${this._base.origin}/v1/sessions/${this._session}`, { method: "DELETE", headers: this._auth }).catch(() => {});
    }
    this._closed(code, reason);
  }

  _opened(session) {
    this._session = session;
    this.readyState = 1;
    this.onopen?.({});
  }

  _closed(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this._abort.abort();
    this.onclose?.({ code, reason });
  }

  _url(path) {
    const u = new URL(this._base);
    u.pathname = path;
    return u.toString();
  }
}

/** `wshub.v1` over Server-Sent Events (read with fetch, so the token goes in a header too). */
class SseSocket extends HttpSocket {
  constructor(wsUrl) {
    super(wsUrl);
    this.transport = "sse";
    this._run();
  }

  async _run() {
    let code = 1006;
    let reason = "";
    try {
      const res = await fetch(this._url("/v1/sse"), {
        headers: { accept: "text/event-stream", ...this._auth },
        signal: this._abort.signal,
        cache: "no-store",
      });
      if (!res.ok) {
        // A refused token is final as on WebSocket (4401); anything else is worth a retry.
        return this._closed(res.status === 401 ? 4401 : 1006, `HTTP ${res.status}`);
      }
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let event = "";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (!data.length) continue;
          const text = data.join("\n");
          if (event === "session") this._opened(JSON.parse(text).session);
          else if (event === "close") ({ code, reason } = JSON.parse(text));
          else if (event === "") this.onmessage?.({ data: text });
        }
      }
    } catch {}
    this._closed(code, reason);
  }
}

/** `wshub.v1` over long polling. */
class PollSocket extends HttpSocket {
  constructor(wsUrl) {
    super(wsUrl);
    this.transport = "longpolling";
    this._run();
  }

  async _run() {
    let code = 1006;
    let reason = "";
    try {
      const open = await fetch(this._url("/v1/poll"), { headers: this._auth, signal: this._abort.signal, cache: "no-store" });
      if (!open.ok) return this._closed(open.status === 401 ? 4401 : 1006, `HTTP ${open.status}`);
      this._opened((await open.json()).session);
      while (this.readyState === 1) {
        const res = await fetch(`${this._base.origin}/v1/poll/${this._session}`, { headers: this._auth, signal: this._abort.signal, cache: "no-store" });
        if (res.status === 204) continue;
        if (!res.ok) break;
        for (const line of (await res.text()).split("\n")) {
          if (!line) continue;
          // The session's last words: a close line of the transport's own.
          const m = line.includes('"type":"close"') ? JSON.parse(line) : null;
          if (m?.type === "close") ({ code, reason } = m);
          else this.onmessage?.({ data: line });
        }
      }
    } catch {}
    this._closed(code, reason);
  }
}

const DEFAULTS = {
  token: undefined,
  refreshBefore: 30000,
  reconnect: true,
  minDelay: 250,
  maxDelay: 10000,
  factor: 2,
  jitter: 0.5,
  commandTimeout: 10000,
  WebSocket: undefined,
  transports: ["websocket", "sse", "longpolling"],
  fallbackAfter: 3000,
  upgradeRetry: 60000,
};

/**
 * A wshub connection that survives network drops.
 *
 * Events (CustomEvent, payload in `detail`): `state` ({state}), `welcome` (the welcome),
 * `message` (a group message or a message to everyone), `broadcast` (a server-broadcast),
 * `direct`, `joined`, `left`, `recovered` ({group, recovered}: group is null for the
 * all-clients stream; also sent with recovered false when the server says a stream was reset), `close` ({code, reason, willReconnect}), `error` (an unsolicited
 * error frame), `gap` ({group, from, to}: the server dropped those offsets because this client
 * read too slowly (a `drop-oldest` group) or they outlived their TTL; the client recovers them
 * from history by itself, delivering them in order before what followed, then says
 * `recovered`).
 */
export class WshubClient extends EventTarget {
  /**
   * @param {string | string[]} url ws:// or wss:// URL of the hub's /ws endpoint, or the URLs
   *   of several nodes of one cluster: the client starts with the first and, after a close it
   *   did not ask for (a node restarting says 1012) or a failed attempt, tries the next one
   * @param {object} [options]
   */
  constructor(url, options = {}) {
    super();
    this._urls = Array.isArray(url) ? [...url] : [url];
    if (this._urls.length === 0) throw new Error("no URL");
    this.url = this._urls[0];
    this.options = { ...DEFAULTS, ...options };
    this._WebSocket = this.options.WebSocket ?? globalThis.WebSocket;
    const kinds = this.options.transports;
    if (!Array.isArray(kinds) || kinds.length === 0 || kinds.some((k) => !["websocket", "sse", "longpolling"].includes(k))) {
      throw new Error("transports: a list of `websocket`, `sse`, `longpolling`");
    }
    if (kinds.includes("websocket") && typeof this._WebSocket !== "function") {
      throw new Error("no WebSocket implementation: pass one as options.WebSocket");
    }
    this._state = "idle";
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject, timer, kind, group}
    this._queue = []; // commands waiting for an open connection
    this._groups = new Map(); // group -> {epoch, offset} | null (no position yet)
    this._joining = new Set(); // groups whose join ack is outstanding on this connection
    this._joiningSeen = new Map(); // group -> highest offset seen while its join was outstanding
    this._recovering = new Map(); // group -> {to, held: [messages after the gap], again} while a gap is recovered
    this._all = null; // {epoch, offset} of the all-clients stream
    this._attempt = 0;
    this._timer = null;
    this._closedByUser = false;
    this._kind = 0; // index into options.transports of the transport to use next
    this._welcomed = false;
    /** The transport in use: `websocket`, `sse` or `longpolling`. */
    this.transport = null;
    this.connectionId = null;
    this.user = null;
  }

  /** `idle`, `connecting`, `open`, `reconnecting` or `closed`. */
  get state() {
    return this._state;
  }

  /** Groups this client is (or will be, once connected) a member of. */
  get groups() {
    return [...this._groups.keys()];
  }

  /** The last position seen in a group (or the all-clients stream with `null`). */
  position(group = null) {
    const p = group === null ? this._all : this._groups.get(group);
    return p ? { ...p } : null;
  }

  /** Connects; resolves with the welcome of the first connection. */
  connect() {
    this._closedByUser = false;
    const welcomed = new Promise((resolve, reject) => {
      const onWelcome = (e) => {
        this.removeEventListener("close", onClose);
        resolve(e.detail);
      };
      const onClose = (e) => {
        if (!e.detail.willReconnect) {
          this.removeEventListener("welcome", onWelcome);
          reject(new Error(`connection closed (${e.detail.code})`));
        }
      };
      this.addEventListener("welcome", onWelcome, { once: true });
      this.addEventListener("close", onClose);
    });
    if (this._state === "idle" || this._state === "closed") this._open();
    return welcomed;
  }

  /** Closes for good (no reconnection); pending commands are rejected. */
  close(code = 1000, reason = "") {
    this._closedByUser = true;
    clearTimeout(this._fallbackTimer);
    clearTimeout(this._upgradeTimer);
    clearTimeout(this._timer);
    this._timer = null;
    clearTimeout(this._refreshTimer);
    if (this._ws) this._ws.close(code, reason);
    this._failPending(new Error("client closed"), true);
    this._setState("closed");
  }

  /** Joins a group (kept across reconnects); resolves with the ack. */
  join(group) {
    if (!this._groups.has(group)) this._groups.set(group, null);
    return this._command({ type: "join", group }, group);
  }

  /** Leaves a group; resolves with the ack. */
  leave(group) {
    this._groups.delete(group);
    return this._command({ type: "leave", group }, group);
  }

  /** Publishes any JSON value to a group you joined; resolves with {recipients, offset}. */
  publish(group, message) {
    return this._command({ type: "publish", group, message });
  }

  /** Sends to `{user}` or `{connection}`; resolves with {recipients}. */
  send(to, message) {
    return this._command({ type: "send", ...to, message });
  }

  /** Who is in a group (authenticated members, on every node): resolves with
   * `{members: [{connection, user, info}], cursor?}`; pass the cursor for the next page. */
  presence(group, { cursor, limit } = {}) {
    const frame = { type: "presence", group };
    if (cursor !== undefined) frame.cursor = cursor;
    if (limit !== undefined) frame.limit = limit;
    return this._command(frame);
  }

  /** How many are in a group: resolves with `{connections, users}` (a user's tabs count once). */
  presenceStats(group) {
    return this._command({ type: "presence_stats", group });
  }

  /** An application-level round trip. */
  ping() {
    return this._command({ type: "ping" });
  }

  /** Replaces the connection's token without reconnecting (the token function's next one
   * when none is given); resolves with the ack (`exp`: the new expiry). Done by itself
   * `refreshBefore` ms before the token expires when `token` is a function. */
  async refresh(token) {
    const t = token ?? (typeof this.options.token === "function" ? await this.options.token() : this.options.token);
    if (!t) throw new Error("no token to refresh with");
    const ack = await this._command({ type: "refresh", token: t });
    this._scheduleRefresh(ack.exp ?? tokenExpiry(t));
    return ack;
  }

  // --- internals ---

  _setState(state) {
    if (this._state === state) return;
    this._state = state;
    this._emit("state", { state });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Asks the token function again before `exp` (Unix seconds), without dropping the socket. */
  _scheduleRefresh(exp) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (typeof this.options.token !== "function" || typeof exp !== "number") return;
    const left = exp * 1000 - Date.now();
    // `refreshBefore` ahead, or at four fifths of a short token's life.
    const wait = Math.max(0, left - Math.min(this.options.refreshBefore, left / 5));
    this._refreshTimer = setTimeout(() => {
      this._refreshTimer = null;
      if (this._state !== "open") return;
      // A refused refresh is followed by the server's close (4401): the reconnect asks for a
      // new token anyway.
      this.refresh().catch((e) => this._emit("error", { type: "error", id: null, code: "token", message: String(e?.message ?? e) }));
    }, wait);
  }

  async _url() {
    const u = new URL(this.url);
    const token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    this._token = token;
    if (token) u.searchParams.set("access_token", token);
    if (this._all) u.searchParams.set("recover", `${this._all.epoch}:${this._all.offset}`);
    return u.toString();
  }

  async _open() {
    this._setState(this._attempt === 0 ? "connecting" : "reconnecting");
    let url;
    try {
      url = await this._url();
    } catch (e) {
      // The token could not be had: say so, and try again later like any failed attempt.
      this._emit("error", { type: "error", id: null, code: "token", message: String(e?.message ?? e) });
      this._scheduleReconnect();
      return;
    }
    if (this._closedByUser) return;
    const kinds = this.options.transports;
    const kind = kinds[this._kind % kinds.length];
    let ws;
    try {
      ws = kind === "sse" ? new SseSocket(url) : kind === "longpolling" ? new PollSocket(url) : new this._WebSocket(url, "wshub.v1");
    } catch {
      // A URL or an environment this transport cannot use: the next one.
      this._welcomed = false;
      return this._onClose(1006, `${kind} unavailable`);
    }
    this._ws = ws;
    this.transport = kind;
    this._welcomed = false;
    // No welcome within `fallbackAfter` (a proxy that takes the upgrade and passes nothing):
    // this transport does not work here; the next one.
    clearTimeout(this._fallbackTimer);
    this._fallbackTimer = setTimeout(() => {
      if (this._ws !== ws || this._welcomed) return;
      this._ws = null;
      try {
        ws.close(4000, "no welcome");
      } catch {}
      this._onClose(1006, "no welcome");
    }, this.options.fallbackAfter);
    ws.onmessage = (ev) => this._onFrame(ev.data);
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._onClose(ev.code, ev.reason);
    };
    // Browsers follow an error with a close event; Node 20's WebSocket does not when the
    // connection never opened (and stays CONNECTING), so an error before open counts as closed.
    let opened = false;
    ws.onopen = () => {
      opened = true;
    };
    ws.onerror = () => {
      setTimeout(() => {
        if (this._ws === ws && (!opened || ws.readyState === 3)) {
          this._ws = null;
          this._onClose(1006, "");
        }
      }, 0);
    };
  }

  _onClose(code, reason) {
    clearTimeout(this._fallbackTimer);
    clearTimeout(this._upgradeTimer);
    // A transport that never got as far as the welcome (an upgrade a proxy refused, a stream
    // it buffers): the next attempt uses the next one, and comes back round to WebSocket.
    if (!this._welcomed && code !== 4401) this._kind += 1;
    this._joining.clear();
    this._joiningSeen.clear();
    this._recovering.clear();
    this._failPending(new Error(`connection lost (${code})`), false);
    clearTimeout(this._refreshTimer);
    // 4401: the token expired or was refused; a token function gives a new one on reconnect.
    const renewable = code === 4401 && typeof this.options.token === "function";
    const willReconnect = !this._closedByUser && this.options.reconnect && (!isFinal(code) || renewable);
    // With several nodes, the next attempt goes to the next one (a node that went away, or
    // could not be reached, is the least likely to answer now); a refused token (4401)
    // retries where it was.
    if (willReconnect && !renewable && this._urls.length > 1) {
      this.url = this._urls[(this._urls.indexOf(this.url) + 1) % this._urls.length];
    }
    this._emit("close", { code, reason, willReconnect });
    if (willReconnect) this._scheduleReconnect();
    else this._setState("closed");
  }

  /** Exponential backoff with jitter: the n-th retry waits min*factor^n, capped, minus up to
   * `jitter` of it at random, so a thousand clients of a restarted server do not come back in
   * the same millisecond. */
  _delay() {
    const o = this.options;
    const base = Math.min(o.maxDelay, o.minDelay * Math.pow(o.factor, this._attempt));
    return Math.round(base * (1 - o.jitter * Math.random()));
  }

  _scheduleReconnect() {
    this._setState("reconnecting");
    const delay = this._delay();
    this._attempt += 1;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      this._timer = null;
      if (!this._closedByUser) this._open();
    }, delay);
  }

  _onFrame(data) {
    if (typeof data !== "string") return; // wshub.v1 frames are text
    let m;
    try {
      m = JSON.parse(data);
    } catch {
      return;
    }
    switch (m.type) {
      case "welcome":
        return this._onWelcome(m);
      case "ack":
      case "error":
        return this._onReply(m);
      case "gap":
        return this._onGap(m);
      case "message":
        if (m.group !== undefined) {
          const r = this._recovering.get(m.group);
          if (r && typeof m.offset === "number" && m.offset > r.to) {
            // After the gap: held until what the gap lost is back, to keep the order.
            r.held.push(m);
            return;
          }
          if (!this._advance(m.group, m.offset)) return;
        } else if (typeof m.offset === "number" && this._all) {
          if (m.offset <= this._all.offset) return;
          this._all.offset = m.offset;
        }
        return this._emit("message", m);
      case "server-broadcast":
        if (typeof m.offset === "number" && this._all) {
          if (m.offset <= this._all.offset) return;
          this._all.offset = m.offset;
        }
        return this._emit("broadcast", m);
      case "reset":
        // The server lost a stream's history (its backplane restarted without it): positions
        // restart here, and what was published meanwhile may be missing.
        if (m.group !== undefined) {
          if (this._groups.has(m.group)) this._groups.set(m.group, { epoch: m.epoch, offset: m.offset });
        } else {
          this._all = { epoch: m.epoch, offset: m.offset };
        }
        return this._emit("recovered", { group: m.group ?? null, recovered: false });
      case "direct":
      case "joined":
      case "left":
        return this._emit(m.type, m);
      default:
        return this._emit("unknown", m);
    }
  }

  /** A gap: the server dropped `from..to` of a group for this client. Recovered with a `join`
   * from just before it (history replays them, in order); later messages wait meanwhile. */
  _onGap(m) {
    this._emit("gap", { group: m.group, from: m.from, to: m.to });
    const pos = this._groups.get(m.group);
    if (!pos) return; // not a member, or no position: nothing to recover from
    const r = this._recovering.get(m.group);
    if (r) {
      // Lost again while recovering: once this recovery is done, another if still behind.
      r.again = Math.max(r.again ?? 0, m.to);
      r.to = Math.max(r.to, m.to);
      return;
    }
    this._recoverGap(m.group, Math.min(pos.offset, m.from - 1), m.to);
  }

  _recoverGap(group, after, to) {
    if (this._state !== "open" || !this._ws) return; // the rejoin on reconnect recovers it
    const r = { to, held: [], again: null };
    this._recovering.set(group, r);
    this._askRecovery(group, r, after);
  }

  /** One round of a gap's recovery: history replays what followed `after`, oldest first, as
   * much as fits the connection's budget; rounds go on while they make progress. */
  _askRecovery(group, r, after) {
    const pos = this._groups.get(group);
    if (!pos || this._recovering.get(group) !== r) return;
    const done = (recovered) => {
      if (this._recovering.get(group) !== r) return;
      this._recovering.delete(group);
      for (const m of r.held) {
        if (this._advance(m.group, m.offset)) this._emit("message", m);
      }
      this._emit("recovered", { group, recovered });
      const now = this._groups.get(group);
      if (r.again !== null && now && now.offset < r.again) this._recoverGap(group, now.offset, r.again);
    };
    const failed = () => {
      // The connection was lost (or the reply never came): what was held is dropped
      // unemitted, the position stays before the gap, and the rejoin on reconnect replays it.
      if (this._recovering.get(group) === r) this._recovering.delete(group);
    };
    this._transmit({
      frame: { type: "join", group, since: { epoch: pos.epoch, offset: after } },
      resolve: (ack) => {
        const now = this._groups.get(group);
        const reached = now ? now.offset : after;
        if (ack.recovered !== true && reached > after && reached < r.to && this._recovering.get(group) === r) {
          // Part of it came back: ask for the rest from there.
          return this._askRecovery(group, r, reached);
        }
        done(ack.recovered === true || reached >= r.to);
      },
      reject: failed,
      recovery: true,
    });
  }

  /** Records a group message's offset; false for one already seen (never sent twice by the
   * server, but a client must not double-count if it ever were). */
  _advance(group, offset) {
    if (typeof offset !== "number" || !this._groups.has(group)) return true;
    const pos = this._groups.get(group);
    if (this._joining.has(group) || !pos) {
      // Until the join's ack tells the epoch, offsets cannot be compared: keep the highest.
      this._joiningSeen.set(group, Math.max(this._joiningSeen.get(group) ?? 0, offset));
      return true;
    }
    if (offset <= pos.offset) return false;
    pos.offset = offset;
    return true;
  }

  /** On a fallback transport, tries WebSocket again every `upgradeRetry` ms; when a probe
   * gets its welcome, the client moves over (the reconnect recovers what is in flight). */
  _scheduleUpgrade() {
    clearTimeout(this._upgradeTimer);
    const kinds = this.options.transports;
    if (this.transport === "websocket" || !kinds.includes("websocket")) return;
    this._upgradeTimer = setTimeout(async () => {
      if (this._state !== "open" || this.transport === "websocket" || this._closedByUser) return;
      let probe;
      try {
        probe = new this._WebSocket(await this._url(), "wshub.v1");
      } catch {
        return this._scheduleUpgrade();
      }
      let done = false;
      const giveUp = () => {
        if (done) return;
        done = true;
        try {
          probe.close();
        } catch {}
        this._scheduleUpgrade();
      };
      const timer = setTimeout(giveUp, this.options.fallbackAfter);
      probe.onerror = () => {};
      probe.onclose = () => {
        clearTimeout(timer);
        giveUp();
      };
      probe.onmessage = () => {
        clearTimeout(timer);
        done = true;
        probe.onclose = null;
        probe.close(1000);
        const current = this._ws;
        if (this._state !== "open" || !current || this.transport === "websocket") return;
        this._kind = kinds.indexOf("websocket");
        current.close(4000, "moving to WebSocket");
      };
    }, this.options.upgradeRetry);
  }

  _onWelcome(w) {
    this._welcomed = true;
    clearTimeout(this._fallbackTimer);
    this._scheduleUpgrade();
    const asked = this._all;
    this.connectionId = w.connectionId;
    this.user = w.user ?? null;
    if (w.all) {
      const ok = asked !== null && w.all.recovered === true && asked.epoch === w.all.epoch;
      // Recovered: the replayed broadcasts follow and advance our offset.
      if (!ok) this._all = { epoch: w.all.epoch, offset: w.all.offset };
      if (asked) this._emit("recovered", { group: null, recovered: ok });
    }
    this._attempt = 0;
    this._setState("open");
    this._scheduleRefresh(tokenExpiry(this._token));
    this._emit("welcome", w);
    // Rejoin first (recovering each group), then what was queued while offline.
    for (const [group, pos] of this._groups) {
      const alreadyQueued = this._queue.some((q) => q.frame.type === "join" && q.frame.group === group);
      if (alreadyQueued) continue;
      const frame = { type: "join", group };
      if (pos) frame.since = { epoch: pos.epoch, offset: pos.offset };
      this._transmit({ frame, resolve: () => {}, reject: () => {}, group });
    }
    const queued = this._queue;
    this._queue = [];
    for (const q of queued) {
      if (q.frame.type === "join" && q.group !== undefined && this._groups.has(q.group)) {
        const pos = this._groups.get(q.group);
        if (pos) q.frame.since = { epoch: pos.epoch, offset: pos.offset };
      }
      this._transmit(q);
    }
  }

  _onReply(m) {
    const p = this._pending.get(m.id);
    if (!p) {
      if (m.type === "error") this._emit("error", m);
      return;
    }
    this._pending.delete(m.id);
    clearTimeout(p.timer);
    if (p.frame.type === "join" && p.group !== undefined) this._onJoinReply(p.group, p.frame, m);
    if (m.type === "ack") p.resolve(m);
    else p.reject(new WshubError(m.code, m.message));
  }

  _onJoinReply(group, frame, m) {
    this._joining.delete(group);
    const seen = this._joiningSeen.get(group) ?? 0;
    this._joiningSeen.delete(group);
    if (m.type !== "ack") {
      this._groups.delete(group);
      return;
    }
    if (!this._groups.has(group)) return; // left meanwhile
    const offset = Math.max(m.offset ?? 0, seen);
    this._groups.set(group, { epoch: m.epoch, offset });
    if (frame.since) this._emit("recovered", { group, recovered: m.recovered === true });
  }

  _command(frame, group) {
    return new Promise((resolve, reject) => {
      const q = { frame, resolve, reject, group };
      if (this._state === "open" && this._ws) this._transmit(q);
      else if (this._state === "closed" && this._closedByUser) reject(new Error("client closed"));
      else this._queue.push(q);
    });
  }

  _transmit(q) {
    const id = this._nextId++;
    q.frame = { id, ...q.frame };
    q.timer = setTimeout(() => {
      if (this._pending.delete(id)) q.reject(new Error(`no reply to ${q.frame.type} within ${this.options.commandTimeout} ms`));
    }, this.options.commandTimeout);
    this._pending.set(id, q);
    // A gap's recovery is a join of a group already joined: its messages are compared by offset.
    if (q.frame.type === "join" && !q.recovery) this._joining.add(q.frame.group);
    try {
      this._ws.send(JSON.stringify(q.frame));
    } catch (e) {
      this._pending.delete(id);
      clearTimeout(q.timer);
      q.reject(e);
    }
  }

  /** Rejects what was in flight: its outcome is unknown. A join stays wanted (the group is
   * rejoined on reconnect) and its promise waits for that ack, unless the client is closing. */
  _failPending(err, all) {
    for (const [id, p] of this._pending) {
      clearTimeout(p.timer);
      if (!all && p.frame.type === "join" && p.group !== undefined && this._groups.has(p.group)) {
        const { id: _drop, since: _since, ...frame } = p.frame;
        this._queue.push({ frame, resolve: p.resolve, reject: p.reject, group: p.group });
      } else {
        p.reject(err);
      }
      this._pending.delete(id);
    }
    if (all) {
      for (const q of this._queue) q.reject(err);
      this._queue = [];
    }
  }
}
