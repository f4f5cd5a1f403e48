#!/usr/bin/env python3
"""fsync-rate: how many small durable appends per second the disk under DIR
takes -- the ceiling for a server that syncs once per request, and the unit
group commit divides by (docs/performance.md).

    tools/fsync-rate.py [DIR] [--seconds S] [--bytes N]
                        [--beside-checkpoint BYTES [--every S] [--gap-ms MS]]
                        [--stalls [CONTROL_DIR] [--gap-ms MS]]
                        [--writers N]

Appends N bytes (default 200) to a scratch file and fdatasync()s, again and
again for S seconds (default 2); also measures 64 KiB appends (a large
group-commit batch). Prints one JSON object; the files are removed.

--beside-checkpoint BYTES measures the same appends (every --gap-ms, default
1.5) twice more: alone, and while a thread does what a WAL checkpoint does
beside the log -- BYTES of random 4 KiB page writes into a 256 MiB file,
pushed to the disk every 256 KiB, then fdatasync, once per --every seconds
(default 0.6) -- to show how another writer's pages stretch the log's
syncs (docs/performance.md, round 7).

--stalls measures what a sync costs the rest of the machine: one spinning
process per CPU reads the clock in a loop and records every gap of 0.5 ms
or more (time it did not run), three times: while the appends and syncs run
on DIR (every --gap-ms, default 1.5), while the same calls run on
CONTROL_DIR (default /dev/shm, where a sync writes nothing), and idle. On a
virtual machine whose disk flushes pause the guest's CPUs, the first shows
gaps that the other two do not (docs/performance.md, round 8).

--writers N also runs N processes at once, each appending and syncing a file
of its own, as the logs of N servers on one machine do: each one's rate and
latencies beside the others', and their sum (docs/performance.md, round 9).
"""
import argparse
import ctypes
import ctypes.util
import json
import multiprocessing
import os
import random
import sys
import threading
import time

PAGE = 4096
# sync_file_range(2), which Python's os module lacks: start writing a file's
# dirty pages and wait for them (SYNC_FILE_RANGE_WAIT_BEFORE | WRITE |
# WAIT_AFTER), as the store's checkpoint connections do (sq_walbuf.c).
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def push(fd):
    _libc.sync_file_range(fd, 0, 0, 1 | 2 | 4)


