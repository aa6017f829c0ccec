"""A server composed from filters: a bearer token checked before the upgrade, a filter of
our own that shouts, the bundled echo; and a health check answered without upgrading."""

import logging
import sys

import twspy
from twspy.filters import BearerAuth, Echo, Filter
from twspy.message import TextMessage


class Shout(Filter):
    def on_message(self, client, message):
        if isinstance(message, TextMessage):
            return message.payload.upper()  # the next filter gets the new text
        return message


class Service(twspy.Server):
    def process_request(self, request):
        if request.method == "GET" and request.path == "/healthz":
            return 200, "ok\n"  # plain HTTP answer; None goes on to the upgrade


logging.basicConfig(level=logging.INFO)
port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
server = Service(("127.0.0.1", port), filters=[BearerAuth("s3cret"), Shout(), Echo()])
print("listening on ws://127.0.0.1:%d/ (token s3cret)" % server.address[1], flush=True)
server.run()
