"""Mux encodings, no I/O: the wire format of the multiplexing extension (``mux``).

Channel IDs and "1/3/9" numbers (§3), encapsulated logical frames (:func:`encapsulate`,
:func:`decapsulate`, §4), the five multiplex control blocks and their encode/parse (§5), the
drop reason codes (§7.1) and the encapsulated handshake heads (§5.1, §5.2), after the twspy
profile of draft-ietf-hybi-websocket-multiplexing (see ``spec/multiplex.md``). Bytes in,
objects out and back: the codec, the channels and the sessions are in :mod:`twspy.multiplex`,
which re-exports every public name defined here.
"""

from __future__ import annotations

import http
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Union

from .errors import HandshakeError, MuxError, NegotiationError
from .frame import RSV1, RSV2, RSV3, Frame
from .handshake import Headers, chosen_subprotocol, has_token, parse_response

__all__ = [
    "MuxError",
    "AddChannelRequest", "AddChannelResponse", "FlowControl", "DropChannel", "NewChannelSlot", "ControlBlock",
    "encode_channel_id", "decode_channel_id", "encode_number", "decode_number",
    "encapsulate", "decapsulate", "encode_control_blocks", "parse_control_blocks",
    "MAX_CHANNEL_ID", "MAX_NUMBER",
    "ENCODING_IDENTITY", "ENCODING_DELTA",
    "DROP_NORMAL", "DROP_PHYSICAL_FAILED", "DROP_INVALID_ENCAPSULATION", "DROP_CHANNEL_ID_TRUNCATED",
    "DROP_FRAME_TRUNCATED", "DROP_UNKNOWN_OPCODE", "DROP_INVALID_BLOCK", "DROP_CHANNEL_EXISTS",
    "DROP_SLOT_VIOLATION", "DROP_SLOT_OVERFLOW", "DROP_BAD_REQUEST", "DROP_UNKNOWN_REQUEST_ENCODING",
    "DROP_BAD_RESPONSE", "DROP_UNKNOWN_RESPONSE_ENCODING", "DROP_CHANNEL_FAILED", "DROP_QUOTA_VIOLATION",
    "DROP_QUOTA_OVERFLOW", "DROP_IDLE_TIMEOUT", "DROP_ACKNOWLEDGED", "DROP_BAD_FRAGMENTATION",
]

MAX_CHANNEL_ID = (1 << 29) - 1   # §3.1: 29 value bits
MAX_NUMBER = (1 << 63) - 1       # §3.2: the 8-byte form has its top bit clear

ENCODING_IDENTITY = 0
ENCODING_DELTA = 1

# §7.1 drop reason codes
DROP_NORMAL = 1000
DROP_PHYSICAL_FAILED = 2000
DROP_INVALID_ENCAPSULATION = 2001
DROP_CHANNEL_ID_TRUNCATED = 2002
DROP_FRAME_TRUNCATED = 2003
DROP_UNKNOWN_OPCODE = 2004
DROP_INVALID_BLOCK = 2005
DROP_CHANNEL_EXISTS = 2006
DROP_SLOT_VIOLATION = 2007
DROP_SLOT_OVERFLOW = 2008
DROP_BAD_REQUEST = 2009
DROP_UNKNOWN_REQUEST_ENCODING = 2010
DROP_BAD_RESPONSE = 2011
DROP_UNKNOWN_RESPONSE_ENCODING = 2012
DROP_CHANNEL_FAILED = 3000
DROP_QUOTA_VIOLATION = 3005
DROP_QUOTA_OVERFLOW = 3006
DROP_IDLE_TIMEOUT = 3007
DROP_ACKNOWLEDGED = 3008
DROP_BAD_FRAGMENTATION = 3009

KNOWN_OPCODES = frozenset((0x0, 0x1, 0x2, 0x8, 0x9, 0xA))


# -- encodings (§3), no I/O ---------------------------------------------------------------------

def encode_channel_id(channel_id: int) -> bytes:
    """Encode a channel ID in its minimal 1-4 byte form (§3.1)."""
    if not 0 <= channel_id <= MAX_CHANNEL_ID:
        raise ValueError("channel ID %r out of range 0-%d" % (channel_id, MAX_CHANNEL_ID))
    if channel_id < 0x80:
        return bytes((channel_id,))
    if channel_id < 1 << 14:
        return (0x8000 | channel_id).to_bytes(2, "big")
    if channel_id < 1 << 21:
        return (0xC00000 | channel_id).to_bytes(3, "big")
    return (0xE0000000 | channel_id).to_bytes(4, "big")


