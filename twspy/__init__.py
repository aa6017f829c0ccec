"""twspy: a WebSocket (RFC 6455) library on plain sockets, standard library only.

Layers, bottom up: :mod:`twspy.frame` and :mod:`twspy.handshake` (no I/O),
:class:`websocket` (socket + frames), :class:`Connection` (messages, control frames,
closing), :class:`Server` (a thread per client) and :func:`connect` (client).

Optional layers on top, imported by name: :mod:`twspy.filters` (servers composed from
filters, bearer auth), :mod:`twspy.hub` (topics, broadcast and send-to-id across servers;
``redis://`` brokers need the ``redis`` package) and :mod:`twspy.proxy` (a relay).
"""

from __future__ import annotations

import logging

from .client import connect, reconnect
from .connection import Connection
from .deflate_frame import DeflateFrame
from .errors import (
                     BrokerUnavailable,
                     ConnectionClosed,
                     ConnectionClosedError,
                     ConnectionClosedOK,
                     HandshakeError,
                     HubError,
                     InvalidState,
                     InvalidTopic,
                     InvalidURI,
                     MuxError,
                     NegotiationError,
                     PayloadTooBig,
                     ProtocolError,
                     ProxyError,
                     RedirectError,
                     Reject,
                     SocketClosed,
                     SubscriptionLimit,
                     WebSocketError,
)
from .extension import Extension, ExtensionCodec
from .frame import (
                     CLOSE_ABNORMAL,
                     CLOSE_BAD_GATEWAY,
                     CLOSE_GOING_AWAY,
                     CLOSE_INVALID_DATA,
                     CLOSE_MESSAGE_TOOBIG,
                     CLOSE_MISSING_EXTENSIONS,
                     CLOSE_NO_STATUS,
                     CLOSE_NOACCEPT_DTYPE,
                     CLOSE_NORMAL,
                     CLOSE_POLICY,
                     CLOSE_PROTOCOL_ERROR,
                     CLOSE_SERVICE_RESTART,
                     CLOSE_TLS_FAILURE,
                     CLOSE_TRY_AGAIN_LATER,
                     CLOSE_UNABLE,
                     OPCODE_BINARY,
                     OPCODE_CLOSE,
                     OPCODE_CONTINUATION,
                     OPCODE_PING,
                     OPCODE_PONG,
                     OPCODE_TEXT,
                     CloseCode,
                     ControlFrame,
                     Frame,
                     FrameParser,
                     Opcode,
                     contains_frame,
                     mask,
                     pop_frame,
                     read_frame,
                     speedups_enabled,
)
from .message import BinaryMessage, Message, TextMessage
from .multiplex import Multiplex, connect_multiplexed
from .permessage_deflate import DeflateMessage
from .server import Server, ServerConnection
from .websocket import websocket

__version__ = "0.1.0"

logging.getLogger("twspy").addHandler(logging.NullHandler())

__all__ = [
    "connect", "reconnect", "Connection", "Server", "ServerConnection", "websocket",
    "Frame", "ControlFrame", "FrameParser", "read_frame", "pop_frame", "contains_frame", "mask", "speedups_enabled",
    "Message", "TextMessage", "BinaryMessage", "Extension", "ExtensionCodec", "DeflateMessage", "DeflateFrame",
    "Multiplex", "connect_multiplexed",
    "WebSocketError", "HandshakeError", "NegotiationError", "RedirectError", "ProxyError", "ProtocolError",
    "PayloadTooBig",
    "ConnectionClosed", "ConnectionClosedOK", "ConnectionClosedError", "SocketClosed", "InvalidState", "InvalidURI",
    "MuxError", "Reject", "InvalidTopic", "SubscriptionLimit", "HubError", "BrokerUnavailable",
    "Opcode", "CloseCode",
    "OPCODE_CONTINUATION", "OPCODE_TEXT", "OPCODE_BINARY", "OPCODE_CLOSE", "OPCODE_PING", "OPCODE_PONG",
    "CLOSE_NORMAL", "CLOSE_GOING_AWAY", "CLOSE_PROTOCOL_ERROR", "CLOSE_NOACCEPT_DTYPE", "CLOSE_NO_STATUS",
    "CLOSE_ABNORMAL", "CLOSE_INVALID_DATA", "CLOSE_POLICY", "CLOSE_MESSAGE_TOOBIG", "CLOSE_MISSING_EXTENSIONS",
    "CLOSE_UNABLE", "CLOSE_SERVICE_RESTART", "CLOSE_TRY_AGAIN_LATER", "CLOSE_BAD_GATEWAY", "CLOSE_TLS_FAILURE",
]
