#!/usr/bin/env python3
"""Install parley into a temporary prefix and use only what was installed.

Usage: test_install.py SOURCE_ROOT STORE_CONFORMANCE

What an operator and a plugin author do, in order:
  1. configure a fresh build with --prefix TMP/prefix (tests off), meson install;
  2. check the installed files: binaries, plugins in LIBDIR/parley, headers,
     parley-plugin.pc, example config, systemd unit, man pages;
  3. parleyd --version names the version and both plugin ABI versions;
  4. run the installed parleyd with the installed example config (its ports
     moved to free ones) and no PARLEY_PLUGIN_DIR: it must find its plugins
     in the install prefix; talk to it with the installed parley; fetch
     GET /metrics and `parley admin stats`; SIGHUP changes the log level;
  5. build examples/store-trace out of tree against the installed SDK via
     pkg-config, install it into plugindir, run the store conformance suite
     on it, and load it by short name in parleyd;
  6. rebuild it against headers claiming store ABI 2: parleyd refuses it
     with a message naming both versions;
  7. every man page renders with `man -l` without warnings.
Each check prints one line; the first failure stops the test with its reason.
"""
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SRC = os.path.abspath(sys.argv[1])
STORE_CONF = os.path.abspath(sys.argv[2])
TMP = tempfile.mkdtemp(prefix="parley-install-")
PREFIX = os.path.join(TMP, "prefix")
PASSED = 0
PROCS = []


def fail(msg):
    print("FAIL: " + msg, flush=True)
    print(f"{PASSED} passed, 1 failed")
    cleanup(keep=True)
    sys.exit(1)


def ok(msg):
    global PASSED
    PASSED += 1
    print("ok: " + msg, flush=True)


def cleanup(keep=False):
    for p in PROCS:
        if p.poll() is None:
            p.kill()
            p.wait()
    if keep:
        print(f"(files kept in {TMP})")
    else:
        shutil.rmtree(TMP, ignore_errors=True)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PARLEY_") and k not in ("PKG_CONFIG_PATH", "MESON_TESTTHREADS")}
    env.update(extra)
    return env


def store_conformance(so, what):
    """The store conformance suite on plugin so; fail() unless it all passes."""
    r = run([STORE_CONF, so], f"store conformance on {what}", timeout=600,
            env=clean_env(TMPDIR=TMP), expect=None)
    if r.returncode != 0 or not re.search(r"100%: Checks: \d+, Failures: 0, Errors: 0",
                                          r.stdout + r.stderr):
        fail(f"store conformance on {so}: exit {r.returncode}\n"
             f"{(r.stdout + r.stderr)[-4000:]}")


def sdk_with_store_h(name, store_h, pc_file):
    """A copy of the installed SDK whose parley/store.h is store_h, and the
    environment whose pkg-config finds it instead of the installed one."""
    inc = os.path.join(TMP, name, "include")
    shutil.copytree(os.path.join(PREFIX, "include", "parley"), os.path.join(inc, "parley"))
    open(os.path.join(inc, "parley", "store.h"), "w").write(store_h)
    pcdir = os.path.join(TMP, name, "pkgconfig")
    os.makedirs(pcdir)
    pc = re.sub(r"^includedir=.*$", f"includedir={inc}", open(pc_file).read(), flags=re.M)
    open(os.path.join(pcdir, "parley-plugin.pc"), "w").write(pc)
    return clean_env(PKG_CONFIG_PATH=pcdir)


def run(cmd, what, env=None, input=None, timeout=600, cwd=None, expect=0):
    r = subprocess.run(cmd, env=env or clean_env(), input=input, capture_output=True,
                       text=True, timeout=timeout, cwd=cwd)
    if expect is not None and r.returncode != expect:
        fail(f"{what}: exit {r.returncode}, expected {expect}\n$ {' '.join(cmd)}\n"
             f"--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}")
    return r


def free_ports(n):
    """n distinct free loopback ports (bound, read, released)."""
    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        # peer_port defaults to port + 1000: keep that below 65536.
        if p + 1000 < 65536 and p not in ports and p + 1000 not in ports:
            ports.append(p)
        socks.append(s)
    for s in socks:
        s.close()
    return ports


