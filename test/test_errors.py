"""twspy.errors: the exception tree, attributes, messages and builtin mix-ins."""

from __future__ import annotations

import copy
import importlib
import pickle
import re

import pytest

import twspy
from twspy import errors
from twspy.errors import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeError,
    InvalidState,
    InvalidURI,
    NegotiationError,
    PayloadTooBig,
    ProtocolError,
    ProxyError,
    RedirectError,
    SocketClosed,
    WebSocketError,
    closed_error,
)


class TestTree:
    @pytest.mark.parametrize("cls, parents", [
        (HandshakeError, (WebSocketError,)),
        (NegotiationError, (HandshakeError, WebSocketError)),
        (ProtocolError, (WebSocketError,)),
        (PayloadTooBig, (ProtocolError, WebSocketError)),
        (ConnectionClosed, (WebSocketError,)),
        (ConnectionClosedOK, (ConnectionClosed, WebSocketError)),
        (ConnectionClosedError, (ConnectionClosed, WebSocketError)),
        (InvalidState, (WebSocketError, RuntimeError)),
        (InvalidURI, (WebSocketError, ValueError)),
        (RedirectError, (HandshakeError, WebSocketError)),
        (ProxyError, (WebSocketError, ConnectionError, OSError)),
        (errors.MuxError, (ProtocolError, WebSocketError)),
        (errors.Reject, (WebSocketError,)),
        (errors.InvalidTopic, (WebSocketError, ValueError)),
        (errors.SubscriptionLimit, (WebSocketError, ValueError)),
        (errors.HubError, (WebSocketError,)),
        (errors.BrokerUnavailable, (errors.HubError, WebSocketError, ConnectionError)),
    ])
    def test_parents(self, cls, parents):
        for parent in parents:
            assert issubclass(cls, parent)
        assert issubclass(cls, Exception)

    def test_no_accidental_builtin_parents(self):
        for cls in (WebSocketError, HandshakeError, NegotiationError, ProtocolError, PayloadTooBig, ConnectionClosed):
            assert not issubclass(cls, (ValueError, RuntimeError, OSError))
        assert WebSocketError.__bases__ == (Exception,)
        assert not issubclass(ProtocolError, HandshakeError) and not issubclass(HandshakeError, ProtocolError)

    def test_documented_tree_is_the_real_one(self):
        # The module docstring draws the tree: every class in it sits under the parent drawn,
        # and every exception class errors.py defines is drawn.
        drawn = {}
        stack = []
        for line in errors.__doc__.splitlines():
            m = re.match(r"^    ([ │├└─]*)(\w+)", line)
            if not m or not m.group(2)[0].isupper():
                continue
            depth = len(m.group(1)) // 4
            del stack[depth:]
            drawn[m.group(2)] = stack[-1] if stack else None
            stack.append(m.group(2))
        assert drawn["WebSocketError"] is None
        for name, parent in drawn.items():
            cls = getattr(errors, name)
            if parent is not None:
                assert getattr(errors, parent) in cls.__bases__, (name, parent)
        defined = {n for n, v in vars(errors).items()
                   if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == errors.__name__}
        assert defined - {"SocketClosed"} == set(drawn)  # an alias, named on its class's line
        for module in ("filters", "topics", "broker", "mux_frames", "hub"):
            mod = importlib.import_module("twspy." + module)
            for name in drawn:
                assert getattr(mod, name, getattr(errors, name)) is getattr(errors, name)

    def test_alias_and_exports(self):
        assert SocketClosed is ConnectionClosed
        assert sorted(errors.__all__) == sorted([
            "WebSocketError", "HandshakeError", "NegotiationError", "ProtocolError", "PayloadTooBig",
            "ConnectionClosed", "ConnectionClosedOK", "ConnectionClosedError", "SocketClosed", "InvalidState",
            "InvalidURI", "RedirectError", "ProxyError", "MuxError", "Reject", "InvalidTopic", "SubscriptionLimit",
            "HubError", "BrokerUnavailable"])
        for name in errors.__all__:
            assert getattr(twspy, name) is getattr(errors, name)
            assert name in twspy.__all__

    @pytest.mark.parametrize("code, cls", [(1000, ConnectionClosedOK), (1001, ConnectionClosedOK),
                                           (1005, ConnectionClosedOK), (1006, ConnectionClosedError),
                                           (1002, ConnectionClosedError), (1009, ConnectionClosedError),
                                           (4000, ConnectionClosedError)])
    def test_closed_ok_or_error_by_code(self, code, cls):
        cause = PayloadTooBig("too big") if code == 1009 else None
        exc = closed_error(code, "why", cause)
        assert type(exc) is cls and (exc.code, exc.reason) == (code, "why")
        if cls is ConnectionClosedError:
            assert exc.cause is cause and exc.__cause__ is cause

    def test_proxy_error_attributes_and_pickle(self):
        exc = ProxyError("proxy http://p:3128: refused the tunnel to h:443: 407 Proxy Authentication Required",
                         "http://p:3128", 407, "Proxy Authentication Required")
        again = pickle.loads(pickle.dumps(exc))
        assert (again.proxy, again.status, again.reason, str(again)) == (exc.proxy, 407, exc.reason, str(exc))

    def test_builtin_mix_ins_catchable_as_builtins(self):
        with pytest.raises(RuntimeError):
            raise InvalidState("send() before the opening handshake")
        with pytest.raises(ValueError):
            raise InvalidURI("http://x", "scheme isn't ws or wss")


