"""The replicated state machine, driven by feeding it commands (etcd/raft style).

No Raft and no sockets here: ``ClusterState`` is a pure function of the
commands it applied, which is exactly what these tests rely on.
"""

from __future__ import annotations

import pickle
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftmq.cluster.replication.commands import (
    AddRoute,
    AddSessionSubscriptions,
    ClaimClient,
    ClaimFenced,
    ClaimResult,
    FireWill,
    NodeDown,
    NodeDownResult,
    NodeUp,
    Owner,
    RegisterWill,
    Rejected,
    ReleaseClient,
    RemoveRoute,
    RemoveSessionSubscriptions,
    RetainedRecord,
    SessionRecord,
    SetMembers,
    SetRetained,
    StoredSubscription,
    WillRecord,
)
from raftmq.cluster.replication.state import ClusterState


def nodes_for(state: ClusterState, topic: str) -> frozenset[str]:
    """Every node with a route (plain or shared) whose filter matches ``topic``."""
    plain, shared = state.route_targets(topic)
    return plain.union(*(nodes for _, _, nodes in shared))


WILL = WillRecord("last/words", b"bye", 1, False, {})


def applied(*commands: object) -> tuple[ClusterState, list[object]]:
    state = ClusterState()
    return state, [state.apply(command) for command in commands]


def claim(
    state: ClusterState,
    client_id: str,
    node_id: str,
    expiry: int = 0,
    subscriptions: tuple[StoredSubscription, ...] = (),
    *,
    clean_start: bool = True,
) -> ClaimResult:
    """A CONNECT on ``node_id``; with ``expiry``, a persistent session with ``subscriptions``."""
    result = state.apply(ClaimClient(client_id, node_id, clean_start, expiry))
    assert isinstance(result, ClaimResult)
    if subscriptions:
        added = AddSessionSubscriptions(client_id, node_id, result.epoch, subscriptions)
        assert state.apply(added) is True
    return result


# -- ownership and epochs -------------------------------------------------------


def test_claims_get_increasing_epochs_and_name_the_previous_owner() -> None:
    state = ClusterState()
    first = claim(state, "c1", "n1")
    assert first == ClaimResult(1, None, None, None)
    second = claim(state, "c1", "n2")
    assert second == ClaimResult(2, "n1", 1, None)
    other = claim(state, "c2", "n1")
    assert other.epoch == 3, "epochs come from one cluster-wide counter"
    assert state.owners.get("c1") == Owner("n2", 2)


def test_release_needs_the_current_epoch() -> None:
    state = ClusterState()
    claim(state, "c1", "n1")
    claim(state, "c1", "n2")
    assert state.apply(ReleaseClient("c1", "n1", 1)) is False, "stale epoch"
    assert state.apply(ReleaseClient("c1", "n1", 2)) is False, "right epoch, wrong node"
    assert state.owners.get("c1") == Owner("n2", 2)
    assert state.apply(ReleaseClient("c1", "n2", 2)) is True
    assert state.owners.get("c1") is None
    assert claim(state, "c1", "n3").epoch == 3, "a released id never reuses an old epoch"


def test_a_claim_fenced_by_a_newer_owner_changes_nothing() -> None:
    """Issue 11's orphaned claim: n2's CONNECT gave up, the client connected to n3, and
    n2's claim committed after n3's. It must not take the client, kick n3's connection,
    or end the session."""
    state = ClusterState()
    first = claim(state, "c1", "n1", 60, (StoredSubscription("t/#", 1),), clean_start=False)
    late = ClaimClient("c1", "n2", False, 60, None, seen_epoch=first.epoch)
    newer = state.apply(ClaimClient("c1", "n3", False, 60, None, seen_epoch=first.epoch))
    assert isinstance(newer, ClaimResult) and newer.previous_owner == "n1"
    before = state.snapshot()
    assert state.apply(late) == ClaimFenced(newer.epoch)
    after = state.snapshot()
    assert after.pop("applied") == before.pop("applied") + 1  # counted, as every command is
    assert after == before  # and nothing else: not even an epoch spent
    assert state.owners.get("c1") == Owner("n3", newer.epoch)
    assert state.sessions["c1"].subscriptions == (StoredSubscription("t/#", 1),)


