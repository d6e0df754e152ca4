"""One client's MQTT protocol, without I/O: bytes and packets in, bytes out.

Everything MQTT says about a single connection lives here, so that it can be
tested by script with no socket and no event loop (``tests/unit/test_protocol.py``):

- which packets may come when (CONNECT first and once, AUTH never);
- the CONNECT negotiation: keep alive and server keep alive, receive maximum
  both ways, topic aliases both ways, maximum packet size, problem information;
- incoming topic alias resolution and the receive-maximum check;
- the encoding of acknowledgements and of each outgoing PUBLISH for this client
  (aliases, subscription identifiers, the client's maximum packet size);
- the QoS 1/2 exchanges a client completes (PUBACK, PUBREC, PUBREL, PUBCOMP)
  and DISCONNECT's session-expiry rule;
- the count of incoming publishes not yet acknowledged (``incoming_pending``).

Output goes into ``out``; the driver (``connection.py``) is told through its
``ClientLink`` when there is some, and writes it. The broker decides what a
CONNECT, PUBLISH or SUBSCRIBE means for the node (``docs/architecture.md``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .acl import ClientRights
from .codec import Decoder, encode
from .encoders import encode_publish_parts
from .packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
)
from .reason_codes import ReasonCode, connack_code_for
from .session import NEVER_EXPIRES
from .stats import Stats
from .wire import MQTTProtocolError

if TYPE_CHECKING:
    from .acks import OrderedAcks
    from .config import Config
    from .session import Delivery, Session

CONNECTING, CONNECTED, CLOSED = 0, 1, 2
PACKET_ID_BYTES = [i.to_bytes(2, "big") for i in range(0x10000)]
PINGRESP_BYTES = b"\xd0\x00"
PUBACK_HEADER = b"\x40\x02"
PUBREC_HEADER = b"\x50\x02"

Work = Coroutine[Any, Any, None]
"""The rest of a packet's handling, when it must wait (for the cluster): the
connection reads nothing more from the client until it is done."""


class ProtocolViolation(Exception):
    """A packet broke MQTT's rules: the connection ends with ``reason``."""

    def __init__(self, reason: int, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Disconnected(Exception):
    """Handling a packet ended the connection; stop processing what follows."""


@dataclass(slots=True, frozen=True)
class Ending:
    """Who ended a connection and why; ``client_log`` turns it into the disconnect line.

    ``by``: "client" (its DISCONNECT), "server" (the node's decision, such as a
    takeover or keep-alive timeout), "protocol" (a broken rule) or "refused"
    (a refusing CONNACK; the handshake logs it with the CONNECT's fields).
    """

    by: str
    reason: int | None
    """The reason code; None where MQTT has none (a CONNECT that never came)."""
    detail: str = ""


class ClientLink(Protocol):
    """What the protocol needs of the connection that carries it."""

    def output_ready(self) -> None:
        """``out`` went from empty to not empty: write it at the end of this loop turn."""

    def flush(self) -> None:
        """Write ``out`` now (the store committed what it acknowledges)."""

    def close(self, linger: bool = False) -> None:
        """Write what is in ``out``, then close the connection.

        ``linger``: ``out`` ends with the node's last word (a DISCONNECT or a
        refusing CONNACK), which must reach a client that may still be sending.
        """

    def connected(self) -> None:
        """CONNECT was accepted: keep-alive supervision starts (``keepalive``)."""

    def hold(self, publisher: Any) -> None:
        """Stop reading ``publisher`` (another link) until this one's client drains."""

    def peer_certificate(self) -> Any:
        """The client's TLS certificate as the ssl module gives it, or None."""


@dataclass(slots=True, frozen=True)
class Negotiated:
    """What a CONNECT asked for, as this node grants it."""

    client_id: str
    assigned: bool
    """The node made up the client id (MQTT 5 tells the client which)."""
    keepalive: int
    server_keepalive: int | None
    """Set when the node overrides the client's keep alive (MQTT 5 only)."""
    expiry_interval: int


class ClientProtocol:
    """The MQTT state of one client connection; see the module docstring."""

    # Slots: a node holds tens of thousands of these.
    __slots__ = (
        "alias_out_max",
        "aliases_in",
        "aliases_out",
        "awaiting_commit",
        "clean_disconnect",
        "client_id",
        "config",
        "decoder",
        "ended",
        "epoch",
        "incoming_pending",
        "keepalive",
        "link",
        "listener",
        "max_outgoing_size",
        "ordered_acks",
        "out",
        "peer",
        "problem_info",
        "protocol_level",
        "rights",
        "send_window",
        "session",
        "stalled",
        "state",
        "stats",
        "username",
        "write_paused",
    )

    def __init__(self, config: Config, stats: Stats, link: ClientLink, listener: str) -> None:
        self.config = config
        self.stats = stats
        self.link = link
        self.listener = listener
        """The listener's scheme (tcp, tls, ws, wss)."""
        self.peer = "?"
        self.decoder = Decoder(max_packet_size=config.max_packet_size)
        self.state = CONNECTING
        self.protocol_level = 4
        self.client_id = ""
        self.username: str | None = None
        """Who authenticated (password or TLS certificate); None for anonymous clients."""
        self.rights: ClientRights | None = None
        """What the ACL lets this client do, once it has a client id; None without an ACL."""
        self.session: Session | None = None
        self.epoch = 0
        self.keepalive = 0
        self.send_window = config.max_inflight
        """How many QoS 1/2 deliveries may be in flight to the client (its receive maximum)."""
        self.max_outgoing_size = 0
        self.problem_info = True
        self.aliases_in: dict[int, str] = {}
        self.aliases_out: dict[str, int] = {}
        self.alias_out_max = 0
        self.incoming_pending = 0
        """Incoming QoS 1/2 publishes taken but not yet acknowledged (receive maximum)."""
        self.ordered_acks: OrderedAcks | None = None
        """QoS 1 acknowledgements waiting for other nodes (made at the first such PUBLISH)."""
        self.clean_disconnect = False
        self.ended: Ending | None = None
        """Why the connection ended (the first reason wins), for its log line; None while open."""
        self.out: list[bytes] = []
        self.awaiting_commit = False
        """``out`` reports state the store has not committed yet; the store releases it."""
        self.write_paused = False
        """The driver's socket buffer is full (set by the driver)."""
        self.stalled = False
        """The client reads nothing: deliveries queue instead (set by the driver)."""

    # -- bytes in -------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Packet]:
        """Decode ``data`` into whole packets; raises ProtocolViolation on a malformed one."""
        try:
            packets = self.decoder.feed(data)
        except MQTTProtocolError as exc:
            if exc.reason_code == ReasonCode.PACKET_TOO_LARGE:
                self.stats.limits.packet_size += 1
            raise ProtocolViolation(exc.reason_code, str(exc)) from None
        self.stats.packets_received += len(packets)
        return packets

    def check_order(self, packet: Packet) -> None:
        """Before CONNECTED, only a first CONNECT may come; after it, no second one."""
        if self.state == CONNECTING:
            if not isinstance(packet, Connect):
                raise ProtocolViolation(
                    ReasonCode.PROTOCOL_ERROR, f"{packet.type.name} before CONNECT"
                )
            self.protocol_level = packet.protocol_level
        elif isinstance(packet, Connect):
            raise ProtocolViolation(ReasonCode.PROTOCOL_ERROR, "second CONNECT")

    def receive(self, packet: Packet) -> None:
        """Handle a packet the node has no say in (acks, pings, DISCONNECT, AUTH)."""
        ANSWERS[type(packet)](self, packet)

    def _on_pingreq(self, packet: Pingreq) -> None:
        self.write(PINGRESP_BYTES)

    def _on_auth(self, packet: Auth) -> None:
        # We never start enhanced authentication, so an AUTH is always out of turn.
        raise ProtocolViolation(ReasonCode.PROTOCOL_ERROR, "AUTH without an authentication method")

    def _on_puback(self, packet: Puback) -> None:
        if self.session is not None:
            self.session.acknowledge(packet.packet_id, 1)

    def _on_pubrec(self, packet: Pubrec) -> None:
        session = self.session
        if session is None:
            return
        if packet.reason_code >= 0x80:
            # The client refused the message: the exchange ends here (MQTT 5 §4.3.3).
            session.acknowledge(packet.packet_id, 2)
        elif session.received(packet.packet_id):
            self.send_pubrel(packet.packet_id)
        else:
            self.send(Pubrel(packet.packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))

    def _on_pubrel(self, packet: Pubrel) -> None:
        session = self.session
        if session is None:
            return
        if session.release_incoming(packet.packet_id):
            self.send(Pubcomp(packet.packet_id))
        else:
            self.send(Pubcomp(packet.packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))

    def _on_pubcomp(self, packet: Pubcomp) -> None:
        if self.session is not None:
            self.session.acknowledge(packet.packet_id, 2)

    def _on_disconnect(self, packet: Disconnect) -> None:
        session = self.session
        if session is not None and self.protocol_level == 5:
            expiry = packet.properties.get("session_expiry_interval")
            if expiry is not None:
                if session.expiry_interval == 0 and expiry != 0:
                    # MQTT 5 §3.14.2.2.2: a session that was to end cannot be revived here.
                    raise ProtocolViolation(
                        ReasonCode.PROTOCOL_ERROR, "session expiry set at DISCONNECT after 0"
                    )
                session.expiry_interval = expiry
        self.clean_disconnect = packet.reason_code != ReasonCode.DISCONNECT_WITH_WILL
        self.end("client", packet.reason_code)
        self.link.close()

    # -- CONNECT --------------------------------------------------------------

    def negotiate(self, packet: Connect, new_client_id: Callable[[], str]) -> Negotiated:
        """What the node grants a CONNECT, or a refusal (``refuse``) for what it cannot.

        ``new_client_id`` makes an id for a client that sent none, where MQTT allows it.
        """
        cfg = self.config
        level = packet.protocol_level
        client_id = packet.client_id
        assigned = False
        if not client_id:
            if level == 5 or (level == 4 and packet.clean_start):
                client_id = new_client_id()
                assigned = True
            else:
                self.refuse(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)
        keepalive = packet.keepalive
        server_keepalive = None
        if level == 5:
            if keepalive > cfg.max_keepalive or (keepalive == 0 and cfg.max_keepalive < 0xFFFF):
                server_keepalive = keepalive = cfg.max_keepalive
        elif keepalive > cfg.max_keepalive:
            # MQTT 3 cannot tell the client another keep alive; Mosquitto refuses it so.
            self.refuse(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)
        if level == 5:
            expiry_interval = packet.properties.get("session_expiry_interval", 0)
        else:
            expiry_interval = 0 if packet.clean_start else NEVER_EXPIRES
        return Negotiated(client_id, assigned, keepalive, server_keepalive, expiry_interval)

    def accept(
        self,
        packet: Connect,
        granted: Negotiated,
        session: Session,
        epoch: int,
        session_present: bool,
    ) -> None:
        """Take the negotiated settings and send CONNACK; the client is connected."""
        cfg = self.config
        self.client_id = granted.client_id
        self.session = session
        self.epoch = epoch
        self.keepalive = granted.keepalive
        self.state = CONNECTED
        props: Properties = {}
        if self.protocol_level == 5:
            asked = packet.properties
            self.send_window = min(cfg.max_inflight, asked.get("receive_maximum", 0xFFFF))
            self.max_outgoing_size = asked.get("maximum_packet_size", 0)
            self.alias_out_max = min(asked.get("topic_alias_maximum", 0), cfg.topic_alias_maximum)
            self.problem_info = asked.get("request_problem_information", 1) == 1
            props = {
                "receive_maximum": cfg.receive_maximum,
                "maximum_packet_size": cfg.max_packet_size,
                "topic_alias_maximum": cfg.topic_alias_maximum,
            }
            if granted.assigned:
                props["assigned_client_identifier"] = granted.client_id
            if granted.server_keepalive is not None:
                props["server_keep_alive"] = granted.server_keepalive
        self.send(Connack(session_present, 0, props))
        self.link.connected()

    def refuse(self, reason: ReasonCode, properties: Properties | None = None) -> None:
        """Refuse the CONNECT with ``reason`` and close; raises Disconnected."""
        code = connack_code_for(self.protocol_level, reason)
        props = properties if properties is not None else self.problem(reason.name.lower())
        self.end("refused", reason)
        self.send(Connack(False, code, props if self.protocol_level == 5 else {}))
        self.link.close(linger=True)
        raise Disconnected

    # -- PUBLISH in -----------------------------------------------------------

    def topic_of(self, packet: Publish) -> str:
        """The PUBLISH's topic, through its topic alias (MQTT 5 §3.3.2.3.4)."""
        topic = packet.topic
        alias = packet.properties.get("topic_alias") if packet.properties else None
        if alias is None:
            return topic
        if alias == 0 or alias > self.config.topic_alias_maximum:
            raise ProtocolViolation(ReasonCode.TOPIC_ALIAS_INVALID, f"topic alias {alias}")
        if topic:
            self.aliases_in[alias] = topic
            return topic
        found = self.aliases_in.get(alias)
        if found is None:
            raise ProtocolViolation(ReasonCode.PROTOCOL_ERROR, f"topic alias {alias} was never set")
        return found

    def check_receive_maximum(self, awaiting_release: int) -> None:
        """A v5 client may have at most ``receive_maximum`` QoS 1/2 publishes unanswered.

        For v5 clients only (MQTT 3 has no receive maximum; the caller skips it).
        ``awaiting_release``: its QoS 2 publishes still waiting for PUBREL.
        """
        if awaiting_release + self.incoming_pending >= self.config.receive_maximum:
            self.stats.limits.receive_maximum += 1
            raise ProtocolViolation(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")

    def pending_started(self) -> None:
        """An incoming publish waits for its acknowledgement (counted against receive maximum)."""
        self.incoming_pending += 1

    def pending_done(self, count: int = 1) -> None:
        self.incoming_pending -= count

    def acknowledge(self, packet: Publish, matched: int) -> None:
        """PUBACK or PUBREC for ``packet``; v5 says when no subscriber matched."""
        pid = packet.packet_id
        assert pid is not None
        if packet.qos == 2:
            assert self.session is not None
            self.session.add_incoming(pid)
        if matched or self.protocol_level != 5:
            header = PUBACK_HEADER if packet.qos == 1 else PUBREC_HEADER
            self.write(header + PACKET_ID_BYTES[pid])
            return
        ack = Puback if packet.qos == 1 else Pubrec
        self.send(ack(pid, ReasonCode.NO_MATCHING_SUBSCRIBERS))

    def reject(self, packet: Publish, reason: ReasonCode, detail: str) -> None:
        """An error PUBACK/PUBREC (MQTT 5): the message was not accepted."""
        assert packet.packet_id is not None
        ack = Puback if packet.qos == 1 else Pubrec
        self.send(ack(packet.packet_id, reason, self.problem(detail)))

    # -- bytes out ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue one control packet (not a PUBLISH: ``send_publish`` queues those).

        The driver writes everything queued in one loop turn at once.
        """
        stats = self.stats
        stats.control_packets_sent += 1
        stats.bytes_sent += len(data)
        out = self.out
        if not out:
            self.link.output_ready()
        out.append(data)

    def take_output(self) -> list[bytes]:
        """What is ready to go out, unless it waits for the store's commit."""
        out = self.out
        if not out or self.awaiting_commit:
            return []
        self.out = []
        return out

    def release_output(self) -> None:
        """The store committed what this client's output acknowledges: send it."""
        self.awaiting_commit = False
        self.link.flush()

    def send(self, packet: Packet) -> None:
        if self.state == CLOSED:
            return
        self.write(encode(packet, self.protocol_level))

    def send_pubrel(self, packet_id: int) -> None:
        self.send(Pubrel(packet_id))

    def send_publish(self, delivery: Delivery, packet_id: int | None, dup: bool) -> None:
        if self.state == CLOSED:
            return
        message = delivery.message
        qos = delivery.qos
        if self.protocol_level == 5 and (
            delivery.subscription_ids or self.alias_out_max or message.expires_at is not None
        ):
            head, tail = self._encode_v5_publish(delivery)
        else:
            head, tail = message.encoded(self.protocol_level, qos, delivery.retain)
        size = len(head) + len(tail) + (2 if qos else 0)
        if self.max_outgoing_size and size > self.max_outgoing_size:
            # MQTT 5 §3.1.2.11.4: too large for this client, so it is discarded
            # as if it had been delivered.
            if packet_id is not None and self.session is not None:
                self.session.acknowledge(packet_id, qos)
            return
        if dup:
            head = bytes((head[0] | 0x08,)) + head[1:]
        stats = self.stats
        stats.messages_sent += 1
        stats.bytes_sent += size
        stats.message_bytes_sent += len(message.payload)
        out = self.out
        if not out:
            self.link.output_ready()
        if packet_id is None:
            out += (head, tail)
        else:
            out += (head, PACKET_ID_BYTES[packet_id], tail)

    def _encode_v5_publish(self, delivery: Delivery) -> tuple[bytes, bytes]:
        """A PUBLISH with this client's own parts: subscription ids, alias, remaining expiry."""
        message = delivery.message
        props: Properties = message.remaining_properties(time.monotonic())
        topic = message.topic
        extra: Properties = {}
        if delivery.subscription_ids:
            extra["subscription_identifier"] = list(delivery.subscription_ids)
        if self.alias_out_max:
            alias = self.aliases_out.get(topic)
            if alias is not None:
                extra["topic_alias"] = alias
                topic = ""
            elif len(self.aliases_out) < self.alias_out_max:
                alias = len(self.aliases_out) + 1
                self.aliases_out[topic] = alias
                extra["topic_alias"] = alias
        if extra:
            props = {**props, **extra}
        return encode_publish_parts(
            topic, message.payload, delivery.qos, delivery.retain, False, props, 5
        )

    def hold(self, publisher: ClientProtocol) -> None:
        """This client reads too slowly: read nothing more from ``publisher`` until it drains."""
        self.link.hold(publisher.link)

    def problem(self, reason: str) -> Properties:
        """A reason string, when the client asked for problem information."""
        return {"reason_string": reason} if self.problem_info and self.protocol_level == 5 else {}

    # -- ending ---------------------------------------------------------------

    def violated(self, reason: int, detail: str) -> None:
        """Answer a broken rule, then close: CONNACK while connecting, else DISCONNECT.

        A client that sent no CONNECT the node could read is told nothing.
        """
        if self.state == CLOSED:
            return
        self.end("protocol", reason, detail)
        self.stats.protocol_errors += 1
        told = False
        if self.state == CONNECTING:
            if reason == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION:
                level = self.decoder.protocol_level or 4
                self.protocol_level = level if level in (3, 4, 5) else 4
                code = connack_code_for(
                    self.protocol_level, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
                )
                self.send(Connack(False, code))
                told = True
            elif self.decoder.protocol_level == 5:
                self.protocol_level = 5
                self.send(Connack(False, reason))
                told = True
        else:
            told = self.say_disconnect(reason, detail)
        self.link.close(linger=told)

    def say_disconnect(self, reason: int, detail: str) -> bool:
        """Server-initiated close: a connected v5 client is told ``reason`` first.

        True when a DISCONNECT went out (MQTT 3 has none to send).
        """
        if self.protocol_level == 5 and self.state == CONNECTED:
            props = self.problem(detail) if detail else {}
            self.send(Disconnect(reason, props))
            return True
        return False

    def disconnect(self, reason: int, detail: str = "") -> None:
        """Close the connection, telling a v5 client why."""
        if self.state == CLOSED:
            return
        self.end("server", reason, detail)
        self.link.close(linger=self.say_disconnect(reason, detail))

    def end(self, by: str, reason: int | None, detail: str = "") -> None:
        """Record why the connection ends, unless an earlier reason already did."""
        if self.ended is None:
            self.ended = Ending(by, reason, detail)


ANSWERS: dict[type, Callable[[ClientProtocol, Any], None]] = {
    Pingreq: ClientProtocol._on_pingreq,
    Puback: ClientProtocol._on_puback,
    Pubrec: ClientProtocol._on_pubrec,
    Pubrel: ClientProtocol._on_pubrel,
    Pubcomp: ClientProtocol._on_pubcomp,
    Disconnect: ClientProtocol._on_disconnect,
    Auth: ClientProtocol._on_auth,
}
"""The packets the protocol answers by itself, by class."""
