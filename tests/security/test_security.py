"""Security tests: authentication and authorisation, secrets at rest, the
client limits, hostile input, and servers authenticating each other with the
cluster secret (issue 8; docs/operations.md "Limits", "Cluster secret").

Real parleyd processes on loopback. Raw clients speak tcp/json
(docs/protocol.md) so a test can send exactly what an attacker would;
honest clients are raw connections too, or the real CLI. Attack traffic
comes from other loopback addresses (127.0.0.2, 127.0.0.3) so the per-address
limits apply to the attacker and not to the honest client on 127.0.0.1.

Run by meson (suite security) as:
  test_security.py PARLEYD PARLEY [unittest args]
"""
import hashlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import Cluster, wait_until  # noqa: E402

PARLEYD = PARLEY = None
JSON_TCP = {"name": "tcp", "codec": "json"}
PASSWORD = "Zebra-Plaintext-Passw0rd"
SECRET = "0123456789abcdef0123456789abcdef-test-secret"
HONEST_BOUND_S = 3.0  # generous: a bound that a stalled server would blow, not a target

ERR_NO_SUCH_MESSAGE = 20
ERR_NOT_LOGGED_IN = 15
ERR_RATE_LIMITED = 22
ERR_NOT_PRIMARY = 23
ERR_UNAVAILABLE = 24
ERR_BUSY = 29


def one_call(port, m, **kw):
    """One request on a fresh connection from 127.0.0.1."""
    k = Conn(port)
    try:
        return k.call(m, **kw)
    finally:
        k.close()


class Conn:
    """One tcp/json connection, optionally from another loopback address."""

    def __init__(self, port, src="127.0.0.1", timeout=10.0):
        self.s = socket.socket()
        self.s.settimeout(timeout)
        self.s.bind((src, 0))
        self.s.connect(("127.0.0.1", port))
        self.buf = b""
        self.rid = 0

    def send(self, m, **kw):
        self.rid += 1
        d = {"m": m, "rid": self.rid}
        d.update(kw)
        self.s.sendall((json.dumps(d) + "\n").encode())
        return self.rid

    def recv(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, m, **kw):
        rid = self.send(m, **kw)
        while True:
            r = self.recv()
            if r.get("rid") == rid and r.get("m") != "push":
                return r

    def closed_within(self, timeout):
        """True when the server closes the connection within timeout
        (whatever it sends first is read and dropped)."""
        self.s.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.s.recv(65536):
                    return True
            except socket.timeout:
                return False
            except ConnectionError:
                return True
        return False

    def close(self):
        self.s.close()


def ok(r, what):
    if r.get("status") != 0:
        raise AssertionError("%s failed: %r" % (what, r))
    return r


class Base(unittest.TestCase):
    n = 1
    store = "sqlite"
    extra = {}

    def setUp(self):
        extra = {"election_timeout_ms": 1000, "heartbeat_ms": 100}
        extra.update(self.extra)
        self.c = Cluster(PARLEYD, PARLEY, n=self.n, transport=JSON_TCP, store=self.store,
                         extra=extra)
        self.c.start_all()
        self.port = self.c.ports[0]

    def tearDown(self):
        outcome = getattr(self, "_outcome", None)
        errs = getattr(outcome, "errors", None) or []
        if any(e for _, e in errs) or os.environ.get("PARLEY_TEST_LOGS"):
            for i in range(self.n):
                sys.stderr.write("---- server %d log ----\n%s\n" % (i, self.c.log(i)))
        self.c.close()

    def conn(self, src="127.0.0.1", port=None):
        k = Conn(port or self.port, src)
        self.addCleanup(k.close)
        return k

    def user(self, name, k=None):
        """Register and log in name; returns its token."""
        k = k or self.conn()
        ok(k.call("register", username=name, password=PASSWORD), "register " + name)
        return ok(k.call("login", username=name, password=PASSWORD), "login " + name)["token"]


