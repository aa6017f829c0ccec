"""twspy.message: the message classes and their types."""

from __future__ import annotations

import typing

import pytest

import twspy
from twspy.message import create_message


def test_payload_types_narrow_by_class():
    """Issue 17 item 6: after isinstance, a type checker sees str or bytes, not str | bytes."""
    assert typing.get_type_hints(twspy.TextMessage)["payload"] is str
    assert typing.get_type_hints(twspy.BinaryMessage)["payload"] is bytes
    assert typing.get_type_hints(twspy.Message)["payload"] == typing.Union[str, bytes]
    assert twspy.TextMessage.__slots__ == () and not hasattr(twspy.TextMessage("x"), "__dict__")


def test_messages():
    text, binary = twspy.TextMessage("héllo"), twspy.BinaryMessage(bytearray(b"\x00\xff"))
    assert (str(text), text.encode(), len(text)) == ("héllo", "héllo".encode(), 5)
    assert (binary.payload, type(binary.payload), binary.opcode) == (b"\x00\xff", bytes, twspy.OPCODE_BINARY)
    assert create_message(twspy.OPCODE_TEXT, b"hi") == twspy.TextMessage("hi")
    assert create_message(twspy.OPCODE_BINARY, b"hi") == twspy.BinaryMessage(b"hi")
    assert text != binary and twspy.TextMessage("a") == twspy.TextMessage("a")
    with pytest.raises(TypeError):
        twspy.TextMessage(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        twspy.BinaryMessage("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        create_message(twspy.OPCODE_PING, b"")
