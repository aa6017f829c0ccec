"""twspy._speedups (the optional C masking) against the pure-Python fallback of twspy.frame.

Both implementations run every test: byte-identical output on random data, every length
0-70, around 125/126 and 65535/65536, unaligned offsets, bytes/bytearray/memoryview inputs,
and the same TypeError/ValueError for bad arguments. Without a built extension the C
cases are skipped, unless TWSPY_REQUIRE_SPEEDUPS=1 (CI, `make test` with a compiler) makes
that a failure.
"""

from __future__ import annotations

import array
import importlib
import os
import random
import socket
import subprocess
import sys
import threading

import pytest

import twspy
from twspy import frame as frame_module
from twspy.frame import OPCODE_BINARY, OPCODE_TEXT, Frame, FrameParser

from conftest import opened_websocket

websocket_module = importlib.import_module("twspy.websocket")  # the module: twspy.websocket is the class
protocol_module = importlib.import_module("twspy.protocol")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    from twspy import _speedups
except ImportError:
    _speedups = None


def _c_or_skip():
    if _speedups is None:
        if os.environ.get("TWSPY_REQUIRE_SPEEDUPS", "") not in ("", "0"):
            pytest.fail("twspy._speedups is not built (TWSPY_REQUIRE_SPEEDUPS is set): run `make build`")
        pytest.skip("twspy._speedups is not built (no C compiler?): `make build`")
    return _speedups.mask, _speedups.mask_into


IMPLEMENTATIONS = {
    "python": lambda: (frame_module._mask_python, frame_module._mask_into_python),
    "c": _c_or_skip,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request):
    """(mask, mask_into) of one implementation."""
    return IMPLEMENTATIONS[request.param]()


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def framing_with(request, monkeypatch):
    """Make twspy's framing code use one masking implementation for this test."""
    mask, mask_into = IMPLEMENTATIONS[request.param]()
    for module in (frame_module, protocol_module):
        monkeypatch.setattr(module, "mask", mask)
        monkeypatch.setattr(module, "mask_into", mask_into)
    monkeypatch.setattr(websocket_module, "mask_into", mask_into)  # large frames read in place
    return request.param


def reference(key, data):
    """§5.3 byte by byte."""
    data = bytes(data)
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


LENGTHS = list(range(71)) + [124, 125, 126, 127, 128, 255, 256, 257, 1024, 4095, 4096,
                             65534, 65535, 65536, 65537]


