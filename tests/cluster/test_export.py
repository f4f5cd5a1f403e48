"""Moving out and back in (issue 21): `parley admin export` writes a
cluster's whole chat state as parley's JSON Lines dump, from one snapshot
of a running cluster, and `parley admin import` loads it into an empty
cluster of another store. SQLite -> dump -> JSON store gives the same
state digest (`parley status`), users log in with their passwords, their
sessions and messages (with their flags) are there; a dump without
sessions logs everyone out; a single server switches its store without a
rejoin; a cut-short or edited dump is refused before anything loads; an
interrupted import is finished with --resume.

Run by meson (suite cluster) as:
  test_export.py PARLEYD PARLEY [unittest args]
"""
import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import Cluster, test_failed, wait_until  # noqa: E402

PARLEYD = PARLEY = None
TOKEN = "export-test-token-0123456789abcdef"
ADMIN = {"port_offset": 2000, "token": TOKEN}
BASE = {"election_timeout_ms": 1000, "heartbeat_ms": 100, "admin": ADMIN}


class ExportImport(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="parley-export-")
        self.clusters = []

    def tearDown(self):
        for c in self.clusters:
            if test_failed(self) or os.environ.get("PARLEY_TEST_LOGS"):
                for i in range(c.n):
                    sys.stderr.write("---- %s server %d ----\n%s\n" % (c.dir, i, c.log(i)))
            c.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def cluster(self, n, store):
        c = Cluster(PARLEYD, PARLEY, n=n, store=store, extra=BASE)
        self.clusters.append(c)
        c.start_all()
        self.wait_converged(c)
        return c

    @staticmethod
    def status(c):
        r = c.cli("admin", "status")
        return json.loads(r.stdout)["servers"] if r.returncode == 0 else None

    def wait_converged(self, c, timeout=30):
        """Every server up, one primary, equal applied ops and digests."""
        def same():
            st = self.status(c)
            if not st or not all(r["reachable"] for r in st) or \
                    not any(r["role"] == "primary" for r in st):
                return None
            vals = {(r["applied"], r["digest"]) for r in st}
            return vals.pop() if len(vals) == 1 else None
        return wait_until(same, timeout, interval=0.3, what="equal digests on every server")

    def admin(self, c, *args, timeout=120):
        """parley admin ARGS; a leading "--json" is the global option."""
        glob = ["--json"] if args and args[0] == "--json" else []
        return subprocess.run([PARLEY, "-c", c.config] + glob + ["admin"] + list(args[len(glob):]),
                              capture_output=True, text=True, timeout=timeout)

    def populate(self, c):
        """Accounts, sessions, messages read, unread and deleted on one side,
        exactly-once client rows, and an imported prototype account that
        never logged in (its PBKDF2 hash and importer row)."""
        for u in ("alice", "bob", "carol"):
            c.register(u)
            c.login(u)
        for i in range(30):
            c.cli_json("alice", "send", "bob", "a->b %d \u00e9\U0001F600" % i)
            c.cli_json("bob", "send", "alice", "b->a %d" % i)
        c.cli_json("carol", "send", "bob", "carol's note")
        c.cli_json("bob", "read", "-n", "10")
        some = c.cli_json("alice", "read", "-n", "3")["messages"]
        c.cli_json("alice", "delete", str(some[0]["id"]))
        c.cli_json("carol", "delete-account", "--password-stdin", stdin="correct horse\n")
        salt = b"sixteen byte slt"
        h = hashlib.pbkdf2_hmac("sha256", b"protopass", salt, 100000)
        state = os.path.join(self.tmp, "proto.json")
        with open(state, "w") as f:
            json.dump({"timestamp": 3, "users": {"dora": {
                "password_hash": base64.b64encode(h).decode(),
                "salt": base64.b64encode(salt).decode(),
                "message_queue": [[1, "alice", "from the prototype"]], "read_mailbox": []}}}, f)
        r = self.admin(c, "import-prototype", state)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def export(self, c, name, *args):
        path = os.path.join(self.tmp, name)
        r = self.admin(c, "--json", "export", "-o", path, *args)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return path, json.loads(r.stdout)

    def test_sqlite_dump_into_json_cluster_same_digest(self):
        a = self.cluster(3, "sqlite")
        self.populate(a)
        applied, digest = self.wait_converged(a)
        path, rep = self.export(a, "backup.jsonl")
        self.assertEqual(rep["digest"], digest, "the dump's digest is the cluster's")
        self.assertEqual(rep["op"], applied)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, "it holds password hashes")
        with open(path) as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual(lines[0]["parley_dump"], 1)
        self.assertEqual(lines[0]["store"], "sqlite")
        self.assertIn("end", lines[-1])
        kinds = [next(iter(x)) for x in lines[1:-1]]
        self.assertEqual(kinds.count("account"), 3, "alice, bob, dora (carol deleted)")
        self.assertEqual(lines[-1]["end"]["accounts"], 3)
        msgs = [x["message"] for x in lines if "message" in x]
        self.assertTrue(any(m["deleted_by_recipient"] for m in msgs), "a deleted message's flag")
        self.assertTrue(any(m["read"] for m in msgs) and any(not m["read"] for m in msgs))
        self.assertTrue(any(m["from"] == "carol" and m["from_uid"] == 3 for m in msgs),
                        "a message of a deleted account stays with its recipient")
        accts = {x["account"]["name"]: x["account"] for x in lines if "account" in x}
        self.assertTrue(accts["dora"]["pwhash"].startswith("$pbkdf2-sha256$"))
        self.assertTrue(accts["alice"]["pwhash"].startswith("$argon2id$"))

        # A JSON-store cluster, empty, takes it and ends with the same digest.
        b = self.cluster(3, "json")
        r = self.admin(b, "import", path, "--batch", "7")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("digest %s: equal to the dump's" % digest, r.stdout)
        self.assertEqual(self.wait_converged(b)[1], digest, "every server of the JSON cluster")
        for row in self.status(b):
            self.assertEqual(row["store"], "json")

        # The users' sessions came along (alice's session file from cluster A
        # works on B), their passwords too, and the imported account's hash.
        for u in ("alice", "bob"):
            shutil.copy(os.path.join(a.dir, u + ".session"), os.path.join(b.dir, u + ".session"))
        r = b.cli("alice", "unread")
        self.assertEqual(r.returncode, 0, "alice's session works on the restored cluster: " +
                         r.stderr)
        self.assertEqual(json.loads(r.stdout), json.loads(a.cli("alice", "unread").stdout))
        self.assertEqual(b.cli_json("bob", "history", "--limit", "100"),
                         a.cli_json("bob", "history", "--limit", "100"))
        r = b.cli("dora", "login", "dora", "--password-stdin", stdin="protopass\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([m["body"] for m in b.cli_json("dora", "read")["messages"]],
                         ["from the prototype"])
        r = b.cli("bob", "login", "bob", "--password-stdin", stdin="correct horse\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        # New ids continue after the dump's, and the cluster works on.
        sent = b.cli_json("bob", "send", "alice", "after the move")["id"]
        self.assertGreater(sent, max(m["id"] for m in msgs))

        # Importing again into it is refused (not empty); --resume finds
        # every record there already and changes nothing.
        r = self.admin(b, "import", path)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("the cluster is not empty", r.stderr)
        self.assertIn("--resume", r.stderr)

    def test_resume_and_refusals(self):
        a = self.cluster(1, "sqlite")
        self.populate(a)
        _, digest = self.wait_converged(a)
        path, _ = self.export(a, "d.jsonl")
        b = self.cluster(1, "json")
        r = self.admin(b, "--json", "import", path)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        first = json.loads(r.stdout)
        self.assertTrue(first["digest_matches"])
        # An import interrupted anywhere is finished by the same file with
        # --resume: records already there are skipped, nothing doubles.
        r = self.admin(b, "--json", "import", path, "--resume", "--batch", "5")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        again = json.loads(r.stdout)
        self.assertEqual((again["written"], again["already"]), (0, first["records"]))
        self.assertEqual(again["digest"], digest)

        # A cut-short dump and an edited one are refused before anything loads.
        with open(path) as f:
            lines = f.read().splitlines(True)
        cut = os.path.join(self.tmp, "cut.jsonl")
        with open(cut, "w") as f:
            f.writelines(lines[:-3])
        c = self.cluster(1, "json")
        before = self.wait_converged(c)
        r = self.admin(c, "import", cut)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no \"end\" line: the dump was cut short; nothing was imported", r.stderr)
        bad = os.path.join(self.tmp, "bad.jsonl")
        with open(bad, "w") as f:
            f.writelines(lines[:2] + ['{"account": {"uid": "x"}}\n'] + lines[2:])
        r = self.admin(c, "import", bad)
        self.assertEqual(r.returncode, 1)
        self.assertIn("line 3: account.uid: must be a decimal integer", r.stderr)
        self.assertEqual(self.wait_converged(c), before, "nothing loaded")

    def test_without_sessions_and_single_server_store_switch(self):
        """Switching a single server's store without a rejoin: export, stop,
        start on the other store with an empty directory, import."""
        a = self.cluster(1, "sqlite")
        self.populate(a)
        _, digest = self.wait_converged(a)
        path, rep = self.export(a, "nosess.jsonl", "--no-sessions")
        self.assertEqual(rep["session_count"], 0)
        full, _ = self.export(a, "full.jsonl")
        a.stop(0)
        cfg = dict(a.cfg)
        cfg["store"] = "json"
        with open(a.config, "w") as f:
            json.dump(cfg, f)
        shutil.rmtree(a.data_dir(0))
        a.cfg = cfg
        a.start(0)
        self.wait_converged(a)
        r = self.admin(a, "import", full)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.wait_converged(a)[1], digest, "same digest on the other store")
        self.assertEqual(self.status(a)[0]["store"], "json")
        self.assertEqual(a.cli("alice", "unread").returncode, 0, "still logged in")

        # Without sessions: everything but them; everyone logs in again.
        c = self.cluster(1, "sqlite")
        r = self.admin(c, "import", path)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("counts the sessions it left out", r.stdout)
        env = dict(os.environ, PARLEY_SESSION=os.path.join(a.dir, "alice.session"))
        r = subprocess.run([PARLEY, "-c", c.config, "unread"], capture_output=True, text=True,
                           env=env, timeout=30)
        self.assertNotEqual(r.returncode, 0, "a session left out of the dump does not work")
        self.assertEqual(c.cli("alice", "login", "alice", "--password-stdin",
                               stdin="correct horse\n").returncode, 0)


