"""The SWIM core's mechanics, one member driven by hand: the probe and its stages, relaying,
Lifeguard's dynamic suspicion timeout and local health, stalls, the piggyback budget and
the chunks of a full-state exchange."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import pytest

from raftmq.cluster.swim import (
    Ack,
    MemberMeta,
    Nack,
    Outgoing,
    Ping,
    PingReq,
    PushPull,
    State,
    Swim,
    SwimSettings,
    Update,
)
from raftmq.cluster.swim.wire import encode

SETTINGS = SwimSettings()


def meta(node_id: str) -> MemberMeta:
    return MemberMeta(node_id, f"{node_id}:7946", f"{node_id}:4400", f"{node_id}:4500", "h:1883")


def addr(node_id: str) -> str:
    return f"{node_id}:7946"


def knowing(*others: str, settings: SwimSettings = SETTINGS, seed: int = 1) -> Swim:
    """Member "me", started at 0, which learned ``others`` from a full-state exchange."""
    swim = Swim(meta("me"), settings, random.Random(seed), now=0.0)
    records = tuple(Update(o, State.ALIVE, 0, meta(o)) for o in others)
    swim.receive(0.0, addr(others[0]), PushPull(others[0], False, records))
    swim.events()
    return swim


def kinds(out: list[Outgoing]) -> list[tuple[str, str]]:
    return [(type(o.message).__name__, o.addr) for o in out]


def run_probe(swim: Swim, start: float, after: Outgoing | None = None) -> tuple[Outgoing, float]:
    """Tick until the probe after ``after`` goes out; its ping and when it went. (Not the
    second ping of a probe gone indirect; a failed probe's member is pinged at once too,
    in the same tick, before the next probe.)"""
    now = start
    seen = after.message.seq if after else None  # type: ignore[union-attr]
    while True:
        now = max(now, swim.next_deadline())
        out = swim.tick(now)
        pings = [o for o in out if isinstance(o.message, Ping) and o.message.seq != seen]
        if pings:
            return pings[-1], now


def drive(
    swim: Swim,
    start: float,
    until: float,
    *,
    silent: frozenset[str] = frozenset(),
    stop: Callable[[], bool] = lambda: False,
) -> float:
    """Tick from ``start`` to ``until`` (or ``stop``), every member but ``silent`` ones
    acking this member's pings at once."""
    now = start
    while now < until and not stop():
        now = min(until, max(now, swim.next_deadline()))
        for outgoing in swim.tick(now):
            message = outgoing.message
            if isinstance(message, Ping) and outgoing.to not in silent:
                swim.receive(now, outgoing.addr, Ack(message.seq, outgoing.to or ""))
    return now


def test_a_ping_is_answered_and_a_ping_for_someone_else_is_not() -> None:
    swim = knowing("n1")
    assert kinds(swim.receive(1.0, "n1:7946", Ping(7, "me", "n1"))) == [("Ack", "n1:7946")]
    assert swim.receive(1.0, "n1:7946", Ping(8, "other", "n1")) == []


def test_a_silent_member_goes_indirect_then_is_suspected_and_told() -> None:
    swim = knowing("n1", "n2", "n3", "n4")
    ping, sent = run_probe(swim, 0.0)
    target = ping.to
    assert target is not None
    assert swim.next_deadline() == pytest.approx(sent + SETTINGS.probe_timeout)
    out = swim.tick(sent + SETTINGS.probe_timeout)
    helpers = {o.to for o in out if isinstance(o.message, PingReq)}
    assert len(helpers) == SETTINGS.indirect_checks and target not in helpers
    assert [o.to for o in out if isinstance(o.message, Ping)] == [target]  # a second try
    assert swim.member(target).state is State.ALIVE  # type: ignore[union-attr]
    out = swim.tick(sent + SETTINGS.probe_interval)
    assert swim.member(target).state is State.SUSPECT  # type: ignore[union-attr]
    told = [o for o in out if o.to == target]
    assert told and Update(target, State.SUSPECT, 0, accuser="me") in told[0].message.updates


@pytest.mark.parametrize("how", ["late direct", "relayed"])
def test_an_ack_counts_until_the_probe_interval_ends(how: str) -> None:
    swim = knowing("n1", "n2", "n3")
    ping, sent = run_probe(swim, 0.0)
    target = ping.to
    assert target is not None
    swim.tick(sent + SETTINGS.probe_timeout)
    source = (
        addr(target)
        if how == "late direct"
        else addr(next(n for n in ("n1", "n2", "n3") if n != target))
    )
    swim.receive(sent + 0.45, source, Ack(ping.message.seq, target))  # type: ignore[union-attr]
    swim.tick(sent + SETTINGS.probe_interval)
    assert swim.member(target).state is State.ALIVE  # type: ignore[union-attr]
    assert swim.local_health == 0


