"""wss://: a `Server` with TLS, and a client that trusts its (self-signed test) certificate."""

import os
import ssl

import twspy

certs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "certs")

server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_context.load_cert_chain(os.path.join(certs, "localhost.pem"), os.path.join(certs, "localhost.key"))


class Echo(twspy.Server):
    def onmessage(self, client, message):
        client.send(message)


with Echo(("127.0.0.1", 0), ssl=server_context) as server:
    server.serve_in_thread()
    client_context = ssl.create_default_context(cafile=os.path.join(certs, "localhost.pem"))
    with twspy.connect("wss://localhost:%d/" % server.address[1], ssl=client_context) as conn:
        conn.send("over TLS")
        print(conn.recv(timeout=5))
