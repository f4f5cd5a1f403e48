"""Fixture for end-to-end and cluster tests: real parleyd processes on free
loopback ports, driven through the real `parley` CLI.

Everything it starts is killed and every temp directory removed when the
fixture is closed, also when a test fails.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

PWHASH_FAST = {"opslimit": 1, "memlimit": 8192}  # tests: Argon2id at its minimum cost

# Memory checking (tools/ci-sanitize.sh):
#  PARLEY_TEST_VALGRIND=1   every parleyd runs under valgrind memcheck; an
#                           invalid access or a definite leak makes it exit
#                           VALGRIND_EXIT (implies the check below).
#  PARLEY_TEST_CHECK_EXIT=1 close() stops servers with SIGTERM instead of
#                           SIGKILL and fails unless each exits 0 (an ASan
#                           build's leak report exits non-zero), and any
#                           server stopped earlier that exited with a memory
#                           checker's code fails the test too.
VALGRIND = os.environ.get("PARLEY_TEST_VALGRIND") == "1"
CHECK_EXIT = VALGRIND or os.environ.get("PARLEY_TEST_CHECK_EXIT") == "1"
VALGRIND_EXIT = 99
LSAN_EXIT = 23  # ASan and LeakSanitizer (tools/ci-sanitize.sh sets ASAN_OPTIONS=exitcode=23)
SLOW = 5.0 if VALGRIND else 1.0  # start-up and shutdown under valgrind


def free_port(avoid=(), offsets=(1000,)):
    """A loopback port that is free now, and whose peer port (+1000) is too
    (and port + each of offsets, e.g. an admin port_offset)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port in avoid or any(port + o > 65535 or port + o in avoid for o in offsets):
            continue
        try:
            for o in offsets:
                with socket.socket() as s2:
                    s2.bind(("127.0.0.1", port + o))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair found")


def test_failed(tc):
    """Whether the unittest case tc has failed so far, for a tearDown that
    prints the servers' logs only then (Python 3.11 reports a failure to the
    result at once; earlier versions keep it in _outcome.errors)."""
    outcome = getattr(tc, "_outcome", None)
    if outcome is None:
        return False
    r = getattr(outcome, "result", None)
    if r is not None and any(t is tc for t, _ in r.failures + r.errors):
        return True
    return any(err for _, err in getattr(outcome, "errors", None) or [] if err)


