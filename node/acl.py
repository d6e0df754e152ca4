"""Topic access control from an ACL file in Mosquitto's syntax, with its semantics.

    # anonymous clients: lines before the first "user" line
    topic read public/#
    # each client under its own client id and user name
    pattern readwrite devices/%c/#
    pattern read users/%u/inbox/#
    user alice
    topic readwrite alice/#
    topic deny alice/secret/#

``topic [read|write|readwrite|deny] FILTER`` grants (or denies) access to the
topics FILTER matches; without an access word it means readwrite.
``topic`` lines apply to the user named by the ``user`` line above them; those
before any ``user`` line apply to anonymous clients only, as in Mosquitto.
``pattern ...`` is the same after substituting ``%u`` (user name) and ``%c``
(client id), and applies to every client wherever it stands (a pattern without
either is how one rule reaches everyone).

The decisions, as Mosquitto makes them:

- PUBLISH to a topic: allowed when a write rule matches it and no ``deny``
  rule does; a matching deny wins over any grant.
- SUBSCRIBE to a filter: granted when a read rule covers the whole filter
  (the filter is no broader than the rule: ``#`` under ``readwrite #``, not
  ``sensors/#`` under ``read sensors/kitchen/#``), refused when a deny rule
  covers the whole filter or no rule grants it.
- A deny that only overlaps a granted filter (``deny secret/#`` under a
  subscription to ``#``) does not refuse it: each message delivered on it is
  checked against the client's read rights for the message's topic instead
  (``ClientRights.may_read``). The check is needed only for such filters, so
  clients whose filters no deny touches pay nothing per message.

A client whose user name or client id contains ``+`` or ``#`` is denied
everything while pattern rules exist: substituting it would turn a name into a
wildcard (Mosquitto does the same).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntFlag

from .config import ConfigError
from .files import read_text
from .topics import split_levels

DECISION_CACHE_SIZE = 4096
"""Decisions remembered per client (and clients remembered beyond those connected);
each cache starts over when full."""


class Access(IntFlag):
    READ = 1
    WRITE = 2
    READWRITE = 3
    DENY = 4


_ACCESS_WORDS = {
    "read": Access.READ,
    "write": Access.WRITE,
    "readwrite": Access.READWRITE,
    "deny": Access.DENY,
}
_SUBSTITUTIONS = ("%u", "%c")
_WILDCARD_CHARS = ("+", "#")


class AclFileError(ConfigError):
    """An ACL file that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Rule:
    access: Access
    topic_filter: str
    is_pattern: bool
    line: int


@dataclass(frozen=True, slots=True)
class AclRules:
    """What one ACL file says, before any client's names are substituted."""

    anonymous: tuple[Rule, ...]
    """``topic`` lines before the first ``user`` line: clients without a user name."""
    per_user: dict[str, tuple[Rule, ...]]
    patterns: tuple[Rule, ...]

    def __len__(self) -> int:
        return len(self.anonymous) + sum(map(len, self.per_user.values())) + len(self.patterns)


Levels = tuple[str, ...]


def _check_filter(topic_filter: str) -> None:
    """Raise ValueError if ``topic_filter`` is not a valid MQTT topic filter."""
    if not topic_filter:
        raise ValueError("missing topic filter")
    if "\0" in topic_filter:
        raise ValueError("topic filter contains a NUL character")
    levels = split_levels(topic_filter)
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"'#' must be a whole last level in {topic_filter!r}")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level in {topic_filter!r}")


def parse_acl(text: str, path: str) -> AclRules:
    """Parse ACL file contents; AclFileError names ``path`` and the line of the first problem."""
    anonymous: list[Rule] = []
    per_user: dict[str, list[Rule]] = {}
    patterns: list[Rule] = []
    current: list[Rule] = anonymous
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        try:
            if keyword == "user":
                if not rest:
                    raise ValueError("'user' needs a user name")
                current = per_user.setdefault(rest, [])
                continue
            if keyword not in ("topic", "pattern"):
                raise ValueError(f"unknown keyword {keyword!r} (expected user, topic or pattern)")
            word, _, after = rest.partition(" ")
            access = _ACCESS_WORDS.get(word)
            topic_filter = after.strip() if access is not None else rest
            if access is None:
                access = Access.READWRITE
            is_pattern = keyword == "pattern"
            if is_pattern:
                _check_substitutions(topic_filter)
                _check_filter(topic_filter.replace("%u", "u").replace("%c", "c"))
                patterns.append(Rule(access, topic_filter, True, number))
            else:
                _check_filter(topic_filter)
                current.append(Rule(access, topic_filter, False, number))
        except ValueError as exc:
            raise AclFileError(f"ACL file {path}:{number}: {exc}") from None
    return AclRules(
        tuple(anonymous), {user: tuple(rules) for user, rules in per_user.items()}, tuple(patterns)
    )


