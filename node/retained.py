"""Retained message store.

A new subscription must receive every retained message its filter matches.
Scanning all retained topics per SUBSCRIBE would make subscribing cost
O(retained), so messages live in a trie of topic levels and the filter walks
it: a literal level follows one child, '+' fans out over one level, '#' takes
a whole subtree. Level splitting and the '$' rule come from ``topics`` so
retained delivery and live delivery can never disagree on what matches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from .topics import hidden_from_wildcards, split_levels

M = TypeVar("M")


class _Slot(Generic[M]):
    """One topic level.

    Kept to two slots to keep memory per retained message small: most topics
    end in a leaf, so ``children`` stays None until a deeper topic needs it,
    and ``item`` is the prebuilt (topic, message) pair that ``match`` and
    ``items`` hand out without allocating.
    """

    __slots__ = ("children", "item")

    def __init__(self) -> None:
        self.children: dict[str, _Slot[M]] | None = None
        self.item: tuple[str, M] | None = None


class RetainedStore(Generic[M]):
    """Topic -> its retained message, searchable by topic filter."""

    def __init__(self) -> None:
        self._root: _Slot[M] = _Slot()
        self._count = 0

    def set(self, topic: str, message: M) -> None:
        """Retain ``message`` for ``topic``, replacing any earlier one."""
        node = self._root
        for level in split_levels(topic):
            children = node.children
            if children is None:
                children = node.children = {}
            child = children.get(level)
            if child is None:
                child = children[level] = _Slot()
            node = child
        if node.item is None:
            self._count += 1
        node.item = (topic, message)

    def delete(self, topic: str) -> bool:
        """Forget the message retained for ``topic``; True if there was one.

        Emptied trie nodes are pruned so a stream of unique retained topics
        that are later cleared leaves no residue.
        """
        path: list[tuple[_Slot[M], dict[str, _Slot[M]], str]] = []
        node = self._root
        for level in split_levels(topic):
            children = node.children
            if children is None or (child := children.get(level)) is None:
                return False
            path.append((node, children, level))
            node = child
        if node.item is None:
            return False
        node.item = None
        self._count -= 1
        for parent, children, level in reversed(path):
            if node.item is not None or node.children:
                return True
            del children[level]
            if not children:
                parent.children = None
            node = parent
        return True

    def get(self, topic: str) -> M | None:
        """The message retained for ``topic``, if any."""
        node = self._root
        for level in split_levels(topic):
            child = None if node.children is None else node.children.get(level)
            if child is None:
                return None
            node = child
        return None if node.item is None else node.item[1]

    def match(self, topic_filter: str) -> list[tuple[str, M]]:
        """Every retained (topic, message) whose topic ``topic_filter`` matches."""
        out: list[tuple[str, M]] = []
        nodes = [self._root]
        for depth, level in enumerate(split_levels(topic_filter)):
            if level == "#":
                # '#' matches the parent level too, so the frontier nodes count.
                stack = self._visible_children() if depth == 0 else nodes
                self._collect(stack, out)
                return out
            following: list[_Slot[M]] = []
            if level == "+" and depth == 0:
                following = self._visible_children()
            else:
                for node in nodes:
                    children = node.children
                    if children is None:
                        continue
                    if level == "+":
                        following.extend(children.values())
                    else:
                        child = children.get(level)
                        if child is not None:
                            following.append(child)
            if not following:
                return out
            nodes = following
        out.extend([node.item for node in nodes if node.item is not None])
        return out

    def _visible_children(self) -> list[_Slot[M]]:
        """First-level nodes a leading wildcard may enter ('$' topics excluded)."""
        children = self._root.children or {}
        return [node for level, node in children.items() if not hidden_from_wildcards(level)]

    @staticmethod
    def _collect(stack: list[_Slot[M]], out: list[tuple[str, M]]) -> None:
        """Append every item in the subtrees rooted at ``stack`` (which is consumed)."""
        while stack:
            node = stack.pop()
            if node.item is not None:
                out.append(node.item)
            if node.children:
                stack.extend(node.children.values())

    def __len__(self) -> int:
        return self._count

    def items(self) -> Iterator[tuple[str, M]]:
        """Every retained (topic, message).

        A snapshot, so the caller may delete while iterating (e.g. to expire
        messages).
        """
        out: list[tuple[str, M]] = []
        self._collect([self._root], out)
        return iter(out)

    def _node_count(self) -> int:
        """Trie nodes below the root; lets tests prove that delete prunes."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            count += 1
        return count - 1