def test_a_claim_fenced_on_no_owner_and_unfenced_claims() -> None:
    state = ClusterState()
    assert isinstance(state.apply(ClaimClient("c1", "n1", seen_epoch=0)), ClaimResult)
    assert state.apply(ClaimClient("c1", "n2", seen_epoch=0)) == ClaimFenced(1)
    assert isinstance(state.apply(ClaimClient("c1", "n2")), ClaimResult)  # no fence


def test_an_orphaned_claim_gives_the_id_back_and_keeps_the_session() -> None:
    state = ClusterState()
    claim(state, "c1", "n1", 60, (StoredSubscription("t/#", 1),), clean_start=False)
    orphan = claim(state, "c1", "n2", 60, clean_start=False)
    assert state.apply(ReleaseClient("c1", "n2", orphan.epoch, keep_session=True)) is True
    assert state.owners.get("c1") is None
    resumed = claim(state, "c1", "n3", 60, clean_start=False)
    assert resumed.session is not None
    assert resumed.session.subscriptions == (StoredSubscription("t/#", 1),)


def test_fence_and_keep_session_pickle_only_when_set() -> None:
    """Entries without them keep the form journals and older peers hold."""
    plain = ClaimClient("c1", "n1", False, 60, None)
    assert plain.__reduce__()[1] == ("c1", "n1", False, 60, None)
    fenced = ClaimClient("c1", "n1", False, 60, None, seen_epoch=4)
    assert pickle.loads(pickle.dumps(fenced)) == fenced
    assert ReleaseClient("c1", "n1", 3).__reduce__()[1] == ("c1", "n1", 3)
    kept = ReleaseClient("c1", "n1", 3, keep_session=True)
    assert pickle.loads(pickle.dumps(kept)) == kept


def test_writes_of_a_superseded_owner_are_ignored() -> None:
    state = ClusterState()
    subs = (StoredSubscription("a/#", 1),)
    old = claim(state, "c1", "n1", 3600, subs)
    assert state.apply(RegisterWill("c1", "n1", old.epoch, WILL)) is True
    new = claim(state, "c1", "n2", 3600, clean_start=False)
    assert "c1" not in state.wills, "a takeover drops the old connection's will"
    assert state.apply(RegisterWill("c1", "n1", old.epoch, WILL)) is False
    late = AddSessionSubscriptions("c1", "n1", old.epoch, (StoredSubscription("x", 0),))
    assert state.apply(late) is False
    assert state.apply(RemoveSessionSubscriptions("c1", "n1", old.epoch, ("a/#",))) is False
    assert state.apply(ReleaseClient("c1", "n1", old.epoch)) is False
    assert state.sessions["c1"] == SessionRecord(3600, subs)
    assert state.apply(RegisterWill("c1", "n2", new.epoch, WILL)) is True
    assert state.wills["c1"] == WILL


def test_a_persistent_session_follows_its_client_to_the_next_claim() -> None:
    state = ClusterState()
    subs = (StoredSubscription("a/+", 2, retain_as_published=True),)
    claim(state, "c1", "n1", 600, subs)
    second = claim(state, "c1", "n3", 60, clean_start=False)
    assert second.session == SessionRecord(600, subs), "the session as it was left"
    assert second.previous_owner == "n1"
    assert state.sessions["c1"] == SessionRecord(60, subs), "the new connection's expiry"
    assert state.apply(ReleaseClient("c1", "n3", second.epoch)) is True
    assert "c1" not in state.sessions, "a released client's session ended"
    assert claim(state, "c1", "n2", clean_start=False).session is None


