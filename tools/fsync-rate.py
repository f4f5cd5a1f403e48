#!/usr/bin/env python3
"""fsync-rate: how many small durable appends per second the disk under DIR
takes -- the ceiling for a server that syncs once per request, and the unit
group commit divides by (docs/performance.md).

    tools/fsync-rate.py [DIR] [--seconds S] [--bytes N]

Appends N bytes (default 200) to a scratch file and fdatasync()s, again and
again for S seconds (default 2); also measures 64 KiB appends (a large
group-commit batch). Prints one JSON object; the file is removed.
"""
import argparse
import json
import os
import sys
import time


def rate(path, size, seconds):
    buf = b"x" * size
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        n = 0
        lat = []
        start = time.monotonic()
        end = start + seconds
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                break
            os.write(fd, buf)
            os.fdatasync(fd)
            lat.append(time.monotonic() - t0)
            n += 1
        elapsed = time.monotonic() - start
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    return {
        "bytes_per_append": size,
        "appends": n,
        "syncs_per_s": round(n / elapsed, 1),
        "p50_ms": round(lat[len(lat) // 2] * 1e3, 3) if lat else None,
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, 3) if lat else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", nargs="?", default=".")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--bytes", type=int, default=200)
    a = ap.parse_args()
    path = os.path.join(a.dir, ".parley-fsync-rate.%d" % os.getpid())
    out = {
        "dir": os.path.abspath(a.dir),
        "small": rate(path, a.bytes, a.seconds),
        "batch_64k": rate(path, 65536, a.seconds),
    }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
