"""Messages: what applications send and receive (RFC 6455 §5.6)."""

from __future__ import annotations

from .frame import OPCODE_BINARY, OPCODE_TEXT

__all__ = ["Message", "TextMessage", "BinaryMessage", "create_message"]


class Message:
    """A complete data message: ``opcode`` and ``payload``."""

    __slots__ = ("opcode", "payload")
    opcode: int
    payload: str | bytes  # str on TextMessage, bytes on BinaryMessage

    def __init__(self, opcode: int, payload: str | bytes) -> None:
        self.opcode = opcode
        self.payload = payload

    def encode(self) -> bytes:
        """The payload as bytes (UTF-8 for text)."""
        payload = self.payload
        return payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self.opcode == other.opcode and self.payload == other.payload

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.payload)

    def __repr__(self) -> str:
        payload = self.payload if len(self.payload) <= 48 else self.payload[:48]
        more = "..." if len(self.payload) > 48 else ""
        return "%s(%r%s)" % (type(self).__name__, payload, more)


class TextMessage(Message):
    """A text message; ``payload`` is a ``str``."""

    __slots__ = ()
    payload: str  # narrows Message.payload for type checkers (after isinstance)

    def __init__(self, payload: str) -> None:
        if not isinstance(payload, str):
            raise TypeError("TextMessage takes a str, got %s" % type(payload).__name__)
        Message.__init__(self, OPCODE_TEXT, payload)

    def __str__(self) -> str:
        return self.payload


class BinaryMessage(Message):
    """A binary message; ``payload`` is ``bytes``."""

    __slots__ = ()
    payload: bytes

    def __init__(self, payload: bytes | bytearray | memoryview) -> None:
        if isinstance(payload, str):
            raise TypeError("BinaryMessage takes bytes, got str")
        Message.__init__(self, OPCODE_BINARY, payload if isinstance(payload, bytes) else bytes(payload))


def create_message(opcode: int, payload: bytes) -> Message:
    """Build the message for a received opcode; text is decoded as UTF-8 (strict)."""
    if opcode == OPCODE_TEXT:
        return TextMessage(payload.decode("utf-8"))
    if opcode == OPCODE_BINARY:
        return BinaryMessage(payload)
    raise ValueError("opcode %d is not a data opcode" % opcode)
