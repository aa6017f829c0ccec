"""twspy.topics: MQTT topic names, filters and matching (MQTT 3.1.1 / 5.0 §4.7)."""

from __future__ import annotations

import copy
import pickle
import random

import pytest

from twspy.errors import WebSocketError
from twspy.topics import InvalidTopic, SubscriptionLimit, SubscriptionTree, matches, validate_filter, validate_topic

# (filter, topic, expected)
MATCH_TABLE = [
    # §4.7.1.2 multi-level wildcard: the spec's examples
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/tennis/player1/#", "sport/tennis", False),
    ("sport/#", "sport", True),
    ("sport/#", "sport/", True),
    ("sport/#", "sport/a/b", True),
    ("sport/#", "sports", False),
    ("sport/#", "spor", False),
    ("#", "sport", True),
    ("#", "sport/tennis/player1", True),
    ("#", "/", True),
    ("#", "/finance", True),
    ("a/b/#", "a/b", True),
    ("a/b/#", "a", False),
    # §4.7.1.3 single-level wildcard: the spec's examples
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "finance", True),
    ("+/tennis/#", "sport/tennis/player1", True),
    ("+/tennis/#", "sport/tennis", True),
    ("+/tennis/#", "sport/golf", False),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a//c", True),          # + matches an empty level
    ("a/+/c", "a/c", False),
    ("a/+/c", "a/b/c/d", False),
    ("+/+", "a", False),
    ("+/+", "a/b/c", False),
    ("+/+/#", "a/b", True),
    ("+/#", "a", True),
    # §4.7.2 topics beginning with $
    ("#", "$SYS/x", False),
    ("#", "$SYS", False),
    ("+", "$SYS", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS/+", "$SYS/x/y", False),
    ("a/+", "a/$b", True),             # only the first level of the topic matters
    ("a/#", "a/$b/c", True),
    ("+/$b", "a/$b", True),
    ("$", "$", True),
    ("$SYS", "$SYS", True),
    ("+", "x$", True),                 # $ not first: an ordinary topic
    # §4.7.3 exact levels: case-sensitive, "/" significant, empty levels count
    ("ACCOUNTS", "Accounts", False),
    ("accounts", "accounts", True),
    ("/finance", "finance", False),
    ("finance", "/finance", False),
    ("finance/", "finance", False),
    ("finance", "finance/", False),
    ("a//b", "a//b", True),
    ("a//b", "a/b", False),
    ("/", "/", True),
    ("//", "/", False),
    ("a/b", "a/b/c", False),
    ("a/b/c", "a/b", False),
    (" a", " a", True),                # spaces are ordinary characters
    (" a", "a", False),
    ("é/ü", "é/ü", True),
    ("é/+", "é/ü", True),
]


class TestMatching:
    @pytest.mark.parametrize("topic_filter, topic, expected", MATCH_TABLE)
    def test_matches(self, topic_filter, topic, expected):
        assert matches(topic_filter, topic) is expected

    @pytest.mark.parametrize("topic_filter, topic, expected", MATCH_TABLE)
    def test_tree_agrees(self, topic_filter, topic, expected):
        tree = SubscriptionTree()
        tree.add(topic_filter, "k")
        assert tree.match(topic) == ({"k"} if expected else set())

    def test_tree_agrees_with_whole_table_at_once(self):
        tree = SubscriptionTree()
        filters = sorted({f for f, _, _ in MATCH_TABLE})
        for f in filters:
            tree.add(f, f)  # each filter is its own key
        for topic in {t for _, t, _ in MATCH_TABLE}:
            assert tree.match(topic) == {f for f in filters if matches(f, topic)}, topic

    def test_invalid_arguments(self):
        with pytest.raises(InvalidTopic):
            matches("a/#/b", "a")
        with pytest.raises(InvalidTopic):
            matches("a", "a/+")
        with pytest.raises(InvalidTopic):
            matches("+", "")
        with pytest.raises(InvalidTopic):
            SubscriptionTree().match("a/#")


