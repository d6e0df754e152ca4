"""Passwords and ACLs against a real node: `raftmq passwd`, CONNACK codes, SUBACK/PUBACK
refusals for v3 and v5 clients, and SIGHUP reloads that keep clients connected.

Raw clients are used where the exact reason code is the point; mosquitto_pub
checks that a third client library authenticates the same way.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from clients import unique
from rawmqtt import (
    CONNACK,
    PINGREQ_BYTES,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    RawClient,
    RawClients,
    ack,
    publish,
    raw_clients,
    subscribe,
)
from securitykit import connect_packet, sighup_and_wait

from raftmq.node.passwords import PasswordFile, hash_password

if TYPE_CHECKING:
    from conftest import RunningBroker

pytestmark = pytest.mark.raftmq_only  # needs raftmq's password and ACL file keys
RAFTMQ = str(Path(sys.executable).parent / "raftmq")
TIMEOUT = 5.0
BrokerFactory = Callable[..., "RunningBroker"]
V3_REFUSED = 0x80
NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86


def passwd(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `raftmq passwd`, feeding ``password`` through --password-stdin."""
    extra = ["--password-stdin"] if password is not None else []
    return subprocess.run(
        [RAFTMQ, "passwd", *extra, *args],
        input=f"{password}\n" if password is not None else None,
        capture_output=True,
        text=True,
        timeout=30,
    )


def add_user(path: Path, user: str, password: str, *, create: bool = False) -> None:
    result = passwd(*(["-c"] if create else []), str(path), user, password=password)
    assert result.returncode == 0, result.stderr


# -- raftmq passwd -----------------------------------------------------------


def test_passwd_adds_changes_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    missing = passwd(str(path), "alice", password="x")
    assert missing.returncode == 1
    assert "does not exist (use -c to create it)" in missing.stderr

    add_user(path, "alice", "first", create=True)
    assert path.stat().st_mode & 0o777 == 0o600
    first_line = path.read_text()
    assert first_line.startswith("alice:$scrypt$16384$8$1$")
    assert "first" not in first_line
    add_user(path, "bob", "b0b")
    path.write_text("# team\n" + path.read_text())
    add_user(path, "alice", "second")
    users = PasswordFile(str(path))
    assert users.verify("alice", b"second") and not users.verify("alice", b"first")
    assert users.verify("bob", b"b0b")
    assert path.read_text().splitlines()[0] == "# team"

    deleted = passwd("-D", str(path), "bob")
    assert deleted.returncode == 0, deleted.stderr
    assert [line.split(":")[0] for line in path.read_text().splitlines()] == ["# team", "alice"]
    again = passwd("-D", str(path), "bob")
    assert again.returncode == 1 and f"user 'bob' is not in {path}" in again.stderr


def test_passwd_keeps_the_mode_of_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    add_user(path, "alice", "pw", create=True)
    path.chmod(0o640)
    add_user(path, "bob", "pw")
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(
    ("user", "problem"),
    [("a:b", "contains ':'"), ("", "the user name is empty"), ("#root", "starts with '#'")],
)
def test_passwd_refuses_bad_user_names(tmp_path: Path, user: str, problem: str) -> None:
    result = passwd("-c", str(tmp_path / "p"), user, password="pw")
    assert result.returncode == 1 and problem in result.stderr
    assert not (tmp_path / "p").exists()


def test_passwd_refuses_an_empty_password(tmp_path: Path) -> None:
    result = passwd("-c", str(tmp_path / "p"), "alice", password="")
    assert result.returncode == 1 and "the password is empty" in result.stderr


def run_on_terminal(args: list[str], answers: list[str]) -> tuple[int, str]:
    """Run ``args`` on a pseudo-terminal, answering each prompt in turn; (exit code, output)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.execv(args[0], args)
    output = b""
    deadline = time.monotonic() + 30
    pending = list(answers)
    answered = 0  # output up to here was already answered
    try:
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no exit within 30 s; output so far: {output!r}"
            if not select.select([fd], [], [], remaining)[0]:
                continue
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            # getpass prints its prompt only once echo is off, so answering then is safe.
            if pending and output[answered:].rstrip().endswith(b":"):
                os.write(fd, pending.pop(0).encode() + b"\n")
                answered = len(output)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_passwd_asks_twice_on_the_terminal(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    code, output = run_on_terminal(
        [RAFTMQ, "passwd", "-c", str(path), "alice"], ["typed-pw", "typed-pw"]
    )
    assert code == 0, output
    assert "Password:" in output and "Reenter password:" in output
    assert "typed-pw" not in output  # not echoed
    assert PasswordFile(str(path)).verify("alice", b"typed-pw")

    code, output = run_on_terminal([RAFTMQ, "passwd", str(path), "alice"], ["new-pw", "typo"])
    assert code == 1 and "the passwords do not match" in output
    assert PasswordFile(str(path)).verify("alice", b"typed-pw")


# -- authentication ----------------------------------------------------------


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    """Each user's password is USER-pw (written directly: the CLI has its own tests)."""
    path = tmp_path / "passwords"
    users = ("alice", "bob", "carol", "watcher")
    path.write_text("".join(f"{u}:{hash_password(f'{u}-pw'.encode())}\n" for u in users))
    return path


