"""Encryption at rest: per-session data keys under a ring of master keys.

Every snapshot and event payload is sealed with AES-256-GCM under its
session's own random 256-bit *data key*. The data key is stored only
*wrapped* (encrypted) by a *master key*; the master keys live outside the
database, so a copy of the database alone reveals nothing, and destroying a
session's wrapped data key destroys its data ("crypto-shredding").

Associated data binds each ciphertext to where it belongs — the session id,
the purpose ("snapshot" or "event") and the seq — so a blob copied to another
session, another seq or another column fails authentication instead of
decrypting. Each sealed blob is ``version (1 byte) || nonce (12 bytes) ||
ciphertext || tag (16 bytes)``, with a fresh random 96-bit nonce per
encryption. Random nonces are safe for up to 2**32 encryptions per key; a data
key seals one session's changes, far below that.

Data keys are wrapped with AES-256-GCM rather than AES key wrap (RFC 3394/5649):
key wrap has no associated data, so it could not bind a wrapped key to its
session id and master key id, and GCM is already the one primitive the rest
of this module relies on.

The key ring
------------
A key ring is a set of master keys, one of them *current* (new data keys are
wrapped under it). It is read from the environment variable
``NEXUSD_MASTER_KEYS`` if set, otherwise from the file ``keys`` in the data
directory, which is created (mode 0600) with one fresh key on first start.
Both hold the same UTF-8 JSON document::

    {
      "version": 1,
      "current": "5f0c2a9e",
      "keys": [
        {"id": "5f0c2a9e", "key": "<base64 of 32 random bytes>",
         "created_at": "2025-11-25T13:44:00Z"}
      ]
    }

The environment variable may also hold that document base64-encoded (handy
where multi-line values are awkward): ``NEXUSD_MASTER_KEYS=$(base64 -w0 keys)``.

Rotation adds a new current key; the store then re-wraps every data key under
it (values are never re-encrypted), after which the old key can be retired.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import os
import secrets
import struct
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "ENV_VAR",
    "KEY_FILE",
    "CryptoError",
    "IntegrityError",
    "KeyRing",
    "KeyRingError",
    "MasterKey",
    "SessionCipher",
    "add_master_key",
    "describe",
    "load_keyring",
    "new_data_key",
    "remove_master_key",
]

#: The environment variable that, when set, holds the key ring instead of the key file.
ENV_VAR: Final = "NEXUSD_MASTER_KEYS"
#: The key file's name inside the data directory.
KEY_FILE: Final = "keys"

_FORMAT_VERSION: Final = 1
_BLOB_VERSION: Final = 1
_NONCE_SIZE: Final = 12
_NONCES_PER_DRAW: Final = 256
_KEY_SIZE: Final = 32
_CHECK_PLAINTEXT: Final = b"nexusd master key check v1"
_PURPOSES: Final = ("snapshot", "event")


class CryptoError(Exception):
    """Base class of the errors of this module."""


class IntegrityError(CryptoError):
    """A ciphertext failed authentication: it was altered, moved or truncated,
    or the key it was read with is not the one that wrote it."""


class KeyRingError(CryptoError):
    """The key ring cannot be read, written or changed as asked."""


def new_data_key() -> bytes:
    """A fresh random 256-bit key."""
    return secrets.token_bytes(_KEY_SIZE)


class _Nonces:
    """Random nonces from the OS, drawn a few hundred at a time: one system
    call per `_NONCES_PER_DRAW` seals instead of one per seal. Each is
    handed out once; a forked child starts afresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._next = 0

    def take(self) -> bytes:
        with self._lock:
            if self._next >= len(self._pool):
                self._pool, self._next = os.urandom(_NONCE_SIZE * _NONCES_PER_DRAW), 0
            nonce = self._pool[self._next:self._next + _NONCE_SIZE]
            self._next += _NONCE_SIZE
            return nonce

    def forget(self) -> None:
        self._lock = threading.Lock()  # a thread of the parent may have held it
        self._pool, self._next = b"", 0


_nonces = _Nonces()
os.register_at_fork(after_in_child=_nonces.forget)


