"""`twspy.asyncio.Server`: a chat on one event loop; every message goes to everyone."""

import asyncio
import sys

from twspy.asyncio import Server


class Chat(Server):
    async def onopen(self, client):
        self.broadcast("%s joined (%d here)" % (client.id, len(self.clients)))

    async def onmessage(self, client, message):
        self.broadcast("%s: %s" % (client.id, message))  # never waits on a slow client

    async def onclose(self, client, code, reason):
        self.broadcast("%s left" % client.id)


async def main(port):
    async with Chat(("127.0.0.1", port)) as server:
        print("chat on ws://127.0.0.1:%d/" % server.port, flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8000))
    except KeyboardInterrupt:
        pass
