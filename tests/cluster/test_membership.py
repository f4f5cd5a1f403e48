"""Membership changes (issue 9): real parleyd processes on loopback, changed
with the real `parley admin` CLI while the real `parley` CLI keeps sending.

  grow 3 -> 5 under load, shrink 5 -> 3 (removing the primary), replace a
  killed server with an empty one, restart with a stale config file, the
  refused changes, and the disk bound with compaction on.

Run by meson (suite cluster) as:
  test_membership.py PARLEYD PARLEY PARLEY_BENCH [unittest args]

PARLEY_TEST_LOG_DIR=DIR keeps the whole server logs of a failed test there
(of every test with PARLEY_TEST_LOGS=1)
(the tail of each is printed either way).
PARLEY_DISK_SENDS=N runs only the disk-bound test with N sends (e.g.
1000000) and prints its figures; the CI run sends DISK_SENDS_CI.
"""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import Cluster, free_port, test_failed, wait_until  # noqa: E402

PARLEYD = PARLEY = BENCH = None
TOKEN = "membership-test-token-0123456789"
ADMIN_OFFSET = 2000
CHANGE_TIMEOUT = 150  # CLI --timeout for a change; the server gives up after 120 s
DISK_SENDS_CI = 200000


def messages(doc):
    return doc if isinstance(doc, list) else doc["messages"]


class Load(threading.Thread):
    """Keeps sending acknowledged messages frm -> to through the CLI until
    stopped. acked: bodies whose send exited 0, in order; maybe: the others
    (they may or may not have taken effect)."""

    def __init__(self, cluster, frm, to, prefix, config=None):
        super().__init__(daemon=True)
        self.c, self.frm, self.to, self.prefix, self.config = cluster, frm, to, prefix, config
        self.acked, self.maybe, self.errors = [], [], []
        self.halt = threading.Event()

    def run(self):
        n = 0
        while not self.halt.is_set():
            b = "%s%d" % (self.prefix, n)
            n += 1
            try:
                r = self.c.cli(self.frm, "send", self.to, b, timeout=40, config=self.config)
                ok = r.returncode == 0
                if not ok:
                    self.errors.append(r.stderr.strip()[-200:])
            except subprocess.TimeoutExpired:
                ok = False
                self.errors.append("timeout")
            (self.acked if ok else self.maybe).append(b)

    def stop(self):
        self.halt.set()
        self.join(60)


