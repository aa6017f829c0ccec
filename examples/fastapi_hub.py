"""A FastAPI app on the twspy hub: topics, send-to-id and broadcast across every worker and server
that shares the Redis URL (without one, this process only). Run it (twice, on two ports, for a
cluster)::

    pip install fastapi uvicorn 'twspy[redis]'
    TWSPY_REDIS=redis://127.0.0.1:6379/0 uvicorn examples.fastapi_hub:app --port 8000

``/ws`` speaks the hub's JSON protocol (twspy.hub.TopicBroadcast: subscribe, publish, broadcast,
send_by_conn_id, with an ack once Redis accepted a publish); ``/chat/{room}`` is a room in a few
lines of your own code.
"""

import contextlib
import os

from fastapi import FastAPI, WebSocket

from twspy.asgi import Endpoint
from twspy.hub import Hub, TopicBroadcast

hub = Hub(os.environ.get("TWSPY_REDIS"))         # e.g. redis://127.0.0.1:6379/0
topics = Endpoint(hub=hub, filters=[TopicBroadcast()])
rooms = Endpoint(hub=hub)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    hub.close()


app = FastAPI(lifespan=lifespan)


@app.websocket("/ws")
async def ws(websocket: WebSocket) -> None:
    await topics.serve(websocket.scope, websocket.receive, websocket.send)


@app.websocket("/chat/{room}")
async def chat(websocket: WebSocket, room: str) -> None:
    async with rooms.accept(websocket.scope, websocket.receive, websocket.send) as conn:
        hub.subscribe(conn, "chat/" + room)
        async for message in conn:
            hub.publish("chat/" + room, "%s: %s" % (conn.id, message.payload))