def test_a_relay_pings_for_the_requester_and_acks_or_nacks() -> None:
    swim = knowing("n1", "n2")
    out = swim.receive(1.0, "n1:7946", PingReq(41, "n2", "n2:7946", "n1"))
    assert kinds(out) == [("Ping", "n2:7946")]
    relay_seq = out[0].message.seq  # type: ignore[union-attr]
    assert kinds(swim.receive(1.1, "n2:7946", Ack(relay_seq, "n2"))) == [("Ack", "n1:7946")]
    assert swim.receive(1.1, "n2:7946", Ack(relay_seq, "n2")) == []  # relayed once
    # Without an ack, a nack before the requester's probe interval ends.
    swim.receive(2.0, "n1:7946", PingReq(42, "n2", "n2:7946", "n1"))
    time_left = SETTINGS.probe_interval - SETTINGS.probe_timeout  # the requester's

    def nacks(now: float) -> list[int]:
        return [o.message.seq for o in swim.tick(now) if isinstance(o.message, Nack)]

    assert nacks(2.0 + time_left * 0.75) == []
    assert nacks(2.0 + time_left * 0.85) == [42]


def expected_timeout(size: int, confirmations: int) -> float:
    """Lifeguard's formula, written out independently of the code under test."""
    shortest = SETTINGS.suspicion_mult * max(1.0, math.log10(size)) * SETTINGS.probe_interval
    longest = SETTINGS.suspicion_max_mult * shortest
    expected = min(SETTINGS.indirect_checks, size - 2)
    if expected < 1:
        return shortest
    fraction = math.log(confirmations + 1) / math.log(expected + 1)
    return max(shortest, longest - fraction * (longest - shortest))


def time_to_death(swim: Swim, suspect: str, accusers: list[str], start: float = 1.0) -> float:
    """Seconds from the first accusation until ``suspect`` is declared dead (the others
    accuse at once after the first)."""
    drive(swim, 0.0, start)
    for accuser in accusers:
        update = Update(suspect, State.SUSPECT, 0, accuser=accuser)
        swim.receive(start, addr(accuser), Ack(0, accuser, (update,)))
    record = swim.member(suspect)
    assert record is not None and record.state is State.SUSPECT
    return (
        drive(swim, start, start + 60, stop=lambda: record_state(swim, suspect) is State.DEAD)
        - start
    )


def record_state(swim: Swim, node_id: str) -> State | None:
    record = swim.member(node_id)
    return record.state if record else None


@pytest.mark.parametrize("confirmations", [0, 1, 2, 3, 4])
def test_the_suspicion_timeout_shrinks_with_independent_confirmations(confirmations: int) -> None:
    others = [f"n{i}" for i in range(1, 12)]  # 12 members: log10(12) > 1
    swim = knowing(*others, settings=SwimSettings(push_pull_interval=0))
    accusers = others[1 : 2 + confirmations]
    took = time_to_death(swim, "n1", accusers)
    assert took == pytest.approx(expected_timeout(12, confirmations), abs=0.6)
    assert swim.member("n1").state is State.DEAD  # type: ignore[union-attr]


def test_the_same_accuser_twice_is_one_accusation() -> None:
    swim = knowing(*(f"n{i}" for i in range(1, 6)), settings=SwimSettings(push_pull_interval=0))
    assert time_to_death(swim, "n1", ["n2", "n2", "n3", "n3"]) == pytest.approx(
        expected_timeout(6, 1), abs=0.6
    )


def test_a_member_with_trouble_of_its_own_probes_less_eagerly() -> None:
    """Probes that nobody answers (no relay to nack either) raise the local health score,
    and each point stretches the probe interval; answered probes bring it down."""
    swim = knowing("n1")
    ping, now = run_probe(swim, 0.0)
    starts = [now]
    for incarnation in range(1, 4):
        ping, now = run_probe(swim, now, ping)  # the last one failed: n1 suspected...
        starts.append(now)
        refutation = Update("n1", State.ALIVE, incarnation, meta("n1"))
        swim.receive(now, addr("n1"), Ack(0, "n1", (refutation,)))  # ...and refuting
    assert swim.local_health == 3
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx([0.5, 1.0, 1.5])  # probe_interval * (1 + score)
    for _ in range(3):
        swim.receive(now + 0.01, ping.addr, Ack(ping.message.seq, "n1"))  # type: ignore[union-attr]
        ping, now = run_probe(swim, now, ping)
    assert swim.local_health == 0


def test_nacks_from_every_relay_clear_the_prober() -> None:
    swim = knowing("n1", "n2", "n3", "n4")
    ping, now = run_probe(swim, 0.0)
    relays = [o for o in swim.tick(now + SETTINGS.probe_timeout) if isinstance(o.message, PingReq)]
    for relay in relays:
        swim.receive(now + 0.4, relay.addr, Nack(ping.message.seq, relay.to))  # type: ignore[union-attr, arg-type]
    swim.tick(now + SETTINGS.probe_interval)
    assert swim.member(ping.to).state is State.SUSPECT  # type: ignore[arg-type, union-attr]
    assert swim.local_health == 0


