"""twspy/filters.py and Server.process_request: request hooks, filter chains, the bundled filters,
over real sockets on 127.0.0.1 (and, for the chain's error handling, the hooks called directly)."""

from __future__ import annotations

import io
import pickle
import threading

import pytest

import twspy
from twspy.errors import HandshakeError, ProtocolError
from twspy.filters import (
    BearerAuth,
    Broadcast,
    Echo,
    Filter,
    Log,
    Reject,
    close_code_for,
    redact_query,
    run_close,
    run_connect,
    run_message,
    run_open,
)
from twspy.handshake import Headers, Request
from twspy.multiplex import Multiplex, connect_multiplexed

from conftest import http_exchange, url, wait_for

TIMEOUT = 5




def get(port, path, headers=()):
    lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % port] + ["%s: %s" % h for h in headers]
    return http_exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


def refused(target, **kwargs) -> HandshakeError:
    """The HandshakeError that ``twspy.connect(target)`` raises."""
    with pytest.raises(HandshakeError) as info:
        twspy.connect(target, handshake_timeout=TIMEOUT, **kwargs)
    return info.value


class Calls:
    """A thread-safe record of hook calls, with a wait for a given number of them."""

    def __init__(self):
        self.items = []
        self.cond = threading.Condition()

    def add(self, *item):
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait(self, predicate, timeout=TIMEOUT):
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.items), timeout), self.items
            return list(self.items)

    def named(self, name):
        with self.cond:
            return [item for item in self.items if item[0] == name]


class EchoAfterFilters(twspy.Server):
    """Echoes what the filters pass on; records its own handlers in ``self.calls``."""

    def __init__(self, *args, **kwargs):
        self.calls = Calls()
        super().__init__(*args, **kwargs)

    def onopen(self, client):
        self.calls.add("server.onopen", client.id)

    def onmessage(self, client, message):
        self.calls.add("server.onmessage", message.payload)
        client.send(message)

    def onclose(self, client, code, reason):
        self.calls.add("server.onclose", client.id, code)


# -- process_request ----------------------------------------------------------------------------

class Hooked(EchoAfterFilters):
    def process_request(self, request):
        path, headers = request.path, request.headers
        self.calls.add("process_request", path, headers.get("X-Probe"))
        if path == "/health":
            return 200, "OK\n"
        if path == "/private":
            return 401, [("WWW-Authenticate", 'Basic realm="x"')], b"who are you?\n"
        if path == "/forbidden":
            return 403, (("X-Why", "closed"),), "forbidden\n"
        if path == "/code":
            return 404
        if path == "/unicode":
            return 200, "κόσμε"
        if path == "/boom":
            raise RuntimeError("bug in the hook")
        if path == "/teapot":
            raise HandshakeError("short and stout", 418)
        if path == "/invalid":
            return "not a reply"
        if path == "/informational":
            return 101
        return None