# --------------------------------------------------------------- authz

class AuthzTest(Base):
    def test_token_acts_only_as_its_own_user(self):
        k = self.conn()
        ta, tb, tc = self.user("alice", k), self.user("bob", k), self.user("carol", k)
        ok(k.call("send", token=ta, to="bob", body="a->b"), "send")
        ok(k.call("send", token=tb, to="carol", body="b->c secret"), "send")
        # alice's token sends as alice, whatever else the request claims
        r = ok(k.call("send", token=ta, to="carol", body="who am i", username="bob"), "send")
        hist = ok(k.call("read", token=tc, n=0), "read")["msgs"]
        senders = {m["body"]: m["from"] for m in hist}
        self.assertEqual(senders.get("who am i"), "alice", "a token acted as another user")
        self.assertEqual(senders.get("b->c secret"), "bob")
        # counts and history are the token owner's
        self.assertEqual(ok(k.call("counts", token=ta), "counts")["unread"], 0)
        self.assertEqual(ok(k.call("counts", token=tb), "counts")["unread"], 1)
        conv = ok(k.call("conversation", token=ta, peer="carol", limit=100), "conv")["msgs"]
        self.assertEqual([m["body"] for m in conv], ["who am i"],
                         "alice's conversation with carol shows bob's message")
        self.assertTrue(r["id"] > 0)

    def test_ids_of_others_cannot_be_read_acked_or_deleted(self):
        k = self.conn()
        ta, tb, tc = self.user("alice", k), self.user("bob", k), self.user("carol", k)
        ids = [ok(k.call("send", token=tb, to="carol", body="for carol %d" % i), "send")["id"]
               for i in range(5)]
        own = ok(k.call("send", token=tb, to="alice", body="for alice"), "send")["id"]
        lo, hi = min(ids + [own]), max(ids + [own])
        guesses = list(range(max(1, lo - 3), hi + 4))
        for g in guesses:
            if g == own:
                continue
            for m in ("ack", "delete"):
                r = k.call(m, token=ta, ids=[g])
                self.assertEqual(r["status"], ERR_NO_SUCH_MESSAGE,
                                 "alice %s of id %d she cannot see: %r" % (m, g, r))
        # a batch mixing her own id with a guessed one changes nothing at all
        r = k.call("delete", token=ta, ids=[own] + ids)
        self.assertEqual(r["status"], ERR_NO_SUCH_MESSAGE, r)
        self.assertEqual(ok(k.call("counts", token=ta), "counts")["unread"], 1,
                         "a refused batch deleted alice's own message")
        # carol still has every message, unread
        self.assertEqual(ok(k.call("counts", token=tc), "counts")["unread"], 5)
        got = ok(k.call("read", token=tc, n=0), "read")["msgs"]
        self.assertEqual(sorted(m["id"] for m in got), sorted(ids))
        # alice's views never contain them
        mine = ok(k.call("history", token=ta, limit=1000), "history")["msgs"]
        mine += ok(k.call("read", token=ta, n=0), "read")["msgs"]
        self.assertFalse({m["id"] for m in mine} & set(ids), "alice saw carol's messages")

    def test_forged_and_revoked_tokens_are_rejected(self):
        k = self.conn()
        ta = self.user("alice", k)
        forged = [ta[:-1] + ("A" if ta[-1] != "A" else "B"), "x", "A" * 43, "A" * 128,
                  "\u00e9" * 40, "A" * 5000]
        for t in forged:
            for m, kw in (("counts", {}), ("send", {"to": "alice", "body": "x"}),
                          ("read", {"n": 1}), ("logout", {})):
                r = k.call(m, token=t, **kw)
                self.assertEqual(r["status"], ERR_NOT_LOGGED_IN,
                                 "%s with a forged token: %r" % (m, r))
        ok(k.call("counts", token=ta), "the real token still works")
        ok(k.call("logout", token=ta), "logout")
        for m, kw in (("counts", {}), ("send", {"to": "alice", "body": "x"}), ("read", {"n": 1}),
                      ("history", {"limit": 1}), ("list_users", {"limit": 5}),
                      ("subscribe", {}), ("ack", {"ids": [1]}), ("delete", {"ids": [1]}),
                      ("delete_account", {"password": PASSWORD})):
            r = k.call(m, token=ta, **kw)
            self.assertEqual(r["status"], ERR_NOT_LOGGED_IN, "%s after logout: %r" % (m, r))


