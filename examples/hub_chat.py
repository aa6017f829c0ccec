"""A chat room across servers: start it twice with one Redis URL, one port each, and the
clients of both servers share the room. Without a URL it is a one-process room."""

import logging
import sys

import twspy
from twspy.hub import Hub


class Room(twspy.Server):
    def onopen(self, client):
        self.hub.subscribe(client, "room/lobby")

    def onmessage(self, client, message):
        self.hub.publish("room/lobby", "%s: %s" % (client.id, message.payload))


logging.basicConfig(level=logging.INFO)
port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
hub = Hub(sys.argv[2] if len(sys.argv) > 2 else None)  # e.g. redis://127.0.0.1:6379/0
server = Room(("127.0.0.1", port), hub=hub)
print("listening on ws://127.0.0.1:%d/" % server.address[1], flush=True)
server.run()
hub.close()
