"""The tunables of the SWIM core, with defaults for a LAN or loopback.

The defaults were tuned with the simulated network of the unit tests
(``tests/unit/swim_network.py``) against two goals on a 3-node cluster: a
killed member is confirmed dead within 5 s (median) and 10 s (p99), and a
member that pauses for 1 s, or answers 200-400 ms late as a Python process
pinned at 100 % CPU does, is never declared dead, also under 10 % packet loss.
Detection time is roughly the wait for the next probe of the member (up to two
probe intervals with 3 members), one probe interval, and the suspicion
timeout, whose floor is ``suspicion_mult * probe_interval`` = 2 s on up to 10
members: the other survivor's confirmation brings it there.

Measured there (200 seeded kills of one of 3 members): confirmed dead by both
survivors after 2.8 s (median), 3.7 s (p99), 3.9 s at most; with 10 % loss
about the same. A member paused for up to 2 s, or whose every packet leaves
200-400 ms late, was never declared dead; paused for 3 s, it was (and came
back on waking). Loss of 10 % over 10 minutes made hundreds of suspicions
and no death: a suspected member hears of it on the next message to it and
refutes at once (``view.py``), well within the 2 s floor.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class SwimSettings:
    """How often a member probes, how long it waits, and how far news travels."""

    probe_interval: float = 0.5
    """Seconds between two probes of this member, each of one other member in turn.
    With 3 members each one is probed by each other at least every 1.5 s."""
    probe_timeout: float = 0.25
    """Seconds to wait for the direct ack before asking ``indirect_checks`` members to
    probe too. An ack still counts until the probe interval ends, so a member that
    answers 400 ms late passes; loopback round trips are well under a millisecond."""
    indirect_checks: int = 3
    """Members asked to probe (ping-req) a member that did not answer directly; also the
    number of independent accusations that bring a suspicion to its shortest timeout."""
    suspicion_mult: float = 4.0
    """Shortest suspicion timeout: ``suspicion_mult * max(1, log10(n)) * probe_interval``
    seconds for n members (2 s up to 10 members). This is the time a wrongly suspected
    member has to hear of it and refute, at worst."""
    suspicion_max_mult: float = 3.0
    """Longest suspicion timeout, as a multiple of the shortest: where a suspicion starts
    when nobody else confirms it yet (6 s up to 10 members)."""
    retransmit_mult: int = 4
    """Each update is piggybacked ``retransmit_mult * ceil(log10(n + 1))`` times, which
    reaches every member with high probability (SWIM's infection-style dissemination)."""
    push_pull_interval: float = 15.0
    """Seconds between two full-state exchanges with one random member, which heal what
    gossip missed (a partition, a burst of loss); 0 turns them off."""
    max_local_health: int = 8
    """Ceiling of Lifeguard's local health multiplier: a member that misses acks and nacks
    or has to refute stretches its probe interval and timeout up to ``1 + this`` times."""
    max_packet_size: int = 1400
    """Largest encoded message in bytes. Sealing adds ``seal.OVERHEAD`` (46 bytes), so a
    datagram stays within the 1452-byte UDP payload of a 1500-byte MTU, IPv6 too."""

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) < 0:
                raise ValueError(f"SWIM setting {field.name} must not be negative")
        if not 0 < self.probe_timeout < self.probe_interval:
            raise ValueError(
                f"SWIM setting probe_timeout ({self.probe_timeout}s) must be above 0 and "
                f"below probe_interval ({self.probe_interval}s): the indirect probe needs "
                "the rest of the interval"
            )
        if self.suspicion_mult <= 0 or self.suspicion_max_mult < 1:
            raise ValueError(
                "SWIM settings suspicion_mult must be above 0 and suspicion_max_mult at least 1"
            )
        if self.max_packet_size < 512:
            raise ValueError(
                f"SWIM setting max_packet_size ({self.max_packet_size}) must be at least 512 "
                "bytes, to hold a member's full record"
            )