class SessionExpiryTest(Base):
    extra = {"limits": {"session_ttl_s": 2}}

    def test_expired_token_is_rejected(self):
        k = self.conn()
        t = self.user("alice", k)
        ok(k.call("counts", token=t), "a fresh session works")
        time.sleep(2.3)
        r = k.call("counts", token=t)
        self.assertEqual(r["status"], ERR_NOT_LOGGED_IN, r)
        self.assertIn("limits.session_ttl_s", r["error"])
        # a new login gets a working session; the expired one may still log out
        t2 = ok(k.call("login", username="alice", password=PASSWORD), "login")["token"]
        ok(k.call("counts", token=t2), "new session")
        ok(k.call("logout", token=t), "logout of an expired session")


# --------------------------------------------------------------- secrets

class SecretsAtRest:
    """Mixed in once per store."""
    extra = {"log_level": "debug"}

    def test_no_plaintext_password_or_token_in_logs_or_store(self):
        k = self.conn()
        ta = self.user("alice", k)
        tb = self.user("bob", k)
        ok(k.call("send", token=ta, to="bob", body="hello"), "send")
        ok(k.call("read", token=tb, n=0), "read")
        r = k.call("login", username="alice", password=PASSWORD + "-wrong")
        self.assertNotEqual(r["status"], 0)
        ok(k.call("logout", token=tb), "logout")
        k.close()
        self.assertEqual(self.c.stop(0), 0)
        blobs = []
        for root, _, files in os.walk(self.c.dir):
            for f in files:
                with open(os.path.join(root, f), "rb") as fh:
                    blobs.append((os.path.join(root, f), fh.read()))
        for needle in (PASSWORD, PASSWORD + "-wrong", ta, tb):
            for path, data in blobs:
                self.assertNotIn(needle.encode(), data, "%r found in %s" % (needle[:6] + "...", path))
        store = b"".join(d for p, d in blobs if "data0" in p)
        self.assertIn(b"$argon2id$", store, "the store holds no Argon2id strings")
        h = hashlib.blake2b(ta.encode(), digest_size=32).digest()
        self.assertTrue(h in store or h.hex().encode() in store,
                        "alice's live session is not stored as the BLAKE2b hash of its token")


class SecretsSqliteTest(SecretsAtRest, Base):
    store = "sqlite"


class SecretsJsonTest(SecretsAtRest, Base):
    store = "json"


# --------------------------------------------------------------- limits

class ConnLimitTest(Base):
    extra = {"limits": {"conns_per_address": 5}}

    def test_connections_per_address(self):
        held = [self.conn(src="127.0.0.2") for _ in range(5)]
        for k in held:
            ok(k.call("ping"), "ping within the limit")
        extra = self.conn(src="127.0.0.2")
        r = extra.recv()
        self.assertEqual((r["m"], r["status"]), ("none", ERR_RATE_LIMITED), r)
        self.assertIn("limits.conns_per_address", r["error"])
        self.assertTrue(extra.closed_within(5), "the refused connection stayed open")
        # another address is not affected
        ok(self.conn().call("ping"), "ping from 127.0.0.1")
        # freeing one makes room again
        held[0].close()
        def again():
            k = Conn(self.port, "127.0.0.2")
            try:
                return k.call("ping")["status"] == 0
            except (EOFError, KeyError, OSError):
                return False
            finally:
                k.close()
        wait_until(again, 10, what="a slot for 127.0.0.2 after closing one")

    def test_cli_shows_why_it_was_refused(self):
        """The CLI reports the server's reason, naming the limit's key."""
        # Fill the limit from 127.0.0.1. The fixture's own readiness probes
        # may still be counted for a moment, so take slots as they free up.
        held = []
        def take():
            k = Conn(self.port, "127.0.0.1")
            try:
                if k.call("ping")["status"] == 0:
                    held.append(k)
                    return len(held) == 5
            except (EOFError, KeyError, OSError):
                pass
            k.close()
            return False
        wait_until(take, 10, what="five connections from 127.0.0.1")
        for k in held:
            self.addCleanup(k.close)
        r = self.c.cli("anyone", "status")
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("limits.conns_per_address", r.stderr)


