"""CPU per node exchange of the gateway's node client (`sollol.gateway.http1.LeanTransport`).

An in-process node that answers at once (a whole JSON answer, or 9 NDJSON chunks), uvloop, best of
5 x 3000 exchanges: `python benchmarks/gateway_client.py`.
"""

import asyncio
import json
import time

import uvloop

from sollol.gateway.http1 import LeanTransport
from sollol.http import HttpRequest
from sollol.node import Node

BODY = json.dumps(
    {
        "model": "m",
        "created_at": "2024-01-01T00:00:00.000000000Z",
        "message": {"role": "assistant", "content": "hello there"},
        "done": True,
        "done_reason": "stop",
        "total_duration": 1,
        "eval_count": 3,
    }
).encode()
NS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
line = b'{"model":"m","created_at":"x","message":{"role":"assistant","content":"hi"},"done":false}\n'
ST = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"%x\r\n%s\r\n" % (len(line), line) for _ in range(9))
    + b"0\r\n\r\n"
)


class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t

    def data_received(self, d):
        self.t.write(ST if b"/s" in d.split(b"\r\n", 1)[0] else NS)


async def main():
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(P, "127.0.0.1", 0)
    node = Node(host="127.0.0.1", port=srv.sockets[0].getsockname()[1])
    tr = LeanTransport()
    req = HttpRequest.post("/api/chat", json={"model": "m"})
    sreq = HttpRequest.post("/s", json={"model": "m"}, stream=True)

    async def one():
        r = await tr.send(node, req)
        r.json()

    async def strm():
        async with tr.stream(node, sreq) as r:
            async for p in r.pieces():
                pass

    for name, f in (("send", one), ("stream", strm)):
        best = 1e9
        for _ in range(5):
            c = time.process_time()
            for _ in range(3000):
                await f()
            best = min(best, (time.process_time() - c) / 3000 * 1e6)
        print(name, f"{best:.1f} us")
    await tr.aclose()


uvloop.run(main())
