"""Brokers for :class:`twspy.hub.Hub`: an append-only log shared by the nodes of a cluster.

A broker is deliberately dumb: every node appends its entries (flat ``str -> bytes`` dicts)
to one ordered log and reads everyone's entries from a cursor. Ordering, deduplication, gap
detection and replay after a broker restart live in the hub, so any log with these
operations will do:

- ``append(entries, generation) -> bool`` — in order, atomically and only if the broker is
  still in ``generation`` (False, nothing appended, otherwise); raises :class:`BrokerUnavailable`
- ``read(cursor, timeout) -> [(id, entry), ...]`` — entries after ``cursor`` (waiting up
  to ``timeout`` for one)
- ``tail() -> cursor`` — the cursor of the newest entry (where a new reader starts)
- ``generation() -> str`` — changes when the broker lost its data (a restart without
  persistence): the hub then replays what it sent recently and reads from the start.
  ``append`` checks it in the same step so nothing new lands in a log before the replay
- ``set_presence(node, clients, ttl)``, ``drop_presence(node)``, ``presence()`` — which
  clients each live node has and their topic filters; a node that stops refreshing its
  presence (it crashed) disappears after ``ttl`` seconds
- ``update_presence(node, changes, ttl) -> bool`` (optional) — set (a list of filters) or
  remove (None) some clients' presence and renew the ttl; False, changing nothing, when the
  broker holds no presence for ``node`` (it expired or was lost): the hub then sends it all
- ``wake()`` (optional) — make waiting ``read`` calls return early: ``Hub.close`` calls it so
  that its reader stops at once instead of at the end of its read timeout

:class:`MemoryBroker` keeps the log in the process (``memory://`` and ``memory://name``,
several hubs on one broker behave like a cluster); :class:`RedisBroker` keeps it in a Redis
Stream (``redis://host:port/db``), through the optional ``redis`` package.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from typing import Any, cast
from urllib.parse import urlsplit

from .errors import BrokerUnavailable, HubError

__all__ = ["HubError", "BrokerUnavailable", "Broker", "MemoryBroker", "RedisBroker", "open_broker", "entry_size"]

Entry = dict[str, bytes]
Presence = dict[str, dict[str, list[str]]]  # node -> client id -> topic filters

DEFAULT_MAXLEN = 100_000  # entries a broker keeps; readers further behind see a gap (reported)
DEFAULT_MEMORY_BYTES = 16 << 20  # ... and their bytes, in process (MemoryBroker)
DEFAULT_REDIS_BYTES = 64 << 20   # ... and about their bytes, in Redis (RedisBroker)
_ENTRY_OVERHEAD = 64  # bytes counted per entry besides its fields' values
_READ_BYTES = 4 << 20  # about the most one read of a RedisBroker returns


class Broker:
    """The interface of a broker (see the module docstring)."""

    url = ""

    def append(self, entries: list[Entry], generation: str) -> bool:
        raise NotImplementedError

    def read(self, cursor: str, timeout: float) -> list[tuple[str, Entry]]:
        raise NotImplementedError

    def tail(self) -> str:
        raise NotImplementedError

    def generation(self) -> str:
        raise NotImplementedError

    def set_presence(self, node: str, clients: dict[str, list[str]], ttl: float) -> None:
        raise NotImplementedError

    def update_presence(self, node: str, changes: dict[str, list[str] | None], ttl: float) -> bool:
        """Optional: without it the hub sends a node's whole presence with ``set_presence``."""
        raise NotImplementedError

    def drop_presence(self, node: str) -> None:
        raise NotImplementedError

    def presence(self) -> Presence:
        raise NotImplementedError

    def wake(self) -> None:
        """Make ``read`` calls that are waiting end early (an empty list, or BrokerUnavailable);
        called when the hub closes; may do nothing."""

    def close(self) -> None:
        pass


