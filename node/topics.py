"""Subscription index: which topic filters match a published topic.

Matching runs for every PUBLISH, so the index is a trie of filter levels with
the '+' and '#' children in their own slots: a lookup touches at most three
children per node instead of scanning siblings. On top of that, results are
memoised per topic string, because real traffic republishes to the same few
topics over and over and a memo hit is a single dict lookup. Subscription
changes are far rarer than publishes, so any change simply drops the memo.

Topic names and filters reaching this module were already checked by the
codec; nothing here re-validates their syntax.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

SHARE_PREFIX = "$share/"
DEFAULT_CACHE_SIZE = 65_536


def split_levels(topic: str) -> list[str]:
    """Split a topic name or filter into its levels.

    Shared by the subscription index and the retained store so the two can
    never disagree on what a level is. Empty levels ("a//b", "/a") are kept
    because MQTT counts them as real levels.
    """
    return topic.split("/")


def hidden_from_wildcards(first_level: str) -> bool:
    """Whether a topic whose first level is ``first_level`` escapes a leading '+' or '#'.

    '$' topics ($SYS/...) belong to the server, so MQTT (§4.7.2) keeps a
    subscription to "#" or "+/..." from receiving them; only a filter whose
    first level is spelled out literally matches them.
    """
    return first_level.startswith("$")


def topic_levels(topic: str) -> int:
    """Number of levels in ``topic``.

    Counted without splitting because the broker checks its max_topic_levels
    limit on every PUBLISH and SUBSCRIBE.
    """
    return topic.count("/") + 1


def parse_shared(topic_filter: str) -> tuple[str, str] | None:
    """Split "$share/group/filter" into ("group", "filter"), or None if not shared.

    The broker indexes a shared subscription under its inner filter (keyed by
    (group, client)) so that it matches PUBLISH topics like any other filter.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None
    group, _, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    return group, inner


class _Node(Generic[K, V]):
    """One level of the filter trie.

    ``results`` holds this node's contribution to a match, prebuilt so that a
    match only concatenates tuples. It is None when stale and is rebuilt
    lazily: after a subscription change only the touched filter pays for the
    rebuild, once, instead of every lookup rebuilding every filter's triples.
    """

    __slots__ = ("children", "entries", "filter", "hash", "plus", "results")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K, V]] = {}
        self.plus: _Node[K, V] | None = None
        self.hash: _Node[K, V] | None = None
        self.filter = ""
        self.entries: dict[K, V] = {}
        self.results: tuple[tuple[str, K, V], ...] | None = ()

    def rebuild(self) -> tuple[tuple[str, K, V], ...]:
        name = self.filter
        results = self.results = tuple([(name, key, value) for key, value in self.entries.items()])
        return results

    def child(self, level: str) -> _Node[K, V] | None:
        if level == "+":
            return self.plus
        if level == "#":
            return self.hash
        return self.children.get(level)

    def ensure_child(self, level: str) -> _Node[K, V]:
        node = self.child(level)
        if node is None:
            node = _Node()
            if level == "+":
                self.plus = node
            elif level == "#":
                self.hash = node
            else:
                self.children[level] = node
        return node

    def drop_child(self, level: str) -> None:
        if level == "+":
            self.plus = None
        elif level == "#":
            self.hash = None
        else:
            del self.children[level]

    def is_empty(self) -> bool:
        return not (self.entries or self.children or self.plus or self.hash)


