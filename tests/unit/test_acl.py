"""ACL file syntax, filter coverage, and the decisions made from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftmq.node.acl import Access, AccessControl, AclFileError, covers, overlaps, parse_acl
from raftmq.node.config import ConfigError

EXAMPLE = """\
# anonymous clients
topic read $SYS/#
topic read public/#
pattern readwrite devices/%c/#
pattern read users/%u/inbox/#
pattern write users/%u/outbox

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic write shared/with spaces

user bob
topic read alice/news
topic bob/#
"""


@pytest.fixture
def acl(tmp_path: Path) -> AccessControl:
    path = tmp_path / "acl"
    path.write_text(EXAMPLE)
    return AccessControl(str(path))


def test_parse_sections() -> None:
    rules = parse_acl(EXAMPLE, "acl")
    assert [(r.access, r.topic_filter) for r in rules.anonymous] == [
        (Access.READ, "$SYS/#"),
        (Access.READ, "public/#"),
    ]
    assert [(r.access, r.topic_filter) for r in rules.per_user["alice"]] == [
        (Access.READWRITE, "alice/#"),
        (Access.DENY, "alice/secret/#"),
        (Access.WRITE, "shared/with spaces"),
    ]
    # No access word means readwrite, as in Mosquitto.
    assert rules.per_user["bob"][1].access == Access.READWRITE
    assert [r.topic_filter for r in rules.patterns] == [
        "devices/%c/#",
        "users/%u/inbox/#",
        "users/%u/outbox",
    ]
    assert len(rules) == 10


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("topic read a\ntopik read b\n", ":2: unknown keyword 'topik'"),
        ("user\n", ":1: 'user' needs a user name"),
        ("topic read\n", ":1: missing topic filter"),
        ("topic read a/#/b\n", ":1: '#' must be a whole last level in 'a/#/b'"),
        ("# c\n\ntopic write a+/b\n", ":3: '+' must be a whole level in 'a+/b'"),
        ("pattern read users/%U/x\n", ":1: pattern 'users/%U/x': only %u"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "broker.acl"
    path.write_text(text)
    with pytest.raises(AclFileError) as info:
        AccessControl(str(path))
    message = str(info.value)
    assert message.startswith(f"ACL file {path}:"), message
    assert problem in message, message
    assert isinstance(info.value, ConfigError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AclFileError, match=r"cannot read: \[Errno 2\]"):
        AccessControl(str(tmp_path / "nope"))


def levels(text: str) -> tuple[str, ...]:
    return tuple(text.split("/"))


@pytest.mark.parametrize(
    ("rule", "subscription", "expected"),
    [
        ("a/#", "a/b/c", True),
        ("a/#", "a", True),
        ("a/#", "a/#", True),
        ("a/#", "a/+", True),
        ("a/+", "a/b", True),
        ("a/+", "a/+", True),
        ("a/+", "a/#", False),  # a/# also matches a and a/b/c
        ("a/b", "a/+", False),
        ("a/+/c", "a/+/c", True),
        ("a/+/c", "a/b/+", False),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
        ("#", "a/b", True),
        ("#", "#", True),
        ("#", "$SYS/broker/uptime", False),  # wildcards never match $ topics
        ("+/broker/#", "$SYS/broker/x", False),
        ("$SYS/#", "$SYS/broker/x", True),
        ("a//b", "a//b", True),
        ("a/+/b", "a//b", True),
    ],
)
def test_covers(rule: str, subscription: str, expected: bool) -> None:
    assert covers(levels(rule), levels(subscription)) is expected


@pytest.mark.parametrize(
    ("rule", "subscription", "expected"),
    [
        ("a/secret", "a/#", True),
        ("a/secret/#", "a/+", True),  # a/secret/# matches a/secret
        ("a/secret/#", "a/public", False),
        ("a/+/x", "a/b/+", True),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
        ("#", "x", True),
        ("#", "$SYS/x", False),
        ("$SYS/#", "#", False),
        ("$SYS/x", "+/x", False),
        ("+/x", "b/+", True),
    ],
)
def test_overlaps(rule: str, subscription: str, expected: bool) -> None:
    assert overlaps(levels(rule), levels(subscription)) is expected
    assert overlaps(levels(subscription), levels(rule)) is expected


def test_lines_before_any_user_are_for_anonymous_clients(acl: AccessControl) -> None:
    """As in Mosquitto; a pattern without %u or %c is how a rule reaches everyone."""
    assert acl.may_subscribe(None, "c1", "public/news/#")
    assert acl.may_subscribe(None, "c1", "$SYS/broker/uptime")
    assert not acl.may_publish(None, "c1", "public/news")
    for user in ("alice", "carol"):
        assert not acl.may_subscribe(user, "c1", "public/news/#")
    assert not acl.may_subscribe(None, "c1", "#")


def test_rules_per_user(acl: AccessControl) -> None:
    assert acl.may_publish("alice", "c1", "alice/x")
    assert acl.may_subscribe("alice", "c1", "alice/public/+")
    assert acl.may_publish("alice", "c1", "shared/with spaces")
    assert not acl.may_subscribe("alice", "c1", "shared/with spaces")  # write only
    assert not acl.may_publish("bob", "c1", "alice/x")
    assert acl.may_subscribe("bob", "c1", "alice/news")
    assert not acl.may_publish("bob", "c1", "alice/news")  # read only
    assert acl.may_publish("bob", "c1", "bob/x")
    assert not acl.may_publish(None, "c1", "alice/x")
    assert not acl.may_publish("carol", "c1", "alice/x")


def test_deny_wins(acl: AccessControl) -> None:
    assert not acl.may_publish("alice", "c1", "alice/secret")
    assert not acl.may_publish("alice", "c1", "alice/secret/deep")
    assert not acl.may_subscribe("alice", "c1", "alice/secret/#")
    assert not acl.may_read("alice", "c1", "alice/secret/deep")
    # alice/# could receive alice/secret/...: granted, and filtered message by message.
    assert acl.may_subscribe("alice", "c1", "alice/#")
    assert acl.may_subscribe("alice", "c1", "alice/+")
    assert acl.may_read("alice", "c1", "alice/x")


def test_patterns_per_client_id_and_user(acl: AccessControl) -> None:
    assert acl.may_publish(None, "sensor-7", "devices/sensor-7/temp")
    assert acl.may_subscribe(None, "sensor-7", "devices/sensor-7/#")
    assert not acl.may_publish(None, "sensor-7", "devices/sensor-8/temp")
    assert not acl.may_subscribe(None, "sensor-7", "devices/+/temp")
    assert acl.may_subscribe("bob", "c1", "users/bob/inbox/#")
    assert not acl.may_subscribe("bob", "c1", "users/alice/inbox/#")
    assert acl.may_publish("bob", "c1", "users/bob/outbox")
    assert not acl.may_subscribe("bob", "c1", "users/bob/outbox")
    # %u patterns do not apply to anonymous clients (no "users//inbox" for them).
    assert not acl.may_subscribe(None, "c1", "users//inbox/#")


def test_wildcards_in_names_deny_everything(acl: AccessControl) -> None:
    """A client id of '+' would otherwise turn devices/%c/# into devices/+/#."""
    assert not acl.may_subscribe(None, "+", "devices/+/#")
    assert not acl.may_publish(None, "#", "devices/#")
    assert not acl.may_subscribe("al#ce", "c1", "alice/x")
    assert acl.may_subscribe(None, "c1", "public/#")


