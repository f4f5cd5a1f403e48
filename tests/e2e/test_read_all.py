"""`parley read` with no -n reads every unread message (issue 21): one read
op returns at most a page (PL_PAGE_MAX = 1000 messages, or PL_REPLY_BUDGET
bytes of bodies), and the CLI used to print the first page and stop
silently. It now reads page after page; `read -n N` says how many are left.

Messages are sent over one tcp/json connection, pipelined (docs/protocol.md),
so 1,155 sends take a moment; they are read through the real CLI. Run by
meson (suite e2e) as:  test_read_all.py PARLEYD PARLEY
"""
import json
import os
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster  # noqa: E402

PARLEYD = PARLEY = None
JSON_TCP = {"name": "tcp", "codec": "json"}
PASSWORD = "correct horse"


class Conn:
    """One tcp/json connection: requests pipelined, answers in order."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.f = self.s.makefile("rb")
        self.rid = 0

    def send(self, m, **kw):
        self.rid += 1
        d = {"m": m, "rid": self.rid}
        d.update(kw)
        self.s.sendall((json.dumps(d) + "\n").encode())
        return self.rid

    def answer(self, rid):
        while True:
            line = self.f.readline()
            if not line:
                raise EOFError("connection closed by the server")
            r = json.loads(line)
            if r.get("m") == "push" or r.get("rid") != rid:
                continue
            if r.get("status") != 0:
                raise AssertionError("request %d failed: %r" % (rid, r))
            return r

    def call(self, m, **kw):
        return self.answer(self.send(m, **kw))

    def close(self):
        self.f.close()
        self.s.close()


class ReadAll(unittest.TestCase):
    def setUp(self):
        self.c = Cluster(PARLEYD, PARLEY, n=1, transport=JSON_TCP, store="sqlite")
        self.c.start(0)
        self.k = Conn(self.c.ports[0])
        for u in ("alice", "bob", "carol", "dave"):
            self.k.call("register", username=u, password=PASSWORD)
        self.tok = self.k.call("login", username="alice", password=PASSWORD)["token"]

    def tearDown(self):
        self.k.close()
        self.c.close()

    def send_many(self, to, bodies):
        """Send bodies in order, 200 in flight at a time; returns the ids."""
        ids = []
        for i in range(0, len(bodies), 200):
            rids = [self.k.send("send", token=self.tok, to=to, body=b) for b in bodies[i:i + 200]]
            ids += [int(self.k.answer(r)["id"]) for r in rids]
        return ids

    def human(self, user, *args):
        env = dict(os.environ)
        env["PARLEY_SESSION"] = os.path.join(self.c.dir, "%s.session" % user)
        env.pop("PARLEY_CONFIG", None)
        return subprocess.run([PARLEY, "-c", self.c.config] + list(args), capture_output=True,
                              text=True, timeout=120, env=env)

    def test_read_without_n_reads_all_1155(self):
        """The reported case: 1,155 unread, one `parley read`, all of them."""
        ids = self.send_many("bob", ["message %d" % i for i in range(1155)])
        self.c.login("bob")
        self.assertEqual(self.c.cli_json("bob", "unread")["unread"], 1155)
        doc = self.c.cli_json("bob", "read", timeout=120)
        got = doc["messages"]
        self.assertEqual(len(got), 1155, "read with no -n returns every unread message")
        self.assertEqual([int(m["id"]) for m in got], ids, "oldest first, each once")
        self.assertEqual([m["body"] for m in got], ["message %d" % i for i in range(1155)])
        self.assertTrue(all(m["state"] == "read" for m in got), "every one marked read")
        self.assertFalse(doc["more"], "nothing is left")
        counts = self.c.cli_json("bob", "unread")
        self.assertEqual((counts["unread"], counts["read"]), (0, 1155))

    def test_read_without_n_human_output(self):
        """Human output: every message line, then how many pages it took."""
        self.send_many("carol", ["hi %d" % i for i in range(1001)])
        self.c.login("carol")
        r = self.human("carol", "read")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 1002, "1001 message lines and a summary: %r" % lines[-3:])
        self.assertTrue(lines[0].endswith("alice -> carol: hi 0"), lines[0])
        self.assertTrue(lines[1000].endswith("alice -> carol: hi 1000"), lines[1000])
        self.assertEqual(lines[-1], "(read 1001 messages in 2 pages)")
        r = self.human("carol", "read")
        self.assertEqual((r.returncode, r.stdout), (0, "(no unread messages)\n"))

    def test_read_without_n_pages_by_reply_budget(self):
        """Big bodies fill a reply (PL_REPLY_BUDGET, 768 KiB) before 1000
        messages: 900 messages of 2 KiB take three pages, all read."""
        bodies = [("%04d" % i) + "x" * 2044 for i in range(900)]
        ids = self.send_many("dave", bodies)
        self.c.login("dave")
        got = self.c.cli_json("dave", "read", timeout=120)["messages"]
        self.assertEqual([int(m["id"]) for m in got], ids, "all 900, in order, each once")
        self.assertEqual(self.c.cli_json("dave", "unread")["unread"], 0)

    def test_read_n_says_what_is_left(self):
        self.send_many("bob", ["m%d" % i for i in range(10)])
        self.c.login("bob")
        doc = self.c.cli_json("bob", "read", "-n", "4")
        self.assertEqual([m["body"] for m in doc["messages"]], ["m0", "m1", "m2", "m3"])
        self.assertTrue(doc["more"])
        self.assertEqual(doc["unread_left"], 6, "the document says how many are left")
        r = self.human("bob", "read", "-n", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines()[-1], "(more: 4 unread left; run 'parley read' again)")
        r = self.human("bob", "read", "-n", "4")
        self.assertEqual(len(r.stdout.splitlines()), 4, "no hint when nothing is left: %r" % r.stdout)
        doc = self.c.cli_json("bob", "read", "-n", "4")
        self.assertEqual((doc["messages"], doc["more"]), ([], False))
        self.assertNotIn("unread_left", doc)


def main():
    global PARLEYD, PARLEY
    if len(sys.argv) < 3:
        print("usage: test_read_all.py PARLEYD PARLEY", file=sys.stderr)
        return 2
    PARLEYD, PARLEY = sys.argv[1], sys.argv[2]
    prog = unittest.main(argv=[sys.argv[0]], exit=False, verbosity=2)
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