def test_a_stalled_member_blames_itself_not_the_member_it_was_probing() -> None:
    others = [f"n{i}" for i in range(1, 12)]
    swim = knowing(*others)
    now = drive(swim, 0.0, 5.0)
    ping, now = run_probe(swim, now)
    other = next(o for o in others if o != ping.to)
    swim.receive(now, addr(other), Ack(0, other, (Update(other, State.SUSPECT, 0, accuser="n9"),)))
    swim.tick(now + 1.5)  # woken 1.5 s late: the probe timed out while it slept
    assert record_state(swim, ping.to or "") is State.ALIVE
    assert swim.local_health == 1
    # The suspect got the time back: not dead at the deadline it had.
    deadline = now + expected_timeout(12, 0)
    drive(swim, now + 1.5, deadline + 1.0)
    assert record_state(swim, other) is State.SUSPECT
    drive(swim, deadline + 1.0, deadline + 1.6)
    assert record_state(swim, other) is State.DEAD


def test_gossip_fills_messages_to_the_packet_size_and_stops_after_the_retransmit_limit() -> None:
    others = [f"member-{i:03}" for i in range(60)]
    swim = knowing(*others)
    limit = SETTINGS.retransmit_mult * math.ceil(math.log10(61 + 1))
    sent: dict[str, int] = {}
    for seq in range(200):
        for outgoing in swim.receive(1.0, addr(others[0]), Ping(seq, "me", others[0])):
            assert len(encode(outgoing.message)) <= SETTINGS.max_packet_size
            for update in outgoing.message.updates:
                sent[update.node_id] = sent.get(update.node_id, 0) + 1
    assert set(sent) == {"me", *others}
    assert set(sent.values()) == {limit}


def test_full_state_goes_in_chunks_that_fit_and_ask_for_one_reply() -> None:
    others = [f"member-{i:03}" for i in range(60)]
    swim = knowing(*others)
    out = swim.join(["seed:7946"])
    assert len(out) > 3
    assert [o.message.want_reply for o in out] == [True] + [False] * (len(out) - 1)  # type: ignore[union-attr]
    assert all(len(encode(o.message)) <= SETTINGS.max_packet_size for o in out)
    joiner = Swim(meta("new"), SETTINGS, random.Random(2), now=0.0)
    for outgoing in out:
        joiner.receive(1.0, addr("me"), outgoing.message)
    assert {m.node_id for m in joiner.members()} == {"new", "me", *others}


def test_a_death_in_a_full_state_is_only_a_suspicion_here() -> None:
    swim = knowing("n1", "n2")
    records = (Update("n2", State.DEAD, 0, meta("n2")),)
    swim.receive(1.0, "n1:7946", PushPull("n1", False, records))
    assert swim.member("n2").state is State.SUSPECT  # type: ignore[union-attr]


def test_a_member_probed_by_a_stranger_asks_it_for_its_state() -> None:
    swim = knowing("n1")
    out = swim.receive(1.0, "n7:7946", Ping(1, "me", "n7"))
    assert kinds(out) == [("PushPull", "n7:7946"), ("Ack", "n7:7946")]
    assert kinds(swim.receive(1.1, "n7:7946", Ping(2, "me", "n7"))) == [("Ack", "n7:7946")]


def test_alone_a_member_keeps_trying_its_seeds() -> None:
    swim = Swim(meta("me"), SETTINGS, random.Random(3), now=0.0)
    assert kinds(swim.join(["seed:7946"])) == [("PushPull", "seed:7946")]
    tries = []
    now = 0.0
    while now < 10:
        now = swim.next_deadline()
        tries += [now for o in swim.tick(now) if isinstance(o.message, PushPull)]
    assert len(tries) >= 8  # every second, not every push-pull interval


def test_a_member_whose_meta_does_not_fit_is_refused() -> None:
    big = MemberMeta("n1", *(f"{'h' * 250}:1" for _ in range(4)))
    with pytest.raises(ValueError, match="member 'n1'"):
        Swim(big, SETTINGS, random.Random(1), now=0.0)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="probe_timeout"):
        SwimSettings(probe_timeout=0.5)
    with pytest.raises(ValueError, match="indirect_checks"):
        SwimSettings(indirect_checks=-1)


def test_a_member_whose_record_others_would_drop_is_refused_at_once() -> None:
    """Found wiring SWIM into the node: an MQTT listener on port 0 made every record of
    the node malformed for the others, who silently never learned it."""
    picked_later = MemberMeta("m", "127.0.0.1:7001", "127.0.0.1:7001", "127.0.0.1:7002", "h:0")
    assert Swim(picked_later, SETTINGS, random.Random(1), now=0.0).meta == picked_later
    no_port = MemberMeta("m", "127.0.0.1", "127.0.0.1:7001", "127.0.0.1:7002", "h:1883")
    with pytest.raises(ValueError, match=r"member 'm': its record is not valid.*swim_addr"):
        Swim(no_port, SETTINGS, random.Random(1), now=0.0)
