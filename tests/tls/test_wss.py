"""wss: the ws transport serving TLS from the config's "tls" object, with a
real parleyd, Debian's python3-websockets as an independent client, and the
real CLI (libparley's ws client half) over wss. Certificates come from a
throwaway CA made at test time (pki.py). docs/operations.md "TLS (wss)".

    test_wss.py PARLEYD PARLEY OPENSSL [unittest args]

Two configurations, one server each:
  - WssMain: "transport": "ws" with "tls": the CLI speaks wss too;
  - WssBesideTcp: "transport" tcp (TLS) plus "transports": [ws at an
    offset], the usual way to serve browsers.
Each checks the files and /cluster.json over https, the JSON objects over
wss (register, login, subscribe, send, push, read), and that a plaintext
ws:// or http:// client on the TLS port is turned away promptly without
disturbing a wss client that is connected meanwhile.
"""
import asyncio
import json
import os
import socket
import ssl
import sys
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from harness import Cluster, test_failed, wait_until  # noqa: E402
from pki import Pki  # noqa: E402

import websockets  # noqa: E402

PARLEYD = PARLEY = OPENSSL = None
PKI = None
PW = "correct horse"
WS_OFFSET = 3000
EXIT_UNREACHABLE = 3
# A refusal must come well before the server's 10 s request-head deadline:
# an answer that only comes from that timer is a hang, not a refusal.
REFUSED_WITHIN_S = 5


def setUpModule():
    global PKI
    PKI = Pki(OPENSSL)


def tearDownModule():
    if PKI:
        PKI.close()


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def client_ctx(cafile=None):
    """A client context that trusts only the test CA (not the system's)."""
    return ssl.create_default_context(cafile=cafile or PKI.ca)


class Wss:
    """One wss:// connection speaking the JSON objects of docs/protocol.md
    "tcp/json"; pushes that arrive while waiting for an answer are kept."""

    def __init__(self, ws):
        self.ws = ws
        self.rid = 0
        self.pushes = []

    @classmethod
    async def open(cls, url, **kw):
        return cls(await websockets.connect(url, ssl=client_ctx(), open_timeout=10, **kw))

    async def call(self, m, **fields):
        self.rid += 1
        await self.ws.send(json.dumps(dict(fields, m=m, rid=self.rid)))
        while True:
            r = json.loads(await self.ws.recv())
            if r.get("m") == "push":
                self.pushes.append(r)
            elif r.get("rid") == self.rid:
                return r
            else:
                raise AssertionError("%s (rid %d): unexpected message %r" % (m, self.rid, r))

    async def ok(self, m, **fields):
        r = await self.call(m, **fields)
        if r.get("status") != 0:
            raise AssertionError("%s over wss: status %r: %r" % (m, r.get("status"), r))
        return r

    async def login(self, user, register=True):
        if register:
            await self.ok("register", username=user, password=PW)
        return (await self.ok("login", username=user, password=PW))["token"]

    async def next_push(self, timeout=10):
        if not self.pushes:
            r = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if r.get("m") != "push":
                raise AssertionError("wanted a push, got %r" % r)
            return r
        return self.pushes.pop(0)

    async def close(self):
        await self.ws.close()


