"""RFC 6455 conformance of the ws transport against a real parleyd, with
Debian's python3-websockets as the client (and raw frames where a library
would refuse to send what is being tested).

    test_ws_conformance.py PARLEYD PARLEY

Handshake (101 and Sec-WebSocket-Accept; wrong version 426; bad key 400;
foreign Origin 403), a fragmented request, ping/pong, the close handshake,
close codes with reasons for an oversize message (1009, after the error
object naming max_frame), a binary message (1003), invalid UTF-8 (1007),
malformed JSON (1007 after the error object), and the static files with
their security headers.
"""
import asyncio
import base64
import hashlib
import json
import os
import socket
import struct
import sys
import unittest
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "e2e"))
from harness import Cluster, test_failed  # noqa: E402

import websockets  # noqa: E402

PARLEYD, PARLEY = sys.argv[1], sys.argv[2]
del sys.argv[1:3]
MAX_FRAME = 4096
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


OPEN = []  # Raw sockets, closed after each test


class Raw:
    """A hand-made client for what libraries refuse to send."""

    def __init__(self, port, origin=None, version="13", key=None):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        OPEN.append(self.s)
        key = key or base64.b64encode(os.urandom(16)).decode()
        self.key = key
        head = ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: %s\r\n"
                % (port, key, version))
        if origin:
            head += "Origin: %s\r\n" % origin
        self.s.sendall((head + "\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            d = self.s.recv(4096)
            if not d:
                break
            self.buf += d
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.head = head.decode("latin-1")
        self.status = int(self.head.split()[1])

    def send_frame(self, opcode, payload, fin=True):
        mask = os.urandom(4)
        b0 = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            hdr = struct.pack("!BB", b0, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", b0, 0x80 | 127, n)
        body = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        self.s.sendall(hdr + mask + body)

    def read_frame(self):
        def need(n):
            while len(self.buf) < n:
                d = self.s.recv(65536)
                if not d:
                    raise EOFError("connection closed")
                self.buf += d
        need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n, at = b1 & 0x7F, 2
        if n == 126:
            need(4)
            n, at = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            need(10)
            n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
        need(at + n)
        payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
        return b0 & 0x0F, payload

    def read_until_close(self):
        """Messages before the close frame, and (code, reason)."""
        msgs = []
        while True:
            op, p = self.read_frame()
            if op == 0x8:
                code = struct.unpack("!H", p[:2])[0] if len(p) >= 2 else None
                return msgs, code, p[2:].decode()
            if op == 0x1:
                msgs.append(json.loads(p))


class Conformance(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = Cluster(PARLEYD, PARLEY, n=1, transport={"name": "ws", "ping_interval_s": 1},
                        extra={"max_frame": MAX_FRAME})
        cls.c.start_all()
        cls.port = cls.c.ports[0]
        cls.url = "ws://127.0.0.1:%d/ws" % cls.port

    @classmethod
    def tearDownClass(cls):
        cls.c.close()

    def tearDown(self):
        while OPEN:
            OPEN.pop().close()
        if test_failed(self):
            sys.stderr.write(self.c.log(0))

    def test_handshake_accept(self):
        r = Raw(self.port)
        self.assertEqual(r.status, 101, r.head)
        want = base64.b64encode(hashlib.sha1((r.key + GUID).encode()).digest()).decode()
        self.assertIn("Sec-WebSocket-Accept: " + want, r.head)

    def test_handshake_wrong_version(self):
        r = Raw(self.port, version="8")
        self.assertEqual(r.status, 426, r.head)
        self.assertIn("Sec-WebSocket-Version: 13", r.head)

    def test_handshake_bad_key(self):
        self.assertEqual(Raw(self.port, key="short").status, 400)

    def test_foreign_origin_refused(self):
        self.assertEqual(Raw(self.port, origin="http://evil.example").status, 403)
        self.assertEqual(Raw(self.port, origin="http://127.0.0.1:%d" % self.port).status, 101)

    def test_request_and_fragmented_request(self):
        async def go():
            async with websockets.connect(self.url) as ws:
                await ws.send(json.dumps({"m": "ping", "rid": 1}))
                self.assertEqual(json.loads(await ws.recv()), {"m": "ping", "rid": 1, "status": 0})
                # one request in three frames
                text = json.dumps({"m": "ping", "rid": 2})
                await ws.send(iter([text[:3], text[3:9], text[9:]]))
                self.assertEqual(json.loads(await ws.recv())["rid"], 2)
        run(go())

    def test_ping_pong_and_server_pings(self):
        async def go():
            async with websockets.connect(self.url, ping_interval=None) as ws:
                pong = await ws.ping(b"hello")
                await asyncio.wait_for(pong, 5)
                # ping_interval_s 1: an idle client is pinged (the library
                # answers), and the connection stays up past two intervals.
                await asyncio.sleep(2.5)
                await ws.send(json.dumps({"m": "ping", "rid": 3}))
                self.assertEqual(json.loads(await ws.recv())["rid"], 3)
        run(go())

    def test_close_handshake(self):
        async def go():
            ws = await websockets.connect(self.url)
            await ws.close(1000, "bye")
            self.assertEqual(ws.close_code, 1000)
        run(go())

    def test_oversize_message(self):
        r = Raw(self.port)
        r.send_frame(0x1, b'{"m":"ping","rid":4,"pad":"' + b"x" * (MAX_FRAME + 10) + b'"}')
        msgs, code, reason = r.read_until_close()
        self.assertEqual(code, 1009, reason)
        self.assertIn("max_frame", reason)
        self.assertEqual(msgs[0]["status"], 8, msgs)
        self.assertIn("max_frame", msgs[0]["error"])

    def test_oversize_fragmented_message(self):
        r = Raw(self.port)
        for _ in range(3):
            r.send_frame(0x1 if _ == 0 else 0x0, b"x" * 2000, fin=False)
        msgs, code, reason = r.read_until_close()
        self.assertEqual(code, 1009, reason)

    def test_binary_refused(self):
        r = Raw(self.port)
        r.send_frame(0x2, b"\x00\x01")
        msgs, code, reason = r.read_until_close()
        self.assertEqual(code, 1003, reason)
        self.assertIn("text", reason)

    def test_bad_utf8(self):
        r = Raw(self.port)
        r.send_frame(0x1, b'{"m":"ping","rid":5,"x":"\xc3\x28"}')
        msgs, code, reason = r.read_until_close()
        self.assertEqual(code, 1007)

    def test_malformed_json(self):
        r = Raw(self.port)
        r.send_frame(0x1, b"not json")
        msgs, code, reason = r.read_until_close()
        self.assertEqual(code, 1007, reason)
        self.assertEqual(msgs[0]["status"], 7, msgs)

    def test_unmasked_frame_is_a_protocol_error(self):
        r = Raw(self.port)
        r.s.sendall(b"\x81\x05hello")
        msgs, code, reason = r.read_until_close()
        self.assertEqual(code, 1002)

    def test_other_clients_unaffected(self):
        bad = Raw(self.port)
        bad.send_frame(0x1, b"x" * (MAX_FRAME * 2), fin=False)

        async def go():
            async with websockets.connect(self.url) as ws:
                await ws.send(json.dumps({"m": "ping", "rid": 6}))
                self.assertEqual(json.loads(await ws.recv())["rid"], 6)
        run(go())

    def test_static_files_and_headers(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/" % self.port, timeout=10) as r:
            csp = r.headers["Content-Security-Policy"]
            self.assertIn("script-src 'self'", csp)
            self.assertNotIn("unsafe-inline", csp)
            self.assertEqual(r.headers["X-Content-Type-Options"], "nosniff")
            self.assertIsNone(r.headers["Set-Cookie"])
            self.assertIn(b'<script type="module" src="/app.js">', r.read())
        with urllib.request.urlopen("http://127.0.0.1:%d/cluster.json" % self.port, timeout=10) as r:
            doc = json.loads(r.read())
            self.assertEqual(doc["servers"][0]["url"], self.url)
            self.assertEqual(doc["primary"], 0)
        for path in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/nope.js"):
            with self.assertRaises(urllib.error.HTTPError) as e:
                urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.port, path), timeout=10)
            self.assertEqual(e.exception.code, 404, path)


if __name__ == "__main__":
    unittest.main(verbosity=2)