class MemoryBroker(Broker):
    """An in-process broker: the default, with no dependencies.

    The log keeps at most ``maxlen`` entries and ``max_bytes`` bytes (their fields' values,
    plus 64 per entry): the oldest go first, and a reader that had not read them yet reports
    a gap.

    For tests it can also misbehave on purpose: ``down = True`` makes every call raise
    :class:`BrokerUnavailable` (an outage) and :meth:`restart` drops the log and presence
    (a Redis restart without persistence).
    """

    def __init__(self, maxlen: int = DEFAULT_MAXLEN, url: str = "memory://", *,
                 max_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self.url = url
        self.maxlen = maxlen
        self.max_bytes = max_bytes
        self.down = False
        self._cond = threading.Condition()
        self._log: list[tuple[int, Entry]] = []
        self._sizes: list[int] = []  # bytes of each entry of _log
        self._bytes = 0
        self._ids = itertools.count(1)
        self._generation = secrets.token_hex(8)
        self._presence: dict[str, tuple[float, dict[str, list[str]]]] = {}
        self._wakeups = 0

    def _check(self) -> None:
        if self.down:
            raise BrokerUnavailable("memory broker %s is down" % self.url)

    def append(self, entries: list[Entry], generation: str) -> bool:
        with self._cond:
            self._check()
            if generation != self._generation:
                return False
            for entry in entries:
                self._log.append((next(self._ids), dict(entry)))
                size = entry_size(entry)
                self._sizes.append(size)
                self._bytes += size
            count, drop = len(self._log), 0
            while drop < count and (count - drop > self.maxlen or self._bytes > self.max_bytes):
                self._bytes -= self._sizes[drop]
                drop += 1
            if drop:  # the oldest first
                del self._log[:drop]
                del self._sizes[:drop]
            self._cond.notify_all()
            return True

    def read(self, cursor: str, timeout: float) -> list[tuple[str, Entry]]:
        after = int(cursor)
        deadline = time.monotonic() + timeout
        with self._cond:
            wakeups, generation = self._wakeups, self._generation
            while True:
                self._check()
                if wakeups != self._wakeups or generation != self._generation:
                    return []  # woken (the hub closes), or the log was lost: the caller checks
                if self._log and self._log[-1][0] > after:
                    # ids are increasing: find the first one after the cursor from the end.
                    i = len(self._log)
                    while i > 0 and self._log[i - 1][0] > after:
                        i -= 1
                    return [(str(n), e) for n, e in self._log[i:i + 1000]]
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)

    def tail(self) -> str:
        with self._cond:
            self._check()
            return str(self._log[-1][0]) if self._log else "0"

    def generation(self) -> str:
        with self._cond:
            self._check()
            return self._generation

    def wake(self) -> None:
        with self._cond:
            self._wakeups += 1
            self._cond.notify_all()

    def restart(self) -> None:
        """Lose every entry and all presence, as a broker restarted without persistence."""
        with self._cond:
            self._log.clear()
            self._sizes.clear()
            self._bytes = 0
            self._ids = itertools.count(1)
            self._presence.clear()
            self._generation = secrets.token_hex(8)
            self._cond.notify_all()

    def set_presence(self, node: str, clients: dict[str, list[str]], ttl: float) -> None:
        with self._cond:
            self._check()
            self._presence[node] = (time.monotonic() + ttl, {k: list(v) for k, v in clients.items()})

    def update_presence(self, node: str, changes: dict[str, list[str] | None], ttl: float) -> bool:
        with self._cond:
            self._check()
            held = self._presence.get(node)
            if held is None or held[0] <= time.monotonic():
                return False
            clients = held[1]
            for cid, filters in changes.items():
                if filters is None:
                    clients.pop(cid, None)
                else:
                    clients[cid] = list(filters)
            self._presence[node] = (time.monotonic() + ttl, clients)
            return True

    def drop_presence(self, node: str) -> None:
        with self._cond:
            self._check()
            self._presence.pop(node, None)

    def presence(self) -> Presence:
        with self._cond:
            self._check()
            now = time.monotonic()
            for node in [n for n, (expiry, _) in self._presence.items() if expiry <= now]:
                del self._presence[node]
            return {node: {k: list(v) for k, v in clients.items()}
                    for node, (_, clients) in self._presence.items()}