def connack_code(
    node: RunningBroker, level: int, user: str | None, password: bytes | None, **kwargs: object
) -> int:
    client = RawClient(node.host, node.port, level)
    try:
        client.send(
            connect_packet(unique("auth"), level=level, username=user, password=password, **kwargs)  # type: ignore[arg-type]
        )
        code = client.expect(CONNACK).reason_code
        assert code is not None
        return code
    finally:
        client.close()


@pytest.mark.parametrize(
    ("level", "bad_password", "not_authorized"), [(3, 4, 5), (4, 4, 5), (5, 0x86, 0x87)]
)
def test_connack_codes(
    broker_factory: BrokerFactory,
    password_file: Path,
    level: int,
    bad_password: int,
    not_authorized: int,
) -> None:
    node = broker_factory(password_file=str(password_file), allow_anonymous=False)
    assert connack_code(node, level, "alice", b"alice-pw") == 0
    assert connack_code(node, level, "alice", b"bob-pw") == bad_password
    assert connack_code(node, level, "mallory", b"alice-pw") == bad_password
    assert connack_code(node, level, "alice", None) == bad_password
    assert connack_code(node, level, None, None) == not_authorized


def test_loopback_node_with_password_file_still_checks_passwords(
    broker_factory: BrokerFactory, password_file: Path
) -> None:
    """allow_anonymous unset on a loopback node: anonymous gets in, a wrong password does not."""
    node = broker_factory(password_file=str(password_file))
    assert connack_code(node, 5, None, None) == 0
    assert connack_code(node, 5, "alice", b"wrong") == BAD_CREDENTIALS
    assert connack_code(node, 5, "alice", b"alice-pw") == 0


def test_anonymous_refused_without_a_password_file(broker_factory: BrokerFactory) -> None:
    node = broker_factory(allow_anonymous=False)
    assert connack_code(node, 5, None, None) == NOT_AUTHORIZED
    assert connack_code(node, 4, None, None) == 5
    # A user name nobody can check does not get in either.
    assert connack_code(node, 5, "alice", b"anything") == BAD_CREDENTIALS


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mosquitto_pub_with_password(
    broker_factory: BrokerFactory, password_file: Path, version: str
) -> None:
    node = broker_factory(password_file=str(password_file), allow_anonymous=False)
    base = ["mosquitto_pub", "-V", version, "-h", node.host, "-p", str(node.port)]
    base += ["-t", unique("pw"), "-m", "x", "-q", "1", "-u", "alice"]
    good = subprocess.run([*base, "-P", "alice-pw"], capture_output=True, text=True, timeout=10)
    assert good.returncode == 0, good.stderr
    bad = subprocess.run([*base, "-P", "nope"], capture_output=True, text=True, timeout=10)
    assert bad.returncode != 0
    assert "bad user name or password" in bad.stderr.lower(), bad.stderr


# -- ACL ---------------------------------------------------------------------

ACL = """\
# everyone (a pattern line: topic lines up here would be for anonymous clients only)
pattern read public/#
pattern readwrite devices/%c/#

user alice
topic readwrite alice/#
topic write inbox/alice
topic deny alice/secret/#

user bob
topic read alice/news

user watcher
topic read #
"""


@pytest.fixture
def acl_node(broker_factory: BrokerFactory, password_file: Path, tmp_path: Path) -> RunningBroker:
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    return broker_factory(
        password_file=str(password_file), acl_file=str(acl), allow_anonymous=False
    )


@pytest.fixture
def raw(acl_node: RunningBroker) -> Iterator[RawClients]:
    with raw_clients(acl_node.host, acl_node.port) as clients:
        yield clients


def login(raw: RawClients, user: str, level: int = 5, client_id: str | None = None) -> RawClient:
    client = raw.open(level)
    cid = client_id if client_id is not None else unique(user)
    client.send(connect_packet(cid, level=level, username=user, password=f"{user}-pw".encode()))
    connack = client.expect(CONNACK)
    assert connack.reason_code == 0, f"{user} refused: {connack}"
    return client


def suback(client: RawClient, *filters: str, packet_id: int = 1) -> list[int]:
    client.send(subscribe(packet_id, [(f, 1) for f in filters], level=client.level))
    return client.expect(SUBACK).reason_codes


