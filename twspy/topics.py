"""MQTT topic names, topic filters and a subscription index for pub/sub hubs (MQTT 3.1.1 / 5.0 §4.7).

A topic name (what a message is published to) is a ``/``-separated list of levels, e.g.
``sport/tennis/player1``. A topic filter (what a subscriber asks for) may also use the wildcards
``+`` (exactly one level) and ``#`` (the parent level and any number of child levels, last level only).
Empty levels are legal: ``/finance`` has two levels, ``""`` and ``"finance"``.

:class:`SubscriptionTree` indexes filters in a trie on levels, so matching a topic costs the
number of trie nodes it reaches, not the number of filters.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Hashable
from collections.abc import Set as AbstractSet

from .errors import InvalidTopic, SubscriptionLimit

__all__ = [
    "InvalidTopic",
    "SubscriptionLimit",
    "MAX_TOPIC_LENGTH",
    "validate_topic",
    "validate_filter",
    "matches",
    "SubscriptionTree",
]

MAX_TOPIC_LENGTH = 65535  # bytes of UTF-8: the 16-bit length prefix of an MQTT string (§1.5.4)

# §1.5.4: U+0001..U+001F and U+007F..U+009F "SHOULD NOT" appear; refusing them keeps a topic
# from forging a line in a log or in a newline-separated store.
_CONTROL = re.compile("[\x01-\x1f\x7f-\x9f]")


def _check_string(topic: str, kind: str) -> None:
    """The rules names and filters share: a non-empty UTF-8 string of at most 65535 bytes, no NUL."""
    if not isinstance(topic, str):
        raise TypeError("a %s must be a str, not %s" % (kind, type(topic).__name__))
    if not topic:
        raise InvalidTopic(topic, "a %s must be at least one character long (§4.7.3)" % kind)
    if "\x00" in topic:
        raise InvalidTopic(topic, "a %s must not contain U+0000 (§4.7.3)" % kind)
    control = _CONTROL.search(topic)
    if control is not None:
        raise InvalidTopic(topic, "a %s must not contain the control character U+%04X (§1.5.4)"
                           % (kind, ord(control.group())))
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates aren't well-formed UTF-8 (§1.5.4)
        raise InvalidTopic(topic, "a %s must be well-formed UTF-8 (no lone surrogates)" % kind) from None
    if size > MAX_TOPIC_LENGTH:
        raise InvalidTopic(topic, "%d bytes of UTF-8, more than %d (§1.5.4)" % (size, MAX_TOPIC_LENGTH))


def validate_topic(topic: str) -> str:
    """Check a topic name used for publishing and return it.

    Raises:
        InvalidTopic: if it is empty, contains ``+``, ``#``, U+0000 or a control character, or
            exceeds 65535 bytes of UTF-8.
    """
    _check_string(topic, "topic name")
    if "+" in topic or "#" in topic:
        raise InvalidTopic(topic, "a topic name must not contain the wildcards + or # (§4.7.1)")
    return topic


def validate_filter(topic_filter: str) -> str:
    """Check a topic filter used for subscribing and return it.

    ``+`` must occupy a whole level; ``#`` must occupy the whole last level (§4.7.1.2, §4.7.1.3).

    Raises:
        InvalidTopic: if it breaks one of these rules, is empty, contains U+0000 or a
            control character, or exceeds 65535 bytes.
    """
    _check_string(topic_filter, "topic filter")
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter  # the common case: no need to split
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level:
            if level != "#":
                raise InvalidTopic(topic_filter, "# must occupy a whole level (§4.7.1.2)")
            if i != last:
                raise InvalidTopic(topic_filter, "# must be the last level (§4.7.1.2)")
        elif "+" in level and level != "+":
            raise InvalidTopic(topic_filter, "+ must occupy a whole level (§4.7.1.3)")
    return topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic_filter`` matches the topic name ``topic`` (MQTT §4.7).

    Matching is case-sensitive and level by level; a filter starting with a wildcard does not
    match a topic starting with ``$`` (§4.7.2).

    Raises:
        InvalidTopic: if the filter or the topic is invalid.
    """
    validate_filter(topic_filter)
    validate_topic(topic)
    if topic.startswith("$") and topic_filter[0] in "+#":
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for i, level in enumerate(filter_levels):
        if level == "#":
            return True  # the parent level and any number of children, including none
        if i == len(topic_levels):
            return False
        if level != "+" and level != topic_levels[i]:
            return False
    return len(filter_levels) == len(topic_levels)


_NO_KEYS: frozenset[Hashable] = frozenset()


class _Node:
    """A trie node: children by level, and the keys whose filter ends here."""

    __slots__ = ("children", "keys")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        # Shared and empty until a filter ends here: most nodes are inner levels, and an empty
        # set would cost 216 bytes each (a third of a node).
        self.keys: AbstractSet[Hashable] = _NO_KEYS