VALID_FILTERS = [
    "#", "+", "a", "a/#", "a/b/#", "a/+", "+/b", "a/+/b", "+/+", "/+", "+/", "+/#", "+/+/#",
    "/#", "//#", "a//b", "/a", "a/", "/", "//", "$SYS/#", "$SYS/+/x", "sport/tennis/player1/#",
    " ", "a b", "é", "日本/+", "\xa0", "a" * 65535, "é" * 32767 + "a",
]
INVALID_FILTERS = [
    ("", "at least one character"),
    ("a#", "whole level"),
    ("#a", "whole level"),
    ("a/#/b", "last level"),
    ("#/a", "last level"),
    ("#/#", "last level"),
    ("a/b#", "whole level"),
    ("a/##", "whole level"),
    ("a+", "whole level"),
    ("+a", "whole level"),
    ("a/b+", "whole level"),
    ("a/++/b", "whole level"),
    ("+#", "whole level"),
    ("sport+", "whole level"),
    ("a\x00b", "U+0000"),
    ("\x00", "U+0000"),
    ("a" * 65536, "65536 bytes"),
    ("é" * 32768, "65536 bytes"),
    ("a\ud800", "UTF-8"),
    # §1.5.4: control characters (a filter "x\nsecret/room" once forged a line in stored presence)
    ("x\nsecret/room", "control character U+000A"),
    ("\x01", "control character U+0001"),
    ("a/\x1f", "control character U+001F"),
    ("a\x7f", "control character U+007F"),
    ("a/\x9f/#", "control character U+009F"),
    ("\r", "control character U+000D"),
]
VALID_TOPICS = [
    "a", "/", "//", "/finance", "finance/", "a//b", "$SYS", "$SYS/monitor/Clients", "a/$b",
    "sport/tennis/player1", " ", "é/ü", "日本", "\xa0", "a" * 65535,
]
INVALID_TOPICS = [
    ("", "at least one character"),
    ("+", "wildcards"),
    ("#", "wildcards"),
    ("a/+", "wildcards"),
    ("a/#", "wildcards"),
    ("a+b", "wildcards"),
    ("a#b", "wildcards"),
    ("sport/tennis#", "wildcards"),
    ("a\x00", "U+0000"),
    ("a\nFAKE-LOG-LINE", "control character U+000A"),
    ("\x85", "control character U+0085"),
    ("a" * 65536, "65536 bytes"),
    ("\udc80", "UTF-8"),
]


class TestValidation:
    @pytest.mark.parametrize("topic_filter", VALID_FILTERS)
    def test_valid_filter(self, topic_filter):
        assert validate_filter(topic_filter) is topic_filter

    @pytest.mark.parametrize("topic_filter, why", INVALID_FILTERS)
    def test_invalid_filter(self, topic_filter, why):
        with pytest.raises(InvalidTopic) as info:
            validate_filter(topic_filter)
        assert why in str(info.value)
        assert info.value.topic == topic_filter
        with pytest.raises(InvalidTopic):
            SubscriptionTree().add(topic_filter, "k")

    @pytest.mark.parametrize("topic", VALID_TOPICS)
    def test_valid_topic(self, topic):
        assert validate_topic(topic) is topic
        assert validate_filter(topic) is topic  # every topic name is also a filter matching itself
        assert matches(topic, topic)

    @pytest.mark.parametrize("topic, why", INVALID_TOPICS)
    def test_invalid_topic(self, topic, why):
        with pytest.raises(InvalidTopic) as info:
            validate_topic(topic)
        assert why in str(info.value)

    def test_exception_hierarchy(self):
        assert issubclass(InvalidTopic, ValueError)
        assert issubclass(InvalidTopic, WebSocketError)
        with pytest.raises(ValueError):
            validate_topic("a/+")
        with pytest.raises(ValueError):
            validate_filter("a#")

    def test_exception_copies(self):
        exc = InvalidTopic("a#", "why")
        for clone in (copy.copy(exc), pickle.loads(pickle.dumps(exc))):
            assert (clone.topic, clone.why, str(clone)) == ("a#", "why", str(exc))

    def test_long_topic_shortened_in_message(self):
        with pytest.raises(InvalidTopic) as info:
            validate_topic("a" * 65536)
        assert len(str(info.value)) < 200
        assert len(info.value.topic) == 65536

    def test_not_a_string(self):
        with pytest.raises(TypeError):
            validate_topic(b"a")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            validate_filter(None)  # type: ignore[arg-type]


def trie_is_empty(tree):
    return not tree._root.children and not tree._root.keys and not tree._filters


def node_count(tree):
    count, stack = 0, [tree._root]
    while stack:
        node = stack.pop()
        count += 1
        stack.extend(node.children.values())
    return count


