// Bodies of the nexus protocol (protocol/SPEC.md sections 3 and 2.4): msgpack
// for the `nexus.v1.msgpack` subprotocol, JSON for `nexus.v1.json`. A message
// is a plain object: "t" is its tag, the other keys its fields, by their wire
// names. Binary data is a Uint8Array in either encoding.

import { decode as decodeMsgpackValue, encode as encodeMsgpackValue } from "@msgpack/msgpack";

export const SUBPROTOCOLS = Object.freeze({
  msgpack: "nexus.v1.msgpack",
  json: "nexus.v1.json",
});

/** The msgpack body of `message`. */
export function encodeMsgpack(message) {
  return encodeMsgpackValue(message, { ignoreUndefined: true });
}

/** The message a msgpack body holds. */
export function decodeMsgpack(bytes) {
  return decodeMsgpackValue(bytes);
}

function base64Encode(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function base64Decode(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function toJson(value) {
  if (value instanceof Uint8Array) return { $bytes: base64Encode(value) };
  if (Array.isArray(value)) return value.map(toJson);
  if (value !== null && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) {
      if (v === undefined) continue;
      out[k.startsWith("$") ? "$" + k : k] = toJson(v);
    }
    return out;
  }
  return value; // NaN and the infinities become null in JSON.stringify
}

function fromJson(value) {
  if (Array.isArray(value)) return value.map(fromJson);
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "$bytes" && typeof value.$bytes === "string") {
      return base64Decode(value.$bytes);
    }
    const out = {};
    for (const k of keys) out[k.startsWith("$$") ? k.slice(1) : k] = fromJson(value[k]);
    return out;
  }
  return value;
}

/** The JSON body (a string) of `message`. */
export function encodeJson(message) {
  return JSON.stringify(toJson(message));
}

/** The message a JSON body holds. */
export function decodeJson(text) {
  return fromJson(JSON.parse(text));
}
