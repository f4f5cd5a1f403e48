#!/usr/bin/python3
"""Scenario found by the fault suite (seed 5002, 5 servers, JSON store,
compaction every 30 ops): a backup that installs a snapshot and is killed
-9 soon after cannot restart:

    ERROR [s1] cannot start: the log starts at op 539 but the store applied only op 512

core/seq.c snap_install() imports the snapshot (store commit, which
store.h allows to be lost in a crash: "commit() need not sync ... the core
replays the durable log") and then truncates the whole log, durably. The
JSON store makes commits durable only at its next checkpoint, so after a
crash the store is back at its last checkpoint while the log it would
replay from is gone.

This script replays it deterministically on 3 servers:
  1. cut server 2 off, commit enough sends that the others compact past it;
  2. heal, wait until server 2 logs "installed a snapshot";
  3. one more send (so server 2 appends past the snapshot), kill -9 server 2;
  4. restart server 2: it must come back and agree on the digest.

  scenario_snapshot_crash.py PARLEYD PARLEY [STORE]   (STORE default json)
Exit 0 when server 2 recovers, 1 when it does not.
"""
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import FaultCluster  # noqa: E402


def main():
    parleyd, parley = sys.argv[1], sys.argv[2]
    store = sys.argv[3] if len(sys.argv) > 3 else "json"
    work = tempfile.mkdtemp(prefix="parley-scenario-")
    c = FaultCluster([parleyd], [parley], 3, work, seed=1,
                     extra={"compaction": {"ops": 20, "keep_ops": 4}, "store": store})
    sess = os.path.join(work, "alice.session")

    def cli(*args, stdin=None):
        rc, out, err = c.cli(sess, list(args), stdin=stdin, timeout=15)
        if rc != 0:
            raise RuntimeError("parley %s: exit %s: %s" % (" ".join(args), rc, err.strip()))
        return json.loads(out) if out.strip() else None

    def wait(pred, what, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.1)
        raise RuntimeError("timed out waiting for " + what)

    try:
        for i in range(3):
            c.start(i)
        for i in range(3):
            wait(lambda: c.listening(i), "server %d" % i)
        cli("register", "alice", "--password-stdin", stdin="pw-alice-123\n")
        cli("login", "alice", "--password-stdin", stdin="pw-alice-123\n")
        cut = ["0>2", "1>2", "2>0", "2>1"]
        c.proxy.set(cut, state="down", style="reset")
        for k in range(80):
            cli("send", "alice", "before-%d" % k)
        c.proxy.set(cut, state="up")
        wait(lambda: "installed a snapshot" in open(c.logs[2]).read(), "server 2 to install a snapshot")
        cli("send", "alice", "after-snapshot")
        time.sleep(0.3)  # server 2 appends it; far fewer than 20 ops, so no compaction yet
        c.kill(2)
        c.start(2)
        try:
            wait(lambda: c.listening(2) or not c.alive(2), "server 2 to restart")
        except RuntimeError:
            pass
        if not c.alive(2):
            print("FAIL: server 2 did not restart after a crash following a snapshot install:")
            print(c.log_tail(2, 6))
            return 1
        def agree():
            rows = [c.status_row(i) for i in range(3)]
            return all(rows) and len(set(r["digest"] for r in rows)) == 1
        wait(agree, "equal digests", timeout=30)
        print("ok: server 2 recovered and agrees (store %s)" % store)
        return 0
    finally:
        c.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
