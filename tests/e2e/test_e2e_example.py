"""examples/cross_channel.py runs against a real daemon and prints what
examples/cross_channel.out.txt shows (ids aside: they are random)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ._procs import CLI_TIMEOUT, DaemonProcess, clean_environ

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def without_ids(text: str) -> str:
    """The example prints ids shortened to eight characters and an ellipsis."""
    return re.sub(r"\S{8}…", "<id>…", text)


def test_cross_channel_example_prints_its_documented_output(daemon: DaemonProcess,
                                                             home: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "cross_channel.py"), "--url", daemon.ws_url],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL,
        env={**clean_environ(home), "NEXUS_SOCKET": str(daemon.socket)})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    expected = (EXAMPLES / "cross_channel.out.txt").read_text()
    assert without_ids(done.stdout) == without_ids(expected)
    # Every change reached the watcher, once, in order.
    watched = re.findall(r"\[websocket\] seq=(\d+) ", done.stdout)
    assert [int(s) for s in watched] == list(range(1, 7))
