"""Topics, broadcast and send-to-id for clients on any server of a cluster.

::

    hub = Hub("redis://127.0.0.1:6379/0")       # or Hub() for one process
    server = Server(("127.0.0.1", 8000), hub=hub)
    ...
    hub.subscribe(client, "chat/+")              # MQTT topic filters (twspy.topics)
    hub.publish("chat/lobby", "hello")          # every subscriber, on every server
    hub.send_to(client_id, b"\\x00\\x01")        # one client, wherever it is

How delivery works, and why it loses nothing it acknowledged:

- Local clients are served at once by the calling thread (a broker outage degrades the
  cluster to single-server delivery; it never stops it). Sends never block: a client that
  lets its outbound queue pass ``max_outbox`` bytes is closed with 1013.
- Everything for other servers goes, in order, through one writer thread into the broker's
  log (:mod:`twspy.broker`): a Redis Stream or an in-process log. Every entry carries its
  node id and a per-node sequence number (with a random incarnation that changes whenever
  the node starts again, since its numbering starts again too).
- A reader thread reads the log from the last id it saw, skips its own node's entries, drops
  duplicates and notices gaps per origin by sequence number (reported by :meth:`Hub.on_gap`,
  never silent). Each writer also appends a marker every ``heartbeat`` while nothing waits
  ("all up to n is settled"), so a gap at the end of a node's entries shows too. Order per
  publisher is the log's order.
- When the broker is unreachable both threads retry with backoff; entries wait in a bounded
  queue (``max_pending``). When the broker comes back having lost its data (a restart
  without persistence: its *generation* changed) every node appends again the entries it
  sent recently (``replay``, kept after the broker accepted them) and reads the new log from
  its start; receivers drop what they already had. So an entry the broker accepted is
  delivered once, in order, even across a restart; one it never accepted is reported.

Client ids are ``"<node id>.<n>.<16 random hex digits>"``: unique in the cluster, routable to
their node, and not guessable by another client.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Iterable
from typing import Any, Callable, Union

from .broker import Broker, BrokerUnavailable, Entry, HubError, MemoryBroker, RedisBroker, entry_size, open_broker
from .errors import PayloadTooBig
from .filters import Filter
from .frame import CLOSE_NORMAL, valid_close_code
from .message import BinaryMessage, Message, TextMessage
from .server import send_all
from .topics import InvalidTopic, SubscriptionTree, matches, validate_filter, validate_topic

__all__ = ["Hub", "TopicBroadcast", "HubError", "BrokerUnavailable", "MemoryBroker", "RedisBroker"]

logger = logging.getLogger("twspy.hub")

MessageLike = Union[str, bytes, bytearray, memoryview, Message]
Ids = Union[None, str, Any, Iterable[Any]]

DEFAULT_MAX_PENDING = 10_000   # entries waiting for the broker before publishes report a loss
DEFAULT_MAX_PENDING_SIZE = 16 << 20   # ... and their bytes
DEFAULT_REPLAY = 10_000        # accepted entries kept to append again after a broker restart
DEFAULT_REPLAY_SIZE = 8 << 20  # ... and their bytes
DEFAULT_MAX_SIZE = 1 << 20     # bytes of one published payload (as the Server's max_size)
# Subscriptions: each level of a filter is a trie node of a few hundred bytes, so these bound
# what one client can make a hub hold (measured: about 1.5 MB at the per-client limits).
DEFAULT_MAX_SUBSCRIPTIONS = 256    # filters per client
DEFAULT_MAX_TOPIC_LEVELS = 32      # levels per filter or topic (MQTT allows 32,768)
DEFAULT_MAX_TOPIC_LENGTH = 1024    # bytes of UTF-8 per filter or topic (MQTT allows 65,535)
DEFAULT_MAX_TOPIC_NODES = 200_000  # trie nodes per hub: every client's filters together

_PRESENCE_DELAY = 0.05  # seconds presence changes wait to be sent together
_ROOM_TIMEOUT = 5.0  # seconds a publisher waits for the writer when too much waits for the broker
_ENTRY_HEAD = 256    # bytes of an entry besides its payload, roughly (ids, topic): for that wait

# Entry kinds on the log.
_PUBLISH, _BROADCAST, _SEND, _DISCONNECT = b"p", b"b", b"s", b"d"
_MARK = b"m"  # a heartbeat: every entry of this node up to "s" was appended or dropped


class Hub:
    """A pub/sub hub for the clients of one or more :class:`~twspy.server.Server`.

    Args:
        broker: None or ``"memory://"`` (this process only), ``"memory://name"`` (hubs in
            one process that share the name form a cluster: handy for tests),
            ``"redis://host:port/db"`` (needs ``pip install 'twspy[redis]'``) or a
            :class:`~twspy.broker.Broker`.
        node_id: this node's id (random by default); client ids start with it.
        max_pending: entries waiting for an unreachable broker; beyond it a publish is
            delivered locally only, returns False and the other nodes see (and report) a gap.
        replay: entries appended again after a broker restart that lost its data.
        on_gap: ``f(origin_node, first_seq, last_seq)`` called for entries that were lost
            (see :meth:`on_gap`).
        heartbeat: seconds between presence refreshes and broker checks.
        presence_ttl: seconds after which a silent node's presence disappears.
        prefix: key prefix in Redis (several independent clusters can share one Redis).
        ready_timeout: seconds the constructor waits for the broker (see :attr:`ready`).
        max_size: bytes of one message given to :meth:`publish`, :meth:`broadcast` or
            :meth:`send_to`; a larger one raises :class:`~twspy.errors.PayloadTooBig`.
        max_pending_size: bytes of the entries waiting for an unreachable broker (as
            ``max_pending``, whichever comes first).
        replay_size: bytes of the entries kept for ``replay`` (the oldest go first).
        max_subscriptions: topic filters per client; one more raises
            :class:`~twspy.topics.SubscriptionLimit`.
        max_topic_levels: levels of a filter or topic name (subscribe, publish, presence);
            more raise :class:`~twspy.topics.InvalidTopic`.
        max_topic_length: bytes (UTF-8) of a filter or topic name; longer raise InvalidTopic.
        max_topic_nodes: trie nodes for all subscriptions of this hub together (one per
            distinct level prefix); past it subscribe raises SubscriptionLimit.

    ``Hub()`` and ``Hub("memory://")`` serve this process only: they keep no log at all (no
    other node could read it). Bytes are counted as the entries' fields (payload, topic, ids).
    """

    def __init__(self, broker: None | str | Broker = None, *, node_id: str | None = None,
                 max_pending: int = DEFAULT_MAX_PENDING, replay: int = DEFAULT_REPLAY,
                 on_gap: Callable[[str, int, int], None] | None = None, heartbeat: float = 2.0,
                 presence_ttl: float = 10.0, prefix: str = "twspy", ready_timeout: float = 5.0,
                 max_size: int = DEFAULT_MAX_SIZE, max_pending_size: int = DEFAULT_MAX_PENDING_SIZE,
                 replay_size: int = DEFAULT_REPLAY_SIZE, max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
                 max_topic_levels: int = DEFAULT_MAX_TOPIC_LEVELS,
                 max_topic_length: int = DEFAULT_MAX_TOPIC_LENGTH,
                 max_topic_nodes: int = DEFAULT_MAX_TOPIC_NODES) -> None:
        # A private in-process broker: nobody else reads its log, so nothing is written to it.
        self._solo = broker is None or broker == "memory://"
        if isinstance(broker, Broker):
            self.broker = broker
        elif isinstance(broker, str) and broker.lower().startswith(("redis", "unix")):
            self.broker = open_broker(broker, prefix=prefix)
        else:
            self.broker = open_broker(broker)
        self.node_id = node_id or secrets.token_hex(4)
        if not self.node_id or "." in self.node_id or "," in self.node_id:
            raise ValueError("node_id %r: non-empty, without '.' or ','" % self.node_id)
        self.max_pending = max_pending
        self.max_pending_size = max_pending_size
        self.replay = replay
        self.replay_size = replay_size
        self.max_size = max_size
        self.max_topic_length = max_topic_length
        self.max_topic_levels = max_topic_levels
        self.heartbeat = heartbeat
        self.presence_ttl = presence_ttl
        self._on_gap = on_gap
        self.servers: list[Any] = []
        self.stats: dict[str, int] = collections.Counter()  # published, received, duplicates, gaps, ...
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._subs = SubscriptionTree(max_levels=max_topic_levels, max_filters=max_subscriptions,
                                      max_nodes=max_topic_nodes)
        self._seq = 0
        # A node that comes back with the same node_id numbers its entries from 1 again: the
        # incarnation tells receivers it is a new sequence, not duplicates of the old one.
        self._incarnation = secrets.token_hex(4).encode()
        self._pending: collections.deque[tuple[Entry, Callable[[bool], None] | None]] = collections.deque()
        self._pending_bytes = 0
        self._replay: collections.deque[Entry] = collections.deque()
        self._replay_bytes = 0
        self._work = threading.Condition(self._lock)   # the writer waits on it
        # Presence goes to the broker by client, for the clients that changed; all of it only
        # at first, after a broker restart or failure, or when the broker lost it (expired).
        self._presence_all = not self._solo
        self._presence_changed: set[str] = set()
        self._presence_due = 0.0  # when the changes are sent
        self._accepted = 0      # entries the broker accepted (for flush)
        self._queued = 0        # entries ever queued
        self._last_seq: dict[tuple[str, bytes], int] = {}  # (origin node, incarnation) -> last delivered
        self._closing = False
        self.connected = threading.Event()      # set while the broker answers
        self._closed = threading.Event()
        self._kick = threading.Event()          # ends the writer's backoff: broker back, or closing
        self._new_generation = False            # the reader saw a new log: the writer replays now
        self._down_logged = False
        self._writer = threading.Thread(target=self._write_loop, name="twspy-hub-writer", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="twspy-hub-reader", daemon=True)
        self.ready = threading.Event()          # set once the reader knows where the log ends
        self._first_try = threading.Event()     # set after the reader's first attempt, either way
        self._writer.start()
        self._reader.start()
        # Entries appended after the constructor returns reach this node's subscribers: wait
        # (a little) for the reader to find the end of the log. An unreachable broker does
        # not fail the constructor (nor keep it waiting once refused); the reader keeps
        # trying and starts from where it gets in.
        self._first_try.wait(ready_timeout)
        if not self.ready.is_set():
            logger.warning("hub %s: broker %s not reachable yet; retrying in the background",
                           self.node_id, self.broker.url)

    def __repr__(self) -> str:
        return "<Hub %s on %s, %d clients>" % (self.node_id, self.broker.url, len(self._clients))

    # -- servers and clients ----------------------------------------------------------------
    def attach(self, server: Any) -> None:
        """Serve ``server``'s clients: ids routable through this hub, cleanup on close.

        ``Server(..., hub=hub)`` calls it; call it before clients connect.
        """
        with self._lock:
            if server in self.servers:
                return
            self.servers.append(server)
        server.hub = self
        server.node_id = self.node_id
        server.filters.insert(0, _Membership(self))

    def _join(self, client: Any) -> None:
        with self._lock:
            self._clients[client.id] = client
            self._presence_changed_locked(client.id)

    def _leave(self, client: Any) -> None:
        with self._lock:
            self._subs.remove_key(client.id)  # frees its trie nodes
            self._clients.pop(client.id, None)
            self._presence_changed_locked(client.id)

    def subscribe(self, client: Any, topic_filter: str) -> bool:
        """Deliver messages published to topics matching ``topic_filter`` (MQTT rules) to
        ``client`` (a client of an attached server, or its id). True if it is new.

        Raises:
            InvalidTopic: a bad filter, or one over ``max_topic_length`` / ``max_topic_levels``.
            SubscriptionLimit: the client has ``max_subscriptions`` filters, or the hub has
                no ``max_topic_nodes`` left.
        """
        self._check_length(topic_filter, validate_filter)
        with self._lock:
            # Under the lock that _leave holds: the client cannot leave between check and add.
            cid = self._local_id(client, locked=True)
            added = self._subs.add(topic_filter, cid)
            if added:
                self._presence_changed_locked(cid)
        return added

    def unsubscribe(self, client: Any, topic_filter: str | None = None) -> bool:
        """Stop one subscription of ``client`` (every one with None). True if any existed."""
        with self._lock:
            cid = self._local_id(client, locked=True)
            if topic_filter is None:
                removed = bool(self._subs.remove_key(cid))
            else:
                removed = self._subs.remove(topic_filter, cid)
            if removed:
                self._presence_changed_locked(cid)
        return removed

    def _check_length(self, topic: str, validate: Callable[[str], str]) -> None:
        """``validate`` the filter or topic name, then the hub's limits on its size (cheap
        checks first: the limits guard the trie and matching against huge input)."""
        if isinstance(topic, str) and len(topic) > self.max_topic_length:  # chars <= bytes
            raise InvalidTopic(topic, "longer than %d bytes" % self.max_topic_length)
        validate(topic)
        size = len(topic.encode("utf-8"))
        if size > self.max_topic_length:
            raise InvalidTopic(topic, "%d bytes, more than %d" % (size, self.max_topic_length))
        levels = topic.count("/") + 1
        if levels > self.max_topic_levels:
            raise InvalidTopic(topic, "%d levels, more than %d" % (levels, self.max_topic_levels))

    @property
    def topic_nodes(self) -> int:
        """Trie nodes that every client's subscriptions use together (``max_topic_nodes``
        bounds them; a node is a few hundred bytes): they follow the live subscriptions."""
        return self._subs.nodes

    def subscriptions(self, client: Any) -> set[str]:
        """The topic filters of a local client."""
        return self._subs.filters(self._local_id(client))

    def _local_id(self, client: Any, locked: bool = False) -> str:
        cid = client if isinstance(client, str) else client.id
        if locked:
            known = cid in self._clients
        else:
            with self._lock:
                known = cid in self._clients
        if not known:
            raise KeyError("%r is not an open client of this hub's servers" % (client,))
        return cid

    def _presence_changed_locked(self, cid: str) -> None:
        # Lock held. The writer sends this client's presence (only) at its next turn.
        if not self._solo:
            if not self._presence_changed:
                # Changes that come close together go in one update, a little later (presence
                # is as fresh as the heartbeat anyway): 20,000 subscribes, one by one, make
                # hundreds of updates, not 20,000.
                self._presence_due = time.monotonic() + _PRESENCE_DELAY
                self._work.notify()
            self._presence_changed.add(cid)

    def _mark_presence(self) -> None:
        """Have the writer send all of this node's presence again (the broker may have lost it)."""
        with self._lock:
            if not self._solo:
                self._presence_all = True
                self._work.notify()

    # -- sending -------------------------------------------------------------------------------
    def publish(self, topic: str, message: MessageLike, exclude: Ids = None,
                on_done: Callable[[bool], None] | None = None) -> bool:
        """Send ``message`` to every client, on any server, subscribed to a filter matching
        ``topic``, but those in ``exclude`` (clients or ids).

        Local subscribers get it before this returns. Returns True when it is queued for
        the other servers, False when the broker has been unreachable long enough for
        ``max_pending`` entries to wait (then only local subscribers got it, the loss is
        logged and the other nodes report a gap). ``on_done(accepted)`` is called once the
        broker accepted it (True) or it was given up (False).
        """
        self._check_length(topic, validate_topic)
        msg, data = self._checked(message)
        excluded = _ids(exclude)
        self._wait_for_room(len(data))
        with self._lock:
            self._deliver_local(self._subs.match(topic), excluded, msg)  # type: ignore[arg-type]
            queued = self._queue(_PUBLISH, {"t": topic.encode("utf-8"), "x": _join_ids(excluded)}, msg, data,
                                 on_done)
        return self._settle(queued, on_done)  # after releasing the lock: on_done may use the hub

    def broadcast(self, message: MessageLike, exclude: Ids = None,
                  on_done: Callable[[bool], None] | None = None) -> bool:
        """Send ``message`` to every client of every server (but those in ``exclude``)."""
        msg, data = self._checked(message)
        excluded = _ids(exclude)
        self._wait_for_room(len(data))
        with self._lock:
            self._deliver_local(list(self._clients), excluded, msg)
            queued = self._queue(_BROADCAST, {"x": _join_ids(excluded)}, msg, data, on_done)
        return self._settle(queued, on_done)

    def send_to(self, ids: Ids, message: MessageLike, on_done: Callable[[bool], None] | None = None) -> bool:
        """Send ``message`` to the client(s) with these ids, on whichever server they are.

        Ids of clients that are gone are ignored (there is no one to tell).
        """
        msg, data = self._checked(message)
        local, remote = self._split(_ids(ids))
        if remote:
            self._wait_for_room(len(data))
        with self._lock:
            self._deliver_local(local, (), msg)
            queued = self._queue(_SEND, {"i": _join_ids(remote)}, msg, data, on_done) if remote else None
        return self._settle(queued, on_done)

    def disconnect(self, ids: Ids, code: int = CLOSE_NORMAL, reason: str = "") -> bool:
        """Close the client(s) with these ids, on whichever server they are.

        Raises ValueError for a code that may not be sent (RFC 6455 §7.4) or a reason over
        123 bytes, before anything is queued.
        """
        if not valid_close_code(code) or len(reason.encode("utf-8")) > 123:
            raise ValueError("cannot close with %r %r" % (code, reason))
        local, remote = self._split(_ids(ids))
        with self._lock:
            clients = [self._clients[cid] for cid in local if cid in self._clients]
            queued = self._queue(_DISCONNECT, {"i": _join_ids(remote), "c": str(code).encode(),
                                               "r": reason.encode("utf-8")}, None, b"", None) if remote else None
        for client in clients:
            client.start_close(code, reason)
        return queued is not False

    def _split(self, ids: set[str]) -> tuple[list[str], set[str]]:
        prefix = self.node_id + "."
        local = [cid for cid in ids if cid.startswith(prefix)]
        return local, ids.difference(local)

    def _deliver_local(self, ids: Iterable[str], excluded: Iterable[str], msg: Message) -> None:
        # Called with self._lock held: local delivery and queueing happen in one order for
        # every publisher, so subscribers here and elsewhere see the same order.
        clients = [self._clients[cid] for cid in ids if cid not in excluded and cid in self._clients]
        if clients:
            send_all(clients, msg)
            self.stats["delivered"] += len(clients)

    def _checked(self, message: MessageLike) -> tuple[Message, bytes]:
        """The message and its payload's bytes, within ``max_size``."""
        msg = _as_message(message)
        data = msg.encode()
        if len(data) > self.max_size:
            raise PayloadTooBig("a message of %d bytes is over the hub's max_size (%d)" % (len(data), self.max_size))
        return msg, data

    def _wait_for_room(self, size: int) -> None:
        """While the broker is taking entries but those waiting fill ``max_pending`` or
        ``max_pending_size``, wait for room (up to 5 s): a publisher faster than the broker
        goes at the broker's pace instead of losing entries. Not during an outage (entries
        are dropped and reported at once) nor in the writer's own callbacks."""
        if self._solo or threading.current_thread() is self._writer:
            return
        deadline = time.monotonic() + _ROOM_TIMEOUT
        with self._lock:
            while (self._pending and self.connected.is_set() and not self._closing
                   and (len(self._pending) >= self.max_pending
                        or self._pending_bytes + size + _ENTRY_HEAD > self.max_pending_size)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._work.wait(left)

    @staticmethod
    def _settle(queued: bool | None, on_done: Callable[[bool], None] | None) -> bool:
        """What publish & co. return; calls ``on_done`` unless the writer will (``queued`` True)."""
        if on_done is not None and queued is not True:
            _call(on_done, queued is None)  # None: nothing for other nodes, done already
        return queued is not False

    def _queue(self, kind: bytes, fields: dict[str, bytes], msg: Message | None, data: bytes,
               on_done: Callable[[bool], None] | None) -> bool | None:
        """Queue an entry for the writer: True; False if it cannot wait (the caller calls
        ``on_done(False)``, without the lock); None for a hub that keeps no log."""
        self.stats["published"] += 1
        if self._solo:
            return None
        self._seq += 1
        entry = self._entry(kind)
        entry.update(fields)
        if msg is not None:
            entry["y"] = b"t" if isinstance(msg, TextMessage) else b"b"
            entry["d"] = data
        size = entry_size(entry)
        if (len(self._pending) >= self.max_pending or self._pending_bytes + size > self.max_pending_size
                or self._closing):
            self.stats["dropped"] += 1
            logger.warning("hub %s: broker %s unreachable with %d entries (%d bytes) waiting: entry %d reaches "
                           "this server only", self.node_id, self.broker.url, len(self._pending),
                           self._pending_bytes, self._seq)
            return False
        self._pending.append((entry, on_done))
        self._pending_bytes += size
        self._queued += 1
        self._work.notify()
        return True

    def _entry(self, kind: bytes) -> Entry:
        """A log entry's head: origin node, incarnation, sequence number (the latest), kind."""
        return {"o": self.node_id.encode(), "e": self._incarnation, "s": str(self._seq).encode(), "k": kind}

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the broker has accepted every entry queued so far; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._queued
            while self._accepted < target and not self._closing:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._work.wait(left if left is None else min(left, 0.5))
            return self._accepted >= target

    # -- presence ---------------------------------------------------------------------------
    def presence(self, topic: str | None = None) -> set[str]:
        """Ids of the clients, on any live server, subscribed to a filter matching ``topic``
        (every client with None). Remote presence is as fresh as the last heartbeat.

        Raises BrokerUnavailable when the broker cannot be asked (local presence alone
        would be a wrong answer, not a degraded one).
        """
        if topic is not None:
            self._check_length(topic, validate_topic)
        with self._lock:
            local = set(self._clients)
        result = local if topic is None else local & self._subs.match(topic)
        for node, clients in self.broker.presence().items():
            if node == self.node_id:
                continue
            for cid, filters in clients.items():
                if topic is None or any(matches(f, topic) for f in filters):
                    result.add(cid)
        return result

    # -- gaps --------------------------------------------------------------------------------
    def on_gap(self, origin: str, first: int, last: int) -> None:
        """Entries ``first``..``last`` from node ``origin`` cannot be delivered here (the broker
        trimmed them, lost them, or that node could not queue them). Logged at WARNING; calls
        the ``on_gap`` given to the constructor. May be overridden."""
        logger.warning("hub %s: lost entries %d..%d from node %s", self.node_id, first, last, origin)
        if self._on_gap is not None:
            self._on_gap(origin, first, last)

    # -- the writer: pending entries, presence and broker checks --------------------------------
    def _write_loop(self) -> None:
        generation: str | None = None
        backoff = _Backoff()
        next_beat = 0.0
        while True:
            with self._lock:
                while True:
                    now = time.monotonic()
                    if (self._pending or self._presence_all or self._closing or self._new_generation
                            or now >= next_beat or (self._presence_changed and now >= self._presence_due)):
                        break
                    wake = min(next_beat, self._presence_due) if self._presence_changed else next_beat
                    self._work.wait(max(0.0, wake - now))
                if self._closing and (not self._pending or not self.connected.is_set()):
                    break
                batch = list(itertools.islice(self._pending, 500))
                beat = time.monotonic() >= next_beat or self._new_generation
                self._new_generation = False
                marker = None
                if beat and not batch and self._seq:
                    # Nothing waits: every entry up to _seq was appended or dropped. Saying so
                    # lets receivers notice a gap at the end (dropped or trimmed entries after
                    # which this node went quiet), which no later entry would reveal.
                    marker = self._entry(_MARK)
                presence, changes = self._presence_work(beat)
            try:
                if generation is None or beat:
                    generation = self._check_generation(generation)
                if changes is not None and not self._update_presence(changes):
                    with self._lock:  # the broker lost it (it expired), or cannot update a part
                        presence = self._presence_work(True, everything=True)[0]
                if presence is not None:
                    self.broker.set_presence(self.node_id, presence, self.presence_ttl)
                if beat:
                    next_beat = time.monotonic() + self.heartbeat
                entries = [entry for entry, _ in batch] or ([marker] if marker is not None else [])
                while entries and not self.broker.append(entries, generation):
                    generation = self._check_generation(generation)
            except BrokerUnavailable as exc:
                if presence is not None or changes:
                    self._mark_presence()  # some of it may not have arrived: all of it next time
                self._broker_down(exc)
                backoff.wait(self._kick)  # the reader kicks it when the broker is back
                self._kick.clear()
                continue
            except Exception:  # pragma: no cover - a bug: log it, keep the hub alive
                logger.exception("hub %s: writer failed", self.node_id)
                self._closed.wait(0.5)
                continue
            backoff.reset()
            self._broker_up()
            callbacks = []
            with self._lock:
                for _ in batch:
                    entry, on_done = self._pending.popleft()
                    size = entry_size(entry)
                    self._pending_bytes -= size
                    self._keep_for_replay(entry, size)
                    if on_done is not None:
                        callbacks.append(on_done)
                self._accepted += len(batch)
                self._work.notify_all()
            for on_done in callbacks:
                _call(on_done, True)
            # Not held while waiting for more: a batch may be megabytes (the replay keeps its own).
            batch.clear()
            entries.clear()
        self._finish_writer()

    def _presence_work(self, beat: bool, everything: bool = False
                       ) -> tuple[dict[str, list[str]] | None, dict[str, list[str] | None] | None]:
        """Lock held: (all of this node's presence, or None; the clients that changed, or None).

        Incremental: a subscribe costs one client's fields, not a rebuild of every client's
        (20,000 subscribes took 23 s of CPU that way). A heartbeat with no change sends an
        empty change, which only renews the presence's ttl.
        """
        if self._solo:
            return None, None
        if everything or self._presence_all:
            self._presence_all = False
            self._presence_changed.clear()
            return {cid: sorted(self._subs.filters(cid)) for cid in self._clients}, None
        if not self._presence_changed and not beat:
            return None, None
        changes: dict[str, list[str] | None] = {
            cid: sorted(self._subs.filters(cid)) if cid in self._clients else None
            for cid in self._presence_changed}
        self._presence_changed.clear()
        return None, changes

    def _update_presence(self, changes: dict[str, list[str] | None]) -> bool:
        try:
            return self.broker.update_presence(self.node_id, changes, self.presence_ttl)
        except NotImplementedError:  # a Broker written before update_presence existed
            return False

    def _keep_for_replay(self, entry: Entry, size: int) -> None:
        # Lock held. Bounded by count and by bytes: the oldest go first.
        self._replay.append(entry)
        self._replay_bytes += size
        while self._replay and (len(self._replay) > self.replay or self._replay_bytes > self.replay_size):
            self._replay_bytes -= entry_size(self._replay.popleft())

    def _check_generation(self, known: str | None) -> str:
        """The broker's generation; when it changed, first append again what it lost."""
        generation = self.broker.generation()
        while known is not None and generation != known:
            # The broker lost its log: what it had accepted from us may be unread elsewhere.
            # Append it again (receivers drop duplicates by sequence number) before anything
            # new; append() refuses if the generation changes once more meanwhile.
            with self._lock:
                entries = list(self._replay)
                self._presence_all = not self._solo
            logger.warning("hub %s: broker %s lost its data (restarted?); appending %d recent entries again",
                           self.node_id, self.broker.url, len(entries))
            self.stats["replays"] += 1
            known = generation
            for start in range(0, len(entries), 500):
                if not self.broker.append(entries[start:start + 500], generation):
                    generation = self.broker.generation()
                    break
        return generation

    def _finish_writer(self) -> None:
        with self._lock:
            left = list(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._work.notify_all()
        for _, on_done in left:
            if on_done is not None:
                _call(on_done, False)
        if left:
            logger.warning("hub %s: closed with %d entries the broker never accepted", self.node_id, len(left))
        try:
            self.broker.drop_presence(self.node_id)
        except BrokerUnavailable:
            pass

    # -- the reader ---------------------------------------------------------------------------
    def _read_loop(self) -> None:
        backoff = _Backoff(cap=1.0)  # it notices the broker's return (and kicks the writer) within 1 s
        cursor: str | None = None
        generation: str | None = None
        while not self._closing:
            try:
                if generation is None:
                    generation = self.broker.generation()
                    cursor = self.broker.tail()
                    self.ready.set()
                    self._first_try.set()
                entries = self.broker.read(cursor, 1.0)  # type: ignore[arg-type]
                # Checked after reading: entries count only if the log was the same throughout.
                now = self.broker.generation()
                if now != generation:
                    # A new log: read it from its start; what we had already is a duplicate.
                    # And have the writer replay this node's recent entries now, not at its
                    # next heartbeat.
                    generation, cursor = now, "0"
                    with self._lock:
                        self._new_generation = True
                        self._work.notify()
                    self._kick.set()
                    continue
            except BrokerUnavailable as exc:
                if self._closing:
                    break  # close() woke the read (wake()): not an outage
                self._broker_down(exc)
                self._first_try.set()
                backoff.wait(self._closed)
                continue
            except Exception:  # pragma: no cover - a bug: log it, keep the hub alive
                logger.exception("hub %s: reader failed", self.node_id)
                self._closed.wait(0.5)
                continue
            backoff.reset()
            self._broker_up()
            for entry_id, entry in entries:
                cursor = entry_id
                try:
                    self._receive(entry)
                except Exception:  # a malformed entry must not stop the reader
                    logger.exception("hub %s: cannot handle entry %s", self.node_id, entry_id)

    def _receive(self, entry: Entry) -> None:
        origin = entry["o"].decode()
        if origin == self.node_id:
            return
        seq = int(entry["s"])
        sequence = (origin, entry.get("e", b""))
        last = self._last_seq.get(sequence)
        kind = entry["k"]
        if kind == _MARK:  # "everything up to seq is settled": a gap at the end shows here
            if last is not None and seq > last:
                self.stats["gaps"] += 1
                self.on_gap(origin, last + 1, seq)
            if last is None or seq > last:
                self._last_seq[sequence] = seq
            return
        if last is not None:
            if seq <= last:
                self.stats["duplicates"] += 1
                return
            if seq > last + 1:
                self.stats["gaps"] += 1
                self.on_gap(origin, last + 1, seq - 1)
        self._last_seq[sequence] = seq
        self.stats["received"] += 1
        msg = None
        if "d" in entry:
            msg = TextMessage(entry["d"].decode("utf-8")) if entry.get("y") == b"t" else BinaryMessage(entry["d"])
        with self._lock:
            if kind == _PUBLISH:
                excluded = _split_ids(entry.get("x", b""))
                self._deliver_local(self._subs.match(entry["t"].decode("utf-8")), excluded, msg)  # type: ignore
            elif kind == _BROADCAST:
                self._deliver_local(list(self._clients), _split_ids(entry.get("x", b"")), msg)  # type: ignore
            elif kind == _SEND:
                self._deliver_local(_split_ids(entry["i"]), (), msg)  # type: ignore[arg-type]
            elif kind == _DISCONNECT:
                clients = [self._clients[c] for c in _split_ids(entry["i"]) if c in self._clients]
            else:
                logger.warning("hub %s: unknown entry kind %r from %s", self.node_id, kind, origin)
        if kind == _DISCONNECT:
            for client in clients:
                client.start_close(int(entry["c"]), entry.get("r", b"").decode("utf-8"))

    # -- broker state ---------------------------------------------------------------------------
    def _broker_down(self, exc: BaseException) -> None:
        with self._lock:  # reader and writer both get here: one outage, logged once
            first = self.connected.is_set() or not self._down_logged
            if first:
                self._down_logged = True
                self.stats["outages"] += 1
            self.connected.clear()
            self._work.notify_all()  # publishers waiting for room: drop now, it may take long
        if first:
            logger.warning("hub %s: broker unavailable (%s); local delivery goes on, retrying", self.node_id, exc)

    def _broker_up(self) -> None:
        if not self.connected.is_set():
            self._kick.set()  # the writer may be in its backoff: it can go on now
            if self.stats["outages"]:
                logger.warning("hub %s: broker %s is back", self.node_id, self.broker.url)
            self.connected.set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the hub: try to hand the broker what is pending (up to ``timeout``), remove
        this node's presence, stop the threads. Attached servers keep running."""
        self.flush(timeout)
        with self._lock:
            self._closing = True
            self._work.notify_all()
        self._closed.set()
        self._kick.set()
        self._writer.join(timeout)  # first: it removes this node's presence on its way out
        self.broker.wake()  # the reader may wait in read(): stop now, not after its timeout
        self._reader.join(timeout + 2)
        self.broker.close()

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Membership(Filter):
    """The hub's own filter, first in each attached server's chain: tracks clients."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def on_open(self, client: Any) -> None:
        self.hub._join(client)

    def on_close(self, client: Any, code: int, reason: str) -> None:
        self.hub._leave(client)


class TopicBroadcast(Filter):
    """The JSON client protocol: browser code subscribes and publishes without server code.

    Needs a server with a hub. Text messages that are JSON objects with a ``type`` are
    handled here (others pass on to the next filter); ``id`` in a request comes back in
    its ``ack``/``error``::

        → {"type": "subscribe", "topic": "chat/+", "id": 1}
        → {"type": "unsubscribe", "topic": "chat/+"}       (no topic: every subscription)
        → {"type": "publish", "topic": "chat/a", "data": ..., "id": 2}
        → {"type": "broadcast", "data": ...}
        → {"type": "send_by_conn_id", "conn_id": "ab12cd34.7", "data": ...}   ("conn_ids": [...] too)
        ← {"type": "set_conn_id", "conn_id": "ab12cd34.3"}                     (on open)
        ← {"type": "message", "topic": "chat/a", "data": ..., "from": "ab12cd34.3"}
        ← {"type": "ack", "id": 2}       (publish: once the broker accepted it)
        ← {"type": "error", "id": 2, "error": "..."}

    Deliveries are ``message`` objects (``topic`` is absent for broadcast and direct sends).
    Override :meth:`authorize_subscribe` / :meth:`authorize_publish` / :meth:`authorize_send`
    to restrict what a client may do. An unknown ``type`` gets an error reply; with
    ``pass_unknown=True`` it passes on to the next filter instead (for applications whose own
    messages carry a ``type``).

    Args:
        pass_unknown: pass requests of an unknown ``type`` on to the next filter.
        system_topics: let clients subscribe and publish to topics starting with ``$``
            (MQTT §4.7.2: the server's own, such as ``$SYS/...``); refused by default.
        max_conn_ids: ids in one ``send_by_conn_id``.
        max_depth: nesting of arrays and objects in a request (its ``data`` is
            serialised again for every delivery); deeper gets an error reply.
    """

    TYPES = frozenset(("subscribe", "unsubscribe", "publish", "broadcast", "send_by_conn_id"))

    def __init__(self, pass_unknown: bool = False, *, system_topics: bool = False, max_conn_ids: int = 100,
                 max_depth: int = 32) -> None:
        self.pass_unknown = pass_unknown
        self.system_topics = system_topics
        self.max_conn_ids = max_conn_ids
        self.max_depth = max_depth

    def on_open(self, client: Any) -> None:
        client.send(json.dumps({"type": "set_conn_id", "conn_id": client.id}))

    def authorize_subscribe(self, client: Any, topic_filter: str) -> bool:
        """Whether ``client`` may subscribe to ``topic_filter`` (default: yes). May be overridden.

        ``$`` topics are refused before this is asked, unless ``system_topics``."""
        return True

    def authorize_publish(self, client: Any, topic: str | None) -> bool:
        """Whether ``client`` may publish to ``topic`` (None: a broadcast; default: yes).
        May be overridden."""
        return True

    def authorize_send(self, client: Any, conn_ids: list[str]) -> bool:
        """Whether ``client`` may send to the clients ``conn_ids`` (``send_by_conn_id``).
        May be overridden. Default: what ``authorize_publish(client, None)`` says."""
        return self.authorize_publish(client, None)

    def on_message(self, client: Any, message: Message) -> Message | None:
        if not isinstance(message, TextMessage):
            return message
        try:
            request = json.loads(message.payload)
        except RecursionError:  # 200,000 "[" would reach the traceback: bad input instead
            self._reply(client, {"type": "error", "error": "JSON nested too deeply"})
            return None
        except ValueError:
            return message
        if not isinstance(request, dict) or "type" not in request:
            return message
        kind = request["type"]
        if self.pass_unknown and not (isinstance(kind, str) and kind in self.TYPES):
            return message
        hub: Hub | None = getattr(client.server, "hub", None)
        rid = request.get("id")
        try:
            if _deeper_than(request, self.max_depth):
                rid = None  # it may be the deep part: not sent back
                raise ValueError("JSON nested more than %d deep" % self.max_depth)
            if hub is None:
                raise HubError("this server has no hub")
            self._handle(hub, client, request, rid)
        except PayloadTooBig as exc:
            self._reply(client, {"type": "error", "id": rid, "error": exc.message})
        except (HubError, InvalidTopic, KeyError, TypeError, ValueError, PermissionError) as exc:
            text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            self._reply(client, {"type": "error", "id": rid, "error": str(text)})
        return None

    def _topic_allowed(self, topic: str) -> None:
        if topic.startswith("$") and not self.system_topics:
            raise PermissionError("not allowed: topics starting with $ are the server's (MQTT §4.7.2)")

    def _handle(self, hub: Hub, client: Any, request: dict[str, Any], rid: Any) -> None:
        kind = request["type"]
        if kind in ("subscribe", "unsubscribe"):
            topic = request.get("topic")
            if kind == "subscribe":
                if not isinstance(topic, str):
                    raise ValueError("subscribe needs a topic")
                self._topic_allowed(topic)
                if not self.authorize_subscribe(client, topic):
                    raise PermissionError("not allowed to subscribe to %r" % topic)
                hub.subscribe(client, topic)
            else:
                if topic is not None and not isinstance(topic, str):
                    raise ValueError("unsubscribe: topic must be a string")
                hub.unsubscribe(client, topic)
            self._reply(client, {"type": "ack", "id": rid})
            return
        if kind not in ("publish", "broadcast", "send_by_conn_id"):
            raise ValueError("unknown type %r" % kind)
        if "data" not in request:
            raise ValueError("%s needs data" % kind)
        out: dict[str, Any] = {"type": "message", "data": request["data"], "from": client.id}
        done = self._acker(client, rid)
        if kind == "publish":
            topic = request.get("topic")
            if not isinstance(topic, str):
                raise ValueError("publish needs a topic")
            hub._check_length(topic, validate_topic)
            self._topic_allowed(topic)
            if not self.authorize_publish(client, topic):
                raise PermissionError("not allowed to publish to %r" % topic)
            out["topic"] = topic
            hub.publish(topic, json.dumps(out), exclude=None if request.get("echo", True) else client,
                        on_done=done)
        elif kind == "broadcast":
            if not self.authorize_publish(client, None):
                raise PermissionError("not allowed to broadcast")
            hub.broadcast(json.dumps(out), on_done=done)
        elif kind == "send_by_conn_id":
            ids = request.get("conn_ids", request.get("conn_id"))
            if isinstance(ids, str):
                ids = [ids]
            if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
                raise ValueError("send_by_conn_id needs conn_id or conn_ids")
            if len(ids) > self.max_conn_ids:
                raise ValueError("send_by_conn_id: %d conn_ids, more than %d" % (len(ids), self.max_conn_ids))
            if not self.authorize_send(client, ids):
                raise PermissionError("not allowed to send")
            hub.send_to(ids, json.dumps(out), on_done=done)
        else:
            raise ValueError("unknown type %r" % kind)

    def _acker(self, client: Any, rid: Any) -> Callable[[bool], None]:
        def done(accepted: bool) -> None:
            if accepted:
                self._reply(client, {"type": "ack", "id": rid})
            else:
                self._reply(client, {"type": "error", "id": rid,
                                     "error": "broker unavailable: delivered on this server only"})
        return done

    @staticmethod
    def _reply(client: Any, reply: dict[str, Any]) -> None:
        if reply.get("id") is None:
            reply.pop("id", None)
        client.send_nowait(json.dumps(reply))


# -- helpers ----------------------------------------------------------------------------------
class _Backoff:
    """Exponential backoff with jitter, 50 ms to 5 s."""

    def __init__(self, first: float = 0.05, cap: float = 5.0) -> None:
        self.first, self.cap, self.delay = first, cap, first

    def reset(self) -> None:
        self.delay = self.first

    def wait(self, stop: threading.Event) -> bool:
        """Sleep (interrupted by ``stop``); True unless stopping."""
        stopped = stop.wait(self.delay * (0.5 + random.random() / 2))
        self.delay = min(self.cap, self.delay * 2)
        return not stopped


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON ``value`` nests arrays/objects more than ``limit`` deep (a loop, level by
    level: json.dumps recurses, and a deep value must not reach it)."""
    level, depth = [value], 1
    while level:
        if depth > limit:
            return True
        nested: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                nested.extend(v for v in item.values() if isinstance(v, (dict, list)))
            elif isinstance(item, list):
                nested.extend(v for v in item if isinstance(v, (dict, list)))
        level, depth = nested, depth + 1
    return False


def _as_message(message: MessageLike) -> Message:
    if isinstance(message, Message):
        return message
    if isinstance(message, str):
        return TextMessage(message)
    if isinstance(message, (bytes, bytearray, memoryview)):
        return BinaryMessage(bytes(message))
    raise TypeError("a message is str, bytes or a Message, not %s" % type(message).__name__)


def _ids(ids: Ids) -> set[str]:
    if ids is None:
        return set()
    if isinstance(ids, str) or hasattr(ids, "id"):
        ids = (ids,)
    return {i if isinstance(i, str) else i.id for i in ids}  # type: ignore[union-attr]


def _join_ids(ids: Iterable[str]) -> bytes:
    return ",".join(sorted(ids)).encode("utf-8")


def _split_ids(data: bytes) -> set[str]:
    return set(data.decode("utf-8").split(",")) - {""} if data else set()


def _call(fn: Callable[[bool], None], value: bool) -> None:
    try:
        fn(value)
    except Exception:
        logger.exception("hub callback %r failed", fn)
