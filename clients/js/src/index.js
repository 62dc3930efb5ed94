// The nexusd client for browsers and Node >= 20: one WebSocket to the daemon,
// requests answered by id, watches that resume from their last `seq` after a
// reconnect (no gap, no duplicate), reconnection with backoff and jitter, and
// errors by code. See protocol/SPEC.md for the messages.

import {
  SUBPROTOCOLS,
  decodeJson,
  decodeMsgpack,
  encodeJson,
  encodeMsgpack,
} from "./codec.js";

export { SUBPROTOCOLS, decodeJson, decodeMsgpack, encodeJson, encodeMsgpack };

export const VERSION = "0.1.0";

/** A request refused by the daemon, or a connection that failed: `code` is
 * the protocol's error code (SPEC section 12), or `disconnected` when the
 * connection was lost before the answer (the request may have been applied),
 * `cannot_connect` or `timeout`. */
export class NexusError extends Error {
  constructor(code, message, { retryAfter = null, requestId = null } = {}) {
    super(message ? `${code}: ${message}` : code);
    this.name = "NexusError";
    this.code = code;
    this.detail = message ?? "";
    this.retryAfter = retryAfter;
    this.requestId = requestId;
  }
}

const OPEN = 1;
const REPLY_TAGS = new Set([
  "pong", "ok", "error", "created", "attached", "written", "value", "state", "switched",
  "renewed", "granted", "report", "sessions", "run_started",
]);
const ENDS_WATCH = new Set(["expired", "invalidated"]);

/** Opens a client; resolves once the daemon has said `welcome`.
 *
 * options: protocol ("msgpack" | "json"), channel, client, credential,
 * WebSocket (a constructor; default globalThis.WebSocket), reconnect (false to
 * stay closed), backoff ({initial, max, factor} in seconds), timeout (seconds
 * per request), onState (called with "open" | "reconnecting" | "closed"). */
export async function connect(url, options = {}) {
  const client = new Client(url, options);
  await client._open();
  return client;
}

