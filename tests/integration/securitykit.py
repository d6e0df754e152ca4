"""Helpers for the TLS, authentication and ACL tests: certificates, TLS raw clients, SIGHUP.

Certificates are made fresh for every test with ``raftmq.cluster.tools.certgen`` (the
code behind ``raftmq certs init``), including the odd ones a test needs: a
client certificate from another CA, an expired one, one naming a user.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rawmqtt import CONNECT, RawClient, binary, encode_properties, packet, utf8

from raftmq.cluster.tools.certgen import Issued, make_ca, make_certificate, write_cert, write_issued

if TYPE_CHECKING:
    from conftest import RunningBroker

TIMEOUT = 5.0
LISTENING = re.compile(r"listening on (\w+)://([\d.]+):(\d+)")


@dataclass
class CertSet:
    """A CA with a server and a client certificate in ``directory``; issues more on demand."""

    directory: Path
    ca: Issued = field(repr=False)

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    def files(self, stem: str) -> tuple[Path, Path]:
        return self.directory / f"{stem}.crt", self.directory / f"{stem}.key"

    def issue_client(
        self,
        stem: str,
        common_name: str,
        *,
        expired: bool = False,
        other_ca: bool = False,
    ) -> tuple[Path, Path]:
        """A client certificate (and key) named ``stem``; return (cert, key) paths."""
        issuer = make_ca("some other CA") if other_ca else self.ca
        kwargs: dict[str, Any] = {}
        if expired:
            now = datetime.datetime.now(datetime.UTC)
            kwargs = {
                "not_before": now - datetime.timedelta(days=30),
                "not_after": now - datetime.timedelta(days=1),
            }
        write_issued(
            self.directory, stem, make_certificate(issuer, common_name, client=True, **kwargs)
        )
        return self.files(stem)

    def node_keys(self, **extra: object) -> dict[str, object]:
        """Config keys for a node serving this set's server certificate."""
        cert, key = self.files("server")
        return {"tls_cert": str(cert), "tls_key": str(key), **extra}

    def mtls_keys(self, **extra: object) -> dict[str, object]:
        return self.node_keys(tls_ca=str(self.ca_file), tls_require_client_cert=True, **extra)


def make_cert_set(directory: Path) -> CertSet:
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    write_cert(directory / "ca.crt", ca.cert)
    server = make_certificate(ca, "localhost", server_names=["localhost", "127.0.0.1"])
    write_issued(directory, "server", server)
    certs = CertSet(directory, ca)
    certs.issue_client("client", "client")
    return certs


def listener_port(broker: RunningBroker, scheme: str) -> int:
    """The port the node printed for its ``scheme`` listener."""
    for line in broker.output:
        m = LISTENING.search(line)
        if m and m.group(1) == scheme:
            return int(m.group(3))
    raise AssertionError(f"node printed no {scheme} listener: {broker.output}")


def listening_lines(broker: RunningBroker) -> list[str]:
    return [line for line in broker.output if LISTENING.search(line)]


def client_context(
    certs: CertSet,
    cert: tuple[Path, Path] | None = None,
    *,
    tls_max: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A client context trusting ``certs``' CA, optionally presenting a certificate."""
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    if tls_max is not None:
        context.maximum_version = tls_max
    return context


class TlsRawClient(RawClient):
    """``RawClient`` over TLS: every byte still chosen and checked by the test."""

    def __init__(
        self,
        port: int,
        context: ssl.SSLContext,
        level: int = 5,
        server_hostname: str = "localhost",
    ) -> None:
        self.level = level
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        try:
            self.sock = context.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        self.buffer = bytearray()
        self.closed_by_peer = False

    def _fill(self, deadline: float) -> None:
        # Decrypted bytes can wait inside the SSL object with nothing left on the
        # socket for select() to see.
        if self.sock.pending():  # type: ignore[attr-defined]
            self.buffer += self.sock.recv(65536)
            return
        super()._fill(deadline)


def connect_packet(
    client_id: str,
    *,
    level: int = 5,
    username: str | None = None,
    password: bytes | None = None,
    will_topic: str | None = None,
    keepalive: int = 60,
) -> bytes:
    """CONNECT with user name and password flags, which ``rawmqtt.connect`` does not set."""
    flags = 0x02
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    if will_topic is not None:
        flags |= 0x04
    name = "MQIsdp" if level == 3 else "MQTT"
    body = utf8(name) + bytes([level, flags]) + struct.pack("!H", keepalive)
    if level == 5:
        body += encode_properties([])
    body += utf8(client_id)
    if will_topic is not None:
        if level == 5:
            body += encode_properties([])
        body += utf8(will_topic) + binary(b"will")
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += binary(password)
    return packet(CONNECT << 4, body)


def sighup_and_wait(broker: RunningBroker, expect: str, timeout: float = TIMEOUT) -> str:
    """Send SIGHUP and wait for the first new log line containing ``expect``; return it."""
    seen = len(broker.output)
    os.kill(broker.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in broker.output[seen:]:
            if expect in line:
                return line
        time.sleep(0.02)
    raise AssertionError(f"no {expect!r} in the node's log after SIGHUP: {broker.output[seen:]}")
