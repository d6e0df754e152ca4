"""What a member makes of news about a member: incarnation first, then at one incarnation
left > dead > suspect > alive; refutation of news about itself; stale accusations
answered. Through Swim.receive, one piggybacked update at a time."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from raftmq.cluster.swim import Ack, Member, MemberMeta, Ping, State, Swim, SwimSettings, Update
from raftmq.cluster.swim.wire import encode

ALIVE, SUSPECT, DEAD, LEFT = State.ALIVE, State.SUSPECT, State.DEAD, State.LEFT


def meta(node_id: str) -> MemberMeta:
    return MemberMeta(node_id, f"{node_id}:7946", f"{node_id}:4400", f"{node_id}:4500", "h:1883")


def member() -> Swim:
    return Swim(meta("me"), SwimSettings(), random.Random(1), now=0.0)


def hear(swim: Swim, *updates: Update, sender: str = "n9", now: float = 1.0) -> list:
    return swim.receive(now, f"{sender}:7946", Ack(0, sender, updates))


def alive(node_id: str, incarnation: int) -> Update:
    return Update(node_id, ALIVE, incarnation, meta(node_id))


def record(swim: Swim, node_id: str) -> tuple[State, int] | None:
    found = swim.member(node_id)
    return (found.state, found.incarnation) if found else None


@pytest.mark.parametrize(
    ("known", "news", "after"),
    [
        ((ALIVE, 1), (ALIVE, 1), (ALIVE, 1)),
        ((ALIVE, 1), (ALIVE, 0), (ALIVE, 1)),
        ((ALIVE, 1), (SUSPECT, 1), (SUSPECT, 1)),
        ((ALIVE, 1), (SUSPECT, 0), (ALIVE, 1)),
        ((SUSPECT, 1), (ALIVE, 1), (SUSPECT, 1)),  # only a new incarnation refutes
        ((SUSPECT, 1), (ALIVE, 2), (ALIVE, 2)),
        ((SUSPECT, 1), (DEAD, 1), (DEAD, 1)),
        ((DEAD, 1), (SUSPECT, 1), (DEAD, 1)),
        ((DEAD, 1), (ALIVE, 1), (DEAD, 1)),
        ((DEAD, 1), (ALIVE, 2), (ALIVE, 2)),  # back with a higher incarnation
        ((DEAD, 1), (LEFT, 1), (LEFT, 1)),
        ((LEFT, 2), (DEAD, 2), (LEFT, 2)),  # a leave is never turned into a death
        ((LEFT, 2), (DEAD, 1), (LEFT, 2)),
        ((LEFT, 2), (ALIVE, 1), (LEFT, 2)),  # nor resurrected by an old alive
        ((LEFT, 2), (ALIVE, 2), (LEFT, 2)),
        ((LEFT, 2), (ALIVE, 3), (ALIVE, 3)),  # a new life
    ],
)
def test_precedence(known: tuple[State, int], news: tuple[State, int], after: tuple) -> None:
    swim = member()
    state, incarnation = known
    hear(swim, alive("n1", incarnation))
    if state is not ALIVE:
        hear(swim, Update("n1", state, incarnation, accuser="n2"))
    assert record(swim, "n1") == known
    state, incarnation = news
    hear(swim, Update("n1", state, incarnation, meta("n1"), accuser="n3"))
    assert record(swim, "n1") == after


def test_the_precedence_rule_itself() -> None:
    m = Member("n1", 3, SUSPECT, meta("n1"), 0.0)
    assert m.superseded_by(Update("n1", ALIVE, 4))
    assert m.superseded_by(Update("n1", DEAD, 3))
    assert not m.superseded_by(Update("n1", SUSPECT, 3))
    assert not m.superseded_by(Update("n1", LEFT, 2))


def test_members_are_learned_from_news_with_their_meta_only() -> None:
    swim = member()
    hear(swim, Update("n1", SUSPECT, 0, accuser="n2"), Update("n2", DEAD, 0))
    assert swim.members()[1:] == []  # no address to probe: nothing learned
    hear(swim, alive("n1", 0), Update("n2", SUSPECT, 4, meta("n2"), accuser="n1"))
    assert [(m.node_id, m.state) for m in swim.members()] == [
        ("me", ALIVE),
        ("n1", ALIVE),
        ("n2", SUSPECT),
    ]
    events = swim.events()
    assert [(e.node_id, e.old_state, e.new_state) for e in events] == [
        ("n1", None, ALIVE),
        ("n2", None, SUSPECT),
    ]
    assert swim.events() == []


def test_events_say_what_changed_and_when() -> None:
    swim = member()
    hear(swim, alive("n1", 0), now=1.0)
    hear(swim, Update("n1", SUSPECT, 0, accuser="n2"), now=2.0)
    hear(swim, alive("n1", 0), now=3.0)  # nothing new
    hear(swim, alive("n1", 1), now=4.0)
    hear(swim, Update("n1", ALIVE, 2, replace(meta("n1"), swim_addr="moved:7946")), now=5.0)
    changes = [(e.old_state, e.new_state, e.member.state_changed_at) for e in swim.events()]
    assert changes == [
        (None, ALIVE, 1.0),
        (ALIVE, SUSPECT, 2.0),
        (SUSPECT, ALIVE, 4.0),
        (ALIVE, ALIVE, 4.0),  # the same state, new addresses
    ]


def gossip(out: list) -> list[Update]:
    return [update for outgoing in out for update in outgoing.message.updates]


@pytest.mark.parametrize("accusation", [SUSPECT, DEAD, LEFT])
def test_a_member_refutes_news_of_its_own_failure_with_a_new_incarnation(
    accusation: State,
) -> None:
    swim = member()
    hear(swim, alive("n1", 0))
    out = hear(swim, Update("me", accusation, 0, accuser="n1"), sender="n1")
    assert record(swim, "me") == (ALIVE, 1)
    assert swim.local_health == 1  # having to refute is a sign of trouble here
    # The accuser is pinged at once, and the ping carries the refutation.
    assert [(o.addr, type(o.message).__name__) for o in out] == [("n1:7946", "Ping")]
    assert alive("me", 1) in gossip(out)


def test_a_member_refutes_an_earlier_life_of_its_own() -> None:
    """A restarted member starts at incarnation 0; the cluster remembers it at 5, with
    other addresses maybe. It takes an incarnation above that one."""
    swim = member()
    hear(swim, alive("n1", 0))
    hear(swim, Update("me", ALIVE, 5, replace(meta("me"), raft_addr="old:1")))
    assert record(swim, "me") == (ALIVE, 6)
    hear(swim, alive("me", 6))  # its own record, echoed: nothing to do
    assert record(swim, "me") == (ALIVE, 6)


def test_the_last_incarnation_is_as_far_as_refutation_goes() -> None:
    swim = member()
    hear(swim, alive("n1", 0))
    out = hear(swim, Update("me", SUSPECT, 2**32 - 1, accuser="n1"), sender="n1")
    assert record(swim, "me") == (ALIVE, 2**32 - 1)
    assert [len(encode(o.message)) > 0 for o in out] == [True]  # still encodable


def test_a_stale_accusation_is_answered_with_the_newer_record() -> None:
    swim = member()
    hear(swim, alive("n1", 0), alive("n2", 0))
    hear(swim, Update("me", SUSPECT, 0, accuser="n1"))
    for seq in range(20):  # answering pings, until the refutation was sent often enough
        gossiped = gossip(swim.receive(2.0, "n1:7946", Ping(seq, "me", "n1")))
    assert alive("me", 1) not in gossiped
    out = hear(swim, Update("me", SUSPECT, 0, accuser="n2"), sender="n2")
    assert record(swim, "me") == (ALIVE, 1)  # not raised again...
    assert alive("me", 1) in gossip(out)  # ...but said again
    # The same for members known to have refuted, or left.
    hear(swim, alive("n1", 3), Update("n2", LEFT, 1))
    for seq in range(20):
        swim.receive(2.0, "n1:7946", Ping(seq, "me", "n1"))
    hear(swim, Update("n1", DEAD, 2), Update("n2", SUSPECT, 1, accuser="n9"))
    answer = swim.receive(2.0, "n1:7946", Ping(99, "me", "n1"))
    assert {alive("n1", 3), Update("n2", LEFT, 1)} <= set(gossip(answer))


def test_a_member_that_left_refutes_nothing() -> None:
    swim = member()
    hear(swim, alive("n1", 0))
    out = swim.leave(2.0)
    assert record(swim, "me") == (LEFT, 1)
    assert [type(o.message).__name__ for o in out] == ["Ping"]
    assert Update("me", LEFT, 1) in gossip(out)
    hear(swim, Update("me", DEAD, 1), sender="n1")
    assert record(swim, "me") == (LEFT, 1)
    assert swim.tick(5.0) == []
