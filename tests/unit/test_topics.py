"""Subscription index: MQTT matching rules, memo invalidation and pruning."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftmq.node.topics import TopicIndex, parse_shared, topic_levels

TOPIC_LEVELS = ["a", "b", "", "$x"]


def reference_match(topic_filter: str, topic: str) -> bool:
    """MQTT §4.7 matching written the obvious way, to check the trie against."""
    filter_levels = topic_filter.split("/")
    topic_levels_ = topic.split("/")
    if topic_levels_[0].startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for i, level in enumerate(filter_levels):
        if level == "#":
            return True
        if i >= len(topic_levels_) or level not in ("+", topic_levels_[i]):
            return False
    return len(filter_levels) == len(topic_levels_)


def matched_filters(index: TopicIndex[str, int], topic: str) -> set[str]:
    return {topic_filter for topic_filter, _, _ in index.match(topic)}


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/b", "a", False),
        ("a", "a/b", False),
        ("a/+", "a/b", True),
        ("a/+", "a", False),
        ("a/+", "a/b/c", False),
        ("a/+", "a/", True),  # '+' matches an empty level
        ("+", "", True),
        ("+/+", "/a", True),
        ("+", "/a", False),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a//c", True),
        ("a/#", "a", True),  # '#' matches the parent level
        ("a/#", "a/b", True),
        ("a/#", "a/b/c", True),
        ("a/#", "a/", True),
        ("a/#", "b", False),
        ("a/#", "ab", False),
        ("#", "a", True),
        ("#", "a/b/c", True),
        ("#", "/", True),
        ("+/#", "a", True),
        ("a//b", "a//b", True),
        ("a//b", "a/b", False),
        ("/a", "/a", True),
        ("/a", "a", False),
        ("/#", "/a/b", True),
        ("/#", "a", False),
        ("$SYS/#", "$SYS/x", True),
        ("$SYS/#", "$SYS", True),
        ("$SYS/+", "$SYS/x", True),
        ("#", "$SYS/x", False),
        ("#", "$SYS", False),
        ("+/x", "$SYS/x", False),
        ("+", "$SYS", False),
        ("+/#", "$SYS/x", False),
        ("a/$x", "a/$x", True),
        ("a/+", "a/$x", True),  # the '$' rule applies to the first level only
        ("a/#", "a/$x", True),
    ],
)
def test_matching_rules(topic_filter: str, topic: str, expected: bool) -> None:
    index: TopicIndex[str, int] = TopicIndex()
    index.add(topic_filter, "c", 1)
    assert (index.match(topic) == ((topic_filter, "c", 1),)) is expected
    assert reference_match(topic_filter, topic) is expected


def test_match_returns_every_filter_key_and_value() -> None:
    index: TopicIndex[str, str] = TopicIndex()
    index.add("a/b", "c1", "v1")
    index.add("a/b", "c2", "v2")
    index.add("a/+", "c1", "v3")
    index.add("#", "c3", "v4")
    index.add("a/c", "c4", "v5")
    assert sorted(index.match("a/b")) == [
        ("#", "c3", "v4"),
        ("a/+", "c1", "v3"),
        ("a/b", "c1", "v1"),
        ("a/b", "c2", "v2"),
    ]
    assert index.match("x") == (("#", "c3", "v4"),)
    assert index.match("$x") == ()


def test_add_reports_new_keys_and_replaces_values() -> None:
    index: TopicIndex[tuple[str, str], int] = TopicIndex()
    assert index.add("a", ("g", "c"), 1) is True
    assert index.add("a", ("g", "c"), 2) is False
    assert index.add("a", ("g", "d"), 3) is True
    assert len(index) == 2
    assert index.subscribers("a") == {("g", "c"): 2, ("g", "d"): 3}
    assert index.subscribers("b") == {}


def test_remove_reports_presence() -> None:
    index: TopicIndex[str, int] = TopicIndex()
    index.add("a/+", "c", 1)
    assert index.remove("a/+", "d") is False
    assert index.remove("a/#", "c") is False
    assert index.remove("a/+", "c") is True
    assert index.remove("a/+", "c") is False
    assert len(index) == 0


def test_subscribers_is_a_copy() -> None:
    index: TopicIndex[str, int] = TopicIndex()
    index.add("a", "c", 1)
    index.subscribers("a")["d"] = 2
    assert index.match("a") == (("a", "c", 1),)


def test_filters_lists_only_filters_with_keys_and_tolerates_mutation() -> None:
    index: TopicIndex[str, int] = TopicIndex()
    for topic_filter in ("a", "a/+", "#", "$SYS/#"):
        index.add(topic_filter, "c", 1)
    index.remove("a", "c")
    assert sorted(index.filters()) == ["#", "$SYS/#", "a/+"]
    for topic_filter in index.filters():
        index.remove(topic_filter, "c")
    assert list(index.filters()) == []


def test_match_result_changes_after_add_and_remove() -> None:
    index: TopicIndex[str, int] = TopicIndex()
    index.add("a/b", "c1", 1)
    assert matched_filters(index, "a/b") == {"a/b"}
    index.add("a/#", "c2", 2)
    assert matched_filters(index, "a/b") == {"a/b", "a/#"}
    index.add("a/#", "c2", 3)  # replacing a value must show up too
    assert ("a/#", "c2", 3) in index.match("a/b")
    index.add("a/#", "c3", 4)
    assert len(index.match("a/b")) == 3
    index.remove("a/#", "c2")
    assert sorted(index.match("a/b")) == [("a/#", "c3", 4), ("a/b", "c1", 1)]
    index.remove("a/b", "c1")
    assert index.match("a/b") == (("a/#", "c3", 4),)
    index.remove("a/#", "c3")
    assert index.match("a/b") == ()


def test_cache_is_bounded() -> None:
    index: TopicIndex[str, int] = TopicIndex(cache_size=4)
    index.add("#", "c", 1)
    for i in range(10):
        assert index.match(f"t/{i}") == (("#", "c", 1),)
        assert len(index._cache) <= 4


def test_removing_everything_prunes_the_trie() -> None:
    index: TopicIndex[str, int] = TopicIndex()
    filters = ["a", "a/b", "a/+/c", "a/#", "+", "#", "/", "//", "$SYS/+/#", "a/b/c/d"]
    for topic_filter in filters:
        index.add(topic_filter, "c1", 1)
        index.add(topic_filter, "c2", 2)
    assert index._node_count() > 0
    for topic_filter in filters:
        index.remove(topic_filter, "c1")
    assert len(index) == len(filters)
    for topic_filter in reversed(filters):
        index.remove(topic_filter, "c2")
    assert index._node_count() == 0
    assert len(index) == 0


def test_churn_of_unique_filters_leaves_no_nodes() -> None:
    index: TopicIndex[str, int] = TopicIndex()
    index.add("devices/+/status", "monitor", 0)
    baseline = index._node_count()
    for i in range(5000):
        topic_filter = f"devices/{i}/cmd/#"
        index.add(topic_filter, f"dev{i}", i)
        assert index.match(f"devices/{i}/cmd/reboot") == ((topic_filter, f"dev{i}", i),)
        index.remove(topic_filter, f"dev{i}")
    assert index._node_count() == baseline
    assert len(index) == 1


def test_pruning_keeps_nodes_other_filters_still_use() -> None:
    index: TopicIndex[str, int] = TopicIndex()
    index.add("a/b/c", "c", 1)
    index.add("a", "c", 2)
    index.remove("a/b/c", "c")
    assert index.match("a") == (("a", "c", 2),)
    assert index._node_count() == 1
    index.add("a/b/c", "c", 1)
    index.remove("a", "c")
    assert index.match("a/b/c") == (("a/b/c", "c", 1),)
    assert index._node_count() == 3


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("$share/group/a/b", ("group", "a/b")),
        ("$share/g/#", ("g", "#")),
        ("$share/g//a", ("g", "/a")),
        ("a/b", None),
        ("$SYS/share/a", None),
        ("$sharex/g/a", None),
        ("share/g/a", None),
    ],
)
def test_parse_shared(topic_filter: str, expected: tuple[str, str] | None) -> None:
    assert parse_shared(topic_filter) == expected


@pytest.mark.parametrize(
    ("topic", "expected"), [("a", 1), ("a/b", 2), ("/", 2), ("a//b/", 4), ("", 1)]
)
def test_topic_levels(topic: str, expected: int) -> None:
    assert topic_levels(topic) == expected


topics = st.lists(st.sampled_from(TOPIC_LEVELS), min_size=1, max_size=4).map("/".join)
filters = st.builds(
    lambda levels, tail: "/".join(levels + tail),
    st.lists(st.sampled_from([*TOPIC_LEVELS, "+"]), min_size=0, max_size=4),
    st.sampled_from([[], ["#"]]),
).filter(bool)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), filters, st.sampled_from("xyz")),
        st.tuples(st.just("remove"), filters, st.sampled_from("xyz")),
        st.tuples(st.just("match"), topics, st.just("")),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_index_agrees_with_reference(ops: list[tuple[str, str, str]]) -> None:
    index: TopicIndex[str, int] = TopicIndex()
    model: dict[tuple[str, str], int] = {}
    for step, (op, text, key) in enumerate(ops):
        if op == "add":
            assert index.add(text, key, step) is ((text, key) not in model)
            model[text, key] = step
        elif op == "remove":
            assert index.remove(text, key) is ((text, key) in model)
            model.pop((text, key), None)
        else:
            expected = sorted(
                (topic_filter, k, v)
                for (topic_filter, k), v in model.items()
                if reference_match(topic_filter, text)
            )
            assert sorted(index.match(text)) == expected
        assert len(index) == len(model)
    assert sorted(index.filters()) == sorted({topic_filter for topic_filter, _ in model})
    for topic_filter, key in list(model):
        index.remove(topic_filter, key)
    assert index._node_count() == 0