def _seal(aead: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = _nonces.take()
    return bytes([_BLOB_VERSION]) + nonce + aead.encrypt(nonce, plaintext, aad)


def _open(aead: AESGCM, blob: bytes, aad: bytes) -> bytes:
    """Raises InvalidTag (or ValueError for a malformed blob)."""
    if len(blob) < 1 + _NONCE_SIZE + 16 or blob[0] != _BLOB_VERSION:
        raise InvalidTag
    return aead.decrypt(blob[1:1 + _NONCE_SIZE], blob[1 + _NONCE_SIZE:], aad)


class SessionCipher:
    """Seals and opens one session's snapshots and events under its data key."""

    __slots__ = ("_aead", "session_id")

    def __init__(self, session_id: str, data_key: bytes) -> None:
        self.session_id = session_id
        self._aead = AESGCM(data_key)

    def _aad(self, purpose: str, seq: int) -> bytes:
        if purpose not in _PURPOSES:
            raise ValueError(f"purpose must be one of {_PURPOSES}, not {purpose!r}")
        # Purpose NUL-terminated, seq fixed-width, the id last: unambiguous.
        return (b"nexusd/v1\0" + purpose.encode() + b"\0" + struct.pack(">q", seq)
                + self.session_id.encode())

    def seal(self, purpose: str, seq: int, plaintext: bytes) -> bytes:
        """Encrypts `plaintext` as the `purpose` ("snapshot"/"event") at `seq`."""
        return _seal(self._aead, plaintext, self._aad(purpose, seq))

    def open(self, purpose: str, seq: int, blob: bytes) -> bytes:
        """Decrypts what `seal(purpose, seq, ...)` produced for this session.

        Raises:
            IntegrityError: the blob was altered, or belongs elsewhere.
        """
        try:
            return _open(self._aead, blob, self._aad(purpose, seq))
        except InvalidTag:
            raise IntegrityError(
                f"session {self.session_id} {purpose} {seq} failed authentication"
            ) from None


@attrs.frozen
class MasterKey:
    key_id: str
    key: bytes = attrs.field(repr=False)
    created_at: str = ""


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.frozen
class KeyRing:
    """Master keys by id, and which one is current. Immutable: changes make a new ring."""

    current: str
    keys: tuple[MasterKey, ...]
    _by_id: Mapping[str, MasterKey] = attrs.field(init=False, repr=False, eq=False)
    _aeads: Mapping[str, AESGCM] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        by_id = {k.key_id: k for k in self.keys}
        if len(by_id) != len(self.keys):
            raise KeyRingError("the key ring lists a key id twice")
        if self.current not in by_id:
            raise KeyRingError(f"the current key {self.current!r} is not in the key ring")
        for k in self.keys:
            if len(k.key) != _KEY_SIZE:
                raise KeyRingError(f"master key {k.key_id} is not {_KEY_SIZE} bytes")
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_aeads", {k.key_id: AESGCM(k.key) for k in self.keys})

    @classmethod
    def generate(cls) -> KeyRing:
        """A ring of one fresh key, e.g. for a store that lives in memory only."""
        key = MasterKey(secrets.token_hex(4), new_data_key(), _now_iso())
        return cls(key.key_id, (key,))

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._by_id

    @property
    def ids(self) -> list[str]:
        return [k.key_id for k in self.keys]

    def with_new_key(self) -> KeyRing:
        """This ring plus a fresh key, which becomes current."""
        key_id = secrets.token_hex(4)
        while key_id in self._by_id:  # pragma: no cover - 1 in 4 billion
            key_id = secrets.token_hex(4)
        return KeyRing(key_id, (*self.keys, MasterKey(key_id, new_data_key(), _now_iso())))

    def without(self, key_id: str) -> KeyRing:
        """This ring minus `key_id`.

        Raises:
            KeyRingError: no such key, or it is the current one.
        """
        if key_id not in self._by_id:
            raise KeyRingError(f"there is no master key {key_id!r} (keys: {', '.join(self.ids)})")
        if key_id == self.current:
            raise KeyRingError(f"master key {key_id} is the current key; rotate first")
        return KeyRing(self.current, tuple(k for k in self.keys if k.key_id != key_id))

    # -- wrapping data keys ------------------------------------------------

    @staticmethod
    def _wrap_aad(key_id: str, session_id: str) -> bytes:
        kid = key_id.encode()
        return b"nexusd/dek/v1\0" + struct.pack(">H", len(kid)) + kid + session_id.encode()

    def wrap(self, session_id: str, data_key: bytes) -> tuple[str, bytes]:
        """`(key id, wrapped key)`: `data_key` sealed under the current master key."""
        aad = self._wrap_aad(self.current, session_id)
        return self.current, _seal(self._aeads[self.current], data_key, aad)

    def unwrap(self, session_id: str, key_id: str, wrapped: bytes) -> bytes:
        """The data key that `wrap` sealed for `session_id` under `key_id`.

        Raises:
            KeyRingError: the ring has no key `key_id`.
            IntegrityError: the wrapped key was altered or belongs to another session.
        """
        aead = self._aeads.get(key_id)
        if aead is None:
            raise KeyRingError(f"session {session_id} needs master key {key_id}, "
                               "which is not in the key ring")
        try:
            return _open(aead, wrapped, self._wrap_aad(key_id, session_id))
        except InvalidTag:
            raise IntegrityError(f"session {session_id} data key failed authentication "
                                 f"under master key {key_id}") from None

    def cipher(self, session_id: str, key_id: str, wrapped: bytes) -> SessionCipher:
        """The cipher of a session, from its wrapped data key."""
        return SessionCipher(session_id, self.unwrap(session_id, key_id, wrapped))

    def derive(self, purpose: str, key_id: str | None = None) -> tuple[str, bytes]:
        """`(key id, key)`: a key for `purpose` derived from master key `key_id`
        (the current one by default), the same in every process holding the ring.

        Raises:
            KeyRingError: the ring has no key `key_id`.
        """
        key_id = self.current if key_id is None else key_id
        master = self._by_id.get(key_id)
        if master is None:
            raise KeyRingError(f"there is no master key {key_id!r}")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=_KEY_SIZE, salt=None,
                    info=b"nexusd/derive/v1\0" + purpose.encode())
        return key_id, hkdf.derive(master.key)

    # -- key check values --------------------------------------------------

    def check_value(self, key_id: str) -> bytes:
        """A value that only master key `key_id` can open: stored beside the data,
        it tells at start whether the ring holds the key that wrote them."""
        return _seal(self._aeads[key_id], _CHECK_PLAINTEXT, b"nexusd/check/v1\0" + key_id.encode())

    def verify_check_value(self, key_id: str, value: bytes) -> bool:
        try:
            return _open(self._aeads[key_id], value,
                         b"nexusd/check/v1\0" + key_id.encode()) == _CHECK_PLAINTEXT
        except (InvalidTag, ValueError):
            return False

    # -- serialisation -----------------------------------------------------

    def to_json(self) -> str:
        doc = {
            "version": _FORMAT_VERSION,
            "current": self.current,
            "keys": [{"id": k.key_id, "key": base64.b64encode(k.key).decode(),
                      "created_at": k.created_at} for k in self.keys],
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str) -> KeyRing:
        """Parses the key-ring document (see the module docstring).

        Raises:
            KeyRingError: naming `source`, if the document is malformed.
        """
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("version") != _FORMAT_VERSION:
                raise ValueError(f"expected a JSON object with \"version\": {_FORMAT_VERSION}")
            keys = tuple(_parse_key(k) for k in doc["keys"])
            current = doc["current"]
            if not isinstance(current, str):
                raise ValueError("\"current\" must be a key id")
            return cls(current, keys)
        except KeyRingError as exc:
            raise KeyRingError(f"{source}: {exc}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyRingError(f"{source} is not a valid nexusd key ring: {exc}") from None


def _parse_key(item: Any) -> MasterKey:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
        raise ValueError("each key needs an \"id\" and a \"key\"")
    try:
        key = base64.b64decode(item["key"], validate=True)
    except (binascii.Error, TypeError):
        raise ValueError(f"key {item['id']} is not valid base64") from None
    return MasterKey(item["id"], key, str(item.get("created_at", "")))


# -- the key file -----------------------------------------------------------

def _key_path(data_dir: Path) -> Path:
    return Path(data_dir) / KEY_FILE


def _write_key_file(path: Path, ring: KeyRing, *, exclusive: bool) -> None:
    """Writes the ring with mode 0600: in place if `exclusive` (first start,
    fails if another process won the race), else atomically via rename."""
    target = path if exclusive else path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(ring.to_json())
            f.flush()
            os.fsync(f.fileno())
        if not exclusive:
            os.replace(target, path)
    except BaseException:
        if not exclusive:
            target.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_key_file(path: Path) -> KeyRing:
    mode = path.stat().st_mode
    if mode & 0o077:
        raise KeyRingError(f"{path} is readable by other users (mode {mode & 0o777:o}); "
                           f"run: chmod 600 {path}")
    return KeyRing.from_json(path.read_text(encoding="utf-8"), source=str(path))


def load_keyring(data_dir: Path, *, environ: Mapping[str, str] | None = None,
                 create: bool = True) -> KeyRing:
    """The key ring: from ``NEXUSD_MASTER_KEYS`` if set, else from the key file
    in `data_dir`, which is created with one new key if missing and `create`.

    Raises:
        KeyRingError: the ring is malformed, the key file is readable by others,
            or it is missing and `create` is false.
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return _from_env(env[ENV_VAR])
    path = _key_path(data_dir)
    if path.exists():
        return _read_key_file(path)
    if not create:
        raise KeyRingError(f"there is no key file {path} (and {ENV_VAR} is not set)")
    ring = KeyRing.generate()
    try:
        _write_key_file(path, ring, exclusive=True)
    except FileExistsError:  # another process created it first: use theirs
        return _read_key_file(path)
    return ring


def _from_env(value: str) -> KeyRing:
    text = value.strip()
    if not text.startswith("{"):  # the JSON document, base64-encoded
        try:
            text = base64.b64decode(text, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise KeyRingError(f"${ENV_VAR} is neither a JSON key ring nor a base64-encoded "
                               "one") from None
    return KeyRing.from_json(text, source=f"${ENV_VAR}")


def _file_only(data_dir: Path, environ: Mapping[str, str] | None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        raise KeyRingError(f"the master keys come from ${ENV_VAR}; change them where that "
                           "variable is set (the key file is not used)")
    path = _key_path(data_dir)
    if not path.exists():
        raise KeyRingError(f"there is no key file {path}")
    return path


def add_master_key(data_dir: Path, *, environ: Mapping[str, str] | None = None) -> KeyRing:
    """Adds a fresh master key to the key file and makes it current.

    Raises:
        KeyRingError: there is no key file, or the keys come from the environment.
    """
    path = _file_only(data_dir, environ)
    ring = _read_key_file(path).with_new_key()
    _write_key_file(path, ring, exclusive=False)
    return ring


def remove_master_key(data_dir: Path, key_id: str, *,
                      environ: Mapping[str, str] | None = None) -> KeyRing:
    """Removes `key_id` from the key file. Whether data still needs it is the
    caller's question (see `nexusd._keys_cli.keys_retire`).

    Raises:
        KeyRingError: no key file, no such key, or it is the current key.
    """
    path = _file_only(data_dir, environ)
    ring = _read_key_file(path).without(key_id)
    _write_key_file(path, ring, exclusive=False)
    return ring


def describe(ring: KeyRing, usage: Mapping[str, int] | None) -> Iterable[str]:
    """Lines describing the ring for `nexusd keys list`: never the keys themselves."""
    for k in ring.keys:
        used = "?" if usage is None else str(usage.get(k.key_id, 0))
        mark = "current" if k.key_id == ring.current else "       "
        yield f"{k.key_id}  {mark}  created {k.created_at or '-':20}  sessions {used}"
