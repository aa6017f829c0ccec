"""Connection: RFC 6455 §5-§8 behaviour, byte by byte, over socket pairs.

The peer is a raw socket writing hand-built frames (masked, as a client must) and
reading what twspy answers.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

import twspy
from twspy import Frame
from twspy.frame import FrameParser

from conftest import frame_from, wait_for

KEY = bytes.fromhex("37fa213d")


class Peer:
    """The raw end of a socket pair: writes frames, parses what comes back."""

    def __init__(self, sock, client=True):
        self.sock = sock
        self.client = client
        self.parser = FrameParser(require_mask=not client)

    def send(self, *frames):
        for frame in frames:
            if isinstance(frame, Frame):
                if self.client:
                    frame.masking_key, frame.mask = KEY, True
                frame = frame.pack()
            self.sock.sendall(frame)

    def frame(self, timeout=5):
        return frame_from(self.sock, self.parser, timeout)

    def close_code(self):
        frame = self.frame()
        assert frame.opcode == twspy.OPCODE_CLOSE, frame
        return twspy.frame.decode_close(frame.payload)[0] if frame.payload else None

    def eof(self, timeout=5):
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


class Recorder(twspy.Connection):
    def __init__(self, *args, **kwargs):
        self.events = []
        self.onclose_called = threading.Event()  # onclose may run in the watchdog's thread
        super().__init__(*args, **kwargs)

    def onopen(self):
        self.events.append(("open",))

    def onmessage(self, message):
        self.events.append(("message", message))

    def onping(self, payload):
        self.events.append(("ping", payload))

    def onpong(self, payload):
        self.events.append(("pong", payload))

    def onclose(self, code, reason):
        self.events.append(("close", code, reason))
        self.onclose_called.set()

    def onerror(self, exc):
        self.events.append(("error", exc))


@pytest.fixture
def conn(pair):
    """A server-role Connection and the raw client peer."""
    ws, raw = pair(server_side=True)
    connection = Recorder(ws, close_timeout=2)
    return connection, Peer(raw, client=True)


def recv_in_thread(connection):
    """Start ``connection.recv()`` in a thread; returns a join() that gives its result or exception."""
    result = []

    def run():
        try:
            result.append(connection.recv(timeout=5))
        except BaseException as exc:  # noqa: B902 - handed to the test
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()

    def join():
        thread.join(10)
        assert not thread.is_alive()
        return result[0]

    return join


def expect_failure(connection, peer, code):
    """The connection fails with ``code``: close frame sent, peer's echo awaited, TCP closed."""
    join = recv_in_thread(connection)
    assert peer.close_code() == code
    peer.send(Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(code)))
    assert peer.eof()  # §7.1.7: the server closes TCP without waiting
    peer.sock.shutdown(socket.SHUT_WR)
    assert isinstance(join(), twspy.ConnectionClosed)
    assert [e[1] for e in connection.events if e[0] == "close"] == [code]
    assert any(e[0] == "error" and isinstance(e[1], twspy.ProtocolError) and e[1].code == code
               for e in connection.events)


class TestDataFrames:
    """§5.6, §5.4: messages, fragmentation."""

    def test_single_text(self, conn):
        c, peer = conn
        peer.send(bytes.fromhex("818537fa213d7f9f4d5158"))  # RFC §5.7 masked "Hello"
        assert c.recv(5) == twspy.TextMessage("Hello")

    def test_binary_and_empty(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_BINARY, b"\x00\xff"), Frame(twspy.OPCODE_TEXT, b""))
        assert c.recv(5) == twspy.BinaryMessage(b"\x00\xff")
        assert c.recv(5) == twspy.TextMessage("")

    def test_fragmented_with_ping_between(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_TEXT, "Hel", final=False), Frame(twspy.OPCODE_PING, b""),
                  Frame(twspy.OPCODE_CONTINUATION, "lo"))
        assert c.recv(5) == twspy.TextMessage("Hello")
        pong = peer.frame()
        assert pong.pack() == bytes.fromhex("8a00")
        assert ("ping", b"") in c.events

    def test_empty_fragments(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_BINARY, b"", final=False), Frame(twspy.OPCODE_CONTINUATION, b"a", final=False),
                  Frame(twspy.OPCODE_CONTINUATION, b""))
        assert c.recv(5) == twspy.BinaryMessage(b"a")

    def test_many_frames_in_one_write(self, conn):
        c, peer = conn
        data = b"".join(Frame(twspy.OPCODE_TEXT, str(i), masking_key=KEY).pack() for i in range(100))
        peer.send(data)
        assert [c.recv(5).payload for _ in range(100)] == [str(i) for i in range(100)]

    def test_large_message(self, conn):
        c, peer = conn
        payload = bytes(range(256)) * 4096  # 1 MiB: read straight into its own buffer
        sender = threading.Thread(target=peer.send, args=(Frame(twspy.OPCODE_BINARY, payload),))
        sender.start()
        assert c.recv(10).payload == payload
        sender.join(5)

    def test_continuation_without_start(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_CONTINUATION, "lo"))
        expect_failure(c, peer, 1002)

    def test_new_message_inside_fragmented(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_TEXT, "Hel", final=False), Frame(twspy.OPCODE_TEXT, "lo"))
        expect_failure(c, peer, 1002)


