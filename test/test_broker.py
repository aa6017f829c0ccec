"""twspy/broker.py: the broker interface, MemoryBroker's log and presence, RedisBroker's presence
values, open_broker. The hub on top of them is tested in test_hub.py and test_hub_redis.py."""

from __future__ import annotations

import json
import threading

import pytest
from test_hub_redis import RedisProcess, _require_redis

from twspy.broker import (
    DEFAULT_MAXLEN,
    Broker,
    BrokerUnavailable,
    HubError,
    MemoryBroker,
    RedisBroker,
    entry_size,
    open_broker,
)

TIMEOUT = 5


class TestInterface:
    def test_every_operation_must_be_implemented(self):
        # A broker that forgets one fails loudly; the hub catches NotImplementedError only
        # for the optional update_presence (it falls back to set_presence).
        broker = Broker()
        calls = [
            lambda: broker.append([], "g"), lambda: broker.read("0", 0), broker.tail, broker.generation,
            lambda: broker.set_presence("n", {}, 1), lambda: broker.update_presence("n", {}, 1),
            lambda: broker.drop_presence("n"), broker.presence,
        ]
        for call in calls:
            with pytest.raises(NotImplementedError):
                call()
        assert broker.wake() is None and broker.close() is None  # optional: no-ops by default


class TestMemoryLog:
    def test_append_read_tail(self):
        broker = MemoryBroker()
        generation = broker.generation()
        assert broker.tail() == "0" and broker.read("0", 0) == []
        assert broker.append([{"a": b"1"}, {"b": b"2"}], generation) is True
        assert broker.read("0", 0) == [("1", {"a": b"1"}), ("2", {"b": b"2"})]
        assert broker.read("1", 0) == [("2", {"b": b"2"})]
        assert broker.tail() == "2" and broker.read("2", 0) == []

    def test_stale_generation_appends_nothing(self):
        broker = MemoryBroker()
        old = broker.generation()
        broker.append([{"a": b"1"}], old)
        broker.restart()  # the log is lost: a hub still in the old generation must replay first
        assert broker.generation() != old
        assert broker.append([{"b": b"2"}], old) is False
        assert broker.tail() == "0" and broker.read("0", 0) == []
        assert broker.append([{"c": b"3"}], broker.generation()) is True
        assert broker.read("0", 0) == [("1", {"c": b"3"})]  # ids start again after a restart

    def test_entries_are_copied(self):
        broker = MemoryBroker()
        entry = {"a": b"1"}
        broker.append([entry], broker.generation())
        entry["a"] = b"changed"
        assert broker.read("0", 0) == [("1", {"a": b"1"})]

    def test_trimmed_by_count_oldest_first(self):
        broker = MemoryBroker(maxlen=3)
        broker.append([{"n": b"%d" % i} for i in range(5)], broker.generation())
        assert [entry_id for entry_id, _ in broker.read("0", 0)] == ["3", "4", "5"]

    def test_trimmed_by_bytes(self):
        size = entry_size({"p": b"x" * 100})
        assert size == 164  # the values plus 64 per entry
        broker = MemoryBroker(max_bytes=2 * size)
        generation = broker.generation()
        for _ in range(3):
            broker.append([{"p": b"x" * 100}], generation)
        assert [entry_id for entry_id, _ in broker.read("0", 0)] == ["2", "3"]
        broker.append([{"p": b"y" * 1000}], generation)  # alone larger than the budget: nothing is kept
        assert broker.read("0", 0) == [] and broker.tail() == "0"
        assert MemoryBroker().maxlen == DEFAULT_MAXLEN

    def test_read_returns_at_most_1000(self):
        broker = MemoryBroker()
        broker.append([{"n": b""}] * 1500, broker.generation())
        first = broker.read("0", 0)
        assert (len(first), first[-1][0]) == (1000, "1000")
        assert len(broker.read(first[-1][0], 0)) == 500

    @staticmethod
    def start_reader(broker, cursor):
        results = []
        thread = threading.Thread(target=lambda: results.append(broker.read(cursor, 30)))
        thread.start()
        return thread, results

    def test_waiting_read_returns_on_append(self):
        broker = MemoryBroker()
        thread, results = self.start_reader(broker, broker.tail())
        broker.append([{"a": b"1"}], broker.generation())  # waiting yet or not, the reader sees it
        thread.join(TIMEOUT)
        assert results == [[("1", {"a": b"1"})]]

    @pytest.mark.parametrize("action", ["wake", "restart"])
    def test_waiting_read_returns_empty_on_wake_and_restart(self, action):
        # Hub.close wakes its reader (no waiting out the read timeout); after a restart the
        # reader returns so the hub checks the generation.
        broker = MemoryBroker()
        thread, results = self.start_reader(broker, broker.tail())
        while thread.is_alive():  # only a reader already waiting sees it: repeat until it returned
            getattr(broker, action)()
            thread.join(0.05)
        assert results == [[]]

    def test_read_timeout(self):
        assert MemoryBroker().read("0", 0.01) == []

    def test_down_broker_raises_on_every_call(self):
        broker = MemoryBroker(url="memory://outage")
        generation = broker.generation()
        broker.down = True
        calls = [lambda: broker.append([], generation), lambda: broker.read("0", 0), broker.tail, broker.generation,
                 lambda: broker.set_presence("n", {}, 1), lambda: broker.update_presence("n", {}, 1),
                 lambda: broker.drop_presence("n"), broker.presence]
        for call in calls:
            with pytest.raises(BrokerUnavailable, match="memory broker memory://outage is down") as info:
                call()
            assert isinstance(info.value, (HubError, ConnectionError))
        broker.down = False
        assert broker.append([{"a": b"1"}], generation) is True  # back: the same log and generation