class TestSubscriptionTree:
    def test_empty(self):
        tree = SubscriptionTree()
        assert len(tree) == 0
        assert tree.keys() == set()
        assert tree.match("a") == set()
        assert tree.filters("k") == set()
        assert tree.remove("a", "k") is False
        assert tree.remove_key("k") == []
        assert "0 subscriptions" in repr(tree)

    def test_add_and_match(self):
        tree = SubscriptionTree()
        assert tree.add("sport/#", 1) is True
        assert tree.add("sport/tennis/+", 2) is True
        assert tree.add("sport/tennis/player1", 3) is True
        assert tree.add("#", 4) is True
        assert len(tree) == 4
        assert tree.keys() == {1, 2, 3, 4}
        assert tree.match("sport/tennis/player1") == {1, 2, 3, 4}
        assert tree.match("sport/tennis/player2") == {1, 2, 4}
        assert tree.match("sport") == {1, 4}
        assert tree.match("news") == {4}
        assert tree.match("$SYS/x") == set()

    def test_duplicates(self):
        tree = SubscriptionTree()
        assert tree.add("a/+", "k") is True
        assert tree.add("a/+", "k") is False
        assert len(tree) == 1
        assert tree.remove("a/+", "k") is True
        assert tree.remove("a/+", "k") is False
        assert len(tree) == 0
        assert trie_is_empty(tree)

    def test_several_keys_on_one_filter(self):
        tree = SubscriptionTree()
        for key in ("a", "b", "c"):
            assert tree.add("x/+", key)
        assert len(tree) == 3
        assert tree.match("x/y") == {"a", "b", "c"}
        assert tree.remove("x/+", "b")
        assert tree.match("x/y") == {"a", "c"}
        assert tree.filters("b") == set()
        assert tree.keys() == {"a", "c"}
        assert tree.remove("x/+", "a") and tree.remove("x/+", "c")
        assert trie_is_empty(tree)

    def test_key_with_several_matching_filters_reported_once(self):
        tree = SubscriptionTree()
        for f in ("a/b", "a/+", "+/b", "#", "a/#"):
            tree.add(f, "k")
        assert tree.match("a/b") == {"k"}
        assert len(tree) == 5

    def test_filters_and_remove_key(self):
        tree = SubscriptionTree()
        for f in ("a", "a/b", "a/#", "+/c"):
            tree.add(f, "k")
        tree.add("a/b", "other")
        assert tree.filters("k") == {"a", "a/b", "a/#", "+/c"}
        returned = tree.filters("k")
        returned.clear()  # a copy: the tree is unchanged
        assert len(tree.filters("k")) == 4
        assert sorted(tree.remove_key("k")) == ["+/c", "a", "a/#", "a/b"]
        assert tree.filters("k") == set()
        assert tree.keys() == {"other"}
        assert len(tree) == 1
        assert tree.match("a/b") == {"other"}
        assert tree.match("x/c") == set()
        assert tree.remove_key("k") == []
        assert tree.remove_key("other") == ["a/b"]
        assert trie_is_empty(tree)

    def test_remove_unknown(self):
        tree = SubscriptionTree()
        tree.add("a/b", "k")
        assert tree.remove("a", "k") is False        # a prefix of a stored filter
        assert tree.remove("a/b/c", "k") is False    # longer than any stored filter
        assert tree.remove("a/b", "other") is False
        assert tree.remove("a#", "k") is False       # invalid filters are never stored
        assert len(tree) == 1

    def test_pruning(self):
        tree = SubscriptionTree()
        tree.add("a/b/c/d", 1)
        tree.add("a/b", 2)
        tree.add("a/+/#", 3)
        assert node_count(tree) == 7  # root, a, b, c, d, +, #
        tree.remove("a/b/c/d", 1)
        assert node_count(tree) == 5  # c and d pruned; b kept for key 2
        tree.remove("a/b", 2)
        assert node_count(tree) == 4
        tree.remove("a/+/#", 3)
        assert node_count(tree) == 1
        assert trie_is_empty(tree)

    def test_churn_does_not_grow(self):
        tree = SubscriptionTree()
        tree.add("keep/+", "k")
        baseline = node_count(tree)
        for i in range(200):
            tree.add("tmp/%d/x/#" % i, i)
            tree.remove_key(i)
        assert node_count(tree) == baseline
        assert len(tree) == 1

    def test_limits_refuse_and_leave_nothing_behind(self):
        tree = SubscriptionTree(max_levels=4, max_filters=3, max_nodes=8)
        assert tree.add("a/b/c/d", 1)
        with pytest.raises(InvalidTopic, match="5 levels, more than 4"):
            tree.add("a/b/c/d/e", 1)
        with pytest.raises(InvalidTopic):
            tree.add("k1" + "/" * 65000, 1)       # the amplification attack: refused before any node
        assert tree.add("a/b/x", 1) and tree.add("a/y", 1)
        assert tree.add("a/y", 1) is False        # a duplicate is not one more
        with pytest.raises(SubscriptionLimit, match="3 subscriptions already"):
            tree.add("z", 1)
        assert tree.nodes == 6 == node_count(tree) - 1
        assert tree.add("a/b/c/d", 2)            # shares every node: free
        assert tree.add("q/r", 3)                # 2 new nodes: 8 in all
        with pytest.raises(SubscriptionLimit, match="no room"):
            tree.add("s", 3)
        assert tree.nodes == 8 and tree.filters(3) == {"q/r"} and len(tree) == 5
        assert issubclass(SubscriptionLimit, ValueError) and issubclass(SubscriptionLimit, WebSocketError)
        for key in (1, 2, 3):
            tree.remove_key(key)
        assert tree.nodes == 0 and trie_is_empty(tree)
        assert tree.add("s", 3)                  # the budget came back

    def test_node_count_follows_adds_and_removes(self):
        tree = SubscriptionTree()
        rng = random.Random(5)
        for _ in range(300):
            f = "/".join(rng.choice("abc") for _ in range(rng.randint(1, 4)))
            if rng.random() < 0.6:
                tree.add(f, rng.randint(1, 5))
            else:
                tree.remove(f, rng.randint(1, 5))
            assert tree.nodes == node_count(tree) - 1

    def test_hashable_keys(self):
        tree = SubscriptionTree()
        a, b = object(), ("client", 7)
        tree.add("t", a)
        tree.add("t", b)
        assert tree.match("t") == {a, b}

    def test_match_returns_a_copy(self):
        tree = SubscriptionTree()
        tree.add("t", "k")
        tree.match("t").add("intruder")
        assert tree.match("t") == {"k"}

    def test_deep_topics(self):
        # Many levels: matching and pruning are loops, not recursion.
        deep = "/" * 20000
        tree = SubscriptionTree()
        tree.add(deep, "exact")
        tree.add("+/" * 20000 + "+", "plus")
        tree.add("/#", "hash")
        assert tree.match(deep) == {"exact", "plus", "hash"}
        assert tree.match(deep + "/") == {"hash"}
        assert tree.remove(deep, "exact")
        tree.remove_key("plus")
        tree.remove_key("hash")
        assert trie_is_empty(tree)