def test_a_claim_carries_the_will_of_the_new_connection() -> None:
    state = ClusterState()
    first = state.apply(ClaimClient("c1", "n1", True, 0, WILL))
    assert isinstance(first, ClaimResult)
    assert state.wills["c1"] == WILL
    claim(state, "c1", "n2")
    assert "c1" not in state.wills, "the new connection has no will"


def test_a_clean_start_or_zero_expiry_ends_the_previous_session() -> None:
    state = ClusterState()
    subs = (StoredSubscription("a", 1),)
    claim(state, "c1", "n1", 600, subs)
    fresh = claim(state, "c1", "n2", 600, clean_start=True)
    assert fresh.session is None, "a clean start resumes nothing"
    assert state.sessions["c1"] == SessionRecord(600, ()), "a new, empty persistent session"
    claim(state, "c1", "n1", 600, subs)
    gone = claim(state, "c1", "n3", 0, clean_start=False)
    assert gone.session == SessionRecord(600, subs), "resumed for this connection only"
    assert "c1" not in state.sessions, "expiry 0: nothing outlives the connection"


def test_session_subscriptions_are_added_replaced_and_removed() -> None:
    state = ClusterState()
    epoch = claim(state, "c1", "n1").epoch
    assert state.apply(AddSessionSubscriptions("c1", "n1", epoch, ())) is False, "no session"
    epoch = claim(state, "c1", "n1", 60).epoch
    subs = (StoredSubscription("a/b", 0), StoredSubscription("$share/g/c/#", 1))
    assert state.apply(AddSessionSubscriptions("c1", "n1", epoch, subs)) is True
    upgraded = StoredSubscription("a/b", 2, identifier=7)
    state.apply(AddSessionSubscriptions("c1", "n1", epoch, (upgraded,)))
    assert state.sessions["c1"].subscriptions == (upgraded, subs[1])
    assert state.apply(RemoveSessionSubscriptions("c1", "n1", epoch, ("a/b", "x"))) is True
    assert state.sessions["c1"].subscriptions == (subs[1],)
    assert state.sessions["c1"].expiry_interval == 60


# -- routes ---------------------------------------------------------------------


def test_routes_keep_one_entry_per_node_the_node_refcounts_itself() -> None:
    state = ClusterState()
    assert state.apply(AddRoute("n1", "a/+")) is True
    assert state.apply(AddRoute("n1", "a/+")) is False, "a node adds a filter once"
    assert state.apply(AddRoute("n2", "a/+")) is True
    assert nodes_for(state, "a/b") == {"n1", "n2"}
    assert state.apply(RemoveRoute("n1", "a/+")) is True
    assert nodes_for(state, "a/b") == {"n2"}, "n2's route outlives n1's"
    assert state.apply(RemoveRoute("n1", "a/+")) is False
    state.apply(RemoveRoute("n2", "a/+"))
    assert nodes_for(state, "a/b") == frozenset()
    assert state.routes == {}


def test_nodes_for_matches_wildcards_and_share_groups() -> None:
    state, _ = applied(
        AddRoute("n1", "sensors/#"),
        AddRoute("n2", "sensors/+/temp"),
        AddRoute("n3", "other"),
        AddRoute("n2", "sensors/+/temp", "g"),
        AddRoute("n3", "sensors/+/temp", "g"),
        AddRoute("n3", "sensors/kitchen/temp", "h"),
        AddRoute("n1", "#"),
    )
    assert nodes_for(state, "sensors/kitchen/temp") == {"n1", "n2", "n3"}
    assert nodes_for(state, "other") == {"n1", "n3"}
    assert nodes_for(state, "$SYS/x") == frozenset(), "wildcards never match $ topics"
    plain, shared = state.route_targets("sensors/kitchen/temp")
    assert plain == {"n1", "n2"}
    assert shared == (
        ("g", "sensors/+/temp", ("n2", "n3")),
        ("h", "sensors/kitchen/temp", ("n3",)),
    )


# -- retained -------------------------------------------------------------------


