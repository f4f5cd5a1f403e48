"""A server out of file descriptors: accept fails with EMFILE, the listener
logs one line and pauses, the process lives on, and once descriptors are
free again it accepts by itself. The listener is shared (plugins/common
net.c, pl_net_listen), so this runs for a framed transport (tcp) and for
ws; its error path runs nowhere else.

    test_accept_limit.py PARLEYD PARLEY [unittest args]

The descriptor limit of the running server is lowered with prlimit(2) to a
few above what it holds, so the test does not depend on how many
descriptors start-up takes.
"""
import os
import resource
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster, test_failed, wait_until  # noqa: E402

PARLEYD, PARLEY = sys.argv[1], sys.argv[2]
del sys.argv[1:3]
SPARE_FDS = 8        # descriptors the server may still open
CONNECTIONS = 40     # well past SPARE_FDS; the listen backlog holds the rest


class AcceptLimit(unittest.TestCase):
    c = None

    def tearDown(self):
        if self.c is None:
            return
        if test_failed(self):
            sys.stderr.write("---- server log ----\n%s\n" % self.c.log(0))
        self.c.close()

    def check(self, transport):
        self.c = c = Cluster(PARLEYD, PARLEY, n=1, transport=transport)
        c.start_all()
        pid = c.procs[0].pid
        limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        held = len(os.listdir("/proc/%d/fd" % pid))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (held + SPARE_FDS, limits[1]))
        socks = []
        try:
            for _ in range(CONNECTIONS):
                try:
                    socks.append(socket.create_connection(("127.0.0.1", c.ports[0]), timeout=5))
                except OSError:
                    break  # a server that died: the check below says so
            want = ("accept on 127.0.0.1:%d failed: Too many open files; pausing accepts "
                    "for 500 ms" % c.ports[0])
            wait_until(lambda: want in c.log(0) or c.procs[0].poll() is not None, 10,
                       what="the failed accept to be logged")
            self.assertIsNone(c.procs[0].poll(), "parleyd died when accept failed (exit %s)"
                              % c.procs[0].returncode)
            self.assertIn(want, c.log(0), "the failed accept is logged with the pause")
        finally:
            for s in socks:
                s.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        # Only the pause's timer enables accepting again: a client that is
        # served proves it ran.
        r = c.cli("alice", "register", "alice", "--password-stdin", stdin="correct horse\n")
        self.assertEqual(r.returncode, 0, "a client after the pause is served: %s%s"
                         % (r.stdout, r.stderr))
        self.assertIsNone(c.procs[0].poll(), "parleyd is still running")

    def test_framed_tcp(self):
        self.check({"name": "tcp"})

    def test_ws(self):
        self.check({"name": "ws"})


if __name__ == "__main__":
    unittest.main(verbosity=2)
