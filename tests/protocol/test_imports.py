"""nexus_protocol stays sans-I/O and exports what it says it does."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nexus_protocol
from nexus_protocol import MESSAGE_TYPES, Message

# Modules that would mean I/O, an event loop, or the daemon leaking in.
FORBIDDEN = ("trio", "trio_websocket", "nexusd", "nexus_client", "asyncio", "socket",
             "ssl", "selectors", "sqlite3", "cryptography")


def test_import_pulls_in_no_io_and_no_daemon() -> None:
    code = (
        "import sys, json, nexus_protocol\n"
        f"print(json.dumps([m for m in {FORBIDDEN!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout) == []


def exported_names() -> dict[str, str]:
    """Public name -> the name it has in its private module, from __init__.py."""
    tree = ast.parse(Path(nexus_protocol.__file__).read_text(encoding="utf-8"))
    names = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            assert node.level == 1 and node.module and node.module.startswith("_"), (
                "__init__ re-exports from its private modules only")
            for alias in node.names:
                names[alias.asname or alias.name] = alias.name
    return names


def test_every_export_resolves() -> None:
    names = exported_names()
    assert names
    for public in names:
        assert not public.startswith("_")
        assert getattr(nexus_protocol, public) is not None


def test_every_message_class_is_exported() -> None:
    exported = {id(getattr(nexus_protocol, name)) for name in exported_names()}
    for cls in MESSAGE_TYPES.values():
        assert id(cls) in exported, f"{cls.__name__} is not exported"
        assert issubclass(cls, Message)


def test_each_thing_has_one_public_name() -> None:
    # A class shows its own name in reprs and tracebacks: that name is the one
    # it is exported under, and no other public name refers to it.
    names = exported_names()
    by_object: dict[int, list[str]] = {}
    for public in names:
        obj = getattr(nexus_protocol, public)
        if isinstance(obj, type):
            assert obj.__name__ == public
            by_object.setdefault(id(obj), []).append(public)
    assert [n for n in by_object.values() if len(n) > 1] == []
    for module in {getattr(nexus_protocol, n).__module__ for n in names
                   if isinstance(getattr(nexus_protocol, n), type)}:
        listed = [getattr(sys.modules[module], n) for n in sys.modules[module].__all__]
        assert len({id(obj) for obj in listed}) == len(listed), module


def test_version_is_a_string() -> None:
    assert isinstance(nexus_protocol.__version__, str)
