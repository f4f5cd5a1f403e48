"""libparley's retry, redirect and resume logic, through the real CLI,
against fake servers speaking the tcp/json codec (docs/protocol.md) that
misbehave on purpose: redirect, drop, stay silent, refuse, answer
UNAVAILABLE, and replay pushes after a reconnect.

Run by meson (suite e2e) as: test_client_retries.py PARLEY
Prints one line per check and exits non-zero if any failed."""
import atexit
import json, os, shutil, socket, subprocess, sys, tempfile, threading, time

PARLEY = sys.argv[1]
TMP = tempfile.mkdtemp(prefix="parley-retries-")
atexit.register(shutil.rmtree, TMP, True)

class Fake:
    def __init__(self, handler):
        self.s = socket.socket(); self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.s.bind(("127.0.0.1", 0)); self.s.listen(16)
        self.port = self.s.getsockname()[1]
        self.handler = handler; self.log = []; self.conns = 0
        threading.Thread(target=self.run, daemon=True).start()
    def run(self):
        while True:
            try: c, _ = self.s.accept()
            except OSError: return
            self.conns += 1
            threading.Thread(target=self.serve, args=(c, self.conns), daemon=True).start()
    def serve(self, c, n):
        f = c.makefile("rwb")
        def send(obj):
            f.write((json.dumps(obj) + "\n").encode()); f.flush()
        try:
            for line in f:
                req = json.loads(line)
                self.log.append((n, req))
                r = self.handler(self, n, req, send)
                if r == "close":
                    c.shutdown(socket.SHUT_RDWR); c.close(); return
        except (OSError, ValueError):
            pass

def config(*ports, dead=()):
    p = os.path.join(TMP, "c%d.json" % time.monotonic_ns())
    json.dump({"servers": [{"host": "127.0.0.1", "port": x} for x in ports],
               "transport": {"name": "tcp", "codec": "json"}}, open(p, "w"))
    return p

def cli(cfg, *args, timeout=20):
    env = dict(os.environ, PARLEY_SESSION=os.path.join(TMP, "sess"))
    open(env["PARLEY_SESSION"], "w").write("tok\nalice\n")
    t = time.monotonic()
    r = subprocess.run([PARLEY, "-c", cfg, "--json"] + list(args), capture_output=True, text=True, timeout=timeout, env=env)
    return r, time.monotonic() - t

def ok_send(srv, n, req, send):
    send({"m": req["m"], "rid": req["rid"], "status": 0, "id": 42, "time": 1})

fails = 0
def check(cond, what):
    global fails
    print(("ok   " if cond else "FAIL ") + what)
    if not cond: fails += 1

# 1. redirect to leader
B = Fake(ok_send)
A = Fake(lambda s, n, req, send: send({"m": req["m"], "rid": req["rid"], "status": 23, "error": "not the primary", "leader": "127.0.0.1:%d" % B.port}))
r, dt = cli(config(A.port, B.port), "send", "bob", "hi")
check(r.returncode == 0 and json.loads(r.stdout)["id"] == 42, "redirect followed: %r %r" % (r.stdout, r.stderr))
check(A.log[0][1]["cid"] == B.log[0][1]["cid"] and A.log[0][1]["rno"] == B.log[0][1]["rno"], "same cid/rno after redirect")

# 2. dropped connection: resend once, same ids
def drop_first(srv, n, req, send):
    if n == 1: return "close"
    ok_send(srv, n, req, send)
C = Fake(drop_first)
r, dt = cli(config(C.port), "send", "bob", "hi")
check(r.returncode == 0, "resent after drop: %r" % r.stderr)
check(len(C.log) == 2 and C.log[0][1] == C.log[1][1], "resend identical: %r" % C.log)

# 2b. always drop: gives up, exit 3, at most two sends
D = Fake(lambda s, n, req, send: "close")
r, dt = cli(config(D.port), "send", "bob", "hi")
check(r.returncode == 3 and len(D.log) == 2, "always-drop: exit %d, %d sends, %.2fs %r" % (r.returncode, len(D.log), dt, r.stderr))

# 3. silent first server, primary second
S = Fake(lambda s, n, req, send: None)
E = Fake(ok_send)
r, dt = cli(config(S.port, E.port), "send", "bob", "hi")
check(r.returncode == 0 and dt < 4.5, "silent server skipped in %.2fs: %r" % (dt, r.stderr))