class SubscriptionTree:
    """A thread-safe index from topic filters to subscriber keys (any hashable).

    Filters are stored in a trie on levels, with ``+`` and ``#`` as ordinary children (topic names
    cannot contain them, so they never clash with a real level). Nodes left empty by a removal are
    pruned, so memory follows the live subscriptions, not their history.

    Each level of a filter costs a node (a few hundred bytes), so a tree fed by untrusted peers
    needs limits (a hub sets them; None means no limit):

    Args:
        max_levels: levels per filter; a deeper filter raises :class:`InvalidTopic`.
        max_filters: filters per key; one more raises :class:`SubscriptionLimit`.
        max_nodes: trie nodes in all; a filter that needs more raises :class:`SubscriptionLimit`.
    """

    def __init__(self, *, max_levels: int | None = None, max_filters: int | None = None,
                 max_nodes: int | None = None) -> None:
        self.max_levels = max_levels
        self.max_filters = max_filters
        self.max_nodes = max_nodes
        self._lock = threading.Lock()
        self._root = _Node()
        self._filters: dict[Hashable, set[str]] = {}  # key -> its filters
        self._count = 0
        self._nodes = 0  # trie nodes besides the root

    @property
    def nodes(self) -> int:
        """The number of trie nodes (besides the root): what the filters cost in memory."""
        return self._nodes

    def add(self, topic_filter: str, key: Hashable) -> bool:
        """Subscribe ``key`` to ``topic_filter``; True if the pair is new.

        Raises:
            InvalidTopic: if the filter is invalid or has more than ``max_levels`` levels.
            SubscriptionLimit: if ``key`` has ``max_filters`` filters already, or the filter's
                new nodes would pass ``max_nodes``. Nothing is added then.
        """
        validate_filter(topic_filter)
        levels = topic_filter.split("/")
        if self.max_levels is not None and len(levels) > self.max_levels:
            raise InvalidTopic(topic_filter, "%d levels, more than %d" % (len(levels), self.max_levels))
        with self._lock:
            filters = self._filters.get(key)
            if filters is not None and topic_filter in filters:
                return False
            if self.max_filters is not None and filters is not None and len(filters) >= self.max_filters:
                raise SubscriptionLimit("%d subscriptions already, the most allowed" % len(filters))
            # Walk the existing part first: refusing must leave nothing behind.
            node = self._root
            depth = 0
            for level in levels:
                child = node.children.get(level)
                if child is None:
                    break
                node = child
                depth += 1
            new = len(levels) - depth
            if self.max_nodes is not None and self._nodes + new > self.max_nodes:
                raise SubscriptionLimit("no room for more subscriptions (%d topic levels in use)" % self._nodes)
            for level in levels[depth:]:
                child = node.children[level] = _Node()
                node = child
            self._nodes += new
            if node.keys:
                node.keys.add(key)  # type: ignore[attr-defined]  # a set of its own by now
            else:
                node.keys = {key}
            if filters is None:
                filters = self._filters[key] = set()
            filters.add(topic_filter)
            self._count += 1
            return True

    def remove(self, topic_filter: str, key: Hashable) -> bool:
        """Unsubscribe ``key`` from ``topic_filter``; False if it was not subscribed."""
        with self._lock:
            return self._remove(topic_filter, key)

    def remove_key(self, key: Hashable) -> list[str]:
        """Drop every filter of ``key`` (e.g. when a client disconnects); return them."""
        with self._lock:
            dropped = sorted(self._filters.get(key, ()))
            for topic_filter in dropped:
                self._remove(topic_filter, key)
            return dropped

    def _remove(self, topic_filter: str, key: Hashable) -> bool:
        # Lock held. Invalid filters are never stored, so they simply aren't found.
        filters = self._filters.get(key)
        if filters is None or topic_filter not in filters:
            return False
        path: list[tuple[_Node, str]] = []  # (parent, level) down to the filter's node
        node = self._root
        for level in topic_filter.split("/"):
            path.append((node, level))
            node = node.children[level]
        node.keys.remove(key)  # type: ignore[attr-defined]
        if not node.keys:
            node.keys = _NO_KEYS
        filters.remove(topic_filter)
        if not filters:
            del self._filters[key]
        self._count -= 1
        # Prune bottom-up while the node holds neither keys nor children.
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.keys or child.children:
                break
            del parent.children[level]
            self._nodes -= 1
        return True

    def filters(self, key: Hashable) -> set[str]:
        """The filters ``key`` is subscribed to (a copy; empty if none)."""
        with self._lock:
            return set(self._filters.get(key, ()))

    def keys(self) -> set[Hashable]:
        """Every key with at least one filter (a copy)."""
        with self._lock:
            return set(self._filters)

    def match(self, topic: str) -> set[Hashable]:
        """Every key with at least one filter matching the topic name ``topic`` (§4.7).

        Raises:
            InvalidTopic: if the topic name is invalid.
        """
        validate_topic(topic)
        levels = topic.split("/")
        dollar = topic.startswith("$")
        found: set[Hashable] = set()
        with self._lock:
            # Breadth-first, one level at a time: a loop rather than recursion, since a topic
            # may have tens of thousands of levels.
            frontier = [self._root]
            for depth, level in enumerate(levels):
                wildcards = not (dollar and depth == 0)  # §4.7.2: no wildcard first level for $topics
                following = []
                for node in frontier:
                    children = node.children
                    if wildcards:
                        multi = children.get("#")
                        if multi is not None:
                            found |= multi.keys
                        single = children.get("+")
                        if single is not None:
                            following.append(single)
                    exact = children.get(level)
                    if exact is not None:
                        following.append(exact)
                if not following:
                    return found
                frontier = following
            for node in frontier:
                found |= node.keys
                multi = node.children.get("#")  # "a/#" matches "a" itself
                if multi is not None:
                    found |= multi.keys
        return found

    def __len__(self) -> int:
        """The number of (filter, key) pairs."""
        with self._lock:
            return self._count

    def __repr__(self) -> str:
        return "<SubscriptionTree: %d subscriptions, %d keys>" % (len(self), len(self.keys()))