class TestFraming:
    """§5.2: header rules enforced on received frames."""

    @pytest.mark.parametrize("raw", ["c10548656c6c6f", "a10548656c6c6f", "910548656c6c6f"])
    def test_rsv_without_extension(self, conn, raw):
        c, peer = conn
        frame = twspy.read_frame(bytes.fromhex(raw))[0]
        frame.masking_key, frame.mask = KEY, True
        peer.send(frame.pack())
        expect_failure(c, peer, 1002)

    @pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
    def test_reserved_opcode(self, conn, opcode):
        c, peer = conn
        peer.send(Frame(opcode, b""))
        expect_failure(c, peer, 1002)

    def test_control_frame_too_long(self, conn):
        c, peer = conn
        peer.send(bytes.fromhex("89fe007e") + KEY + twspy.mask(KEY, b"x" * 126))
        expect_failure(c, peer, 1002)

    def test_fragmented_ping(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_PING, b"", final=False))
        expect_failure(c, peer, 1002)

    def test_64bit_length_msb(self, conn):
        c, peer = conn
        peer.send(bytes.fromhex("82ff8000000000000000") + KEY)
        expect_failure(c, peer, 1002)

    def test_unmasked_client_frame(self, pair):
        ws, raw = pair(server_side=True)
        c = Recorder(ws, close_timeout=2)
        peer = Peer(raw, client=False)  # "client" that forgets to mask
        peer.parser.require_mask = False
        peer.send(bytes.fromhex("810548656c6c6f"))
        expect_failure(c, peer, 1002)

    def test_masked_server_frame(self, pair):
        ws, raw = pair(server_side=False)
        c = Recorder(ws, close_timeout=0.5)
        peer = Peer(raw, client=False)
        peer.parser.require_mask = True  # a client masks its answer
        peer.send(bytes.fromhex("818537fa213d7f9f4d5158"))
        join = recv_in_thread(c)
        assert peer.close_code() == 1002
        peer.sock.sendall(Frame(twspy.OPCODE_CLOSE, b"\x03\xea").pack())  # the server's echo, unmasked
        peer.sock.shutdown(socket.SHUT_WR)  # and its TCP close, which the client waits for
        assert isinstance(join(), twspy.ConnectionClosed)
        assert c.close_code == 1002

    def test_max_size_frame(self, pair):
        ws, raw = pair(server_side=True, max_size=1000)
        c = Recorder(ws, close_timeout=2)
        peer = Peer(raw)
        peer.send(bytes.fromhex("82fe0fa0") + KEY)  # 4000 bytes announced, none sent: refused at the header
        expect_failure(c, peer, 1009)

    def test_max_size_fragmented_message(self, pair):
        ws, raw = pair(server_side=True, max_size=1000)
        c = Recorder(ws, close_timeout=2)
        peer = Peer(raw)
        peer.send(*[Frame(twspy.OPCODE_BINARY if i == 0 else 0, b"x" * 400, final=False) for i in range(3)])
        expect_failure(c, peer, 1009)

    @pytest.mark.parametrize("opcode", [twspy.OPCODE_TEXT, twspy.OPCODE_BINARY])
    def test_endless_empty_fragments(self, pair, opcode):
        """Issue 20 item 7: 0-byte continuations never reach max_size; the fragment cap ends them (1009)."""
        ws, raw = pair(server_side=True)
        c = Recorder(ws, close_timeout=2, max_fragments=50)
        peer = Peer(raw)
        continuation = Frame(twspy.OPCODE_CONTINUATION, b"", final=False, masking_key=KEY).pack()
        peer.send(Frame(opcode, b"x", final=False), continuation * 50)  # 51 frames, none final
        expect_failure(c, peer, 1009)
        assert any(isinstance(e[1], twspy.PayloadTooBig) and "fragments" in str(e[1])
                   for e in c.events if e[0] == "error")

    @pytest.mark.parametrize("opcode, part", [(twspy.OPCODE_TEXT, "é"), (twspy.OPCODE_BINARY, b"\x00\xff")])
    def test_fragments_up_to_the_cap(self, pair, opcode, part):
        ws, raw = pair(server_side=True)
        c = Recorder(ws, close_timeout=2, max_fragments=1000)
        peer = Peer(raw)
        data = part.encode() if isinstance(part, str) else part
        frames = [Frame(opcode if i == 0 else twspy.OPCODE_CONTINUATION, data, final=i == 999, masking_key=KEY)
                  for i in range(1000)]
        peer.send(b"".join(f.pack() for f in frames) * 2)  # two messages of 1000 fragments each
        assert c.recv(5).payload == part * 1000
        assert c.recv(5).payload == part * 1000


