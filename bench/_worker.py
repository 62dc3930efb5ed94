"""A client process of the bench: ``python -m bench._worker``.

It reads one JSON command per line on stdin and answers with JSON lines on
stdout (``{"id": N, "event": "ready" | "result" | "error", ...}``); the
orchestrator (`bench._procs.Worker`) drives it. Between commands it keeps
the connections it holds (background sessions, idle connections, writers)
read, so that no server ever waits on it.

Commands, by ``op``:

- ``open_writer``: connect, create the measured session; held by name.
- ``write``: paced writes on a held writer, the writer's send time in each
  value; waits for every acknowledgement.
- ``subscribe``: connect k subscribers to a session; says ``ready``; records
  every change's receipt until each has what it expects, then answers
  (latency histogram, fan-out times, or counts in a time window).
- ``pipeline``: sustained writes with a window of unanswered ones per writer.
- ``keep``: grows a set of background sessions, each attached by a held
  connection, so that they stay active.
- ``idle`` / ``release``: open and hold handshaken connections; close them.
- ``dormant``: create sessions and let them be.
- ``close``: close what is held under a name.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import select
import selectors
import sys
import time
import traceback
from array import array
from collections import deque
from typing import Any, Final

import nexus_protocol as p
from hdrh.histogram import HdrHistogram
from nexus_protocol import NEED_DATA, Encoding, decode_body, decode_json, encode_body, encode_json

from ._client import (
    NexusClient,
    RedisClient,
    Target,
    raise_nofile_limit,
    resp_command,
)
from ._http_client import HttpWriter, SseSubscriber

now_ns = time.monotonic_ns

#: Histograms hold nanoseconds, from 1 ns to 60 s, at 3 significant digits.
HIST_RANGE: Final = (1, 60_000_000_000, 3)
#: Request ids of the measured paths, far from those of the setup requests.
_HOT_IDS: Final = 1 << 30


def new_histogram() -> HdrHistogram:
    return HdrHistogram(*HIST_RANGE)


def histogram_of(samples: array[int] | list[int]) -> str:
    h = new_histogram()
    for v in samples:
        h.record_value(max(1, v))
    return h.encode().decode()  # type: ignore[no-any-return]


# What a body holds right after its (one-byte) map header: the tag comes first.
_WRITTEN: Final = b"\xa1t\xa7written"
_CHANGE: Final = b"\xa1t\xa6change"
_LAGGED: Final = b"\xa1t\xa6lagged"


class Writer:
    """A held writer connection and its session: a new one, or `session_id`
    (with its `token`) shared with a writer on another transport."""

    def __init__(self, target: Target, session_id: str | None = None,
                 token: str | None = None) -> None:
        self.target = target
        self.redis = target.proto == "redis"
        self.http = target.proto in ("http", "http-floor")
        self.ids = itertools.count(_HOT_IDS)
        self.seq = 0
        if self.http:
            self.client = HttpWriter(target, session_id, token)
            self.session_id, self.token = self.client.session_id, self.client.token
        elif self.redis:
            self.client: Any = RedisClient(target)
            self.session_id = session_id or "bench:" + secrets.token_hex(8)
            self.token = ""
            self.client.command("HSET", self.session_id, "k", b"")
        else:
            self.client = NexusClient(target, client="bench-writer")
            if session_id is None:
                created = self.client.request(p.Create(id=self.client.next_id(), ttl=86400.0))
                assert isinstance(created, p.Created)
                self.session_id, self.token = created.session_id, created.token
            else:
                # Proves the token once; the connection keeps the grant, so the
                # measured writes go without it, like the creator's.
                self.session_id, self.token = session_id, token or ""
                self.client.request(p.Get(id=self.client.next_id(), session_id=session_id,
                                          key="k", token=token))
            # The measured paths read this connection without the Connection
            # object; nothing may be left in its buffer.
            assert self.client.conn.buffered == 0
        self.fd = self.client.fileno()

    def frame(self, value: Any) -> tuple[bytes, int]:
        """The bytes of one write of `value`, and the number of replies it gets."""
        if self.http:
            return self.client.frame(value), 1
        if self.redis:
            self.seq += 1
            body = encode_body(p.Change(session_id=self.session_id, seq=self.seq, op="set",
                                        ts=time.time(), channel="bench", writer="bench-writer",
                                        key="k", value=value, version=self.seq))
            return (resp_command("HSET", self.session_id, "k", body)
                    + resp_command("PUBLISH", self.session_id, body)), 2
        link = self.client.link
        rid = next(self.ids)
        encode = encode_json if link.encoding is Encoding.JSON else encode_body
        return link.frame(encode(p.Set(id=rid, session_id=self.session_id, key="k",
                                       value=value))), 1

    def send(self, data: bytes) -> None:
        if self.redis or self.http:
            self.client.send(data)
        else:
            self.client.link.send(data)

    def replies(self) -> int:
        """How many replies one readable event brought; raises on an error reply.

        A `written` reply is recognised by its tag alone: the writer must not
        be what limits a throughput run."""
        if self.http:
            return self.client.replies()  # type: ignore[no-any-return]
        if self.redis:
            data = self.client.recv()
            if not data:
                raise ConnectionError("redis closed the writer's connection")
            out = self.client.parser.feed(data)
            for r in out:
                if isinstance(r, Exception):
                    raise r
            return len(out)
        link = self.client.link
        data = link.recv()
        if not data:
            raise ConnectionError("the server closed the writer's connection")
        n = 0
        decode = decode_json if link.encoding is Encoding.JSON else decode_body
        for body in link.bodies(data):
            if body[1:11] == _WRITTEN:
                n += 1
                continue
            reply = decode(body, p.DEFAULT_LIMITS)
            if isinstance(reply, p.Error):
                raise RuntimeError(f"write refused: {reply.code}: {reply.message}")
            if isinstance(reply, p.Written):
                n += 1
        return n

    def close(self) -> None:
        self.client.close()




class Subscriber:
    """One subscriber connection of a measured session."""

    def __init__(self, target: Target, session_id: str, token: str, index: int,
                 lean: bool = False) -> None:
        self.redis = target.proto == "redis"
        self.http = target.proto == "http"
        self.changes = 0
        self.lagged = False
        self.closed = False
        self.lean = False
        if self.http:
            self.client = SseSubscriber(target, session_id, token)
        elif self.redis:
            self.client: Any = RedisClient(target)
            self.client.send(resp_command("SUBSCRIBE", session_id))
            self.client.replies(1)
        else:
            self.client = NexusClient(target, client=f"bench-sub{index}")
            self.client.request(p.Attach(id=self.client.next_id(), session_id=session_id,
                                         token=token or None, scope="read"))
            if lean:
                conn = self.client.conn
                while conn.next_event() is not NEED_DATA:
                    pass
                # Counting reads frame tags without the Connection; possible
                # only if it holds no partial frame.
                self.lean = conn.buffered == 0
        self.fd = self.client.fileno()

    def count_in(self, data: bytes) -> int:
        """How many changes `data` completes, reading only each frame's tag
        (the throughput runs: the client must not be what limits them)."""
        if not self.lean:
            return len(self.changes_in(data))
        if not data:
            self.closed = True
            return 0
        n = 0
        for body in self.client.link.bodies(data):
            tag = body[1:10]
            if tag == _CHANGE:
                n += 1
            elif tag == _LAGGED:
                self.lagged = self.closed = True
        if self.client.link.closed:
            self.closed = True
        return n

    def recv(self) -> bytes:
        return self.client.recv() if self.redis or self.http else self.client.link.recv()

    def changes_in(self, data: bytes) -> list[Any]:
        """The `t` of each change `data` completes, in order."""
        out = []
        if self.http:
            out = self.client.changes_in(data)
            self.lagged, self.closed = self.client.lagged, self.client.closed
            return out
        if self.redis:
            if not data:
                self.closed = True
                return out
            for item in self.client.parser.feed(data):
                if type(item) is list and item[0] == b"message":
                    change = decode_body(item[2], p.DEFAULT_LIMITS)
                    out.append(change.value["t"])  # type: ignore[attr-defined]
            return out
        client = self.client
        conn = client.conn
        if data:
            for piece in client.link.feed(data):
                conn.receive_data(piece)
        if not data or client.link.closed:
            conn.receive_data(b"")
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            kind = type(event)
            if kind is p.Change:
                out.append(event.value["t"])  # type: ignore[union-attr]
            elif kind is p.Lagged:
                self.lagged = True
                self.closed = True
            elif kind is p.ConnectionClosed:
                self.closed = True
                break
        return out

    def close(self) -> None:
        self.client.close()


class Keeper:
    """Background sessions, each attached by one held connection, so that
    the server keeps them active."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.count = 0
        self.clients: list[Any] = []

    def grow(self, n: int) -> None:
        if self.target.proto == "redis":
            self._grow_redis(n)
            return
        while self.count < n:
            if not self.clients or self.count % 5000 == 0:
                self.clients.append(NexusClient(self.target, client="bench-keeper"))
            client = self.clients[-1]
            todo = min(n - self.count, 5000 - self.count % 5000)
            creates = [p.Create(id=client.next_id(), ttl=86400.0) for _ in range(todo)]
            created = client.pipeline(creates)
            attaches = [p.Attach(id=client.next_id(), session_id=c.session_id)  # type: ignore[attr-defined]
                        for c in created]
            client.pipeline(attaches)
            client.events.clear()
            self.count += todo

    def _grow_redis(self, n: int) -> None:
        if not self.clients:
            self.clients.append(RedisClient(self.target))
        client = self.clients[0]
        while self.count < n:
            todo = min(n - self.count, 1000)
            names = [f"bg:{self.count + i}" for i in range(todo)]
            client.send(resp_command("SUBSCRIBE", *names))
            client.replies(todo)
            self.count += todo

    def close(self) -> None:
        for c in self.clients:
            c.close()