class TestAttributesAndMessages:
    def test_handshake_error(self):
        exc = HandshakeError("bad key", 400, extra_headers=(("X", "y"),))
        assert (exc.message, exc.status, exc.headers, exc.body, exc.extra_headers) == \
            ("bad key", 400, None, b"", (("X", "y"),))
        assert str(exc) == "bad key (HTTP 400)"
        assert exc.args == ("bad key",)

    def test_handshake_error_without_status(self):
        exc = HandshakeError("wrong Sec-WebSocket-Accept", headers={"a": "b"}, body=b"x")
        assert (exc.status, exc.headers, exc.body, exc.extra_headers) == (None, {"a": "b"}, b"x", ())
        assert str(exc) == "wrong Sec-WebSocket-Accept"

    def test_negotiation_error(self):
        assert str(NegotiationError("server chose x")) == "server chose x"
        exc = NegotiationError("invalid extension header", 400)
        assert exc.status == 400 and str(exc) == "invalid extension header (HTTP 400)"

    def test_protocol_error(self):
        exc = ProtocolError("reserved opcode 0x3")
        assert (exc.message, exc.code) == ("reserved opcode 0x3", 1002)
        assert str(exc) == "reserved opcode 0x3 (close code 1002)"
        assert ProtocolError("bad UTF-8", 1007).code == 1007
        assert str(ProtocolError("bad UTF-8", code=1007)) == "bad UTF-8 (close code 1007)"

    def test_payload_too_big(self):
        exc = PayloadTooBig("frame of 200 bytes exceeds the limit of 100")
        assert exc.code == 1009
        assert str(exc) == "frame of 200 bytes exceeds the limit of 100 (close code 1009)"
        assert PayloadTooBig("x", 1002).code == 1002

    def test_connection_closed(self):
        exc = ConnectionClosed()
        assert (exc.code, exc.reason) == (1006, "")
        assert str(exc) == "connection closed: 1006"
        exc = ConnectionClosed(1000, "bye")
        assert (exc.code, exc.reason, exc.args) == (1000, "bye", (1000, "bye"))
        assert str(exc) == "connection closed: 1000 bye"
        assert str(ConnectionClosed(1005)) == "connection closed: 1005"
        assert str(SocketClosed(code=4000, reason="custom")) == "connection closed: 4000 custom"

    def test_invalid_state(self):
        assert str(InvalidState("send() before the opening handshake")) == "send() before the opening handshake"

    def test_invalid_uri(self):
        exc = InvalidURI("http://h/", "scheme isn't ws or wss")
        assert (exc.uri, exc.why) == ("http://h/", "scheme isn't ws or wss")
        assert str(exc) == "http://h/ isn't a valid WebSocket URI: scheme isn't ws or wss"


EXAMPLES = [
    HandshakeError("no", 426, headers={"a": "b"}, body=b"body", extra_headers=(("Sec-WebSocket-Version", "13"),)),
    NegotiationError("bad ext", 400),
    ProtocolError("bad UTF-8", 1007),
    PayloadTooBig("too big"),
    ConnectionClosed(1001, "away"),
    InvalidState("closed"),
    InvalidURI("http://h/", "scheme isn't ws or wss"),
]


class TestCopyAndPickle:
    """Exceptions cross threads and processes (e.g. multiprocessing): they must survive both."""

    @pytest.mark.parametrize("exc", EXAMPLES, ids=lambda e: type(e).__name__)
    @pytest.mark.parametrize("how", [copy.copy, copy.deepcopy, lambda e: pickle.loads(pickle.dumps(e))],
                             ids=["copy", "deepcopy", "pickle"])
    def test_round_trip(self, exc, how):
        clone = how(exc)
        assert type(clone) is type(exc)
        assert str(clone) == str(exc)
        assert vars(clone) == vars(exc)