class TestRandomized:
    LEVELS = ["a", "b", "", "$x", "$SYS"]

    def random_topic(self, rng):
        topic = "/".join(rng.choice(self.LEVELS) for _ in range(rng.randint(1, 4)))
        return topic or "/"  # a single empty level would be the invalid empty topic

    def random_filter(self, rng):
        levels = [rng.choice(self.LEVELS + ["+", "+"]) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.3:
            levels[-1] = "#"
        return "/".join(levels) or "/"

    def test_cross_check(self):
        rng = random.Random(1)
        tree = SubscriptionTree()
        model = set()  # (filter, key) pairs
        for _ in range(400):
            f, key = self.random_filter(rng), rng.randrange(8)
            if rng.random() < 0.7:
                assert tree.add(f, key) is ((f, key) not in model)
                model.add((f, key))
            elif rng.random() < 0.8:
                assert tree.remove(f, key) is ((f, key) in model)
                model.discard((f, key))
            else:
                expected = sorted(g for g, k in model if k == key)
                assert sorted(tree.remove_key(key)) == expected
                model -= {(g, key) for g in expected}
            assert len(tree) == len(model)
            for _ in range(3):
                topic = self.random_topic(rng)
                assert tree.match(topic) == {k for g, k in model if matches(g, topic)}, topic
        for key in range(8):
            assert tree.filters(key) == {g for g, k in model if k == key}
            tree.remove_key(key)
        assert trie_is_empty(tree)
