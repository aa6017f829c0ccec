"""The client end of a mux connection: :class:`MuxClient` and its :class:`Channel` objects.

``twspy.connect(url, extensions=[Multiplex()], connection_class=MuxClient)`` (or
:func:`twspy.multiplex.connect_multiplexed`) gives a :class:`MuxClient`; each
:meth:`MuxClient.open_channel` sends an AddChannelRequest and returns a :class:`Channel`, a
:class:`~twspy.connection.Connection` over a :class:`~twspy.mux_channel.ChannelSocket`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from .connection import CLOSED, DEFAULT_CLOSE_TIMEOUT, Connection
from .errors import ConnectionClosed, HandshakeError, InvalidState, NegotiationError
from .frame import (
    CLOSE_ABNORMAL,
    CLOSE_MISSING_EXTENSIONS,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    encode_close,
    valid_close_code,
)
from .handshake import Headers
from .mux_channel import ChannelSocket, PendingOpen
from .mux_frames import (
    DROP_BAD_RESPONSE,
    DROP_CHANNEL_FAILED,
    DROP_NORMAL,
    DROP_SLOT_OVERFLOW,
    DROP_UNKNOWN_RESPONSE_ENCODING,
    ENCODING_IDENTITY,
    MAX_CHANNEL_ID,
    MAX_NUMBER,
    AddChannelRequest,
    AddChannelResponse,
    ControlBlock,
    DropChannel,
    FlowControl,
    MuxError,
    NewChannelSlot,
    check_response,
    request_head,
)
from .mux_session import MuxSession, host_of, without_keepalive
from .websocket import websocket

__all__ = ["MuxClient", "Channel", "DEFAULT_OPEN_TIMEOUT"]

logger = logging.getLogger("twspy.multiplex")

DEFAULT_OPEN_TIMEOUT = 10.0      # seconds open_channel waits for a slot and the AddChannelResponse


class Channel(Connection):
    """A logical channel on the client: a :class:`~twspy.connection.Connection` over a
    :class:`ChannelSocket` (messages, fragmentation, UTF-8, ping/pong, closing handshake,
    handlers). Made by :meth:`MuxClient.open_channel` and as :attr:`MuxClient.default_channel`.
    """

    sock: ChannelSocket  # type: ignore[assignment]  # it offers the websocket's transport interface

    @property
    def channel_id(self) -> int:
        return self.sock.channel_id

    @property
    def mux(self) -> MuxClient:
        """The :class:`MuxClient` this channel belongs to."""
        return cast(MuxClient, self.sock.session)

    @property
    def path(self) -> str | None:
        return self.sock.path

    @property
    def headers(self) -> Headers | None:
        """The headers of the channel's handshake response."""
        return self.sock.headers

    @property
    def drop_code(self) -> int | None:
        """The reason code of the DropChannel that ended the channel, if one did."""
        return self.sock.drop_code

    @property
    def drop_reason(self) -> str:
        return self.sock.drop_reason

    def __repr__(self) -> str:
        return "<%s %d %s %s>" % (type(self).__name__, self.sock.channel_id, self.state, self.sock.path)