def topics_until(client: RawClient, sentinel: str) -> list[str]:
    """Topics of the PUBLISHes received before the one on ``sentinel`` (acking QoS 1)."""
    seen: list[str] = []
    while True:
        pkt = client.expect(PUBLISH)
        if pkt.qos == 1 and pkt.packet_id is not None:
            client.send(ack(PUBACK, pkt.packet_id))
        if pkt.topic == sentinel:
            return seen
        assert pkt.topic is not None
        seen.append(pkt.topic)


@pytest.fixture
def watcher(raw: RawClients) -> RawClient:
    client = login(raw, "watcher")
    assert suback(client, "#") == [1]
    return client


@pytest.mark.parametrize(("level", "refused"), [(4, V3_REFUSED), (5, NOT_AUTHORIZED)])
def test_subscribe_per_user_everyone_and_client_id(
    raw: RawClients, level: int, refused: int
) -> None:
    alice = login(raw, "alice", level)
    assert suback(alice, "alice/public/#", "public/#", "bob/#", "#") == [1, 1, refused, refused]
    bob = login(raw, "bob", level)
    assert suback(bob, "alice/news", "alice/public/#", "public/news") == [1, refused, 1]
    device = login(raw, "carol", level, client_id="dev-7")
    assert suback(device, "devices/dev-7/#", "devices/dev-8/#", "devices/+/x") == [
        1,
        refused,
        refused,
    ]


@pytest.mark.parametrize(("level", "refused"), [(4, V3_REFUSED), (5, NOT_AUTHORIZED)])
def test_write_only_and_deny_rules_refuse_subscriptions(
    raw: RawClients, level: int, refused: int
) -> None:
    alice = login(raw, "alice", level)
    # inbox/alice is write-only; alice/secret/# covers alice/secret/x. alice/# only
    # overlaps the deny: granted, filtered per message (test_acl_semantics.py).
    assert suback(alice, "inbox/alice", "alice/secret/x", "alice/secret/#", "alice/#") == [
        refused,
        refused,
        refused,
        1,
    ]


def test_denied_publish_v5_gets_0x87_and_is_not_delivered(
    raw: RawClients, watcher: RawClient
) -> None:
    alice = login(raw, "alice")
    bob = login(raw, "bob")
    sentinel = "alice/" + unique("sentinel")
    checks = [
        (bob, "alice/news", NOT_AUTHORIZED),  # bob may only read it
        (alice, "alice/secret/plan", NOT_AUTHORIZED),  # deny wins over alice/#
        (alice, "public/notice", NOT_AUTHORIZED),  # everyone may only read public/#
        (alice, "inbox/alice", 0),  # write-only is writable
        (alice, "alice/ok", 0),
    ]
    for packet_id, (client, topic, expected) in enumerate(checks, 1):
        client.send(publish(topic, b"x", qos=1, packet_id=packet_id))
        assert client.expect(PUBACK).reason_code == expected, topic
    bob.send(publish("alice/news", b"x", qos=2, packet_id=50))
    pubrec = bob.expect(PUBREC)
    assert (pubrec.packet_id, pubrec.reason_code) == (50, NOT_AUTHORIZED)
    bob.send(publish("alice/news", b"qos0"))  # QoS 0: just dropped
    alice.send(publish(sentinel, b"end", qos=1, packet_id=99))
    alice.expect(PUBACK)
    assert topics_until(watcher, sentinel) == ["inbox/alice", "alice/ok"]
    bob.send(PINGREQ_BYTES)
    assert bob.expect(PINGRESP)  # refusals do not end the connection


def test_denied_publish_v3_is_acknowledged_and_dropped(raw: RawClients, watcher: RawClient) -> None:
    bob = login(raw, "bob", level=4)
    alice = login(raw, "alice", level=4)
    sentinel = "alice/" + unique("sentinel")
    bob.send(publish("alice/news", b"q1", qos=1, packet_id=1, level=4))
    assert bob.expect(PUBACK).packet_id == 1
    bob.send(publish("alice/news", b"q2", qos=2, packet_id=2, level=4))
    assert bob.expect(PUBREC).packet_id == 2
    bob.send(ack(PUBREL, 2))
    assert bob.expect(PUBCOMP).packet_id == 2
    bob.send(publish("alice/news", b"q0", level=4))
    alice.send(publish("alice/news", b"allowed", qos=1, packet_id=1, level=4))
    alice.expect(PUBACK)
    alice.send(publish(sentinel, b"end", qos=1, packet_id=2, level=4))
    alice.expect(PUBACK)
    assert topics_until(watcher, sentinel) == ["alice/news"]  # alice's, none of bob's