class TestMemoryPresence:
    def test_set_update_drop(self):
        broker = MemoryBroker()
        filters = ["news/#"]
        broker.set_presence("n1", {"c1": filters, "c2": []}, 60)
        filters.append("changed")  # copied in
        assert broker.presence() == {"n1": {"c1": ["news/#"], "c2": []}}
        assert broker.update_presence("n1", {"c2": ["a", "b"], "c1": None, "c3": ["x"]}, 60) is True
        assert broker.presence() == {"n1": {"c2": ["a", "b"], "c3": ["x"]}}
        view = broker.presence()
        view["n1"]["c2"].append("mutated")  # a copy out
        assert broker.presence()["n1"]["c2"] == ["a", "b"]
        broker.drop_presence("n1")
        broker.drop_presence("n1")  # twice: nothing to drop, no error
        assert broker.presence() == {}

    def test_update_without_presence_changes_nothing(self):
        broker = MemoryBroker()
        assert broker.update_presence("ghost", {"c1": ["a"]}, 60) is False
        assert broker.presence() == {}

    def test_expired_presence_disappears_and_cannot_be_updated(self):
        # A node that stopped refreshing (it crashed) is gone after its ttl; an update then
        # reports False so the hub sends its whole presence again.
        broker = MemoryBroker()
        broker.set_presence("alive", {"c1": ["a"]}, 60)
        broker.set_presence("crashed", {"c2": ["b"]}, 0)  # expires at once
        assert broker.update_presence("crashed", {"c3": ["c"]}, 60) is False
        assert broker.presence() == {"alive": {"c1": ["a"]}}
        assert broker.update_presence("crashed", {"c3": ["c"]}, 60) is False  # still gone after being pruned
        broker.set_presence("crashed", {"c2": ["b"]}, 60)  # it came back and sent all of it
        assert broker.presence() == {"alive": {"c1": ["a"]}, "crashed": {"c2": ["b"]}}

    def test_restart_loses_presence(self):
        broker = MemoryBroker()
        broker.set_presence("n1", {"c1": ["a"]}, 60)
        broker.restart()
        assert broker.presence() == {} and broker.update_presence("n1", {"c1": None}, 60) is False


class TestOpenBroker:
    def test_memory_urls(self):
        private1, private2 = open_broker(), open_broker("memory://")
        assert isinstance(private1, MemoryBroker) and private1 is not private2
        named = open_broker("memory://test-broker-shared", maxlen=7)
        assert open_broker("memory://test-broker-shared") is named  # one per name: hubs on it form a cluster
        assert (named.url, named.maxlen) == ("memory://test-broker-shared", 7)
        assert open_broker("MEMORY://test-broker-other") is not named
        assert open_broker(None, maxlen=5).maxlen == 5

    @pytest.mark.parametrize("url", ["http://host", "redis", "memcached://host:11211", "file:///tmp/log"])
    def test_unknown_scheme(self, url):
        with pytest.raises(HubError, match="unknown broker URL"):
            open_broker(url)


# -- RedisBroker against a real redis-server ------------------------------------------------------

@pytest.fixture
def redis_url():
    _require_redis()
    server = RedisProcess()
    yield server.url
    server.stop()


class TestRedisPresenceValues:
    def test_values_old_and_new_and_broken(self, redis_url):
        """Presence fields hold a JSON list of filters; nodes of an older version wrote one filter a
        line; a value that is neither (a broken node, a hand edit) counts as no filters."""
        import redis

        broker = open_broker(redis_url, prefix="covtest")
        raw = redis.Redis.from_url(redis_url)
        try:
            assert isinstance(broker, RedisBroker)
            broker.set_presence("new", {"c1": ["news/#", "a/b"], "c2": []}, 60)
            raw.hset("covtest:presence:old", mapping={"": "", "c3": "x/y\nz\n", "c4": ""})
            raw.hset("covtest:presence:broken", mapping={
                "c5": "[not json", "c7": json.dumps(["ok", 1, None, "fine"])})
            assert broker.presence() == {
                "new": {"c1": ["news/#", "a/b"], "c2": []},
                "old": {"c3": ["x/y", "z"], "c4": []},
                "broken": {"c5": [], "c7": ["ok", "fine"]},
            }
            assert broker.update_presence("new", {"c1": None, "c8": ["t"]}, 60) is True
            assert broker.update_presence("gone", {"c9": ["t"]}, 60) is False
            broker.drop_presence("broken")
            assert broker.presence() == {"new": {"c2": [], "c8": ["t"]}, "old": {"c3": ["x/y", "z"], "c4": []}}
        finally:
            raw.close()
            broker.close()

    def test_unreachable_redis_is_unavailable(self):
        _require_redis()
        server = RedisProcess()
        url = server.url
        server.stop()  # nothing listens there now
        broker = RedisBroker(url, socket_timeout=TIMEOUT)
        try:
            with pytest.raises(BrokerUnavailable, match="redis %s: GET failed" % url) as info:
                broker.generation()
            assert isinstance(info.value, ConnectionError)
        finally:
            broker.close()

    def test_a_bug_is_not_an_outage_until_wake(self, redis_url):
        # Before wake(), an exception that is not Redis's (here: filters JSON cannot encode) is
        # raised as it is, not hidden as BrokerUnavailable; after wake() (the hub closing, its
        # sockets closed under the calls) any failure is the wake-up.
        broker = RedisBroker(redis_url, prefix="covtest")
        try:
            with pytest.raises(TypeError):
                broker.set_presence("n1", {"c1": [object()]}, 60)
            broker.wake()
            with pytest.raises(BrokerUnavailable, match="HSET ended by wake"):
                broker.set_presence("n1", {"c1": [object()]}, 60)
        finally:
            broker.close()
