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
import shutil
import socket
import subprocess
import sys
import threading

import pytest

import twspy
from twspy import frame as frame_module
from twspy.frame import OPCODE_BINARY, OPCODE_TEXT, Frame, FrameParser

from conftest import opened_websocket

protocol_module = importlib.import_module("twspy.protocol")
websocket_module = importlib.import_module("twspy.websocket")  # the module: twspy.websocket is the class
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    from twspy import _speedups
except ImportError:
    _speedups = None


def _require_c():
    if _speedups is None:
        if os.environ.get("TWSPY_REQUIRE_SPEEDUPS", "") not in ("", "0"):
            pytest.fail("twspy._speedups is not built (TWSPY_REQUIRE_SPEEDUPS is set): run `make build`")
        pytest.skip("twspy._speedups is not built (no C compiler?): `make build`")


def _c_or_skip():
    _require_c()
    return _speedups.mask, _speedups.mask_into


def _c_join_or_skip():
    _require_c()
    return _speedups.mask_join


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
    functions = {"mask": mask, "mask_into": mask_into, "mask_join": JOINS[request.param]()}
    for module in (frame_module, websocket_module, protocol_module):
        for name, function in functions.items():
            if hasattr(module, name):  # the names each module imported
                monkeypatch.setattr(module, name, function)
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


JOINS = {"python": lambda: frame_module._mask_join_python, "c": _c_join_or_skip}


@pytest.fixture(params=sorted(JOINS))
def mask_join(request):
    """mask_join of one implementation."""
    return JOINS[request.param]()


class TestMaskJoin:
    """mask_join(key, parts) == mask(key, b"".join(parts)), the key's phase carrying on across parts."""

    def test_random_splits(self, mask_join):
        rng = random.Random(3)
        for _ in range(200):
            data = os.urandom(rng.choice([rng.randrange(40), rng.randrange(3000)]))
            cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(6)))
            bounds = [0] + cuts + [len(data)]
            kinds = (bytes, bytearray, lambda b: memoryview(bytes(b)))
            parts = [rng.choice(kinds)(data[a:b]) for a, b in zip(bounds, bounds[1:])]
            key = os.urandom(4)
            assert mask_join(key, parts) == reference(key, data)

    @pytest.mark.parametrize("lengths", [[], [0], [0, 0, 5], [1, 1, 1, 1, 1], [3, 126, 65535, 2], [7, 1 << 20]])
    def test_lengths_and_phases(self, mask_join, lengths):
        key = b"\x9a\x01\xff\x42"
        parts = [os.urandom(n) for n in lengths]
        result = mask_join(key, parts)
        assert type(result) is bytes
        assert result == frame_module._mask_python(key, b"".join(parts))

    def test_any_iterable_and_unaligned_views(self, mask_join):
        data = os.urandom(1000)
        view = memoryview(data)
        parts = (view[1:8], view[8:333], view[333:999])  # a tuple; a generator too
        assert mask_join(b"abcd", parts) == reference(b"abcd", data[1:999])
        assert mask_join(b"abcd", (p for p in parts)) == reference(b"abcd", data[1:999])

    def test_bad_arguments(self, mask_join):
        with pytest.raises(ValueError, match="4 bytes"):
            mask_join(b"abc", [b"x"])
        with pytest.raises(TypeError):
            mask_join("abcd", [b"x"])
        with pytest.raises(TypeError):
            mask_join(b"abcd", 5)
        with pytest.raises(TypeError):
            mask_join(b"abcd", [b"x", "text"])
        with pytest.raises(TypeError, match="contiguous"):
            mask_join(b"abcd", [memoryview(bytearray(10))[::2]])
        with pytest.raises(TypeError):
            mask_join(b"abcd")

    def test_public_name(self):
        assert twspy.frame.mask_join is (_speedups.mask_join if twspy.speedups_enabled()
                                         else frame_module._mask_join_python)


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

    @pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536, 300000, (1 << 20) - 3])
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


    def test_large_frame_is_one_gathered_write(self):
        """Header and large payload go out in one sendmsg (no lone header segment, no copy)."""
        calls = []

        class Recording(socket.socket):
            def sendmsg(self, buffers, *args):
                calls.append([bytes(b) for b in buffers])
                return super().sendmsg(buffers, *args)

        a, b = socket.socketpair()
        server = opened_websocket(Recording(fileno=a.detach()), server_side=True)
        b.settimeout(5)
        try:
            payload = os.urandom(20000)  # fits the socket buffer: sent whole
            server.send_raw(OPCODE_BINARY, payload)
            assert calls == [[b"\x82\x7e\x4e\x20", payload]]
            got = b""
            while len(got) < 20004:
                got += b.recv(65536)
            assert got == b"\x82\x7e\x4e\x20" + payload
        finally:
            server.close()
            b.close()


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


class TestBuild:
    """setup.py: the extension is optional; without a working compiler the build still succeeds
    (a pure-Python package), and TWSPY_NO_SPEEDUPS=1 skips it on purpose."""

    @pytest.mark.parametrize("env_change, warned", [({"CC": "false"}, True), ({"TWSPY_NO_SPEEDUPS": "1"}, False)])
    def test_pure_python_build(self, tmp_path, env_change, warned):
        setuptools = pytest.importorskip("setuptools")
        if int(setuptools.__version__.split(".")[0]) < 61:  # pyproject.toml's [build-system] asks for 61+
            pytest.skip("setuptools %s reads no [project] table; pip builds with a newer one" % setuptools.__version__)
        for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
            shutil.copy(os.path.join(ROOT, name), tmp_path)
        shutil.copytree(os.path.join(ROOT, "twspy"), tmp_path / "twspy",
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
        env = {k: v for k, v in os.environ.items() if k != "TWSPY_NO_SPEEDUPS"}
        env.update(env_change)
        done = subprocess.run([sys.executable, "setup.py", "build", "--build-base", str(tmp_path / "build")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert ("twspy._speedups not built" in done.stderr) is warned
        built = [os.path.relpath(os.path.join(d, f), tmp_path / "build")
                 for d, _, files in os.walk(tmp_path / "build") for f in files]
        assert any(path.endswith(os.path.join("twspy", "protocol.py")) for path in built)
        assert not [path for path in built if "_speedups" in path and not path.endswith((".c", ".pyi"))]
