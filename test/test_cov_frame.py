"""twspy/frame.py beside test_frame.py: FrameParser's buffer across feeds and its cached header, and
unpack_close on a frame that is not a close frame."""

from __future__ import annotations

import pytest

from twspy.frame import OPCODE_BINARY, OPCODE_CLOSE, OPCODE_TEXT, Frame, FrameParser, encode_close

KEY = b"\x37\xfa\x21\x3d"


def test_parser_keeps_nothing_once_every_frame_was_read():
    # A long-lived connection's parser must not hold on to the bytes of frames already returned.
    parser = FrameParser(require_mask=True)
    for text in ("one", "two", "three"):
        parser.feed(Frame(OPCODE_TEXT, text, masking_key=KEY, mask=True).pack())
        frames = list(parser)
        assert [(f.opcode, f.payload) for f in frames] == [(OPCODE_TEXT, text.encode())]
        assert (parser.pos, len(parser.buffer)) == (0, 0)


def test_parser_keeps_a_partial_frame_across_feeds():
    data = b"".join(Frame(OPCODE_BINARY, bytes([i]) * 300, masking_key=KEY, mask=True).pack() for i in range(3))
    parser = FrameParser(require_mask=True)
    parser.feed(data[:700])  # two whole frames (308 bytes each) and the start of the third
    assert [f.payload for f in parser] == [b"\x00" * 300, b"\x01" * 300]
    header = parser.parse_header()
    assert header == (0x82, 300, KEY, 8)  # FIN + binary, 300 bytes (16-bit length), masked
    assert parser.parse_header() is header  # parsed once, until its frame is complete
    assert parser.wanted() == 308 - (700 - 616)
    parser.feed(data[700:])
    assert [f.payload for f in parser] == [b"\x02" * 300]
    assert parser.wanted() == 0 and parser.parse_header() is None


def test_unpack_close():
    assert Frame(OPCODE_CLOSE, encode_close(1001, "bye")).unpack_close() == (1001, "bye")
    with pytest.raises(ValueError, match="not a close frame"):
        Frame(OPCODE_TEXT, b"\x03\xe8").unpack_close()