def wait_for(pred, what, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    fail(f"timed out after {timeout}s waiting for {what}")


class Server:
    def __init__(self, exe, cfg, data, log):
        self.log = log
        self.f = open(log, "w")
        self.p = subprocess.Popen([exe, "--config", cfg, "--id", "0", "--data", data],
                                  stdout=self.f, stderr=subprocess.STDOUT, env=clean_env())
        PROCS.append(self.p)

    def text(self):
        with open(self.log) as f:
            return f.read()

    def wait_log(self, pattern, what, timeout=30):
        def seen():
            if self.p.poll() is not None:
                fail(f"parleyd exited ({self.p.returncode}) while waiting for {what}:\n"
                     + self.text())
            return re.search(pattern, self.text())
        return wait_for(seen, what, timeout)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            fail("parleyd did not stop within 30 s of SIGTERM:\n" + self.text())
        self.f.close()
        if rc != 0:
            fail(f"parleyd exited {rc} after SIGTERM:\n" + self.text())


def main():
    # ---- 1. configure and install into a fresh prefix, no DESTDIR
    build = os.path.join(TMP, "build")
    run(["meson", "setup", build, SRC, "--prefix", PREFIX, "-Dtests=false"], "meson setup",
        timeout=300)
    run(["meson", "install", "-C", build, "--quiet"], "meson install", timeout=900)
    ok(f"meson install into {PREFIX}")

    # ---- 2. what was installed
    bindir = os.path.join(PREFIX, "bin")
    parleyd = os.path.join(bindir, "parleyd")
    parley = os.path.join(bindir, "parley")
    for exe in [parleyd, parley] + ([os.path.join(bindir, "parley-bench")]
                                    if os.path.exists(os.path.join(SRC, "client", "bench.c"))
                                    else []):
        if not os.access(exe, os.X_OK):
            fail(f"{exe} not installed")
    pcs = glob.glob(os.path.join(PREFIX, "lib*", "**", "pkgconfig", "parley-plugin.pc"),
                    recursive=True)
    if len(pcs) != 1:
        fail(f"expected one parley-plugin.pc under {PREFIX}/lib*, found {pcs}")
    pcdir = os.path.dirname(pcs[0])
    libdir = os.path.dirname(pcdir)
    plugindir = os.path.join(libdir, "parley")
    for name in ["store-sqlite", "store-json", "transport-tcp", "transport-grpcish"]:
        if not os.path.exists(os.path.join(plugindir, f"parley-{name}.so")):
            fail(f"plugin parley-{name}.so not in {plugindir}: {os.listdir(plugindir)}")
    for h in ["common.h", "types.h", "store.h", "transport.h"]:
        if not os.path.exists(os.path.join(PREFIX, "include", "parley", h)):
            fail(f"header parley/{h} not installed")
    example_cfg = os.path.join(PREFIX, "share", "parley", "parley.json")
    unit = os.path.join(PREFIX, "lib", "systemd", "system", "parleyd@.service")
    mans = {p: os.path.join(PREFIX, "share", "man", "man" + p[-1], p)
            for p in ["parleyd.8", "parley.1", "parley.json.5"]}
    for f in [example_cfg, unit] + list(mans.values()):
        if not os.path.exists(f):
            fail(f"{f} not installed")
    unit_text = open(unit).read()
    for want in [f"ExecStart={parleyd} --config {PREFIX}/etc/parley/parley.json --id %i",
                 "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "StateDirectory=parley/%i"]:
        if want not in unit_text:
            fail(f"systemd unit lacks {want!r}:\n{unit_text}")
    if shutil.which("systemd-analyze"):
        r = run(["systemd-analyze", "verify", "--man=no", unit], "systemd-analyze", expect=None)
        if "Unknown key" in r.stderr or "Unknown section" in r.stderr:
            fail("systemd-analyze verify: " + r.stderr)
    ok("binaries, plugins, headers, parley-plugin.pc, config, unit and man pages installed")

    # ---- 3. --version
    r = run([parleyd, "--version"], "parleyd --version")
    if not re.fullmatch(r"parleyd \d+\.\d+\.\d+ \(store ABI \d+\.\d+, transport ABI \d+\)\n", r.stdout):
        fail(f"parleyd --version printed {r.stdout!r}")
    ok("parleyd --version: " + r.stdout.strip())

    pkgenv = clean_env(PKG_CONFIG_PATH=pcdir)
    r = run(["pkg-config", "--variable=plugindir", "parley-plugin"], "pkg-config", env=pkgenv)
    if os.path.realpath(r.stdout.strip()) != os.path.realpath(plugindir):
        fail(f"pkg-config plugindir {r.stdout.strip()!r}, plugins are in {plugindir}")
    r = run(["pkg-config", "--cflags", "parley-plugin"], "pkg-config --cflags", env=pkgenv)
    if f"-I{PREFIX}/include" not in r.stdout:
        fail(f"pkg-config --cflags parley-plugin gave {r.stdout!r}")
    store_abi = run(["pkg-config", "--variable=store_abi", "parley-plugin"], "store_abi",
                    env=pkgenv).stdout.strip()
    if f"store ABI {store_abi}." not in run([parleyd, "--version"], "version").stdout:
        fail(f"pkg-config store_abi {store_abi!r} differs from parleyd --version")
    ok(f"parley-plugin.pc: plugindir {plugindir}, store_abi {store_abi}")

    # ---- 4. the installed server with the installed example config
    port, admin = free_ports(2)
    cfg = json.load(open(example_cfg))
    cfg["servers"][0]["port"] = port
    cfg["servers"][0]["admin_port"] = admin
    cfg["admin"].pop("port_offset", None)
    cfg["password_hash"] = {"opslimit": 1, "memlimit": 8192}  # fast tests, same code path
    data = os.path.join(TMP, "data")
    cfg["data_dir"] = data
    cfg_path = os.path.join(TMP, "parley.json")
    json.dump(cfg, open(cfg_path, "w"), indent=2)
    r = run([parleyd, "--check-config", cfg_path], "parleyd --check-config")
    if not r.stdout.startswith(cfg_path + ": ok"):
        fail(f"--check-config printed {r.stdout!r}")
    bad = os.path.join(TMP, "bad.json")
    json.dump(dict(cfg, store="nosuch"), open(bad, "w"))
    r = run([parleyd, "--check-config", bad], "--check-config of a missing plugin", expect=1)
    if not r.stderr.startswith(bad + ": store: plugin \"nosuch\": not found (looked in:") \
            or plugindir not in r.stderr:
        fail(f"--check-config with a missing store said {r.stderr!r}")
    clash = os.path.join(TMP, "clash.json")
    json.dump(dict(cfg, servers=[dict(cfg["servers"][0], admin_port=port)]), open(clash, "w"))
    r = run([parleyd, "--check-config", clash], "--check-config of an admin port clash", expect=1)
    if r.stderr.strip() != (f"{clash}: servers[0].admin_port: 127.0.0.1:{port} is already "
                            f"used by servers[0].port"):
        fail(f"--check-config with admin_port == port said {r.stderr!r}")
    ok("--check-config: ok for the example, names file, key and reason otherwise")

    srv = Server(parleyd, cfg_path, data, os.path.join(TMP, "parleyd.log"))
    srv.wait_log(r"serving 127\.0\.0\.1:%d" % port, "parleyd to serve")
    ok("installed parleyd started with its plugins from the prefix, no PARLEY_PLUGIN_DIR")

    env = clean_env(PARLEY_SESSION=os.path.join(TMP, "session"), PARLEY_CONFIG=cfg_path)
    run([parley, "register", "alice", "--password-stdin"], "parley register", env=env,
        input="password1\n")
    run([parley, "login", "alice", "--password-stdin"], "parley login", env=env,
        input="password1\n")
    run([parley, "send", "alice", "hello", "from", "the", "prefix"], "parley send", env=env)
    r = run([parley, "--json", "read"], "parley read", env=env)
    msgs = json.loads(r.stdout)["messages"]
    if [m["body"] for m in msgs] != ["hello from the prefix"]:
        fail(f"parley read returned {msgs}")
    ok("installed parley: register, login, send, read")

    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as resp:
        ctype = resp.headers.get("Content-Type", "")
        text = resp.read().decode()
    if not ctype.startswith("text/plain"):
        fail(f"/metrics Content-Type {ctype!r}")
    for pat in [r'^parley_requests_total\{method="send"\} 1$',
                r'^parley_requests_total\{method="register"\} 1$',
                r'^parley_commit_latency_seconds_count [3-9]$',
                r'^parley_commit_latency_seconds_bucket\{le="\+Inf"\} [3-9]$',
                r'^parley_store_bytes [1-9]\d*$', r'^parley_log_entries [3-9]$',
                r'^parley_info\{.*role="primary"\} 1$']:
        if not re.search(pat, text, re.M):
            fail(f"/metrics lacks {pat}:\n{text}")
    for secret in ["password1", "hello from the prefix"]:
        if secret in text or secret in srv.text():
            fail(f"{secret!r} appears in the metrics or the log")
    r = run([parley, "--json", "admin", "stats", "--interval", "200"], "parley admin stats",
            env=env)
    row = json.loads(r.stdout)["servers"][0]
    if not (row["reachable"] and row["role"] == "primary" and row["log_entries"] >= 3
            and row["store_bytes"] > 0 and row["commit_latency_ms"]["samples"] >= 3
            and row["commit_latency_ms"]["p99"] is not None):
        fail(f"parley admin stats --json row: {row}")
    r = run([parley, "admin", "stats", "--interval", "0"], "parley admin stats (table)", env=env)
    if not re.search(r"^0\s+127\.0\.0\.1:%d\s+primary\s" % admin, r.stdout, re.M):
        fail(f"parley admin stats table:\n{r.stdout}")
    ok("GET /metrics and parley admin stats (table and --json); no secrets in metrics or log")

    cfg["log_level"] = "debug"
    cfg["limits"] = {"requests_per_second": 500}
    cfg["servers"][0]["peer_port"] = port + 1001 if port + 1001 < 65536 else port - 1
    json.dump(cfg, open(cfg_path, "w"), indent=2)
    srv.p.send_signal(signal.SIGHUP)
    srv.wait_log(r"SIGHUP: log_level info -> debug", "the reload to be logged")
    srv.wait_log(r"SIGHUP: limits\.requests_per_second 1000 -> 500", "the limits change")
    srv.wait_log(r"SIGHUP: changed but needs a restart to apply: servers", "restart keys")
    srv.wait_log(r"SIGHUP: reloaded ", "the reload summary")
    del cfg["servers"][0]["peer_port"]
    open(cfg_path, "w").write('{"servers": [')
    srv.p.send_signal(signal.SIGHUP)
    srv.wait_log(r"SIGHUP: not reloaded, keeping the running settings: .*not valid JSON",
                 "a broken file to be refused")
    json.dump(cfg, open(cfg_path, "w"), indent=2)
    run([parley, "unread"], "parley unread after reload", env=env)
    srv.wait_log(r" DEBUG .*counts request", "a debug line after the reload")
    srv.stop()
    line = srv.text().splitlines()[0]
    if not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (ERROR|WARN |INFO |DEBUG) \[s0\] ",
                    line):
        fail(f"log line without timestamp, level and tag: {line!r}")
    ok("SIGHUP applies log_level and limits, names restart-only keys, keeps running on a "
       "broken file; log lines carry UTC time, level, server")

    # ---- 5. the example plugin, out of tree, against the installed SDK
    ex_src = os.path.join(TMP, "store-trace")
    shutil.copytree(os.path.join(SRC, "examples", "store-trace"), ex_src)
    ex_build = os.path.join(TMP, "store-trace-build")
    run(["meson", "setup", ex_build, ex_src], "example: meson setup", env=pkgenv)
    run(["meson", "compile", "-C", ex_build], "example: meson compile", env=pkgenv)
    run(["meson", "install", "-C", ex_build, "--quiet"], "example: meson install", env=pkgenv)
    trace_so = os.path.join(plugindir, "parley-store-trace.so")
    if not os.path.exists(trace_so):
        fail(f"the example did not install into plugindir {plugindir}")
    ok("examples/store-trace built out of tree with pkg-config and installed into plugindir")

    store_conformance(trace_so, "the example")
    ok("store conformance suite passes on the example plugin")

    cfg["store"] = {"name": "trace", "inner": "sqlite", "slow_ms": 1000}
    cfg["log_level"] = "info"
    data2 = os.path.join(TMP, "data-trace")
    cfg["data_dir"] = data2
    json.dump(cfg, open(cfg_path, "w"), indent=2)
    srv = Server(parleyd, cfg_path, data2, os.path.join(TMP, "parleyd-trace.log"))
    srv.wait_log(r"store trace: wrapping .*/parley-store-sqlite\.so", "trace to wrap sqlite")
    srv.wait_log(r"store trace in ", "parleyd to serve with the trace store")
    run([parley, "register", "bob", "--password-stdin"], "register on the trace store",
        env=env, input="password2\n")
    srv.stop()
    if not re.search(r"store trace: closing after \d+ calls", srv.text()):
        fail("no trace summary at close:\n" + srv.text())
    ok("parleyd loads the example by short name and serves with it")

    # ---- 5b. the same example built against the store.h of before minor 1
    # (tests/install/sdk-minor0): a plugin built and deployed then loads on
    # this parley, serves and passes conformance, through the members it has.
    m0_store_h = open(os.path.join(SRC, "tests", "install", "sdk-minor0", "parley",
                                   "store.h")).read()
    m0_env = sdk_with_store_h("minor0", m0_store_h, pcs[0])
    m0_build = os.path.join(TMP, "store-trace-minor0")
    run(["meson", "setup", m0_build, ex_src], "minor-0 build: setup", env=m0_env)
    run(["meson", "compile", "-C", m0_build], "minor-0 build: compile", env=m0_env)
    m0_so = os.path.join(m0_build, "parley-store-trace.so")
    r = run(["nm", "-D", "--defined-only", m0_so], "nm -D of the minor-0 build")
    if "parley_store_abi_minor" in r.stdout or "parley_store_plugin" not in r.stdout:
        fail(f"the minor-0 build exports the wrong symbols:\n{r.stdout}")
    store_conformance(m0_so, "the minor-0 build")
    cfg["store"] = {"name": m0_so, "inner": "sqlite"}
    data3 = os.path.join(TMP, "data-minor0")
    cfg["data_dir"] = data3
    json.dump(cfg, open(cfg_path, "w"), indent=2)
    srv = Server(parleyd, cfg_path, data3, os.path.join(TMP, "parleyd-minor0.log"))
    srv.wait_log(r"store trace in ", "parleyd to serve with the minor-0 plugin")
    run([parley, "register", "carol", "--password-stdin"], "register on the minor-0 plugin",
        env=env, input="password3\n")
    srv.stop()
    ok("examples/store-trace built against the minor-0 store.h loads, serves and passes "
       "conformance on this parley")

    # ---- 6. an ABI bump is refused, naming both versions
    text = open(os.path.join(PREFIX, "include", "parley", "store.h")).read()
    bumped = re.sub(r"#define PL_STORE_ABI_VERSION \d+u",
                    f"#define PL_STORE_ABI_VERSION {int(store_abi) + 1}u", text)
    if bumped == text:
        fail("could not find PL_STORE_ABI_VERSION in the installed store.h")
    abi_env = sdk_with_store_h("abi2", bumped, pcs[0])
    abi_build = os.path.join(TMP, "store-trace-abi2")
    run(["meson", "setup", abi_build, ex_src], "ABI-2 build: setup", env=abi_env)
    run(["meson", "compile", "-C", abi_build], "ABI-2 build: compile", env=abi_env)
    abi_so = os.path.join(abi_build, "parley-store-trace.so")
    cfg["store"] = {"name": abi_so}
    json.dump(cfg, open(cfg_path, "w"), indent=2)
    want = f'plugin "{abi_so}": ABI version {int(store_abi) + 1}, this parley speaks {store_abi}'
    r = run([parleyd, "--check-config", cfg_path], "--check-config of the ABI-2 plugin",
            expect=1)
    if want not in r.stderr:
        fail(f"--check-config did not say {want!r}: {r.stderr!r}")
    r = run([parleyd, "--config", cfg_path, "--data", os.path.join(TMP, "data-abi")],
            "parleyd with the ABI-2 plugin", expect=1, timeout=60)
    if want not in r.stderr:
        fail(f"parleyd did not say {want!r}: {r.stderr!r}")
    ok("a plugin built for store ABI %d is refused: %s" % (int(store_abi) + 1, want))

    # ---- 7. man pages
    for page, path in mans.items():
        r = run(["man", "--warnings", "-l", path], f"man -l {page}",
                env=clean_env(MANWIDTH="80", MANPAGER="cat", PAGER="cat", LC_ALL="C.UTF-8"))
        name = page.rsplit(".", 1)[0]
        if "NAME" not in r.stdout or name not in r.stdout or "SYNOPSIS" not in r.stdout \
                and "DESCRIPTION" not in r.stdout:
            fail(f"man -l {page} rendered:\n{r.stdout[:2000]}")
        if r.stderr.strip():
            fail(f"man -l {page} warned:\n{r.stderr}")
        if "@" in r.stdout and re.search(r"@[A-Z]+@", r.stdout):
            fail(f"man page {page} has an unsubstituted @VARIABLE@")
    ok("man pages render with man -l, without warnings")

    print(f"{PASSED} passed, 0 failed")
    cleanup()


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:  # a crash in the test is a failure with its reason
        fail(f"{type(e).__name__}: {e}")
