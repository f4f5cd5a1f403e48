"""TLS on client and peer connections: real parleyd processes and the real
CLI, with a throwaway CA, a rogue CA and their certificates made by the
openssl CLI in a temp dir at test time (pki.py). docs/operations.md "TLS".

Run by meson (suite tls) as:
  test_tls.py PARLEYD PARLEY OPENSSL [unittest args]
"""
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import Cluster, wait_until  # noqa: E402
from pki import Pki  # noqa: E402

PARLEYD = PARLEY = OPENSSL = None
PKI = None

TRANSPORTS = [
    ("tcp-binary", {"name": "tcp", "codec": "binary"}),
    ("tcp-json", {"name": "tcp", "codec": "json"}),
    ("grpcish", {"name": "grpcish"}),
]
EXIT_UNREACHABLE = 3


def setUpModule():
    global PKI
    PKI = Pki(OPENSSL)


def tearDownModule():
    if PKI:
        PKI.close()


def write_config(c, name, tls, servers=None):
    """A config for the same cluster with a different "tls" (None: none)."""
    cfg = {k: v for k, v in c.cfg.items() if k != "tls"}
    if servers is not None:
        cfg["servers"] = servers
    if tls is not None:
        cfg["tls"] = tls
    path = os.path.join(c.dir, name)
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def cli_with(c, config, user, *args, timeout=30, stdin="correct horse\n"):
    env = dict(os.environ)
    env["PARLEY_SESSION"] = os.path.join(c.dir, "%s.session" % user)
    env.pop("PARLEY_CONFIG", None)
    return subprocess.run([PARLEY, "-c", config, "--json"] + list(args), input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=env)


