// The client against a real daemon, on both subprotocols.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { NexusError, connect } from "../src/index.js";
import { startDaemon } from "./daemon.js";

/** Resolves once `client` reports `state`. */
function reaches(client, state) {
  return new Promise((resolve) => {
    const previous = client.onState;
    client.onState = (s) => {
      previous(s);
      if (s === state) resolve();
    };
  });
}

/** The next `n` events of a watch. */
async function take(watch, n) {
  const out = [];
  while (out.length < n) {
    const { value, done } = await watch.next();
    assert.ok(!done, `the watch ended after ${out.length} events`);
    out.push(value);
  }
  return out;
}

for (const protocol of ["msgpack", "json"]) {
  describe(`over nexus.v1.${protocol}`, () => {
    test("handshake, create, set and get", { timeout: 20_000 }, async (t) => {
      const { url } = await startDaemon(t);
      const client = await connect(url, { protocol, channel: "websocket" });
      t.after(() => client.close());
      assert.equal(client.welcome.t, "welcome");
      assert.equal(client.welcome.version, 1);
      assert.match(client.welcome.server, /^nexusd\//);
      assert.equal((await client.ping()).t, "pong");
      const created = await client.createSession({ metadata: { $owner: "page" } });
      assert.equal(created.t, "created");
      const sid = created.session_id;
      const value = { n: 1, bytes: new Uint8Array([1, 2, 255]), $key: "dollar", list: [1.5, null] };
      const written = await client.set(sid, "k", value, { token: created.token });
      assert.equal(written.t, "written");
      assert.equal(written.seq, 1);
      const got = await client.get(sid, "k", { token: created.token });
      assert.deepStrictEqual(got.value, value);
      assert.equal(got.version, 1);
    });

    test("errors come back by code", { timeout: 20_000 }, async (t) => {
      const { url } = await startDaemon(t);
      const client = await connect(url, { protocol });
      t.after(() => client.close());
      const created = await client.createSession();
      await assert.rejects(client.get("0".repeat(32), "k", { token: "x" }),
        (err) => err instanceof NexusError && err.code === "not_found");
      await client.set(created.session_id, "k", 1, { token: created.token });
      await assert.rejects(
        client.set(created.session_id, "k", 2, { token: created.token, expect: 0 }),
        (err) => err instanceof NexusError && err.code === "conflict" && err.requestId > 0);
      await assert.rejects(client.set(created.session_id, "k", 3, { token: "wrong" }),
        (err) => err.code === "unauthorized");
      await assert.rejects(client.request("stats"), (err) => err.code === "forbidden");
      // The connection is still good.
      assert.equal((await client.ping()).t, "pong");
    });

    test("watch resumes after a forced disconnect: no gap, no duplicate", { timeout: 20_000 }, async (t) => {
      const { url } = await startDaemon(t);
      const writer = await connect(url, { protocol });
      const reader = await connect(url, { protocol, backoff: { initial: 0.3, max: 0.3 } });
      t.after(() => Promise.all([writer.close(), reader.close()]));
      const { session_id: sid, token } = await writer.createSession();
      const watch = reader.watch(sid, { token });
      const [snapshot] = await take(watch, 1);
      assert.equal(snapshot.t, "snapshot");
      assert.equal(snapshot.recovered, true);
      for (let i = 1; i <= 3; i++) await writer.set(sid, "k", i, { token });
      const live = await take(watch, 3);
      assert.deepStrictEqual(live.map((e) => [e.t, e.seq, e.value]),
        [["change", 1, 1], ["change", 2, 2], ["change", 3, 3]]);
      // The network drops; changes go on while the reader is away.
      const away = reaches(reader, "reconnecting");
      reader._ws.close(4000, "test: drop");
      await away;
      for (let i = 4; i <= 6; i++) await writer.set(sid, "k", i, { token });
      await reaches(reader, "open");
      await writer.set(sid, "k", 7, { token });
      const resumed = await take(watch, 4);
      assert.deepStrictEqual(resumed.map((e) => [e.t, e.seq, e.value]),
        [["change", 4, 4], ["change", 5, 5], ["change", 6, 6], ["change", 7, 7]]);
      assert.equal(watch.attached.recovered, true);
      assert.equal(watch.seq, 7);
    });

    test("a resume past the retention window surfaces recovered: false", { timeout: 20_000 }, async (t) => {
      const { url } = await startDaemon(t, "--retention", "2");
      const writer = await connect(url, { protocol });
      const reader = await connect(url, { protocol, backoff: { initial: 0.3, max: 0.3 } });
      t.after(() => Promise.all([writer.close(), reader.close()]));
      const { session_id: sid, token } = await writer.createSession();
      const watch = reader.watch(sid, { token });
      await take(watch, 1);
      await writer.set(sid, "a", 1, { token });
      await take(watch, 1);
      const away = reaches(reader, "reconnecting");
      reader._ws.close(4000, "test: drop");
      await away;
      for (let i = 0; i < 5; i++) await writer.set(sid, "b", i, { token });
      const [snapshot] = await take(watch, 1);
      assert.equal(snapshot.t, "snapshot");
      assert.equal(snapshot.recovered, false);
      assert.equal(snapshot.seq, 6);
      assert.equal(snapshot.entries.b.value, 4);
      await writer.set(sid, "c", true, { token });
      const [next] = await take(watch, 1);
      assert.deepStrictEqual([next.t, next.seq], ["change", 7]);
    });
  });
}

test("a daemon that is not there fails to connect", { timeout: 20_000 }, async () => {
  await assert.rejects(connect("ws://127.0.0.1:9/", { reconnect: false }),
    (err) => err instanceof NexusError && err.code === "cannot_connect");
});
