#!/usr/bin/env python3
"""tests/bench: parley-bench against a real parleyd, briefly.

    test_bench.py PARLEYD PARLEY_BENCH

Checks behaviour, never timing: each workload runs for a fraction of a
second and must print one valid JSON document with a non-zero throughput,
latency percentiles in order, and zero errors; `--pid` must add the
server's RSS and CPU over the window; `--wire-sizes` must print a
row for every method; a bad option must be a usage error (exit 2).
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import Cluster  # noqa: E402

LIMITS_OFF = {"conns_per_address": 0, "requests_per_second": 0}


def run_bench(bench, config, *args):
    cmd = [bench, "-c", config, "--duration", "0.5", "--warmup", "0.2", "--quiet"] + list(args)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    where = "%s\nstderr:\n%s" % (" ".join(cmd), p.stderr.decode(errors="replace")[-2000:])
    if p.returncode != 0:
        raise AssertionError("parley-bench exited %d: %s" % (p.returncode, where))
    try:
        doc = json.loads(p.stdout)
    except ValueError as e:
        raise AssertionError("parley-bench printed invalid JSON (%s): %r\n%s"
                             % (e, p.stdout[:500], where))
    return doc, where


def check_run(doc, where, workload, latency_key):
    if doc["config"]["workload"] != workload:
        raise AssertionError("config.workload is %r, expected %r: %s"
                             % (doc["config"]["workload"], workload, where))
    if doc["errors"]["total"] != 0:
        raise AssertionError("%s: %d errors %r: %s" % (workload, doc["errors"]["total"],
                                                       doc["errors"], where))
    if not doc["throughput"]["ops"] > 0 or not doc["throughput"]["ops_per_s"] > 0:
        raise AssertionError("%s: zero throughput %r: %s" % (workload, doc["throughput"], where))
    lat = doc["latency_ms"][latency_key]
    if lat["count"] != doc["throughput"]["ops"]:
        raise AssertionError("%s: %d latencies for %d operations: %s"
                             % (workload, lat["count"], doc["throughput"]["ops"], where))
    order = [lat[k] for k in ("min", "p50", "p90", "p99", "p99.9", "max")]
    if order != sorted(order) or order[0] <= 0:
        raise AssertionError("%s: percentiles out of order %r: %s" % (workload, lat, where))


def main():
    parleyd, bench = sys.argv[1], sys.argv[2]
    cl = Cluster(parleyd, None, n=1, extra={"limits": LIMITS_OFF})
    try:
        cl.start_all()
        cfg = cl.config
        pid = cl.procs[0].pid
        doc, where = run_bench(bench, cfg, "-n", "8", "-w", "send", "--pid", str(pid))
        check_run(doc, where, "send", "request")
        if doc["setup"]["users_created"] != 8:
            raise AssertionError("send: expected 8 new users, got %r: %s" % (doc["setup"], where))
        # The bench's own CPU first, then the server's: it served sends for
        # the whole window, so it used some (a clock tick is 10 ms).
        cpu = doc["cpu"]
        if (len(cpu) != 2 or cpu[0].get("process") != "parley-bench" or cpu[1].get("pid") != pid
                or not cpu[1]["cores"] > 0 or not cpu[1]["us_per_op"] > 0
                or cpu[0]["cores"] < 0 or cpu[0]["us_per_op"] < 0):
            raise AssertionError("send --pid: cpu %r: %s" % (cpu, where))
        if [m.get("pid") for m in doc["rss_kib"]] != [None, pid] or not doc["rss_kib"][1]["rss"] > 0:
            raise AssertionError("send --pid: rss_kib %r: %s" % (doc["rss_kib"], where))

        # The same users again: they exist now, which is fine.
        doc, where = run_bench(bench, cfg, "-n", "8", "-w", "deliver", "--listeners", "4")
        check_run(doc, where, "deliver", "request")
        if doc["setup"]["users_existing"] != 8 or doc["setup"]["connections_ready"] != 12:
            raise AssertionError("deliver: setup %r: %s" % (doc["setup"], where))
        push = doc["latency_ms"]["send_to_push"]
        if push["count"] == 0:
            raise AssertionError("deliver: no push arrived: %s" % where)

        doc, where = run_bench(bench, cfg, "-n", "4", "-w", "send", "--rate", "200")
        check_run(doc, where, "send", "request")
        if doc["config"]["mode"] != "fixed-rate":
            raise AssertionError("--rate: mode %r: %s" % (doc["config"]["mode"], where))

        for w in ("list", "read"):
            doc, where = run_bench(bench, cfg, "-n", "4", "-w", w)
            check_run(doc, where, w, "request")
        doc, where = run_bench(bench, cfg, "-n", "2", "-w", "login-storm")
        check_run(doc, where, "login-storm", "connect_login")

        p = subprocess.run([bench, "--wire-sizes", "-c", cfg], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        out = p.stdout.decode()
        if p.returncode != 0 or "tcp/binary" not in out:
            raise AssertionError("--wire-sizes exited %d:\n%s%s"
                                 % (p.returncode, out, p.stderr.decode()))
        for method in ("register", "send", "push", "status"):
            if ("| %s" % method) not in out:
                raise AssertionError("--wire-sizes: no row for %s:\n%s" % (method, out))

        p = subprocess.run([bench, "--workload", "nope"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        if p.returncode != 2 or b"--workload" not in p.stderr:
            raise AssertionError("bad --workload: exit %d, stderr %r" % (p.returncode, p.stderr))
    finally:
        cl.close()
    print("bench: ok")


if __name__ == "__main__":
    main()