class TestProcessRequest:
    def test_health_check_answered_over_a_raw_socket(self, serve):
        server = serve(Hooked)
        port = server.address[1]
        answer = get(port, "/health", [("X-Probe", "lb")])  # a plain GET: no upgrade headers at all
        assert answer == (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n"
                          b"Content-Type: text/plain; charset=utf-8\r\n\r\nOK\n")
        assert server.calls.named("process_request") == [("process_request", "/health", "lb")]
        assert server.calls.named("server.onopen") == []

    def test_str_body_is_utf8(self, serve):
        server = serve(Hooked)
        head, _, body = get(server.address[1], "/unicode").partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
        assert b"Content-Length: %d" % len("κόσμε".encode()) in head
        assert body == "κόσμε".encode()

    def test_401_with_headers_seen_by_the_client(self, serve):
        server = serve(Hooked)
        exc = refused(url(server, "/private"))
        assert exc.status == 401
        assert exc.headers["WWW-Authenticate"] == 'Basic realm="x"'
        assert exc.body == b"who are you?\n"

    def test_403_with_headers(self, serve):
        server = serve(Hooked)
        exc = refused(url(server, "/forbidden"))
        assert (exc.status, exc.headers["X-Why"], exc.body) == (403, "closed", b"forbidden\n")

    def test_status_only(self, serve):
        server = serve(Hooked)
        exc = refused(url(server, "/code"))
        assert exc.status == 404 and exc.headers["Content-Length"] == "0"

    def test_none_goes_on_to_the_upgrade(self, serve):
        server = serve(Hooked)
        with twspy.connect(url(server, "/chat?x=1"), handshake_timeout=TIMEOUT) as conn:
            conn.send("hello")
            assert conn.recv(TIMEOUT).payload == "hello"
        assert ("process_request", "/chat?x=1", None) in server.calls.items

    def test_exception_answers_500_and_is_logged(self, serve, caplog):
        server = serve(Hooked)
        with caplog.at_level("ERROR", logger="twspy"):
            exc = refused(url(server, "/boom"))
        assert exc.status == 500
        assert any(r.exc_info and "bug in the hook" in str(r.exc_info[1]) for r in caplog.records)

    def test_handshake_error_answers_its_status(self, serve):
        server = serve(Hooked)
        exc = refused(url(server, "/teapot"))
        assert exc.status == 418 and b"short and stout" in exc.body

    @pytest.mark.parametrize("path", ["/invalid", "/informational"])
    def test_invalid_reply_answers_500(self, serve, path):
        server = serve(Hooked)
        assert refused(url(server, path)).status == 500

    def test_server_keeps_serving_after_refusals(self, serve):
        server = serve(Hooked)
        for path in ("/boom", "/invalid", "/private"):
            refused(url(server, path))
        with twspy.connect(url(server), handshake_timeout=TIMEOUT) as conn:
            conn.send("still here")
            assert conn.recv(TIMEOUT).payload == "still here"

    def test_process_request_runs_before_the_filters(self, serve):
        calls = Calls()

        class Recorder(Filter):
            def on_connect(self, request):
                calls.add("filter.on_connect", request.path)

        server = serve(Hooked, filters=[Recorder()])
        refused(url(server, "/private"))  # answered by process_request: the filters never see it
        with twspy.connect(url(server, "/ok"), handshake_timeout=TIMEOUT):
            pass
        assert calls.items == [("filter.on_connect", "/ok")]


# -- the chain ----------------------------------------------------------------------------------

class Recorder(Filter):
    """Records every hook under its name."""

    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def on_connect(self, request):
        self.calls.add(self.name + ".on_connect", request.path)

    def on_open(self, client):
        self.calls.add(self.name + ".on_open", client.id)

    def on_message(self, client, message):
        self.calls.add(self.name + ".on_message", message.payload)
        return message

    def on_close(self, client, code, reason):
        self.calls.add(self.name + ".on_close", client.id, code)


class Upper(Filter):
    def on_message(self, client, message):
        return message.payload.upper() if isinstance(message, twspy.TextMessage) else message


class Drop(Filter):
    def on_message(self, client, message):
        return None if message.payload == "drop me" else message


class Answer(Filter):
    def on_message(self, client, message):
        if message.payload == "ping?":
            client.send("pong!")
            return None
        return message


