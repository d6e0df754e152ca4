"""Retained store: set/get/delete, filter matching and pruning."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_topics import filters, reference_match, topics

from raftmq.node.retained import RetainedStore

STORED = ["a", "a/b", "a/b/c", "a/", "/", "/a", "a//b", "b", "$SYS", "$SYS/x", "$SYS/x/y", "a/$x"]


@pytest.fixture
def store() -> RetainedStore[str]:
    retained: RetainedStore[str] = RetainedStore()
    for topic in STORED:
        retained.set(topic, f"m:{topic}")
    return retained


def test_set_get_delete() -> None:
    retained: RetainedStore[bytes] = RetainedStore()
    assert retained.get("a/b") is None
    retained.set("a/b", b"1")
    retained.set("a/b", b"2")
    assert retained.get("a/b") == b"2"
    assert retained.get("a") is None
    assert retained.get("a/b/c") is None
    assert len(retained) == 1
    assert retained.delete("a") is False
    assert retained.delete("a/b/c") is False
    assert retained.delete("a/b") is True
    assert retained.delete("a/b") is False
    assert retained.get("a/b") is None
    assert len(retained) == 0


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("a", ["a"]),
        ("a/b", ["a/b"]),
        ("a/+", ["a/", "a/$x", "a/b"]),
        ("a/#", ["a", "a/", "a/$x", "a/b", "a/b/c", "a//b"]),  # '#' includes the parent
        ("a/+/b", ["a//b"]),
        ("+", ["a", "b"]),
        ("+/+", ["/", "/a", "a/", "a/$x", "a/b"]),
        ("#", ["/", "/a", "a", "a/", "a/$x", "a/b", "a/b/c", "a//b", "b"]),
        ("/#", ["/", "/a"]),
        ("+/x", []),
        ("$SYS/#", ["$SYS", "$SYS/x", "$SYS/x/y"]),
        ("$SYS/+", ["$SYS/x"]),
        ("$SYS", ["$SYS"]),
        ("+/#", ["/", "/a", "a", "a/", "a/$x", "a/b", "a/b/c", "a//b", "b"]),
        ("c/#", []),
        ("a/b/c/d", []),
    ],
)
def test_match(store: RetainedStore[str], topic_filter: str, expected: list[str]) -> None:
    assert sorted(store.match(topic_filter)) == sorted((t, f"m:{t}") for t in expected)
    assert sorted(t for t in STORED if reference_match(topic_filter, t)) == sorted(expected)


def test_items_is_a_snapshot(store: RetainedStore[str]) -> None:
    assert sorted(store.items()) == sorted((topic, f"m:{topic}") for topic in STORED)
    for topic, _ in store.items():
        store.delete(topic)
    assert len(store) == 0
    assert list(store.items()) == []


def test_delete_prunes_everything(store: RetainedStore[str]) -> None:
    assert store._node_count() > 0
    for topic in STORED:
        assert store.delete(topic) is True
    assert store._node_count() == 0
    assert store.match("#") == []


def test_delete_keeps_nodes_other_topics_still_use() -> None:
    retained: RetainedStore[int] = RetainedStore()
    retained.set("a/b/c", 1)
    retained.set("a", 2)
    retained.delete("a/b/c")
    assert retained._node_count() == 1
    assert retained.match("a/#") == [("a", 2)]
    retained.set("a/b/c", 1)
    retained.delete("a")
    assert retained._node_count() == 3
    assert retained.match("#") == [("a/b/c", 1)]


def test_churn_of_unique_topics_leaves_no_nodes() -> None:
    retained: RetainedStore[int] = RetainedStore()
    for i in range(5000):
        retained.set(f"devices/{i}/status", i)
    for i in range(5000):
        retained.delete(f"devices/{i}/status")
    assert retained._node_count() == 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), topics), max_size=30),
    st.lists(filters, min_size=1, max_size=10),
)
def test_store_agrees_with_reference(ops: list[tuple[bool, str]], topic_filters: list[str]) -> None:
    retained: RetainedStore[int] = RetainedStore()
    model: dict[str, int] = {}
    for step, (keep, topic) in enumerate(ops):
        if keep:
            retained.set(topic, step)
            model[topic] = step
        else:
            assert retained.delete(topic) is (model.pop(topic, None) is not None)
        for topic_filter in topic_filters:
            expected = sorted((t, m) for t, m in model.items() if reference_match(topic_filter, t))
            assert sorted(retained.match(topic_filter)) == expected
    assert len(retained) == len(model)
    assert sorted(retained.items()) == sorted(model.items())
    assert all(retained.get(topic) == message for topic, message in model.items())
    for topic in model:
        retained.delete(topic)
    assert retained._node_count() == 0
