// The protocol's golden vectors (protocol/vectors/), decoded by this client's
// codecs: each valid body means its message, in msgpack and in JSON alike.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { decodeJson, decodeMsgpack, encodeJson, encodeMsgpack } from "../src/index.js";

const VECTORS = new URL("../../../protocol/vectors/", import.meta.url);
const load = (name) => JSON.parse(readFileSync(new URL(name, VECTORS), "utf-8"));
const valid = load("valid.json").vectors;
const json = load("json.json");

const hex = (text) => Uint8Array.from(text.match(/../g) ?? [], (b) => parseInt(b, 16));

/** The vectors' meaning notation ({"$bytes": hex} for bin) as this client holds values. */
function meaningOf(value) {
  if (Array.isArray(value)) return value.map(meaningOf);
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "$bytes") return hex(value.$bytes);
    return Object.fromEntries(keys.map((k) => [k, meaningOf(value[k])]));
  }
  return value;
}

/** Every field the vector lists has its value (the others have their defaults). */
function assertMeans(decoded, message, name) {
  for (const [field, value] of Object.entries(message)) {
    assert.deepStrictEqual(decoded[field], meaningOf(value), `${name}: field ${field}`);
  }
}

test("every valid msgpack vector decodes to its meaning", () => {
  assert.ok(valid.length > 50);
  for (const v of valid) {
    // The canonical body holds every field; another encoding may leave some
    // out (they take their defaults), and must agree on those it holds.
    assertMeans(decodeMsgpack(hex(v.canonical_hex ?? v.hex)), v.message, v.name);
    const decoded = decodeMsgpack(hex(v.hex));
    const given = Object.fromEntries(Object.entries(v.message).filter(([k]) => k in decoded));
    assertMeans(decoded, given, v.name);
  }
});

test("what this client encodes decodes to the same message", () => {
  for (const v of valid) {
    const decoded = decodeMsgpack(hex(v.hex));
    assert.deepStrictEqual(decodeMsgpack(encodeMsgpack(decoded)), decoded, v.name);
    assert.deepStrictEqual(decodeJson(encodeJson(decoded)), decoded, v.name);
  }
});

test("every JSON vector means what its msgpack twin means", () => {
  const twins = new Map(valid.map((v) => [v.name, v]));
  assert.equal(json.valid.length, valid.length);
  for (const v of json.valid) {
    const twin = twins.get(v.name);
    assertMeans(decodeJson(v.json), v.message, v.name);
    assert.deepStrictEqual(decodeJson(v.json), decodeMsgpack(hex(twin.canonical_hex ?? twin.hex)),
      v.name);
  }
});

test("JSON keeps bytes and keys beginning with $ apart", () => {
  const message = { t: "set", id: 1, value: { $bytes: "text", blob: new Uint8Array([0, 255]) } };
  const text = encodeJson(message);
  assert.match(text, /"\$\$bytes":"text"/);
  assert.match(text, /"blob":\{"\$bytes":"AP8="\}/);
  assert.deepStrictEqual(decodeJson(text), message);
});