class MembershipTest(unittest.TestCase):
    n = 3
    extra = {}

    def setUp(self):
        extra = {"election_timeout_ms": 1000, "heartbeat_ms": 100,
                 "admin": {"port_offset": ADMIN_OFFSET, "token": TOKEN}}
        extra.update(self.extra)
        self.c = Cluster(PARLEYD, PARLEY, n=self.n, extra=extra)
        self.loads = []
        self.t0 = time.monotonic()
        self.c.start_all()
        self.wait_serving()

    def tearDown(self):
        for ld in self.loads:
            ld.halt.set()
        failed = test_failed(self)
        keep = os.environ.get("PARLEY_TEST_LOG_DIR")  # whole logs kept there on failure
        if keep and (failed or os.environ.get("PARLEY_TEST_LOGS")):
            os.makedirs(keep, exist_ok=True)
            for i in range(len(self.c.ports)):
                if os.path.exists(self.c.logs[i]):
                    shutil.copy(self.c.logs[i], os.path.join(
                        keep, "%s-s%d.log" % (self._testMethodName, i)))
        if failed or os.environ.get("PARLEY_TEST_LOGS"):
            for i in range(len(self.c.ports)):
                sys.stderr.write("---- server %d (port %d) log ----\n%s\n"
                                 % (i, self.c.ports[i], self.c.log(i)))
        for ld in self.loads:
            ld.join(60)
        self.c.close()
        sys.stderr.write("[%s: %.1f s] " % (self._testMethodName, time.monotonic() - self.t0))

    # ---- helpers ----
    def addr(self, i, peer=False):
        a = "127.0.0.1:%d" % self.c.ports[i]
        return a + ":%d" % (self.c.ports[i] + 1000) if peer else a

    def admin(self, *args, config=None, timeout=CHANGE_TIMEOUT + 30):
        """`parley admin ARGS` (no --json: the CLI is given it by cli());
        returns the CompletedProcess."""
        return self.c.cli("operator", "admin", *args, config=config, timeout=timeout)

    def members(self, config=None):
        r = self.admin("members", config=config, timeout=30)
        self.assertEqual(r.returncode, 0, "admin members: %s %s" % (r.stdout, r.stderr))
        return json.loads(r.stdout)

    def change(self, *args, config=None):
        r = self.admin(*args, "--timeout", str(CHANGE_TIMEOUT), config=config)
        self.assertEqual(r.returncode, 0, "admin %s: exit %d\nstdout: %s\nstderr: %s"
                         % (" ".join(args), r.returncode, r.stdout, r.stderr))
        return json.loads(r.stdout)

    def member_ports(self, doc):
        return [s["port"] for s in doc["servers"]]

    def http(self, method, i, path, token=None):
        """(status, parsed JSON body) of a request to server i's admin port."""
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.c.admin_port(i), path),
                                     method=method, data=b"" if method == "POST" else None)
        if token is not None:
            req.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, body.decode("utf-8", "replace")

    def status(self, config=None, via=None):
        r = self.c.cli("operator", "status", config=config, server=via)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)["servers"]

    def wait_serving(self, config=None, timeout=20):
        """Until status shows a reachable primary."""
        def up():
            st = self.status(config=config)
            return st and any(r["role"] == "primary" and r["reachable"] for r in st)
        wait_until(up, timeout, interval=0.3, what="a primary")

    def wait_converged(self, ports, config=None, timeout=60):
        """Until status lists exactly these servers (by client port, in this
        order), all reachable, with one applied op and digest."""
        want = ["127.0.0.1:%d" % p for p in ports]

        def same():
            st = self.status(config=config)
            if not st:
                return None
            addrs = [r["address"] for r in st]
            if addrs != want or not all(r["reachable"] for r in st):
                return ("rows", addrs, [r["reachable"] for r in st])
            vals = {(r["applied"], r["digest"]) for r in st}
            return st if len(vals) == 1 else None
        last = [None]

        def pred():
            v = same()
            last[0] = v
            return v if isinstance(v, list) else None
        try:
            return wait_until(pred, timeout, interval=0.5, what="equal digests on %s" % want)
        except AssertionError:
            raise AssertionError("not converged on %s within %d s; last status: %r"
                                 % (want, timeout, self.status(config=config)))

    def setup_users(self, *names, config=None):
        for u in names:
            self.c.cli(u, "register", u, "--password-stdin", stdin="correct horse\n",
                       check=0, config=config)
            self.c.cli(u, "login", u, "--password-stdin", stdin="correct horse\n",
                       check=0, config=config)

    def load(self, frm, to, prefix, config=None):
        ld = Load(self.c, frm, to, prefix, config=config)
        self.loads.append(ld)
        ld.start()
        return ld

    def assert_delivered_once(self, to, loads, config=None):
        """Every acknowledged body of the loads is in to's mailbox exactly
        once, nothing was invented, and each sender's order is kept."""
        got = []
        while True:  # a read answers at most PL_PAGE_MAX (1000) messages
            doc = self.c.cli_json(to, "read", timeout=90, config=config)
            got += messages(doc)
            if isinstance(doc, list) or not doc.get("more"):
                break
        ids = [m["id"] for m in got]
        self.assertEqual(len(ids), len(set(ids)), "a message delivered twice")
        bodies = [m["body"] for m in got]
        allowed = set()
        for ld in loads:
            allowed |= set(ld.acked) | set(ld.maybe)
            for b in ld.acked:
                self.assertEqual(bodies.count(b), 1, "acknowledged %r delivered %d times"
                                 % (b, bodies.count(b)))
            order = [bodies.index(b) for b in ld.acked]
            self.assertEqual(order, sorted(order), "%s's order kept" % ld.prefix)
        for b in bodies:
            self.assertIn(b, allowed, "message %r was never sent" % b)
        return bodies

    def joiner(self, servers):
        """A new slot started with --join; its config lists servers and then
        itself. Returns its index."""
        i = self.c.add_slot()
        cfg = self.c.write_config("join%d.json" % i, list(servers) + [i])
        self.c.start(i, config=cfg, server_id=len(servers), join=True)
        wait_until(lambda: "learner" in self.c.log(i), 10, what="server %d to wait as a learner" % i)
        return i

    def grow_to_five(self):
        """Adds two joiners (indices 3 and 4) to the 3-server cluster."""
        s3 = self.joiner([0, 1, 2])
        s4 = self.joiner([0, 1, 2])
        d = self.change("add-server", self.addr(s3))
        self.assertEqual(d["epoch"], 1, d)
        d = self.change("add-server", self.addr(s4, peer=True))
        self.assertEqual(d["epoch"], 2, d)
        return s3, s4


