"""End-to-end: a real parleyd and the real `parley` CLI through the whole
feature table (DESIGN.md §1), once per wire format and store.

Run by meson (suite e2e) as:
  test_e2e.py PARLEYD PARLEY TRANSPORT_JSON STORE
"""
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster, test_failed, wait_until  # noqa: E402

PARLEYD, PARLEY, TRANSPORT, STORE = None, None, None, None


def messages(doc):
    """The message list of a read/history/conversation document."""
    if isinstance(doc, list):
        return doc
    return doc["messages"]


class E2E(unittest.TestCase):
    def setUp(self):
        self.c = Cluster(PARLEYD, PARLEY, n=1, transport=TRANSPORT, store=STORE)
        self.c.start(0)

    def tearDown(self):
        if test_failed(self):
            sys.stderr.write("---- server log ----\n%s\n" % self.c.log(0))
        self.c.close()

    # ---- the feature table ----
    def test_feature_table(self):
        c = self.c
        for u in ("alice", "bob", "bobby", "carol"):
            c.register(u)
        r = c.cli("x", "register", "alice", "--password-stdin", stdin="another pw\n")
        self.assertEqual(r.returncode, 1, "duplicate register must be refused: %r" % (r.stderr,))
        self.assertIn("taken", r.stderr)
        r = c.cli("x", "register", "bad name!", "--password-stdin", stdin="long enough\n")
        self.assertEqual(r.returncode, 1, r.stderr)
        r = c.cli("x", "register", "shorty", "--password-stdin", stdin="short\n")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("8", r.stderr, "the error names the limit")

        # wrong password: one generic error
        r = c.cli("alice", "login", "alice", "--password-stdin", stdin="wrong password\n")
        self.assertEqual(r.returncode, 1)
        r2 = c.cli("alice", "login", "nobody", "--password-stdin", stdin="wrong password\n")
        self.assertEqual(r2.returncode, 1)
        self.assertEqual(r.stderr, r2.stderr, "unknown user and wrong password look the same")

        self.assertEqual(c.login("alice")["unread"], 0)
        self.assertEqual(c.login("bob")["unread"], 0)

        users = c.cli_json("alice", "users", "b*")
        self.assertEqual(users["users"], ["bob", "bobby"])
        self.assertFalse(users["more"])
        page = c.cli_json("alice", "users", "*", "--limit", "2")
        self.assertEqual(page["users"], ["alice", "bob"])
        self.assertTrue(page["more"])
        page = c.cli_json("alice", "users", "*", "--limit", "2", "--offset", "2")
        self.assertEqual(page["users"], ["bobby", "carol"])
        self.assertFalse(page["more"])
        self.assertEqual(c.cli_json("alice", "users", "b?b")["users"], ["bob"])

        sent = c.cli_json("alice", "send", "bob", "hello", "bob")
        self.assertGreater(sent["id"], 0)
        r = c.cli("alice", "send", "nobody", "hi")
        self.assertEqual(r.returncode, 1)
        for i in range(3):
            c.cli_json("alice", "send", "bob", "msg %d" % i)
        counts = c.cli_json("bob", "unread")
        self.assertEqual((counts["unread"], counts["read"]), (4, 0))

        got = messages(c.cli_json("bob", "read", "-n", "1"))
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0]["body"], "hello bob")
        self.assertEqual(got[0]["from"], "alice")
        self.assertEqual(got[0]["id"], sent["id"])
        rest = messages(c.cli_json("bob", "read"))
        self.assertEqual([m["body"] for m in rest], ["msg 0", "msg 1", "msg 2"])
        self.assertEqual(messages(c.cli_json("bob", "read")), [])
        counts = c.cli_json("bob", "unread")
        self.assertEqual((counts["unread"], counts["read"]), (0, 4))

        hist = c.cli_json("bob", "history", "--limit", "2")
        self.assertEqual([m["body"] for m in messages(hist)], ["msg 2", "msg 1"])
        self.assertTrue(hist["more"] if isinstance(hist, dict) else True)
        hist = c.cli_json("bob", "history", "--limit", "2", "--offset", "2")
        self.assertEqual([m["body"] for m in messages(hist)], ["msg 0", "hello bob"])

        c.cli_json("bob", "send", "alice", "hi alice")
        convo = messages(c.cli_json("alice", "conversation", "bob"))
        self.assertEqual([m["body"] for m in convo][:2], ["hi alice", "msg 2"])

        # bob deletes a message: gone for bob, alice keeps her copy
        c.cli("bob", "delete", str(sent["id"]), check=0)
        self.assertNotIn(sent["id"], [m["id"] for m in messages(c.cli_json("bob", "history", "--limit", "100"))])
        self.assertIn(sent["id"], [m["id"] for m in messages(c.cli_json("alice", "conversation", "bob", "--limit", "100"))])
        # carol cannot delete alice's message by guessing its id
        c.login("carol")
        r = c.cli("carol", "delete", str(sent["id"]))
        self.assertEqual(r.returncode, 1)
        self.assertIn(sent["id"], [m["id"] for m in messages(c.cli_json("alice", "conversation", "bob", "--limit", "100"))])

        # delete-account keeps messages already sent to others
        c.cli("bob", "delete-account", "--password-stdin", stdin="correct horse\n", check=0)
        r = c.cli("bob", "login", "bob", "--password-stdin", stdin="correct horse\n")
        self.assertEqual(r.returncode, 1)
        self.assertIn("hi alice", [m["body"] for m in messages(c.cli_json("alice", "read"))])
        # the name is free again and the new account starts empty
        c.register("bob")
        self.assertEqual(c.login("bob")["unread"], 0)
        self.assertEqual(messages(c.cli_json("bob", "history")), [])

        c.cli("alice", "logout", check=0)
        r = c.cli("alice", "unread")
        self.assertEqual(r.returncode, 1, "a logged-out session is refused")

    def test_live_push_and_resume(self):
        c = self.c
        c.register("alice"); c.register("bob")
        c.login("alice"); c.login("bob")
        lp = c.listen("bob")
        try:
            # No wait for the subscription: messages sent before it lands are
            # unread, and subscribing pushes the unread backlog first.
            ids = [c.cli_json("alice", "send", "bob", "live %d" % i)["id"] for i in range(5)]
            seen = []
            deadline = time.monotonic() + 10
            while len(seen) < 5 and time.monotonic() < deadline:
                line = lp.stdout.readline()
                if not line:
                    break
                seen.append(json.loads(line))
            self.assertEqual([m["id"] for m in seen], ids, "every push once, in order")
            self.assertEqual([m["body"] for m in seen], ["live %d" % i for i in range(5)])
        finally:
            lp.send_signal(signal.SIGINT)
            lp.wait(timeout=10)
            lp.stdout.close()
            lp.stderr.close()
        self.assertEqual(lp.returncode, 0)
        # listen acks what it printed: nothing is left unread
        self.assertEqual(c.cli_json("bob", "unread")["unread"], 0)

    def test_logout_ends_pushes(self):
        # A connection subscribed with a session gets no more pushes once
        # that session logs out; the message stays unread for the next one.
        c = self.c
        c.register("alice"); c.register("bob")
        c.login("alice"); c.login("bob")
        lp = c.listen("bob")
        try:
            first = c.cli_json("alice", "send", "bob", "before logout")["id"]
            ready, _, _ = select.select([lp.stdout], [], [], 10)
            self.assertTrue(ready, "the subscribed listener got no push within 10 s")
            self.assertEqual(json.loads(lp.stdout.readline())["id"], first)
            c.cli("bob", "logout", check=0)
            c.cli_json("alice", "send", "bob", "after logout")
            ready, _, _ = select.select([lp.stdout], [], [], 1.5)
            self.assertFalse(ready, "a push reached a connection whose session logged out: %r"
                             % (lp.stdout.readline() if ready else ""))
        finally:
            lp.send_signal(signal.SIGINT)
            lp.wait(timeout=10)
            lp.stdout.close()
            lp.stderr.close()
        c.login("bob")
        self.assertIn("after logout", [m["body"] for m in messages(c.cli_json("bob", "read"))])

    def test_restart_keeps_every_message(self):
        c = self.c
        c.register("alice"); c.register("bob")
        c.login("alice")
        ids = [c.cli_json("alice", "send", "bob", "keep %d" % i)["id"] for i in range(20)]
        self.assertEqual(c.stop(0), 0, "SIGTERM exits 0")
        self.assertIn("stop", c.log(0).lower())
        c.start(0)
        c.login("bob")
        got = messages(c.cli_json("bob", "read"))
        self.assertEqual([m["id"] for m in got], ids)
        # kill -9 after acknowledged sends: still nothing lost
        more = [c.cli_json("alice", "send", "bob", "after %d" % i)["id"] for i in range(10)]
        c.kill(0)
        c.start(0)
        got = messages(c.cli_json("bob", "read"))
        self.assertEqual([m["id"] for m in got], more)

    def test_hostile_input_leaves_others_served(self):
        c = self.c
        c.register("alice")
        c.login("alice")
        port = c.ports[0]
        # a half-sent frame held open while others are served
        stall = socket.create_connection(("127.0.0.1", port))
        stall.sendall(b"\x00\x00\x01\x00\x05")
        # garbage
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(os.urandom(4096))
            s.settimeout(5)
            try:
                while s.recv(65536):
                    pass
            except (socket.timeout, ConnectionResetError):
                pass
        # a 100 MB length prefix (binary/grpcish) or an endless line (json)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(struct.pack(">I", 100 * 1000 * 1000) + b"x" * 1000)
            s.sendall(b"\x00" + struct.pack(">I", 100 * 1000 * 1000))
            s.settimeout(5)
            try:
                s.sendall(b"{" * (2 * 1024 * 1024))
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                pass
        self.assertEqual(c.cli_json("alice", "unread")["unread"], 0)
        stall.sendall(b"\xff" * 10)
        stall.close()
        self.assertIsNone(c.procs[0].poll(), "server still running")
        self.assertEqual(len(c.cli_json("alice", "status")["servers"]), 1)


def main():
    global PARLEYD, PARLEY, TRANSPORT, STORE
    if len(sys.argv) < 5:
        sys.exit("usage: test_e2e.py PARLEYD PARLEY TRANSPORT_JSON STORE [unittest args]")
    PARLEYD, PARLEY = sys.argv[1], sys.argv[2]
    TRANSPORT, STORE = json.loads(sys.argv[3]), sys.argv[4]
    unittest.main(argv=[sys.argv[0]] + sys.argv[5:], verbosity=2)


if __name__ == "__main__":
    main()