def test_retained_messages_are_set_replaced_and_cleared() -> None:
    first = RetainedRecord(b"21", 1, {"content_type": "text"})
    second = RetainedRecord(b"22", 0, {}, expires_at=1e9)
    state, results = applied(
        SetRetained("t/1", first),
        SetRetained("t/2", first),
        SetRetained("t/1", second),
        SetRetained("t/2", None),
        SetRetained("t/3", None),
    )
    assert results == [True, True, True, True, False]
    assert state.retained == {"t/1": second}


def test_replicas_applying_the_same_retained_log_converge() -> None:
    log = [SetRetained(f"t/{i % 3}", RetainedRecord(bytes([i]), i % 3, {})) for i in range(10)]
    log.append(SetRetained("t/1", None))
    one, _ = applied(*log)
    two, _ = applied(*(pickle.loads(pickle.dumps(command)) for command in log))
    assert one.snapshot() == two.snapshot()
    assert one.retained == {
        "t/0": RetainedRecord(b"\x09", 0, {}),
        "t/2": RetainedRecord(b"\x08", 2, {}),
    }


# -- node death -----------------------------------------------------------------


def test_node_down_drops_routes_rehomes_sessions_and_returns_wills() -> None:
    state = ClusterState()
    state.apply(SetMembers(("n3", "n1", "n2")))
    subs = (StoredSubscription("a/b", 1), StoredSubscription("$share/g/c/#", 0))
    persistent = claim(state, "p1", "n2", 3600, subs).epoch
    will_p1 = WillRecord("wills/p1", b"p1 gone", 0, True, {"will_delay_interval": 5})
    state.apply(RegisterWill("p1", "n2", persistent, will_p1))
    plain = claim(state, "c2", "n2").epoch
    state.apply(RegisterWill("c2", "n2", plain, WILL))
    claim(state, "c3", "n2")
    claim(state, "c4", "n1")
    state.apply(AddRoute("n2", "x/#"))
    state.apply(AddRoute("n1", "x/#"))
    state.apply(AddRoute("n2", "only/n2"))

    result = state.apply(NodeDown("n2"))

    assert isinstance(result, NodeDownResult)
    assert result.wills == (("c2", WILL), ("p1", will_p1)), "no times given: all due now"
    assert result.released == ("c2", "c3")
    live = ("n1", "n3")
    home = live[zlib.crc32(b"p1") % 2]
    assert result.rehomed == (("p1", Owner(home, result.fence_epoch - 1)),)
    assert result.fence_epoch > max(owner.epoch for owner in state.owners.values())
    assert state.owners.get("p1") == Owner(home, result.fence_epoch - 1)
    assert state.owners.get("c2") is None and state.owners.get("c3") is None
    assert state.owners.get("c4") == Owner("n1", 4), "other nodes' clients stay"
    assert state.sessions["p1"].subscriptions == subs, "the session itself is kept"
    assert state.wills == {}
    assert nodes_for(state, "only/n2") == frozenset()
    assert nodes_for(state, "x/y") == {"n1"}
    assert state.route_targets("a/b")[0] == {home}, "the new home gets the session's routes"
    assert state.route_targets("c/d")[1] == (("g", "c/#", (home,)),)
    assert state.down == {"n2"}
    assert state.live_members() == live
    assert state.apply(NodeUp("n2")) is True
    assert state.apply(NodeUp("n2")) is False
    assert state.live_members() == ("n1", "n2", "n3")