export class Client {
  constructor(url, options = {}) {
    this.url = url;
    this.protocol = options.protocol ?? "msgpack";
    if (!(this.protocol in SUBPROTOCOLS)) {
      throw new TypeError(`protocol must be "msgpack" or "json", not ${this.protocol}`);
    }
    this.channel = options.channel ?? "api";
    this.clientName = options.client ?? `nexus-js/${VERSION}`;
    this.credential = options.credential ?? null;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError("no WebSocket: pass options.WebSocket (Node 20: the ws package, " +
        "or run node with --experimental-websocket)");
    }
    this.reconnect = options.reconnect ?? true;
    this.backoff = { initial: 0.1, max: 10, factor: 2, ...(options.backoff ?? {}) };
    this.timeout = options.timeout ?? 30;
    this.onState = options.onState ?? (() => {});
    this.welcome = null;
    this.state = "connecting";
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject, timer}
    this._watches = new Map(); // session_id -> Watch
    this._closing = false;
    this._retryAfter = 0;
  }

  // ------------------------------------------------------------- requests

  /** Sends `{t, ...fields}` and resolves with its reply; an `error` reply
   * rejects with a NexusError of its code. */
  request(t, fields = {}) {
    if (this.state !== "open") {
      return Promise.reject(new NexusError("disconnected", "the client is not connected"));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = this.timeout
        ? setTimeout(() => {
          this._pending.delete(id);
          reject(new NexusError("timeout", `no answer to ${t} within ${this.timeout}s`));
        }, this.timeout * 1000)
        : null;
      this._pending.set(id, { resolve, reject, timer });
      this._send({ t, id, ...fields });
    });
  }

  ping() { return this.request("ping"); }

  /** Creates a session; resolves with `created` ({session_id, token, ...}). */
  createSession({ channel, userId, ttl, idleTimeout, metadata } = {}) {
    return this.request("create", {
      channel, user_id: userId, ttl, idle_timeout: idleTimeout, metadata,
    });
  }

  /** The entry `key` (a `value` reply), or the whole state if key is null. */
  get(sessionId, key = null, { token } = {}) {
    return this.request("get", { session_id: sessionId, key, token });
  }

  /** Sets `key`; `expect`: the version the key must have (0: absent). */
  set(sessionId, key, value, { token, expect } = {}) {
    return this.request("set", { session_id: sessionId, key, value, expect, token });
  }

  delete(sessionId, key, { token, expect } = {}) {
    return this.request("delete", { session_id: sessionId, key, expect, token });
  }

  /** Sets and deletes keys together: `set` an object, `del` an array of keys. */
  patch(sessionId, { set = {}, del = [] } = {}, { token, expect } = {}) {
    return this.request("patch", {
      session_id: sessionId, set, delete: del, expect, token,
    });
  }

  /** Watches a session: its events, from `since` (or a snapshot), resumed
   * after every reconnect and after `lagged`. */
  watch(sessionId, { token, since = null, scope = "read", channel } = {}) {
    if (this._watches.has(sessionId)) {
      throw new TypeError(`already watching ${sessionId} on this client`);
    }
    const watch = new Watch(this, sessionId, { token, since, scope, channel });
    this._watches.set(sessionId, watch);
    watch._attach();
    return watch;
  }

  /** Closes the connection for good; pending requests fail `disconnected`. */
  async close() {
    this._closing = true;
    this._setState("closed");
    for (const watch of this._watches.values()) watch._end(null);
    const ws = this._ws;
    if (ws && ws.readyState <= OPEN) {
      await new Promise((resolve) => {
        ws.addEventListener("close", () => resolve(), { once: true });
        ws.close(1000);
      });
    }
    this._failPending(new NexusError("disconnected", "the client was closed"));
  }

  // ----------------------------------------------------------- connection

  _open() {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new this.WebSocket(this.url, SUBPROTOCOLS[this.protocol]);
      } catch (err) {
        reject(new NexusError("cannot_connect", String(err?.message ?? err)));
        return;
      }
      ws.binaryType = "arraybuffer";
      this._ws = ws;
      let greeted = false;
      ws.addEventListener("open", () => {
        this._send({
          t: "hello", versions: [1], channel: this.channel, client: this.clientName,
          credential: this.credential,
        });
      });
      ws.addEventListener("message", (event) => {
        let message;
        try {
          message = this._decode(event.data);
        } catch (err) {
          ws.close(1002, "malformed frame");
          return;
        }
        if (!greeted) {
          if (message.t === "welcome") {
            greeted = true;
            this.welcome = message;
            this._setState("open");
            resolve(this);
            for (const watch of this._watches.values()) watch._attach();
          } else {
            reject(errorOf(message));
            ws.close(1000);
          }
          return;
        }
        this._receive(message);
      });
      let gone = false;
      const onGone = (code, reason) => {
        if (gone || this._ws !== ws) return;
        gone = true;
        this._failPending(new NexusError("disconnected",
          `the connection closed (${code}${reason ? ": " + reason : ""})`));
        if (!greeted) {
          // The first connect fails to its caller; a reconnect tries again.
          reject(new NexusError("cannot_connect", `cannot connect to ${this.url} (${code})`));
          return;
        }
        if (this._closing || !this.reconnect) {
          this._setState("closed");
          for (const watch of this._watches.values()) {
            watch._end(new NexusError("disconnected", "the connection closed"));
          }
          return;
        }
        this._setState("reconnecting");
        this._reconnectSoon(0);
      };
      ws.addEventListener("close", (event) => onGone(event.code, event.reason));
      // Some implementations (Node 20's) fire only `error` when the connection
      // cannot be made; elsewhere a `close` follows it, and is ignored.
      ws.addEventListener("error", () => {
        if (ws.readyState !== OPEN) onGone(1006, "connection failed");
      });
    });
  }

  _reconnectSoon(attempt) {
    const { initial, max, factor } = this.backoff;
    const ceiling = Math.min(max, initial * factor ** attempt);
    // Full jitter on the upper half: clients cut off together spread out.
    const delay = Math.max(this._retryAfter, ceiling * (0.5 + Math.random() / 2));
    this._retryAfter = 0;
    setTimeout(() => {
      if (this._closing) return;
      this._open().catch(() => {
        if (!this._closing && this.state !== "open") this._reconnectSoon(attempt + 1);
      });
    }, delay * 1000);
  }

  _setState(state) {
    if (this.state !== state) {
      this.state = state;
      this.onState(state);
    }
  }

  _send(message) {
    const ws = this._ws;
    if (!ws || ws.readyState !== OPEN) return;
    ws.send(this.protocol === "json" ? encodeJson(message) : encodeMsgpack(message));
  }

  _decode(data) {
    if (this.protocol === "json") {
      if (typeof data !== "string") throw new TypeError("binary message on nexus.v1.json");
      return decodeJson(data);
    }
    if (typeof data === "string") throw new TypeError("text message on nexus.v1.msgpack");
    return decodeMsgpack(new Uint8Array(data));
  }

  _receive(message) {
    const id = message.id;
    if (REPLY_TAGS.has(message.t) && id !== null && id !== undefined) {
      const pending = this._pending.get(id);
      if (pending) {
        this._pending.delete(id);
        clearTimeout(pending.timer);
        if (message.t === "error") pending.reject(errorOf(message));
        else pending.resolve(message);
      }
      return;
    }
    if (message.t === "shutdown" || message.t === "error") {
      // The daemon is going away (or ends this connection): come back later.
      this._retryAfter = message.retry_after ?? 0;
      return;
    }
    const watch = this._watches.get(message.session_id);
    if (watch) watch._event(message);
  }

  _failPending(error) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const { reject, timer } of pending) {
      clearTimeout(timer);
      reject(error);
    }
  }
}

