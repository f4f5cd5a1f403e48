"""Self-test of the fault harness against tests/fault/fake_parley.py (a
stand-in cluster that never loses data unless told to): a clean run must
pass, a run whose fake server loses acknowledged sends must be caught, and
neither may leave a process behind.

Run by meson (suite fault) as: test_selftest.py
"""
import os
import subprocess
import sys
import tempfile
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
FAULT = os.path.join(HERE, "fault.py")


def leftovers(mark):
    """Processes still alive that inherited this run's marker variable."""
    found = []
    needle = ("PARLEY_FAULT_SELFTEST=%s" % mark).encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                env = f.read().split(b"\0")
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if needle in env:
            found.append("%s: %s" % (pid, cmd[:200]))
    return found


class SelfTest(unittest.TestCase):
    def run_fault(self, bug=None, seed=5, servers=3):
        env = dict(os.environ)
        env.pop("FAKE_PARLEY_BUG", None)
        mark = uuid.uuid4().hex
        env["PARLEY_FAULT_SELFTEST"] = mark
        if bug:
            env["FAKE_PARLEY_BUG"] = bug
        with tempfile.TemporaryDirectory(prefix="parley-fault-selftest-") as out:
            r = subprocess.run([sys.executable, FAULT, "--fake", "--servers", str(servers),
                                "--clients", "2", "--duration", "10", "--seed", str(seed),
                                "--out", out],
                               capture_output=True, text=True, timeout=240, env=env)
            self.assertTrue(any(n.startswith("history-") for n in os.listdir(out)),
                            "the history file is kept")
        self.assertEqual(leftovers(mark), [], "the harness left processes running")
        return r

    def test_clean_run_passes(self):
        r = self.run_fault(servers=5)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("violations: none", r.stdout)
        self.assertIn("seed 5", r.stdout)

    def test_lost_acknowledged_sends_are_caught(self):
        r = self.run_fault(bug="lose", seed=6)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("lost", r.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