class TestUTF8:
    """§5.6, §8.1: text is validated incrementally and fails fast."""

    def test_invalid(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_TEXT, b"\xff"))
        expect_failure(c, peer, 1007)

    def test_split_code_point(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_TEXT, b"\xce", final=False), Frame(twspy.OPCODE_CONTINUATION, b"\xba"))
        assert c.recv(5) == twspy.TextMessage("κ")

    def test_fail_fast_before_fin(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_TEXT, bytes.fromhex("cebae1bdb9"), final=False),
                  Frame(twspy.OPCODE_CONTINUATION, bytes.fromhex("f490"), final=False))
        # No FIN was sent: the close must come from the invalid prefix alone.
        expect_failure(c, peer, 1007)

    def test_truncated_at_fin(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_TEXT, b"ok\xce", final=False), Frame(twspy.OPCODE_CONTINUATION, b""))
        expect_failure(c, peer, 1007)


class TestControlFrames:
    """§5.5: ping, pong."""

    def test_ping_answered_with_same_payload(self, conn):
        c, peer = conn
        peer.send(bytes.fromhex("898537fa213d7f9f4d5158"), Frame(twspy.OPCODE_TEXT, "x"))
        assert c.recv(5).payload == "x"
        assert peer.frame().pack() == bytes.fromhex("8a0548656c6c6f")

    def test_unsolicited_pong_ignored(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_PONG, b"beat"), Frame(twspy.OPCODE_TEXT, "x"))
        assert c.recv(5).payload == "x"
        assert ("pong", b"beat") in c.events
        peer.sock.settimeout(0.05)
        with pytest.raises(OSError):
            peer.sock.recv(1)  # nothing was sent back

    def test_send_ping(self, conn):
        c, peer = conn
        c.send_ping(b"abc")
        frame = peer.frame()
        assert (frame.opcode, frame.payload) == (twspy.OPCODE_PING, b"abc")
        with pytest.raises(ValueError):
            c.send_ping(b"x" * 126)

    def test_client_masks_control_frames(self, pair):
        ws, raw = pair(server_side=False)
        c = twspy.Connection(ws, close_timeout=0.5)
        peer = Peer(raw, client=False)
        peer.parser.require_mask = True
        peer.send(bytes.fromhex("890548656c6c6f"))  # unmasked ping from the "server"
        c.send_ping(b"p")
        c.send("t")
        with pytest.raises(TimeoutError):
            c.recv(0.2)
        frames = [peer.frame() for _ in range(3)]
        assert all(f.mask and f.masking_key for f in frames)
        assert {f.opcode for f in frames} == {twspy.OPCODE_PONG, twspy.OPCODE_PING, twspy.OPCODE_TEXT}

    def test_ping_answered_while_handler_runs(self, conn):
        c, peer = conn
        release = threading.Event()
        entered = threading.Event()

        def onmessage(message):
            entered.set()
            release.wait(10)

        c.onmessage = onmessage
        reader = threading.Thread(target=c.receive_forever)
        reader.start()
        try:
            peer.send(Frame(twspy.OPCODE_TEXT, "slow"))
            assert entered.wait(5)
            peer.send(Frame(twspy.OPCODE_PING, b"still there?"))
            pong = peer.frame(timeout=5)
            assert (pong.opcode, pong.payload) == (twspy.OPCODE_PONG, b"still there?")
        finally:
            release.set()
        peer.send(Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(1000)))
        reader.join(5)
        assert not reader.is_alive()


    def test_read_ahead_is_bounded_by_bytes(self, pair):
        """Issue 20 item 6: a slow handler lets the helper read ahead max_queue_bytes, not 16 whole messages."""
        ws, raw = pair(server_side=True, max_size=1 << 20)
        c = Recorder(ws, close_timeout=2, max_queue_bytes=1 << 20)
        peer = Peer(raw)
        release = threading.Event()
        c.onmessage = lambda message: (c.events.append(("message", message)), release.wait(10))
        size, count = 256 * 1024, 12
        reader = threading.Thread(target=c.receive_forever)
        reader.start()
        sender = threading.Thread(target=peer.send, args=(
            *[Frame(twspy.OPCODE_BINARY, bytes([i]) * size) for i in range(count)],
            Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(1000))))
        sender.start()
        try:
            wait_for(lambda: sum(len(m) for m in list(c._inbox)) >= 1 << 20, timeout=10)
            queued = list(c._inbox)
            # Reading stopped at the bound: it holds 4 of the 11 waiting messages, not max_queue (16).
            assert sum(len(m) for m in queued) <= (1 << 20) + size and len(queued) < count - 1
        finally:
            release.set()
        reader.join(10)
        sender.join(10)
        assert not reader.is_alive() and not sender.is_alive()
        got = [e[1].payload for e in c.events if e[0] == "message"]
        assert got == [bytes([i]) * size for i in range(count)]  # nothing lost, in order
        assert c.close_code == 1000