def test_publish_under_own_client_id(raw: RawClients, watcher: RawClient) -> None:
    device = login(raw, "carol", client_id="dev-7")
    device.send(publish("devices/dev-7/temp", b"21", qos=1, packet_id=1))
    assert device.expect(PUBACK).reason_code == 0
    device.send(publish("devices/dev-8/temp", b"21", qos=1, packet_id=2))
    assert device.expect(PUBACK).reason_code == NOT_AUTHORIZED
    device.send(publish("devices/dev-7/end", b"", qos=1, packet_id=3))
    device.expect(PUBACK)
    assert topics_until(watcher, "devices/dev-7/end") == ["devices/dev-7/temp"]


@pytest.mark.parametrize(("level", "refused"), [(4, 5), (5, NOT_AUTHORIZED)])
def test_will_on_a_denied_topic_refuses_the_connect(
    acl_node: RunningBroker, level: int, refused: int
) -> None:
    client = RawClient(acl_node.host, acl_node.port, level)
    try:
        client.send(
            connect_packet(
                unique("bob"), level=level, username="bob", password=b"bob-pw", will_topic="alice/x"
            )
        )
        assert client.expect(CONNACK).reason_code == refused
    finally:
        client.close()


# -- SIGHUP --------------------------------------------------------------------


def test_sighup_reloads_passwords_and_acl_without_dropping_clients(
    acl_node: RunningBroker, raw: RawClients, password_file: Path, tmp_path: Path
) -> None:
    alice = login(raw, "alice")
    assert suback(alice, "alice/news") == [1]
    bob = login(raw, "bob")
    bob.send(publish("alice/news", b"before", qos=1, packet_id=1))
    assert bob.expect(PUBACK).reason_code == NOT_AUTHORIZED
    assert suback(bob, "alice/news", packet_id=2) == [1]

    add_user(password_file, "alice", "rotated")
    (tmp_path / "acl").write_text(
        "user alice\ntopic readwrite alice/#\nuser bob\ntopic write alice/news\n"
    )
    line = sighup_and_wait(acl_node, "SIGHUP: reloaded ACL file")
    assert "(2 entries)" in line
    assert any("SIGHUP: reloaded password file" in out for out in acl_node.output)

    # Both stay connected, and new operations follow the new files.
    bob.send(publish("alice/news", b"after", qos=1, packet_id=3))
    got = alice.expect(PUBLISH)
    assert (got.topic, got.payload) == ("alice/news", b"after")
    # bob subscribed under the old rules; the new ones took his read right away, so
    # that subscription delivers nothing more: his next packets are the PUBACK and SUBACK.
    assert bob.expect(PUBACK).reason_code == 0
    assert suback(bob, "alice/news", packet_id=4) == [NOT_AUTHORIZED]
    for client in (alice, bob):
        client.send(PINGREQ_BYTES)
        client.expect(PINGRESP)
    assert connack_code(acl_node, 5, "alice", b"alice-pw") == BAD_CREDENTIALS
    assert connack_code(acl_node, 5, "alice", b"rotated") == 0


def test_failed_reload_keeps_the_previous_files(
    acl_node: RunningBroker, raw: RawClients, password_file: Path, tmp_path: Path
) -> None:
    bob = login(raw, "bob")
    (tmp_path / "acl").write_text("user bob\ntopic write alice/news\ntopic wat alice/#/x\n")
    password_file.write_text(password_file.read_text() + "broken line\n")
    line = sighup_and_wait(acl_node, "SIGHUP: kept the previous ACL file")
    assert f"{tmp_path / 'acl'}:3:" in line
    assert any(
        "SIGHUP: kept the previous password file" in out and f"{password_file}:5:" in out
        for out in acl_node.output
    )
    bob.send(publish("alice/news", b"x", qos=1, packet_id=1))
    assert bob.expect(PUBACK).reason_code == NOT_AUTHORIZED  # the old rules
    assert connack_code(acl_node, 5, "alice", b"alice-pw") == 0  # the old users


@pytest.mark.parametrize(
    ("key", "content", "problem"),
    [
        ("password_file", None, "password file {path}: cannot read: [Errno 2]"),
        ("password_file", "alice\n", "password file {path}:1: expected USER:HASH"),
        ("acl_file", "user\n", "ACL file {path}:1: 'user' needs a user name"),
    ],
)
def test_node_refuses_to_start_with_a_bad_file(
    tmp_path: Path, key: str, content: str | None, problem: str
) -> None:
    path = tmp_path / "file"
    if content is not None:
        path.write_text(content)
    config = tmp_path / "raftmq.toml"
    config.write_text(f'listen = "tcp://127.0.0.1:0"\n{key} = "{path}"\n')
    result = subprocess.run(
        [RAFTMQ, "node", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.startswith("raftmq: error: " + problem.format(path=path)), result.stderr
    assert "listening" not in result.stdout
