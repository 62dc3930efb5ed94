"""Encryption at rest: nothing readable on disk, tampering detected, the right
keys demanded, deleted sessions shredded, master keys rotated and retired."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from store_helpers import events, files_bytes, make_meta, raw_db

from nexusd._keys_cli import keys_list, keys_retire, keys_rotate
from nexusd.store import SqliteStore, StoreError, _checkpoint, open_sqlite_store
from nexusd.store._crypto import (
    ENV_VAR,
    KEY_FILE,
    IntegrityError,
    KeyRing,
    KeyRingError,
    MasterKey,
    SessionCipher,
    load_keyring,
    new_data_key,
)
from nexusd.store._schema import DB_FILE

SECRET = b"PLAINTEXT-MARKER-7f3a9c"
TOKEN_HASH = "feedface" * 8  # stored in the clear by design: a control for the grep


def secret_events(first: int, last: int) -> list:  # type: ignore[type-arg]
    return events(first, last, body=lambda seq: SECRET + b" event %d" % seq)


async def test_no_plaintext_in_any_file(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    meta = make_meta("s1", tokens={TOKEN_HASH: "admin"})
    await sqlite_store.create(meta, SECRET + b" initial snapshot")
    await sqlite_store.append(meta, secret_events(1, 20))
    await sqlite_store.save_snapshot(meta, 10, SECRET + b" snapshot at 10")
    await sqlite_store.append(meta, secret_events(21, 25))

    def leaks() -> dict[str, tuple[bool, bool]]:
        return {name: (SECRET in data, TOKEN_HASH.encode() in data)
                for name, data in files_bytes(tmp_path).items()}

    while_open = leaks()
    assert while_open[f"{DB_FILE}-wal"] == (False, True)
    assert not any(secret for secret, _ in while_open.values()), while_open
    await sqlite_store.aclose()
    after_close = leaks()
    assert after_close[DB_FILE] == (False, True)
    assert not any(secret for secret, _ in after_close.values()), after_close


async def _flip_byte(tmp_path: Path, table: str, column: str, where: str) -> None:
    with raw_db(tmp_path) as conn:
        (blob,) = conn.execute(f"SELECT {column} FROM {table} WHERE {where}").fetchone()
        flipped = bytearray(blob)
        flipped[len(flipped) // 2] ^= 0x01
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (bytes(flipped),))


@pytest.mark.parametrize(("table", "column", "where", "message"), [
    ("events", "payload", "session_id = 's1' AND seq = 12",
     "session s1 event 12 failed authentication"),
    ("sessions", "snapshot", "id = 's1'", "session s1 snapshot 10 failed authentication"),
    ("sessions", "wrapped_key", "id = 's1'", "session s1 data key failed authentication"),
])
async def test_tampering_is_detected(sqlite_store: SqliteStore, tmp_path: Path, table: str,
                                     column: str, where: str, message: str) -> None:
    await sqlite_store.create(make_meta("s1"), b"s0")
    await sqlite_store.append(make_meta("s1"), events(1, 15))
    await sqlite_store.save_snapshot(make_meta("s1"), 10, b"s10")
    await _flip_byte(tmp_path, table, column, where)

    with pytest.raises(IntegrityError, match=f"^{message}"):
        await sqlite_store.load("s1")


async def test_a_ciphertext_moved_elsewhere_does_not_decrypt(sqlite_store: SqliteStore,
                                                             tmp_path: Path) -> None:
    for sid in ("s1", "s2"):
        await sqlite_store.create(make_meta(sid), sid.encode())
        await sqlite_store.append(make_meta(sid), events(1, 3))
    await sqlite_store.create(make_meta("s3"), b"s3")

    with raw_db(tmp_path) as conn:
        # Event 1 of s1 replayed as its event 2; s1's snapshot planted in s2;
        # s1's whole journal copied into s3; s1's key and snapshot both into s3.
        conn.execute("UPDATE events SET payload = (SELECT payload FROM events WHERE "
                     "session_id = 's1' AND seq = 1) WHERE session_id = 's1' AND seq = 2")
        conn.execute("UPDATE sessions SET snapshot = (SELECT snapshot FROM sessions "
                     "WHERE id = 's1') WHERE id = 's2'")
        conn.execute("INSERT INTO events SELECT 's3', seq, ts, payload FROM events "
                     "WHERE session_id = 's1'")
    with pytest.raises(IntegrityError, match=r"^session s1 event 2 failed authentication"):
        await sqlite_store.load("s1")
    with pytest.raises(IntegrityError, match=r"^session s2 snapshot 0 failed authentication"):
        await sqlite_store.load("s2")
    with pytest.raises(IntegrityError, match=r"^session s3 event 1 failed authentication"):
        await sqlite_store.load("s3")
    with raw_db(tmp_path) as conn:
        conn.execute("DELETE FROM events WHERE session_id = 's3'")
        conn.execute("UPDATE sessions SET (key_id, wrapped_key, snapshot) = (SELECT key_id, "
                     "wrapped_key, snapshot FROM sessions WHERE id = 's1') WHERE id = 's3'")
    with pytest.raises(IntegrityError, match=r"^session s3 data key failed authentication"):
        await sqlite_store.load("s3")


def test_session_cipher_binds_purpose_and_seq() -> None:
    cipher = SessionCipher("s", new_data_key())
    blob = cipher.seal("event", 7, b"x")
    assert cipher.open("event", 7, blob) == b"x"
    for purpose, seq in [("snapshot", 7), ("event", 8)]:
        with pytest.raises(IntegrityError):
            cipher.open(purpose, seq, blob)
    with pytest.raises(IntegrityError):
        cipher.open("event", 7, blob[:10])
    assert cipher.seal("event", 7, b"x") != blob  # a fresh nonce every time


def _nonce(blob: bytes) -> bytes:
    return blob[1:13]  # after the format byte


def test_every_seal_has_its_own_nonce() -> None:
    cipher = SessionCipher("s", new_data_key())
    nonces = {_nonce(cipher.seal("event", 1, b"x")) for _ in range(2000)}  # several draws
    assert len(nonces) == 2000


_FORK_SCRIPT = """
import os, sys
from nexusd.store._crypto import SessionCipher, new_data_key
cipher = SessionCipher("s", new_data_key())
cipher.seal("event", 1, b"x")  # the parent holds a partly used draw
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # the child: its next nonce, to the parent
    os.write(write, cipher.seal("event", 1, b"x")[1:13])
    os._exit(0)
