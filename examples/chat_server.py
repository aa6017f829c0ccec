"""A `Server` subclass: a chat room. Every message goes to every client; Ctrl-C stops it."""

import logging
import sys

import twspy


class Chat(twspy.Server):
    def onopen(self, client):
        self.broadcast("%s joined (%d here)" % (client.id, len(self.clients)))

    def onmessage(self, client, message):
        self.broadcast("%s: %s" % (client.id, message.payload))

    def onclose(self, client, code, reason):
        self.broadcast("%s left" % client.id)


logging.basicConfig(level=logging.INFO)
port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
server = Chat(("127.0.0.1", port))
print("listening on ws://127.0.0.1:%d/" % server.address[1], flush=True)
server.run()
