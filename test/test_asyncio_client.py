"""twspy.asyncio.connect: TLS, redirects, auth, headers, timeouts; and interop with the threaded
twspy server/client and with the `websockets` package, both ways."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import warnings

import pytest
import websockets

import twspy
from twspy.asyncio import connect, serve
from twspy.client import basic_auth
from twspy.errors import ConnectionClosed, HandshakeError
from twspy.message import TextMessage

HERE = os.path.dirname(os.path.abspath(__file__))
CERT = os.path.join(HERE, "certs", "localhost.pem")
KEY = os.path.join(HERE, "certs", "localhost.key")
T = 5.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def echo(client):
    async for message in client:
        await client.send(message)


def test_wss_with_sni_and_certificate_check():
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(CERT, KEY)
    names = []
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)
    client_ctx = ssl.create_default_context(cafile=CERT)

    async def main():
        async with serve(echo, "127.0.0.1", 0, ssl=server_ctx) as server:
            async with connect("wss://localhost:%d" % server.port, ssl=client_ctx) as conn:
                await conn.send("secret")
                assert await asyncio.wait_for(conn.recv(), T) == TextMessage("secret")
            assert names == ["localhost"]
            with pytest.raises(ssl.SSLCertVerificationError):  # by default: the system's CAs only
                await asyncio.wait_for(connect("wss://localhost:%d" % server.port), T)
    run(main())


def test_redirect_basic_auth_and_extra_headers():
    seen = []

    def process_request(request):
        path, headers = request.path, request.headers
        seen.append((path, headers.get("Authorization"), headers.get("X-Extra")))
        if path == "/old":
            return 302, [("Location", "/new")], b""
        if headers.get("Authorization") != basic_auth("user", "pw"):
            return 401, [("WWW-Authenticate", 'Basic realm="x"')], b""
        return None

    async def main():
        async with serve(echo, "127.0.0.1", 0, process_request=process_request) as server:
            url = "ws://user:pw@127.0.0.1:%d/old" % server.port
            async with connect(url, headers=[("X-Extra", "1")]) as conn:
                await conn.send("in")
                assert await asyncio.wait_for(conn.recv(), T) == TextMessage("in")
        assert seen == [("/old", None, "1"), ("/new", None, "1"), ("/new", basic_auth("user", "pw"), "1")]
    run(main())


def test_redirect_to_another_host_drops_credentials():
    seen = []

    def process_request(request):
        path, headers = request.path, request.headers
        seen.append((path, headers.get("Host").split(":")[0], headers.get("Authorization")))
        if path == "/login":
            if headers.get("Authorization") is None:
                return 401, [("WWW-Authenticate", 'Basic realm="x"')], b""
            return 302, [("Location", "ws://localhost:%s/elsewhere" % headers.get("Host").split(":")[1])], b""
        return None

    async def main():
        async with serve(echo, "127.0.0.1", 0, process_request=process_request) as server:
            async with connect("ws://user:pw@127.0.0.1:%d/login" % server.port):
                pass
        assert seen[-1] == ("/elsewhere", "localhost", None)
        assert seen[1][2] == basic_auth("user", "pw")
    run(main())


def test_open_timeout_on_a_server_that_never_answers():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        async def main():
            with pytest.raises(TimeoutError):
                await connect("ws://127.0.0.1:%d" % listener.getsockname()[1], handshake_timeout=0.1)
        run(main())
    finally:
        listener.close()


def test_refused_connection_is_an_os_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()

    async def main():
        with pytest.raises(OSError):
            await asyncio.wait_for(connect("ws://127.0.0.1:%d" % port), T)
    run(main())


def test_asyncio_client_with_threaded_server(serve):
    server = serve(twspy.Server)

    class Echo(twspy.Server):
        def onmessage(self, client, message):
            client.send(message)

    server = serve(Echo)

    async def main():
        async with connect("ws://127.0.0.1:%d" % server.address[1]) as conn:
            assert [c.name for c in conn.core.extensions] == ["permessage-deflate"]
            for message in ("a", b"b" * 100000):
                await conn.send(message)
                assert (await asyncio.wait_for(conn.recv(), T)).payload == message
        assert conn.close_code == 1000
    run(main())


def test_threaded_client_with_asyncio_server():
    ready = threading.Event()
    results = []

    def client(port):
        with twspy.connect("ws://127.0.0.1:%d" % port, handshake_timeout=T) as conn:
            results.append([c.name for c in conn.sock.extensions])
            for message in ("a", b"b" * 100000):
                conn.send(message)
                results.append(conn.recv(timeout=T).payload == message)

    async def main():
        async with serve(echo, "127.0.0.1", 0) as server:
            thread = threading.Thread(target=client, args=(server.port,))
            thread.start()
            ready.set()
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 10)
    run(main())
    assert results == [["permessage-deflate"], True, True]


def test_websockets_client_with_asyncio_server_and_back():
    async def ws_echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        async with serve(echo, "127.0.0.1", 0) as server:
            async with websockets.connect("ws://127.0.0.1:%d" % server.port) as ws:
                assert ws.protocol.extensions[0].name == "permessage-deflate"
                await ws.send("x" * 5000)
                assert await asyncio.wait_for(ws.recv(), T) == "x" * 5000
                await ws.send(b"\x01" * 70000)
                assert await asyncio.wait_for(ws.recv(), T) == b"\x01" * 70000
        async with websockets.serve(ws_echo, "127.0.0.1", 0) as ws_server:
            port = ws_server.sockets[0].getsockname()[1]
            async with connect("ws://127.0.0.1:%d" % port) as conn:
                assert [c.name for c in conn.core.extensions] == ["permessage-deflate"]
                await conn.send("y" * 5000)
                assert await asyncio.wait_for(conn.recv(), T) == TextMessage("y" * 5000)
                pong = await conn.ping()
                await asyncio.wait_for(pong, T)
            assert conn.close_code == 1000
    run(main())


def test_server_closing_mid_iteration_with_an_error_code_raises():
    async def main():
        async def ws_handler(ws):
            await ws.close(4001, "nope")

        async with websockets.serve(ws_handler, "127.0.0.1", 0) as ws_server:
            port = ws_server.sockets[0].getsockname()[1]
            async with connect("ws://127.0.0.1:%d" % port) as conn:
                with pytest.raises(ConnectionClosed) as info:
                    async for _ in conn:
                        pass
            assert (info.value.code, info.value.reason) == (4001, "nope")
    run(main())


def test_handshake_error_carries_the_status():
    async def main():
        async with serve(echo, "127.0.0.1", 0, locations=["/only"]) as server:
            with pytest.raises(HandshakeError) as info:
                await asyncio.wait_for(connect("ws://127.0.0.1:%d/other" % server.port), T)
            assert info.value.status == 403
    run(main())


def test_timeout_is_a_deprecated_spelling_of_handshake_timeout():
    """One option vocabulary with the threaded connect(): handshake_timeout, timeout= warns."""
    from twspy.asyncio.client import connect as aconnect
    with pytest.warns(DeprecationWarning, match="handshake_timeout"):
        assert aconnect("ws://127.0.0.1:1/", timeout=3).handshake_timeout == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert aconnect("ws://127.0.0.1:1/", handshake_timeout=4).handshake_timeout == 4
        assert aconnect("ws://127.0.0.1:1/").handshake_timeout == 10.0


def test_credential_headers_do_not_follow_a_redirect_to_another_port():
    """Issue 17 item 1 in the asyncio client too (it kept Authorization and Cookie): a redirect
    to another scheme, host or port drops them; on the same origin they stay."""
    secrets = {"Authorization": "Bearer s3cret", "cookie": "sid=1", "PROXY-AUTHORIZATION": "Basic eDp5"}
    seen = []

    def target_request(request):
        path, headers = request.path, request.headers
        seen.append(("target", path, {k.lower() for k, _ in headers.items()}))

    async def main():
        async with serve(echo, "127.0.0.1", 0, process_request=target_request) as target:
            def redirect(request):
                path, headers = request.path, request.headers
                seen.append(("redirector", path, {k.lower() for k, _ in headers.items()}))
                if path == "/same":
                    return 302, [("Location", "/other")], b""
                if path == "/other":
                    return 302, [("Location", "ws://127.0.0.1:%d/next" % target.port)], b""
                return None

            async with serve(echo, "127.0.0.1", 0, process_request=redirect) as redirector:
                async with connect("ws://127.0.0.1:%d/same" % redirector.port, headers=secrets):
                    pass
        credentials = {"authorization", "cookie", "proxy-authorization"}
        assert [(who, path) for who, path, _ in seen] == [("redirector", "/same"), ("redirector", "/other"),
                                                          ("target", "/next")]
        assert credentials <= seen[0][2] and credentials <= seen[1][2]  # same origin: kept
        assert not credentials & seen[2][2]
    run(main())


def test_redirect_loop_is_a_redirect_error():
    def loop(request):
        return 307, [("Location", "/again")], b""

    async def main():
        async with serve(echo, "127.0.0.1", 0, process_request=loop) as server:
            with pytest.raises(twspy.RedirectError, match="too many redirects"):
                await connect("ws://127.0.0.1:%d/" % server.port)
    run(main())