BROAD = "pattern readwrite #\npattern deny secret/#\n"
"""The most common shape: everything, bar one subtree (patterns reach every client)."""
TWENTY = "".join(f"pattern read site/{n}/#\npattern deny site/{n}/private/#\n" for n in range(10))
SEMANTICS = [
    # (ACL file, filter, granted?, topics delivered, topics held back)
    (BROAD, "#", True, ["a", "a/b", "secrets", "x/secret"], ["secret", "secret/x", "secret/x/y"]),
    (BROAD, "+/x", True, ["a/x", "b/x"], ["secret/x"]),
    (BROAD, "secret/#", False, [], []),
    (BROAD, "secret/x", False, [], []),
    (BROAD, "secret/+/y", False, [], []),
    (BROAD, "public/#", True, ["public", "public/secret"], []),
    (BROAD, "$SYS/#", False, [], []),  # '#' never reaches '$' topics
    ("pattern read sensors/kitchen/#\n", "sensors/#", False, [], []),
    ("pattern read sensors/kitchen/#\n", "sensors/kitchen/+", True, ["sensors/kitchen/t"], []),
    ("pattern read a/+\n", "a/#", False, [], []),
    ("pattern write a/#\n", "a/b", False, [], []),
    ("pattern read devices/%c/#\n", "devices/c1/#", True, ["devices/c1/t"], []),
    ("pattern read devices/%c/#\n", "devices/+/t", False, [], []),
    (TWENTY, "site/3/#", True, ["site/3/x", "site/3/privat"], ["site/3/private/k"]),
    (TWENTY, "site/+/private/#", False, [], []),
    (TWENTY, "site/#", False, [], []),  # no rule covers all of site/
]