def _check_substitutions(topic_filter: str) -> None:
    rest = topic_filter
    while "%" in rest:
        index = rest.index("%")
        if rest[index : index + 2] not in _SUBSTITUTIONS:
            raise ValueError(
                f"pattern {topic_filter!r}: only %u (user name) and %c (client id) "
                "can be substituted"
            )
        rest = rest[index + 2 :]


def _hidden(first_level: str) -> bool:
    return first_level.startswith("$")


def covers(rule: Levels, topic_filter: Levels) -> bool:
    """Whether every topic ``topic_filter`` matches is matched by ``rule``.

    With a topic name (no wildcards) as ``topic_filter`` this is plain MQTT
    matching. A leading wildcard never matches '$' topics (MQTT §4.7.2), on
    either side.
    """
    if rule[0] in _WILDCARD_CHARS and _hidden(topic_filter[0]):
        return False
    for index, level in enumerate(rule):
        if level == "#":
            return True
        if index == len(topic_filter):
            return False
        other = topic_filter[index]
        if other == "#":
            return False
        if level == "+":
            continue
        if other == "+" or level != other:
            return False
    return len(rule) == len(topic_filter)


def overlaps(rule: Levels, topic_filter: Levels) -> bool:
    """Whether some topic is matched by both ``rule`` and ``topic_filter``."""
    first_rule, first_filter = rule[0], topic_filter[0]
    if (first_rule in _WILDCARD_CHARS and _hidden(first_filter)) or (
        first_filter in _WILDCARD_CHARS and _hidden(first_rule)
    ):
        return False
    index = 0
    while True:
        rule_done = index == len(rule)
        filter_done = index == len(topic_filter)
        if rule_done and filter_done:
            return True
        # '#' also matches the level above it: "a/#" matches "a".
        if (not rule_done and rule[index] == "#") or (
            not filter_done and topic_filter[index] == "#"
        ):
            return True
        if rule_done or filter_done:
            return False
        a, b = rule[index], topic_filter[index]
        if a != b and a != "+" and b != "+":
            return False
        index += 1


@dataclass(frozen=True, slots=True)
class _ClientRules:
    """The rules that apply to one (user name, client id), substituted and split."""

    grants: tuple[tuple[Access, Levels], ...]
    denies: tuple[Levels, ...]
    deny_all: bool


