"""nexusd's benchmarks: ``python -m bench [--quick]``.

Everything is measured against baselines in the same run, with the same client
processes and the same payloads, and reported as ratios (STYLE.md: no timed
assertions in tests; a benchmark that measures something else than it claims
is a defect). What each figure is:

Sync latency
    A writer process sets one key, ``{"t": <its time.monotonic_ns()>, "pad": ...}``,
    at a fixed rate (a late write goes at once; warm-up writes are discarded).
    Subscriber processes attached to the same session read each change and
    record ``receipt - t``: CLOCK_MONOTONIC is one clock for every process on
    the machine, so this is the one-way time from the writer's send to the
    subscriber's receipt. The receipt time is read right after ``recv()``
    returns, before any parsing, for every readable socket before any is
    parsed, so neither the client's parsing nor one subscriber's work delays
    another's timestamp. Every (write, subscriber) pair goes into one HDR
    histogram (hdrhistogram, 3 significant digits); p50/p90/p99/p99.9 come
    from it. The writer also records the acknowledgement round trip.
    Server, writer and subscribers are separate processes. Rows: Unix socket and
    WebSocket; 1, 1,000 and 10,000 active sessions (the measured one plus
    background sessions each kept active by one subscriber, idle otherwise);
    1 and 10 subscribers on the measured session; nexusd at its default
    durability (the run prints which).

Baselines
    The trio relay (`bench._relay`, the floor): the same transports and
    libraries as nexusd, frames decoded with plain msgpack, a ``written`` reply
    and a ``change`` frame with nexusd's fields to each subscriber; no checks,
    no state, no store (see `bench._relay_core` for exactly what it does and
    does not do). The asyncio relay (`bench._ws_relay`): the same on
    ``websockets`` with ``broadcast``. Redis (when ``redis-server`` is on PATH;
    the bench starts it on a free loopback port and a Unix socket and stops it):
    the writer sends ``HSET`` + ``PUBLISH`` of the change body nexusd would fan
    out, pipelined in one write; its persistence is set to match nexusd's
    durability (memory: none; process: append-only file, no fsync; power:
    fsync always).

Throughput
    Pipelined writes on the Unix socket: one writer keeping 128 writes
    unanswered on one session, and 8 writers keeping 32 each on a session
    each, one subscriber per session. Acknowledged writes/s at the writers and
    deliveries/s at the subscribers, counted inside a measured window after a
    warm-up; the server's CPU use in that window tells whether it was the
    bottleneck (a baseline below ~85% of a core was held back by the clients).

Fan-out
    One write to 100 subscribers (one client process), writes spaced so each
    fan-out ends before the next: the time from the writer's send until the
    last (and the first) subscriber receives it. Baseline: the trio relay
    encoding the change once per subscriber (and, for reference, once).

Memory
    RSS (/proc/PID/status VmRSS) growth of a fresh, warmed-up server per
    active session (each with one subscriber), per idle connection (handshake
    done; Unix and WebSocket, beside the relays and Redis), and nexusd's RSS
    after creating many sessions and letting them hibernate
    (``--hibernate-after 1s``), beside its own RSS when fresh.

HTTP
    The HTTP channel, paced writes as in the latency rows (200/s, one
    kept-alive connection, one request at a time) with one subscriber:
    ``PUT`` over HTTP to a Unix subscriber, a Unix write to an event-stream
    (SSE) subscriber; the writer's round trip beside that of a bare
    hypercorn+Starlette endpoint on trio (`bench._http_floor`, the floor of
    any HTTP write on this stack), and beside the 3.16 ms the Kailash Nexus
    platform publishes for its HTTP workflow execute round trip (quoted, not
    measured here).

Workflows
    Runs through one worker process (nexus_client's `Worker`) at the daemon's
    default durability (`bench._workflows`): dispatch latency (the run sent ->
    the worker's function starting), progress latency (a worker's report sent
    -> the requester's `progress` event), the execute round trip of a run of
    no steps over the Unix socket and over HTTP (``POST .../execute``) beside
    the Kailash Nexus figure above (quoted), and runs/s with 1 and 16 runs in
    flight.

``--quick`` runs a subset with fewer samples in under a minute, and says so.
Results: a table on stdout, ``bench/results/latest.json`` (and a timestamped
copy), ``bench/results/latency.png`` and ``bench/results/performance.md``.
``bench/codec.py`` and ``bench/store.py`` are separate micro-benchmarks.
"""