class HandWritten(unittest.TestCase):
    """A dump written by hand from the documented format (docs/operations.md,
    "Export and import") loads, in full batches of 1000 records."""

    def test_documented_format_loads(self):
        tmp = tempfile.mkdtemp(prefix="parley-dump-")
        c = Cluster(PARLEYD, PARLEY, n=1, store="json", extra=BASE)
        try:
            c.start_all()
            salt = b"0123456789abcdef"
            h = hashlib.pbkdf2_hmac("sha256", b"pw-of-bob", salt, 100000)
            pw = "$pbkdf2-sha256$i=100000$%s$%s" % (base64.b64encode(salt).decode(),
                                                    base64.b64encode(h).decode())
            lines = [{"parley_dump": 1, "op": 7, "next_uid": 3, "next_msg_id": 1201,
                      "digest": "0" * 64, "sessions": False, "created_ms": 1, "server": "x",
                      "store": "by hand", "parley": "0.1.0"},
                     {"account": {"uid": 1, "name": "alice", "pwhash": pw, "created_ms": 5}},
                     {"account": {"uid": 2, "name": "bob", "pwhash": pw, "created_ms": 6}}]
            for i in range(1, 1201):
                lines.append({"message": {"id": i, "from_uid": 1, "to_uid": 2, "from": "alice",
                                          "to": "bob", "body": "n%d" % i, "time_ms": 1000 + i,
                                          "read": i <= 200, "deleted_by_sender": False,
                                          "deleted_by_recipient": False}})
            lines.append({"end": {"accounts": 2, "sessions": 0, "messages": 1200, "clients": 0}})
            path = os.path.join(tmp, "hand.jsonl")
            with open(path, "w") as f:
                f.writelines(json.dumps(x) + "\n" for x in lines)
            r = subprocess.run([PARLEY, "-c", c.config, "--json", "admin", "import", path],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            doc = json.loads(r.stdout)
            self.assertEqual((doc["records"], doc["written"], doc["batches"]), (1202, 1202, 2))
            r = c.cli("bob", "login", "bob", "--password-stdin", stdin="pw-of-bob\n")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout)["unread"], 1000)
            got = c.cli_json("bob", "read", timeout=60)["messages"]
            self.assertEqual([m["body"] for m in got], ["n%d" % i for i in range(201, 1201)])
            self.assertEqual(c.cli_json("bob", "send", "alice", "next")["id"], 1201)
        finally:
            c.close()
            shutil.rmtree(tmp, ignore_errors=True)


def main():
    global PARLEYD, PARLEY
    PARLEYD, PARLEY = sys.argv[1], sys.argv[2]
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)


if __name__ == "__main__":
    main()
