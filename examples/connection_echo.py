"""A `Connection` subclass: an echo server with a thread per client, written by hand."""

import sys
import threading

import twspy


class Echo(twspy.Connection):
    def onopen(self):
        print("open", self.sock.address, flush=True)

    def onmessage(self, message):
        self.send(message)  # text stays text, binary stays binary

    def onclose(self, code, reason):
        print("closed", code, reason, flush=True)


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
server = twspy.websocket()
server.bind(("127.0.0.1", port))
server.listen()
print("listening on ws://127.0.0.1:%d/" % server.getsockname()[1], flush=True)
while True:
    client, address = server.accept()
    threading.Thread(target=Echo(client).receive_forever, daemon=True).start()