def checkpoint_like(path, total, every, stop):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        pages = (256 << 20) // PAGE
        os.ftruncate(fd, pages * PAGE)
        os.fsync(fd)
        page = b"y" * PAGE
        while not stop.is_set():
            t0 = time.monotonic()
            for i in range(total // PAGE):
                os.pwrite(fd, page, random.randrange(pages) * PAGE)
                if i % 64 == 63:
                    push(fd)
            os.fdatasync(fd)
            stop.wait(max(0.0, every - (time.monotonic() - t0)))
    finally:
        os.close(fd)
        os.unlink(path)


def appends(path, size, seconds, gap_s=0.0):
    """Append size bytes and fdatasync, again and again for seconds (with
    gap_s between): the sorted latencies of each append + sync, and the
    seconds it all took."""
    buf = b"x" * size
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    lat = []
    try:
        start = time.monotonic()
        end = start + seconds
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                break
            os.write(fd, buf)
            os.fdatasync(fd)
            lat.append(time.monotonic() - t0)
            if gap_s:
                time.sleep(gap_s)
        elapsed = time.monotonic() - start
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    return lat, elapsed


def ms(lat, f):
    """The f quantile of sorted latencies, in ms (None when empty)."""
    return round(lat[min(len(lat) - 1, int(len(lat) * f))] * 1e3, 3) if lat else None


def latencies(path, size, seconds, gap_s):
    lat, _ = appends(path, size, seconds, gap_s)
    return {"bytes_per_append": size, "syncs": len(lat), "p50_ms": ms(lat, 0.5),
            "p99_ms": ms(lat, 0.99), "p999_ms": ms(lat, 0.999), "max_ms": ms(lat, 1.0)}


def rate(path, size, seconds):
    lat, elapsed = appends(path, size, seconds)
    return {
        "bytes_per_append": size,
        "appends": len(lat),
        "syncs_per_s": round(len(lat) / elapsed, 1),
        "p50_ms": ms(lat, 0.5),
        "p99_ms": ms(lat, 0.99),
    }


def spin(seconds, conn):
    """Read the clock for seconds; send back each gap >= 0.5 ms (s)."""
    gaps = []
    prev = start = time.monotonic()
    end = start + seconds
    while prev < end:
        t = time.monotonic()
        if t - prev >= 0.0005:
            gaps.append(t - prev)
        prev = t
    conn.send(gaps)
    conn.close()


def stalls(path, size, seconds, gap_s):
    """Gaps seen by a spinner per CPU while appends + syncs run on path
    (None: idle): the share of wall time in gaps of >= 2, 5, 10 ms."""
    procs = []
    for _ in range(os.cpu_count() or 1):
        r, w = multiprocessing.Pipe(duplex=False)
        p = multiprocessing.Process(target=spin, args=(seconds, w))
        p.start()
        procs.append((p, r))
    lat = []
    if path:
        lat, _ = appends(path, size, seconds, gap_s)
    else:
        time.sleep(seconds)
    gaps = []
    for p, r in procs:
        gaps.extend(r.recv())
        p.join()
    wall = seconds * len(procs)
    out = {"syncs": len(lat), "sync_p99_ms": ms(lat, 0.99), "spinners": len(procs)}
    for th in (2, 5, 10):
        g = [x for x in gaps if x >= th / 1e3]
        out["gaps_ge_%dms" % th] = len(g)
        out["wall_pct_in_gaps_ge_%dms" % th] = round(100 * sum(g) / wall, 2)
    out["max_gap_ms"] = round(max(gaps) * 1e3, 1) if gaps else 0.0
    return out


def _writer(path, size, seconds, start, q):
    start.wait()
    lat, elapsed = appends(path, size, seconds)
    q.put((len(lat) / elapsed, ms(lat, 0.5), ms(lat, 0.99)))


def concurrent(path, size, seconds, n):
    """n processes appending and syncing files of their own at once."""
    start = multiprocessing.Event()
    q = multiprocessing.Queue()
    ps = [multiprocessing.Process(target=_writer, args=("%s.w%d" % (path, i), size, seconds,
                                                        start, q)) for i in range(n)]
    for p in ps:
        p.start()
    start.set()
    got = sorted(q.get() for _ in ps)
    for p in ps:
        p.join()
    return {"writers": n, "bytes_per_append": size,
            "syncs_per_s_each": [round(g[0], 1) for g in got],
            "syncs_per_s_total": round(sum(g[0] for g in got), 1),
            "p50_ms_each": [g[1] for g in got], "p99_ms_each": [g[2] for g in got]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", nargs="?", default=".")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--bytes", type=int, default=200)
    ap.add_argument("--beside-checkpoint", type=int, default=0, metavar="BYTES")
    ap.add_argument("--every", type=float, default=0.6)
    ap.add_argument("--gap-ms", type=float, default=1.5)
    ap.add_argument("--stalls", nargs="?", const="/dev/shm", default=None, metavar="CONTROL_DIR")
    ap.add_argument("--writers", type=int, default=0, metavar="N")
    a = ap.parse_args()
    if a.writers < 0 or a.writers > 64:
        ap.error("--writers: 0-64 processes")
    path = os.path.join(a.dir, ".parley-fsync-rate.%d" % os.getpid())
    if a.stalls:
        control = os.path.join(a.stalls, ".parley-fsync-rate.%d" % os.getpid())
        gap = a.gap_ms / 1e3
        out = {"dir": os.path.abspath(a.dir), "control_dir": os.path.abspath(a.stalls),
               "gap_ms": a.gap_ms, "seconds": a.seconds,
               "syncing": stalls(path, a.bytes, a.seconds, gap),
               "control": stalls(control, a.bytes, a.seconds, gap),
               "idle": stalls(None, a.bytes, a.seconds, gap)}
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    out = {
        "dir": os.path.abspath(a.dir),
        "small": rate(path, a.bytes, a.seconds),
        "batch_64k": rate(path, 65536, a.seconds),
    }
    if a.writers > 0:
        out["concurrent"] = concurrent(path, a.bytes, a.seconds, a.writers)
    if a.beside_checkpoint > 0:
        gap = a.gap_ms / 1e3
        out["alone"] = latencies(path, a.bytes, a.seconds, gap)
        stop = threading.Event()
        ck = threading.Thread(target=checkpoint_like,
                              args=(path + ".ckpt", a.beside_checkpoint, a.every, stop))
        ck.start()
        try:
            out["beside_checkpoint"] = latencies(path, a.bytes, a.seconds, gap)
        finally:
            stop.set()
            ck.join()
        out["beside_checkpoint"]["checkpoint_bytes"] = a.beside_checkpoint
        out["beside_checkpoint"]["every_s"] = a.every
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
