"""The mux session: one physical connection and the logical channels it carries.

:class:`MuxSession` is what both ends share: the channel table, one reader that
demultiplexes physical messages into the channels' queues (:mod:`twspy.mux_channel`), and
one writer thread for control blocks, so the reader never waits behind a full TCP buffer.
The client end is :class:`~twspy.mux_client.MuxClient`, the server end
:class:`~twspy.mux_server.ServerSession`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from .connection import DEFAULT_CLOSE_TIMEOUT, Connection
from .errors import ConnectionClosed, ProtocolError
from .frame import CLOSE_UNABLE, OPCODE_BINARY, Frame, short_reason
from .handshake import Headers
from .mux_channel import ChannelSocket
from .mux_frames import (
    DROP_ACKNOWLEDGED,
    DROP_INVALID_BLOCK,
    DROP_INVALID_ENCAPSULATION,
    DROP_QUOTA_OVERFLOW,
    ControlBlock,
    DropChannel,
    FlowControl,
    MuxError,
    decapsulate,
    encode_control_blocks,
)
from .websocket import websocket

__all__ = ["MuxSession", "RateLimitedLog", "DEFAULT_MAX_CONTROL_QUEUE", "without_keepalive", "host_of"]

logger = logging.getLogger("twspy.multiplex")

DEFAULT_MAX_CONTROL_QUEUE = 64 * 1024  # bytes of control blocks queued before the reader pauses
_MAX_CONTROL_MESSAGE = 32 * 1024  # control blocks are batched into channel-0 messages up to this size


class MuxSession:
    """What both roles share: the channel table, the reader's dispatch, control output.

    Control blocks (FlowControl, AddChannelResponse, DropChannel, ...) wait for the writer
    thread in a queue bounded by ``Multiplex.max_control_queue`` bytes: when a peer that does
    not read makes us answer faster than TCP takes the answers, the reader stops reading (the
    peer is held back by TCP) until the writer drains the queue or the write times out.

    Shared with the two roles (:class:`~twspy.mux_client.MuxClient`,
    :class:`~twspy.mux_server.ServerSession`): ``lock`` guards ``channel_sockets`` (id ->
    :class:`~twspy.mux_channel.ChannelSocket`) and ``ended``; ``writer`` is the control
    writer thread, ``gone`` is set once the session has ended; :meth:`new_channel`,
    :meth:`read_loop`, :meth:`end`, :meth:`fail_channel` and :meth:`fail_physical` are
    theirs to call.
    """

    server_side = False

    def __init__(self, ws: websocket, codec: Any, options: Mapping[str, Any]) -> None:
        self.ws = ws
        self.codec = codec
        self.config = codec.config
        self.window = codec.config.window
        self.physical = Connection(ws, **options)
        self.close_timeout: float | None = options.get("close_timeout", DEFAULT_CLOSE_TIMEOUT)
        self.lock = threading.Lock()
        self.channel_sockets: dict[int, ChannelSocket] = {}
        self.ended = False
        self._ctl_cond = threading.Condition()
        self._ctl_blocks: list[bytes] = []
        self._ctl_bytes = 0         # size of _ctl_blocks
        self._ctl_limit = int(getattr(self.config, "max_control_queue", 0) or DEFAULT_MAX_CONTROL_QUEUE)
        self._write_failed = False
        self.gone = threading.Event()  # set once the session has ended
        self.control_pauses = 0     # times the reader stopped for a full control queue
        self.writer = threading.Thread(target=self._write_loop, name="twspy-mux-writer", daemon=True)
        self._debug = logger.isEnabledFor(logging.DEBUG)

    @property
    def closed(self) -> bool:
        """Whether the physical connection has ended."""
        return self.ended

    @property
    def address(self) -> Any:
        return self.ws.address

    @property
    def control_queue_bytes(self) -> int:
        """Bytes of control blocks waiting for the writer (at most about ``max_control_queue``)."""
        return self._ctl_bytes

    def new_channel(self, channel_id: int, path: str | None, headers: Headers | None,
                     protocol: str | None, send_quota: int) -> ChannelSocket:
        lsock = ChannelSocket(self, channel_id, path, headers, protocol, send_quota, self.window, self.close_timeout)
        with self.lock:
            if self.ended:
                lsock.terminate()
            else:
                self.channel_sockets[channel_id] = lsock
        return lsock

    # -- output -----------------------------------------------------------------------------
    def queue_blocks(self, *blocks: bytes) -> None:
        """Hand control blocks to the writer thread; the reader never waits for the send lock
        (a writer stuck on a full TCP buffer would otherwise stop both ends reading)."""
        with self._ctl_cond:
            if self.ended:
                return
            self._ctl_blocks.extend(blocks)
            self._ctl_bytes += sum(map(len, blocks))
            self._ctl_cond.notify_all()

    def _wait_for_room(self, poll: float | None) -> None:
        """The reader, before it takes more input: wait while the control queue is full."""
        paused = False
        while True:
            with self._ctl_cond:
                if self._ctl_bytes <= self._ctl_limit or self.ended or self._write_failed:
                    return
                if not paused:
                    paused = True
                    self.control_pauses += 1
                self._ctl_cond.wait(poll)
                full = self._ctl_bytes > self._ctl_limit and not (self.ended or self._write_failed)
            if full:
                self._idle()

    def _flush_control(self) -> None:
        """Send the queued control blocks; the caller holds the physical send lock."""
        with self._ctl_cond:
            if not self._ctl_blocks:
                return
            blocks, self._ctl_blocks = self._ctl_blocks, []
            self._ctl_bytes = 0
            self._ctl_cond.notify_all()  # a reader waiting for room
        if self.physical.close_sent:
            return
        batch: list[bytes] = [b"\x00"]
        size = 1
        for block in blocks:
            if size + len(block) > _MAX_CONTROL_MESSAGE and size > 1:
                self.ws.send_raw(OPCODE_BINARY, b"".join(batch))
                batch, size = [b"\x00"], 1
            batch.append(block)
            size += len(block)
        self.ws.send_raw(OPCODE_BINARY, b"".join(batch))

    def _write_loop(self) -> None:
        while True:
            with self._ctl_cond:
                while not self._ctl_blocks and not self.ended:
                    self._ctl_cond.wait()
                if self.ended:
                    return
            try:
                with self.ws.send_lock:
                    self._flush_control()
            except OSError as exc:
                logger.debug("mux: sending control blocks failed: %s", exc)
                self.ws.abort()  # the reader notices and ends the session
                with self._ctl_cond:
                    self._write_failed = True
                    self._ctl_cond.notify_all()
                return

    def send_frame(self, lsock: ChannelSocket, header: bytes, payload: bytes) -> None:
        """Send one encapsulated logical frame after the pending control blocks (so an
        AddChannelResponse always precedes the channel's first frame)."""
        data = b"".join((lsock.prefix, header, payload))
        with self.ws.send_lock:
            if self.ended or self.physical.close_sent:
                raise ConnectionResetError("the multiplexed connection is closed")
            self._flush_control()
            self.ws.send_raw(OPCODE_BINARY, data)

    # -- input ------------------------------------------------------------------------------
    def read_loop(self, poll: float | None = None) -> None:
        """Read physical messages and dispatch them until the physical connection closes."""
        physical = self.physical
        while True:
            self._wait_for_room(poll)
            try:
                message = physical.recv(poll)
            except TimeoutError:
                self._idle()
                continue
            except ConnectionClosed:
                return
            try:
                if not isinstance(message.payload, bytes):
                    raise MuxError("text message on the physical connection", DROP_INVALID_ENCAPSULATION)
                cid, item = decapsulate(message.payload)
                if cid == 0:
                    for block in item:  # type: ignore[union-attr]
                        self._wait_for_room(poll)  # one message may hold thousands of requests
                        if self._debug:
                            logger.debug("mux < %r", block)
                        self._on_block(block)
                else:
                    self._on_frame(cid, item)  # type: ignore[arg-type]
            except MuxError as exc:
                self.fail_physical(exc.code, exc.message)

    def _idle(self) -> None:
        """Called when a polling read times out."""

    def _on_frame(self, cid: int, frame: Frame) -> None:
        with self.lock:
            lsock = self.channel_sockets.get(cid)
        if lsock is None:
            return  # §4: not open (any more): a race after DropChannel, ignored
        problem = lsock.deliver(frame)
        if problem is not None:
            self.fail_channel(lsock, *problem)

    def _on_block(self, block: ControlBlock) -> None:
        if isinstance(block, FlowControl):
            with self.lock:
                lsock = self.channel_sockets.get(block.channel_id)
            if lsock is not None and not lsock.add_quota(block.quota):
                self.fail_channel(lsock, DROP_QUOTA_OVERFLOW, "send quota overflow", DROP_QUOTA_OVERFLOW)
        elif isinstance(block, DropChannel):
            self._on_drop(block)
        else:
            raise MuxError("%s received by the %s" % (type(block).__name__, "server" if self.server_side else
                                                      "client"), DROP_INVALID_BLOCK)

    def _on_drop(self, block: DropChannel) -> None:
        cid = block.channel_id
        if cid == 0:
            _peer_failures.log("mux: the peer failed the physical connection: %s %s", block.code, block.message)
            return
        with self.lock:
            lsock = self.channel_sockets.get(cid)
        if lsock is None:
            return  # unknown, or an acknowledgement of our own drop
        logger.info("mux channel %d dropped by the peer: %s %s", cid, block.code, block.message)
        lsock.terminate(discard=False, drop_code=block.code, drop_reason=block.message)
        self.remove(lsock)
        if block.code != DROP_ACKNOWLEDGED:  # never acknowledge an acknowledgement
            self.queue_blocks(DropChannel(cid, DROP_ACKNOWLEDGED, "DropChannel acknowledged").encode())

    def remove(self, lsock: ChannelSocket) -> bool:
        """Take an ended channel out of the table; False if it was not there."""
        with self.lock:
            if self.channel_sockets.get(lsock.channel_id) is not lsock:
                return False
            del self.channel_sockets[lsock.channel_id]
        self._channel_removed(lsock)
        return True

    def _channel_removed(self, lsock: ChannelSocket) -> None:
        """A channel left the table (a server grants a new slot for it)."""

    def fail_channel(self, lsock: ChannelSocket, code: int, message: str, local_code: int) -> None:
        """Fail the logical channel (§7): DropChannel with ``code``; locally a ProtocolError."""
        logger.info("mux channel %d failed: %s (%d)", lsock.channel_id, message, code)
        if lsock.terminate(error=ProtocolError(message, local_code), drop_code=code, drop_reason=message):
            self.remove(lsock)
            self.queue_blocks(DropChannel(lsock.channel_id, code, message).encode())

    def fail_physical(self, code: int, message: str) -> None:
        """Fail the physical connection (§7): DropChannel(0, code), then Close 1011."""
        logger.info("mux: failing the physical connection: %s (%d)", message, code)
        try:
            with self.ws.send_lock:
                if not self.physical.close_sent:
                    self.ws.send_raw(OPCODE_BINARY, encode_control_blocks(DropChannel(0, code, message[:100])))
        except OSError:
            pass
        self.physical.close(CLOSE_UNABLE, short_reason("mux: %s (%d)" % (message, code)))

    def end(self) -> None:
        """The physical connection is over: every channel ends (1006)."""
        with self.lock:
            if self.ended:
                return
            self.ended = True
            channels = list(self.channel_sockets.values())
            self.channel_sockets.clear()
        with self._ctl_cond:
            self._ctl_blocks = []
            self._ctl_bytes = 0
            self._ctl_cond.notify_all()
        self.gone.set()
        for lsock in channels:
            lsock.terminate()
        self.physical.abort()


def without_keepalive(options: Mapping[str, Any]) -> dict[str, Any]:
    """Connection options for a channel: keepalive belongs to the physical connection (a ping
    waiting for send quota would hold up the process-wide watchdog thread)."""
    return {**options, "ping_interval": None, "ping_timeout": None}


def host_of(address: Any) -> str:
    """``host:port`` (``[v6]:port``) of a socket address, for logs and the Host header."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return "[%s]:%s" % (host, address[1]) if ":" in host else "%s:%s" % (host, address[1])
    return "localhost"


class RateLimitedLog:
    """Log lines a peer can trigger at will: at most one per ``interval`` seconds, with the
    number of lines left out since the last one."""

    def __init__(self, log: logging.Logger, level: int = logging.INFO, interval: float = 1.0) -> None:
        self.logger = log
        self.level = level
        self.interval = interval
        self.suppressed = 0
        self._next = 0.0
        self.lock = threading.Lock()

    def log(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self.lock:
            if now < self._next:
                self.suppressed += 1
                return
            self._next = now + self.interval
            suppressed, self.suppressed = self.suppressed, 0
        if suppressed:
            message += " (%d similar lines left out)" % suppressed
        self.logger.log(self.level, message, *args)


_peer_failures = RateLimitedLog(logger, logging.WARNING)  # any peer can send DropChannel(0)
