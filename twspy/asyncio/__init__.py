"""twspy on an asyncio event loop: :func:`connect`, :func:`serve`, :class:`Server`, :class:`Connection`.

Imported explicitly (``import twspy.asyncio``); ``import twspy`` does not load asyncio. The
connection is driven by the same sans-I/O core as every other twspy layer
(:mod:`twspy.protocol`): the rules of RFC 6455 live there, this package moves bytes::

    from twspy.asyncio import connect, serve

    async def echo(client):
        async for message in client:
            await client.send(message)

    async with serve(echo, "127.0.0.1", 8765):
        async with connect("ws://127.0.0.1:8765") as conn:
            await conn.send("hello")
            print(await conn.recv())
"""

from __future__ import annotations

from .client import connect
from .connection import Connection
from .server import Server, ServerConnection, serve

__all__ = ["connect", "serve", "Server", "ServerConnection", "Connection"]
