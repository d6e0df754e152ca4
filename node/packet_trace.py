"""Per-packet debug lines for the one client named by ``log_client``.

Debugging one misbehaving device should not mean logging every client's
every packet. The connection makes a ``PacketTrace`` at CONNECT only for the
client whose id is ``log_client``, and only when ``raftmq.trace`` logs at
debug; every other connection keeps ``trace = None`` and pays one attribute
test per batch of packets read and per write.

Each line is a summary: direction, packet type, packet id, topic or filters,
QoS, retain, dup, payload length and reason codes. Payloads, passwords and
properties are never written. Outgoing bytes are decoded again by a decoder
of the trace's own, so the trace shows exactly what went on the wire.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .codec import Decoder
from .packets import Connack, Connect, Packet, Publish, Suback, Subscribe, Unsuback, Unsubscribe
from .wire import MQTTProtocolError

log = logging.getLogger("raftmq.trace")


def start_trace(client_id: str, protocol_level: int) -> PacketTrace | None:
    """A trace for the ``log_client`` client, or None when debug lines would be dropped."""
    if not log.isEnabledFor(logging.DEBUG):
        return None
    log.debug("client %r: tracing its packets (log_client)", client_id)
    return PacketTrace(client_id, protocol_level)


class PacketTrace:
    """Logs a summary of each packet one client sends and receives."""

    __slots__ = ("_outgoing", "client_id")

    def __init__(self, client_id: str, protocol_level: int) -> None:
        self.client_id = client_id
        self._outgoing: Decoder | None = Decoder(protocol_level=protocol_level)
        """None once it failed: the trace then says so and stops decoding what goes out."""

    def incoming(self, packets: Iterable[Packet]) -> None:
        for packet in packets:
            log.debug("client %r in  %s", self.client_id, summary(packet))

    def outgoing(self, chunks: list[bytes]) -> None:
        decoder = self._outgoing
        if decoder is None:
            return
        try:
            packets = decoder.feed(b"".join(chunks))
        except MQTTProtocolError as exc:
            self._outgoing = None
            log.debug("client %r out: cannot trace what follows: %s", self.client_id, exc)
            return
        for packet in packets:
            log.debug("client %r out %s", self.client_id, summary(packet))


def summary(packet: Packet) -> str:
    """``PUBLISH id=7 topic='a/b' qos=1 retain=0 dup=0 bytes=12``: never payload or password."""
    parts = [packet.type.name]
    packet_id = getattr(packet, "packet_id", None)
    if packet_id is not None:
        parts.append(f"id={packet_id}")
    if isinstance(packet, Publish):
        parts.append(
            f"topic={packet.topic!r} qos={packet.qos} retain={packet.retain:d} "
            f"dup={packet.dup:d} bytes={len(packet.payload)}"
        )
    elif isinstance(packet, Subscribe):
        parts += (f"filter={f!r} qos={opts.qos}" for f, opts in packet.subscriptions)
    elif isinstance(packet, Unsubscribe):
        parts += (f"filter={f!r}" for f in packet.topic_filters)
    elif isinstance(packet, Suback | Unsuback):
        parts.append("codes=" + ",".join(f"0x{code:02X}" for code in packet.reason_codes))
    elif isinstance(packet, Connect):
        parts.append(
            f"client_id={packet.client_id!r} protocol={packet.protocol_level} "
            f"keepalive={packet.keepalive} clean_start={packet.clean_start:d} "
            f"user={packet.username!r}"
        )
    elif isinstance(packet, Connack):
        parts.append(f"session_present={packet.session_present:d}")
    reason = getattr(packet, "reason_code", None)
    if reason is not None:
        parts.append(f"reason=0x{reason:02X}")
    return " ".join(parts)
