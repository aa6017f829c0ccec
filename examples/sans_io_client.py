"""A client on the sans-I/O core: the protocol decides, a plain socket moves the bytes."""

import socket
import sys

from twspy.handshake_protocol import ClientProtocol
from twspy.protocol import CLOSED


def send(proto, sock):
    """Write what the protocol wants sent; b"" means half-close."""
    for data in proto.data_to_send():
        if data:
            sock.sendall(data)
        else:
            sock.shutdown(socket.SHUT_WR)


def events(proto, sock):
    """Feed the socket's bytes to the protocol, answer, and yield what it received."""
    while proto.state is not CLOSED:
        data = sock.recv(65536)
        if data:
            proto.receive_data(data)
        else:
            proto.receive_eof()
        send(proto, sock)  # pongs, the close echo...
        yield from proto.events_received()


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
proto = ClientProtocol(host="127.0.0.1:%d" % port, location="/")
with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
    send(proto, sock)  # the upgrade request
    received = events(proto, sock)
    next(received, None)  # the server's Response
    if proto.handshake_exc is not None:
        raise proto.handshake_exc
    proto.send_text("Hello")
    send(proto, sock)
    print(next(received))
    proto.send_close(1000)
    send(proto, sock)
    for event in received:  # until the server closes TCP
        print(event)
print("closed with", proto.close_code)
