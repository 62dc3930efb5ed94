"""The cluster and its Redis: a Redis restarted from its append-only file
loses nothing acknowledged, and a Redis the daemon cannot use is one clear
line at start."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from cluster_procs import Cluster
from daemon_process import wait_until
from nexus_client import AsyncClient, SessionInfo, Unavailable, open_client
from redis_server import RedisServer, free_port
from test_cluster import collect, gap_free, write_until

from nexusd.store import KeyRing


@pytest.fixture
def own_redis(redis_binary: str) -> Iterator[RedisServer]:
    """A Redis of this test's own, fsyncing each write (it is killed)."""
    with RedisServer(("--appendonly", "yes", "--appendfsync", "always", "--save", "")) as r:
        yield r


@pytest.mark.parametrize("down", [0.3, 2.5], ids=["within-the-lease", "past-the-lease"])
async def test_a_redis_killed_and_restarted_from_its_aof_loses_nothing_acknowledged(
        tmp_path: Path, socket_dir: Path, own_redis: RedisServer, redis_prefix: str,
        down: float) -> None:
    """Past the lease every daemon's lease has lapsed when Redis is back:
    each lets its sessions go, and they carry on wherever they are asked for."""
    async with AsyncExitStack() as stack:
        cluster = Cluster(tmp_path, socket_dir, own_redis.url, redis_prefix, stack,
                          "--durability", "power")
        await cluster.start(2)
        async with open_client(cluster.socket(0)) as owner_side, \
                open_client(cluster.socket(1)) as writer, trio.open_nursery() as nursery:
            info = await owner_side.create_session()
            writer.set_token(info.session_id, info.token)
            seen: list[int] = []
            await nursery.start(collect, owner_side, info.session_id, seen)
            acked: dict[int, int] = {}
            stop = trio.Event()
            nursery.start_soon(write_until, writer, info.session_id, acked, stop,
                               itertools.count(1))
            await wait_until(lambda: len(acked) >= 20, "20 writes acknowledged")
            own_redis.kill()
            before = len(acked)
            await trio.sleep(down)  # writes fail meanwhile; none is acknowledged
            assert len(acked) <= before + 1  # at most one answered as Redis died
            own_redis.restart()
            await wait_until(lambda: len(acked) >= before + 20,
                             "20 writes acknowledged after the restart", bound=20)
            stop.set()
            last = max(acked.values())
            await wait_until(lambda: seen and seen[-1] >= last, "the watcher saw the last write")
            nursery.cancel_scope.cancel()
        async with open_client(cluster.socket(1)) as reader:
            reader.set_token(info.session_id, info.token)
            state = await reader.get(info.session_id)
        for i in acked:
            assert state.entries[f"w{i}"].value == i, f"acknowledged write w{i} lost"
        assert gap_free(seen), seen
        for daemon in cluster.daemons:
            assert daemon.proc is not None and daemon.proc.returncode is None  # both serve


def serve(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "data"
    return subprocess.run([sys.executable, "-m", "nexusd", "serve", "--data", str(data),
                           "--socket", str(tmp_path / "s"), "--ws", "off", "--http", "off",
                           *flags], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})


