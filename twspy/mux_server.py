"""The server end of a mux connection: every logical channel becomes a client of the Server.

A :class:`~twspy.server.Server` hands a socket that negotiated ``mux`` to the codec's
``serve_connection`` hook, which runs :func:`serve_multiplexed` in the connection's thread.
Each channel, the default channel 1 included, is a ``server.connection_class`` client served
by a thread of its own; it counts against ``server.max_connections`` like a TCP client
(:meth:`~twspy.server.Server.reserve_connection`), and an AddChannelRequest beyond it is
answered 503. So a server's threads stay below about twice ``max_connections`` (a channel
each, plus a reader and a control writer per TCP connection) however clients spread their
channels.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .connection import DEFAULT_CLOSE_TIMEOUT, Connection
from .errors import HandshakeError
from .frame import CLOSE_TRY_AGAIN_LATER
from .handshake import Headers, Request, make_key, parse_request, server_handshake
from .mux_channel import ChannelSocket
from .mux_frames import (
    DROP_CHANNEL_EXISTS,
    DROP_PHYSICAL_FAILED,
    DROP_SLOT_VIOLATION,
    ENCODING_DELTA,
    ENCODING_IDENTITY,
    AddChannelRequest,
    AddChannelResponse,
    ControlBlock,
    FlowControl,
    MuxError,
    NewChannelSlot,
    accept_head,
    apply_delta,
    status_head,
)
from .mux_session import MuxSession, RateLimitedLog, host_of, without_keepalive
from .server import Server
from .websocket import websocket

__all__ = ["ServerSession", "serve_multiplexed"]

logger = logging.getLogger("twspy.multiplex")

_STOP_CHECK = 0.5                # how often an idle session looks for Server.shutdown()


class ServerSession(MuxSession):
    """The server end: every logical channel becomes a ``server.connection_class`` client.

    Refused AddChannelRequests are rate-limited (``Multiplex.refusal_rate`` per second after a
    burst of as many): beyond that the reader pauses, so a client that keeps asking for
    channels it cannot have is slowed down by TCP instead of costing CPU and log lines.
    """

    server_side = True

    def __init__(self, server: Server, ws: websocket, codec: Any) -> None:
        super().__init__(ws, codec, server.connection_options)
        self.server = server
        self._slots = self.config.max_channels
        self._threads: set[threading.Thread] = set()
        self._conns: dict[int, Connection] = {}
        self._delta_base = ws.headers or Headers()
        self._close_deadline: float | None = None
        self._refusal_rate = float(getattr(self.config, "refusal_rate", 0) or 0)
        self._refusal_tokens = self._refusal_rate
        self._refusal_time = time.monotonic()
        self._refusal_log = RateLimitedLog(logger)
        self._thread_log = RateLimitedLog(logger, logging.WARNING)
        self.refusal_pauses = 0  # times the reader waited for the refusal rate

    def run(self) -> None:
        ws = self.ws
        logger.info("%s: multiplexed connection open", host_of(ws.address))
        try:
            if not self._start_thread(self.writer):
                self.physical.close(CLOSE_TRY_AGAIN_LATER, "server overloaded")
                return
            if len(ws.extensions) != 1:
                self.fail_physical(DROP_PHYSICAL_FAILED, "mux must be the only extension")
                return
            if not self.server.reserve_connection():  # channel 1 counts like any client
                self.physical.close(*(self.server.stopping or (CLOSE_TRY_AGAIN_LATER, "too many connections")))
                return
            # [twspy] §6: slots and our receive quota for channel 1 right after the 101.
            slots = (NewChannelSlot(self._slots, self.window) if self._slots else NewChannelSlot(0, 0, True))
            self.queue_blocks(slots.encode(), FlowControl(1, self.window).encode())
            lsock = self.new_channel(1, ws.path or "/", ws.headers, ws.protocol, self.codec.quota or 0)
            lsock.request = ws.request
            if not self._start(lsock, None):
                self.server.release_connection()
                self.physical.close(CLOSE_TRY_AGAIN_LATER, "server overloaded")
                return
            self.read_loop(_STOP_CHECK)
        finally:
            self.end()
            while True:
                with self.lock:
                    threads = list(self._threads)
                if not threads:
                    break
                for thread in threads:
                    thread.join()
            if self.writer.ident is not None:
                self.writer.join()
            logger.info("%s: multiplexed connection closed", host_of(ws.address))

    def _start_thread(self, thread: threading.Thread) -> bool:
        """``thread.start()``; False when the system allows no more threads (pid limits, TasksMax)."""
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread"
            self._thread_log.log("%s: mux: %s", host_of(self.ws.address), exc)
            return False
        return True

    def _start(self, lsock: ChannelSocket, response: bytes | None) -> bool:
        """Serve ``lsock`` in a thread of its own, which first queues ``response`` (the
        AddChannelResponse: before the channel's first frame); False if no thread could start."""
        thread = threading.Thread(target=self._serve_channel, args=(lsock, response), daemon=True,
                                  name="twspy-mux-%s-ch%d" % (host_of(self.ws.address), lsock.channel_id))
        with self.lock:
            self._threads.add(thread)
        if self._start_thread(thread):
            return True
        with self.lock:
            self._threads.discard(thread)
        lsock.terminate()
        return False

    def _serve_channel(self, lsock: ChannelSocket, response: bytes | None) -> None:
        server = self.server
        client: Any = None
        try:
            if response is not None:
                self.queue_blocks(response)
            client = server.connection_class(server, lsock,  # type: ignore[arg-type]
                                             **without_keepalive(server.connection_options))
            with self.lock:
                self._conns[lsock.channel_id] = client
            logger.info("%r: open (mux channel %d)", client, lsock.channel_id)
            stopping = server.stopping
            if stopping is not None:
                client.start_close(*stopping)
            client.receive_forever()
        except Exception:
            logger.exception("mux channel %d: unexpected error", lsock.channel_id)
            if client is not None:
                client.abort()
        finally:
            lsock.abort()
            if client is not None:
                logger.info("%r: closed %s %s", client, client.close_code, client.close_reason)
            server.release_connection(client)
            with self.lock:
                self._conns.pop(lsock.channel_id, None)
                self._threads.discard(threading.current_thread())
                idle = not self.channel_sockets
            if idle and server.stopping is not None:
                self._begin_close()

    def _begin_close(self) -> None:
        """Server shutdown: once its channels are done, close the physical connection too."""
        stopping = self.server.stopping
        with self.lock:
            if self._close_deadline is not None or self.ended or stopping is None:
                return
            self._close_deadline = time.monotonic() + (self.close_timeout or DEFAULT_CLOSE_TIMEOUT)
        self.physical.start_close(*stopping)

    def _idle(self) -> None:
        # Server.shutdown() reaches channels through server.clients, not this session: look.
        stopping = self.server.stopping
        if self._close_deadline is not None and time.monotonic() > self._close_deadline:
            self.physical.abort()
        elif stopping is not None:
            with self.lock:
                conns = list(self._conns.values())
                idle = not self.channel_sockets
            for conn in conns:
                conn.start_close(*stopping)
            if idle:
                self._begin_close()

    def _channel_removed(self, lsock: ChannelSocket) -> None:
        if lsock.channel_id >= 2:
            self._grant_slot()

    def _grant_slot(self) -> None:
        with self.lock:
            if self.ended:
                return
            self._slots += 1
        self.queue_blocks(NewChannelSlot(1, self.window).encode())

    def _on_block(self, block: ControlBlock) -> None:
        if isinstance(block, AddChannelRequest):
            self._on_request(block)
        else:
            super()._on_block(block)

    def _on_request(self, block: AddChannelRequest) -> None:
        cid = block.channel_id
        with self.lock:
            if cid < 2 or cid in self.channel_sockets:
                raise MuxError("AddChannelRequest for channel %d, which exists" % cid, DROP_CHANNEL_EXISTS)
            if self._slots <= 0:
                raise MuxError("AddChannelRequest without a channel slot", DROP_SLOT_VIOLATION)
            self._slots -= 1
        ws = self.ws
        try:
            if len(block.handshake) > ws.max_header_size:
                raise HandshakeError("handshake of %d bytes" % len(block.handshake), 431)
            request = parse_request(block.handshake)
            if block.encoding == ENCODING_DELTA:
                request = Request(request.method, request.path, request.version,
                                  apply_delta(self._delta_base, request.headers))
            # The handshake omits what mux implies (§5.1): validate it as a full upgrade request.
            implied = ("upgrade", "sec-websocket-key", "sec-websocket-version")
            check = Headers([(k, v) for k, v in request.headers.items() if k.lower() not in implied])
            check.add("Upgrade", "websocket")
            check.add("Sec-WebSocket-Key", make_key())
            check.add("Sec-WebSocket-Version", "13")
            _, protocol, _ = server_handshake(Request(request.method, request.path, request.version, check),
                                              ws.protocols, (), ws.trusted_origins, ws.locations,
                                              ws.select_subprotocol)
            if self.server.stopping is not None:
                raise HandshakeError("shutting down", 503)
            # The server's request hooks (process_request, filters' on_connect) see every channel.
            request = Request(request.method, request.path, request.version, request.headers, ws.address)
            answer = ws.answer_request(request)
            if answer is not None:
                self._refuse(cid, answer[1], "answered %d by process_request" % answer[0])
                return
            if not self.server.reserve_connection():
                raise HandshakeError("too many connections (max_connections %d)" % self.server.max_connections, 503)
        except HandshakeError as exc:
            self._refuse(cid, status_head(exc.status or 400), exc)
            return
        if block.encoding == ENCODING_IDENTITY:
            self._delta_base = request.headers
        lsock = self.new_channel(cid, request.path, request.headers, protocol, 0)
        lsock.request = request
        if not self._start(lsock, AddChannelResponse(cid, accept_head(protocol)).encode()):
            self.server.release_connection()
            self.queue_blocks(AddChannelResponse(cid, status_head(503), rejected=True).encode())
            self.remove(lsock)  # its slot goes back
            self._throttle_refusals()

    def _refuse(self, cid: int, head: bytes, why: Any) -> None:
        """Answer an AddChannelRequest with a refusal and give its slot back, rate-limited."""
        self._refusal_log.log("%s: mux channel %d refused: %s", host_of(self.ws.address), cid, why)
        self.queue_blocks(AddChannelResponse(cid, head, rejected=True).encode())
        self._grant_slot()
        self._throttle_refusals()

    def _throttle_refusals(self) -> None:
        """Token bucket: past ``refusal_rate`` refusals a second (after a burst of as many), the
        reader waits for the next token before it reads on."""
        rate = self._refusal_rate
        if rate <= 0:
            return
        now = time.monotonic()
        tokens = min(rate, self._refusal_tokens + (now - self._refusal_time) * rate) - 1
        self._refusal_time = now
        self._refusal_tokens = tokens
        if tokens < 0:
            self.refusal_pauses += 1
            self.gone.wait(-tokens / rate)


def serve_multiplexed(server: Server, ws: websocket) -> None:
    """Serve a client that negotiated ``mux`` (called by Server in the client's thread).

    Each logical channel, the default channel 1 included, becomes a
    ``server.connection_class`` client in ``server.clients``, served by a thread of its own
    that runs ``receive_forever``. Returns when the physical connection and every channel
    have ended.
    """
    codec = next(c for c in ws.extensions if c.name == "mux")
    ServerSession(server, ws, codec).run()
