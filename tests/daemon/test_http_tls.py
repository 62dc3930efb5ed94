"""With --tls-cert and --tls-key, the HTTP channel serves https://."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import httpx
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from raw_client import TIMEOUT, make_config, run_daemon


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_https(tmp_path: Path, socket_dir: Path) -> None:
    cert, key = _self_signed(tmp_path)
    config = make_config(tmp_path / "data", socket_dir, http="127.0.0.1:0", tls_cert=cert,
                         tls_key=key)
    trusted = ssl.create_default_context(cafile=str(cert))
    async with run_daemon(config) as daemon:
        base = f"https://127.0.0.1:{daemon.http_port}"
        with trio.fail_after(TIMEOUT):
            async with httpx.AsyncClient(base_url=base, verify=trusted, timeout=None) as client:
                r = await client.post("/sessions")
                assert r.status_code == 201 and r.url.scheme == "https"
                auth = {"Authorization": f"Bearer {r.json()['token']}"}
                sid = r.json()["session_id"]
                r = await client.put(f"/sessions/{sid}/data/k", json=[1, 2], headers=auth)
                assert r.json()["seq"] == 1
            # Plain HTTP on the TLS port is not served.
            async with httpx.AsyncClient(base_url=base.replace("https", "http"),
                                         timeout=None) as plain:
                try:
                    r = await plain.get("/openapi.json")
                except httpx.HTTPError:
                    pass
                else:
                    raise AssertionError(f"served over plain HTTP: {r.status_code}")