# 4. dead first server
tmp = socket.socket(); tmp.bind(("127.0.0.1", 0)); dead = tmp.getsockname()[1]; tmp.close()
F = Fake(ok_send)
r, dt = cli(config(dead, F.port), "send", "bob", "hi")
check(r.returncode == 0 and dt < 2, "dead server skipped in %.2fs" % dt)

# 5. nothing reachable: exit 3 fast
r, dt = cli(config(dead), "send", "bob", "hi")
check(r.returncode == 3 and dt < 2.5, "unreachable exit %d in %.2fs %r" % (r.returncode, dt, r.stderr))

# 6. UNAVAILABLE twice then ok (single server)
cnt = {"n": 0}
def unavail(srv, n, req, send):
    cnt["n"] += 1
    if cnt["n"] <= 2:
        send({"m": req["m"], "rid": req["rid"], "status": 24, "error": "no quorum"}); return
    ok_send(srv, n, req, send)
G = Fake(unavail)
r, dt = cli(config(G.port), "send", "bob", "hi")
check(r.returncode == 0 and len({json.dumps(x[1]) for x in G.log}) == 1, "unavailable retried with identical request (%d tries)" % len(G.log))

# 6b. always unavailable -> exit 3 after timeout
H = Fake(lambda s, n, req, send: send({"m": req["m"], "rid": req["rid"], "status": 24, "error": "no quorum"}))
r, dt = cli(config(H.port), "send", "bob", "hi")
check(r.returncode == 3 and 4 < dt < 7, "always unavailable: exit %d after %.2fs %r" % (r.returncode, dt, r.stderr))

# 6c. a failover: for a while every server names a dead leader, then one of
# them becomes primary; the call rides through within its timeout
t_primary = time.monotonic() + 1.2
def failing_over(srv, n, req, send):
    if time.monotonic() < t_primary:
        send({"m": req["m"], "rid": req["rid"], "status": 23, "error": "not the primary",
              "leader": "127.0.0.1:%d" % dead})
        return
    ok_send(srv, n, req, send)
def backup_of_dead(srv, n, req, send):
    send({"m": req["m"], "rid": req["rid"], "status": 23, "error": "not the primary",
          "leader": "127.0.0.1:%d" % dead})
I = Fake(backup_of_dead)
J = Fake(failing_over)
r, dt = cli(config(I.port, J.port), "send", "bob", "hi")
check(r.returncode == 0 and dt >= 1.2, "rode through the failover in %.2fs: %r" % (dt, r.stderr))

# 7. listen: pushes, drop, resume without gap or duplicate
def pusher(srv, n, req, send):
    m = req["m"]
    def msg(i): send({"m": "push", "msg": {"id": i, "from": "bob", "to": "alice", "body": "m%d" % i, "time": 1, "state": 0}})
    if m == "subscribe":
        send({"m": m, "rid": req["rid"], "status": 0})
        after = int(req.get("after", 0))
        if n == 1:
            for i in (1, 2, 3): msg(i)
            time.sleep(0.3)
            return "close"
        for i in range(max(after - 1, 1), 6): msg(i)  # replays one old id
    elif m == "ack":
        send({"m": m, "rid": req["rid"], "status": 0})
L = Fake(pusher)
env = dict(os.environ, PARLEY_SESSION=os.path.join(TMP, "sess"))
p = subprocess.Popen([PARLEY, "-c", config(L.port), "--json", "listen"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
got = []
for _ in range(5):
    line = p.stdout.readline()
    if not line: break
    got.append(json.loads(line)["id"])
time.sleep(0.5)
p.send_signal(2); p.wait(10)
subs = [r for _, r in L.log if r["m"] == "subscribe"]
acked = sorted(i for _, r in L.log if r["m"] == "ack" for i in r["ids"])
check(got == [1, 2, 3, 4, 5], "listen resumed: %r" % got)
check([int(s.get("after", 0)) for s in subs] == [0, 3], "re-subscribed after 3: %r" % subs)
check(p.returncode == 0, "SIGINT exit 0 (%r) %r" % (p.returncode, p.stderr.read()))
check(acked == [1, 2, 3, 4, 5] or acked == [1, 2, 3, 3, 4, 5], "acked what was printed: %r" % acked)
print("fails:", fails); sys.exit(1 if fails else 0)
