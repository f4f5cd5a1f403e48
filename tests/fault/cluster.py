"""A cluster of real parleyd processes whose peer links run through the fault
proxy (proxy.py), and the `parley` CLI that drives it.

Every server gets the same server list, with the real ports (a server's
identity on the peer network is the (host, peer_port) it listens on), and
the environment variable PARLEY_PEER_DIAL makes server i dial every other
server j's peer address at the proxy port of the directed link i>j instead. Everything started here is stopped by close(), which the harness calls
from a finally block and from atexit; parleyd and the proxy also carry
PR_SET_PDEATHSIG=SIGKILL (setpriv) so even a SIGKILLed harness leaves nothing
behind.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import time

from proxy import ProxyProcess

PWHASH_FAST = {"opslimit": 1, "memlimit": 8192}  # Argon2id at its minimum cost
ADMIN_TOKEN = "fault-harness-operator-token-0123"  # membership changes (nemesis "member")


def reserve_ports(k):
    """k distinct loopback ports, held bound (not listening) by the returned
    sockets until the caller closes them, so nothing else started meanwhile
    (the proxy binding its own ports) can be handed one of them."""
    socks, ports = [], []
    try:
        while len(ports) < k:
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    except OSError:
        for s in socks:
            s.close()
        raise
    return ports, socks


class FaultCluster:
    def __init__(self, server_cmd, cli_cmd, n, workdir, seed, extra=None, stores=None,
                 admin=False):
        """admin: every server gets an admin_port and the config an
        admin.token, so `parley admin` can change the membership."""
        self.server_cmd = list(server_cmd)   # [parleyd], or the fake for self-tests
        self.cli_cmd = list(cli_cmd)         # [parley]
        self.n = n
        self.dir = workdir
        os.makedirs(self.dir, exist_ok=True)
        ports, held = reserve_ports((3 if admin else 2) * n)
        self.ports = ports[:n]
        self.peer_ports = ports[n:2 * n]
        self.admin_ports = ports[2 * n:] if admin else None
        links = {"%d>%d" % (i, j): ["127.0.0.1", self.peer_ports[j]]
                 for i in range(n) for j in range(n) if i != j}
        try:
            self.proxy = ProxyProcess(links, seed)
        finally:
            for sk in held:
                sk.close()
        base = {"store": "sqlite", "password_hash": PWHASH_FAST,
                "election_timeout_ms": 1000, "heartbeat_ms": 100}
        base.update(extra or {})
        if admin:
            base["admin"] = {"token": ADMIN_TOKEN}
        self.configs = []
        for i in range(n):
            servers = [self.server_entry(j) for j in range(n)]
            path = os.path.join(self.dir, "server%d.json" % i)
            with open(path, "w") as f:
                own = dict(base, servers=servers)
                if stores:  # per-server store: replicas with different stores must agree
                    own["store"] = stores[i % len(stores)]
                json.dump(own, f, indent=1)
            self.configs.append(path)
        self.client_config = os.path.join(self.dir, "client.json")
        with open(self.client_config, "w") as f:
            json.dump(dict(base, servers=[self.server_entry(j) for j in range(n)]), f, indent=1)
        self.procs = [None] * n
        self.paused = set()
        self.killed_pids = set()
        self.crash_pids = set()
        self.crashes = []
        self.logs = [os.path.join(self.dir, "server%d.log" % i) for i in range(n)]
        self.t0 = time.monotonic()

    def server_entry(self, j):
        e = {"host": "127.0.0.1", "port": self.ports[j], "peer_port": self.peer_ports[j]}
        if self.admin_ports:
            e["admin_port"] = self.admin_ports[j]
        return e

    def address(self, i):
        """Server i as `parley admin` names it: HOST:PORT:PEER_PORT."""
        return "127.0.0.1:%d:%d" % (self.ports[i], self.peer_ports[i])

    def data_dir(self, i):
        return os.path.join(self.dir, "data%d" % i)

    # ---- processes ----
    def _note(self, i, what):
        with open(self.logs[i], "a") as f:
            f.write("=== fault harness t=%.3f: %s ===\n" % (time.monotonic() - self.t0, what))

    def start(self, i, join=False):
        """Start server i; join: with --join (a learner until it is added)."""
        self._check_exit(i)
        self._note(i, "start server %d%s" % (i, " --join" if join else ""))
        log = open(self.logs[i], "ab")
        cmd = self.server_cmd + (["--join"] if join else []) + \
            [self.configs[i], str(i), self.data_dir(i)]
        if os.path.exists("/usr/bin/setpriv"):
            cmd = ["/usr/bin/setpriv", "--pdeathsig", "KILL"] + cmd
        # PARLEY_CHECK_APPLY_CACHE: core/seq.c compares each batch it applies
        # from its apply cache with the store's log and aborts (a crash the
        # run reports) on a difference
        env = dict(os.environ, PARLEY_PEER_DIAL=self.peer_dial(i), PARLEY_CHECK_APPLY_CACHE="1")
        self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env=env)
        log.close()
        self.paused.discard(i)

    def peer_dial(self, i):
        """PARLEY_PEER_DIAL for server i: each other server's peer address
        dialled at the proxy port of the link i>j."""
        return ",".join("127.0.0.1:%d=127.0.0.1:%d" % (self.peer_ports[j],
                                                        self.proxy.ports["%d>%d" % (i, j)])
                        for j in range(self.n) if j != i)

    def alive(self, i):
        p = self.procs[i]
        return p is not None and p.poll() is None

    def running(self, i):
        """Alive and not paused."""
        return self.alive(i) and i not in self.paused

    def kill(self, i):
        self._check_exit(i)
        p = self.procs[i]
        if p is not None and p.poll() is None:
            self._note(i, "kill -9")
            self.killed_pids.add(p.pid)
            p.kill()
            p.wait(timeout=20)
        self.paused.discard(i)

    def _check_exit(self, i):
        """Remember a server that exited without being killed by us, before
        a restart hides it."""
        p = self.procs[i]
        if p is not None and p.poll() is not None and p.pid not in self.killed_pids \
                and p.pid not in self.crash_pids:
            self.crash_pids.add(p.pid)
            self.crashes.append((i, p.returncode, self.log_tail(i, 15)))

    def pause(self, i):
        if self.alive(i):
            self._note(i, "SIGSTOP")
            self.procs[i].send_signal(signal.SIGSTOP)
            self.paused.add(i)

    def resume(self, i):
        if self.alive(i):
            self.procs[i].send_signal(signal.SIGCONT)
            self._note(i, "SIGCONT")
        self.paused.discard(i)

    def take_crashes(self):
        """[(server, exit status, log tail)] for every server that exited on
        its own since the last call."""
        for i in range(self.n):
            self._check_exit(i)
        out, self.crashes = self.crashes, []
        return out

    def listening(self, i):
        try:
            with socket.create_connection(("127.0.0.1", self.ports[i]), timeout=0.5):
                return True
        except OSError:
            return False

    def log_tail(self, i, lines=40):
        try:
            with open(self.logs[i], "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self):
        for i, p in enumerate(self.procs):
            if p is not None and p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                    p.wait(timeout=20)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        self.proxy.close()

    def remove_data(self):
        for i in range(self.n):
            shutil.rmtree(self.data_dir(i), ignore_errors=True)

    # ---- the CLI ----
    def cli(self, session, args, stdin=None, timeout=10.0, server=None):
        """Run `parley --json ARGS`; returns (exit code or None on timeout,
        stdout, stderr)."""
        env = dict(os.environ)
        env["PARLEY_SESSION"] = session
        env.pop("PARLEY_CONFIG", None)
        cmd = self.cli_cmd + ["-c", self.client_config]
        if server is not None:
            cmd += ["--server", "127.0.0.1:%d" % self.ports[server]]
        cmd += ["--json"] + list(args)
        try:
            r = subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                               timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            return None, out, "timed out after %.1fs" % timeout
        return r.returncode, r.stdout, r.stderr

    def admin(self, args, timeout):
        """`parley admin ARGS` with the client config (its admin.token);
        returns (exit code or None on timeout, stdout, stderr)."""
        return self.cli(os.path.join(self.dir, "admin.session"),
                        ["admin"] + list(args) + (["--timeout", str(int(timeout))]
                                                  if args and args[0] != "members" else []),
                        timeout=timeout + 30)

    def status_rows(self, i, timeout=5.0):
        """The status rows server i answers with (its own row included), or
        None."""
        rc, out, _ = self.cli(os.path.join(self.dir, "admin.session"), ["status"],
                              timeout=timeout, server=i)
        if rc != 0:
            return None
        try:
            rows = json.loads(out)["servers"]
        except (ValueError, KeyError, TypeError):
            return None
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else None

    def index_of(self, row):
        """The harness's index of the server a status row describes: by its
        client address (row ids are positions in the membership in force,
        which membership changes reorder), else by id."""
        a = row.get("address")
        for j in range(self.n):
            if a == "127.0.0.1:%d" % self.ports[j]:
                return j
        return row.get("id") if a in (None, "fake") else None

    def status_row(self, i, timeout=5.0):
        """Server i's own status row, asked of server i itself (not through
        its peers, whose links may be cut), or None."""
        for row in self.status_rows(i, timeout) or []:
            if self.index_of(row) == i:
                return row
        return None

    def primary(self):
        """The server a running server believes is primary in the highest view
        it knows, or None."""
        best = None
        for i in range(self.n):
            if not self.running(i):
                continue
            rows = self.status_rows(i, timeout=3.0) or []
            row = next((r for r in rows if self.index_of(r) == i), None)
            if row is None:
                continue
            view = row.get("view", 0)
            if row.get("role") == "primary" and (best is None or view > best[0]):
                best = (view, i)
            elif row.get("role") == "backup" and (best is None or view > best[0]):
                # a backup's status lists the primary it follows
                p = next((self.index_of(r) for r in rows
                          if r.get("role") == "primary" and r.get("reachable")), None)
                if p is not None:
                    best = (view, p)
        return None if best is None else best[1]
