// Types of the nexusd JavaScript client (src/index.js).

/** A message of the protocol: "t" is its tag, the other keys its fields by
 * their wire names (protocol/SPEC.md section 7). */
export interface Message {
  t: string;
  [field: string]: unknown;
}

export declare const SUBPROTOCOLS: Readonly<{ msgpack: "nexus.v1.msgpack"; json: "nexus.v1.json" }>;
export declare const VERSION: string;

export declare function encodeMsgpack(message: Message): Uint8Array;
export declare function decodeMsgpack(bytes: Uint8Array): Message;
export declare function encodeJson(message: Message): string;
export declare function decodeJson(text: string): Message;

/** `code`: a protocol error code (bad_request, unauthorized, forbidden,
 * not_found, expired, conflict, busy, too_large, unsupported_version,
 * unavailable, internal), or disconnected, cannot_connect, timeout. */
export declare class NexusError extends Error {
  readonly code: string;
  readonly detail: string;
  readonly retryAfter: number | null;
  readonly requestId: number | null;
  constructor(code: string, message?: string,
              options?: { retryAfter?: number | null; requestId?: number | null });
}

export type ClientState = "connecting" | "open" | "reconnecting" | "closed";

export interface ClientOptions {
  /** Body encoding, as the WebSocket subprotocol: nexus.v1.msgpack or nexus.v1.json. */
  protocol?: "msgpack" | "json";
  channel?: string;
  client?: string;
  /** The daemon's admin key, if this client needs admin rights. */
  credential?: string | null;
  /** A WebSocket constructor (default: globalThis.WebSocket). */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
  /** Reconnect after the connection drops (default true). */
  reconnect?: boolean;
  /** Seconds: the first delay, the largest, and the growth per attempt. */
  backoff?: { initial?: number; max?: number; factor?: number };
  /** Seconds a request waits for its reply (0: forever; default 30). */
  timeout?: number;
  onState?: (state: ClientState) => void;
}

export interface Created extends Message {
  t: "created"; session_id: string; token: string; seq: number; expires_at: number;
}

export declare class Watch implements AsyncIterableIterator<Message> {
  readonly sessionId: string;
  /** The last seq seen: where a resume starts. */
  readonly seq: number | null;
  /** The reply to the latest attach. */
  readonly attached: Message | null;
  next(): Promise<IteratorResult<Message, undefined>>;
  return(): Promise<IteratorResult<Message, undefined>>;
  close(): Promise<void>;
  [Symbol.asyncIterator](): Watch;
}

export declare class Client {
  readonly url: string;
  readonly state: ClientState;
  readonly welcome: Message | null;
  constructor(url: string, options?: ClientOptions);
  request(t: string, fields?: Record<string, unknown>): Promise<Message>;
  ping(): Promise<Message>;
  createSession(options?: { channel?: string; userId?: string; ttl?: number;
                            idleTimeout?: number; metadata?: Record<string, unknown> })
    : Promise<Created>;
  get(sessionId: string, key?: string | null, options?: { token?: string }): Promise<Message>;
  set(sessionId: string, key: string, value: unknown,
      options?: { token?: string; expect?: number }): Promise<Message>;
  delete(sessionId: string, key: string, options?: { token?: string; expect?: number })
    : Promise<Message>;
  patch(sessionId: string, changes?: { set?: Record<string, unknown>; del?: string[] },
        options?: { token?: string; expect?: Record<string, number> }): Promise<Message>;
  watch(sessionId: string, options?: { token?: string; since?: number | null;
                                       scope?: "read" | "write"; channel?: string }): Watch;
  close(): Promise<void>;
}

/** Opens a client; resolves once the daemon has said welcome. */
export declare function connect(url: string, options?: ClientOptions): Promise<Client>;