def one_error_line(result: subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]
                   ) -> str:
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    lines = [line for line in stderr.splitlines() if line.startswith("nexusd: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def test_an_unreachable_redis_is_one_clear_line(tmp_path: Path) -> None:
    port = free_port()
    result = serve(tmp_path, "--engine", f"redis://127.0.0.1:{port}/0")
    assert result.returncode == 1
    assert f"cannot reach Redis at 127.0.0.1:{port}" in one_error_line(result)


@pytest.mark.parametrize(("url", "says"), [
    ("redis://127.0.0.1:notaport/0", "port"),
    ("redis://:s3cret@127.0.0.1:6379/x", "database"),
])
def test_a_bad_redis_url_is_one_clear_line_that_hides_the_password(
        tmp_path: Path, url: str, says: str) -> None:
    result = serve(tmp_path, "--engine", url)
    assert result.returncode == 1
    line = one_error_line(result)
    assert "bad Redis URL" in line and says in line
    assert "s3cret" not in result.stderr


def test_an_engine_that_is_not_redis_is_refused_as_a_setting(tmp_path: Path) -> None:
    result = serve(tmp_path, "--engine", "http://user:pw@example.com/")
    assert result.returncode == 2
    assert "engine must be off or a Redis URL" in result.stderr
    assert "pw@" not in result.stderr


def test_a_redis_without_persistence_is_refused_unless_told_memory(tmp_path: Path,
                                                                  redis_binary: str) -> None:
    with RedisServer(("--appendonly", "no", "--save", "")) as bare:
        result = serve(tmp_path, "--engine", bare.url)
        assert result.returncode == 1
        line = one_error_line(result)
        assert "append-only file off" in line and "--durability memory" in line


async def test_a_daemon_with_another_key_ring_is_refused(
        cluster: Cluster, tmp_path: Path) -> None:
    await cluster.start(1)
    async with open_client(cluster.socket(0)) as c:
        await c.create_session()
    stranger = tmp_path / "stranger"
    stranger.mkdir(mode=0o700)
    (stranger / "keys").write_text(KeyRing.generate().to_json())
    (stranger / "keys").chmod(0o600)
    result = await trio.run_process(
        [sys.executable, "-m", "nexusd", "serve", "--data", str(stranger), "--socket",
         str(tmp_path / "s2"), "--ws", "off", "--http", "off", "--engine", cluster.url,
         "--engine-prefix", cluster.prefix], capture_stdout=True, capture_stderr=True,
        check=False, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "key ring is not the one the other daemons seal sessions with" in \
        one_error_line(result)


async def test_with_engine_replicas_a_write_is_acknowledged_only_once_a_replica_holds_it(
        tmp_path: Path, socket_dir: Path, own_redis: RedisServer, redis_prefix: str) -> None:
    replica = RedisServer(("--replicaof", "127.0.0.1", str(own_redis.port), "--save", ""))
    async with AsyncExitStack() as stack:
        stack.callback(replica.close)
        replica.start()
        cluster = Cluster(tmp_path, socket_dir, own_redis.url, redis_prefix, stack,
                          "--engine-replicas", "1")
        await cluster.start(1)
        async with open_client(cluster.socket(0)) as c:
            info = await wait_for_replica(c)
            await wait_until(lambda: ok_write(c, info.session_id), "a write acknowledged")
            replica.kill()
            with pytest.raises(Unavailable, match="replicas"):
                await c.set(info.session_id, "k", 2)  # applied on the primary alone
            replica.start()
            await wait_until(lambda: ok_write(c, info.session_id), "writes acknowledged again")


async def wait_for_replica(c: AsyncClient) -> SessionInfo:
    """Creates a session once the replica has caught up with the primary."""
    with trio.fail_after(20):
        while True:
            try:
                return await c.create_session()
            except Unavailable:
                await trio.sleep(0.1)


async def ok_write(c: AsyncClient, session_id: str) -> bool:
    try:
        await c.set(session_id, "k", 3)
    except Unavailable:
        return False
    return True


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 it signed, with its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "redis.pem", directory / "redis.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


async def test_a_redis_over_tls_with_a_password_as_its_url_says(
        tmp_path: Path, socket_dir: Path, redis_prefix: str, redis_binary: str) -> None:
    ca, cert, key = _tls_files(tmp_path)
    tls_port = free_port()
    with RedisServer(("--appendonly", "yes", "--save", "", "--tls-port", str(tls_port),
                      "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                      "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"),
                     password="s3cret") as server:
        url = f"rediss://:s3cret@127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
        async with AsyncExitStack() as stack:
            cluster = Cluster(tmp_path, socket_dir, url, redis_prefix, stack)
            await cluster.start(2)
            async with open_client(cluster.socket(0)) as a, open_client(cluster.socket(1)) as b:
                info = await a.create_session()
                b.set_token(info.session_id, info.token)
                await b.set(info.session_id, "k", "over tls")
                assert (await a.get(info.session_id, "k")).value == "over tls"
        wrong = serve(tmp_path / "wrong", "--engine",
                      f"redis://:nope@127.0.0.1:{server.port}/0")
        assert wrong.returncode == 1
        line = one_error_line(wrong)
        assert f"cannot reach Redis at 127.0.0.1:{server.port}" in line
        assert "nope" not in wrong.stderr
