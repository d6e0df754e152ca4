"""Password hashes, the password file, and who the authenticator lets in."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from raftmq.node import passwords
from raftmq.node.auth import Authenticator
from raftmq.node.config import ConfigError, load_config
from raftmq.node.passwords import (
    PasswordFile,
    PasswordFileError,
    hash_password,
    parse_hash,
)
from raftmq.node.reason_codes import ReasonCode
from raftmq.node.tls import username_from_certificate

# Cheap parameters keep the tests fast; the format stores them per line anyway.
FAST = {"n": 1024, "r": 8, "p": 1}


def test_hash_round_trip_and_stored_parameters() -> None:
    stored = hash_password(b"s3cret", **FAST)
    kind, n, r, p, salt, digest = stored.split("$")[1:]
    assert (kind, n, r, p) == ("scrypt", "1024", "8", "1")
    assert len(base64.b64decode(salt)) == passwords.SALT_BYTES
    assert len(base64.b64decode(digest)) == passwords.HASH_BYTES
    parsed = parse_hash(stored)
    assert parsed.verify(b"s3cret")
    assert not parsed.verify(b"s3cret ")
    assert not parsed.verify(b"")


def test_default_parameters_are_the_slow_ones() -> None:
    stored = hash_password(b"pw")
    assert stored.startswith(f"$scrypt${passwords.SCRYPT_N}$8$1$")
    assert passwords.SCRYPT_N >= 1 << 14


def test_each_hash_has_its_own_salt() -> None:
    first, second = hash_password(b"same", **FAST), hash_password(b"same", **FAST)
    assert first != second
    assert first.split("$")[5] != second.split("$")[5]


def test_mosquitto_sha512_hash_is_accepted() -> None:
    salt = b"0123456789ab"
    digest = hashlib.sha512(b"pw" + salt).digest()
    stored = f"$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    assert parse_hash(stored).verify(b"pw")
    assert not parse_hash(stored).verify(b"pW")


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
def test_file_written_by_mosquitto_passwd_is_read(tmp_path: Path) -> None:
    path = tmp_path / "mosquitto.pw"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(path), "carol", "c4rol-pw"], check=True, timeout=10
    )
    assert "carol:$7$" in path.read_text()
    users = PasswordFile(str(path))
    assert users.verify("carol", b"c4rol-pw")
    assert not users.verify("carol", b"wrong")


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        ("plaintext", "must start with '$scrypt$'"),
        ("$md5$abc$def", "unknown hash type '$md5$'"),
        ("$scrypt$1000$8$1$c2FsdHNhbHQ=$" + "A" * 44, "power of 2"),
        ("$scrypt$1024$8$1$!!!$" + "A" * 44, "not valid base64"),
        ("$scrypt$1024$8$1$c2FsdA==", "expected $scrypt$N$r$p$salt$hash"),
        (f"$scrypt${1 << 22}$8$1$c2FsdHNhbHQ=${'A' * 44}", "need more than"),
        ("$scrypt$1024$8$1$c2FsdHNhbHQ=$QUJD", "shorter than 16 bytes"),
        ("$7$0$c2FsdA==$" + "A" * 88, "iterations must be"),
    ],
)
def test_bad_hashes_are_refused(stored: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("$", r"\$").replace("(", r"\(")):
        parse_hash(stored)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "passwords"
    path.write_text(text)
    return str(path)


def test_file_with_comments_and_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"# users\n\nalice:{hash_password(b'a', **FAST)}\n  bob:{hash_password(b'b', **FAST)}\n",
    )
    users = PasswordFile(path)
    assert len(users) == 2
    assert users.verify("alice", b"a")
    assert users.verify("bob", b"b")
    assert not users.verify("alice", b"b")
    assert not users.verify("alice", None)
    assert not users.verify("mallory", b"a")


def test_unknown_user_costs_a_full_hash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Otherwise the response time would tell which user names exist."""
    users = PasswordFile(write(tmp_path, f"alice:{hash_password(b'a', **FAST)}\n"))
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(*args: object, **kwargs: object) -> bytes:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "scrypt", counting)
    assert not users.verify("nobody", b"a")
    assert not users.verify("alice", None)
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alice\n", ":1: expected USER:HASH"),
        ("# ok\n:$scrypt$\n", ":2: empty user name"),
        ("alice:secret\n", ":1: the hash must start with '$scrypt$'"),
        ("a:{h}\nb:{h}\na:{h}\n", ":3: user 'a' is listed twice"),
    ],
)
def test_bad_file_names_file_and_line(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text.format(h=hash_password(b"x", **FAST)))
    with pytest.raises(PasswordFileError) as info:
        PasswordFile(path)
    assert str(info.value).startswith(f"password file {path}:")
    assert problem in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope")
    with pytest.raises(PasswordFileError, match=r"cannot read: \[Errno 2\]"):
        PasswordFile(path)


