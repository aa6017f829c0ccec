"""One node of a hub cluster, for the Redis tests: a Server with a Redis hub, the JSON topic
protocol and a log of opens/closes on stdout. Prints ``port N`` when it listens; stops when
stdin closes (or on SIGTERM/SIGKILL, which is how the tests crash it)."""

import argparse
import sys
import threading

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__file__)))

from twspy import Server  # noqa: E402
from twspy.filters import Log  # noqa: E402
from twspy.hub import Hub, TopicBroadcast  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--presence-ttl", type=float, default=1.0)
    parser.add_argument("--max-outbox", type=int, default=4 << 20)
    args = parser.parse_args()
    hub = Hub(args.redis, heartbeat=args.heartbeat, presence_ttl=args.presence_ttl)
    server = Server(("127.0.0.1", 0), hub=hub, filters=[Log(sys.stdout), TopicBroadcast()],
                    max_outbox=args.max_outbox, extensions=[])
    print("port %d node %s" % (server.address[1], hub.node_id), flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
    server.run()
    hub.close()


if __name__ == "__main__":
    main()