def start_with(c, i, config):
    """Start server i from its own config file (the harness uses one)."""
    log = open(c.logs[i], "ab")
    c.procs[i] = subprocess.Popen([PARLEYD, config, str(i), c.data_dir(i)], stdout=log,
                                  stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    c.wait_listening(i)


class JsonTlsConn:
    """A tcp/json connection over TLS made with Python's ssl module: an
    independent client, so the frames inside TLS are checked to be the plain
    wire format of docs/protocol.md."""

    def __init__(self, port, cafile):
        ctx = ssl.create_default_context(cafile=cafile)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        self.buf = b""
        self.rid = 0

    def call(self, obj):
        self.rid += 1
        obj = dict(obj, rid=self.rid)
        self.sock.sendall(json.dumps(obj).encode() + b"\n")
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                resp = json.loads(line)
                if resp.get("rid") == self.rid:
                    return resp
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("server closed the TLS connection")
            self.buf += chunk

    def close(self):
        self.sock.close()


class TlsTest(unittest.TestCase):
    def make(self, n=1, transport=None, tls=None, extra=None):
        cfg = {"tls": tls if tls is not None else PKI.tls()}
        if n > 1:
            cfg.update({"election_timeout_ms": 1000, "heartbeat_ms": 100})
        cfg.update(extra or {})
        self.c = Cluster(PARLEYD, PARLEY, n=n, transport=transport, extra=cfg)
        return self.c

    def tearDown(self):
        c = getattr(self, "c", None)
        if c is None:
            return
        failed = hasattr(self._outcome, "errors") and any(e for _, e in self._outcome.errors if e)
        if failed or os.environ.get("PARLEY_TEST_LOGS"):
            for i in range(len(c.ports)):
                sys.stderr.write("---- server %d log ----\n%s\n" % (i, c.log(i)))
        c.close()


class SingleServer(TlsTest):
    def test_each_framed_transport_end_to_end(self):
        for label, transport in TRANSPORTS:
            with self.subTest(transport=label):
                c = self.make(transport=transport)
                try:
                    c.start_all()
                    # The port speaks TLS with the configured certificate.
                    ctx = ssl.create_default_context(cafile=PKI.ca)
                    with socket.create_connection(("127.0.0.1", c.ports[0]), timeout=10) as raw:
                        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                            cn = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
                            self.assertEqual(cn, "server", "%s: served certificate" % label)
                    c.register("alice")
                    c.register("bob")
                    c.login("alice")
                    c.login("bob")
                    sent = c.cli_json("alice", "send", "bob", "over tls via " + label)
                    got = c.cli_json("bob", "read")
                    msgs = got if isinstance(got, list) else got["messages"]
                    self.assertEqual([m["body"] for m in msgs], ["over tls via " + label])
                    self.assertEqual(msgs[0]["id"], sent["id"])
                finally:
                    c.close()
                    self.c = None

    def test_plaintext_client_fails_cleanly_and_others_carry_on(self):
        c = self.make(transport={"name": "tcp", "codec": "json"})
        c.start_all()
        c.register("alice")
        c.register("bob")
        c.login("bob")
        # A socket that starts a TLS record and stalls: the handshake
        # deadline (10 s) must close it, whatever else happens meanwhile.
        stall = socket.create_connection(("127.0.0.1", c.ports[0]), timeout=5)
        stall.sendall(b"\x16\x03\x01")
        t_stall = time.monotonic()
        # Two TLS clients stay connected throughout: a raw tcp/json one and
        # the CLI's listen.
        raw = JsonTlsConn(c.ports[0], PKI.ca)
        lp = c.listen("bob")
        try:
            r = raw.call({"m": "login", "username": "alice", "password": "correct horse"})
            self.assertEqual(r["status"], 0, "login over a raw TLS tcp/json connection: %r" % r)
            c.login("alice")
            c.cli_json("alice", "send", "bob", "before")
            self.assertIn("before", lp.stdout.readline())

            plain = write_config(c, "plain.json", None)
            t0 = time.monotonic()
            r = cli_with(c, plain, "carol", "register", "carol", "--password-stdin")
            self.assertEqual(r.returncode, EXIT_UNREACHABLE,
                             "a plaintext client to a TLS server: exit 3, got %d: %s%s"
                             % (r.returncode, r.stdout, r.stderr))
            self.assertLess(time.monotonic() - t0, 10, "it gives up promptly")
            # Raw plaintext garbage and a half handshake, then gone.
            with socket.create_connection(("127.0.0.1", c.ports[0]), timeout=5) as s:
                s.sendall(b'{"m":"login","rid":1}\n')
                s.settimeout(5)
                try:
                    while s.recv(4096):
                        pass
                except (ConnectionResetError, socket.timeout):
                    pass
            with socket.create_connection(("127.0.0.1", c.ports[0]), timeout=5) as s:
                s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            wait_until(lambda: c.log(0).count("TLS handshake failed") >= 2, 10,
                       what="handshake failures logged")

            # Nobody else noticed: the same raw connection still answers,
            # the listener still gets pushes, the CLI still works.
            r = raw.call({"m": "login", "username": "alice", "password": "correct horse"})
            self.assertEqual(r["status"], 0, "the raw TLS connection still serves: %r" % r)
            c.cli_json("alice", "send", "bob", "after")
            self.assertIn("after", lp.stdout.readline())
            self.assertIsNone(lp.poll(), "the listener is still running")
            self.assertNotIn("carol", json.dumps(c.cli_json("alice", "users")),
                             "nothing of the plaintext client's request was executed")

            stall.settimeout(20)
            try:
                self.assertEqual(stall.recv(1), b"", "the stalled handshake is closed")
            except ConnectionResetError:
                pass
            took = time.monotonic() - t_stall
            self.assertGreater(took, 8, "not before the deadline")
            self.assertLess(took, 15, "closed at the handshake deadline")
            self.assertIn("no handshake within 10 s", c.log(0))
            # ... and still nobody else noticed.
            r = raw.call({"m": "login", "username": "alice", "password": "correct horse"})
            self.assertEqual(r["status"], 0)
        finally:
            stall.close()
            raw.close()
            lp.terminate()
            lp.wait(timeout=10)
            lp.stdout.close()
            lp.stderr.close()

    def test_client_refuses_a_server_signed_by_another_ca(self):
        c = self.make()
        c.start_all()
        c.register("alice")
        rogue = write_config(c, "rogue-ca.json", {"ca": PKI.rogue_ca})
        r = cli_with(c, rogue, "alice", "login", "alice", "--password-stdin", timeout=30)
        self.assertEqual(r.returncode, EXIT_UNREACHABLE, "wrong CA: exit 3: %s%s" % (r.stdout, r.stderr))
        self.assertIn("certificate", r.stdout + r.stderr, "the reason names the certificate")
        self.assertFalse(os.path.exists(os.path.join(c.dir, "alice.session")),
                         "no session was obtained through an unverified server")
        # Default trust store (no "ca"): a private CA is not in it.
        system = write_config(c, "system-ca.json", {})
        r = cli_with(c, system, "bob", "register", "bob", "--password-stdin")
        self.assertEqual(r.returncode, EXIT_UNREACHABLE, "system trust store: exit 3")
        good = write_config(c, "client.json", {"ca": PKI.ca})
        r = cli_with(c, good, "alice", "login", "alice", "--password-stdin", timeout=30)
        self.assertEqual(r.returncode, 0, "a client with only the right CA logs in: %s" % r.stderr)

    def test_client_refuses_a_certificate_for_another_name(self):
        c = self.make(tls=PKI.tls(leaf=PKI.misnamed))
        c.start_all()
        r = c.cli("alice", "register", "alice", "--password-stdin", stdin="correct horse\n")
        self.assertEqual(r.returncode, EXIT_UNREACHABLE)
        self.assertIn("mismatch", r.stdout + r.stderr, "the reason says the name does not match")

    def test_verify_clients_needs_a_client_certificate(self):
        c = self.make(tls=PKI.tls(verify_clients=True))
        c.start_all()
        # The server's own config carries cert and key: it presents them.
        c.register("alice")
        only_ca = write_config(c, "only-ca.json", {"ca": PKI.ca})
        r = cli_with(c, only_ca, "bob", "register", "bob", "--password-stdin")
        self.assertEqual(r.returncode, EXIT_UNREACHABLE, "no client certificate: refused")
        rogue = write_config(c, "rogue-client.json", PKI.tls(leaf=PKI.rogue, verify_clients=True))
        r = cli_with(c, rogue, "bob", "register", "bob", "--password-stdin")
        self.assertEqual(r.returncode, EXIT_UNREACHABLE, "a client certificate from another CA: refused")
        self.assertIn("TLS handshake failed", c.log(0))

    def test_config_mistakes_name_the_key(self):
        c = self.make()
        cert, key = PKI.server
        three = [{"host": "127.0.0.1", "port": p} for p in (c.ports[0], c.ports[0] + 1, c.ports[0] + 2)]
        cases = [
            ({"cert": cert}, None, None, "tls.key: missing"),
            ({"cert": cert, "key": key, "verify_clients": True}, None, None, "tls.verify_clients"),
            ({"cert": cert, "key": key, "clients": "yes"}, None, None, "tls.clients: must be true or false"),
            ({"cert": cert, "key": key, "ciphers": "ALL"}, None, None, "tls.ciphers: unknown key"),
            ({"cert": cert, "key": key}, {"name": "tcp", "tls": {}}, None, "transport.tls"),
            ({"cert": cert, "key": key}, None, three, "tls.ca: missing: peer links use mutual TLS"),
            ({"cert": cert, "key": PKI.rogue[1], "ca": PKI.ca}, None, None, "tls.key"),
        ]
        for i, (tls, transport, servers, want) in enumerate(cases):
            with self.subTest(want=want):
                cfg = write_config(c, "bad%d.json" % i, tls, servers=servers)
                if transport is not None:
                    with open(cfg) as f:
                        doc = json.load(f)
                    doc["transport"] = transport
                    with open(cfg, "w") as f:
                        json.dump(doc, f)
                p = subprocess.run([PARLEYD, cfg, "0", c.data_dir(0)], capture_output=True,
                                   text=True, timeout=30)
                self.assertNotEqual(p.returncode, 0, "parleyd started with %r" % tls)
                self.assertIn(want, p.stdout + p.stderr)

    def test_bad_paths_fail_at_start_with_the_key_named(self):
        c = self.make(tls=PKI.tls(leaf=(PKI.server[0], os.path.join(PKI.dir, "missing.key"))))
        p = subprocess.run([PARLEYD, c.config, "0", c.data_dir(0)], capture_output=True,
                           text=True, timeout=30)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("tls.key", p.stderr + p.stdout)
        self.assertIn("missing.key", p.stderr + p.stdout)


class ThreeServers(TlsTest):
    def status(self, via):
        r = self.c.cli("admin", "status", server=via)
        return json.loads(r.stdout)["servers"] if r.returncode == 0 else None

    def primary(self, alive):
        for i in alive:
            st = self.status(i)
            for row in st or []:
                if row["role"] == "primary" and row["reachable"] and row["id"] in alive:
                    return row["id"] + 1  # truthy for server 0
        return None

    def full_log(self, i):
        with open(self.c.logs[i], "rb") as f:
            return f.read().decode("utf-8", "replace")

    def send(self, body):
        r = self.c.cli("alice", "send", "bob", body, timeout=30)
        return r.returncode == 0

    def test_replicates_and_fails_over_over_mutual_tls(self):
        # With a cluster secret too: its proofs run inside TLS.
        c = self.make(n=3, extra={"cluster_secret": "a cluster secret of more than 32 bytes"})
        c.start_all()
        p = wait_until(lambda: self.primary([0, 1, 2]), 20, interval=0.2, what="a primary") - 1
        c.register("alice")
        c.register("bob")
        c.login("alice")
        c.login("bob")
        for i in range(3):
            self.assertTrue(self.send("m%d" % i))

        def converged():
            st = self.status(p)
            rows = [r for r in st or [] if r["reachable"]]
            return len(rows) == 3 and len({(r["applied"], r["digest"]) for r in rows}) == 1
        wait_until(converged, 20, interval=0.3, what="three equal digests over TLS peer links")
        for i in range(3):
            self.assertIn("link to server", c.log(i))
            self.assertNotIn("peer: TLS handshake", c.log(i), "server %d: no failed peer handshakes" % i)

        c.kill(p)
        alive = [i for i in range(3) if i != p]
        wait_until(lambda: self.primary(alive), 20, interval=0.2, what="a new primary")
        self.assertTrue(self.send("after failover"))
        got = c.cli_json("bob", "read", timeout=60)
        msgs = got if isinstance(got, list) else got["messages"]
        self.assertEqual([m["body"] for m in msgs], ["m0", "m1", "m2", "after failover"])

    def test_peer_without_a_valid_certificate_cannot_join(self):
        c = self.make(n=3)
        c.start(0, wait=False)
        c.start(1, wait=False)
        c.wait_listening(0)
        c.wait_listening(1)
        wait_until(lambda: self.primary([0, 1]), 20, interval=0.2, what="a primary of 0 and 1")
        c.register("alice")
        c.register("bob")
        c.login("alice")
        c.login("bob")
        self.assertTrue(self.send("m0"))

        # Server 2 with a certificate from another CA (but the right CA to
        # check others), then with no TLS at all: the others refuse it
        # either way. With server 1 down, 0 alone is no majority: a write
        # can only commit if 2 joined.
        rogue = write_config(c, "rogue.json", PKI.tls(leaf=PKI.rogue))
        plain = write_config(c, "plain.json", None)
        c.kill(1)
        for name, cfg in (("a rogue certificate", rogue), ("no TLS", plain)):
            with self.subTest(server2=name):
                before = self.full_log(0).count("TLS handshake")
                start_with(c, 2, cfg)
                wait_until(lambda: self.full_log(0).count("TLS handshake") > before, 10,
                           what="server 0 to log the refused handshake")
                self.assertFalse(self.send("while server 2 has " + name),
                                 "a write committed with server 2 (%s) counted" % name)
                st = self.status(0)
                self.assertFalse(any(r["id"] == 2 and r["reachable"] for r in st or []),
                                 "server 2 (%s) is not reachable over a peer link" % name)
                c.kill(2)

        # The same server with the cluster's certificate joins, so the
        # failures above were the certificate's.
        start_with(c, 2, c.config)
        wait_until(lambda: self.primary([0, 2]), 30, interval=0.3, what="0 and 2 to form a majority")
        self.assertNotIn("no cluster_secret configured", self.full_log(0),
                         "mutual TLS keeps strangers out: no warning about a missing secret")
        self.assertTrue(self.send("with a valid certificate"))
        got = c.cli_json("bob", "read", timeout=60)
        msgs = got if isinstance(got, list) else got["messages"]
        # A write that timed out stays in server 0's log and may commit once
        # a majority forms again (VR keeps it): "maybe", never required.
        bodies = [m["body"] for m in msgs]
        self.assertEqual(bodies[0], "m0")
        self.assertEqual(bodies[-1], "with a valid certificate")
        self.assertTrue(set(bodies[1:-1]) <= {"while server 2 has a rogue certificate",
                                              "while server 2 has no TLS"}, bodies)

    def test_a_member_cannot_pose_as_another_host(self):
        """Server 2 lives on 127.0.0.2 but holds the certificate of
        127.0.0.1 (signed by the right CA): the others refuse it both ways,
        so a stolen member certificate does not let one host stand in for
        another."""
        c = self.make(n=3)
        c.cfg["servers"][2]["host"] = "127.0.0.2"
        with open(c.config, "w") as f:
            json.dump(c.cfg, f)
        for i in range(3):
            c.start(i, wait=False)
        c.wait_listening(0)
        c.wait_listening(1)
        wait_until(lambda: self.primary([0, 1]), 20, interval=0.2, what="a primary of 0 and 1")
        wait_until(lambda: "does not name 127.0.0.2" in self.full_log(0), 10,
                   what="server 0 to refuse server 2's Hello")
        wait_until(lambda: "IP address mismatch" in self.full_log(0), 10,
                   what="server 0 to refuse server 2's certificate when dialling it")
        c.register("alice")
        c.register("bob")
        c.login("alice")
        c.kill(1)
        self.assertFalse(self.send("needs server 2"), "server 2 counted towards a majority")


def main():
    global PARLEYD, PARLEY, OPENSSL
    PARLEYD, PARLEY, OPENSSL = sys.argv[1], sys.argv[2], sys.argv[3]
    unittest.main(argv=[sys.argv[0]] + sys.argv[4:], verbosity=2)


if __name__ == "__main__":
    main()
