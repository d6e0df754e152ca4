"""Why a received packet was dropped.

The transport counts drops by ``reason``, so an operator can tell a member
with the wrong cluster secret (``auth``) from a flaky network or a buggy
sender (``malformed``), a mixed-version cluster (``version``) and an
attacker or a duplicating network (``replay``). Messages name what was wrong
with the packet, never key material.
"""

from __future__ import annotations


class BadPacket(Exception):
    """A packet that is not a well-formed message of a known version."""

    reason = "malformed"


class UnknownVersion(BadPacket):
    """A packet of a wire or sealing format this member does not speak."""

    reason = "version"


class Unauthenticated(BadPacket):
    """A packet not sealed with this cluster's secret, or altered on the way."""

    reason = "auth"


class Replayed(BadPacket):
    """An authentic packet already received, or too old to tell."""

    reason = "replay"


DROP_REASONS = (BadPacket.reason, UnknownVersion.reason, Unauthenticated.reason, Replayed.reason)
"""Every drop reason, for counters that start at zero."""
