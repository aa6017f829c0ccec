"""twspy.message: the message classes and their types."""

from __future__ import annotations

import pytest

import twspy
from twspy.message import create_message


def test_payload_types_narrow_by_class():
    """Issue 17 item 6: after isinstance, a type checker sees str or bytes, not str | bytes."""
    # As declared (postponed annotations: strings on every Python, read by type checkers).
    assert twspy.TextMessage.__annotations__["payload"] == "str"
    assert twspy.BinaryMessage.__annotations__["payload"] == "bytes"
    assert twspy.Message.__annotations__["payload"] == "str | bytes"
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


def test_repr_shows_the_class_and_at_most_48_units_of_payload():
    assert repr(twspy.TextMessage("hi")) == "TextMessage('hi')"
    assert repr(twspy.BinaryMessage(b"\x00")) == "BinaryMessage(b'\\x00')"
    assert repr(twspy.TextMessage("x" * 48)) == "TextMessage(%r)" % ("x" * 48)
    assert repr(twspy.TextMessage("y" * 49)) == "TextMessage(%r...)" % ("y" * 48)
    assert repr(twspy.BinaryMessage(b"z" * 1000)) == "BinaryMessage(%r...)" % (b"z" * 48)


def test_equality_with_other_types_and_unhashable():
    text = twspy.TextMessage("a")
    assert text != "a" and text.__eq__("a") is NotImplemented
    assert twspy.BinaryMessage(b"a") != twspy.TextMessage("a")  # same payload units, other opcode
    assert twspy.Message(twspy.OPCODE_TEXT, "a") == text  # equality is by opcode and payload, not class
    with pytest.raises(TypeError):
        hash(text)  # mutable payload attribute: messages are not dict keys


def test_create_message_decodes_strictly():
    with pytest.raises(UnicodeDecodeError):
        create_message(twspy.OPCODE_TEXT, b"\xff")
    assert create_message(twspy.OPCODE_BINARY, b"\xff").payload == b"\xff"