def test_failed_reload_keeps_the_old_users(tmp_path: Path) -> None:
    path = write(tmp_path, f"alice:{hash_password(b'a', **FAST)}\n")
    users = PasswordFile(path)
    Path(path).write_text("alice:broken\n")
    with pytest.raises(PasswordFileError, match=":1:"):
        users.reload()
    assert users.verify("alice", b"a")
    Path(path).write_text(f"bob:{hash_password(b'b', **FAST)}\n")
    users.reload()
    assert not users.verify("alice", b"a")
    assert users.verify("bob", b"b")


# -- who may connect ---------------------------------------------------------


def authenticator(**keys: object) -> Authenticator:
    return Authenticator(load_config(None, keys))


@pytest.mark.parametrize(
    ("listen", "allowed"),
    [
        (["tcp://127.0.0.1:1883"], True),
        (["mqtts://127.0.0.1:8883", "wss://[::1]:8884"], True),
        (["tcp://127.0.0.1:1883", "mqtts://0.0.0.0:8883"], False),
        (["wss://192.0.2.1:443/mqtt"], False),
    ],
)
def test_anonymous_default_follows_the_listeners(listen: list[str], allowed: bool) -> None:
    keys = {"listen": listen, "tls_cert": "c", "tls_key": "k"}
    assert load_config(None, keys).anonymous_allowed is allowed


async def test_loopback_node_without_password_file_lets_anyone_in() -> None:
    auth = authenticator()
    anonymous = await auth.authenticate(None, None, None, tls=False)
    assert anonymous.reason == ReasonCode.SUCCESS and anonymous.username is None
    # An unverifiable user name is not believed: the client is anonymous.
    claimed = await auth.authenticate("admin", b"anything", None, tls=False)
    assert claimed.reason == ReasonCode.SUCCESS and claimed.username is None


async def test_public_node_without_password_file_refuses_everyone() -> None:
    auth = authenticator(listen="tcp://0.0.0.0:1883")
    assert (await auth.authenticate(None, None, None, False)).reason == ReasonCode.NOT_AUTHORIZED
    refused = await auth.authenticate("alice", b"pw", None, False)
    assert refused.reason == ReasonCode.BAD_USER_NAME_OR_PASSWORD


async def test_password_file_decides_for_named_users(tmp_path: Path) -> None:
    path = write(tmp_path, f"alice:{hash_password(b'pw', **FAST)}\n")
    auth = authenticator(password_file=path, allow_anonymous=False)
    good = await auth.authenticate("alice", b"pw", None, False)
    assert good.reason == ReasonCode.SUCCESS and good.username == "alice"
    for user, password in (("alice", b"bad"), ("alice", None), ("eve", b"pw")):
        outcome = await auth.authenticate(user, password, None, False)
        assert outcome.reason == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    anonymous = await auth.authenticate(None, None, None, False)
    assert anonymous.reason == ReasonCode.NOT_AUTHORIZED


async def test_bad_password_is_refused_even_where_anonymous_is_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, f"alice:{hash_password(b'pw', **FAST)}\n")
    auth = authenticator(password_file=path, allow_anonymous=True)
    outcome = await auth.authenticate("alice", b"bad", None, False)
    assert outcome.reason == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert (await auth.authenticate(None, None, None, False)).reason == ReasonCode.SUCCESS


ALICE_CERT = {
    "subject": ((("organizationName", "raftmq development"),), (("commonName", "alice"),)),
    "subjectAltName": (("IP Address", "10.0.0.1"), ("DNS", "alice.devices.example")),
}


def test_username_from_certificate() -> None:
    assert username_from_certificate(ALICE_CERT, "cn") == "alice"
    assert username_from_certificate(ALICE_CERT, "san") == "alice.devices.example"
    assert username_from_certificate({"subject": ()}, "cn") is None
    assert username_from_certificate({"subject": ()}, "san") is None
    assert username_from_certificate(None, "cn") is None


async def test_certificate_name_wins_over_connect_credentials() -> None:
    auth = authenticator(
        listen="mqtts://0.0.0.0:8883",
        tls_cert="c",
        tls_key="k",
        tls_ca="ca",
        tls_require_client_cert=True,
        tls_cert_as_username="cn",
    )
    outcome = await auth.authenticate("mallory", b"x", ALICE_CERT, tls=True)
    assert outcome.reason == ReasonCode.SUCCESS and outcome.username == "alice"
    nameless = await auth.authenticate(None, None, {"subject": ()}, tls=True)
    assert nameless.reason == ReasonCode.NOT_AUTHORIZED
    # A plain listener of the same node has no certificate to go by.
    plain = await auth.authenticate(None, None, None, tls=False)
    assert plain.reason == ReasonCode.NOT_AUTHORIZED


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"listen": "mqtts://127.0.0.1:8883"}, "needs both 'tls_cert' and 'tls_key'"),
        ({"tls_require_client_cert": True}, "'tls_require_client_cert' needs 'tls_ca'"),
        (
            {"tls_ca": "ca", "tls_cert_as_username": "cn"},
            "'tls_cert_as_username' needs 'tls_require_client_cert = true'",
        ),
        ({"tls_cert_as_username": "email"}, "must be one of off, cn, san"),
    ],
)
def test_tls_keys_that_need_each_other(keys: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(")):
        load_config(None, keys)
