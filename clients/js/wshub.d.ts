// Types for wshub.js (the wshub.v1 JavaScript client).

/** A position in a stream: the last offset seen, in the stream's epoch. */
export interface Position {
  epoch: string;
  offset: number;
}

export interface ClientOptions {
  /** A JWT, or a function returning one (called before every connection attempt, and
   * `refreshBefore` ms before the token expires, to `refresh` it without reconnecting; after a
   * 4401 close it reconnects with the function's next token). */
  token?: string | (() => string | Promise<string>);
  /** How long before its expiry a token is refreshed, in ms (default 30000; at most a fifth of
   * what is left of a short token). */
  refreshBefore?: number;
  /** Reconnect after a drop (default true). */
  reconnect?: boolean;
  /** First retry delay in ms (default 250). */
  minDelay?: number;
  /** Longest retry delay in ms (default 10000). */
  maxDelay?: number;
  /** Growth of the delay per attempt (default 2). */
  factor?: number;
  /** Up to this fraction of each delay is taken off at random (default 0.5). */
  jitter?: number;
  /** How long a command waits for its ack, in ms (default 10000). */
  commandTimeout?: number;
  /** A WebSocket constructor, where there is no global one. */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
  /** The transports to use, in order of preference (default all three): the next one is
   * tried when one fails before its welcome, and the list comes back round to the first. */
  transports?: Transport[];
  /** How long a connection may take to bring its welcome before the next transport is
   * tried, in ms (default 3000). */
  fallbackAfter?: number;
  /** On a fallback, how often WebSocket is tried again, in ms (default 60000). */
  upgradeRetry?: number;
}

/** `websocket`; `sse`: Server-Sent Events down, POSTs up; `longpolling`. */
export type Transport = "websocket" | "sse" | "longpolling";

export type State = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface Welcome {
  type: "welcome";
  connectionId: string;
  shortId: string;
  user: string | null;
  protocol: "wshub.v1";
  /** The id of the node this connection is on. */
  node: string;
  all: Position & { recovered?: boolean };
  timestamp: string;
}

export interface Ack {
  type: "ack";
  id: number;
  members?: number;
  recipients?: number;
  changed?: boolean;
  epoch?: string;
  offset?: number;
  recovered?: boolean;
  /** After a `refresh`: when the new token expires (Unix seconds). */
  exp?: number;
}

/** A presence member: a connection of an authenticated user. */
export interface PresenceMember {
  connection: string;
  user: string;
  /** What the backend says about the user (the token's `info` claim, the connect hook's). */
  info?: unknown;
}

export interface PresencePage extends Ack {
  members: PresenceMember[];
  /** The next page's cursor; absent on the last page. */
  cursor?: string;
}

export interface Envelope {
  type: "message" | "server-broadcast" | "direct" | "joined" | "left" | "reset";
  epoch?: string;
  group?: string;
  offset?: number;
  from?: string;
  user?: string;
  /** On `joined`/`left`: what the backend says about the user. */
  info?: unknown;
  connection?: string;
  message?: unknown;
  timestamp: string;
}

export interface ClientEvents {
  state: CustomEvent<{ state: State }>;
  welcome: CustomEvent<Welcome>;
  message: CustomEvent<Envelope>;
  broadcast: CustomEvent<Envelope>;
  direct: CustomEvent<Envelope>;
  joined: CustomEvent<Envelope>;
  left: CustomEvent<Envelope>;
  recovered: CustomEvent<{ group: string | null; recovered: boolean }>;
  gap: CustomEvent<{ group: string; from: number; to: number }>;
  close: CustomEvent<{ code: number; reason: string; willReconnect: boolean }>;
  error: CustomEvent<{ type: "error"; id: null; code: string; message: string }>;
}

/** A command the server refused. */
export class WshubError extends Error {
  code: string;
}

export class WshubClient extends EventTarget {
  /** `url`: one node's /ws URL, or the URLs of several nodes of one cluster, tried in turn
   * after a close the client did not ask for or a failed attempt. */
  constructor(url: string | string[], options?: ClientOptions);
  /** The URL of the current (or next) connection attempt. */
  url: string;
  readonly state: State;
  readonly groups: string[];
  connectionId: string | null;
  /** The transport in use (`null` before the first connection). */
  transport: Transport | null;
  user: string | null;
  position(group?: string | null): Position | null;
  connect(): Promise<Welcome>;
  close(code?: number, reason?: string): void;
  join(group: string): Promise<Ack>;
  leave(group: string): Promise<Ack>;
  publish(group: string, message: unknown): Promise<Ack>;
  send(to: { user: string } | { connection: string }, message: unknown): Promise<Ack>;
  ping(): Promise<Ack>;
  /** Who is in a group, a page at a time (pass the previous page's cursor). */
  presence(group: string, page?: { cursor?: string; limit?: number }): Promise<PresencePage>;
  /** How many connections and distinct users are in a group. */
  presenceStats(group: string): Promise<Ack & { connections: number; users: number; total: number }>;
  /** Replaces the token without reconnecting (the token function's next one by default). */
  refresh(token?: string): Promise<Ack>;
  addEventListener<K extends keyof ClientEvents>(
    type: K,
    listener: (ev: ClientEvents[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
}

/** The `exp` (Unix seconds) of a JWT, read without checking it; null when it has none. */
export function tokenExpiry(token: string): number | null;