class TestChain:
    def test_filters_run_in_list_order_before_the_server(self, serve):
        calls = Calls()
        server = serve(EchoAfterFilters, filters=[Recorder("a", calls), Recorder("b", calls)])
        server.calls = calls
        with twspy.connect(url(server, "/order"), handshake_timeout=TIMEOUT) as conn:
            conn.send("m")
            assert conn.recv(TIMEOUT).payload == "m"
        items = calls.wait(lambda items: any(i[0] == "server.onclose" for i in items))
        cid = items[2][1]
        assert [i for i in items] == [
            ("a.on_connect", "/order"), ("b.on_connect", "/order"),
            ("a.on_open", cid), ("b.on_open", cid), ("server.onopen", cid),
            ("a.on_message", "m"), ("b.on_message", "m"), ("server.onmessage", "m"),
            ("a.on_close", cid, 1000), ("b.on_close", cid, 1000), ("server.onclose", cid, 1000),
        ]
        assert isinstance(cid, str)

    def test_transform_drop_and_answer(self, serve):
        server = serve(EchoAfterFilters, filters=[Drop(), Answer(), Upper()])
        with twspy.connect(url(server), handshake_timeout=TIMEOUT) as conn:
            conn.send("drop me")
            conn.send("ping?")
            assert conn.recv(TIMEOUT) == twspy.TextMessage("pong!")
            conn.send("hello")
            assert conn.recv(TIMEOUT) == twspy.TextMessage("HELLO")  # nothing came back for "drop me"
            conn.send(b"\x00\x01")
            assert conn.recv(TIMEOUT) == twspy.BinaryMessage(b"\x00\x01")
        assert server.calls.named("server.onmessage") == [("server.onmessage", "HELLO"),
                                                          ("server.onmessage", b"\x00\x01")]

    def test_str_and_bytes_results_become_messages(self):
        class ToBytes(Filter):
            def on_message(self, client, message):
                return bytearray(message.encode())

        assert run_message([Upper()], None, twspy.TextMessage("x")) == twspy.TextMessage("X")
        assert run_message([ToBytes()], None, twspy.TextMessage("x")) == twspy.BinaryMessage(b"x")

    def test_on_connect_reply_stops_the_upgrade_and_the_chain(self, serve):
        calls = Calls()

        class Deny(Filter):
            def on_connect(self, request):
                if request.path.startswith("/no"):
                    return 401, "no\n"
                return None

        server = serve(EchoAfterFilters, filters=[Deny(), Recorder("later", calls)])
        exc = refused(url(server, "/no"))
        assert (exc.status, exc.body) == (401, b"no\n")
        with twspy.connect(url(server, "/yes"), handshake_timeout=TIMEOUT) as conn:
            conn.send("x")
            conn.recv(TIMEOUT)
        assert calls.named("later.on_connect") == [("later.on_connect", "/yes")]
        assert len(calls.named("later.on_open")) == 1

    @pytest.mark.parametrize("exc, status", [(HandshakeError("go away", 403), 403), (RuntimeError("bug"), 500)])
    def test_on_connect_exception(self, serve, exc, status):
        class Raise(Filter):
            def on_connect(self, request):
                raise exc

        server = serve(filters=[Raise()])
        assert refused(url(server)).status == status

    def test_echo(self, serve):
        server = serve(filters=[Echo()])
        with twspy.connect(url(server), handshake_timeout=TIMEOUT) as conn:
            for message in ("text", b"\xff\x00binary", "κόσμε" * 1000):
                conn.send(message)
                assert conn.recv(TIMEOUT).payload == message


class Welcome(Filter):
    """Says hello on open: once a client has read it, the server has it in ``clients``."""

    def on_open(self, client):
        client.send("welcome")


class TestBroadcast:
    def open_clients(self, server, n=3):
        conns = [twspy.connect(url(server, "/%d" % i), handshake_timeout=TIMEOUT) for i in range(n)]
        for conn in conns:
            assert conn.recv(TIMEOUT).payload == "welcome"
        return conns

    def test_include_sender(self, serve):
        server = serve(filters=[Welcome(), Broadcast()])
        conns = self.open_clients(server)
        try:
            conns[0].send("hi all")
            for conn in conns:
                assert conn.recv(TIMEOUT).payload == "hi all"
            conns[2].send(b"bin")
            for conn in conns:
                assert conn.recv(TIMEOUT).payload == b"bin"
        finally:
            for conn in conns:
                conn.close()

    def test_exclude_sender(self, serve):
        server = serve(filters=[Welcome(), Broadcast(include_sender=False)])
        a, b, c = conns = self.open_clients(server)
        try:
            a.send("from a")
            assert b.recv(TIMEOUT).payload == "from a"
            assert c.recv(TIMEOUT).payload == "from a"
            b.send("from b")  # a's next message is b's: it never got its own
            assert a.recv(TIMEOUT).payload == "from b"
            assert c.recv(TIMEOUT).payload == "from b"
        finally:
            for conn in conns:
                conn.close()

    def test_through_the_hub_when_attached(self):
        sent = []

        class FakeHub:
            def broadcast(self, message, exclude=None):
                sent.append((message, exclude))

        class Server:
            hub = FakeHub()

        class Client:
            server = Server()
            id = "n1.7"

        message = twspy.TextMessage("x")
        assert Broadcast().on_message(Client(), message) is message
        Broadcast(include_sender=False).on_message(Client(), message)
        assert sent == [(message, []), (message, ["n1.7"])]