class TopicIndex(Generic[K, V]):
    """Topic filter -> {key: value}.

    Keys are opaque hashables (the broker uses a client id, or
    (share_group, client_id) for shared subscriptions); the value is whatever
    the broker stores (subscription options etc.).
    """

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._root: _Node[K, V] = _Node()
        # Filter -> its terminal node, so add/remove/subscribers skip the walk.
        self._filters: dict[str, _Node[K, V]] = {}
        self._count = 0
        self._cache: dict[str, tuple[tuple[str, K, V], ...]] = {}
        self._cache_size = cache_size

    def add(self, topic_filter: str, key: K, value: V) -> bool:
        """Subscribe ``key`` to ``topic_filter``; True if the key was new for that filter.

        An existing key gets its value replaced, which is how a re-SUBSCRIBE
        updates options without a second delivery path.
        """
        node = self._filters.get(topic_filter)
        if node is None:
            node = self._root
            for level in split_levels(topic_filter):
                node = node.ensure_child(level)
            node.filter = topic_filter
            self._filters[topic_filter] = node
        entries = node.entries
        is_new = key not in entries
        entries[key] = value
        node.results = None
        if is_new:
            self._count += 1
        self._cache.clear()
        return is_new

    def remove(self, topic_filter: str, key: K) -> bool:
        """Unsubscribe ``key``; True if it was subscribed.

        The last key leaving a filter prunes the filter's now-empty trie
        nodes, so churn through unique filters (per-device topics) cannot
        grow the trie without bound.
        """
        node = self._filters.get(topic_filter)
        if node is None or key not in node.entries:
            return False
        del node.entries[key]
        node.results = None
        self._count -= 1
        self._cache.clear()
        if not node.entries:
            del self._filters[topic_filter]
            self._prune(topic_filter)
        return True

    def _prune(self, topic_filter: str) -> None:
        path: list[tuple[_Node[K, V], str]] = []
        node = self._root
        for level in split_levels(topic_filter):
            path.append((node, level))
            child = node.child(level)
            assert child is not None, "an indexed filter always has its trie path"
            node = child
        for parent, level in reversed(path):
            if not node.is_empty():
                return
            parent.drop_child(level)
            node = parent

    def match(self, topic: str) -> tuple[tuple[str, K, V], ...]:
        """Every (filter, key, value) whose filter matches ``topic``.

        The result is an immutable tuple so it can be memoised and handed to
        every caller as is; the memo is dropped wholesale once it reaches
        ``cache_size`` topics, which bounds memory under unique-topic traffic.
        """
        cache = self._cache
        cached = cache.get(topic)
        if cached is not None:
            return cached
        result = self._match(topic)
        if len(cache) >= self._cache_size:
            cache.clear()
        cache[topic] = result
        return result

    def _match(self, topic: str) -> tuple[tuple[str, K, V], ...]:
        levels = split_levels(topic)
        if hidden_from_wildcards(levels[0]):
            # Only a literal first level can match, so skip the root's '+' and '#'.
            first = self._root.children.get(levels[0])
            if first is None:
                return ()
            nodes = [first]
            del levels[0]
        else:
            nodes = [self._root]
        out: list[tuple[str, K, V]] = []
        for level in levels:
            following: list[_Node[K, V]] = []
            for node in nodes:
                hash_node = node.hash
                if hash_node is not None:
                    results = hash_node.results
                    out += hash_node.rebuild() if results is None else results
                child = node.children.get(level)
                if child is not None:
                    following.append(child)
                if node.plus is not None:
                    following.append(node.plus)
            if not following:
                return tuple(out)
            nodes = following
        for node in nodes:
            results = node.results
            out += node.rebuild() if results is None else results
            # '#' also matches its parent level: "a/#" matches "a".
            hash_node = node.hash
            if hash_node is not None:
                results = hash_node.results
                out += hash_node.rebuild() if results is None else results
        return tuple(out)

    def filters(self) -> Iterator[str]:
        """Every filter with at least one key.

        A snapshot, so the caller may add and remove while iterating.
        """
        return iter(tuple(self._filters))

    def subscribers(self, topic_filter: str) -> dict[K, V]:
        """A copy of one filter's entries, so callers cannot corrupt the index."""
        node = self._filters.get(topic_filter)
        return {} if node is None else dict(node.entries)

    def __len__(self) -> int:
        """Number of (filter, key) entries."""
        return self._count

    def _node_count(self) -> int:
        """Trie nodes below the root; lets tests prove that removal prunes."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            if node.plus is not None:
                stack.append(node.plus)
            if node.hash is not None:
                stack.append(node.hash)
            count += 1
        return count - 1