class WssCase(unittest.TestCase):
    """One TLS server per class; subclasses say what it serves (main
    transport and extra transports) and where its ws listener is."""
    transport = None
    transports = None

    @classmethod
    def setUpClass(cls):
        extra = {"tls": PKI.tls()}
        if cls.transports:
            extra["transports"] = cls.transports
        cls.c = Cluster(PARLEYD, PARLEY, n=1, transport=cls.transport, extra=extra)
        cls.c.start_all()

    @classmethod
    def tearDownClass(cls):
        cls.c.close()

    def tearDown(self):
        if test_failed(self) or os.environ.get("PARLEY_TEST_LOGS"):
            sys.stderr.write("---- server log ----\n%s\n" % self.c.log(0))

    def ws_port(self):
        raise NotImplementedError

    def url(self, scheme="wss", path="/ws"):
        return "%s://127.0.0.1:%d%s" % (scheme, self.ws_port(), path)

    def handshake_failures(self):
        return self.c.log(0).count("TLS handshake failed")

    # ---- the checks both configurations share ----

    def check_https_files(self):
        with urllib.request.urlopen(self.url("https", "/"), context=client_ctx(),
                                    timeout=10) as r:
            self.assertEqual(r.status, 200)
            self.assertIn(b'<script type="module" src="/app.js">', r.read(),
                          "GET / over https serves the web client's index.html")
            csp = r.headers["Content-Security-Policy"]
            self.assertIn(" " + self.url("wss", ""), csp,
                          "the CSP lets the page open wss:// to this server")
            self.assertNotIn("ws://", csp.replace("wss://", ""),
                             "a TLS page is never pointed at plaintext ws://")
        with urllib.request.urlopen(self.url("https", "/cluster.json"), context=client_ctx(),
                                    timeout=10) as r:
            doc = json.loads(r.read())
        self.assertIs(doc["tls"], True, "cluster.json says tls: %r" % doc)
        self.assertEqual(doc["servers"][0]["url"], self.url(),
                         "cluster.json names the wss:// URL of the ws listener")
        self.assertEqual(doc["servers"][0]["address"], "127.0.0.1:%d" % self.c.ports[0],
                         "address stays the main transport's host:port")

    def check_served_certificate(self):
        with socket.create_connection(("127.0.0.1", self.ws_port()), timeout=10) as raw:
            with client_ctx().wrap_socket(raw, server_hostname="127.0.0.1") as s:
                cn = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
        self.assertEqual(cn, "server", "the ws port presents the config's tls.cert")

    def check_chat_over_wss(self, alice, bob):
        async def go():
            a = await Wss.open(self.url())
            b = await Wss.open(self.url())
            try:
                ta = await a.login(alice)
                tb = await b.login(bob)
                await b.ok("subscribe", token=tb, after=0)
                sent = await a.ok("send", token=ta, to=bob, body="over wss")
                self.assertGreater(sent["id"], 0, "send answers the message id")
                push = await b.next_push()
                self.assertEqual((push["msg"]["id"], push["msg"]["from"], push["msg"]["body"]),
                                 (sent["id"], alice, "over wss"), "bob's push: %r" % push)
                got = await b.ok("read", token=tb, n=10)
                self.assertEqual([m["body"] for m in got["msgs"]], ["over wss"],
                                 "read over wss: %r" % got)
            finally:
                await a.close()
                await b.close()
        run(go())

    def check_plaintext_refused(self, user):
        """A ws:// upgrade and a plain http:// GET on the TLS port are turned
        away promptly; a wss client connected all along does not notice."""
        async def go():
            keep = await Wss.open(self.url())
            try:
                tok = await keep.login(user)
                before = self.handshake_failures()

                t0 = time.monotonic()
                try:
                    ws = await websockets.connect(self.url("ws"), open_timeout=REFUSED_WITHIN_S)
                except (TimeoutError, asyncio.TimeoutError):
                    self.fail("ws:// to the TLS port hung until the client's %d s timeout"
                              % REFUSED_WITHIN_S)
                except (websockets.exceptions.InvalidHandshake, OSError, EOFError):
                    pass
                else:
                    await ws.close()
                    self.fail("a plaintext ws:// handshake succeeded on the TLS port")
                self.assertLess(time.monotonic() - t0, REFUSED_WITHIN_S,
                                "the ws:// attempt ends promptly")

                with socket.create_connection(("127.0.0.1", self.ws_port()), timeout=10) as s:
                    s.sendall(b"GET /cluster.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    s.settimeout(REFUSED_WITHIN_S)
                    got = b""
                    try:
                        while True:
                            d = s.recv(4096)
                            if not d:
                                break
                            got += d
                    except ConnectionResetError:
                        pass
                    except socket.timeout:
                        self.fail("plain http:// to the TLS port hung")
                self.assertNotIn(b"HTTP/1.1", got, "no plaintext HTTP answer on the TLS port")

                wait_until(lambda: self.handshake_failures() >= before + 2, 10,
                           what="both plaintext attempts logged as failed TLS handshakes")

                # The wss client connected all along still gets answers.
                r = await keep.ok("counts", token=tok)
                self.assertEqual(r["unread"], 0, "the kept wss connection still answers")
            finally:
                await keep.close()
            # ... and new wss connections are still accepted.
            again = await Wss.open(self.url())
            try:
                await again.ok("ping")
            finally:
                await again.close()
        run(go())


class WssMain(WssCase):
    """"transport": "ws" with "tls": the only client port is wss."""
    transport = {"name": "ws"}

    def ws_port(self):
        return self.c.ports[0]

    def test_https_files_and_cluster_json(self):
        self.check_https_files()

    def test_served_certificate(self):
        self.check_served_certificate()

    def test_chat_over_wss(self):
        self.check_chat_over_wss("alice1", "bob1")

    def test_plaintext_ws_refused_cleanly(self):
        self.check_plaintext_refused("carol1")

    def test_cli_over_wss(self):
        """libparley's ws client half with TLS: the CLI registers, logs in
        and sends over wss, and chats with a python wss client."""
        c = self.c
        c.register("dave")
        c.login("dave")

        async def go():
            e = await Wss.open(self.url())
            try:
                te = await e.login("erin")
                await e.ok("subscribe", token=te, after=0)
                sent = c.cli_json("dave", "send", "erin", "from the CLI over wss")
                push = await e.next_push()
                self.assertEqual((push["msg"]["id"], push["msg"]["body"]),
                                 (sent["id"], "from the CLI over wss"),
                                 "the python client's push: %r" % push)
                await e.ok("send", token=te, to="dave", body="to the CLI over wss")
            finally:
                await e.close()
        run(go())
        got = c.cli_json("dave", "read")
        msgs = got if isinstance(got, list) else got["messages"]
        self.assertEqual([m["body"] for m in msgs], ["to the CLI over wss"],
                         "the CLI reads over wss what the python client sent")

    def test_cli_checks_the_certificate(self):
        """The ws client half verifies the server: another CA is refused
        before any request leaves, and a plaintext client gets nowhere."""
        c = self.c
        rogue = c.write_config("rogue-ca.json", [0], tls={"ca": PKI.rogue_ca})
        r = c.cli("frank", "register", "frank", "--password-stdin", stdin=PW + "\n",
                  config=rogue)
        self.assertEqual(r.returncode, EXIT_UNREACHABLE,
                         "a CLI trusting another CA: exit 3: %s%s" % (r.stdout, r.stderr))
        self.assertIn("certificate", r.stdout + r.stderr, "the reason names the certificate")

        plain = os.path.join(c.dir, "plain.json")
        with open(plain, "w") as f:
            json.dump({k: v for k, v in c.cfg.items() if k != "tls"}, f)
        t0 = time.monotonic()
        r = c.cli("frank", "register", "frank", "--password-stdin", stdin=PW + "\n",
                  config=plain)
        self.assertEqual(r.returncode, EXIT_UNREACHABLE,
                         "a plaintext ws CLI on the wss port: exit 3: %s%s"
                         % (r.stdout, r.stderr))
        self.assertLess(time.monotonic() - t0, 10, "it gives up promptly")
        c.register("ivy")
        c.login("ivy")
        self.assertNotIn("frank", json.dumps(c.cli_json("ivy", "users")),
                         "neither refused client's register was executed")


class WssBesideTcp(WssCase):
    """tcp (TLS) for the CLI plus "transports": [ws at WS_OFFSET]: both
    listeners serve TLS from the one "tls" object."""
    transports = [{"name": "ws", "port_offset": WS_OFFSET}]

    def ws_port(self):
        return self.c.ports[0] + WS_OFFSET

    def test_https_files_and_cluster_json(self):
        self.check_https_files()

    def test_served_certificate(self):
        self.check_served_certificate()

    def test_chat_over_wss(self):
        self.check_chat_over_wss("alice2", "bob2")

    def test_plaintext_ws_refused_cleanly(self):
        self.check_plaintext_refused("carol2")

    def test_tcp_cli_and_wss_client_chat(self):
        """A message from the CLI over tcp/TLS is pushed to the wss client,
        and one from the wss client is read by the CLI: one pipeline."""
        c = self.c
        c.register("gina")
        c.login("gina")

        async def go():
            h = await Wss.open(self.url())
            try:
                th = await h.login("hank")
                await h.ok("subscribe", token=th, after=0)
                sent = c.cli_json("gina", "send", "hank", "tcp to wss")
                push = await h.next_push()
                self.assertEqual((push["msg"]["id"], push["msg"]["body"]),
                                 (sent["id"], "tcp to wss"), "hank's push: %r" % push)
                await h.ok("send", token=th, to="gina", body="wss to tcp")
            finally:
                await h.close()
        run(go())
        got = c.cli_json("gina", "read")
        msgs = got if isinstance(got, list) else got["messages"]
        self.assertEqual([m["body"] for m in msgs], ["wss to tcp"])

    def test_origin_is_https(self):
        """With TLS the page's own origin is https://host:wsport; the same
        host:port as http:// is another origin and is refused (403)."""
        async def go():
            own = "https://127.0.0.1:%d" % self.ws_port()
            ws = await websockets.connect(self.url(), ssl=client_ctx(), origin=own)
            await ws.close()
            with self.assertRaises(websockets.exceptions.InvalidStatusCode) as e:
                await websockets.connect(self.url(), ssl=client_ctx(),
                                         origin="http://127.0.0.1:%d" % self.ws_port())
            self.assertEqual(e.exception.status_code, 403, "an http:// origin on wss")
        run(go())


def main():
    global PARLEYD, PARLEY, OPENSSL
    PARLEYD, PARLEY, OPENSSL = sys.argv[1], sys.argv[2], sys.argv[3]
    unittest.main(argv=[sys.argv[0]] + sys.argv[4:], verbosity=2)


if __name__ == "__main__":
    main()
