"""Many live connections on one server: 200 connections, each logged in as
its own user and subscribed, all receive their pushes; and one user's
several connections each receive every push (DESIGN.md §1, live delivery).

Speaks the tcp/json codec directly (docs/protocol.md), so one process can
hold hundreds of connections. Run by meson (suite e2e) as:
  test_many.py PARLEYD PARLEY
"""
import json
import os
import selectors
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster  # noqa: E402

PARLEYD = PARLEY = None
JSON_TCP = {"name": "tcp", "codec": "json"}
PASSWORD = "correct horse"
N = 200


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""
        self.rid = 0

    def send(self, m, **kw):
        self.rid += 1
        d = {"m": m, "rid": self.rid}
        d.update(kw)
        self.s.sendall((json.dumps(d) + "\n").encode())
        return self.rid

    def lines(self):
        """Whatever whole frames are buffered now (after a readable event)."""
        chunk = self.s.recv(65536)
        if not chunk:
            raise EOFError("connection closed by the server")
        self.buf += chunk
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            out.append(json.loads(line))
        return out

    def call(self, m, **kw):
        rid = self.send(m, **kw)
        while True:
            while b"\n" not in self.buf:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise EOFError("connection closed by the server")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            r = json.loads(line)
            if r.get("rid") == rid and r.get("m") != "push":
                if r.get("status") != 0:
                    raise AssertionError("%s failed: %r" % (m, r))
                return r


class ManyConnections(unittest.TestCase):
    def setUp(self):
        self.c = Cluster(PARLEYD, PARLEY, n=1, transport=JSON_TCP, store="sqlite")
        self.c.start(0)
        self.conns = []

    def tearDown(self):
        for k in self.conns:
            k.s.close()
        self.c.close()

    def conn(self):
        k = Conn(self.c.ports[0])
        self.conns.append(k)
        return k

    def collect(self, want, timeout=30):
        """Read pushes on every connection until each has `want[k]` of them."""
        sel = selectors.DefaultSelector()
        for k in want:
            sel.register(k.s, selectors.EVENT_READ, k)
        got = {k: [] for k in want}
        deadline = time.monotonic() + timeout
        while any(len(got[k]) < want[k] for k in want) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                k = key.data
                for r in k.lines():
                    if r.get("m") == "push":
                        got[k].append(r["msg"])
        sel.close()
        return got

    def test_200_connections_each_logged_in_and_receiving(self):
        admin = self.conn()
        for i in range(N):
            admin.call("register", username="u%03d" % i, password=PASSWORD)
        admin.call("register", username="sender", password=PASSWORD)
        listeners = []
        for i in range(N):
            k = self.conn()
            tok = k.call("login", username="u%03d" % i, password=PASSWORD)["token"]
            k.call("subscribe", token=tok)
            listeners.append(k)
        stok = admin.call("login", username="sender", password=PASSWORD)["token"]
        ids = {}
        for i in range(N):
            ids[i] = admin.call("send", token=stok, to="u%03d" % i, body="hello %d" % i)["id"]
        got = self.collect({k: 1 for k in listeners})
        for i, k in enumerate(listeners):
            msgs = got[k]
            self.assertEqual(len(msgs), 1, "connection %d got %d pushes" % (i, len(msgs)))
            self.assertEqual(int(msgs[0]["id"]), int(ids[i]))
            self.assertEqual(msgs[0]["body"], "hello %d" % i)
            self.assertEqual(msgs[0]["from"], "sender")

    def test_every_connection_of_a_user_receives(self):
        admin = self.conn()
        admin.call("register", username="ann", password=PASSWORD)
        admin.call("register", username="ben", password=PASSWORD)
        mine = []
        for _ in range(5):
            k = self.conn()
            tok = k.call("login", username="ann", password=PASSWORD)["token"]
            k.call("subscribe", token=tok)
            mine.append(k)
        btok = admin.call("login", username="ben", password=PASSWORD)["token"]
        sent = [int(admin.call("send", token=btok, to="ann", body="m%d" % i)["id"]) for i in range(3)]
        got = self.collect({k: 3 for k in mine})
        for k in mine:
            self.assertEqual([int(m["id"]) for m in got[k]], sent, "each connection, every push, in order")


def main():
    global PARLEYD, PARLEY
    PARLEYD, PARLEY = sys.argv[1], sys.argv[2]
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)


if __name__ == "__main__":
    main()
