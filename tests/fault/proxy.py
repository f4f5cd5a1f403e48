"""Fault-injecting TCP proxy for the directed peer links of a parley cluster.

One proxy process serves every directed link i>j of a cluster: server i's
config names the proxy's listening port as server j's peer_port, and the
proxy forwards to j's real peer port. Because parleyd sends its VR messages
to j only on its own outgoing connection to j, cutting the link i>j silences
i towards j and nothing else: partitions can be one-way, and a proxy can also
delay bytes, which netem would do but this kernel has no netem.

Link modes (set at any time by the controlling harness):
  up     forward at once
  down   a partition. style "reset": existing connections are reset and new
         ones are reset on accept (the sender sees refused/reset
         connections); style "blackhole": connections stay open, nothing is
         read or written (bytes pile up in the sender's buffers, as behind a
         dead switch) and they resume, or are reset, when the link heals
  slow   every chunk is delayed by delay_ms + uniform(0, jitter_ms), order kept
  lossy  each chunk resets the connection with probability reset_p, or stalls
         the direction for stall_ms with probability stall_p

Bytes are never dropped from the middle of a stream: TCP never does that, and
a corrupted frame would test the peer codec, not replication.

Run as a child process: `proxy.py SPEC_JSON`, where the spec is
{"seed": N, "links": {"0>1": ["127.0.0.1", PORT], ...}}. It binds one
loopback port per link, prints {"ports": {...}} on stdout, then reads one
JSON command per line on stdin and answers one JSON line per command:
  {"cmd": "set", "links": [names], "mode": {"state": ..., params...}}
  {"cmd": "stats"}
EOF on stdin (the harness exited, however it died) closes everything and
exits, so the proxy never outlives its harness.
"""
import collections
import errno
import json
import os
import random
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time

CHUNK = 65536
QUEUE_LIMIT = 4 << 20  # stop reading a direction whose queue holds this many bytes