def drain(client: Any) -> bool:
    """Reads what a held connection got; False once it is closed."""
    try:
        if isinstance(client, RedisClient):
            data = client.recv()
            client.parser.feed(data)
            return bool(data)
        if isinstance(client, HttpWriter):
            return bool(client.sock.recv(65536))  # nothing comes unasked
        data = client.link.recv()
        for piece in client.link.feed(data):
            client.conn.receive_data(piece)
        if not data or client.link.closed:
            return False
        while client.conn.next_event() is not NEED_DATA:
            pass
        return True
    except OSError:
        return False


class Worker:
    def __init__(self) -> None:
        self.held: dict[str, Any] = {}
        self.selector = selectors.DefaultSelector()
        self.selector.register(0, selectors.EVENT_READ, None)

    def emit(self, **fields: Any) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    # --------------------------------------------------------------- holding

    def _hold(self, name: str, obj: Any) -> None:
        self.held[name] = obj
        for client in self._clients(obj):
            self.selector.register(client.fileno(), selectors.EVENT_READ, client)

    def _clients(self, obj: Any) -> list[Any]:
        if isinstance(obj, Writer):
            return [obj.client]
        if isinstance(obj, Keeper):
            return obj.clients
        return list(obj)

    def _unhold(self, name: str) -> Any:
        obj = self.held.pop(name, None)
        if obj is not None:
            for client in self._clients(obj):
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(client.fileno())
        return obj

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        buf = b""
        while True:
            for key, _ in self.selector.select():
                if key.data is None:
                    chunk = os.read(0, 1 << 20)
                    if not chunk:
                        return
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        self.dispatch(json.loads(line))
                elif not drain(key.data):
                    self.selector.unregister(key.fd)
                    key.data.close()  # the server ended it; let the socket go too

    def dispatch(self, cmd: dict[str, Any]) -> None:
        cid = cmd.pop("id")
        op = cmd.pop("op")
        try:
            result = getattr(self, f"op_{op}")(cid, **cmd)
        except Exception as exc:
            self.emit(id=cid, event="error", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc())
        else:
            self.emit(id=cid, event="result", **(result or {}))

    # ------------------------------------------------------------ operations

    def op_open_writer(self, cid: int, name: str, target: dict[str, str],
                       session_id: str | None = None, token: str | None = None
                       ) -> dict[str, Any]:
        old = self._unhold(name)
        if old is not None:
            old.close()
        writer = Writer(Target.from_dict(target), session_id, token)
        # A writer is read only by `write` and `pipeline`, never while idle.
        self.held[name] = writer
        return {"session_id": writer.session_id, "token": writer.token}

    def op_close(self, cid: int, name: str) -> None:
        obj = self._unhold(name)
        if obj is not None:
            if isinstance(obj, list):
                for c in obj:
                    c.close()
            else:
                obj.close()

    def op_write(self, cid: int, name: str, rate: float, count: int, pad: str,
                 warmup: int = 0, timeout_s: float = 60.0) -> dict[str, Any]:
        """`count` writes at `rate` per second, paced from a fixed schedule (a
        late write goes at once, so lateness does not accumulate)."""
        w: Writer = self.held[name]
        interval = 1e9 / rate
        ep = select.epoll()
        ep.register(w.fd, select.EPOLLIN)
        pending: deque[int] = deque()  # send times, in order (replies come in order)
        per_write: deque[int] = deque()
        ack = array("q")
        late_max = 0
        sent = acked = 0
        start = now_ns() + 2_000_000
        deadline = time.monotonic() + timeout_s
        try:
            while acked < count:
                now = now_ns()
                due = start + int(sent * interval)
                if sent < count and now >= due:
                    late_max = max(late_max, now - due)
                    t = now_ns()
                    data, n = w.frame({"t": t, "pad": pad})
                    w.send(data)
                    pending.append(t)
                    per_write.append(n)
                    sent += 1
                    continue
                wait = (due - now) / 1e9 if sent < count else 1.0
                if not ep.poll(wait):
                    if sent >= count and time.monotonic() > deadline:
                        raise TimeoutError(f"{count - acked} writes unacknowledged")
                    continue
                replies = w.replies()
                ts = now_ns()
                for _ in range(replies):
                    per_write[0] -= 1
                    if per_write[0] == 0:
                        per_write.popleft()
                        t0 = pending.popleft()
                        if acked >= warmup:
                            ack.append(ts - t0)
                        acked += 1
        finally:
            ep.close()
        return {"sent": sent, "acked": acked, "ack_hist": histogram_of(ack),
                "late_max_ns": late_max, "elapsed_ns": now_ns() - start}

    def op_subscribe(self, cid: int, target: dict[str, str], sessions: list[list[str]],
                     k: int, expected: int, mode: str = "latency", skip: int = 0,
                     window: list[int] | None = None,
                     timeout_s: float = 60.0) -> dict[str, Any]:
        """k subscribers to each of `sessions` ([session_id, token] pairs);
        `ready`, then records until each saw `expected` changes or `timeout`.

        mode "latency": every (receipt - send) after the first `skip` per
        subscriber, as an HDR histogram. mode "fanout": per write, the time
        until the first and the last subscriber received it. mode "count":
        changes received inside `window` (monotonic ns), counted from the
        frames' tags only."""
        tgt = Target.from_dict(target)
        subs = [Subscriber(tgt, sid, token, i, lean=mode == "count")
                for sid, token in sessions for i in range(k)]
        by_fd = {s.fd: s for s in subs}
        ep = select.epoll()
        for s in subs:
            ep.register(s.fd, select.EPOLLIN)
        samples = array("q")
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        seen: dict[int, int] = {}
        counted = 0
        w0, w1 = window or (0, 0)
        open_subs = len(subs)
        self.emit(id=cid, event="ready")
        deadline = time.monotonic() + timeout_s
        try:
            while open_subs and time.monotonic() < deadline:
                # Every socket is read, and its receipt time taken, until none
                # is readable, before anything is parsed: parsing never delays
                # a receipt (a fan-out's frames arrive over milliseconds).
                got = []
                ready = ep.poll(0.5)
                while ready:
                    for fd, _ in ready:
                        s = by_fd[fd]
                        data = s.recv()
                        got.append((s, data, now_ns()))
                        if not data:
                            ep.unregister(fd)  # EOF stays readable; parsed below
                    ready = ep.poll(0) if len(got) < 4096 else []
                for s, data, ts in got:
                    if s.closed:
                        continue
                    if mode == "count":
                        n = s.count_in(data)
                        s.changes += n
                        if w0 <= ts < w1:
                            counted += n
                    else:
                        for t in s.changes_in(data):
                            s.changes += 1
                            if s.changes <= skip:
                                continue
                            if mode == "latency":
                                samples.append(ts - t)
                            else:
                                if t not in first:
                                    first[t] = ts
                                last[t] = ts
                                seen[t] = seen.get(t, 0) + 1
                    if s.closed or s.changes >= expected or (mode == "count" and ts >= w1):
                        s.closed = True
                        with contextlib.suppress(KeyError, FileNotFoundError):
                            ep.unregister(s.fd)
                        open_subs -= 1
        finally:
            ep.close()
            for s in subs:
                s.close()
        result: dict[str, Any] = {
            "changes": [s.changes for s in subs],
            "lagged": sum(s.lagged for s in subs),
            "complete": sum(s.changes >= expected for s in subs),
        }
        if mode == "latency":
            result["hist"] = histogram_of(samples)
        elif mode == "fanout":
            whole = [t for t, n in seen.items() if n == len(subs)]
            result["to_last_ns"] = [last[t] - t for t in whole]
            result["to_first_ns"] = [first[t] - t for t in whole]
            result["incomplete_writes"] = len(seen) - len(whole)
        else:
            result["counted"] = counted
        return result

    def op_pipeline(self, cid: int, names: list[str], window: int, pad: str, start_ns: int,
                    measure: tuple[int, int], stop_ns: int) -> dict[str, Any]:
        """Each named writer keeps `window` writes unanswered from `start_ns`
        to `stop_ns`; counts the acknowledgements inside `measure`."""
        writers: list[Writer] = [self.held[n] for n in names]
        by_fd = {w.fd: w for w in writers}
        # The same value every time: only the request id changes, so the
        # frames are encoded once before the clock starts.
        value = {"t": 0, "pad": pad}
        frames: dict[int, list[tuple[bytes, int]]] = {
            w.fd: [w.frame(value) for _ in range(4 * window)] for w in writers}
        cursor = dict.fromkeys(by_fd, 0)
        outstanding = dict.fromkeys(by_fd, 0)
        acks_in = 0
        acks = 0
        ep = select.epoll()
        for w in writers:
            ep.register(w.fd, select.EPOLLIN)

        per = 2 if writers[0].redis else 1  # replies per write

        def top_up(w: Writer) -> None:
            ring = frames[w.fd]
            batch = []
            while outstanding[w.fd] < window * per:
                data, n = ring[cursor[w.fd] % len(ring)]
                cursor[w.fd] += 1
                outstanding[w.fd] += n
                batch.append(data)
            if batch:
                w.send(b"".join(batch))

        while now_ns() < start_ns:
            time.sleep(max(0.0, (start_ns - now_ns()) / 1e9))
        try:
            for w in writers:
                top_up(w)
            while True:
                now = now_ns()
                if now >= stop_ns:
                    break
                for fd, _ in ep.poll(0.2):
                    w = by_fd[fd]
                    n = w.replies()
                    ts = now_ns()
                    outstanding[fd] -= n
                    acks += n
                    if measure[0] <= ts < measure[1]:
                        acks_in += n
                    if ts < stop_ns:
                        top_up(w)
            # Let the writes in flight finish, so the next run starts clean.
            end = time.monotonic() + 10
            while any(outstanding.values()) and time.monotonic() < end:
                for fd, _ in ep.poll(0.2):
                    outstanding[fd] -= by_fd[fd].replies()
        finally:
            ep.close()
        return {"acked": acks // per, "acked_in_window": acks_in // per,
                "window_s": (measure[1] - measure[0]) / 1e9}

    def op_keep(self, cid: int, name: str, target: dict[str, str], count: int) -> dict[str, Any]:
        keeper = self.held.get(name)
        if keeper is None:
            keeper = Keeper(Target.from_dict(target))
        else:
            self._unhold(name)
        t0 = time.monotonic()
        keeper.grow(count)
        self._hold(name, keeper)
        return {"count": keeper.count, "elapsed": time.monotonic() - t0}

    def op_idle(self, cid: int, name: str, target: dict[str, str], count: int) -> dict[str, Any]:
        tgt = Target.from_dict(target)
        t0 = time.monotonic()
        clients: list[Any] = []
        for _ in range(count):
            if tgt.proto == "redis":
                c: Any = RedisClient(tgt)
                c.command("PING")
            else:
                c = NexusClient(tgt, client="bench-idle")
            clients.append(c)
        self._hold(name, clients)
        return {"count": len(clients), "elapsed": time.monotonic() - t0}

    def op_dormant(self, cid: int, target: dict[str, str], count: int,
                   connections: int = 4) -> dict[str, Any]:
        """Creates `count` sessions over `connections` connections, pipelined."""
        tgt = Target.from_dict(target)
        t0 = time.monotonic()
        clients = [NexusClient(tgt, client="bench-dormant") for _ in range(connections)]
        todo = [count // connections + (i < count % connections) for i in range(connections)]
        window = 200
        sent = [0] * connections
        done = [0] * connections
        ep = select.epoll()
        by_fd = {}
        for i, c in enumerate(clients):
            ep.register(c.fileno(), select.EPOLLIN)
            by_fd[c.fileno()] = i
        try:
            def top_up(i: int) -> None:
                c = clients[i]
                batch = []
                while sent[i] < todo[i] and sent[i] - done[i] < window:
                    batch.append(c.link.wrap(c.conn.send(p.Create(
                        id=c.next_id(), ttl=86400.0, idle_timeout=86400.0))))
                    sent[i] += 1
                if batch:
                    c.link.send(b"".join(batch))

            for i in range(connections):
                top_up(i)
            deadline = time.monotonic() + 600
            while sum(done) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"created {sum(done)} of {count}")
                for fd, _ in ep.poll(1.0):
                    i = by_fd[fd]
                    c = clients[i]
                    data = c.link.recv()
                    if not data:
                        raise ConnectionError("the server closed a connection")
                    for piece in c.link.feed(data):
                        c.conn.receive_data(piece)
                    while (event := c.conn.next_event()) is not NEED_DATA:
                        if isinstance(event, p.Error):
                            raise RuntimeError(f"create refused: {event.code}: {event.message}")
                        if isinstance(event, p.Created):
                            done[i] += 1
                    top_up(i)
        finally:
            ep.close()
            for c in clients:
                c.close()
        return {"count": sum(done), "elapsed": time.monotonic() - t0}

    def op_release(self, cid: int, name: str) -> None:
        self.op_close(cid, name)


def main() -> None:
    raise_nofile_limit()
    with contextlib.suppress(KeyboardInterrupt):
        Worker().run()


if __name__ == "__main__":
    main()
