#!/usr/bin/python3
"""Jepsen-style fault run for parley: a cluster of real parleyd processes,
concurrent CLI clients doing a mixed workload, a seeded nemesis, a recorded
history, and a checker. See docs/fault-testing.md.

  fault.py --parleyd build/core/parleyd --parley build/client/parley \\
           [--servers 5] [--clients 4] [--duration 60] [--seed N]

Exit status: 0 when the history satisfies every invariant, 1 on any
violation, 2 on a usage or setup error (binaries missing).
"""
import argparse
import atexit
import collections
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checker  # noqa: E402
from cluster import FaultCluster  # noqa: E402
from nemesis import Nemesis, make_schedule  # noqa: E402
import workload  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parleyd", default=os.environ.get("PARLEYD"))
    ap.add_argument("--parley", default=os.environ.get("PARLEY"))
    ap.add_argument("--servers", type=int, default=5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=60.0,
                    help="seconds of faults and workload (setup and final checks come on top)")
    ap.add_argument("--seed", type=int, default=None, help="replay this schedule (default: random)")
    ap.add_argument("--out", default=None,
                    help="directory for the history and, on violations, server logs "
                         "(default ./fault-logs)")
    ap.add_argument("--converge", type=float, default=60.0,
                    help="seconds the healed cluster gets for the final reads and equal digests")
    ap.add_argument("--store", default="sqlite",
                    help="store plugin of every server, or a comma list used round-robin "
                         "(e.g. sqlite,json: replicas with different stores)")
    ap.add_argument("--transport", default=None,
                    help="transport config value as JSON, e.g. '{\"name\":\"tcp\",\"codec\":\"json\"}'")
    ap.add_argument("--election-ms", type=int, default=1000,
                    help="election_timeout_ms of the cluster (heartbeat_ms is a tenth)")
    ap.add_argument("--compact", type=int, default=0, metavar="OPS",
                    help="compact the log every OPS ops (keeping OPS/5), so lagging servers "
                         "catch up by snapshot; default: the server's own setting")
    ap.add_argument("--membership", action="store_true",
                    help="mix membership changes into the schedule: remove a random backup, "
                         "wipe it, and add it back empty through `parley admin` (needs the "
                         "servers' admin ports and a token, which this sets up)")
    ap.add_argument("--keep", action="store_true", help="keep the servers' data directories")
    ap.add_argument("--keep-logs", action="store_true",
                    help="copy the servers' logs to --out even when there is no violation")
    ap.add_argument("--fake", action="store_true",
                    help="self-test: run against tests/fault/fake_parley.py instead of parley")
    a = ap.parse_args(argv)
    if a.seed is None:
        a.seed = int.from_bytes(os.urandom(3), "big")
    if a.fake:
        a.parleyd = a.parley = os.path.join(HERE, "fake_parley.py")
    if not a.parleyd or not a.parley:
        ap.error("--parleyd and --parley (or $PARLEYD and $PARLEY) are required")
    if a.servers < 1 or a.clients < 1 or a.duration <= 0:
        ap.error("--servers, --clients and --duration must be positive")
    return a


