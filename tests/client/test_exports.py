"""The public API: what `nexus_client` exports, and what it must not import."""

from __future__ import annotations

import subprocess
import sys
import types

import nexus_client

PUBLIC = {
    # trio client
    "AsyncClient", "open_client", "ClientStatistics", "Watch", "WatchStatistics", "Backoff",
    "Target", "default_target", "DEFAULT_CLIENT_NAME",
    # the guide's best practices: retry with backoff, the optimal start channel
    "retry", "retry_async", "RETRYABLE", "start_channel",
    # blocking facade
    "Nexus",
    # workers
    "Worker", "RunContext", "SyncRunContext", "Retry", "steps",
    # results and events
    "SessionInfo", "SessionState", "Entry", "WriteResult", "Transition", "Renewal",
    "SessionPage", "Change", "Snapshot", "Presence", "Expired", "Invalidated", "Progress",
    "Result",
    # errors
    "NexusError", "BadRequest", "Unauthorized", "Forbidden", "SessionNotFound",
    "SessionExpired", "Conflict", "Busy", "TooLarge", "UnsupportedVersion", "Unavailable",
    "InternalError", "ConnectionLost", "CannotConnect", "ProtocolError", "Timeout",
    "ERROR_CLASSES",
    # CLI support
    "ExitCode", "EXIT_CODE_DESCRIPTIONS", "exit_code_for", "parse_duration", "parse_value",
    "CredentialStore", "default_credentials_path",
    "__version__",
}


def test_public_names() -> None:
    exported = {n for n in vars(nexus_client) if not n.startswith("_") or n == "__version__"}
    modules = {n for n in exported if isinstance(getattr(nexus_client, n), types.ModuleType)}
    assert exported - modules == PUBLIC


def test_public_classes_claim_the_package() -> None:
    # Implementation lives in _-modules; what users see are these names.
    for name in PUBLIC:
        obj = getattr(nexus_client, name)
        module = getattr(obj, "__module__", None)
        if isinstance(obj, type) and module and module.startswith("nexus_client"):
            assert module.split(".")[1].startswith("_"), name


def test_never_imports_the_daemon() -> None:
    code = ("import sys, nexus_client, nexus_client._cli; "
            "bad = sorted(m for m in sys.modules if m == 'nexusd' or m.startswith('nexusd.')); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_script_entry_point() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "nexus"]
    assert ep.value == "nexus_client._cli:main"
    assert ep.load() is nexus_client._cli.main