class TestClose:
    """§5.5.1, §7: the closing handshake."""

    def test_peer_initiated(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_CLOSE, b"\x03\xe8bye"))
        with pytest.raises(twspy.ConnectionClosed) as info:
            c.recv(5)
        assert (info.value.code, info.value.reason) == (1000, "bye")
        assert peer.close_code() == 1000       # echoed
        assert peer.eof()                      # and the server closed TCP
        with pytest.raises(twspy.ConnectionClosed):
            c.send("late")
        with pytest.raises(twspy.ConnectionClosed):
            c.recv(1)
        assert c.events.count(("close", 1000, "bye")) == 1

    def test_empty_close_answered_empty(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_CLOSE, b""))
        with pytest.raises(twspy.ConnectionClosed) as info:
            c.recv(5)
        assert info.value.code == 1005
        assert peer.frame().pack() == bytes.fromhex("8800")

    @pytest.mark.parametrize("payload,code", [
        ("03", 1002), ("03ed", 1002), ("03e7", 1002), ("03ec", 1002), ("03ee", 1002), ("03f7", 1002),
        ("1388", 1002), ("0bb7", 1002), ("03e8ff", 1007)])
    def test_invalid_close(self, conn, payload, code):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_CLOSE, bytes.fromhex(payload)))
        with pytest.raises(twspy.ConnectionClosed):
            c.recv(5)
        assert peer.close_code() == code

    @pytest.mark.parametrize("code", [1000, 1001, 1003, 1011, 1014, 3000, 4999])
    def test_valid_codes_echoed(self, conn, code):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(code)))
        with pytest.raises(twspy.ConnectionClosed) as info:
            c.recv(5)
        assert info.value.code == code
        assert peer.close_code() == code

    def test_local_close(self, conn):
        c, peer = conn

        def answer():
            assert peer.close_code() == 4000
            peer.send(Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(4000)))

        t = threading.Thread(target=answer)
        t.start()
        c.close(4000, "done")
        t.join(5)
        assert c.closed and c.close_code == 4000
        assert peer.eof()
        c.close()  # again: nothing happens
        assert c.events.count(("close", 4000, "")) == 1

    def test_close_timeout(self, pair):
        ws, raw = pair(server_side=True)
        c = Recorder(ws, close_timeout=0.2)
        start = time.monotonic()
        c.close(1000)
        assert time.monotonic() - start < 10  # the silent peer is not waited for beyond close_timeout
        assert c.close_code == 1006
        assert Peer(raw).close_code() == 1000

    def test_close_from_other_thread_while_reading(self, conn):
        c, peer = conn
        reader = threading.Thread(target=c.receive_forever)
        reader.start()

        def answer():
            assert peer.close_code() == 1000
            peer.send(Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(1000)))

        t = threading.Thread(target=answer)
        t.start()
        c.close()
        t.join(5)
        reader.join(5)
        assert not reader.is_alive()
        assert c.close_code == 1000

    def test_messages_sent_before_peer_close_are_kept(self, conn):
        c, peer = conn

        def answer():
            assert peer.close_code() == 1000
            peer.send(Frame(twspy.OPCODE_TEXT, "in flight"), Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(1000)))

        t = threading.Thread(target=answer)
        t.start()
        c.close()
        t.join(5)
        assert c.close_code == 1000
        assert c.recv(1).payload == "in flight"
        with pytest.raises(twspy.ConnectionClosed):
            c.recv(1)

    def test_tcp_lost_is_1006(self, conn):
        c, peer = conn
        peer.sock.close()
        with pytest.raises(twspy.ConnectionClosed) as info:
            c.recv(5)
        assert info.value.code == 1006
        assert c.events.count(("close", 1006, "")) == 1

    def test_invalid_local_close_code(self, conn):
        c, peer = conn
        for code in (1005, 1006, 999, 2000, 5000):
            with pytest.raises(ValueError):
                c.close(code)
        assert not c.closed

    def test_iteration_ends_at_close(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_TEXT, "a"), Frame(twspy.OPCODE_TEXT, "b"),
                  Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(1000)))
        assert [m.payload for m in c] == ["a", "b"]

    @pytest.mark.parametrize("code", [1000, 1001, None])
    def test_normal_close_is_closed_ok(self, conn, code):
        """Issue 15: ConnectionClosedOK for 1000, 1001 and a close without a code (1005)."""
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_TEXT, "a"), Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(code)))
        assert [m.payload for m in c] == ["a"]  # the loop ends quietly
        with pytest.raises(twspy.ConnectionClosedOK) as info:
            c.recv(1)
        assert info.value.code == (code or 1005)
        with pytest.raises(twspy.ConnectionClosedOK):
            c.send("late")

    @pytest.mark.parametrize("code", [1011, 4000])
    def test_error_close_code_is_closed_error(self, conn, code):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_TEXT, "a"), Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(code, "boom")))
        assert [m.payload for m in c] == ["a"]  # the loop ends quietly; recv() tells how
        assert c.close_code == code
        with pytest.raises(twspy.ConnectionClosedError) as info:
            c.recv(1)
        assert (info.value.code, info.value.reason, info.value.cause) == (code, "boom", None)

    def test_lost_connection_is_closed_error(self, conn):
        c, peer = conn
        peer.sock.close()
        assert list(c) == [] and c.close_code == 1006
        with pytest.raises(twspy.ConnectionClosedError) as info:
            c.recv(1)
        assert info.value.code == 1006

    def test_too_big_message_is_closed_error_1009_caused_by_payload_too_big(self, pair):
        """Issue 17 item 6: README and code agree: ConnectionClosedError(1009) whose cause is PayloadTooBig."""
        ws, raw = pair(server_side=True, max_size=100)
        c = Recorder(ws, close_timeout=0.5)
        peer = Peer(raw)
        peer.send(Frame(twspy.OPCODE_BINARY, b"x" * 101))
        with pytest.raises(twspy.ConnectionClosedError) as info:
            c.recv(5)
        assert info.value.code == 1009
        assert isinstance(info.value.cause, twspy.PayloadTooBig) and info.value.__cause__ is info.value.cause
        assert peer.close_code() == 1009