class RateLimitTest(Base):
    extra = {"limits": {"requests_per_second": 20, "request_burst": 20}}

    def test_requests_per_second(self):
        k = self.conn()
        for _ in range(40):
            k.send("ping")
        statuses = [k.recv()["status"] for _ in range(40)]
        self.assertGreaterEqual(statuses.count(0), 20)
        self.assertLessEqual(statuses.count(0), 25)
        self.assertGreaterEqual(statuses.count(ERR_RATE_LIMITED), 15)
        time.sleep(1.2)
        r = k.call("ping")
        self.assertEqual(r["status"], 0, "tokens do not refill: %r" % r)
        # the rejection names the limit and its key
        for _ in range(30):
            k.send("ping")
        errs = [r for r in (k.recv() for _ in range(30)) if r["status"]]
        self.assertTrue(errs and "limits.requests_per_second" in errs[0]["error"], errs[:1])

    def test_a_flooding_connection_is_closed(self):
        flood = self.conn(src="127.0.0.2")
        honest = self.conn()
        payload = b"".join(b'{"m":"ping","rid":%d}\n' % i for i in range(500))
        try:
            flood.s.sendall(payload)
        except ConnectionError:
            pass
        self.assertTrue(flood.closed_within(10), "a flooding connection was not closed")
        ok(honest.call("ping"), "the honest connection")
        self.assertIn("limits.request_burst", self.c.log(0))


class LoginThrottleTest(Base):
    extra = {"limits": {"login_failures_per_user": 2, "login_failures_per_address": 3,
                        "login_backoff_max_ms": 4000}}

    def test_per_user_back_off(self):
        k = self.conn()
        self.user("alice", k)
        for _ in range(3):
            r = k.call("login", username="alice", password="wrong password")
            self.assertEqual(r["status"], 14, r)
        other = self.conn(src="127.0.0.3")  # throttled by name, from any address
        r = other.call("login", username="alice", password=PASSWORD)
        self.assertEqual(r["status"], ERR_RATE_LIMITED, r)
        self.assertIn("limits.login_failures_per_user", r["error"])
        # back-off ends; the right password works again
        def can():
            return k.call("login", username="alice", password=PASSWORD)["status"] == 0
        wait_until(can, 8, interval=0.5, what="the back-off to end")

    def test_per_address_back_off(self):
        honest = self.conn()
        self.user("alice", honest)
        k = self.conn(src="127.0.0.2")
        for i in range(4):
            r = k.call("login", username="guess%d" % i, password="wrong password")
            self.assertEqual(r["status"], 14, r)
        r = k.call("login", username="someone", password="wrong password")
        self.assertEqual(r["status"], ERR_RATE_LIMITED, r)
        self.assertIn("limits.login_failures_per_address", r["error"])
        ok(honest.call("login", username="alice", password=PASSWORD), "login from 127.0.0.1")