_ID_FORMS = ((0x3F, 2, 1 << 7), (0x1F, 3, 1 << 14), (0x1F, 4, 1 << 21))  # (value bits, size, minimum)


def decode_channel_id(data: bytes | bytearray | memoryview, pos: int = 0,
                      code: int = DROP_CHANNEL_ID_TRUNCATED) -> tuple[int, int]:
    """Decode the channel ID at ``data[pos]``: ``(channel ID, position after it)``.

    Raises MuxError with ``code`` (2002 in a message header, 2005 inside a control block) when
    it is truncated or not minimally encoded ([twspy] §3.1).
    """
    if pos >= len(data):
        raise MuxError("channel ID truncated", code)
    b0 = data[pos]
    if b0 < 0x80:
        return b0, pos + 1
    bits, size, minimum = _ID_FORMS[0 if b0 < 0xC0 else 1 if b0 < 0xE0 else 2]
    if pos + size > len(data):
        raise MuxError("channel ID truncated", code)
    value = b0 & bits
    for i in range(1, size):
        value = value << 8 | data[pos + i]
    if value < minimum:
        raise MuxError("channel ID %d not minimally encoded" % value, code)
    return value, pos + size


def encode_number(value: int) -> bytes:
    """Encode a size, quota or slot count in the "1/3/9" form (§3.2)."""
    if not 0 <= value <= MAX_NUMBER:
        raise ValueError("number %r out of range 0-%d" % (value, MAX_NUMBER))
    if value < 126:
        return bytes((value,))
    if value < 1 << 16:
        return b"\x7e" + value.to_bytes(2, "big")
    return b"\x7f" + value.to_bytes(8, "big")