class TestSending:
    def test_server_does_not_mask(self, conn):
        c, peer = conn
        c.send("Hello")
        c.send(b"\x01")
        assert peer.frame().pack() == bytes.fromhex("810548656c6c6f")
        assert peer.frame().pack() == bytes.fromhex("820101")

    def test_fragment_size(self, conn):
        c, peer = conn
        c.send("Hello", fragment_size=2)
        frames = [peer.frame() for _ in range(3)]
        assert [(f.opcode, f.payload, f.final) for f in frames] == [
            (1, b"He", False), (0, b"ll", False), (0, b"o", True)]

    def test_message_objects(self, conn):
        c, peer = conn
        c.send(twspy.TextMessage("t"))
        c.send(twspy.BinaryMessage(b"b"))
        assert [(f.opcode, f.payload) for f in (peer.frame(), peer.frame())] == [(1, b"t"), (2, b"b")]
        with pytest.raises(TypeError):
            c.send(42)

    def test_threads_never_interleave(self, conn):
        c, peer = conn
        n_threads, n_messages = 8, 20

        def sender(i):
            for j in range(n_messages):
                c.send(("%d:%d:" % (i, j)) + "x" * 300, fragment_size=7)

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        seen = {i: [] for i in range(n_threads)}
        for _ in range(n_threads * n_messages):
            parts = []
            while True:
                frame = peer.frame()
                assert frame.opcode == (1 if not parts else 0), "fragments interleaved"
                parts.append(frame.payload)
                if frame.final:
                    break
            i, j, rest = b"".join(parts).decode().split(":")
            assert rest == "x" * 300
            seen[int(i)].append(int(j))
        for t in threads:
            t.join(5)
        assert all(seen[i] == list(range(n_messages)) for i in seen)

    def test_recv_timeout_loses_nothing(self, conn):
        c, peer = conn
        with pytest.raises(TimeoutError):
            c.recv(0.05)
        frame = Frame(twspy.OPCODE_TEXT, "abcdef", masking_key=KEY).pack()
        peer.send(frame[:4])
        with pytest.raises(TimeoutError):
            c.recv(0.05)
        peer.send(frame[4:])
        assert c.recv(5).payload == "abcdef"


class TestHandlers:
    def test_onopen_called(self, conn):
        c, peer = conn
        assert c.events[0] == ("open",)

    def test_handler_exception_closes_1011(self, conn, caplog):
        c, peer = conn

        def onmessage(message):
            raise RuntimeError("boom")

        c.onmessage = onmessage
        reader = threading.Thread(target=c.receive_forever)
        reader.start()
        peer.send(Frame(twspy.OPCODE_TEXT, "x"))
        assert peer.close_code() == 1011
        peer.send(Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(1011)))
        reader.join(5)
        assert not reader.is_alive()
        assert any(e[0] == "error" and isinstance(e[1], RuntimeError) for e in c.events)
        assert any(r.levelname == "ERROR" and r.exc_info for r in caplog.records)
        assert c.events.count(("close", 1011, "")) == 1

    def test_receive_forever_dispatches(self, conn):
        c, peer = conn
        peer.send(Frame(twspy.OPCODE_TEXT, "a"), Frame(twspy.OPCODE_BINARY, b"b"),
                  Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(1000, "end")))
        c.receive_forever()
        assert [e[1] for e in c.events if e[0] == "message"] == [twspy.TextMessage("a"), twspy.BinaryMessage(b"b")]
        assert c.events[-1] == ("close", 1000, "end")