class TestLog:
    def test_lines(self, serve):
        stream = io.StringIO()
        server = serve(EchoAfterFilters, filters=[Log(stream, max_payload=5)])
        with twspy.connect(url(server, "/log?token=s3cret&room=1"), handshake_timeout=TIMEOUT) as conn:
            conn.send("hello world")
            conn.recv(TIMEOUT)
            conn.send(b"\x00\x01\x02")
            conn.recv(TIMEOUT)
        server.calls.wait(lambda items: any(i[0] == "server.onclose" for i in items))
        cid = server.calls.named("server.onopen")[0][1]
        lines = stream.getvalue().splitlines()
        assert [line.split(" ", 1)[1] for line in lines] == [
            "%s open /log?token=***&room=1" % cid,  # the token is not written out
            "%s message 'hello'..." % cid,
            "%s message <3 bytes>" % cid,
            "%s close 1000" % cid,
        ]
        assert "s3cret" not in stream.getvalue()

    def test_a_percent_encoded_token_is_hidden_too(self, serve):
        """``?%74oken=s3cret`` is a token to BearerAuth (it decodes names) and was printed as is."""
        stream = io.StringIO()
        server = serve(EchoAfterFilters, filters=[Log(stream), BearerAuth("s3cret")])
        with twspy.connect(url(server, "/log?room=1&%74oken=s3cret&x=%2574oken"), handshake_timeout=TIMEOUT) as conn:
            conn.send("hi")
            conn.recv(TIMEOUT)
        server.calls.wait(lambda items: any(i[0] == "server.onclose" for i in items))
        assert "s3cret" not in stream.getvalue()
        assert " open /log?room=1&%74oken=***&x=%2574oken\n" in stream.getvalue()

    @pytest.mark.parametrize("target, shown", [
        ("/p", "/p"),
        ("/p?", "/p?"),
        ("/p?a=1&b", "/p?a=1&b"),
        ("/p?token=", "/p?token="),                               # nothing to hide
        ("/p?token=t&token=u", "/p?token=***&token=***"),
        ("/p?TOKEN=t&access_token=u&api%5Fkey=k&Password=p&sig=s&q=token",
         "/p?TOKEN=***&access_token=***&api%5Fkey=***&Password=***&sig=***&q=token"),
        ("/p?%74%6Fken=t#frag", "/p?%74%6Fken=***#frag"),
        ("/p?to+ken=t&tok%65n=v", "/p?to+ken=t&tok%65n=***"),     # "to ken" is another name
    ])
    def test_redact_query(self, target, shown):
        assert redact_query(target) == shown

    def test_stdout_by_default(self, capsys):
        class Client:
            id, path = "9", "/p"

        Log().on_open(Client())
        assert capsys.readouterr().out.endswith(" 9 open /p\n")


# -- exceptions ---------------------------------------------------------------------------------

class Strict(Filter):
    """Raises according to the message."""

    def on_message(self, client, message):
        text = message.payload
        if text == "reject":
            raise Reject(4000, "x")
        if text == "invalid":
            raise ProtocolError("not what I expected", 1007)
        if text == "forbidden":
            raise PermissionError("not yours")
        if text == "bug":
            raise RuntimeError("a bug in a filter")
        return message


