"""Unit test of the fault-injecting proxy (proxy.py) against a local echo
server: each link mode does what the nemesis relies on, and closing the
controller stops the proxy process.

Run by meson (suite fault) as: test_proxy.py
"""
import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy import ProxyProcess  # noqa: E402


class Echo:
    def __init__(self):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.conns = []
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self.echo, args=(c,), daemon=True).start()

    @staticmethod
    def echo(c):
        while True:
            try:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
            except OSError:
                break
        c.close()

    def close(self):
        self.srv.close()
        for c in self.conns:
            c.close()


def round_trip(port, msg=b"hello", timeout=3.0):
    """Seconds for msg to come back, or the name of the failure."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as e:
        return type(e).__name__
    with s:
        t = time.monotonic()
        try:
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                d = s.recv(65536)
                if not d:
                    return "eof"
                got += d
        except socket.timeout:
            return "timeout"
        except OSError as e:
            return type(e).__name__
        if got != msg:
            return "garbled"
        return time.monotonic() - t


class ProxyTest(unittest.TestCase):
    def setUp(self):
        self.echo = Echo()
        self.p = ProxyProcess({"0>1": ["127.0.0.1", self.echo.port]}, seed=1)
        self.port = self.p.ports["0>1"]

    def tearDown(self):
        self.p.close()
        self.echo.close()

    def test_up_forwards_everything_in_order(self):
        self.assertIsInstance(round_trip(self.port), float)
        big = bytes(range(256)) * 8192  # 2 MiB
        self.assertIsInstance(round_trip(self.port, big, timeout=20), float)

    def test_slow_delays_each_direction(self):
        self.p.set(["0>1"], state="slow", delay_ms=150, jitter_ms=0)
        rt = round_trip(self.port)
        self.assertIsInstance(rt, float)
        self.assertGreaterEqual(rt, 0.29, "150 ms each way")

    def test_down_reset_refuses(self):
        self.p.set(["0>1"], state="down", style="reset")
        self.assertIn(round_trip(self.port), ("ConnectionResetError", "eof", "BrokenPipeError"))
        self.p.set(["0>1"], state="up")
        self.assertIsInstance(round_trip(self.port), float)

    def test_down_reset_cuts_open_connections(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=3)
        with s:
            s.sendall(b"x")
            self.assertEqual(s.recv(1), b"x")
            self.p.set(["0>1"], state="down", style="reset")
            with self.assertRaises(OSError):
                s.sendall(b"y")
                if not s.recv(1):
                    raise ConnectionResetError("eof")

    def test_blackhole_holds_bytes(self):
        self.p.set(["0>1"], state="down", style="blackhole")
        self.assertEqual(round_trip(self.port, timeout=0.5), "timeout")

    def test_blackhole_heal_delivers_late_or_resets(self):
        outcomes = set()
        for _ in range(8):
            self.p.set(["0>1"], state="down", style="blackhole")
            s = socket.create_connection(("127.0.0.1", self.port), timeout=3)
            with s:
                s.sendall(b"held")
                time.sleep(0.1)
                self.p.set(["0>1"], state="up")
                try:
                    outcomes.add("late" if s.recv(16) == b"held" else "eof")
                except OSError:
                    outcomes.add("reset")
        self.assertTrue(outcomes <= {"late", "reset", "eof"}, outcomes)
        self.assertIn("late", outcomes, "held bytes are delivered in order after healing")

    def test_lossy_resets_some_connections(self):
        self.p.set(["0>1"], state="lossy", reset_p=0.5, stall_p=0.0)
        results = [round_trip(self.port) for _ in range(12)]
        self.assertTrue(any(isinstance(r, float) for r in results), results)
        self.assertTrue(any(not isinstance(r, float) for r in results), results)

    def test_stats_and_close(self):
        round_trip(self.port)
        st = self.p.stats()["0>1"]
        self.assertGreaterEqual(st["accepted"], 1)
        self.assertGreaterEqual(st["bytes"], 10)
        self.p.close()
        self.assertIsNotNone(self.p.proc.poll(), "the proxy exits when its controller closes")
        self.assertNotIsInstance(round_trip(self.port, timeout=1), float)


if __name__ == "__main__":
    unittest.main(verbosity=2)