class MuxClient(MuxSession):
    """The client end of a multiplexed connection (built by :func:`connect_multiplexed`).

    Also usable as ``twspy.connect(url, extensions=[Multiplex()], connection_class=MuxClient)``.
    Raises NegotiationError (after closing with 1010) when the server did not accept exactly
    ``mux``. ``options`` are Connection options: all of them (keepalive pings included) apply
    to the physical connection; channels get the same without keepalive.

    Attributes:
        default_channel: channel 1, bound to the physical handshake (its path, subprotocol).
        physical: the physical :class:`~twspy.connection.Connection` (don't send on it).
    """

    def __init__(self, sock: websocket, channel_class: type[Connection] = Channel, **options: Any) -> None:
        codecs = list(sock.extensions)
        if len(codecs) != 1 or codecs[0].name != "mux" or not hasattr(codecs[0], "config"):
            Connection(sock, close_timeout=options.get("close_timeout", DEFAULT_CLOSE_TIMEOUT)).close(
                CLOSE_MISSING_EXTENSIONS, "mux required")
            raise NegotiationError("the server did not accept mux as the only extension (%s)" % (
                ", ".join(c.name for c in codecs) or "no extension"))
        self.channel_class = channel_class
        self.channel_options = without_keepalive(options)
        super().__init__(sock, codecs[0], options)
        self._slot_cond = threading.Condition(self.lock)
        self._slot_grants: collections.deque[list[int]] = collections.deque()  # [slots, initial quota]
        self._slot_total = 0
        self._fallback = False
        self._next_id = 2
        self._abandoned: set[int] = set()
        self._conns: dict[int, Connection] = {}
        self._host = sock.host or host_of(sock.address)
        # [twspy] §6: our receive quota for channel 1 goes out right after the 101.
        lsock = self.new_channel(1, sock.path or "/", sock.headers, sock.protocol, 0)
        self.queue_blocks(FlowControl(1, self.window).encode())
        self.default_channel = self._conns[1] = channel_class(lsock, **self.channel_options)  # type: ignore[arg-type]
        self._reader = threading.Thread(target=self._run, name="twspy-mux-reader", daemon=True)
        try:
            self.writer.start()
            self._reader.start()
        except RuntimeError:  # "can't start new thread": give the connection up, then say so
            self.end()
            self.default_channel.abort()
            self._join()
            raise

    def __repr__(self) -> str:
        return "<MuxClient %s %d channels>" % ("closed" if self.ended else "open", len(self.channel_sockets))

    @property
    def channels(self) -> list[Connection]:
        """The channels not closed yet."""
        with self.lock:
            return [c for c in self._conns.values() if c.state != CLOSED]

    def _run(self) -> None:
        try:
            self.read_loop()
        except Exception:
            logger.exception("mux: reader failed")
        finally:
            self.end()
            with self.lock:
                conns = list(self._conns.values())
                self._slot_cond.notify_all()
            for conn in conns:  # each gets its onclose once (a reading thread may beat us to it)
                conn.abort()

    def open_channel(self, path: str = "/", protocols: Sequence[str] = (), origin: str | None = None,
                     headers: None | Mapping[str, str] | Iterable[tuple[str, str]] = None,
                     timeout: float | None = DEFAULT_OPEN_TIMEOUT,
                     channel_class: type[Connection] | None = None, **options: Any) -> Connection:
        """Open a logical channel to ``path`` (AddChannelRequest) and return it once accepted.

        Args:
            path: the resource (path and query) of the channel.
            protocols: subprotocols to offer (``channel.protocol`` is the chosen one).
            origin: the Origin header (default: the physical handshake's).
            headers: extra request headers.
            timeout: seconds to wait for a channel slot and for the server's answer.
            channel_class: the Connection subclass to build (default: this client's).
            **options: ``close_timeout``, ``max_size``, ``max_queue``, ``max_outbox``
                (keepalive pings run on the physical connection, not per channel).

        Raises:
            HandshakeError (``status``) when the server refuses the channel, NegotiationError
            for an answer we can't accept, InvalidState when the server allows no more
            channels (fallback), TimeoutError, ConnectionClosed.
        """
        if not path.startswith("/"):
            raise ValueError("path must start with '/': %r" % path)
        header_list = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
        head = request_head(path, self._host, origin if origin is not None else self.ws.origin, protocols,
                             header_list)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._slot_cond:
            while True:
                if self.ended:
                    raise ConnectionClosed(self.physical.close_code or CLOSE_ABNORMAL,
                                           "the multiplexed connection closed")
                if self._fallback:
                    raise InvalidState("the server allows no more logical channels on this connection")
                if self._slot_grants:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("no channel slot from the server within %ss" % timeout)
                self._slot_cond.wait(left)
            if self._next_id > MAX_CHANNEL_ID:
                raise InvalidState("channel IDs exhausted on this connection")
            grant = self._slot_grants[0]
            grant[0] -= 1
            self._slot_total -= 1
            if not grant[0]:
                self._slot_grants.popleft()
            cid = self._next_id
            self._next_id += 1  # [twspy] §7: never reused
            lsock = ChannelSocket(self, cid, path, None, None, grant[1], self.window,
                                  options.get("close_timeout", self.close_timeout))
            pending = lsock.pending = PendingOpen()
            self.channel_sockets[cid] = lsock
        self.queue_blocks(AddChannelRequest(cid, head).encode(), FlowControl(cid, self.window).encode())
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not pending.event.wait(left):
            with self.lock:
                gave_up = not pending.event.is_set()
                if gave_up:
                    self._abandoned.add(cid)
            if gave_up:
                lsock.terminate()
                self.remove(lsock)
                self.queue_blocks(DropChannel(cid, DROP_NORMAL, "open timed out").encode())
                raise TimeoutError("no AddChannelResponse for channel %d within %ss" % (cid, timeout))
        lsock.pending = None
        if pending.error is not None:
            raise pending.error
        response = pending.response
        assert response is not None
        try:
            protocol, response_headers = check_response(response, protocols)
        except HandshakeError as exc:
            if response.rejected:
                lsock.terminate()
                self.remove(lsock)
            else:
                self.fail_channel(lsock, DROP_CHANNEL_FAILED, exc.message, CLOSE_PROTOCOL_ERROR)
            raise
        lsock.headers, lsock.protocol = response_headers, protocol
        cls = channel_class or self.channel_class
        conn = cls(lsock, **without_keepalive({**self.channel_options, **options}))  # type: ignore[arg-type]
        with self.lock:
            for done in [k for k, c in self._conns.items() if c.state == CLOSED]:
                del self._conns[done]  # keep the table to the channels still alive
            self._conns[cid] = conn
            ended = self.ended
        if ended:
            conn.abort()
        logger.info("mux channel %d open: %s", cid, path)
        return conn

    def _on_block(self, block: ControlBlock) -> None:
        if isinstance(block, AddChannelResponse):
            self._on_response(block)
        elif isinstance(block, NewChannelSlot):
            with self._slot_cond:
                if block.fallback:
                    self._fallback = True
                elif block.slots:
                    if self._slot_total + block.slots > MAX_NUMBER:
                        raise MuxError("channel slots overflow", DROP_SLOT_OVERFLOW)
                    self._slot_total += block.slots
                    self._slot_grants.append([block.slots, block.quota])
                self._slot_cond.notify_all()
        else:
            super()._on_block(block)

    def _on_response(self, block: AddChannelResponse) -> None:
        cid = block.channel_id
        with self.lock:
            lsock = self.channel_sockets.get(cid)
            pending = lsock.pending if lsock is not None else None
            if pending is None or pending.event.is_set():
                if cid in self._abandoned:
                    self._abandoned.discard(cid)  # we gave up on it and dropped it
                    return
                raise MuxError("AddChannelResponse for channel %d, which was not requested" % cid,
                               DROP_BAD_RESPONSE)
            if block.encoding != ENCODING_IDENTITY:
                raise MuxError("delta-encoded AddChannelResponse", DROP_UNKNOWN_RESPONSE_ENCODING)
            pending.response = block  # under the lock: open_channel() may be giving up right now
            pending.event.set()

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close every channel (closing handshakes, in parallel), then the physical connection."""
        encode_close(code, reason)  # ValueError before any state changes
        if not valid_close_code(code):
            raise ValueError("close code %r may not be sent (RFC 6455 §7.4)" % (code,))
        conns = self.channels
        for conn in conns:
            conn.start_close(code, reason)
        for conn in conns:
            conn.close(code, reason)  # waits for the peer's close frame (bounded)
        self.physical.close(code, reason)
        self._join()

    def abort(self) -> None:
        """Drop the physical connection at once; every channel ends with 1006."""
        self.physical.abort()
        self._join()

    def _join(self) -> None:
        if threading.current_thread() not in (self._reader, self.writer):
            for thread in (self._reader, self.writer):
                if thread.ident is not None:  # started
                    thread.join(self.close_timeout)

    def __enter__(self) -> MuxClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