class TestExceptions:
    @pytest.mark.parametrize("text, code, reason", [
        ("reject", 4000, "x"),
        ("invalid", 1007, "not what I expected"),
        ("forbidden", 1008, ""),
        ("bug", 1011, "internal error"),
    ])
    def test_close_codes_and_the_server_goes_on(self, serve, text, code, reason, caplog):
        calls = Calls()
        server = serve(EchoAfterFilters, filters=[Strict(), Recorder("after", calls)])
        with caplog.at_level("INFO", logger="twspy"):
            with twspy.connect(url(server), handshake_timeout=TIMEOUT) as conn:
                conn.send(text)
                with pytest.raises(twspy.ConnectionClosed) as info:
                    conn.recv(TIMEOUT)
                assert (info.value.code, info.value.reason) == (code, reason)
        server.calls.wait(lambda items: any(i[0] == "server.onclose" for i in items))
        assert server.calls.named("server.onmessage") == [] and calls.named("after.on_message") == []
        assert calls.named("after.on_close")[0][2] == code
        errors = [r for r in caplog.records if r.levelname == "ERROR" and r.name == "twspy.filters"]
        assert len(errors) == (1 if code == 1011 else 0)  # only a bug is logged with its traceback
        with twspy.connect(url(server), handshake_timeout=TIMEOUT) as other:
            other.send("fine")
            assert other.recv(TIMEOUT).payload == "fine"

    def test_on_open_failure(self, serve):
        calls = Calls()

        class Gate(Filter):
            def on_open(self, client):
                if client.path == "/deny":
                    raise Reject(4001, "not today")

        server = serve(EchoAfterFilters, filters=[Recorder("first", calls), Gate(), Recorder("last", calls)])
        with twspy.connect(url(server, "/deny"), handshake_timeout=TIMEOUT) as conn:
            conn.send("sent before the close arrived")
            with pytest.raises(twspy.ConnectionClosed) as info:
                conn.recv(TIMEOUT)
            assert (info.value.code, info.value.reason) == (4001, "not today")
        calls.wait(lambda items: any(i[0] == "last.on_close" for i in items))
        assert server.calls.named("server.onopen") == []  # the server's onopen did not run
        assert server.calls.named("server.onclose") == []  # so neither does its onclose
        assert server.calls.named("server.onmessage") == []  # nor anything after it
        assert calls.named("last.on_open") == [] and calls.named("first.on_message") == []
        # ... but on_close runs for every filter, once, with the code
        assert [i[0] for i in calls.items if i[0].endswith("on_close")] == ["first.on_close", "last.on_close"]
        assert {i[2] for i in calls.named("first.on_close") + calls.named("last.on_close")} == {4001}

    def test_on_close_exactly_once_per_client(self, serve):
        calls = Calls()
        server = serve(filters=[Welcome(), Recorder("r", calls), Strict()])
        conns = [twspy.connect(url(server, "/%d" % i), handshake_timeout=TIMEOUT) for i in range(3)]
        for conn in conns:
            assert conn.recv(TIMEOUT).payload == "welcome"
        conns[0].close(1000)
        conns[1].send("reject")  # closed by the server
        with pytest.raises(twspy.ConnectionClosed):
            conns[1].recv(TIMEOUT)
        conns[2].close(4321, "bye")
        closes = calls.wait(lambda items: len([i for i in items if i[0] == "r.on_close"]) == 3)
        closes = [i for i in closes if i[0] == "r.on_close"]
        opened = [i[1] for i in calls.named("r.on_open")]
        assert sorted(i[1] for i in closes) == sorted(opened) and len(set(opened)) == 3
        assert sorted(i[2] for i in closes) == [1000, 4000, 4321]
        for conn in conns:
            conn.close()

    def test_on_close_exception_is_logged_and_the_rest_run(self, caplog):
        calls = Calls()

        class Bad(Filter):
            def on_close(self, client, code, reason):
                raise RuntimeError("oops")

        class Client:
            id = "1"

        with caplog.at_level("ERROR", logger="twspy.filters"):
            run_close([Bad(), Recorder("r", calls)], Client(), 1000, "")
        assert calls.items == [("r.on_close", "1", 1000)]
        assert any("on_close failed" in r.getMessage() for r in caplog.records)

    @pytest.mark.parametrize("exc, code", [
        (Reject(4000, "x"), 4000), (Reject(), 1008), (ProtocolError("p", 1007), 1007),
        (twspy.PayloadTooBig("big"), 1009), (PermissionError(), 1008), (RuntimeError(), 1011), (ValueError(), 1011),
    ])
    def test_close_code_for(self, exc, code):
        assert close_code_for(exc) == code

    def test_reject_checks_its_code(self):
        for code in (999, 1005, 1006, 1015, 2000, 5000):
            with pytest.raises(ValueError):
                Reject(code)
        again = pickle.loads(pickle.dumps(Reject(4000, "x")))
        assert (again.code, again.reason, str(again)) == (4000, "x", "rejected with 4000 x")

    def test_unsendable_code_and_long_reason(self):
        closes = []

        class FakeClient:
            def start_close(self, code, reason):
                closes.append((code, reason))

        class Raise(Filter):
            def __init__(self, exc):
                self.exc = exc

            def on_open(self, client):
                raise self.exc

        assert run_open([Raise(ProtocolError("gone", 1006))], FakeClient()) is False
        assert run_open([Raise(Reject(4000, "é" * 100))], FakeClient()) is False
        assert closes[0] == (1011, "internal error")
        assert closes[1][0] == 4000 and closes[1][1] == "é" * 61  # 122 bytes: no half character

    def test_invalid_on_message_result(self):
        closes = []

        class FakeClient:
            def start_close(self, code, reason):
                closes.append((code, reason))

        class Wrong(Filter):
            def on_message(self, client, message):
                return 42

        client = FakeClient()
        assert run_message([Wrong()], client, twspy.TextMessage("x")) is None
        assert closes == [(1011, "internal error")]
        # once a filter closed a client, nothing more from it goes through the chain
        assert run_message([Upper()], client, twspy.TextMessage("y")) is None