def test_a_dead_nodes_delayed_wills_wait_from_when_it_was_last_seen() -> None:
    """MQTT 5 will delay across a node death: counted from the node's last sign of life,
    capped by the session's expiry, cancelled by the client coming back, and fired once
    (FireWill) by whoever commits it first."""
    state = ClusterState()
    state.apply(SetMembers(("n1", "n2", "n3")))
    wills = {}
    for cid, delay, expiry in (("soon", 5, 3600), ("capped", 60, 10), ("back", 30, 3600)):
        epoch = claim(state, cid, "n2", expiry).epoch
        wills[cid] = WillRecord(f"w/{cid}", b"gone", 1, False, {"will_delay_interval": delay})
        state.apply(RegisterWill(cid, "n2", epoch, wills[cid]))
    epoch = claim(state, "late", "n2", 3600).epoch
    wills["late"] = WillRecord("w/late", b"gone", 1, False, {"will_delay_interval": 2})
    state.apply(RegisterWill("late", "n2", epoch, wills["late"]))

    result = state.apply(NodeDown("n2", last_seen=100.0, declared_at=104.0, incarnation=3))

    assert isinstance(result, NodeDownResult)
    assert result.wills == (("late", wills["late"]),), "its 2 s had run out when declared"
    assert result.delayed == ("back", "capped", "soon")
    assert {cid: due for cid, (_, due) in state.delayed_wills.items()} == {
        "soon": 105.0,
        "capped": 110.0,
        "back": 130.0,
    }
    claim(state, "back", "n1", 3600)
    assert "back" not in state.delayed_wills, "the client came back: no will"
    restored = ClusterState()
    restored.restore(state.snapshot())
    assert restored.delayed_wills == state.delayed_wills
    assert state.apply(FireWill("soon")) == wills["soon"]
    assert state.apply(FireWill("soon")) is None, "once"
    assert state.apply(FireWill("back")) is None
    again = state.apply(NodeDown("n2", last_seen=200.0, declared_at=201.0, incarnation=3))
    assert again == NodeDownResult((), (), (), state.next_epoch), "already down"
    state.apply(NodeUp("n2"))
    stale = state.apply(NodeDown("n2", last_seen=200.0, declared_at=201.0, incarnation=3))
    assert stale.rehomed == () and "n2" not in state.down, "came back after incarnation 3"
    state.apply(NodeDown("n2", last_seen=300.0, declared_at=301.0, incarnation=4))
    assert "n2" in state.down, "a later death is declared"


def test_node_down_with_no_live_node_left_releases_but_keeps_the_session() -> None:
    state = ClusterState()
    state.apply(SetMembers(("n1",)))
    claim(state, "p", "n1", 10)
    result = state.apply(NodeDown("n1"))
    assert isinstance(result, NodeDownResult)
    assert result.released == ("p",) and result.rehomed == ()
    assert "p" in state.sessions and state.owners.get("p") is None


def test_unknown_commands_are_rejected_not_raised() -> None:
    state = ClusterState()
    assert isinstance(state.apply(("claim", "c1")), Rejected)
    assert state.snapshot() == {**ClusterState().snapshot(), "applied": 1}


# -- snapshots ------------------------------------------------------------------


def _only_builtins(value: Any) -> bool:
    if isinstance(value, dict):
        return type(value) is dict and all(
            _only_builtins(k) and _only_builtins(v) for k, v in value.items()
        )
    if isinstance(value, tuple | list):
        return type(value) in (tuple, list) and all(_only_builtins(v) for v in value)
    return value is None or type(value) in (str, bytes, int, float, bool)


def busy_state() -> ClusterState:
    state = ClusterState()
    state.apply(SetMembers(("n1", "n2", "n3")))
    epoch = claim(state, "p", "n1", 60, (StoredSubscription("a/#", 1),)).epoch
    state.apply(RegisterWill("p", "n1", epoch, WILL))
    state.apply(AddRoute("n1", "a/#"))
    state.apply(AddRoute("n2", "a/b", "g"))
    state.apply(SetRetained("a/b", RetainedRecord(b"v", 1, {"user_property": [("k", "v")]})))
    state.apply(NodeDown("n3"))
    return state


def test_snapshot_is_plain_builtins_and_restores_an_equal_state() -> None:
    state = busy_state()
    snapshot = state.snapshot()
    assert _only_builtins(snapshot), "a dump must not depend on our class names"
    restored = ClusterState()
    restored.restore(pickle.loads(pickle.dumps(snapshot)))
    assert restored.snapshot() == snapshot
    assert nodes_for(restored, "a/b") == nodes_for(state, "a/b") == {"n1", "n2"}
    next_claims = [ClaimClient("p", "n2"), NodeDown("n1")]
    assert [restored.apply(c) for c in next_claims] == [state.apply(c) for c in next_claims]


