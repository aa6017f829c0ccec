"""`twspy.asyncio.connect`: a client on an event loop (permessage-deflate is offered by default)."""

import asyncio
import sys

from twspy.asyncio import connect


async def main(url):
    async with connect(url) as conn:
        await conn.send("Hello")
        print(await conn.recv(timeout=5))
        print(await conn.recv(timeout=5))
        pong = await conn.ping()
        latency = await asyncio.wait_for(pong, 5)
        print("pong after %s" % ("< 1 s" if latency < 1 else "%.1f s" % latency))
    print("closed with", conn.close_code)


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8000/"))