# -- BearerAuth ---------------------------------------------------------------------------------

class TokenServer(EchoAfterFilters):
    def onopen(self, client):
        self.calls.add("token", client.request.state.get("token"))


class TestBearerAuth:
    def test_header_accepted(self, serve):
        server = serve(TokenServer, filters=[BearerAuth(["t1", "t2"])])
        for token in ("t1", "t2"):
            with twspy.connect(url(server), headers={"Authorization": "Bearer " + token},
                               handshake_timeout=TIMEOUT) as conn:
                conn.send("in")
                assert conn.recv(TIMEOUT).payload == "in"
        assert server.calls.named("token") == [("token", "t1"), ("token", "t2")]

    def test_query_accepted(self, serve):
        server = serve(TokenServer, filters=[BearerAuth("t1")])
        with twspy.connect(url(server, "/room?a=1&token=t1"), handshake_timeout=TIMEOUT) as conn:
            conn.send("in")
            assert conn.recv(TIMEOUT).payload == "in"
        assert server.calls.named("token") == [("token", "t1")]

    def test_missing(self, serve):
        server = serve(TokenServer, filters=[BearerAuth(["t1"])])
        for kwargs in ({}, {"headers": {"Authorization": "Basic dTpw"}}, {"target": "/?token="}):
            exc = refused(url(server, kwargs.pop("target", "/")), **kwargs)
            assert exc.status == 401
            assert exc.headers["WWW-Authenticate"] == 'Bearer realm="twspy"'
        assert server.calls.named("token") == []

    def test_wrong(self, serve):
        server = serve(TokenServer, filters=[BearerAuth(["t1", "t2"], realm="chat")])
        for kwargs in ({"headers": {"Authorization": "Bearer t3"}}, {"target": "/?token=t11"}):
            exc = refused(url(server, kwargs.pop("target", "/")), **kwargs)
            assert exc.status == 401
            assert exc.headers["WWW-Authenticate"] == 'Bearer realm="chat", error="invalid_token"'
        assert get(server.address[1], "/", [("Authorization", "bearer t3")]).startswith(b"HTTP/1.1 401 ")

    def test_runs_before_the_upgrade_checks(self, serve):
        server = serve(filters=[BearerAuth("t1")])
        answer = get(server.address[1], "/")  # not even a WebSocket request: 401 rather than 426
        assert answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
        assert b'WWW-Authenticate: Bearer realm="twspy"\r\n' in answer

    def test_needs_a_token(self):
        for tokens in ([], "", ["ok", ""], ()):
            with pytest.raises(ValueError):
                BearerAuth(tokens)
        assert BearerAuth.from_options({"token": ["a", "b"]}).tokens == [b"a", b"b"]
        with pytest.raises(ValueError):
            BearerAuth.from_options({"token": []})
        assert "s3cret" not in repr(BearerAuth("s3cret"))

    def test_non_ascii_token_in_a_header(self):
        auth = BearerAuth("κλειδί")
        # A header arrives decoded as latin-1: the filter compares the bytes that were sent.
        sent = "Bearer " + "κλειδί".encode().decode("latin-1")
        request = Request("GET", "/", "HTTP/1.1", Headers([("Authorization", sent)]))
        assert auth.on_connect(request) is None and request.state["token"] == "κλειδί"
        request = Request("GET", "/?token=%CE%BA%CE%BB%CE%B5%CE%B9%CE%B4%CE%AF", "HTTP/1.1", Headers())
        assert auth.on_connect(request) is None and request.state["token"] == "κλειδί"

    def test_applies_to_mux_channels(self, serve):
        server = serve(TokenServer, filters=[BearerAuth("t1")], extensions=[Multiplex()])
        assert refused(url(server)).status == 401  # the physical connection too
        with connect_multiplexed(url(server, "/main?token=t1"), handshake_timeout=TIMEOUT) as mux:
            with pytest.raises(HandshakeError):
                mux.open_channel("/other", timeout=TIMEOUT)  # no token: refused
            chan = mux.open_channel("/other?token=t1", timeout=TIMEOUT)
            chan.send("over mux")
            assert chan.recv(TIMEOUT).payload == "over mux"
            chan.close()
        wait_for(lambda: not server.clients)
        assert server.calls.named("token") == [("token", "t1"), ("token", "t1")]  # only the two with the token

    def test_mux_channel_refusal_status(self, serve):
        server = serve(filters=[BearerAuth("t1")], extensions=[Multiplex()])
        with connect_multiplexed(url(server, "/main?token=t1"), handshake_timeout=TIMEOUT) as mux:
            with pytest.raises(HandshakeError) as info:
                mux.open_channel("/other", timeout=TIMEOUT)
        assert info.value.status == 401
        assert info.value.headers["WWW-Authenticate"] == 'Bearer realm="twspy"'