class Run:
    def __init__(self, a):
        self.a = a
        self.workdir = tempfile.mkdtemp(prefix="parley-fault-")
        self.outdir = os.path.abspath(a.out or os.path.join(os.getcwd(), "fault-logs"))
        os.makedirs(self.outdir, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.history_path = os.path.join(self.outdir, "history-n%d-seed%d-%s.jsonl"
                                         % (a.servers, a.seed, stamp))
        self.log_dir = os.path.join(self.outdir, "logs-n%d-seed%d-%s" % (a.servers, a.seed, stamp))
        self.cluster = None
        self.history = None
        self.clients = []
        self.stop = threading.Event()
        self.closed = False

    def close(self):
        """Stop everything started; idempotent (finally block and atexit)."""
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        if self.cluster is not None:
            self.cluster.close()
        if self.history is not None:
            self.history.close()

    def remove_workdir(self, keep_logs):
        if keep_logs and self.cluster is not None:
            os.makedirs(self.log_dir, exist_ok=True)
            for i, path in enumerate(self.cluster.logs):
                if os.path.exists(path):
                    shutil.copy(path, self.log_dir)
        if self.a.keep:
            print("data kept in %s" % self.workdir)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def problem(self, kind, what):
        self.history.add({"client": "final", "kind": kind, "user": "-", "args": {},
                          "start": round(self.history.now(), 4), "end": round(self.history.now(), 4),
                          "outcome": "ok", "result": None, "exit": None, "err": what})

    def note_crashes(self):
        for i, status, tail in self.cluster.take_crashes():
            self.problem("server-crash", "server %d exited on its own with status %s; log "
                         "tail:\n%s" % (i, status, tail))

    def execute(self):
        a = self.a
        if a.fake:
            server_cmd = [sys.executable, a.parleyd, "server"]
            cli_cmd = [sys.executable, a.parley, "cli"]
        else:
            server_cmd, cli_cmd = [a.parleyd], [a.parley]
        extra = {"election_timeout_ms": a.election_ms,
                 "heartbeat_ms": max(10, a.election_ms // 10)}
        if a.transport:
            extra["transport"] = json.loads(a.transport)
        if a.compact:
            extra["compaction"] = {"ops": a.compact, "keep_ops": max(1, a.compact // 5)}
        t0 = time.monotonic()
        self.history = h = workload.History(self.history_path, t0)
        sessions = os.path.join(self.workdir, "sessions")
        os.makedirs(sessions, exist_ok=True)

        # Ports are picked free and released just before the servers bind
        # them; a port taken in between by someone else (a CLI's ephemeral
        # port) is a harness race, not a finding, so startup is retried on
        # fresh ports.
        for attempt in range(3):
            self.cluster = c = FaultCluster(server_cmd, cli_cmd, a.servers,
                                            os.path.join(self.workdir, "cluster%d" % attempt),
                                            a.seed, extra=extra, stores=a.store.split(","),
                                            admin=a.membership)
            c.t0 = t0  # the markers in server logs use the history's clock
            failed = self.start_cluster(c)
            if failed is None:
                break
            i, tail = failed
            c.close()
            c.take_crashes()
            if ("already in use" not in tail and "already used" not in tail) or attempt == 2:
                self.problem("final-problem", "server %d did not start listening; log:\n%s"
                             % (i, tail))
                return

        users = workload.base_users(a.clients)
        probs = workload.setup_accounts(c, h, users, sessions, time.monotonic() + 60)
        for p in probs:
            self.problem("final-problem", "setup: " + p)
        if probs:
            return

        start = h.now()
        self.clients = [workload.Client(c, h, k, a.seed, users, self.stop, sessions)
                        for k in range(a.clients)]
        for cl in self.clients:
            cl.start()
        nem = self.nemesis = Nemesis(c, h, a.seed)
        schedule = make_schedule(a.seed, c.n, a.duration, membership=a.membership)
        sched = [(at + start, kinds, hold, params) for at, kinds, hold, params in schedule]
        nem.run(sched, start + a.duration,
                stop=lambda: any(not cl.is_alive() for cl in self.clients))
        self.stop.set()
        for cl in self.clients:
            cl.join(timeout=workload.OP_TIMEOUT + 10)
            if cl.error or cl.is_alive():
                self.problem("harness-error", "client %d: %s" % (cl.c, cl.error or "did not stop"))

        # Everything is healed; anything that died on its own is a finding,
        # and is restarted so the rest of the cluster can still be judged.
        self.note_crashes()
        for i in range(c.n):
            if not c.alive(i):
                c.start(i)
        deadline = time.monotonic() + a.converge
        for p in workload.final_reads(c, h, users, sessions, deadline):
            self.problem("final-problem", "after healing: " + p)
        self.final_digests(max(deadline, time.monotonic() + 15))
        if a.membership:
            self.final_members()
        self.note_crashes()

    def final_members(self):
        """After membership changes: every server is a member again."""
        c = self.cluster
        rc, out, err = c.admin(["members"], 30)
        try:
            ports = sorted(s["port"] for s in json.loads(out)["servers"])
        except (ValueError, KeyError, TypeError):
            ports = None
        if rc != 0 or ports != sorted(c.ports):
            self.problem("final-problem", "after healing, the membership is not every server: "
                         "admin members exit %s: %s %s" % (rc, out.strip()[:600], err.strip()[-300:]))

    @staticmethod
    def start_cluster(c):
        """Start every server and wait until each listens; None, or (server,
        log tail) for one that did not."""
        for i in range(c.n):
            c.start(i)
        deadline = time.monotonic() + 30
        for i in range(c.n):
            while not c.listening(i):
                if not c.alive(i) or time.monotonic() > deadline:
                    return i, c.log_tail(i, 15)
                time.sleep(0.1)
        time.sleep(0.3)  # a port someone else listens on would look fine: is each server still up?
        for i in range(c.n):
            if not c.alive(i):
                return i, c.log_tail(i, 15)
        return None

    def final_digests(self, deadline):
        c, h = self.cluster, self.history
        start = h.now()
        while True:
            rows = [c.status_row(i) for i in range(c.n)]
            digests = set(r.get("digest") for r in rows if r)
            if all(rows) and len(digests) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        h.add({"client": "final", "kind": "digests", "user": "-", "args": {},
               "start": round(start, 4), "end": round(h.now(), 4), "outcome": "ok",
               "result": {"rows": rows}, "exit": None, "err": ""})


def report(a, run, records, violations, elapsed):
    lines = []
    lines.append("parley fault run: %d servers (store %s), %d clients, %.0fs of faults, seed %d "
                 "(%.0fs total)" % (a.servers, a.store, a.clients, a.duration, a.seed, elapsed))
    table = collections.OrderedDict()
    faults = collections.Counter()
    for r in records:
        if r["client"] == "nemesis":
            if r["kind"] == "fault":
                faults[r["args"]["fault"]] += 1
            continue
        if r["kind"] in ("digests", "final-problem", "server-crash", "harness-error"):
            continue
        table.setdefault(r["kind"], collections.Counter())[r["outcome"]] += 1
    lines.append("  %-14s %7s %7s %7s" % ("op", "ok", "failed", "unknown"))
    for kind, cnt in table.items():
        lines.append("  %-14s %7d %7d %7d" % (kind, cnt["ok"], cnt["failed"], cnt["unknown"]))
    lines.append("faults: " + (", ".join("%s %d" % kv for kv in sorted(faults.items())) or "none"))
    for r in records:
        if r["kind"] == "digests":
            rows = r["result"]["rows"]
            lines.append("end state: " + "; ".join(
                "s%d %s v%s op%s" % (i, row.get("role"), row.get("view"), row.get("op"))
                if row else "s%d no status" % i for i, row in enumerate(rows)))
    if violations:
        kinds = collections.Counter(v["kind"] for v in violations)
        lines.append("VIOLATIONS: %d (%s)" % (len(violations),
                                             ", ".join("%s %d" % kv for kv in sorted(kinds.items()))))
        for v in violations[:8]:
            lines.append("  %s: %s" % (v["kind"], v["msg"].split("\n")[0][:300]))
            for i in v["ops"][:4]:
                lines.append("      " + checker.describe(records[i])[:200])
            if len(v["ops"]) > 4:
                lines.append("      ... %d more ops" % (len(v["ops"]) - 4))
        if len(violations) > 8:
            lines.append("  ... %d more (run checker.py on the history)" % (len(violations) - 8))
    else:
        lines.append("violations: none")
    if violations or a.keep_logs:
        lines.append("server logs: %s" % run.log_dir)
    lines.append("history: %s" % run.history_path)
    lines.append("replay: --seed %d --servers %d --clients %d --duration %g --store %s%s"
                 % (a.seed, a.servers, a.clients, a.duration, a.store,
                    (" --transport '%s'" % a.transport if a.transport else "")
                    + (" --compact %d" % a.compact if a.compact else "")
                    + (" --membership" if a.membership else "")
                    + (" --election-ms %d" % a.election_ms if a.election_ms != 1000 else "")))
    return "\n".join(lines)


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    for p in ([] if a.fake else [a.parleyd, a.parley]):
        if not os.access(p, os.X_OK):
            print("fault: %s is not an executable" % p, file=sys.stderr)
            return 2

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)  # before anything exists that needs cleaning up

    run = Run(a)
    if not a.keep:  # atexit runs last-in first-out: this after run.close
        atexit.register(shutil.rmtree, run.workdir, ignore_errors=True)
    atexit.register(run.close)

    print("fault: seed %d, %d servers, %d clients, %gs; history %s"
          % (a.seed, a.servers, a.clients, a.duration, run.history_path), flush=True)
    t0 = time.monotonic()
    failed = True
    try:
        run.execute()
        failed = False
    except BaseException:
        print("fault: interrupted; history so far in %s, server logs in %s"
              % (run.history_path, run.log_dir), file=sys.stderr, flush=True)
        raise
    finally:
        run.close()
        if failed:
            run.remove_workdir(keep_logs=True)
    records = checker.load(run.history_path)
    violations = checker.check(records)
    run.remove_workdir(keep_logs=bool(violations) or a.keep_logs)
    print(report(a, run, records, violations, time.monotonic() - t0), flush=True)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