@pytest.mark.parametrize(("text", "topic_filter", "granted", "delivered", "held"), SEMANTICS)
def test_semantics_table(
    tmp_path: Path,
    text: str,
    topic_filter: str,
    granted: bool,
    delivered: list[str],
    held: list[str],
) -> None:
    """The table in docs/security.md: what a SUBSCRIBE gets, and which messages then arrive."""
    path = tmp_path / "acl"
    path.write_text(text)
    acl = AccessControl(str(path))
    assert acl.may_subscribe("u", "c1", topic_filter) is granted
    if not granted:
        return
    rights = acl.rights_for("u", "c1")
    assert rights.clean([topic_filter]) is not held  # a check only where a deny overlaps
    for topic in delivered:
        assert rights.may_read(topic), topic
    for topic in held:
        assert not rights.may_read(topic), topic


def test_rights_held_across_a_reload_follow_the_new_rules(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    path.write_text("user u\ntopic read a/#\n")
    acl = AccessControl(str(path))
    rights = acl.rights_for("u", "c1")  # as a connection holds them
    assert rights.clean(["a/#"]) and rights.may_read("a/b")
    path.write_text("user u\ntopic read a/#\ntopic deny a/b\n")
    acl.reload()
    assert not rights.clean(["a/#"])
    assert rights.may_read("a/c") and not rights.may_read("a/b")
    path.write_text("user u\ntopic read b/#\n")
    acl.reload()
    assert not rights.may_read("a/c")
    assert acl.rights_for("u", "c1") is rights


def test_no_pattern_rules_no_wildcard_denial(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    path.write_text("topic read public/#\n")
    assert AccessControl(str(path)).may_subscribe(None, "odd+id", "public/#")


def test_reload_changes_decisions_and_failure_keeps_the_old_rules(acl: AccessControl) -> None:
    assert acl.may_publish("bob", "c1", "bob/x")  # now cached
    path = Path(acl.path)
    path.write_text("user bob\ntopic read bob/#\n")
    acl.reload()
    assert not acl.may_publish("bob", "c1", "bob/x")
    assert acl.may_subscribe("bob", "c1", "bob/#")
    path.write_text("user bob\ntopic readwrite bob/#\ntopic bogus\nwat\n")
    with pytest.raises(AclFileError, match=":4: unknown keyword 'wat'"):
        acl.reload()
    assert not acl.may_publish("bob", "c1", "bob/x")
    assert len(acl) == 1


def test_decision_cache_is_bounded(monkeypatch: pytest.MonkeyPatch, acl: AccessControl) -> None:
    monkeypatch.setattr("raftmq.node.acl.DECISION_CACHE_SIZE", 10)
    for i in range(100):
        assert acl.may_publish("bob", "c1", f"bob/{i}")
        assert not acl.may_publish("bob", f"c{i}", f"carol/{i}")
    assert len(acl.rights_for("bob", "c1").writes) <= 10
    assert len(acl._clients) <= 10
