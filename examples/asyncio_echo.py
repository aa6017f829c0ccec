"""`twspy.asyncio.serve`: a handler per client, and a client, in one program."""

import asyncio

from twspy.asyncio import connect, serve


async def echo(client):
    async for message in client:  # ends when the client closes with 1000 or 1001
        await client.send(message)


async def main():
    async with serve(echo, "127.0.0.1", 0) as server:
        async with connect("ws://127.0.0.1:%d/" % server.port) as conn:
            await conn.send("echo me")
            print(await conn.recv(timeout=5))


asyncio.run(main())
