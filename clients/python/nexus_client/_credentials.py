"""The per-user credentials file: session id -> token, so that a session created
on one channel can be continued from another without pasting secrets.

Location: ``$NEXUS_CREDENTIALS``, else ``$XDG_CONFIG_HOME/nexus/credentials.json``,
else ``~/.config/nexus/credentials.json``. The directory is created 0700 and the
file 0600 (and tightened to 0600 when rewritten). Writes are atomic (a temporary
file renamed over the old one) and serialised between processes with a lock
file. Entries whose session has expired are pruned on every write.

Format (JSON)::

    {"version": 1,
     "sessions": {"<session_id>": {"token": "...", "expires_at": 1700000000.0,
                                   "channel": "cli", "target": "unix:/run/..."}}}

A bare ``"<session_id>": "<token>"`` mapping is also read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["CredentialStore", "default_credentials_path"]


def default_credentials_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the credentials file lives (see the module docstring)."""
    env = os.environ if environ is None else environ
    explicit = env.get("NEXUS_CREDENTIALS")
    if explicit:
        return Path(explicit).expanduser()
    config = env.get("XDG_CONFIG_HOME")
    base = Path(config) if config else Path(env.get("HOME") or Path.home()) / ".config"
    return base / "nexus" / "credentials.json"


class CredentialStore:
    """Reads and updates the credentials file at `path` (default: see above)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_credentials_path()

    # ------------------------------------------------------------- reading

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{self.path} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{self.path} does not hold a JSON object")
        sessions = doc.get("sessions") if "sessions" in doc else doc
        out: dict[str, dict[str, Any]] = {}
        if isinstance(sessions, dict):
            for sid, record in sessions.items():
                if isinstance(record, str):
                    out[sid] = {"token": record}
                elif isinstance(record, dict) and isinstance(record.get("token"), str):
                    out[sid] = dict(record)
        return out

    def get(self, session_id: str) -> str | None:
        """The stored token of `session_id`, or None."""
        record = self._load().get(session_id)
        return record["token"] if record else None

    def all(self) -> dict[str, str]:
        """Every stored session id -> token."""
        return {sid: r["token"] for sid, r in self._load().items()}

    # ------------------------------------------------------------- writing

    def put(self, session_id: str, token: str, *, expires_at: float | None = None,
            **extra: Any) -> None:
        """Stores the token of `session_id` (replacing any previous one)."""
        with self._locked():
            sessions = self._prune(self._load())
            sessions[session_id] = {"token": token, "expires_at": expires_at, **extra}
            self._write(sessions)

    def remove(self, session_id: str) -> bool:
        """Forgets `session_id`; True if it was stored."""
        with self._locked():
            sessions = self._load()
            found = sessions.pop(session_id, None) is not None
            if found:
                self._write(self._prune(sessions))
            return found

    def prune(self) -> int:
        """Forgets every session past its expiry; returns how many."""
        with self._locked():
            sessions = self._load()
            kept = self._prune(sessions)
            if len(kept) != len(sessions):
                self._write(kept)
            return len(sessions) - len(kept)

    @staticmethod
    def _prune(sessions: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        now = time.time()
        return {sid: r for sid, r in sessions.items()
                if not isinstance(r.get("expires_at"), int | float) or r["expires_at"] > now}

    def _ensure_dir(self) -> None:
        directory = self.path.parent
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # mkdir's mode is filtered by the umask; say it again.
            os.chmod(directory, 0o700)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_dir()
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, sessions: dict[str, dict[str, Any]]) -> None:
        doc = {"version": 1, "sessions": sessions}
        fd, tmp = tempfile.mkstemp(prefix=".credentials.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
