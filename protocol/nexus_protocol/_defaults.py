"""Where a daemon listens when nobody says otherwise.

Pure functions of the environment mapping they are given, so that the daemon
and every client agree without either importing the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath, PurePosixPath
from typing import Final

__all__ = ["DEFAULT_WS_HOST", "DEFAULT_WS_PORT", "default_socket_path", "default_state_dir"]

DEFAULT_WS_HOST: Final = "127.0.0.1"
DEFAULT_WS_PORT: Final = 8765


def default_state_dir(environ: Mapping[str, str], home: str) -> PurePath:
    """``~/.local/state/nexusd`` (honouring XDG_STATE_HOME)."""
    base = environ.get("XDG_STATE_HOME") or f"{home}/.local/state"
    return PurePosixPath(base) / "nexusd"


def default_socket_path(environ: Mapping[str, str], home: str) -> PurePath:
    """``$XDG_RUNTIME_DIR/nexusd/nexusd.sock``, else under the state dir."""
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return PurePosixPath(runtime) / "nexusd" / "nexusd.sock"
    return default_state_dir(environ, home) / "nexusd.sock"
