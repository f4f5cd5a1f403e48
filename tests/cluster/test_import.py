"""Moving in (issue 21): the Python prototype's state file imported into a
3-server cluster with `parley admin import-prototype`, checked end to end
through the real CLI: accounts keep their passwords (the prototype's
PBKDF2-HMAC-SHA256, made here with Python's hashlib.pbkdf2_hmac and the
prototype's parameters), messages keep sender, recipient, content, order
and read state, names parley cannot hold are reported and --rename maps
them, a second run imports nothing twice, and a kill -9 of the primary in
the middle of an import loses and doubles nothing once it is run again.

Run by meson (suite cluster) as:
  test_import.py PARLEYD PARLEY [unittest args]
"""
import base64
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import Cluster, test_failed, wait_until  # noqa: E402

PARLEYD = PARLEY = None
TOKEN = "import-test-token-0123456789abcdef"
ADMIN_OFFSET = 2000


def proto_user(password, unread=(), read=(), salt=None):
    """A user of the prototype's state file, hashed as the prototype did
    (chat_system/common/security.py): PBKDF2-HMAC-SHA256 of the UTF-8
    password, a 16-byte random salt, 100,000 iterations, 32 bytes."""
    salt = salt or os.urandom(16)
    h = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100000)
    return {"password_hash": base64.b64encode(h).decode("ascii"),
            "salt": base64.b64encode(salt).decode("ascii"),
            "message_queue": [list(m) for m in unread],
            "read_mailbox": [list(m) for m in read]}


def write_state(path, users, timestamp=17):
    """The file the prototype writes on exit (server_state.get_state)."""
    with open(path, "w") as f:
        json.dump({"timestamp": timestamp, "next_message_id": 1000, "users": users}, f)