class BusyTest(Base):
    extra = {"hash_workers": 1, "password_hash": {"opslimit": 3, "memlimit": 16 * 1024 * 1024},
             "limits": {"password_checks_queued": 1, "login_failures_per_address": 1000,
                        "login_failures_per_user": 1000}}

    def test_password_check_queue_bound(self):
        k = self.conn()
        self.user("alice", k)
        for _ in range(10):
            k.send("login", username="alice", password="wrong password")
        rs = [k.recv() for _ in range(10)]
        busy = [r for r in rs if r["status"] == ERR_BUSY]
        self.assertTrue(busy, "ten queued Argon2id checks with a queue of 1: %r" % rs)
        self.assertIn("limits.password_checks_queued", busy[0]["error"])


# --------------------------------------------------------------- hostile input

class Honest(threading.Thread):
    """Pings and counts in a loop from 127.0.0.1, recording the worst latency."""

    def __init__(self, port, token):
        super().__init__(daemon=True)
        self.k = Conn(port, timeout=30)
        self.token = token
        self.stop = threading.Event()
        self.worst = 0.0
        self.done = 0
        self.error = None
        self.t0 = time.monotonic()

    def run(self):
        try:
            while not self.stop.is_set():
                t = time.monotonic()
                r = self.k.call("counts", token=self.token)
                if r["status"] != 0:
                    raise AssertionError("honest request failed: %r" % r)
                self.worst = max(self.worst, time.monotonic() - t)
                self.done += 1
                time.sleep(0.02)
        except Exception as e:  # noqa: BLE001 — reported by the test
            self.error = e
        finally:
            self.k.close()

    def finish(self, test):
        self.stop.set()
        self.join(30)
        test.assertIsNone(self.error, "the honest client failed during the attack")
        test.assertGreater(self.done, 10, "the honest client made almost no progress: %d requests"
                           " in %.1f s (worst %.2f s)" % (self.done, time.monotonic() - self.t0,
                                                          self.worst))
        test.assertLess(self.worst, HONEST_BOUND_S,
                        "an honest request took %.2f s during the attack" % self.worst)