class TestUTF8FailFastWithinAFrame:
    """§8.1: a text frame whose bytes can no longer be UTF-8 fails before it is complete."""

    @pytest.mark.parametrize("fragmented", [False, True])
    def test_partial_frame(self, conn, fragmented):
        c, peer = conn
        if fragmented:
            peer.send(Frame(twspy.OPCODE_TEXT, "κ", final=False))
            frame = Frame(twspy.OPCODE_CONTINUATION, bytes.fromhex("cebae1bdb9f4908080") + b"x" * 100,
                          masking_key=KEY).pack()
        else:
            frame = Frame(twspy.OPCODE_TEXT, bytes.fromhex("cebae1bdb9f4908080") + b"x" * 100, masking_key=KEY).pack()
        peer.send(frame[:-100])  # the frame is not complete: 100 bytes are still missing
        expect_failure(c, peer, 1007)

    def test_large_partial_frame(self, conn):
        c, peer = conn
        payload = b"a" * 300000 + b"\xff" + b"b" * 300000  # read straight into its buffer
        frame = Frame(twspy.OPCODE_TEXT, payload, masking_key=KEY).pack()
        sender = threading.Thread(target=peer.sock.sendall, args=(frame[:400000],))
        sender.start()  # more than the socket buffers hold: it completes as twspy reads
        expect_failure(c, peer, 1007)
        sender.join(5)

    def test_valid_split_frames_still_pass(self, conn):
        c, peer = conn
        text = "κόσμε🙂" * 50000
        frame = Frame(twspy.OPCODE_TEXT, text, masking_key=KEY).pack()
        join = recv_in_thread(c)
        for i in range(0, len(frame), 7777):  # code points split across reads
            peer.send(frame[i:i + 7777])
        assert join() == twspy.TextMessage(text)


class TestKeepalive:
    def test_pong_before_send_returns_is_recognised(self, pair):
        """Regression: the pong can be read before the ping's write returns (a thread switch)."""
        ws, raw = pair(server_side=False)
        c = Recorder(ws, close_timeout=0.2, ping_interval=0.05, ping_timeout=1.0)
        peer = Peer(raw, client=False)
        peer.parser.require_mask = True
        send_bytes = c._send_bytes

        def send_then_switch(data):
            send_bytes(data)
            if data[0] & 0x0F == twspy.OPCODE_PING:
                time.sleep(0.01)  # the reader handles the pong meanwhile

        c._send_bytes = send_then_switch
        stop = threading.Event()

        def answer_pings():
            while not stop.is_set():
                try:
                    frame = peer.frame(timeout=0.1)
                except OSError:
                    continue
                except EOFError:
                    return
                if frame.opcode == twspy.OPCODE_PING:
                    peer.sock.sendall(Frame(twspy.OPCODE_PONG, frame.payload).pack())

        answerer = threading.Thread(target=answer_pings)
        answerer.start()
        try:
            deadline = time.monotonic() + 2.0  # pings every 0.05 s; 1 s unanswered would close it
            while time.monotonic() < deadline:
                try:
                    c.recv(timeout=0.1)
                except TimeoutError:
                    pass
            assert c.state == "OPEN"
            assert sum(1 for e in c.events if e[0] == "pong") >= 3
        finally:
            stop.set()
            answerer.join(5)
            c.abort()

    def test_silent_peer_closes_with_1006(self, pair):
        ws, raw = pair(server_side=False)
        c = Recorder(ws, close_timeout=0.2, ping_interval=0.05, ping_timeout=0.2)
        with pytest.raises(twspy.ConnectionClosed) as info:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    c.recv(timeout=0.1)
                except TimeoutError:
                    pass
        assert info.value.code == 1006
        assert c.closed and c.close_code == 1006
        # The watchdog closed it and calls onclose after waking the reader.
        assert c.onclose_called.wait(5)
        assert [e for e in c.events if e[0] == "close"] == [("close", 1006, "keepalive ping timeout")]
        c.close()  # nothing left to do, and no error


def test_abort_wakes_a_reader_waiting_with_a_deadline(pair):
    # abort() from another thread must end a recv(timeout) at once, not at its deadline.
    for _ in range(20):
        ws, _peer = pair()
        conn = twspy.Connection(ws)
        result = []
        reader = threading.Thread(target=lambda c=conn, r=result: r.append(_recv_outcome(c, 10)))
        reader.start()
        wait_for(lambda w=ws: w._poller is not None)  # the reader is at (or about to be in) select()
        started = time.monotonic()
        conn.abort()
        reader.join(5)
        assert not reader.is_alive() and result == ["closed"]
        assert time.monotonic() - started < 2
        assert ws.sock.fileno() == -1  # and the socket is closed


def _recv_outcome(conn, timeout):
    try:
        conn.recv(timeout=timeout)
    except twspy.ConnectionClosed:
        return "closed"
    except TimeoutError:
        return "timeout"
    return "message"