class TestDuckTypedFilters:
    """The hooks are all optional: any object with some of them is a filter (module docstring)."""

    class OnlyMessage:  # not a Filter subclass, and no on_connect/on_open/on_close
        def on_message(self, client, message):
            return message.payload + "!"

    class OnlyClose:
        def __init__(self):
            self.closed = []

        def on_close(self, client, code, reason):
            self.closed.append((code, reason))

    def test_missing_hooks_are_skipped(self):
        only_message, only_close = self.OnlyMessage(), self.OnlyClose()
        chain = [only_close, only_message, Upper()]
        request = Request("GET", "/", "HTTP/1.1", Headers())
        assert run_connect(chain, request) is None
        assert run_connect([only_message, BearerAuth("t")], request)[0] == 401  # the next filter still answers
        assert run_open(chain, object()) is True
        assert run_message(chain, object(), twspy.TextMessage("hi")) == twspy.TextMessage("HI!")
        run_close([only_message, only_close], object(), 1001, "bye")
        assert only_close.closed == [(1001, "bye")]

    def test_from_options_default_builds_without_settings(self):
        class Plain(Filter):
            pass

        built = Plain.from_options({"port": 8000, "token": ["ignored"]})
        assert type(built) is Plain and repr(built) == "<filter Plain>"
        assert type(Echo.from_options({})) is Echo


def test_send_on_a_closing_client_is_not_the_filters_fault(caplog):
    """A filter whose send meets a connection already closing: no second close, no ERROR log."""
    closes = []

    class ClosingClient:
        close_sent = True

        def start_close(self, code, reason):
            closes.append((code, reason))

        def send(self, message):
            raise twspy.ConnectionClosedOK(1000)

    with caplog.at_level("DEBUG", logger="twspy.filters"):
        client = ClosingClient()
        assert run_message([Echo()], client, twspy.TextMessage("x")) is None
        assert run_message([Upper()], client, twspy.TextMessage("y")) is None  # skipped from now on
    assert closes == []
    assert [r.levelname for r in caplog.records if r.name == "twspy.filters"] == ["DEBUG"]

    class OpenClient(ClosingClient):
        close_sent = False  # the same error on an open connection is the filter's: 1011

    with caplog.at_level("ERROR", logger="twspy.filters"):
        assert run_message([Echo()], OpenClient(), twspy.TextMessage("x")) is None
    assert closes == [(1011, "internal error")]