def test_restore_refuses_a_snapshot_of_another_version() -> None:
    snapshot = busy_state().snapshot()
    snapshot["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        ClusterState().restore(snapshot)


# -- determinism ----------------------------------------------------------------

CLIENTS = st.sampled_from(["a", "b", "c"])
NODES = st.sampled_from(["n1", "n2", "n3", "n4"])
EPOCHS = st.integers(min_value=1, max_value=12)
FILTERS = st.sampled_from(["a/#", "a/+", "a/b", "+/b", "#", "b"])
GROUPS = st.sampled_from([None, "g", "h"])
SUBSCRIPTIONS = st.builds(
    StoredSubscription, st.sampled_from(["a/b", "$share/g/a/#", "#"]), st.integers(0, 2)
)
COMMANDS = st.one_of(
    st.builds(SetMembers, st.lists(NODES, max_size=4).map(tuple)),
    st.builds(
        ClaimClient,
        CLIENTS,
        NODES,
        st.booleans(),
        st.sampled_from([0, 60, 0xFFFFFFFF]),
        st.sampled_from([None, WILL]),
    ),
    st.builds(ReleaseClient, CLIENTS, NODES, EPOCHS),
    st.builds(AddSessionSubscriptions, CLIENTS, NODES, EPOCHS, st.lists(SUBSCRIPTIONS).map(tuple)),
    st.builds(RemoveSessionSubscriptions, CLIENTS, NODES, EPOCHS, st.lists(FILTERS).map(tuple)),
    st.builds(RegisterWill, CLIENTS, NODES, EPOCHS, st.sampled_from([None, WILL])),
    st.builds(AddRoute, NODES, FILTERS, GROUPS),
    st.builds(RemoveRoute, NODES, FILTERS, GROUPS),
    st.builds(
        SetRetained,
        st.sampled_from(["a/b", "b"]),
        st.one_of(
            st.none(),
            st.builds(
                RetainedRecord,
                st.binary(max_size=3),
                st.integers(0, 2),
                st.just({}),
                st.one_of(st.none(), st.floats(0, 2e9)),
            ),
        ),
    ),
    st.builds(NodeDown, NODES),
    st.builds(NodeUp, NODES),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(COMMANDS, max_size=60), st.integers(min_value=0, max_value=60))
def test_the_same_log_gives_the_same_state_and_results(log: list[object], cut: int) -> None:
    """Two fresh replicas, one fed pickled copies (as Raft delivers them), and a
    third restored from a snapshot taken mid-log, all end identical."""
    one, two, late = ClusterState(), ClusterState(), ClusterState()
    results_one = [one.apply(command) for command in log]
    results_two = [two.apply(pickle.loads(pickle.dumps(command))) for command in log]
    assert results_one == results_two
    assert one.snapshot() == two.snapshot()

    cut = min(cut, len(log))
    prefix = ClusterState()
    for command in log[:cut]:
        prefix.apply(command)
    late.restore(pickle.loads(pickle.dumps(prefix.snapshot())))
    assert [late.apply(command) for command in log[cut:]] == results_one[cut:]
    assert late.snapshot() == one.snapshot()
    for topic in ("a/b", "b", "x"):
        assert late.route_targets(topic) == one.route_targets(topic)


# -- the log format ------------------------------------------------------------------

LOGGED_COMMANDS = (
    SetMembers(("n1", "n2")),
    NodeDown("n2"),
    NodeUp("n2"),
    ClaimClient("c1", "n1", False, 60, WillRecord("w", b"x", 1, True, {"content_type": "t"})),
    ReleaseClient("c1", "n1", 3),
    AddSessionSubscriptions(
        "c1", "n1", 3, (StoredSubscription("$share/g/a/#", 1, True, False, 2, 7),)
    ),
    RemoveSessionSubscriptions("c1", "n1", 3, ("a",)),
    RegisterWill("c1", "n1", 3, None),
    AddRoute("n1", "a/+", "g"),
    RemoveRoute("n1", "a/+"),
    SetRetained("t", RetainedRecord(b"p", 1, {}, 12.5)),
)
EARLIER_ENTRY = bytes.fromhex(
    "8005950602000000000000288c14726166746d712e636c75737465722e7374617465948c0a5365744d656d62"
    "6572739493948c026e31948c026e329486948594529468008c084e6f6465446f776e94939468048594529468"
    "008c064e6f6465557094939468048594529468008c0b436c61696d436c69656e74949394288c026331946803"
    "894b3c68008c0a57696c6c5265636f7264949394288c017794430178944b01887d948c0c636f6e74656e745f"
    "74797065948c01749473749481947494529468008c0d52656c65617365436c69656e74949394681268034b03"
    "8794529468008c1741646453657373696f6e537562736372697074696f6e7394939428681268034b0368008c"
    "1253746f726564537562736372697074696f6e949394288c0c2473686172652f672f612f23944b0188894b02"
    "4b077494819485947494529468008c1a52656d6f766553657373696f6e537562736372697074696f6e739493"
    "9428681268034b038c01619485947494529468008c0c526567697374657257696c6c94939428681268034b03"
    "4e7494529468008c08416464526f75746594939468038c03612f2b948c0167948794529468008c0b52656d6f"
    "7665526f757465949394680368384e8794529468008c0b53657452657461696e6564949394681968008c0e52"
    "657461696e65645265636f726494939428430170944b017d9447402900000000000074948194869452947494"
    "2e"
)
"""``LOGGED_COMMANDS`` as one Raft entry, pickled by the code before the commands
moved to ``replication/commands.py`` (then ``raftmq.cluster.state``)."""


def test_log_entries_keep_the_format_journals_and_peers_already_hold() -> None:
    assert pickle.loads(EARLIER_ENTRY) == LOGGED_COMMANDS
    assert pickle.dumps(LOGGED_COMMANDS, pickle.HIGHEST_PROTOCOL) == EARLIER_ENTRY


def test_every_command_counts_as_applied_and_the_count_survives_a_snapshot() -> None:
    """``applied`` is the log position route barriers compare across nodes: every
    command counts, refused or unknown ones too, and a restored node goes on from it."""
    state = ClusterState()
    state.apply(SetMembers(("n1", "n2")))
    state.apply(AddRoute("n1", "a/#", None))
    state.apply(RemoveRoute("n2", "never/added", None))  # changes nothing, still counted
    assert isinstance(state.apply(object()), Rejected)
    assert state.applied == 4
    restored = ClusterState()
    restored.restore(state.snapshot())
    assert restored.applied == 4
    restored.apply(AddRoute("n2", "b", None))
    assert restored.applied == 5


def test_a_node_that_leaves_moves_its_sessions_and_publishes_no_will() -> None:
    """A graceful stop (NodeDown marked leaving) is no client failure: sessions re-home
    as for a death, wills do not go out, and the node is up again with NodeUp."""
    state = ClusterState()
    state.apply(SetMembers(("n1", "n2", "n3")))
    epoch = claim(state, "p", "n3", 600, (StoredSubscription("l/#", 1),)).epoch
    state.apply(RegisterWill("p", "n3", epoch, WILL))
    claim(state, "c", "n3")
    state.apply(RegisterWill("c", "n3", state.owners["c"].epoch, WILL))

    result = state.apply(NodeDown("n3", 10.0, 10.0, leaving=True))

    assert isinstance(result, NodeDownResult)
    assert (result.wills, result.delayed) == ((), ())
    assert [cid for cid, _ in result.rehomed] == ["p"] and result.released == ("c",)
    assert state.wills == {} and state.delayed_wills == {}
    assert state.route_targets("l/x")[0] == {result.rehomed[0][1].node_id}
    assert state.apply(NodeUp("n3")) is True and state.live_members() == ("n1", "n2", "n3")