function errorOf(message) {
  return new NexusError(message.code ?? "internal", message.message ?? "", {
    retryAfter: message.retry_after ?? null, requestId: message.id ?? null,
  });
}

/** A watched session: an async iterator of its events (`snapshot`, `change`,
 * `presence`, `expired`, `invalidated`), in `seq` order with no gap and no
 * duplicate across reconnects. A snapshot with `recovered: false` means the
 * missed changes were no longer available: replace your copy with it. */
export class Watch {
  constructor(client, sessionId, { token, since, scope, channel }) {
    this.client = client;
    this.sessionId = sessionId;
    this.token = token;
    this.scope = scope;
    this.channel = channel;
    /** The last `seq` seen: where a resume starts. */
    this.seq = since;
    this.attached = null;
    this._queue = [];
    this._waiters = [];
    this._done = false;
    this._error = null;
    this._attaching = false;
  }

  _attach() {
    if (this._done || this._attaching || this.client.state !== "open") return;
    this._attaching = true;
    this.client.request("attach", {
      session_id: this.sessionId, token: this.token, since: this.seq,
      scope: this.scope, channel: this.channel,
    }).then((attached) => {
      // Changes after `since` follow (recovered), or a snapshot does.
      this._attaching = false;
      this.attached = attached;
    }, (err) => {
      this._attaching = false;
      if (err.code !== "disconnected") this._end(err); // refused: not found, expired...
    });
  }

  _event(event) {
    if (this._done) return;
    if (event.t === "snapshot") {
      this.seq = event.seq;
    } else if (event.t === "change") {
      if (this.seq !== null && event.seq <= this.seq) return; // seen before the reconnect
      if (this.seq !== null && event.seq > this.seq + 1) {
        this._attach(); // a gap cannot happen; resume rather than skip
        return;
      }
      this.seq = event.seq;
    } else if (event.t === "lagged") {
      // Too slow: the daemon dropped us; resume from what we have.
      this._attach();
      return;
    }
    this._push(event);
    if (ENDS_WATCH.has(event.t)) this._end(null);
  }

  _push(event) {
    const waiter = this._waiters.shift();
    if (waiter) waiter.resolve({ value: event, done: false });
    else this._queue.push(event);
  }

  _end(error) {
    if (this._done) return;
    this._done = true;
    this._error = error;
    this.client._watches.delete(this.sessionId);
    for (const waiter of this._waiters.splice(0)) {
      if (error) waiter.reject(error);
      else waiter.resolve({ value: undefined, done: true });
    }
  }

  /** The next event; resolves {done: true} once the watch has ended. */
  next() {
    if (this._queue.length) return Promise.resolve({ value: this._queue.shift(), done: false });
    if (this._done) {
      return this._error ? Promise.reject(this._error)
        : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
  }

  /** Stops watching (and tells the daemon, if connected). */
  async close() {
    if (this._done) return;
    this._end(null);
    if (this.client.state === "open") {
      await this.client.request("detach", { session_id: this.sessionId }).catch(() => {});
    }
  }

  async return() {
    await this.close();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator]() { return this; }
}
