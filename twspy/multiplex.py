"""Multiplexing (``mux``): many logical WebSocket channels over one connection.

Implements the twspy profile of draft-ietf-hybi-websocket-multiplexing (the -08 wire format,
labelled -11; see ``spec/multiplex.md``). Opt-in on both ends and twspy-to-twspy: no browser
ever shipped mux.

This module is the extension (negotiation, §2) and the front door; it re-exports the public
names of the layers below it, bottom up:

* :mod:`twspy.mux_frames`: encodings, no I/O: channel IDs and "1/3/9" numbers (§3),
  encapsulated logical frames (:func:`encapsulate`, :func:`decapsulate`, §4), the five
  control blocks (§5), the drop reason codes (§7.1);
* :mod:`twspy.mux_channel`: :class:`ChannelSocket`, a logical channel seen as the transport a
  :class:`~twspy.connection.Connection` runs on, with flow control (§6);
* :mod:`twspy.mux_session`: one reader per physical connection demultiplexes into bounded
  per-channel queues, one writer sends control blocks;
* :mod:`twspy.mux_client` (:class:`MuxClient`, :class:`Channel`) and :mod:`twspy.mux_server`
  (:func:`serve_multiplexed`), the two ends.

Client::

    from twspy.multiplex import connect_multiplexed

    with connect_multiplexed("ws://127.0.0.1:8000/", timeout=5) as mux:
        mux.default_channel.send("on channel 1")      # the handshake's own channel
        chat = mux.open_channel("/chat")               # AddChannelRequest, then a Channel
        chat.send("hello")
        print(chat.recv(timeout=5))
        chat.close(1000, "bye")                        # a logical closing handshake

A :class:`Channel` is a :class:`~twspy.connection.Connection`: ``send``, ``recv``, iteration,
``send_ping``, ``close`` and the ``on*`` handlers behave as usual. Equivalently
``twspy.connect(url, extensions=[Multiplex()], connection_class=MuxClient)``.

Server: add the extension, nothing else changes. Every logical channel reaches the
:class:`~twspy.server.Server` handlers as a client of its own (``client.path`` is the path of
its AddChannelRequest), so an unmodified Server subclass serves multiplexed clients::

    server = EchoServer(("127.0.0.1", 8000), extensions=[Multiplex()])

Each channel (channel 1 included) is a thread and counts against ``max_connections``;
``max_channels`` bounds the channels of one connection.

Flow control: each side grants ``window`` bytes of send quota per channel and returns quota
as its consumer takes frames, so a channel whose reader is slow stops getting data without
blocking the others, and no queue grows beyond ``window`` bytes. A sender out of quota
blocks (until quota, the end of the channel or ``send_timeout``).

Decisions of the twspy profile (``[twspy]`` in the notes): channel 1 is the default channel,
0 carries control blocks; the client never reuses a channel ID; the server grants
``max_channels`` slots after the handshake and one more whenever an added channel ends or a
request is refused; protocol errors inside a channel drop it (DropChannel 3xxx) and the local
Connection ends with that code (1002 for RFC 6455 violations), errors in the encapsulation
fail the physical connection (DropChannel(0, 2xxx), then Close 1011).

Not implemented (deferrable per §8): per-channel extensions, idle timeout (3007),
delta-encoded AddChannelResponse (refused with 2012); the client sends identity requests only
(the server decodes identity and delta).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, cast

from .client import connect
from .connection import Connection
from .errors import NegotiationError
from .extension import Extension, ExtensionCodec, Params
from .frame import RSV1, RSV2, RSV3
from .mux_channel import MAX_FRAGMENT, ChannelSocket
from .mux_client import DEFAULT_OPEN_TIMEOUT, Channel, MuxClient
from .mux_frames import (
    DROP_ACKNOWLEDGED,
    DROP_BAD_FRAGMENTATION,
    DROP_BAD_REQUEST,
    DROP_BAD_RESPONSE,
    DROP_CHANNEL_EXISTS,
    DROP_CHANNEL_FAILED,
    DROP_CHANNEL_ID_TRUNCATED,
    DROP_FRAME_TRUNCATED,
    DROP_IDLE_TIMEOUT,
    DROP_INVALID_BLOCK,
    DROP_INVALID_ENCAPSULATION,
    DROP_NORMAL,
    DROP_PHYSICAL_FAILED,
    DROP_QUOTA_OVERFLOW,
    DROP_QUOTA_VIOLATION,
    DROP_SLOT_OVERFLOW,
    DROP_SLOT_VIOLATION,
    DROP_UNKNOWN_OPCODE,
    DROP_UNKNOWN_REQUEST_ENCODING,
    DROP_UNKNOWN_RESPONSE_ENCODING,
    ENCODING_DELTA,
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
    decapsulate,
    decode_channel_id,
    decode_number,
    encapsulate,
    encode_channel_id,
    encode_control_blocks,
    encode_number,
    parse_control_blocks,
)
from .mux_server import serve_multiplexed
from .mux_session import DEFAULT_MAX_CONTROL_QUEUE
from .server import Server
from .websocket import websocket

__all__ = [
    "Multiplex", "MultiplexCodec", "MuxClient", "Channel", "ChannelSocket", "MuxError",
    "connect_multiplexed", "serve_multiplexed",
    "AddChannelRequest", "AddChannelResponse", "FlowControl", "DropChannel", "NewChannelSlot", "ControlBlock",
    "encode_channel_id", "decode_channel_id", "encode_number", "decode_number",
    "encapsulate", "decapsulate", "encode_control_blocks", "parse_control_blocks",
    "MAX_CHANNEL_ID", "MAX_NUMBER", "DEFAULT_WINDOW", "DEFAULT_MAX_CHANNELS", "MAX_FRAGMENT",
    "DEFAULT_OPEN_TIMEOUT", "DEFAULT_MAX_CONTROL_QUEUE", "DEFAULT_REFUSAL_RATE",
    "ENCODING_IDENTITY", "ENCODING_DELTA",
    "DROP_NORMAL", "DROP_PHYSICAL_FAILED", "DROP_INVALID_ENCAPSULATION", "DROP_CHANNEL_ID_TRUNCATED",
    "DROP_FRAME_TRUNCATED", "DROP_UNKNOWN_OPCODE", "DROP_INVALID_BLOCK", "DROP_CHANNEL_EXISTS",
    "DROP_SLOT_VIOLATION", "DROP_SLOT_OVERFLOW", "DROP_BAD_REQUEST", "DROP_UNKNOWN_REQUEST_ENCODING",
    "DROP_BAD_RESPONSE", "DROP_UNKNOWN_RESPONSE_ENCODING", "DROP_CHANNEL_FAILED", "DROP_QUOTA_VIOLATION",
    "DROP_QUOTA_OVERFLOW", "DROP_IDLE_TIMEOUT", "DROP_ACKNOWLEDGED", "DROP_BAD_FRAGMENTATION",
]

logger = logging.getLogger("twspy.multiplex")

DEFAULT_WINDOW = 64 * 1024       # receive quota granted per channel (pywebsocket grants 8 KiB)
DEFAULT_MAX_CHANNELS = 64        # slots a server grants (pywebsocket: 64)
DEFAULT_REFUSAL_RATE = 32.0      # refused AddChannelRequests per second (and burst) before the reader pauses


class MultiplexCodec(ExtensionCodec):
    """The negotiated ``mux`` of one physical connection.

    It transforms nothing (the Connection layer is replaced instead: see :class:`MuxClient`
    and :meth:`serve_connection`, the hook a Server calls for it). ``quota`` is the offer's
    ``quota`` parameter (server).
    """

    name = "mux"
    rsv = 0
    per_frame = False

    def __init__(self, config: Multiplex, quota: int | None = None) -> None:
        self.config = config
        self.quota = quota

    def serve_connection(self, server: Server, ws: websocket) -> None:
        """The Server's takeover hook: serve a client that negotiated ``mux`` (see :func:`serve_multiplexed`)."""
        serve_multiplexed(server, ws)

    def __repr__(self) -> str:
        return "MultiplexCodec(%r, quota=%r)" % (self.config, self.quota)