class AccessControl:
    """Answers "may this client publish, subscribe, receive this?" from an ACL file.

    The answers come from one ``ClientRights`` per (user, client id), which
    caches them per topic: a client publishes to, and receives on, the same
    few topics over and over. ``reload`` (SIGHUP) replaces the rules and
    refreshes every ``ClientRights`` still in use, so new operations see the
    new file at once (``read_rights`` re-checks the subscriptions made).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.rules = self._read()
        self._clients: dict[tuple[str | None, str], ClientRights] = {}
        """Recently asked for, so that the same client's next connection reuses them."""
        self._live: weakref.WeakSet[ClientRights] = weakref.WeakSet()
        """Every ClientRights anyone still holds: refreshed on reload."""

    def _read(self) -> AclRules:
        return parse_acl(read_text(self.path, "ACL file", AclFileError), self.path)

    def reload(self) -> None:
        """Read the file again; on any error the rules loaded before stay in force."""
        self.rules = self._read()
        for rights in list(self._live):  # the recently asked for among them
            rights.refresh()

    def __len__(self) -> int:
        return len(self.rules)

    def rights_for(self, username: str | None, client_id: str) -> ClientRights:
        """The decisions of one client, which its connection keeps for the hot path."""
        key = (username, client_id)
        found = self._clients.get(key)
        if found is None:
            if len(self._clients) >= DECISION_CACHE_SIZE:
                self._clients = {}
            found = self._clients[key] = ClientRights(self, username, client_id)
            self._live.add(found)
        return found

    def may_publish(self, username: str | None, client_id: str, topic: str) -> bool:
        return self.rights_for(username, client_id).may_publish(topic)

    def may_subscribe(self, username: str | None, client_id: str, topic_filter: str) -> bool:
        return self.rights_for(username, client_id).may_subscribe(topic_filter)

    def may_read(self, username: str | None, client_id: str, topic: str) -> bool:
        return self.rights_for(username, client_id).may_read(topic)

    def client_rules(self, username: str | None, client_id: str) -> _ClientRules:
        """The rules that apply to this client, substituted and split."""
        rules = self.rules
        applicable = list(rules.anonymous if username is None else rules.per_user.get(username, ()))
        dangerous = any(c in name for name in (username or "", client_id) for c in _WILDCARD_CHARS)
        for rule in rules.patterns:
            if "%u" in rule.topic_filter and username is None:
                continue
            topic_filter = rule.topic_filter.replace("%u", username or "").replace("%c", client_id)
            applicable.append(Rule(rule.access, topic_filter, False, rule.line))
        return _ClientRules(
            grants=tuple(
                (rule.access, tuple(split_levels(rule.topic_filter)))
                for rule in applicable
                if rule.access != Access.DENY
            ),
            denies=tuple(
                tuple(split_levels(rule.topic_filter))
                for rule in applicable
                if rule.access == Access.DENY
            ),
            deny_all=dangerous and bool(rules.patterns),
        )


class ClientRights:
    """One client's rights, with its decisions cached per topic.

    The hot paths read ``writes`` and ``reads`` directly, one dict lookup per
    PUBLISH and per delivery, and call ``may_publish``/``may_read`` only on a
    miss. ``reads`` holds SUBSCRIBE decisions too: a filter without
    wildcards is judged exactly like a topic a message arrives on, and one
    with them is never a message topic, so the two never disagree.
    """

    __slots__ = ("__weakref__", "acl", "client_id", "reads", "rules", "username", "writes")

    def __init__(self, acl: AccessControl, username: str | None, client_id: str) -> None:
        self.acl = acl
        self.username = username
        self.client_id = client_id
        self.refresh()

    def refresh(self) -> None:
        """The ACL changed: apply its rules from now on, forgetting every decision."""
        self.rules = self.acl.client_rules(self.username, self.client_id)
        self.writes: dict[str, bool] = {}
        self.reads: dict[str, bool] = {}

    def may_publish(self, topic: str) -> bool:
        allowed = self.writes.get(topic)
        if allowed is None:
            allowed = self._remember(self.writes, topic, self._decide(topic, Access.WRITE))
        return allowed

    def may_read(self, topic: str) -> bool:
        """Whether a message on ``topic`` may be delivered to this client."""
        allowed = self.reads.get(topic)
        if allowed is None:
            allowed = self._remember(self.reads, topic, self._decide(topic, Access.READ))
        return allowed

    def may_subscribe(self, topic_filter: str) -> bool:
        """Granted when a read rule covers the whole filter and no deny rule does."""
        return self.may_read(topic_filter)

    def clean(self, topic_filters: Iterable[str]) -> bool:
        """Whether every topic these filters match is readable, so that no message on
        them needs a check: each is covered by a read grant and touched by no deny."""
        rules = self.rules
        return all(_clean(rules, tuple(split_levels(f))) for f in topic_filters)

    def _decide(self, topic: str, wanted: Access) -> bool:
        rules = self.rules
        if rules.deny_all:
            return False
        levels = tuple(split_levels(topic))
        if any(covers(denied, levels) for denied in rules.denies):
            return False
        return any(access & wanted and covers(grant, levels) for access, grant in rules.grants)

    @staticmethod
    def _remember(cache: dict[str, bool], topic: str, decision: bool) -> bool:
        if len(cache) >= DECISION_CACHE_SIZE:
            cache.clear()
        cache[topic] = decision
        return decision


def _clean(rules: _ClientRules, topic_filter: Levels) -> bool:
    """Whether every topic ``topic_filter`` matches is readable: no per-message check needed."""
    if rules.deny_all or any(overlaps(denied, topic_filter) for denied in rules.denies):
        return False
    return any(
        access & Access.READ and covers(grant, topic_filter) for access, grant in rules.grants
    )