class ImportTest(unittest.TestCase):
    stores = ["sqlite", "sqlite", "json"]

    def setUp(self):
        extra = {"election_timeout_ms": 1000, "heartbeat_ms": 100, "log_level": "debug",
                 "admin": {"port_offset": ADMIN_OFFSET, "token": TOKEN}}
        self.c = Cluster(PARLEYD, PARLEY, n=3, stores=self.stores, extra=extra)
        self.c.start_all()
        self.wait_serving()
        self.tmp = tempfile.mkdtemp(prefix="parley-import-")

    def tearDown(self):
        if test_failed(self) or os.environ.get("PARLEY_TEST_LOGS"):
            for i in range(3):
                sys.stderr.write("---- server %d log ----\n%s\n" % (i, self.c.log(i)))
        self.c.close()
        for f in os.listdir(self.tmp):
            os.unlink(os.path.join(self.tmp, f))
        os.rmdir(self.tmp)

    # ---- helpers ----
    def status(self):
        r = self.c.cli("admin", "status")
        return json.loads(r.stdout)["servers"] if r.returncode == 0 else None

    def wait_serving(self):
        def ok():
            st = self.status()
            return st and any(r["role"] == "primary" for r in st) and \
                all(r["reachable"] for r in st)
        wait_until(ok, 20, interval=0.2, what="a primary and every server up")

    def primary(self):
        st = self.status()
        for r in st or []:
            if r["role"] == "primary" and r["reachable"]:
                return r["id"]
        return None

    def wait_converged(self, timeout=30):
        def same():
            st = self.status()
            if not st or not all(r["reachable"] for r in st):
                return None
            vals = {(r["applied"], r["digest"]) for r in st}
            return vals.pop() if len(vals) == 1 else None
        return wait_until(same, timeout, interval=0.3, what="equal digests on every server")

    def importer(self, path, *args, timeout=300):
        return subprocess.run([PARLEY, "-c", self.c.config, "admin", "import-prototype", path] +
                              list(args), capture_output=True, text=True, timeout=timeout)

    def import_json(self, path, *args):
        r = self.importer(path, "--json", *args)
        self.assertEqual(r.returncode, 0, "import-prototype: %s%s" % (r.stdout, r.stderr))
        return json.loads(r.stdout)

    def login(self, user, password):
        return self.c.cli(user, "login", user, "--password-stdin", stdin=password + "\n")

    def wait_hash(self, user, prefix, timeout=3.0):
        """Wait until server 0's database file holds a hash for user that
        starts with prefix: the store commits its state to the file within
        about 100 ms of applying it (docs/operations.md), not at once."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.stored_hash(user)
            if (h or "").startswith(prefix) or time.monotonic() > deadline:
                return h
            time.sleep(0.02)

    def stored_hash(self, user):
        """The password hash server 0's SQLite store holds for user."""
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(self.c.data_dir(0), "parley.db"),
                             uri=True, timeout=10)
        try:
            row = db.execute("SELECT pwhash FROM accounts WHERE name = ?",
                             (user.encode(),)).fetchone()
        finally:
            db.close()
        if row is None:
            return None
        return row[0] if isinstance(row[0], str) else bytes(row[0]).decode()

    # ---- the tests ----
    def test_prototype_state_end_to_end(self):
        path = os.path.join(self.tmp, "server_data.json")
        users = {
            # read_mailbox and message_queue interleave in id order, as the
            # prototype filled them (a message to a logged-in user went
            # straight to read_mailbox)
            "alice": proto_user("alice-pass-1",
                                unread=[(4, "bob", "are you there?"),
                                        (9, "ghost", "I deleted my account")],
                                read=[(1, "bob", "hi alice \u2014 caf\u00e9 \U0001F600"),
                                      (6, "carol smith", "lunch?")]),
            # the prototype had no minimum password length
            "bob": proto_user("b0b", unread=[(2, "alice", "hello bob")],
                              read=[(7, "alice", "second")]),
            "carol smith": proto_user("carol's secret", unread=[(3, "alice", "hi carol")]),
            "dave": proto_user("dave-never-logs-in", read=[(5, "bob", "old news")]),
        }
        write_state(path, users)
        before = self.wait_converged()

        # A name parley cannot hold: reported, nothing imported.
        r = self.importer(path)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn('user "carol smith": not a parley username', r.stderr)
        self.assertIn("--rename", r.stderr)
        self.assertIn("nothing was imported", r.stderr)
        self.assertEqual(self.wait_converged(), before, "a refused import changed nothing")

        # Mapped: everything comes in, and the report says so.
        doc = self.import_json(path, "--rename", "carol smith=carol_smith")
        self.assertEqual(doc["timestamp"], 17, "the prototype's logical clock is reported")
        self.assertEqual((doc["accounts"]["in_file"], doc["messages"]["in_file"]), (4, 8))
        self.assertEqual(doc["accounts"]["created"], 4, doc)
        self.assertEqual(doc["messages"]["imported"], 8, doc)
        self.assertEqual(doc["messages"]["imported_read"], 4, doc)
        self.assertEqual(doc["renamed"], [{"old": "carol smith", "new": "carol_smith"}])
        self.assertEqual(doc["problems"], [])
        self.wait_converged()

        # Old passwords work (also bob's 3-byte one); a wrong one does not.
        self.assertNotEqual(self.login("alice", "alice-pass-2").returncode, 0)
        self.assertTrue(self.wait_hash("alice", "$pbkdf2-sha256$i=100000$")
                        .startswith("$pbkdf2-sha256$i=100000$"))
        r = self.login("alice", "alice-pass-1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["unread"], 2)
        # The first login replaced the imported hash, in the same op.
        h = self.wait_hash("alice", "$argon2id$")
        self.assertTrue(h.startswith("$argon2id$"), h)
        self.assertTrue(self.stored_hash("dave").startswith("$pbkdf2-sha256$"),
                        "an account that never logged in keeps the imported hash")
        self.assertEqual(self.login("bob", "b0b").returncode, 0)
        self.assertEqual(self.login("carol_smith", "carol's secret").returncode, 0)
        # and again, now against the Argon2id hash
        self.assertEqual(self.login("alice", "alice-pass-1").returncode, 0)

        # Unread, oldest first: sender, recipient, content; then read.
        got = self.c.cli_json("alice", "read")["messages"]
        self.assertEqual([(m["from"], m["to"], m["body"]) for m in got],
                         [("bob", "alice", "are you there?"),
                          ("ghost", "alice", "I deleted my account")])
        hist = self.c.cli_json("alice", "history")["messages"]   # newest first
        # ids follow the prototype's (1, 4, 6, 9), across both of its lists
        self.assertEqual([m["body"] for m in hist],
                         ["I deleted my account", "lunch?", "are you there?",
                          "hi alice \u2014 caf\u00e9 \U0001F600"])
        self.assertEqual(hist[1]["from"], "carol_smith", "a renamed sender is renamed everywhere")
        counts = self.c.cli_json("bob", "unread")
        self.assertEqual((counts["unread"], counts["read"]), (1, 1))
        convo = self.c.cli_json("bob", "conversation", "alice")["messages"]
        self.assertEqual(sorted(m["body"] for m in convo),
                         sorted(["hi alice \u2014 caf\u00e9 \U0001F600", "hello bob",
                                 "are you there?", "second"]),
                         "bob's conversation with alice holds both directions")
        # a sender that no longer exists is kept as its name, and the
        # recipient can still delete it
        ghost = [m for m in got if m["from"] == "ghost"][0]
        self.c.cli_json("alice", "delete", str(ghost["id"]))

        # The prototype's hash and salt are never logged.
        for u in users.values():
            for i in range(3):
                self.assertNotIn(u["password_hash"], self.c.log(i))
                self.assertNotIn(u["salt"], self.c.log(i))

        # The same file again: nothing new.
        digest = self.wait_converged()
        doc = self.import_json(path, "--rename", "carol smith=carol_smith")
        self.assertEqual(doc["accounts"]["created"], 0, doc)
        self.assertEqual(doc["accounts"]["imported_before"], 4, doc)
        self.assertEqual(doc["messages"]["imported"], 0, doc)
        self.assertEqual(doc["messages"]["imported_before"], 8, doc)
        self.assertEqual(doc["messages"]["recipient_not_imported"], 0, doc)
        self.assertEqual(self.wait_converged()[1], digest[1], "a second import changed the state")

    def test_taken_name_and_skip_invalid(self):
        """A name a parley user holds is not merged into: reported, no
        message imported until it is renamed; --skip-invalid imports the rest."""
        self.c.register("erin")
        path = os.path.join(self.tmp, "state.json")
        write_state(path, {
            "erin": proto_user("erins-old-pw", unread=[(1, "frank", "to the prototype's erin")]),
            "frank": proto_user("franks-pw", unread=[(2, "erin", "hi frank")]),
            "bad\tname": proto_user("x", unread=[(3, "frank", "tab")]),
            "gina": proto_user("ginas-pw", unread=[(4, "frank", "")]),
        })
        r = self.importer(path, "--skip-invalid")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("skipped: message 4 to gina: the content must be 1 byte to 64 KiB", r.stdout)
        self.assertIn('skipped: user "bad\\x09name": not a parley username', r.stdout)
        self.assertIn("1 taken by parley accounts", r.stdout)
        self.assertEqual(self.login("frank", "franks-pw").returncode, 0)
        got = self.c.cli_json("frank", "read")["messages"]
        self.assertEqual([(m["from"], m["body"]) for m in got], [("erin", "hi frank")])
        # the parley user erin got nothing of the prototype's erin
        self.c.login("erin")
        self.assertEqual(self.c.cli_json("erin", "unread")["unread"], 0)

        # Without --skip-invalid a taken name stops before the messages.
        path2 = os.path.join(self.tmp, "state2.json")
        write_state(path2, {"erin": proto_user("x1", unread=[(1, "hal", "m")]),
                            "hal": proto_user("hals-pw", unread=[(2, "erin", "to hal")])})
        r = self.importer(path2)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("erin is the name of a parley account that was not imported", r.stderr)
        self.assertIn("no message was imported", r.stderr)
        self.assertEqual(self.login("hal", "hals-pw").returncode, 0, "accounts created stay")
        self.assertEqual(self.c.cli_json("hal", "unread")["unread"], 0)
        doc = self.import_json(path2, "--rename", "erin=erin_proto")
        self.assertEqual((doc["accounts"]["created"], doc["accounts"]["imported_before"]), (1, 1))
        self.assertEqual(doc["messages"]["imported"], 2, doc)
        self.assertEqual(self.c.cli_json("hal", "read")["messages"][0]["from"], "erin_proto")

    def test_refused_while_a_server_is_down(self):
        """Import ops are only proposed when every server says it applies
        them: with one down, the import waits, and says why."""
        path = os.path.join(self.tmp, "state.json")
        write_state(path, {"ivy": proto_user("ivys-pw")})
        down = [i for i in range(3) if i != self.primary()][0]
        self.c.kill(down)
        r = self.importer(path, "--timeout", "3")
        self.assertEqual(r.returncode, 3, r.stdout + r.stderr)
        self.assertIn("127.0.0.1:%d is not connected" % self.c.ports[down], r.stderr)
        self.assertIn("run the command again", r.stderr)
        self.c.start(down)
        self.wait_serving()
        doc = self.import_json(path)
        self.assertEqual(doc["accounts"]["created"], 1)

    def test_refused_by_an_older_server(self):
        """A server older than the import ops (its peer Hello says nothing of
        op kinds) must never be handed one: the primary refuses, naming it.
        Server 2 is replaced by a stand-in that answers the peer handshake
        as a parley of before issue 21 does and then ignores everything."""
        path = os.path.join(self.tmp, "state.json")
        write_state(path, {"ivy": proto_user("ivys-pw")})
        primary = self.primary()
        old = [i for i in range(3) if i != primary][-1]
        self.c.kill(old)
        peer_port = self.c.ports[old] + 1000
        stop = threading.Event()
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", peer_port))
        lsock.listen(8)
        lsock.settimeout(0.2)

        def old_hello():
            def varint(v):
                out = b""
                while True:
                    b = v & 0x7f
                    v >>= 7
                    out += bytes([b | (0x80 if v else 0)])
                    if not v:
                        return out
            host = b"127.0.0.1"
            hello = b"\x08" + varint(2) + b"\x10" + varint(old) + b"\x18" + varint(3) + \
                b"\x2a" + varint(len(host)) + host + b"\x30" + varint(peer_port)
            frame = b"\x0a" + varint(len(hello)) + hello
            return len(frame).to_bytes(4, "big") + frame

        def serve():
            conns = []
            while not stop.is_set():
                try:
                    k, _ = lsock.accept()
                except OSError:
                    continue
                k.sendall(old_hello())     # version 2, no op_kinds: a pre-issue-21 server
                conns.append(k)
            for k in conns:
                k.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            r = self.importer(path, "--timeout", "20")
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("409", r.stderr)
            self.assertIn("server 127.0.0.1:%d runs an older parley (it applies op kinds 0-9, "
                          "this needs 10)" % self.c.ports[old], r.stderr)
            self.assertIn("upgrade every server before importing", r.stderr)
        finally:
            stop.set()
            t.join()
            lsock.close()

    def test_kill_primary_mid_import(self):
        """kill -9 of the primary while batches are committing: the run
        goes on on the new primary (or is run again), and every message is
        in its mailbox exactly once, in order."""
        users, nid, expect = {}, 0, {}
        names = ["u%02d" % i for i in range(12)]
        mail = {n: ([], []) for n in names}
        for k in range(1500):
            to, frm = names[k % 12], names[(k * 7 + 3) % 12]
            nid += 1
            body = "m%04d %s->%s" % (nid, frm, to)
            mail[to][k % 3 == 0].append((nid, frm, body))
            expect.setdefault(to, []).append(body)
        salt = b"0123456789abcdef"
        for n in names:
            users[n] = proto_user("pw-" + n, unread=mail[n][0], read=mail[n][1], salt=salt)
        path = os.path.join(self.tmp, "big.json")
        write_state(path, users)
        start = max(r["applied"] for r in self.status())
        killed = self.primary()
        proc = subprocess.Popen([PARLEY, "-c", self.c.config, "--json", "admin",
                                 "import-prototype", path, "--batch", "25", "--timeout", "120"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Some batches committed, many to go: kill -9 the primary.
        wait_until(lambda: max((r["applied"] for r in self.status() or []), default=0) >= start + 8,
                   60, interval=0.05, what="the first import batches to commit")
        self.c.kill(killed, signal.SIGKILL)
        self.assertIsNone(proc.poll(), "the import was still running when the primary died")
        # The import waits for every server to be up again: bring it back.
        wait_until(lambda: self.primary() not in (None, killed), 20, interval=0.2,
                   what="a new primary")
        self.c.start(killed)
        out, err = proc.communicate(timeout=240)
        sys.stderr.write("first run: exit %d\n%s%s\n" % (proc.returncode, out[-600:],
                                                           err[-2000:]))
        # Whatever the first run managed, running it again finishes it.
        doc = self.import_json(path, "--batch", "25")
        self.assertEqual(doc["accounts"]["created"] + doc["accounts"]["imported_before"], 12)
        self.assertEqual(doc["messages"]["imported"] + doc["messages"]["imported_before"], 1500)
        if proc.returncode == 0:
            self.assertEqual(doc["messages"]["imported"], 0, "the first run had finished it")
        self.wait_converged(60)
        for n in names:
            self.assertEqual(self.login(n, "pw-" + n).returncode, 0)
            got = [m["body"] for m in self.c.cli_json(n, "history", "--limit", "1000")["messages"]]
            got.reverse()
            got += [m["body"] for m in self.c.cli_json(n, "read")["messages"]]
            # read ones first (history), then unread (read): compare as sets
            # of bodies with counts, then the unread order
            self.assertEqual(sorted(got), sorted(expect[n]),
                             "%s: every message once (got %d, want %d)" % (n, len(got),
                                                                           len(expect[n])))
            self.assertEqual(len(set(got)), len(got), "%s: a message twice" % n)


def main():
    global PARLEYD, PARLEY
    PARLEYD, PARLEY = sys.argv[1], sys.argv[2]
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)


if __name__ == "__main__":
    main()