def wait_until(pred, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("timed out after %.1fs waiting for %s (last: %r)" % (timeout, what, last))


class Cluster:
    """n parleyd servers from one config file."""

    def __init__(self, parleyd, parley, n=1, transport=None, store="sqlite",
                 stores=None, extra=None):
        self.parleyd = parleyd
        self.parley = parley
        self.dir = tempfile.mkdtemp(prefix="parley-e2e-")
        # ports each server uses besides its own: peer (+1000), admin
        self.offsets = [1000]
        self.admin_offset = None
        admin = (extra or {}).get("admin")
        if isinstance(admin, dict) and admin.get("port_offset"):
            self.admin_offset = admin["port_offset"]
            self.offsets.append(admin["port_offset"])
        # and every extra listener's ("transports": ws for browsers, grpc)
        for t in (extra or {}).get("transports") or []:
            self.offsets.append(t["port_offset"])
        ports = []
        for _ in range(n):
            ports.append(free_port(avoid=self._taken(ports), offsets=self.offsets))
        self.ports = ports
        self.n = n
        cfg = {"servers": [{"host": "127.0.0.1", "port": p} for p in ports],
               "store": store,
               "password_hash": PWHASH_FAST}
        if transport is not None:
            cfg["transport"] = transport
        if extra:
            cfg.update(extra)
        # JSON merged into every config: the security suite reruns the
        # cluster tests with a cluster_secret this way.
        if os.environ.get("PARLEY_TEST_EXTRA_CONFIG"):
            cfg.update(json.loads(os.environ["PARLEY_TEST_EXTRA_CONFIG"]))
        self.stores = stores  # per-server store override (mixed clusters)
        self.config = os.path.join(self.dir, "parley.json")
        with open(self.config, "w") as f:
            json.dump(cfg, f)
        self.cfg = cfg
        self.procs = [None] * n
        self.logs = [os.path.join(self.dir, "s%d.log" % i) for i in range(n)]
        self.exit_failures = []  # memory-checker exits seen (CHECK_EXIT)

    def _taken(self, ports):
        return list(ports) + [p + o for p in ports for o in self.offsets]

    def data_dir(self, i):
        return os.path.join(self.dir, "data%d" % i)

    def add_slot(self):
        """Room for one more server beyond the config's (membership tests):
        a fresh port (and peer/admin ports), a log and a data directory. It
        is in no config file; write one with write_config(). Returns its
        index."""
        self.ports.append(free_port(avoid=self._taken(self.ports), offsets=self.offsets))
        self.procs.append(None)
        self.logs.append(os.path.join(self.dir, "s%d.log" % (len(self.ports) - 1)))
        return len(self.ports) - 1

    def admin_port(self, i):
        return self.ports[i] + self.admin_offset if self.admin_offset else None

    def write_config(self, name, servers, **over):
        """A config file like the cluster's, listing the servers of the given
        indices in that order (over: keys to replace); returns its path."""
        c = dict(self.cfg)
        c["servers"] = [{"host": "127.0.0.1", "port": self.ports[i]} for i in servers]
        c.update(over)
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            json.dump(c, f)
        return path

    def start(self, i, wait=True, config=None, server_id=None, join=False):
        """Start server i: by default with the cluster's config and id i;
        config/server_id start it from another file (its index there), join
        adds --join."""
        cfg = config or self.config
        if self.stores and config is None:
            c = dict(self.cfg)
            c["store"] = self.stores[i]
            cfg = os.path.join(self.dir, "parley-s%d.json" % i)
            with open(cfg, "w") as f:
                json.dump(c, f)
        log = open(self.logs[i], "ab")
        cmd = [self.parleyd] + (["--join"] if join else []) + \
            [cfg, str(i if server_id is None else server_id), self.data_dir(i)]
        if VALGRIND:
            cmd = ["valgrind", "--quiet", "--error-exitcode=%d" % VALGRIND_EXIT,
                   "--leak-check=full", "--errors-for-leak-kinds=definite",
                   "--show-leak-kinds=definite", "--num-callers=30"] + cmd
        # core/seq.c compares every batch it applies from its apply cache
        # with the store's log, and aborts on a difference
        env = dict(os.environ, PARLEY_CHECK_APPLY_CACHE="1")
        self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env=env)
        log.close()
        if wait:
            self.wait_listening(i)

    def start_all(self):
        """Start the config's servers (not those of add_slot())."""
        for i in range(self.n):
            self.start(i, wait=False)
        for i in range(self.n):
            self.wait_listening(i)

    def wait_listening(self, i, timeout=15.0):
        timeout *= SLOW

        def up():
            if self.procs[i].poll() is not None:
                raise AssertionError("parleyd %d exited with %s:\n%s" % (i, self.procs[i].returncode, self.log(i)))
            try:
                with socket.create_connection(("127.0.0.1", self.ports[i]), timeout=0.5):
                    return True
            except OSError:
                return False
        wait_until(up, timeout, what="server %d to listen" % i)

    def log(self, i):
        try:
            with open(self.logs[i], "rb") as f:
                return f.read().decode("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def kill(self, i, sig=signal.SIGKILL):
        p = self.procs[i]
        if p and p.poll() is None:
            p.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                self._note_exit(i, p.wait(timeout=20 * SLOW))

    def stop(self, i):
        """SIGTERM and wait; returns the exit code."""
        p = self.procs[i]
        if p is None or p.poll() is not None:
            return p.returncode if p else None
        p.send_signal(signal.SIGTERM)
        return self._note_exit(i, p.wait(timeout=20 * SLOW))

    def _note_exit(self, i, code):
        """Remember a memory checker's verdict (CHECK_EXIT), with the log."""
        if CHECK_EXIT and code in (VALGRIND_EXIT, LSAN_EXIT):
            self.exit_failures.append("parleyd %d exited %d (memory errors or leaks):\n%s"
                                      % (i, code, self.log(i)))
        return code

    def close(self):
        """Stop everything and remove the temp directory. With CHECK_EXIT,
        servers get SIGTERM and must exit 0; raises AssertionError naming
        each one that did not (after cleaning up)."""
        for i, p in enumerate(self.procs):
            if p and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                if not CHECK_EXIT:
                    p.kill()
                    p.wait(timeout=20)
                    continue
                p.send_signal(signal.SIGTERM)
                try:
                    code = p.wait(timeout=20 * SLOW)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=20)
                    code = "none (killed after no exit on SIGTERM)"
                if code != 0:
                    self.exit_failures.append("parleyd %d: exit %s at shutdown:\n%s"
                                              % (i, code, self.log(i)))
        for i in range(len(self.procs)):
            try:
                with open(self.logs[i], "rb") as f:
                    whole = f.read()
            except OSError:
                whole = b""
            if b"aborting (PARLEY_CHECK_APPLY_CACHE)" in whole:
                self.exit_failures.append("parleyd %d: its apply cache differed from its log:\n%s"
                                          % (i, self.log(i)))
        failures, self.exit_failures = self.exit_failures, []
        shutil.rmtree(self.dir, ignore_errors=True)
        if failures:
            raise AssertionError("\n\n".join(failures))

    # ---- the CLI ----
    def cli(self, user, *args, stdin=None, check=None, timeout=30, server=None, config=None):
        env = dict(os.environ)
        env["PARLEY_SESSION"] = os.path.join(self.dir, "%s.session" % user)
        env.pop("PARLEY_CONFIG", None)
        cmd = [self.parley, "-c", config or self.config]
        if server is not None:
            cmd += ["--server", "127.0.0.1:%d" % self.ports[server]]
        cmd += ["--json"] + list(args)
        r = subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                           timeout=timeout, env=env)
        if check is not None and r.returncode != check:
            raise AssertionError("parley %s: exit %d (wanted %d)\nstdout: %s\nstderr: %s"
                                 % (" ".join(args), r.returncode, check, r.stdout, r.stderr))
        return r

    def cli_json(self, user, *args, **kw):
        kw.setdefault("check", 0)
        r = self.cli(user, *args, **kw)
        try:
            return json.loads(r.stdout)
        except ValueError as e:
            raise AssertionError("parley %s printed no JSON document: %r (%s)" % (" ".join(args), r.stdout, e))

    def register(self, user, password="correct horse"):
        return self.cli(user, "register", user, "--password-stdin", stdin=password + "\n", check=0)

    def login(self, user, password="correct horse"):
        return self.cli_json(user, "login", user, "--password-stdin", stdin=password + "\n")

    def listen(self, user):
        env = dict(os.environ)
        env["PARLEY_SESSION"] = os.path.join(self.dir, "%s.session" % user)
        return subprocess.Popen([self.parley, "-c", self.config, "--json", "listen"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
