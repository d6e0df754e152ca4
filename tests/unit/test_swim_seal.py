"""Sealing SWIM datagrams: what a member with the cluster secret accepts, once, and why
it drops the rest (the reason the transport counts)."""

from __future__ import annotations

import random

import pytest

from raftmq.cluster.swim import BadPacket, Replayed, Sealer, Unauthenticated, UnknownVersion
from raftmq.cluster.swim.replay import ReplayGuard
from raftmq.cluster.swim.seal import OVERHEAD, VERSION

SECRET = b"correct horse battery staple 42!"
MESSAGE = b"\x01\x01 a SWIM message"


def reason(receiver: Sealer, datagram: bytes) -> str:
    with pytest.raises(BadPacket) as caught:
        receiver.open(datagram)
    return caught.value.reason


def test_a_sealed_message_opens_once_and_hides_its_contents() -> None:
    sender, receiver = Sealer(SECRET), Sealer(SECRET)
    datagram = sender.seal(MESSAGE)
    assert len(datagram) == len(MESSAGE) + OVERHEAD
    assert MESSAGE not in datagram and sender.boot_id not in datagram
    assert sender.seal(MESSAGE)[2:14] != datagram[2:14]  # a fresh nonce each time
    assert receiver.open(datagram) == MESSAGE
    assert reason(receiver, datagram) == "replay"


def test_another_secret_or_any_altered_byte_fails_authentication() -> None:
    sender = Sealer(SECRET)
    assert reason(Sealer(b"another secret, just as long!!"), sender.seal(MESSAGE)) == "auth"
    datagram = sender.seal(MESSAGE)
    receiver = Sealer(SECRET)
    for index in range(1, len(datagram)):  # the header is authenticated too
        altered = bytearray(datagram)
        altered[index] ^= 0x01
        assert reason(receiver, bytes(altered)) in ("auth", "version"), index
    assert receiver.open(datagram) == MESSAGE  # the failures did not spend its counter


def test_encrypted_and_plain_members_refuse_each_other() -> None:
    assert reason(Sealer(SECRET), Sealer(None).seal(MESSAGE)) == "auth"
    assert reason(Sealer(None), Sealer(SECRET).seal(MESSAGE)) == "auth"


def test_truncated_and_unknown_formats() -> None:
    datagram = Sealer(SECRET).seal(MESSAGE)
    receiver = Sealer(SECRET)
    for size in range(OVERHEAD):
        assert reason(receiver, datagram[:size]) == "malformed"
    # Past the fixed part a cut-off datagram cannot be told from an altered one.
    assert reason(receiver, datagram[:-1]) == "auth"
    with pytest.raises(UnknownVersion, match=f"sealing format {VERSION + 1}"):
        receiver.open(bytes((VERSION + 1,)) + datagram[1:])
    assert reason(receiver, bytes((VERSION, 7)) + datagram[2:]) == "version"
    assert reason(Sealer(None), Sealer(None).seal(b"")[:10]) == "malformed"


def test_without_a_secret_packets_are_framed_and_deduplicated_but_readable() -> None:
    sender, receiver = Sealer(None), Sealer(None)
    assert not sender.encrypted
    datagram = sender.seal(MESSAGE)
    assert MESSAGE in datagram
    assert receiver.open(datagram) == MESSAGE
    with pytest.raises(Replayed):
        receiver.open(datagram)


def test_reordered_packets_within_the_window_pass_and_old_ones_do_not() -> None:
    sender, receiver = Sealer(SECRET), Sealer(SECRET, replay_window=64)
    datagrams = [sender.seal(MESSAGE) for _ in range(200)]
    order = list(range(100, 200))
    random.Random(3).shuffle(order)  # reordered by up to 100: some fall out of the window
    late = [i for i in order if i < max(order[: order.index(i) + 1]) - 63]
    accepted = 0
    for i in order:
        try:
            receiver.open(datagrams[i])
            accepted += 1
        except Replayed:
            assert i in late
    assert accepted == 100 - len(late) and late  # the test did reach the window's edge
    assert reason(receiver, datagrams[50]) == "replay"  # long gone


def test_a_restarted_sender_is_a_new_boot_and_boots_are_bounded() -> None:
    receiver = Sealer(SECRET, max_boots=2)
    first = Sealer(SECRET, boot_id=b"bootAAAA")
    old = first.seal(MESSAGE)
    receiver.open(old)
    restarted = Sealer(SECRET, boot_id=b"bootBBBB")
    assert receiver.open(restarted.seal(MESSAGE)) == MESSAGE  # counter 1 again: fine
    receiver.open(Sealer(SECRET, boot_id=b"bootCCCC").seal(MESSAGE))  # evicts AAAA
    assert receiver.open(old) == MESSAGE  # forgotten: the price of a bounded table


def test_the_replay_guard_on_its_own() -> None:
    guard = ReplayGuard(width=4, max_boots=8)
    assert [guard.accept(b"b", c) for c in (5, 3, 5, 2, 1, 9, 6, 5, 2**64 - 1, 9)] == [
        True,
        True,
        False,
        True,
        False,  # 5 - 1 = 4: out of a window of 4
        True,
        True,
        False,
        True,  # a huge jump does not build a huge bitmap
        False,
    ]


def test_secrets_never_show() -> None:
    sealer = Sealer(SECRET)
    shown = [repr(sealer), str(sealer)]
    for datagram in (b"", b"\x01", Sealer(b"x" * 16).seal(MESSAGE), sealer.seal(MESSAGE)):
        for _ in range(2):
            try:
                sealer.open(datagram)
            except BadPacket as exc:
                shown.append(str(exc))
    with pytest.raises(ValueError) as short:
        Sealer(b"short secret")
    shown.append(str(short.value))
    assert len(shown) > 6
    for text in shown:
        assert "horse" not in text and "short secret" not in text
    assert "Unauthenticated" in repr(Unauthenticated("x"))  # exceptions carry only the text