class RedisBroker(Broker):
    """A broker on a Redis Stream (Redis 5 or newer), with the ``redis`` package.

    Keys (``prefix`` defaults to ``twspy``): ``{prefix}:log`` the stream, ``{prefix}:generation``
    a random token set by the first node (gone after a restart without persistence, which is
    how nodes notice one), ``{prefix}:entry-size`` the average entry size (below) and
    ``{prefix}:presence:{node}`` a hash per node (client id -> JSON list of its filters) that
    expires unless refreshed.

    The stream keeps about ``maxlen`` entries and about ``max_bytes`` bytes. Redis trims a
    stream by count (``XADD ... MAXLEN ~ n``), not by bytes, so each append (one Lua script,
    atomic) updates a running average of the entry size shared by all nodes (an exponential
    moving average over roughly the last 32 entries) and trims to
    ``max_bytes / average`` entries (never fewer than 16). A stream of 1 MB entries thus keeps
    about 64 of them with the default 64 MiB; small entries keep ``maxlen``. Approximate: a
    mix of sizes may hold somewhat more or less than ``max_bytes``, and Redis's ``~`` trims
    whole internal nodes only. A reader further behind than what is kept sees a gap (reported).
    """

    def __init__(self, url: str, prefix: str = "twspy", maxlen: int = DEFAULT_MAXLEN,
                 socket_timeout: float = 5.0, *, max_bytes: int = DEFAULT_REDIS_BYTES) -> None:
        try:
            import redis  # type: ignore[import-not-found, unused-ignore]  # optional dependency
        except ImportError:
            raise HubError("a redis:// hub needs the redis package: pip install 'twspy[redis]'") from None
        self.url = url
        self.maxlen = maxlen
        self.max_bytes = max_bytes
        self._redis_errors = (redis.RedisError, OSError)
        # No retries inside redis-py: a failure must reach the hub, which then checks the
        # generation before it goes on (a silent retry could hide a restart).
        self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=2.0,
                                            retry=None, retry_on_timeout=False, health_check_interval=0)
        self._log = prefix + ":log"
        self._gen_key = prefix + ":generation"
        self._size_key = prefix + ":entry-size"
        self._presence_prefix = prefix + ":presence:"
        self._append = self._client.register_script(_APPEND)
        self._update = self._client.register_script(_UPDATE_PRESENCE)
        self._woken = False  # wake() was called (the hub is closing)
        self._read_average = _ENTRY_OVERHEAD  # bytes per entry in the last read

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._redis_errors as exc:
            raise BrokerUnavailable("redis %s: %s failed: %s" % (self.url, what, exc)) from exc
        except Exception as exc:
            # A call whose socket wake() closed under it fails inside redis-py in whatever way
            # the moment gives: "I/O operation on closed file" (ValueError), a bad file
            # descriptor (OSError), the connection's socket already None (AttributeError)...
            # after wake() that is the wake-up, not a bug.
            if not self._woken:
                raise
            raise BrokerUnavailable("redis %s: %s ended by wake()" % (self.url, what)) from exc

    def append(self, entries: list[Entry], generation: str) -> bool:
        args: list[Any] = [generation, self.maxlen, self.max_bytes, _ENTRY_OVERHEAD]
        for entry in entries:
            args.append(len(entry))
            for name, value in entry.items():
                args += (name, value)
        return bool(self._call("XADD", self._append, keys=[self._gen_key, self._log, self._size_key], args=args))

    def read(self, cursor: str, timeout: float) -> list[tuple[str, Entry]]:
        # Up to 1,000 entries, but about _READ_BYTES at most: sized by the entries read last
        # (1,000 entries of 1 MB would be a gigabyte in one reply).
        count = max(1, min(1000, _READ_BYTES // self._read_average))

        def run() -> list[tuple[str, Entry]]:
            reply: Any = self._client.xread({self._log: cursor}, count=count, block=max(1, int(timeout * 1000)))
            entries: list[tuple[str, Entry]] = []
            for _stream, items in reply or ():
                for entry_id, fields in items:
                    entries.append((_text(entry_id), {_text(k): v for k, v in fields.items()}))
            return entries
        entries: list[tuple[str, Entry]] = self._call("XREAD", run)
        if entries:
            self._read_average = max(1, sum(entry_size(e) for _, e in entries) // len(entries))
        return entries

    def tail(self) -> str:
        def run() -> str:
            last = self._client.xrevrange(self._log, count=1)
            return _text(last[0][0]) if last else "0-0"
        return cast(str, self._call("XREVRANGE", run))

    def generation(self) -> str:
        def run() -> str:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(self._gen_key, secrets.token_hex(8), nx=True)  # the first node (after a restart) sets it
            pipe.get(self._gen_key)
            return _text(pipe.execute()[1])
        return cast(str, self._call("GET", run))

    def set_presence(self, node: str, clients: dict[str, list[str]], ttl: float) -> None:
        key = self._presence_prefix + node

        def run() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(key)
            # A node with no clients still has a key (a marker field), so it counts as alive.
            pipe.hset(key, mapping={"": "", **{cid: json.dumps(f) for cid, f in clients.items()}})
            pipe.pexpire(key, max(1, int(ttl * 1000)))
            pipe.execute()
        self._call("HSET", run)

    def update_presence(self, node: str, changes: dict[str, list[str] | None], ttl: float) -> bool:
        args: list[Any] = [max(1, int(ttl * 1000))]
        for cid, filters in changes.items():
            args += (cid, "" if filters is None else json.dumps(filters))
        return bool(self._call("HSET", self._update, keys=[self._presence_prefix + node], args=args))

    def drop_presence(self, node: str) -> None:
        self._call("DEL", self._client.delete, self._presence_prefix + node)

    def presence(self) -> Presence:
        def run() -> Presence:
            result: Presence = {}
            for key in self._client.scan_iter(match=self._presence_prefix + "*", count=100):
                node = _text(key)[len(self._presence_prefix):]
                fields = self._client.hgetall(key)
                result[node] = {_text(k): _filters(v) for k, v in fields.items() if k}
            return result
        return cast(Presence, self._call("SCAN", run))

    def wake(self) -> None:
        # A reader blocked in XREAD BLOCK holds a pooled connection: closing the pool's
        # connections makes that call fail now rather than at the end of its block time.
        self._woken = True
        try:
            self._client.connection_pool.disconnect()
        except self._redis_errors:  # pragma: no cover
            pass

    def close(self) -> None:
        try:
            self._client.close()
        except self._redis_errors:  # pragma: no cover
            pass


# Append entries only if the generation is still ours, atomically (a Lua script): after a
# restart nothing new may land in the fresh log before the hub's replay of older entries.
# Each entry updates the shared average entry size (KEYS[3]); the stream is trimmed to
# about min(maxlen, max_bytes / average) entries (see RedisBroker).
_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local maxlen, budget, overhead = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local average = tonumber(redis.call('GET', KEYS[3]))
local i = 5
while i <= #ARGV do
    local n = tonumber(ARGV[i])
    local size = overhead
    for j = 2, 2 * n, 2 do size = size + #ARGV[i + j] end
    if average == nil then average = size else average = average + (size - average) / 32 end
    local keep = math.max(16, math.min(maxlen, math.floor(budget / average)))
    local args = {'XADD', KEYS[2], 'MAXLEN', '~', keep, '*'}
    for j = 1, 2 * n do args[#args + 1] = ARGV[i + j] end
    redis.call(unpack(args))
    i = i + 2 * n + 1
end
redis.call('SET', KEYS[3], tostring(average))
return 1
"""

# Change some clients' presence (a JSON list of filters; "" removes the client) and renew
# the ttl, only if the node's hash still exists: otherwise the hub sends all of it again.
_UPDATE_PRESENCE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #ARGV, 2 do
    if ARGV[i + 1] == '' then
        redis.call('HDEL', KEYS[1], ARGV[i])
    else
        redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


def _filters(value: Any) -> list[str]:
    """A client's filters as stored in its presence field: a JSON list (a line per filter
    before; such values are still read)."""
    text = _text(value)
    if text.startswith("["):
        try:
            filters = json.loads(text)
        except ValueError:
            return []
        return [f for f in filters if isinstance(f, str)] if isinstance(filters, list) else []
    return [f for f in text.split("\n") if f]


def entry_size(entry: Entry) -> int:
    """The bytes an entry is counted for in byte budgets: its fields' values plus 64."""
    return _ENTRY_OVERHEAD + sum(len(value) for value in entry.values())


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


_named: dict[str, MemoryBroker] = {}
_named_lock = threading.Lock()


def open_broker(url: str | None = None, **options: Any) -> Broker:
    """A broker for ``url``: None or ``memory://`` (a private in-process broker),
    ``memory://name`` (one broker per name in the process: hubs that share it form a
    cluster), ``redis://`` / ``rediss://`` / ``unix://`` (:class:`RedisBroker`)."""
    if url is None or url == "memory://":
        return MemoryBroker(**options)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        with _named_lock:
            broker = _named.get(url)
            if broker is None:
                broker = _named[url] = MemoryBroker(url=url, **options)
            return broker
    if scheme in ("redis", "rediss", "unix"):
        return RedisBroker(url, **options)
    raise HubError("unknown broker URL %r: use memory://, memory://name or redis://host:port/db" % url)