@pytest.mark.parametrize("message, wire_head", [
    ("", "8100"),
    ("x" * 125, "817d"),
    ("x" * 126, "817e007e"),                  # 16-bit length from 126 (§5.2)
    (b"\x00" * 1024, "827e0400"),
    (b"\x01" * 16383, "827e3fff"),            # the last size of the fused send path
    (b"\x02" * 16384, "827e4000"),            # the general path
    (b"\x03" * 65536, "827f0000000000010000"),  # 64-bit length from 65536
])
def test_server_frames_on_the_wire(pair, message, wire_head):
    """A server's data frames, byte for byte: FIN, opcode, minimal length, no mask (§5.2)."""
    ws, raw = pair(server_side=True)
    conn = twspy.Connection(ws)
    conn.send(message)
    payload = message.encode() if isinstance(message, str) else message
    want = bytes.fromhex(wire_head) + payload
    got = b""
    raw.settimeout(5)
    while len(got) < len(want):
        got += raw.recv(1 << 20)
    assert got == want


@pytest.mark.parametrize("message, wire_head", [
    ("Hello", "8185"),                        # RFC 6455 §5.7: a masked "Hello"
    ("x" * 126, "81fe007e"),
    (b"\x00" * 1024, "82fe0400"),
    (b"\x01" * 16384, "82fe4000"),            # the general path
])
def test_client_frames_on_the_wire(pair, message, wire_head, monkeypatch):
    """A client's data frames, byte for byte: masked with the core's key (§5.3)."""
    import twspy.protocol
    monkeypatch.setattr(twspy.protocol, "new_masking_key", lambda: KEY)
    ws, raw = pair(server_side=False)
    conn = twspy.Connection(ws)
    conn.send(message)
    payload = message.encode() if isinstance(message, str) else message
    want = bytes.fromhex(wire_head) + KEY + twspy.mask(KEY, payload)
    if message == "Hello":
        assert want == bytes.fromhex("818537fa213d7f9f4d5158")
    got = b""
    raw.settimeout(5)
    while len(got) < len(want):
        got += raw.recv(1 << 20)
    assert got == want


def test_no_more_flushers_once_the_outbox_overflowed(pair):
    """After the overflow that drops a peer (1013), further non-blocking sends are dropped at
    once instead of each starting a flusher thread that waits for the stuck socket."""
    ws, raw = pair(server_side=True)
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn = twspy.Connection(ws, max_outbox=64 * 1024)
    chunk = b"x" * 8192
    while not conn.outbox.overflowed:
        conn.send_nowait(chunk)
    before = threading.active_count()
    for _ in range(50):
        conn.send_nowait(chunk)
    assert threading.active_count() - before <= 2
    wait_for(lambda: conn.closed)
    assert conn.close_code == 1013


class TestOutOfThreads:
    """Issue 20 item 2: ``RuntimeError: can't start new thread`` (pid limits) degrades, never unwinds."""

    @pytest.fixture
    def no_threads(self, monkeypatch):
        """Make Thread.start fail for the named threads (all when the set holds None); count the attempts."""
        refused = set()
        attempts = []
        start = threading.Thread.start

        def failing_start(thread):
            if None in refused or thread.name in refused:
                attempts.append(thread.name)
                raise RuntimeError("can't start new thread")
            start(thread)

        monkeypatch.setattr(threading.Thread, "start", failing_start)
        return refused, attempts

    def test_flusher_that_cannot_start_drops_that_peer_1013(self, pair, no_threads):
        refused, attempts = no_threads
        ws, raw = pair(server_side=True)
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        conn = Recorder(ws)
        refused.add(None)
        conn.send_nowait(b"x" * (1 << 20))  # more than the socket takes now: needs the flusher
        assert attempts and conn.closed and conn.close_code == 1013
        assert conn.events[-1] == ("close", 1013, "cannot start a thread")
        conn.send_nowait(b"more")  # and nothing else happens

    def test_overflow_closes_inline_without_a_thread(self, pair, no_threads):
        refused, attempts = no_threads
        ws, raw = pair(server_side=True)
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        conn = Recorder(ws, max_outbox=64 * 1024)
        conn.send_nowait(b"x" * (1 << 20))  # the flusher starts and blocks on the full socket
        refused.add(None)
        while not conn.outbox.overflowed:
            conn.send_nowait(b"y" * 8192)
        assert attempts and conn.closed and conn.close_code == 1013  # done in this thread instead

    def test_lost_connection_handled_inline(self, pair, no_threads):
        refused, attempts = no_threads
        ws, raw = pair(server_side=True)
        conn = Recorder(ws)

        def broken(data):
            raise ConnectionResetError("reset")

        ws.send_nowait = broken
        refused.add(None)
        conn.send_nowait(b"x")
        assert attempts and conn.closed and conn.close_code == 1006

    def test_rescue_that_cannot_start_keeps_the_connection(self, conn, no_threads):
        refused, attempts = no_threads
        c, peer = conn
        refused.add("twspy-rescue")
        release = threading.Event()
        c.onmessage = lambda message: (c.events.append(("message", message)), release.wait(10))
        reader = threading.Thread(target=c.receive_forever)
        reader.start()
        try:
            peer.send(Frame(twspy.OPCODE_TEXT, "slow"), Frame(twspy.OPCODE_PING, b"p"))
            # The watchdog tried to start a helper reader, could not, lived on and tried again.
            wait_for(lambda: len(attempts) >= 2)
        finally:
            release.set()
        pong = peer.frame()  # the handler's thread answers once the handler returns
        assert (pong.opcode, pong.payload) == (twspy.OPCODE_PONG, b"p")
        peer.send(Frame(twspy.OPCODE_TEXT, "next"), Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(1000)))
        reader.join(5)
        assert not reader.is_alive()
        assert [e[1].payload for e in c.events if e[0] == "message"] == ["slow", "next"]
        assert c.close_code == 1000

    def test_watchdog_that_cannot_start_is_retried(self, pair, no_threads):
        refused, attempts = no_threads
        from twspy.watchdog import Watchdog
        watchdog = Watchdog()
        ws, _raw = pair(server_side=True)
        conn = twspy.Connection(ws)
        refused.add("twspy-watchdog")
        watchdog.add(conn)  # no exception: keepalive is late, nothing else
        assert attempts == ["twspy-watchdog"] and watchdog._thread is None
        refused.clear()
        watchdog.add(conn)
        thread = watchdog._thread
        assert thread is not None and thread.is_alive()
        watchdog.discard(conn)
        thread.join(5)
        assert not thread.is_alive()