class TestMask:
    def test_rfc_vector(self, impl):
        mask, mask_into = impl
        assert mask(bytes.fromhex("37fa213d"), b"Hello") == bytes.fromhex("7f9f4d5158")
        buf = bytearray(b"Hello")
        assert mask_into(bytes.fromhex("37fa213d"), buf) is None
        assert buf == bytes.fromhex("7f9f4d5158")

    @pytest.mark.parametrize("n", LENGTHS)
    def test_lengths(self, impl, n):
        mask, mask_into = impl
        rng = random.Random(n)
        key = rng.randbytes(4) if hasattr(rng, "randbytes") else bytes(rng.getrandbits(8) for _ in range(4))
        data = os.urandom(n)
        expected = reference(key, data) if n < 5000 else frame_module._mask_python(key, data)
        for kind in (bytes, bytearray, memoryview):
            assert mask(kind(key), kind(data)) == expected
        buf = bytearray(data)
        mask_into(key, buf)
        assert buf == expected
        assert mask(key, expected) == data  # an involution

    @pytest.mark.parametrize("offset", [1, 2, 3, 5, 7])
    @pytest.mark.parametrize("n", [0, 1, 3, 7, 8, 9, 31, 32, 33, 125, 126, 1000])
    def test_unaligned(self, impl, offset, n):
        mask, mask_into = impl
        key = b"\x9a\x01\xff\x42"
        data = os.urandom(offset + n + 5)
        view = memoryview(data)[offset:offset + n]
        assert mask(key, view) == reference(key, view)
        buf = bytearray(data)
        mask_into(key, memoryview(buf)[offset:offset + n])
        assert buf[:offset] == data[:offset] and buf[offset + n:] == data[offset + n:]  # nothing else touched
        assert buf[offset:offset + n] == reference(key, view)

    def test_large_buffers(self, impl):
        # Past the size where the C version releases the GIL (256 KiB).
        mask, mask_into = impl
        key = os.urandom(4)
        data = os.urandom((1 << 20) + 3)
        expected = frame_module._mask_python(key, data)
        assert mask(key, data) == expected
        buf = bytearray(data)
        mask_into(key, buf)
        assert buf == expected

    def test_both_agree_on_random_data(self, impl):
        mask, mask_into = impl
        rng = random.Random(1)
        for _ in range(300):
            n = rng.choice([rng.randrange(300), rng.randrange(70000)])
            key = bytes(rng.getrandbits(8) for _ in range(4))
            data = bytes(rng.getrandbits(8) for _ in range(min(n, 64))) * (n // 64 + 1)
            data = data[:n]
            assert mask(key, data) == frame_module._mask_python(key, data)

    def test_other_buffer_types(self, impl):
        mask, mask_into = impl
        key = b"abcd"
        ints = array.array("I", range(100))
        assert mask(key, ints) == reference(key, ints.tobytes())
        mask_into(key, ints)
        assert ints.tobytes() == reference(key, array.array("I", range(100)).tobytes())
        assert mask(memoryview(key), b"xyz") == reference(key, b"xyz")

    def test_returns_bytes(self, impl):
        mask, _ = impl
        for data in (b"", b"x", bytearray(300), memoryview(b"abcdef")):
            assert type(mask(b"abcd", data)) is bytes


class TestBadArguments:
    @pytest.mark.parametrize("key", [b"", b"abc", b"abcde", bytearray(8)])
    def test_key_length(self, impl, key):
        mask, mask_into = impl
        with pytest.raises(ValueError, match="4 bytes"):
            mask(key, b"data")
        with pytest.raises(ValueError, match="4 bytes"):
            mask_into(key, bytearray(b"data"))

    @pytest.mark.parametrize("key", ["abcd", 1234, None, [1, 2, 3, 4]])
    def test_key_type(self, impl, key):
        mask, mask_into = impl
        with pytest.raises(TypeError):
            mask(key, b"data")
        with pytest.raises(TypeError):
            mask_into(key, bytearray(b"data"))

    @pytest.mark.parametrize("data", ["text", 5, None, [1, 2], "x" * 1000])
    def test_data_type(self, impl, data):
        mask, mask_into = impl
        with pytest.raises(TypeError):
            mask(b"abcd", data)
        with pytest.raises(TypeError):
            mask_into(b"abcd", data)

    @pytest.mark.parametrize("buffer", [b"immutable", memoryview(b"read-only"), b"x" * 1000])
    def test_read_only_buffer(self, impl, buffer):
        _, mask_into = impl
        with pytest.raises(TypeError, match="writable"):
            mask_into(b"abcd", buffer)

    def test_non_contiguous(self, impl):
        mask, mask_into = impl
        buf = bytearray(100)
        with pytest.raises(TypeError, match="contiguous"):
            mask(b"abcd", memoryview(buf)[::2])
        with pytest.raises(TypeError, match="contiguous"):
            mask_into(b"abcd", memoryview(buf)[::2])
        assert buf == bytearray(100)

    def test_argument_count(self, impl):
        mask, mask_into = impl
        with pytest.raises(TypeError):
            mask(b"abcd")
        with pytest.raises(TypeError):
            mask_into(b"abcd", bytearray(4), 0)


class TestFraming:
    """Frames packed and parsed with each implementation give the same bytes and frames."""

    @pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 70, 125, 126, 127, 65535, 65536, 70001])
    def test_pack_parse(self, framing_with, n):
        payload = os.urandom(n)
        key = b"\x01\x80\xfe\x7f"
        wire = Frame(OPCODE_BINARY, payload, masking_key=key).pack()
        assert wire.endswith(reference(key, payload) if n < 5000 else frame_module._mask_python(key, payload))
        assert wire == b"".join(frame_module.pack_frame(OPCODE_BINARY, payload, masking_key=key))
        parser = FrameParser(require_mask=True)
        for i in range(0, len(wire), 4093):  # in pieces: masks resume mid-payload
            parser.feed(wire[i:i + 4093])
        (frame,) = list(parser)
        assert frame.payload == payload and frame.masking_key == key

    def test_same_wire_bytes_both_ways(self, monkeypatch):
        mask_c, _ = _c_or_skip()
        payload = os.urandom(70000)
        key = b"\xde\xad\xbe\xef"
        python_wire = Frame(OPCODE_BINARY, payload, masking_key=key).pack()
        monkeypatch.setattr(frame_module, "mask", mask_c)
        assert Frame(OPCODE_BINARY, payload, masking_key=key).pack() == python_wire

    @pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536, 300000])
    def test_socket_round_trip(self, framing_with, n):
        """A client websocket sends masked frames to a server one: both directions, the large
        payload path (recv_into + mask_into) included."""
        a, b = socket.socketpair()
        server = opened_websocket(a, server_side=True)
        client = opened_websocket(b, server_side=False)
        data = os.urandom(n)
        text = "κόσμε " * (n // 12)

        def send(ws, *messages):
            for opcode, payload in messages:
                ws.send_raw(opcode, payload)

        try:
            # A sender thread: the socket buffers hold less than the larger messages.
            sender = threading.Thread(target=send, args=(client, (OPCODE_BINARY, data),
                                                         (OPCODE_TEXT, text.encode())))
            sender.start()
            assert server.recv(5).payload == data
            assert server.recv(5).payload == text.encode()
            sender.join(5)
            sender = threading.Thread(target=send, args=(server, (OPCODE_BINARY, data)))
            sender.start()
            assert client.recv(5).payload == data
            sender.join(5)
        finally:
            server.close()
            client.close()


class TestSelection:
    def test_public_names(self):
        assert twspy.speedups_enabled() is frame_module.speedups_enabled()
        if twspy.speedups_enabled():
            assert twspy.frame.mask is _speedups.mask and twspy.frame.mask_into is _speedups.mask_into
        else:
            assert twspy.frame.mask is frame_module._mask_python

    @pytest.mark.parametrize("value,expected", [("1", False), ("0", None), ("", None)])
    def test_environment_variable(self, value, expected):
        if expected is None:
            expected = _speedups is not None
        env = dict(os.environ, TWSPY_NO_SPEEDUPS=value)
        out = subprocess.run([sys.executable, "-c", "import twspy; print(twspy.speedups_enabled())"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(expected)