def _reset(sock):
    """Close with RST instead of FIN, as a dropped connection looks to a peer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class Pipe:
    """One direction of a proxied connection."""

    def __init__(self, src, dst):
        self.src = src
        self.dst = dst
        self.queue = collections.deque()  # (due, bytearray)
        self.qbytes = 0
        self.last_due = 0.0
        self.stalled_until = 0.0
        self.eof = False          # src closed its write side
        self.shut = False         # we shut dst's write side after draining

    def due(self, now):
        return bool(self.queue) and self.queue[0][0] <= now and self.stalled_until <= now


class Conn:
    def __init__(self, link, a):
        self.link = link
        self.a = a                # accepted from server i
        self.b = None             # to server j's real peer port
        self.connecting = False
        self.fwd = None
        self.back = None
        self.closed = False


class Link:
    def __init__(self, name, target, lsock):
        self.name = name
        self.target = target
        self.lsock = lsock
        self.mode = {"state": "up"}
        self.conns = []
        self.stats = {"accepted": 0, "resets": 0, "bytes": 0, "stalls": 0}


class Proxy:
    def __init__(self, spec, out=sys.stdout):
        self.rng = random.Random(spec.get("seed", 0))
        self.sel = selectors.DefaultSelector()
        self.links = {}
        self.out = out
        self.registered = {}      # fileobj -> events
        for name, (host, port) in sorted(spec["links"].items()):
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("127.0.0.1", 0))
            ls.listen(64)
            ls.setblocking(False)
            link = Link(name, (host, port), ls)
            self.links[name] = link
            self.sel.register(ls, selectors.EVENT_READ, ("listen", link))
        self.ctl_buf = b""

    def ports(self):
        return {n: l.lsock.getsockname()[1] for n, l in self.links.items()}

    # ---- connection life cycle ----
    def accept(self, link):
        while True:
            try:
                a, _ = link.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            a.setblocking(False)
            a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link.stats["accepted"] += 1
            m = link.mode
            if m["state"] == "down" and m.get("style", "reset") == "reset":
                link.stats["resets"] += 1
                _reset(a)
                continue
            c = Conn(link, a)
            link.conns.append(c)
            if m["state"] != "down":
                self.connect_upstream(c)
            # blackhole: held unconnected until the link heals

    def connect_upstream(self, c):
        b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        b.setblocking(False)
        b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc = b.connect_ex(c.link.target)
        if rc not in (0, errno.EINPROGRESS):
            b.close()
            self.kill(c, reset=True)
            return
        c.b = b
        c.connecting = rc != 0
        c.fwd = Pipe(c.a, b)
        c.back = Pipe(b, c.a)

    def kill(self, c, reset=True):
        if c.closed:
            return
        c.closed = True
        for s in (c.a, c.b):
            if s is None:
                continue
            if s in self.registered:
                self.sel.unregister(s)
                del self.registered[s]
            if reset:
                _reset(s)
            else:
                s.close()
        if reset:
            c.link.stats["resets"] += 1
        if c in c.link.conns:
            c.link.conns.remove(c)

    # ---- modes ----
    def set_mode(self, names, mode):
        for n in names:
            link = self.links[n]
            old = link.mode
            link.mode = dict(mode)
            st = mode["state"]
            if st == "down" and mode.get("style", "reset") == "reset":
                for c in list(link.conns):
                    self.kill(c, reset=True)
            elif old["state"] == "down" and st != "down":
                # Healing a black hole: like a network that comes back before
                # TCP gives up, held bytes flow again -- or, as when it does
                # give up, the connection is reset.
                for c in list(link.conns):
                    if mode.get("heal_reset") or self.rng.random() < 0.5:
                        self.kill(c, reset=True)
                    elif c.b is None:
                        self.connect_upstream(c)
            if st != "down":
                now = time.monotonic()
                for c in link.conns:
                    for p in (c.fwd, c.back):
                        if p is not None:
                            p.stalled_until = 0.0
                            p.last_due = now

    # ---- data ----
    def readable(self, c, pipe):
        link = c.link
        m = link.mode
        try:
            data = pipe.src.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.kill(c, reset=True)
            return
        if not data:
            pipe.eof = True
            return
        now = time.monotonic()
        due = now
        st = m["state"]
        if st == "slow":
            due = now + (m.get("delay_ms", 100) + self.rng.uniform(0, m.get("jitter_ms", 0))) / 1000.0
        elif st == "lossy":
            r = self.rng.random()
            if r < m.get("reset_p", 0.05):
                self.kill(c, reset=True)
                return
            if r < m.get("reset_p", 0.05) + m.get("stall_p", 0.05):
                link.stats["stalls"] += 1
                pipe.stalled_until = now + m.get("stall_ms", 500) / 1000.0
        due = max(due, pipe.last_due)  # never reorder bytes
        pipe.last_due = due
        pipe.queue.append((due, bytearray(data)))
        pipe.qbytes += len(data)

    def writable(self, c, pipe):
        now = time.monotonic()
        while pipe.due(now):
            buf = pipe.queue[0][1]
            try:
                n = pipe.dst.send(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.kill(c, reset=True)
                return
            c.link.stats["bytes"] += n
            pipe.qbytes -= n
            if n == len(buf):
                pipe.queue.popleft()
            else:
                del buf[:n]
                return

    def interest(self, c, now):
        """Events wanted on a and b, and the earliest time a queue comes due."""
        ev = {c.a: 0}
        if c.b is not None:
            ev[c.b] = 0
        wake = None
        if c.b is None:
            return ev, wake
        if c.connecting:
            ev[c.b] = selectors.EVENT_WRITE
            return ev, wake
        held = c.link.mode["state"] == "down"
        for p in (c.fwd, c.back):
            if held:
                continue
            if not p.eof and p.qbytes < QUEUE_LIMIT and p.stalled_until <= now:
                ev[p.src] |= selectors.EVENT_READ
            if p.queue:
                t = max(p.queue[0][0], p.stalled_until)
                if t <= now:
                    ev[p.dst] |= selectors.EVENT_WRITE
                else:
                    wake = t if wake is None else min(wake, t)
            elif p.stalled_until > now:
                wake = p.stalled_until if wake is None else min(wake, p.stalled_until)
        return ev, wake

    def finish_eof(self, c):
        """Pass a FIN on once its direction has drained; close when both have."""
        for p in (c.fwd, c.back):
            if p.eof and not p.queue and not p.shut:
                p.shut = True
                try:
                    p.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        if c.fwd.shut and c.back.shut:
            self.kill(c, reset=False)

    # ---- control ----
    def control(self, line):
        try:
            cmd = json.loads(line)
            if cmd["cmd"] == "set":
                self.set_mode(cmd["links"], cmd["mode"])
                reply = {"ok": True}
            elif cmd["cmd"] == "stats":
                reply = {"ok": True, "stats": {n: dict(l.stats, mode=l.mode["state"],
                                                       conns=len(l.conns))
                                               for n, l in self.links.items()}}
            else:
                reply = {"ok": False, "error": "unknown command"}
        except (ValueError, KeyError, TypeError) as e:
            reply = {"ok": False, "error": str(e)}
        self.out.write(json.dumps(reply) + "\n")
        self.out.flush()

    def run(self, ctl_fd):
        os.set_blocking(ctl_fd, False)
        self.sel.register(ctl_fd, selectors.EVENT_READ, ("ctl", None))
        while True:
            now = time.monotonic()
            wake = now + 0.05
            want = {}
            for link in self.links.values():
                for c in list(link.conns):
                    if c.closed:
                        continue
                    if c.b is not None and not c.connecting:
                        self.finish_eof(c)
                        if c.closed:
                            continue
                    ev, w = self.interest(c, now)
                    for s, e in ev.items():
                        want[s] = (e, c)
                    if w is not None:
                        wake = min(wake, w)
            for s in list(self.registered):
                if s not in want or want[s][0] == 0:
                    self.sel.unregister(s)
                    del self.registered[s]
            for s, (e, c) in want.items():
                if e == 0:
                    continue
                if s in self.registered:
                    if self.registered[s] != e:
                        self.sel.modify(s, e, ("conn", c))
                        self.registered[s] = e
                else:
                    self.sel.register(s, e, ("conn", c))
                    self.registered[s] = e
            for key, events in self.sel.select(max(0.0, wake - time.monotonic())):
                kind, obj = key.data
                if kind == "listen":
                    self.accept(obj)
                elif kind == "ctl":
                    try:
                        chunk = os.read(ctl_fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        return  # the harness is gone
                    self.ctl_buf += chunk
                    while b"\n" in self.ctl_buf:
                        line, self.ctl_buf = self.ctl_buf.split(b"\n", 1)
                        if line.strip():
                            self.control(line)
                else:
                    c = obj
                    if c.closed:
                        continue
                    s = key.fileobj
                    if c.connecting and s is c.b:
                        err = c.b.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            self.kill(c, reset=True)  # j is down: i sees a reset
                        else:
                            c.connecting = False
                        continue
                    if events & selectors.EVENT_READ:
                        self.readable(c, c.fwd if s is c.a else c.back)
                    if not c.closed and events & selectors.EVENT_WRITE:
                        self.writable(c, c.back if s is c.a else c.fwd)

    def close(self):
        for link in self.links.values():
            for c in list(link.conns):
                self.kill(c, reset=False)
            link.lsock.close()
        self.sel.close()


class ProxyProcess:
    """The harness side: starts proxy.py as a child and drives it."""

    def __init__(self, links, seed, python=None):
        spec = {"seed": seed, "links": links}
        cmd = [python or sys.executable, os.path.abspath(__file__), json.dumps(spec)]
        if os.path.exists("/usr/bin/setpriv"):
            cmd = ["/usr/bin/setpriv", "--pdeathsig", "KILL"] + cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.lock = threading.Lock()
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError("fault proxy did not start")
        self.ports = json.loads(line)["ports"]

    def command(self, cmd):
        with self.lock:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("fault proxy died (exit %s)" % self.proc.poll())
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError("fault proxy refused %r: %s" % (cmd, reply.get("error")))
        return reply

    def set(self, links, **mode):
        if links:
            self.command({"cmd": "set", "links": sorted(links), "mode": mode})

    def stats(self):
        return self.command({"cmd": "stats"})["stats"]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # EOF: the proxy closes its sockets and exits
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


def main():
    spec = json.loads(sys.argv[1])
    p = Proxy(spec)
    sys.stdout.write(json.dumps({"ports": p.ports()}) + "\n")
    sys.stdout.flush()
    try:
        p.run(sys.stdin.fileno())
    finally:
        p.close()


if __name__ == "__main__":
    main()