class Multiplex(Extension):
    """The ``mux`` extension (twspy profile of §2), for clients and servers.

    The client offers exactly ``mux``; the server accepts it only as the only extension of
    the physical connection. Negotiation claims all three RSV bits (``rsv``) so that
    :func:`~twspy.extension.negotiate_server` declines mux next to permessage-deflate or
    deflate-frame, and a client refuses a server that accepts both; the codec uses no RSV bit,
    so physical frames carrying one still fail with 1002.

    Args:
        window: receive quota granted per channel, in bytes: the most one channel's peer may
            have in flight, and so the largest per-channel queue.
        max_channels: server: channels a client may add at once (NewChannelSlot); 0 tells
            clients not to add any (fallback).
        send_timeout: seconds a data frame waits for send quota before the channel is given up
            (None: as long as the channel lives).
        max_control_queue: bytes of control blocks (FlowControl, answers, drops) queued for a
            peer that does not read them before this end stops reading from it.
        refusal_rate: server: refused AddChannelRequests a connection may cause per second
            (and in a burst) before its reader pauses; 0: no limit.

    The total of channels a server runs is bounded by its ``max_connections``: each channel
    counts as a client (channel 1 included).
    """

    name = "mux"
    rsv = RSV1 | RSV2 | RSV3

    def __init__(self, window: int = DEFAULT_WINDOW, max_channels: int = DEFAULT_MAX_CHANNELS,
                 send_timeout: float | None = None, *, max_control_queue: int = DEFAULT_MAX_CONTROL_QUEUE,
                 refusal_rate: float = DEFAULT_REFUSAL_RATE) -> None:
        if not 1 <= window <= MAX_NUMBER:
            raise ValueError("window must be a positive number of bytes, not %r" % (window,))
        if max_channels < 0:
            raise ValueError("max_channels must be >= 0, not %r" % (max_channels,))
        if max_control_queue < 1:
            raise ValueError("max_control_queue must be a positive number of bytes, not %r" % (max_control_queue,))
        if refusal_rate < 0:
            raise ValueError("refusal_rate must be >= 0, not %r" % (refusal_rate,))
        self.window = window
        self.max_channels = max_channels
        self.send_timeout = send_timeout
        self.max_control_queue = max_control_queue
        self.refusal_rate = refusal_rate

    def offers(self) -> list[tuple[str, Params]]:
        """The twspy client offers ``mux`` with no parameters."""
        return [(self.name, [])]

    def accept_offer(self, name: str, params: Params) -> tuple[Params, ExtensionCodec] | None:
        """Accept ``mux``; a valid ``quota=N`` (-08) is the initial send quota on channel 1.

        An invalid ``quota`` is ignored; other parameters decline the offer.
        """
        quota = None
        for pname, value in params:
            if pname != "quota":
                logger.debug("declining mux offer with parameter %s", pname)
                return None
            if value is not None and value.isdigit() and value.isascii() and int(value) < 1 << 32:
                quota = int(value)
        return [], MultiplexCodec(self, quota)

    def accept_response(self, name: str, params: Params, offers: list[tuple[str, Params]]) -> ExtensionCodec:
        """A twspy server answers a bare ``mux``."""
        if params:
            raise NegotiationError("unexpected parameters in the mux response: %r" % (params,))
        return MultiplexCodec(self)

    def __repr__(self) -> str:
        return "Multiplex(window=%r, max_channels=%r, send_timeout=%r, max_control_queue=%r, refusal_rate=%r)" % (
            self.window, self.max_channels, self.send_timeout, self.max_control_queue, self.refusal_rate)


def connect_multiplexed(url: str, multiplex: Multiplex | None = None, channel_class: type[Connection] = Channel,
                        **kwargs: Any) -> MuxClient:
    """Connect to ``url`` offering only ``mux`` and return the :class:`MuxClient`.

    ``multiplex`` configures the window; ``kwargs`` are those of :func:`twspy.connect`
    (``protocols``, ``origin``, ``headers``, ``ssl``, ``timeout``, ``close_timeout``, ...).
    """
    if "extensions" in kwargs:
        raise TypeError("connect_multiplexed offers mux only; configure it with multiplex=Multiplex(...)")
    factory = functools.partial(MuxClient, channel_class=channel_class)
    mux = connect(url, extensions=[multiplex or Multiplex()], connection_class=factory,  # type: ignore[arg-type]
                  **kwargs)
    return cast(MuxClient, mux)