def metric(self, i, name):
    """One value from server i's GET /metrics."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.c.admin_port(i),
                                timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.split()[-1])
    raise AssertionError("no %s in server %d's /metrics" % (name, i))


MembershipTest.metric = metric


class Grow(MembershipTest):
    # small compaction bounds: the joiners come up by snapshot + log tail
    extra = {"compaction": {"ops": 2000, "keep_ops": 400},
             "limits": {"conns_per_address": 0, "requests_per_second": 0}}

    def bench(self, seconds, connections=16):
        return subprocess.Popen([BENCH, "-c", self.c.config, "-w", "send", "-n", str(connections),
                                 "-d", str(seconds), "--warmup", "0", "-q"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def test_grow_3_to_5_under_load(self):
        self.setup_users("alice", "bob", "carol")
        pre = self.bench(2)
        out, err = pre.communicate(timeout=120)
        self.assertEqual(pre.returncode, 0, err)
        self.assertGreater(json.loads(out)["throughput"]["ops"], 2000, "state to snapshot")
        la = self.load("alice", "bob", "a")
        lc = self.load("carol", "bob", "c")
        bg = self.bench(8)  # and parley-bench sends through the whole change
        try:
            wait_until(lambda: len(la.acked) >= 5, 20, what="sends before the change")
            k = len(la.acked) + len(lc.acked)
            s3, s4 = self.grow_to_five()
            during = len(la.acked) + len(lc.acked) - k
            k2 = len(la.acked)
            wait_until(lambda: len(la.acked) >= k2 + 5, 30, what="sends after the change")
        finally:
            out, err = bg.communicate(timeout=120)
        la.stop()
        lc.stop()
        self.assertEqual(bg.returncode, 0, err)
        bdoc = json.loads(out)
        for i in (s3, s4):
            self.assertIn("installed a snapshot", self.c.log(i), "server %d came up by snapshot" % i)
        doc = self.members()
        self.assertEqual(doc["epoch"], 2, doc)
        self.assertEqual(self.member_ports(doc), [self.c.ports[i] for i in (0, 1, 2, s3, s4)], doc)
        self.assertEqual(doc["primary"], 0, doc)
        self.wait_converged([self.c.ports[i] for i in range(5)])
        # every server links to the four others, both ways
        for i in (0, 1, 2, s3, s4):
            for name in ("parley_peer_links_up", "parley_peer_incoming"):
                wait_until(lambda: self.metric(i, name) == 4, 20,
                           what="server %d's %s to be 4" % (i, name))
            self.assertEqual(self.metric(i, "parley_peer_incoming_unlisted"), 0)
        self.assert_delivered_once("bob", [la, lc])
        sys.stderr.write("[grow: %d CLI sends acked during the change, %d unknown; parley-bench "
                         "%d sends, errors %s] " % (during, len(la.maybe) + len(lc.maybe),
                                                    bdoc["throughput"]["ops"], bdoc["errors"]))
        self.assertGreater(during, 0, "sends were acknowledged while the servers were added")
        # both new servers count: with two of the original three down, the
        # remaining 3 of 5 still commit.
        self.c.kill(1)
        self.c.kill(2)
        self.assertEqual(self.c.cli("alice", "send", "bob", "with 1 and 2 down", timeout=40).returncode,
                         0, "3 of 5 (two of them new) commit")


class Shrink(MembershipTest):
    n = 5

    def test_shrink_5_to_3_removing_the_primary(self):
        self.setup_users("alice", "bob")
        self.assertEqual(self.members()["primary"], 0)
        la = self.load("alice", "bob", "s")
        wait_until(lambda: len(la.acked) >= 5, 20, what="sends before the change")
        d = self.change("remove-server", self.addr(0))
        self.assertEqual(d["epoch"], 1, d)
        self.assertEqual(d["servers"][0]["port"], self.c.ports[1], d)
        d = self.change("remove-server", self.addr(4, peer=True))
        self.assertEqual(d["epoch"], 2, d)
        after = len(la.acked)
        wait_until(lambda: len(la.acked) >= after + 5, 40, what="sends after the change")
        small = self.c.write_config("three.json", [1, 2, 3])
        doc = self.members(config=small)
        self.assertEqual(doc["epoch"], 2, doc)
        self.assertEqual(self.member_ports(doc), [self.c.ports[i] for i in (1, 2, 3)], doc)
        # the new primary is the first server of the new list
        wait_until(lambda: self.members(config=small)["primary"] == 0, 20,
                   what="primary = server 1")
        for gone in (0, 4):
            wait_until(lambda: "removed from the cluster at epoch" in self.c.log(gone), 20,
                       what="server %d to log its removal" % gone)
        with self.subTest("admin members with the old config while the removed servers run"):
            # server 0 is listed first there; it answers as a non-member
            # (self -1) with the membership it last knew (epoch 1)
            doc = self.members()
            self.assertEqual(doc["epoch"], 2, doc)
        # the operator stops the removed servers; everything goes on
        self.c.stop(0)
        self.c.stop(4)
        after = len(la.acked)
        wait_until(lambda: len(la.acked) >= after + 5, 40,
                   what="sends with the removed servers stopped")
        la.stop()
        doc = self.members()  # removed servers stopped: the old config finds a member
        self.assertEqual(doc["epoch"], 2, doc)
        self.wait_converged([self.c.ports[i] for i in (1, 2, 3)], config=small)
        self.assert_delivered_once("bob", [la])
        st = self.status(config=small)
        self.assertEqual([r["role"] for r in st][0], "primary", st)


class Replace(MembershipTest):
    def test_replace_a_killed_server_with_an_empty_one(self):
        self.setup_users("alice", "bob")
        la = self.load("alice", "bob", "r")
        wait_until(lambda: len(la.acked) >= 5, 20, what="sends before the kill")
        self.c.kill(2)
        new = self.joiner([0, 1, 2])
        d = self.change("replace-server", self.addr(2), self.addr(new))
        self.assertEqual(d["epoch"], 1, d)
        self.assertEqual(self.member_ports(d), [self.c.ports[i] for i in (0, 1, new)], d)
        after = len(la.acked)
        wait_until(lambda: len(la.acked) >= after + 3, 30, what="sends after the change")
        la.stop()
        cfg = self.c.write_config("replaced.json", [0, 1, new])
        self.wait_converged([self.c.ports[i] for i in (0, 1, new)], config=cfg)
        # the new server counts in quorums and votes: kill the primary,
        # server 1 and the new one elect and commit alone.
        self.c.kill(0)
        r = self.c.cli("alice", "send", "bob", "after losing server 0", timeout=40, config=cfg)
        self.assertEqual(r.returncode, 0, r.stderr)
        la.acked.append("after losing server 0")
        self.assert_delivered_once("bob", [la], config=cfg)
        self.c.start(0)
        self.wait_converged([self.c.ports[i] for i in (0, 1, new)], config=cfg)


class StaleConfig(MembershipTest):
    def test_restart_with_a_stale_config_file(self):
        self.setup_users("alice", "bob")
        self.assertEqual(self.c.cli("alice", "send", "bob", "before").returncode, 0)
        s3, s4 = self.grow_to_five()
        self.assertEqual(self.c.cli("alice", "send", "bob", "grown").returncode, 0)
        for i in range(5):
            self.c.stop(i)
        # 0-2: the original 3-server file; 3 and 4: the file they joined
        # with (the 3 servers and themselves), no --join
        for i in range(3):
            self.c.start(i, wait=False)
        for i in (s3, s4):
            self.c.start(i, wait=False, config=os.path.join(self.c.dir, "join%d.json" % i),
                         server_id=3)
        for i in range(5):
            self.c.wait_listening(i)
        for i in range(5):
            self.assertIn("config file is stale", self.c.log(i), "server %d says so" % i)
        doc = self.members()
        self.assertEqual(doc["epoch"], 2, doc)
        self.assertEqual(self.member_ports(doc), [self.c.ports[i] for i in range(5)], doc)
        self.wait_serving()
        self.assertEqual(self.c.cli("alice", "send", "bob", "after restart", timeout=40).returncode, 0)
        self.wait_converged([self.c.ports[i] for i in range(5)])
        got = [m["body"] for m in messages(self.c.cli_json("bob", "read"))]
        self.assertEqual(got, ["before", "grown", "after restart"])


class Refused(MembershipTest):
    def refused(self, want, *args, config=None, timeout=CHANGE_TIMEOUT + 30):
        r = self.admin(*args, config=config, timeout=timeout)
        self.assertEqual(r.returncode, 1, "admin %s: exit %d (wanted 1)\nstdout: %s\nstderr: %s"
                         % (" ".join(args), r.returncode, r.stdout, r.stderr))
        self.assertIn(want, r.stderr + r.stdout, "admin %s names the reason" % " ".join(args))
        return r

    def test_refused_changes(self):
        self.refused("already a member", "add-server", self.addr(1))
        stranger = free_port(avoid=self.c.ports)
        self.refused("not a member", "remove-server", "127.0.0.1:%d" % stranger)
        # wrong token: the server answers 401, the CLI exits 1 saying so
        bad = self.c.write_config("badtoken.json", [0, 1, 2],
                                  admin={"port_offset": ADMIN_OFFSET, "token": "x" * 32})
        r = self.refused("401", "add-server", "127.0.0.1:%d" % stranger, config=bad)
        self.assertIn("token", r.stderr.lower())
        code, body = self.http("POST", 0, "/cluster/add-server?addr=127.0.0.1:%d" % stranger,
                               token="y" * 32)
        self.assertEqual(code, 401, body)
        code, body = self.http("POST", 0, "/cluster/add-server?addr=127.0.0.1:%d" % stranger)
        self.assertEqual(code, 401, body)
        # a non-primary answers 421 naming the primary
        code, body = self.http("POST", 1, "/cluster/remove-server?addr=%s" % self.addr(2),
                               token=TOKEN)
        self.assertEqual((code, body.get("primary")), (421, 0), body)
        # GET /cluster/members needs no token
        code, body = self.http("GET", 2, "/cluster/members")
        self.assertEqual((code, body["epoch"], body["self"]), (200, 0, 2), body)
        # nothing changed
        self.assertEqual(self.members()["epoch"], 0)
        # a joiner that is not running: the CLI's --timeout ends the wait
        # and names the server. (The server's own 120 s cap is not waited
        # for here.)
        t = time.monotonic()
        r = self.admin("add-server", "127.0.0.1:%d" % stranger, "--timeout", "3", timeout=60)
        took = time.monotonic() - t
        self.assertNotIn(r.returncode, (0, 2), r.stdout + r.stderr)
        self.assertLess(took, 15, "--timeout 3 honoured")
        with self.subTest("the CLI's timeout message names the server being added"):
            self.assertIn(str(stranger), r.stderr, "the message names the server")
        # the server is still waiting for that one: another change is refused
        self.refused("in progress", "remove-server", self.addr(2), timeout=60)
        self.assertEqual(self.members()["epoch"], 0)

    def test_no_token_configured(self):
        """A server without admin.token refuses every change (403); a CLI
        without one says so before asking (exit 2: a config problem)."""
        cl = Cluster(PARLEYD, PARLEY, n=1, extra={"admin": {"port_offset": ADMIN_OFFSET}})
        try:
            cl.start_all()
            p = free_port(avoid=cl.ports)
            r = cl.cli("operator", "admin", "add-server", "127.0.0.1:%d" % p, timeout=60)
            self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
            self.assertIn("admin.token", r.stderr)
            # the CLI has a token, the server none: 403, exit 1
            tok = cl.write_config("cli-token.json", [0],
                                  admin={"port_offset": ADMIN_OFFSET, "token": TOKEN})
            r = cl.cli("operator", "admin", "add-server", "127.0.0.1:%d" % p, timeout=60,
                       config=tok)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("admin.token", r.stderr)
            req = urllib.request.Request("http://127.0.0.1:%d/cluster/add-server?addr=127.0.0.1:%d"
                                         % (cl.admin_port(0), p), method="POST", data=b"")
            req.add_header("Authorization", "Bearer " + TOKEN)
            with self.assertRaises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=10)
            self.assertEqual(e.exception.code, 403)
            self.assertIn("admin.token", e.exception.read().decode())
        finally:
            for i in range(len(cl.ports)):
                if test_failed(self):
                    sys.stderr.write("---- single server log ----\n%s\n" % cl.log(i))
            cl.close()


# ------------------------------------------------------------- disk bound

def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def table_bytes(data_dir):
    """Bytes of each table/index in the SQLite store (dbstat), read-only:
    the state's in parley.db, the log's (named "log") in parley-log.db."""
    out = {}
    for f, only in (("parley.db", None), ("parley-log.db", "log")):
        db = os.path.join(data_dir, f)
        try:
            con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
            try:
                rows = con.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
            finally:
                con.close()
        except sqlite3.Error as e:
            return {"error": str(e)}
        out.update((k, v) for k, v in rows if only is None or k == only)
    return out


def wal_bytes(data_dir):
    total = 0
    for f in ("parley.db-wal", "parley-log.db-wal"):
        try:
            total += os.path.getsize(os.path.join(data_dir, f))
        except OSError:
            pass
    return total


class DiskBound(MembershipTest):
    """With compaction on, the replicated log stays bounded: the data
    directory holds the chat state (which grows with the stored messages,
    as it must) plus a log of at most compaction.ops entries, never the
    whole history. Measured: the log table's bytes in each store (flat once
    the first compaction ran), and the directory total minus the state
    tables (log + free pages + WAL: bounded by a constant)."""
    COMPACT_OPS, KEEP_OPS = 20000, 2000
    extra = {"compaction": {"ops": COMPACT_OPS, "keep_ops": KEEP_OPS},
             "limits": {"conns_per_address": 0, "requests_per_second": 0},
             "log_level": "warn"}
    # Bounds. A send's log entry is ~200 bytes in SQLite (op, view, the
    # encoded op with a 100-byte body, b-tree overhead); the log holds at
    # most COMPACT_OPS + one batch, so 20,000 entries take ~4-6 MiB.
    LOG_BOUND = 12 << 20
    # Directory bytes beyond the state tables: the log, its freed pages,
    # the two WALs (checkpointed at 8 and 4 MiB, cut back to 16 and 8 MiB
    # when they restart) and membership files.
    OVERHEAD_BOUND = 96 << 20

    def applied(self):
        st = self.status()
        return max(r["applied"] for r in st if r["reachable"]) if st else 0

    def test_disk_bounded_with_compaction(self):
        target = int(os.environ.get("PARLEY_DISK_SENDS") or DISK_SENDS_CI)
        start_op = self.applied()
        samples = []
        t0 = time.monotonic()
        bench_errors = []
        rate = 3000.0  # sends/s guess until the first chunk is measured
        while True:
            done = self.applied() - start_op
            row = {"sends": done, "t": round(time.monotonic() - t0, 1)}
            for i in range(self.n):
                dd = self.c.data_dir(i)
                tb = table_bytes(dd)
                total = dir_bytes(dd)
                state = sum(v for k, v in tb.items() if k != "log" and isinstance(v, int))
                wal = wal_bytes(dd)
                row["s%d" % i] = {"dir": total, "log": tb.get("log"), "state": state,
                                  "wal": wal, "overhead": total - state}
            samples.append(row)
            sys.stderr.write("disk: %s\n" % json.dumps(row))
            if done >= target:
                break
            # about a dozen samples over the run, 1-20 s of load each
            chunk = min(target - done, max(target // 12, 1000))
            dur = max(1.0, min(20.0, chunk / rate))
            t = time.monotonic()
            p = subprocess.run([BENCH, "-c", self.c.config, "-w", "send", "-n", "64", "-p", "4",
                                "-d", "%.1f" % dur, "--warmup", "0", "-q"],
                               capture_output=True, text=True, timeout=dur + 300)
            self.assertEqual(p.returncode, 0, "parley-bench: %s" % p.stderr[-2000:])
            doc = json.loads(p.stdout)
            if doc["errors"]["total"]:
                # not what this test is about (disk), but reported: with no
                # faults injected, a view change under load is worth a look
                bench_errors.append({"at_sends": done, "errors": doc["errors"]})
                sys.stderr.write("parley-bench errors: %s\n" % json.dumps(doc["errors"]))
            rate = max(100.0, doc["throughput"]["ops"] / max(0.5, time.monotonic() - t))
        took = time.monotonic() - t0
        end_op = self.applied()
        for i in range(self.n):
            first = self.metric(i, "parley_log_first_op")
            self.assertGreater(first, end_op - self.COMPACT_OPS - 4096,
                               "server %d compacted its log (first op %d)" % (i, first))
        first_full = next((k for k, s in enumerate(samples) if s["sends"] >= 2 * self.COMPACT_OPS),
                          len(samples))
        steady = samples[first_full:]
        self.assertTrue(steady, "ran past 2 x compaction.ops")
        worst_log = max(s["s%d" % i]["log"] for s in steady for i in range(self.n))
        worst_over = max(s["s%d" % i]["overhead"] for s in steady for i in range(self.n))
        end = samples[-1]
        report = {"sends": end["sends"], "seconds": round(took, 1),
                  "sends_per_s": round(end["sends"] / took),
                  "log_bytes_max": worst_log, "overhead_bytes_max": worst_over,
                  "wal_bytes_max": max(s["s%d" % i]["wal"] for s in samples for i in range(self.n)),
                  "log_bytes_steady_min": min(s["s%d" % i]["log"] for s in steady for i in range(self.n)),
                  "dir_bytes_end": [end["s%d" % i]["dir"] for i in range(self.n)],
                  "state_bytes_end": [end["s%d" % i]["state"] for i in range(self.n)],
                  "dir_bytes_start": [samples[0]["s%d" % i]["dir"] for i in range(self.n)],
                  "bytes_per_send_end": round(end["s0"]["dir"] / max(1, end["sends"]), 1),
                  "log_bound": self.LOG_BOUND, "overhead_bound": self.OVERHEAD_BOUND,
                  "bench_errors": bench_errors}
        sys.stderr.write("DISK FIGURES: %s\n" % json.dumps(report))
        print("DISK FIGURES: %s" % json.dumps(report))
        if bench_errors:
            for i in range(self.n):
                with open(self.c.logs[i], errors="replace") as f:
                    lines = [ln for ln in f if " WARN " in ln or " ERROR " in ln or "view" in ln]
                sys.stderr.write("---- server %d: warnings and view changes ----\n%s"
                                 % (i, "".join(lines[-40:])))
        for i in range(self.n):
            self.assertIsNone(self.c.procs[i].poll(), "server %d still running" % i)
        self.assertLessEqual(worst_log, self.LOG_BOUND, "the log table stays bounded")
        self.assertLessEqual(worst_over, self.OVERHEAD_BOUND,
                             "directory minus chat state stays bounded")


def main():
    global PARLEYD, PARLEY, BENCH
    PARLEYD, PARLEY, BENCH = sys.argv[1], sys.argv[2], sys.argv[3]
    argv = [sys.argv[0]] + sys.argv[4:]
    if os.environ.get("PARLEY_DISK_SENDS") and len(argv) == 1:
        argv.append("DiskBound")
    unittest.main(argv=argv, verbosity=2)


if __name__ == "__main__":
    main()