class HostileInputTest(Base):
    def honest(self):
        h = Honest(self.port, self.user("honest"))
        h.start()
        return h

    def test_garbage_and_giant_frames(self):
        h = self.honest()
        rnd = random.Random(8)
        # at least 60 connections and 3 s of them: the honest client's
        # progress is counted over the attack, which must outlast its pace
        until = time.monotonic() + 3
        i = -1
        while i < 59 or time.monotonic() < until:
            i += 1
            k = Conn(self.port, "127.0.0.2")
            try:
                kind = i % 3
                if kind == 0:
                    k.s.sendall(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 4096))) + b"\n")
                elif kind == 1:
                    k.s.sendall(b"{" * 1100000)  # a line that never ends: past max_frame
                else:
                    k.s.sendall(b'{"m":"login","rid":1,"username":"' + b"a" * 2000000 + b'"}\n')
                self.assertTrue(k.closed_within(10), "garbage connection %d stayed open" % i)
            except ConnectionError:
                pass
            finally:
                k.close()
        h.finish(self)
        self.assertIsNone(self.c.procs[0].poll(), "the server died")

    def test_slowloris(self):
        h = self.honest()
        slow = []
        for _ in range(200):
            try:
                slow.append(Conn(self.port, "127.0.0.2"))
            except OSError:
                break
        self.assertEqual(len(slow), 200)
        line = b'{"m":"ping","rid":1}\n'
        for i in range(6):  # one byte per connection per second
            for k in slow:
                try:
                    k.s.send(line[i:i + 1])
                except OSError:
                    pass
            time.sleep(1)
        h.finish(self)
        for k in slow:
            k.close()

    def test_login_flood(self):
        h = self.honest()
        stop = threading.Event()

        def flood(src):
            while not stop.is_set():
                try:
                    k = Conn(self.port, src)
                    for i in range(50):
                        k.send("login", username="victim%d" % (i % 5), password="guess guess")
                    for _ in range(50):
                        k.recv()
                    k.close()
                except (OSError, EOFError, ValueError):
                    time.sleep(0.05)

        ts = [threading.Thread(target=flood, args=(src,), daemon=True)
              for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4")]
        for t in ts:
            t.start()
        time.sleep(4)
        t0 = time.monotonic()
        honest = self.conn()
        ok(honest.call("login", username="honest", password=PASSWORD), "honest login during the flood")
        login_s = time.monotonic() - t0
        stop.set()
        for t in ts:
            t.join(30)
        h.finish(self)
        self.assertLess(login_s, HONEST_BOUND_S * 2, "an honest login took %.2f s" % login_s)


# --------------------------------------------------------------- cluster

def pb_varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def pb_field(num, value):
    """A protobuf field: int -> varint, bytes -> length-delimited."""
    if isinstance(value, int):
        return pb_varint(num << 3) + pb_varint(value)
    return pb_varint(num << 3 | 2) + pb_varint(len(value)) + value


def peer_frame(field, body):
    msg = pb_field(field, body)
    return struct.pack(">I", len(msg)) + msg


class ClusterBase(Base):
    n = 3

    def status(self, via):
        r = self.c.cli("admin", "status", server=via)
        return json.loads(r.stdout)["servers"] if r.returncode == 0 else None

    def primary(self, not_=None):
        def pick():
            for i in range(self.n):
                if self.c.procs[i].poll() is not None or i == not_:
                    continue
                st = self.status(i)
                for row in st or []:
                    if row["role"] == "primary" and row["id"] != not_ and row["reachable"]:
                        return row["id"] + 1
            return None
        p = wait_until(pick, 20, interval=0.2, what="a primary") - 1

        def serving():
            k = Conn(self.c.ports[p])
            try:
                return k.call("ping")["status"] == 0 and \
                    k.call("counts", token="x")["status"] == ERR_NOT_LOGGED_IN
            finally:
                k.close()
        wait_until(serving, 20, interval=0.2, what="primary %d to serve" % p)
        return p


class FailoverAuthTest(ClusterBase):
    def test_logged_out_token_fails_everywhere_also_after_failover(self):
        p = self.primary()
        k = self.conn(port=self.c.ports[p])
        tgone = self.user("alice", k)
        tlive = self.user("bob", k)
        ok(k.call("logout", token=tgone), "logout")
        for i in range(self.n):
            r = one_call(self.c.ports[i], "counts", token=tgone)
            self.assertIn(r["status"], (ERR_NOT_LOGGED_IN, ERR_NOT_PRIMARY, ERR_UNAVAILABLE),
                          "server %d accepted a logged-out token: %r" % (i, r))
        k.close()
        self.c.kill(p)
        q = self.primary(not_=p)

        def answer(tok):
            r = one_call(self.c.ports[q], "counts", token=tok)
            return r if r["status"] != ERR_UNAVAILABLE else None
        r = wait_until(lambda: answer(tlive), 20, what="the new primary to serve")
        self.assertEqual(r["status"], 0, "a live token fails on the new primary: %r" % r)
        r = answer(tgone)
        self.assertEqual(r["status"], ERR_NOT_LOGGED_IN,
                         "the old token works on the new primary: %r" % r)


class SecretClusterTest(ClusterBase):
    extra = {"cluster_secret": SECRET}

    def test_stranger_cannot_inject_replication_messages(self):
        p = self.primary()
        k = self.conn(port=self.c.ports[p])
        t = self.user("alice", k)
        ok(k.call("send", token=t, to="alice", body="before"), "send")
        backup = (p + 1) % self.n
        before = wait_until(lambda: self.status(p), 10, what="status")
        peer_port = self.c.ports[backup] + 1000
        forged_op = before[p]["op"] + 1
        entry = pb_field(1, forged_op) + pb_field(2, before[p]["view"]) + pb_field(3, b"\x04" * 40)
        prepare = b"".join([pb_field(1, 1), pb_field(2, before[p]["view"]), pb_field(3, forged_op),
                            pb_field(4, forged_op), pb_field(6, forged_op - 1),
                            pb_field(7, before[p]["view"]), pb_field(9, entry)])
        svc = pb_field(1, 4) + pb_field(2, before[p]["view"] + 7)
        # version 2, claiming to be the primary by its (host, peer_port)
        hello = pb_field(1, 2) + pb_field(2, p) + pb_field(3, self.n) + \
            pb_field(5, b"127.0.0.1") + pb_field(6, self.c.ports[p] + 1000)
        attempts = [
            # no Auth at all: Hello then straight to VR
            peer_frame(1, hello) + peer_frame(2, prepare) + peer_frame(2, svc),
            # a Hello with a nonce and a made-up proof
            peer_frame(1, hello + pb_field(4, os.urandom(32))) +
            peer_frame(6, pb_field(1, os.urandom(32))) + peer_frame(2, prepare) + peer_frame(2, svc),
            # no Hello
            peer_frame(2, svc) + peer_frame(2, prepare),
        ]
        for i, raw in enumerate(attempts):
            s = socket.create_connection(("127.0.0.1", peer_port), timeout=10)
            try:
                s.sendall(raw)
            except ConnectionError:
                pass
            got, closed = b"", False
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        closed = True
                        break
                    got += chunk
            except ConnectionError:
                closed = True
            except socket.timeout:
                pass
            s.close()
            self.assertTrue(closed, "forged peer connection %d was not closed" % i)
        time.sleep(1.5)  # an accepted SVC for view+7 would have started a view change by now
        after = wait_until(lambda: self.status(p), 10, what="status")
        self.assertEqual([r["view"] for r in after], [r["view"] for r in before],
                         "a stranger's messages changed the view")
        self.assertTrue(all(r["op"] == before[p]["op"] for r in after), after)
        self.assertEqual(len({r["digest"] for r in after}), 1, after)
        self.assertIn("did not prove the cluster secret", self.c.log(backup) + "")
        ok(one_call(self.c.ports[p], "send", token=t, to="alice", body="after"), "still serving")


class MismatchedSecretTest(unittest.TestCase):
    """Three servers, three different secrets: no server may form a quorum."""

    def test_cluster_with_mismatched_secrets_does_not_form(self):
        c = Cluster(PARLEYD, PARLEY, n=3, transport=JSON_TCP,
                    extra={"election_timeout_ms": 500, "heartbeat_ms": 50})
        self.addCleanup(c.close)
        for i in range(3):
            cfg = dict(c.cfg)
            cfg["cluster_secret"] = SECRET + str(i)
            path = os.path.join(c.dir, "s%d.json" % i)
            with open(path, "w") as f:
                json.dump(cfg, f)
            log = open(c.logs[i], "ab")
            c.procs[i] = subprocess.Popen([PARLEYD, path, str(i), c.data_dir(i)], stdout=log,
                                          stderr=log, stdin=subprocess.DEVNULL)
            log.close()
        for i in range(3):
            c.wait_listening(i)
        deadline = time.monotonic() + 5  # ten election timeouts
        while time.monotonic() < deadline:
            for i in range(3):
                k = Conn(c.ports[i])
                r = k.call("register", username="alice%d" % i, password=PASSWORD)
                k.close()
                self.assertIn(r["status"], (ERR_NOT_PRIMARY, ERR_UNAVAILABLE),
                              "server %d served without a quorum: %r" % (i, r))
            time.sleep(0.5)
        for i in range(3):
            st = one_call(c.ports[i], "status")["servers"]
            self.assertEqual([row["reachable"] for row in st], [row["id"] == i for row in st],
                             "server %d reaches a peer with another secret: %r" % (i, st))
            self.assertIn("cluster secret", c.log(i))


def main():
    global PARLEYD, PARLEY
    if len(sys.argv) < 3:
        sys.exit("usage: test_security.py PARLEYD PARLEY [unittest args]")
    PARLEYD, PARLEY = sys.argv[1], sys.argv[2]
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)


if __name__ == "__main__":
    main()