def decode_number(data: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode the number at ``data[pos]``: ``(value, position after it)``; MuxError 2005 if invalid."""
    if pos >= len(data):
        raise MuxError("number truncated", DROP_INVALID_BLOCK)
    b0 = data[pos]
    if b0 & 0x80:
        raise MuxError("number with its padding bit set", DROP_INVALID_BLOCK)
    if b0 < 126:
        return b0, pos + 1
    size, minimum = (2, 126) if b0 == 126 else (8, 1 << 16)
    if pos + 1 + size > len(data):
        raise MuxError("number truncated", DROP_INVALID_BLOCK)
    value = int.from_bytes(data[pos + 1:pos + 1 + size], "big")
    if value < minimum or value > MAX_NUMBER:
        raise MuxError("number %d not minimally encoded or too large" % value, DROP_INVALID_BLOCK)
    return value, pos + 1 + size


# -- control blocks (§5) -----------------------------------------------------------------------

def _check_encoding(encoding: int) -> None:
    if encoding not in (ENCODING_IDENTITY, ENCODING_DELTA):
        raise ValueError("handshake encoding must be 0 (identity) or 1 (delta), not %r" % (encoding,))


@dataclass(frozen=True)
class AddChannelRequest:
    """Client → server: open ``channel_id`` with an encapsulated handshake (§5.1)."""

    channel_id: int
    handshake: bytes
    encoding: int = ENCODING_IDENTITY
    opcode: ClassVar[int] = 0

    def encode(self) -> bytes:
        _check_encoding(self.encoding)
        return (bytes((self.encoding,)) + encode_channel_id(self.channel_id) + encode_number(len(self.handshake))
                + self.handshake)


@dataclass(frozen=True)
class AddChannelResponse:
    """Server → client: accept (101) or reject (``rejected``, an HTTP error) a request (§5.2)."""

    channel_id: int
    handshake: bytes
    rejected: bool = False
    encoding: int = ENCODING_IDENTITY
    opcode: ClassVar[int] = 1

    def encode(self) -> bytes:
        _check_encoding(self.encoding)
        return (bytes((0x20 | (0x10 if self.rejected else 0) | self.encoding,)) + encode_channel_id(self.channel_id)
                + encode_number(len(self.handshake)) + self.handshake)


@dataclass(frozen=True)
class FlowControl:
    """Both ways: add ``quota`` bytes to the receiver's send quota on ``channel_id`` (§5.3)."""

    channel_id: int
    quota: int
    opcode: ClassVar[int] = 2

    def encode(self) -> bytes:
        return b"\x40" + encode_channel_id(self.channel_id) + encode_number(self.quota)


@dataclass(frozen=True)
class DropChannel:
    """Both ways: end ``channel_id`` at once (0: the physical connection), with a reason (§5.4)."""

    channel_id: int
    code: int | None = None
    message: str = ""
    opcode: ClassVar[int] = 3

    def encode(self) -> bytes:
        if self.code is None:
            if self.message:
                raise ValueError("a DropChannel message needs a code")
            reason = b""
        else:
            reason = self.code.to_bytes(2, "big") + self.message.encode("utf-8")
        return b"\x60" + encode_channel_id(self.channel_id) + encode_number(len(reason)) + reason


@dataclass(frozen=True)
class NewChannelSlot:
    """Server → client: ``slots`` more AddChannelRequests allowed, each channel starting with
    ``quota`` bytes of send quota; ``fallback``: open no more channels here (§5.5)."""

    slots: int
    quota: int
    fallback: bool = False
    opcode: ClassVar[int] = 4

    def encode(self) -> bytes:
        if self.fallback and (self.slots or self.quota):
            raise ValueError("a fallback NewChannelSlot has 0 slots and 0 quota")
        return (b"\x81" if self.fallback else b"\x80") + encode_number(self.slots) + encode_number(self.quota)


ControlBlock = Union[AddChannelRequest, AddChannelResponse, FlowControl, DropChannel, NewChannelSlot]


def encode_control_blocks(*blocks: ControlBlock) -> bytes:
    """A channel-0 message payload carrying ``blocks`` back to back."""
    return b"\x00" + b"".join(block.encode() for block in blocks)


def _sized(data: bytes, pos: int) -> tuple[bytes, int]:
    size, pos = decode_number(data, pos)
    if pos + size > len(data):
        raise MuxError("control block truncated", DROP_INVALID_BLOCK)
    return data[pos:pos + size], pos + size


def parse_control_blocks(data: bytes | bytearray | memoryview) -> list[ControlBlock]:
    """Parse the control blocks of a channel-0 message (after its channel ID), §5.

    Raises MuxError: 2004 for mux opcodes 5-7, 2010/2012 for handshake encodings 2-3, 2005
    for reserved bits, bad numbers or IDs, truncation, a 1-byte drop reason and the like.
    """
    data = bytes(data)
    blocks: list[ControlBlock] = []
    pos, n = 0, len(data)
    while pos < n:
        b0 = data[pos]
        op = b0 >> 5
        pos += 1
        if op == 0:
            if b0 & 0x1C:
                raise MuxError("reserved bits set in AddChannelRequest", DROP_INVALID_BLOCK)
            if b0 & 0x03 > 1:
                raise MuxError("unknown request encoding %d" % (b0 & 0x03), DROP_UNKNOWN_REQUEST_ENCODING)
            cid, pos = decode_channel_id(data, pos, DROP_INVALID_BLOCK)
            handshake, pos = _sized(data, pos)
            blocks.append(AddChannelRequest(cid, handshake, b0 & 0x03))
        elif op == 1:
            if b0 & 0x0C:
                raise MuxError("reserved bits set in AddChannelResponse", DROP_INVALID_BLOCK)
            if b0 & 0x03 > 1:
                raise MuxError("unknown response encoding %d" % (b0 & 0x03), DROP_UNKNOWN_RESPONSE_ENCODING)
            cid, pos = decode_channel_id(data, pos, DROP_INVALID_BLOCK)
            handshake, pos = _sized(data, pos)
            blocks.append(AddChannelResponse(cid, handshake, bool(b0 & 0x10), b0 & 0x03))
        elif op == 2:
            if b0 & 0x1F:
                raise MuxError("reserved bits set in FlowControl", DROP_INVALID_BLOCK)
            cid, pos = decode_channel_id(data, pos, DROP_INVALID_BLOCK)
            quota, pos = decode_number(data, pos)
            blocks.append(FlowControl(cid, quota))
        elif op == 3:
            if b0 & 0x1F:
                raise MuxError("reserved bits set in DropChannel", DROP_INVALID_BLOCK)
            cid, pos = decode_channel_id(data, pos, DROP_INVALID_BLOCK)
            reason, pos = _sized(data, pos)
            if len(reason) == 1:
                raise MuxError("DropChannel reason of 1 byte", DROP_INVALID_BLOCK)
            try:
                message = reason[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise MuxError("DropChannel message is not UTF-8", DROP_INVALID_BLOCK) from None
            blocks.append(DropChannel(cid, int.from_bytes(reason[:2], "big") if reason else None, message))
        elif op == 4:
            if b0 & 0x1E:
                raise MuxError("reserved bits set in NewChannelSlot", DROP_INVALID_BLOCK)
            slots, pos = decode_number(data, pos)
            quota, pos = decode_number(data, pos)
            fallback = bool(b0 & 0x01)
            if fallback and (slots or quota):
                raise MuxError("fallback NewChannelSlot with slots or quota", DROP_INVALID_BLOCK)
            blocks.append(NewChannelSlot(slots, quota, fallback))
        else:
            raise MuxError("unknown mux opcode %d" % op, DROP_UNKNOWN_OPCODE)
    return blocks


# -- encapsulation (§4) ------------------------------------------------------------------------

def encapsulate(channel_id: int, opcode: int, payload: bytes = b"", final: bool = True, rsv: int = 0) -> bytes:
    """The physical message payload carrying one logical frame: ID, 1-byte header, payload."""
    if channel_id == 0:
        raise ValueError("channel 0 carries control blocks, not frames")
    return b"".join((encode_channel_id(channel_id), bytes(((0x80 if final else 0) | rsv | opcode,)), payload))


def decapsulate(data: bytes | bytearray | memoryview) -> tuple[int, Frame | list[ControlBlock]]:
    """Split a physical message payload: ``(0, [control blocks])`` or ``(channel ID, logical Frame)``.

    Raises MuxError 2002 (ID truncated or not minimal), 2003 (no logical header) or what
    :func:`parse_control_blocks` raises. The logical frame itself is not validated here.
    """
    cid, pos = decode_channel_id(data, 0, DROP_CHANNEL_ID_TRUNCATED)
    if cid == 0:
        return 0, parse_control_blocks(data[pos:])
    if pos >= len(data):
        raise MuxError("logical frame without its header byte", DROP_FRAME_TRUNCATED)
    b0 = data[pos]
    return cid, Frame(b0 & 0x0F, bytes(data[pos + 1:]), final=bool(b0 & 0x80), rsv1=bool(b0 & RSV1),
                      rsv2=bool(b0 & RSV2), rsv3=bool(b0 & RSV3))


# -- encapsulated handshakes -------------------------------------------------------------------

def request_head(path: str, host: str, origin: str | None, protocols: Sequence[str],
                  headers: Sequence[tuple[str, str]]) -> bytes:
    """An identity AddChannelRequest handshake (§5.1): no Upgrade, Key or Version."""
    lines = ["GET %s HTTP/1.1" % path, "Host: %s" % host, "Connection: Upgrade"]
    if origin:
        lines.append("Origin: %s" % origin)
    if protocols:
        lines.append("Sec-WebSocket-Protocol: %s" % ", ".join(protocols))
    lines.extend("%s: %s" % item for item in headers)
    for line in lines:
        if "\r" in line or "\n" in line:
            raise ValueError("%r contains a line break" % line)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1")


def accept_head(protocol: str | None) -> bytes:
    """An accepting AddChannelResponse handshake (§5.2): no Upgrade, no Accept."""
    lines = ["HTTP/1.1 101 Switching Protocols", "Connection: Upgrade"]
    if protocol:
        lines.append("Sec-WebSocket-Protocol: %s" % protocol)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1")


def status_head(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return ("HTTP/1.1 %d %s\r\n\r\n" % (status, phrase)).encode("iso-8859-1")


def apply_delta(base: Headers, delta: Headers) -> Headers:
    """Delta encoding (§5.1): a header in ``delta`` replaces the base's; an empty value removes it."""
    names = {name.lower() for name in delta}
    merged = Headers([(k, v) for k, v in base.items() if k.lower() not in names])
    for name, value in delta.items():
        if value:
            merged.add(name, value)
    return merged


def check_response(response: AddChannelResponse, protocols: Sequence[str]) -> tuple[str | None, Headers]:
    """Validate an AddChannelResponse like an RFC 6455 response: ``(subprotocol, headers)``."""
    # A refusal may carry a body after the head (e.g. a process_request answer).
    head, sep, body = response.handshake.partition(b"\r\n\r\n")
    parsed = parse_response(head + sep)
    if response.rejected:
        raise HandshakeError("server refused the channel: %d %s" % (parsed.status, parsed.reason),
                             parsed.status, parsed.headers, body)
    headers = parsed.headers
    if parsed.status != 101:
        raise HandshakeError("channel accepted with status %d" % parsed.status, None, headers)
    if not has_token(headers.get("Connection"), "upgrade"):
        raise HandshakeError("channel response lacks Connection: Upgrade", None, headers)
    protocol = chosen_subprotocol(headers, protocols)
    if headers.get("Sec-WebSocket-Extensions"):
        raise NegotiationError("server accepted channel extensions that were not offered")
    return protocol, headers