def test_debug_logs_frames_both_ways(pair, caplog):
    """Issue 17 item 7: DEBUG shows sent frames too (the level is read when the Connection is made)."""
    ws, raw = pair(server_side=True)
    peer = Peer(raw)
    with caplog.at_level(logging.DEBUG, logger="twspy.connection"):
        c = Recorder(ws, close_timeout=2)
        c.send("out")
        c.send(b"fragmented", fragment_size=5)
        c.send_ping(b"p")
        peer.send(Frame(twspy.OPCODE_TEXT, "in"), Frame(twspy.OPCODE_PING, b"q"))
        assert c.recv(5).payload == "in"
        c.send_nowait("quick")
        join = recv_in_thread(c)  # answers the ping, if the read that had "in" did not
        assert sorted(peer.frame().opcode for _ in range(6))[-2:] == [twspy.OPCODE_PING, twspy.OPCODE_PONG]
        c.start_close(1000)
        assert peer.close_code() == 1000
        peer.send(Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(1000)))
        assert isinstance(join(), twspy.ConnectionClosedOK)
    lines = [r.getMessage() for r in caplog.records if r.name == "twspy.connection"]
    sent = [line.split(" > ", 1)[1] for line in lines if " > " in line and "(flushed)" not in line]
    heads = [s.split()[:2] for s in sent]
    assert heads[:4] == [["<Frame", "TEXT"], ["<Frame", "BINARY"], ["<Frame", "CONTINUATION"],
                         ["<ControlFrame", "PING"]]
    # The pong goes out when the ping is parsed: in the read that had "in", or the next one.
    assert sorted(heads[4:-1]) == [["<ControlFrame", "PONG"], ["<Frame", "TEXT"],
                                   ["TextMessage('quick')", "(non-blocking)"]]
    assert heads[-1] == ["<ControlFrame", "CLOSE"]
    assert any(" < <Frame TEXT" in line for line in lines) and any(" < <ControlFrame CLOSE" in line for line in lines)


def test_no_frame_logging_when_debug_is_off(pair, caplog):
    ws, raw = pair(server_side=True)
    with caplog.at_level(logging.INFO, logger="twspy.connection"):
        c = twspy.Connection(ws)
        assert not c._debug and c._proto._plain  # the core's fused paths stay on
        c.send("out")
    assert not [r for r in caplog.records if r.levelno < logging.INFO]


def test_compressed_messages_of_one_read_are_inflated_within_max_queue_bytes(pair):
    """A 64 KiB read of compressed messages can hold dozens of 1 MiB messages (1 KiB of zeros
    inflates to 1 MiB): the core is fed in slices, and what follows max_queue_bytes' worth of
    messages waits (as bytes) until those were taken. Nothing is lost, order is kept."""
    import zlib

    from twspy.permessage_deflate import DeflateMessageCodec

    ws, raw = pair(server_side=True, extensions=[DeflateMessageCodec()])
    conn = twspy.Connection(ws, max_queue_bytes=2 << 20)
    frames = []
    for i in range(30):  # each 1 MiB - 1 of zeros then a marker byte, compressed alone (no takeover needed)
        body = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = body.compress(bytes((1 << 20) - 1) + bytes((i,))) + body.flush(zlib.Z_SYNC_FLUSH)
        frames.append(Frame(twspy.OPCODE_BINARY, data[:-4], rsv1=True, masking_key=KEY).pack())
    wire = b"".join(frames)
    assert len(wire) < 64 << 10  # one read can bring them all
    raw.sendall(wire)
    first = conn.recv(5)
    assert first.payload[-1] == 0 and len(first.payload) == 1 << 20
    assert len(conn._events) <= 3  # not 29 inflated MiB waiting
    rest = [conn.recv(5).payload[-1] for _ in range(29)]
    assert rest == list(range(1, 30))
    conn.abort()
