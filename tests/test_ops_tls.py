"""TLS in the node (``[node] tls_cert``/``tls_key``): wss:// for clients, the CLI's
``--tls-ca`` for a self-signed certificate, federation over wss://, and what a client that
does not speak TLS gets. The certificates are made here, at test time (``cryptography``)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nacl.signing import SigningKey
from prometheus_client.parser import text_string_to_metric_families

from federation import Federation
from node.app import Node
from node.client import Client
from node.client.errors import ClientError
from node.config import ConfigError
from node.protocol.errors import ErrorCode, RpcError
from tests.conftest import fedgram, make_config
from tests.helpers import admin, fresh_code, next_of
from tests.test_ops_metrics import get

WAIT = 20.0


def self_signed(folder: Path, name: str = "cert") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fedgram test {name}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


async def https_get(port: int, path: str, ca: Path) -> bytes:
    """One HTTPS GET to 127.0.0.1:port trusting ``ca``; the whole answer."""
    ctx = ssl.create_default_context(cafile=str(ca))
    tls = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", port), ctx, server_hostname="127.0.0.1"
    )
    data = b""
    with trio.fail_after(5):
        await tls.send_all(get(path))
        try:
            while chunk := await tls.receive_some(65536):
                data += chunk
        except trio.BrokenResourceError:
            pass
    await trio.aclose_forcefully(tls)
    return data


def tls_node(data: Path, cert: Path, key: Path, **sections: Any) -> Any:
    """A config with TLS: the certificate by absolute path, the key copied into the data
    folder and named relative to it."""
    data.mkdir(parents=True, exist_ok=True)
    shutil.copy(key, data / "tls.key")
    node = {"name": data.name, "listen": "127.0.0.1:0", "log_level": "warning"}
    node |= {"tls_cert": str(cert), "tls_key": "tls.key"}
    return make_config(data, node=node, **sections)


def test_cli_login_send_history_over_wss_with_tls_ca(node_process: Any, tmp_path: Path) -> None:
    data = tmp_path / "n1"
    fedgram("init", "--data", str(data), "--name", "n1", "--listen", "127.0.0.1:0", check=True)
    cert, _ = self_signed(data, "tls")
    text = (data / "config.toml").read_text()
    text = text.replace('tls_cert = ""', 'tls_cert = "tls.pem"', 1)
    text = text.replace('tls_key = ""', 'tls_key = "tls.key"', 1)
    (data / "config.toml").write_text(text)
    node = node_process("n1")
    assert node.url.startswith("wss://127.0.0.1:")
    for name in ("alice", "bob"):
        fedgram("user", "add", name, "--data", str(data), check=True)
    code = fedgram("user", "code", "alice", "--data", str(data), check=True).stdout.strip()
    prof = str(tmp_path / "alice")

    # without the certificate the client refuses the node, and says what to do
    r = fedgram("client", "login", node.url, "alice", "--code", code, "--profile", prof)
    assert r.returncode != 0
    assert "not trusted" in r.stderr and "--tls-ca" in r.stderr
    # with another self-signed certificate: refused the same way
    other, _ = self_signed(tmp_path / "other", "other")
    r = fedgram(
        "client", "login", node.url, "alice", "--code", code, "--profile", prof,
        "--tls-ca", str(other),
    )  # fmt: skip
    assert r.returncode != 0 and "not trusted" in r.stderr
    # a CA file that does not exist: a clear local error
    r = fedgram(
        "client", "login", node.url, "alice", "--code", code, "--profile", prof,
        "--tls-ca", str(tmp_path / "missing.pem"),
    )  # fmt: skip
    assert r.returncode != 0 and "no such CA file" in r.stderr

    r = fedgram(
        "client", "login", node.url, "alice", "--code", code, "--profile", prof,
        "--tls-ca", str(cert),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "logged in as alice" in r.stdout
    # later commands reuse the CA saved in the profile
    fedgram("client", "send", "@bob", "over tls", "--profile", prof, check=True)
    r = fedgram("client", "history", "@bob", "--profile", prof, "--json", check=True)
    assert "over tls" in r.stdout
    # $SSL_CERT_FILE is honoured by the default context (no --tls-ca)
    code = fedgram("user", "code", "bob", "--data", str(data), check=True).stdout.strip()
    r = fedgram(
        "client", "login", node.url, "bob", "--code", code, "--profile", str(tmp_path / "bob"),
        env={"SSL_CERT_FILE": str(cert)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert node.stop() == 0


async def test_plain_http_and_garbage_on_a_tls_port(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "certs")
    cfg = tls_node(tmp_path / "n", cert, key, timeouts={"handshake": 2.0})
    async with Node.start(cfg) as node:
        assert node.url.startswith("wss://")
        for junk in (get("/health"), b"\x00\xff" * 100):
            # not TLS: the handshake fails and the node closes the connection, answering
            # nothing in plain text
            stream = await trio.open_tcp_stream("127.0.0.1", node.port)
            with trio.fail_after(5):
                await stream.send_all(junk)
                try:
                    got = await stream.receive_some(100)
                except trio.BrokenResourceError:
                    got = b""
            assert not got.startswith(b"HTTP")
            await stream.aclose()
        # and /health over HTTPS, a session over wss://, all still fine
        data = await https_get(node.port, "/health", cert)
        assert data.startswith(b"HTTP/1.1 200")
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["node_id"] == node.node_id
        async with Client.connect(node.url, tls_ca=cert) as c:
            assert (await c.call("system.ping", {"ping_id": 7}))["ping_id"] == 7
        with pytest.raises(RpcError) as e:
            async with Client.connect(node.url):
                pass
        assert e.value.code == ErrorCode.CONNECTION_LOST and "not trusted" in e.value.message
        with pytest.raises(ClientError):
            async with Client.connect(node.url, tls_ca=tmp_path / "none.pem"):
                pass


async def test_bad_certificate_is_refused_at_start(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "certs")
    other_cert, _ = self_signed(tmp_path / "certs", "other")
    with pytest.raises(ConfigError, match="tls_cert"):
        async with Node.start(tls_node(tmp_path / "a", other_cert, key)):
            pass
    with pytest.raises(ConfigError, match="no such file"):
        async with Node.start(tls_node(tmp_path / "b", tmp_path / "x.pem", key)):
            pass
    with pytest.raises(ConfigError, match="set together"):
        make_config(tmp_path / "c", node={"tls_cert": str(cert)})


async def test_federation_over_wss_with_tls_ca(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "certs")
    async with AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(
                Node.start(
                    tls_node(
                        tmp_path / f"n{i}",
                        cert,
                        key,
                        federation={"peering": "open", "tls_ca": str(cert)},
                    ),
                    parts=[Federation()],
                )
            )
            for i in (1, 2)
        ]
        assert a.url.startswith("wss://") and b.url.startswith("wss://")
        await admin(a, "admin.peerAdd", {"url": b.url})
        await admin(b, "admin.peerAdd", {"url": a.url})
        with trio.fail_after(WAIT):
            for n in (a, b):
                while not any(
                    p["link"] == "up" for p in (await admin(n, "admin.peerList"))["peers"]
                ):
                    await trio.sleep(0.05)
        await admin(a, "admin.userAdd", {"name": "alice"})
        await admin(b, "admin.userAdd", {"name": "bob"})
        async with tls_client(a, "alice", cert) as al, tls_client(b, "bob", cert) as bo:
            chat = (await bo.call("chats.startPrivate", {"user": "alice@n1"}))["chat"]["id"]
            await al.call("messages.send", {"chat": chat, "random_id": 1, "text": "across wss"})
            with trio.fail_after(WAIT):
                while True:
                    ev = (await next_of(bo, "chat.event"))["event"]
                    if ev["kind"] == "message":
                        break
            assert ev["body"]["text"] == "across wss" and ev["sender"] == "alice@n1"
        # federation's gauges, scraped over HTTPS
        text = (await https_get(a.port, "/metrics", cert)).split(b"\r\n\r\n", 1)[1]
        found = {
            s.name: s.value
            for f in text_string_to_metric_families(text.decode())
            for s in f.samples
        }
        assert found["fedgram_federation_links_up"] == 1
        assert found["fedgram_federation_outbox"] == 0


@asynccontextmanager
async def tls_client(node: Node, name: str, ca: Path) -> AsyncIterator[Client]:
    """A client of a wss:// node, trusting ``ca``, signed in as NAME."""
    async with Client.connect(node.url, tls_ca=ca) as c:
        await c.sign_in(name, await fresh_code(node, name), SigningKey.generate(), "dev")
        yield c


async def test_wss_to_a_plain_node_fails_at_once_and_says_why(tmp_path: Path) -> None:
    async with Node.start(make_config(tmp_path / "n")) as node:
        url = node.url.replace("ws://", "wss://")
        start = time.monotonic()
        with pytest.raises(RpcError) as e:
            async with Client.connect(url):
                pass
        assert time.monotonic() - start < 5  # not the 10 s timeout
        assert e.value.code == ErrorCode.CONNECTION_LOST
        assert "TLS failed" in e.value.message and "ws://" in e.value.message