os.close(write)
child = os.read(read, 64)
os.waitpid(pid, 0)
parent = {cipher.seal("event", 1, b"x")[1:13] for _ in range(300)}
sys.exit(0 if len(child) == 12 and child not in parent else 1)
"""


def test_a_forked_child_never_repeats_its_parents_nonces() -> None:
    # In a process of its own: forking this one, which has threads, is unsafe.
    done = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], timeout=60)
    assert done.returncode == 0


# -- the right master key, or nothing -----------------------------------------


async def _store_with_a_session(data_dir: Path, keyring: KeyRing | None = None) -> None:
    store = await open_sqlite_store(data_dir, keyring=keyring)
    await store.create(make_meta("s1"), b"s0")
    await store.aclose()


async def test_a_different_key_under_the_same_id_fails_at_open(tmp_path: Path,
                                                               keyring: KeyRing) -> None:
    # No sessions: the key check value alone tells.
    await (await open_sqlite_store(tmp_path, keyring=keyring)).aclose()
    impostor = KeyRing(keyring.current, (MasterKey(keyring.current, new_data_key()),))
    with pytest.raises(StoreError, match=f"master key {keyring.current} does not match "
                                         "the database; the key file"):
        await open_sqlite_store(tmp_path, keyring=impostor)


async def test_a_replaced_key_file_fails_at_open(tmp_path: Path) -> None:
    await _store_with_a_session(tmp_path)
    old = load_keyring(tmp_path)
    (tmp_path / KEY_FILE).unlink()
    os.close(os.open(tmp_path / KEY_FILE, os.O_WRONLY | os.O_CREAT, 0o600))
    (tmp_path / KEY_FILE).write_text(KeyRing.generate().to_json())

    with pytest.raises(StoreError, match=f"master key {old.current} does not match the "
                                         "database: 1 sessions need it"):
        await open_sqlite_store(tmp_path)


async def test_a_lost_key_file_is_not_silently_replaced(tmp_path: Path) -> None:
    await _store_with_a_session(tmp_path)
    (tmp_path / KEY_FILE).unlink()
    with pytest.raises(KeyRingError, match="there is no key file"):
        await open_sqlite_store(tmp_path)
    assert not (tmp_path / KEY_FILE).exists()


async def test_keys_can_come_from_the_environment(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ring = KeyRing.generate()
    monkeypatch.setenv(ENV_VAR, ring.to_json())
    await _store_with_a_session(tmp_path)
    assert not (tmp_path / KEY_FILE).exists()
    store = await open_sqlite_store(tmp_path, keyring=ring)  # the same ring, given directly
    await store.aclose()
    monkeypatch.setenv(ENV_VAR, base64.b64encode(ring.to_json().encode()).decode())
    store = await open_sqlite_store(tmp_path)  # base64 of the same document
    await store.aclose()
    monkeypatch.setenv(ENV_VAR, "not a key ring")
    with pytest.raises(KeyRingError, match="neither a JSON key ring nor a base64"):
        await open_sqlite_store(tmp_path)
    monkeypatch.setenv(ENV_VAR, KeyRing.generate().to_json())
    with pytest.raises(StoreError, match="does not match the database"):
        await open_sqlite_store(tmp_path)
    with pytest.raises(KeyRingError, match=f"come from \\${ENV_VAR}"):
        keys_rotate(tmp_path, out=io.StringIO())


def test_key_file_is_created_private_and_checked(tmp_path: Path) -> None:
    ring = load_keyring(tmp_path)
    path = tmp_path / KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_keyring(tmp_path) == ring
    doc = json.loads(path.read_text())
    assert doc["current"] == ring.current and len(doc["keys"]) == 1
    assert ring.keys[0].key.hex() not in repr(ring)

    out = io.StringIO()
    keys_list(tmp_path, out=out)  # no database yet: usage unknown
    assert out.getvalue().split()[:2] == [ring.current, "current"]
    assert out.getvalue().rstrip().endswith("sessions ?")

    path.chmod(0o640)
    with pytest.raises(KeyRingError, match="readable by other users"):
        load_keyring(tmp_path)
    path.chmod(0o600)
    path.write_text('{"version": 1, "current": "a", "keys": [{"id": "a", "key": "!!"}]}')
    with pytest.raises(KeyRingError, match="not a valid nexusd key ring: key a is not valid"):
        load_keyring(tmp_path)
    path.write_text('{"version": 1, "current": "b", "keys": []}')
    with pytest.raises(KeyRingError, match="current key 'b' is not in the key ring"):
        load_keyring(tmp_path)


# -- crypto-shredding -------------------------------------------------------


async def _secrets_of(tmp_path: Path, sid: str) -> list[bytes]:
    with raw_db(tmp_path) as conn:
        blobs = list(conn.execute("SELECT wrapped_key FROM sessions WHERE id = ? UNION ALL "
                                  "SELECT snapshot FROM sessions WHERE id = ? UNION ALL "
                                  "SELECT payload FROM events WHERE session_id = ?",
                                  (sid, sid, sid)))
    return [b for (b,) in blobs]


def _found(tmp_path: Path, needles: list[bytes]) -> dict[str, int]:
    return {name: sum(n in data for n in needles)
            for name, data in files_bytes(tmp_path).items()}


async def test_delete_shreds_the_data_key(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    for sid in ("gone", "kept"):
        await sqlite_store.create(make_meta(sid), b"s0")
        await sqlite_store.append(make_meta(sid), events(1, 20))
        await sqlite_store.save_snapshot(make_meta(sid), 10, b"s10")
    await sqlite_store.checkpoint()  # both sessions in the db file, as in a backup
    gone, kept = await _secrets_of(tmp_path, "gone"), await _secrets_of(tmp_path, "kept")
    assert len(gone) == 2 + 15  # key, snapshot, events 6..20 (retention 5 keeps 6..10)
    assert _found(tmp_path, gone)[DB_FILE] == len(gone)

    await sqlite_store.delete("gone")
    await sqlite_store.checkpoint()

    found = _found(tmp_path, gone)
    assert sum(found.values()) == 0, found  # in no file: not the db, WAL, nor shm
    assert _found(tmp_path, kept)[DB_FILE] == len(kept)  # the grep works
    assert (tmp_path / f"{DB_FILE}-wal").stat().st_size == 0


async def test_the_writer_checkpoints_soon_after_a_delete(
        sqlite_store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_checkpoint, "SHRED_DELAY", 0.05)
    await sqlite_store.create(make_meta("gone"), b"s0")
    wrapped = (await _secrets_of(tmp_path, "gone"))[0]
    wal = tmp_path / f"{DB_FILE}-wal"
    assert wrapped in wal.read_bytes()

    await sqlite_store.delete("gone")
    with trio.fail_after(10):  # real time: the writer thread waits SHRED_DELAY
        while wal.stat().st_size:  # noqa: ASYNC110 - set by a thread, not a trio task
            await trio.sleep(0.01)
    assert sum(_found(tmp_path, [wrapped]).values()) == 0


# -- rotation ---------------------------------------------------------------


async def test_rotate_rewrap_retire(tmp_path: Path) -> None:
    await _store_with_a_session(tmp_path)
    store = await open_sqlite_store(tmp_path)
    old_id = store.keyring.current
    for i in range(2, 8):
        await store.create(make_meta(f"s{i}"), b"s0")
        await store.append(make_meta(f"s{i}"), events(1, 3))
    await store.aclose()
    with raw_db(tmp_path) as conn:
        values_before = sorted(conn.execute(
            "SELECT id, snapshot FROM sessions UNION ALL SELECT session_id, payload FROM events"))
        wrapped_before = dict(conn.execute("SELECT id, wrapped_key FROM sessions"))

    out = io.StringIO()
    new_id = keys_rotate(tmp_path, out=out)
    assert f"added master key {new_id}" in out.getvalue()
    assert f"nexusd keys retire {old_id}" in out.getvalue()
    with pytest.raises(KeyRingError, match=f"master key {old_id} still wraps the data keys "
                                           "of 7 sessions"):
        keys_retire(tmp_path, old_id, out=io.StringIO())
    with pytest.raises(KeyRingError, match=f"master key {new_id} is the current key"):
        keys_retire(tmp_path, new_id, out=io.StringIO())

    store = await open_sqlite_store(tmp_path)
    try:
        assert store.keyring.current == new_id
        await store.create(make_meta("s8"), b"s0")  # wrapped under the new key at once
        assert await store.rewrap_keys(batch=3) == 7
        assert await store.rewrap_keys(batch=3) == 0
        loaded = await store.load("s5")
        assert loaded is not None and list(loaded.events) == events(1, 3)
    finally:
        await store.aclose()

    with raw_db(tmp_path) as conn:
        values_after = sorted(conn.execute(
            "SELECT id, snapshot FROM sessions WHERE id != 's8' UNION ALL "
            "SELECT session_id, payload FROM events"))
        wrapped_after = dict(conn.execute("SELECT id, wrapped_key FROM sessions"))
        key_ids = {k for (k,) in conn.execute("SELECT key_id FROM sessions")}
    assert values_after == values_before  # not one value re-encrypted
    assert all(wrapped_after[sid] != wrapped_before[sid] for sid in wrapped_before)
    assert key_ids == {new_id}

    out = io.StringIO()
    keys_list(tmp_path, out=out)
    lines = out.getvalue().splitlines()
    assert [line.split()[:2] for line in lines] == [[old_id, "created"], [new_id, "current"]]
    assert lines[0].endswith("sessions 0") and lines[1].endswith("sessions 8")

    out = io.StringIO()
    keys_retire(tmp_path, old_id, out=out)
    assert out.getvalue() == f"retired master key {old_id}\n"
    assert load_keyring(tmp_path).ids == [new_id]
    store = await open_sqlite_store(tmp_path)
    try:
        loaded = await store.load("s1")
        assert loaded is not None and loaded.snapshot == b"s0"
    finally:
        await store.aclose()


async def test_an_open_store_reloads_a_rotated_ring_through_its_keys(tmp_path: Path) -> None:
    store = await open_sqlite_store(tmp_path)
    try:
        keys = store.keys
        assert keys is not None
        old_id = keys.current
        for i in range(3):
            await store.create(make_meta(f"s{i}"), b"s0")
        new_id = keys_rotate(tmp_path, out=io.StringIO())
        assert keys.current == old_id  # the file changed; the store has not read it yet
        assert await keys.reload() == new_id
        assert keys.current == new_id
        assert await keys.rewrap() == 3
        assert await keys.rewrap() == 0
        keys_retire(tmp_path, old_id, out=io.StringIO())  # no session needs it any more

        (tmp_path / KEY_FILE).write_text(KeyRing.generate().to_json())
        with pytest.raises(StoreError, match="does not match the database"):
            await keys.reload()
        assert keys.current == new_id  # a bad ring changes nothing
        loaded = await store.load("s2")
        assert loaded is not None and loaded.snapshot == b"s0"
    finally:
        await store.aclose()


async def test_a_daemon_with_a_retired_current_key_refuses_new_sessions(
        tmp_path: Path) -> None:
    store = await open_sqlite_store(tmp_path)  # its key ring: the first key, current
    try:
        old_id = store.keyring.current
        keys_rotate(tmp_path, out=io.StringIO())
        keys_retire(tmp_path, old_id, out=io.StringIO())  # no session uses it yet
        with pytest.raises(StoreError, match=f"master key {old_id} has been retired"):
            await store.create(make_meta("s1"), b"s0")
    finally:
        await store.aclose()
