"""Clients and the history they record.

Every client operation becomes one history record (a JSON line):
  {"i": N, "client": C, "kind": KIND, "user": U, "args": {...},
   "start": T, "end": T, "outcome": "ok" | "failed" | "unknown",
   "result": PARSED_JSON_OR_NULL, "exit": CODE_OR_NULL, "err": STDERR_TAIL}
Times are seconds since the start of the run. Outcome follows the CLI's exit
code: 0 ok; 1 failed (the server refused, so the operation did not happen);
3 (no server reachable), a timeout, or output that is not the JSON document
expected are unknown: the request may or may not have taken effect.
The nemesis writes records with client "nemesis" into the same history.

Message bodies are unique tokens (t<seed>.c<client>.<seq>), so a body found in
any read names exactly one send.
"""
import json
import os
import random
import threading
import time

OP_TIMEOUT = 10.0
PAGE_MAX = 1000   # PL_PAGE_MAX: the largest page or read the server allows
CONTESTED = ["x%d" % k for k in range(6)]   # names several clients race to register
PATTERNS = ["*", "u*", "x?", "x*", "u1*", "*a"]


def base_users(clients):
    """Two accounts per client, registered before the faults begin."""
    return ["u%d%s" % (c, s) for c in range(clients) for s in "ab"]


def password_of(user):
    return "pw-%s-secret" % user


def messages_of(doc):
    """The CLI prints read/history as a list or as {"messages": [...]}."""
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("messages"), list):
        return doc["messages"]
    return None


class History:
    def __init__(self, path, t0):
        self.path = path
        self.t0 = t0
        self.lock = threading.Lock()
        self.records = []
        self.f = open(path, "w")

    def now(self):
        return time.monotonic() - self.t0

    def add(self, rec):
        with self.lock:
            rec["i"] = len(self.records)
            self.records.append(rec)
            self.f.write(json.dumps(rec, sort_keys=True) + "\n")
            self.f.flush()
        return rec

    def close(self):
        with self.lock:
            if not self.f.closed:
                self.f.close()


class Runner:
    """Runs one CLI operation and records it."""

    def __init__(self, cluster, history, client, session_dir):
        self.cluster = cluster
        self.history = history
        self.client = client
        self.session_dir = session_dir

    def session(self, user):
        return os.path.join(self.session_dir, "c%s-%s.session" % (self.client, user))

    def op(self, kind, user, cli_args, args, stdin=None, expect=None, timeout=OP_TIMEOUT,
           session_user=None):
        start = self.history.now()
        rc, out, err = self.cluster.cli(self.session(session_user or user), cli_args,
                                        stdin=stdin, timeout=timeout)
        end = self.history.now()
        result = None
        if rc == 0:
            try:
                result = json.loads(out) if out.strip() else {}
            except ValueError:
                result = None
        if rc == 0 and (expect is None or expect(result)):
            outcome = "ok"
        elif rc == 1:
            outcome = "failed"
        else:
            outcome = "unknown"
            if rc == 0:
                err = "unexpected output: %r" % out[:300]
        rec = {"client": self.client, "kind": kind, "user": user, "args": args,
               "start": round(start, 4), "end": round(end, 4), "outcome": outcome,
               "result": result, "exit": rc, "err": (err or "").strip()[-300:]}
        return self.history.add(rec)

    # ---- the operations ----
    def register(self, user, password, kind="register"):
        return self.op(kind, user, ["register", user, "--password-stdin"],
                       {"password": password}, stdin=password + "\n")

    def login(self, user, password, kind="login", session_user=None):
        return self.op(kind, user, ["login", user, "--password-stdin"],
                       {"password": password}, stdin=password + "\n",
                       session_user=session_user)

    def send(self, user, to, body):
        return self.op("send", user, ["send", to, body], {"to": to, "body": body},
                       expect=lambda r: isinstance(r, dict) and isinstance(r.get("id"), int))

    def read(self, user, n=None, kind="read"):
        cli = ["read"] + (["-n", str(n)] if n else [])
        return self.op(kind, user, cli, {"n": n},
                       expect=lambda r: messages_of(r) is not None)

    def history_page(self, user, offset, limit, kind="history"):
        return self.op(kind, user, ["history", "--offset", str(offset), "--limit", str(limit)],
                       {"offset": offset, "limit": limit},
                       expect=lambda r: messages_of(r) is not None)

    def delete(self, user, ids):
        return self.op("delete", user, ["delete"] + [str(i) for i in ids], {"ids": ids})

    def users(self, pattern, limit=PAGE_MAX, kind="list", user="-"):
        return self.op(kind, user, ["users", pattern, "--limit", str(limit)],
                       {"pattern": pattern, "limit": limit},
                       expect=lambda r: isinstance(r, dict) and isinstance(r.get("users"), list))


class Client(threading.Thread):
    """One concurrent client: a seeded sequence of mixed operations, as its
    own two accounts, until stop is set."""

    def __init__(self, cluster, history, c, seed, users, stop, session_dir):
        super().__init__(name="client-%d" % c, daemon=True)
        self.r = Runner(cluster, history, c, session_dir)
        self.c = c
        self.seed = seed
        self.rng = random.Random("%d/client/%d" % (seed, c))
        self.mine = ["u%da" % c, "u%db" % c]
        self.users = users
        self.stop = stop
        self.seq = 0
        self.seen = {u: [] for u in self.mine}   # ids this client read, per own user
        self.need_login = set()
        self.contested_pw = {}                   # name -> passwords this client tried
        self.error = None

    def token(self):
        self.seq += 1
        return "t%d.c%d.%d" % (self.seed, self.c, self.seq)

    def run(self):
        try:
            while not self.stop.is_set():
                self.step()
                self.stop.wait(self.rng.uniform(0.02, 0.2))
        except Exception as e:  # a harness bug must not pass as a quiet client
            self.error = repr(e)
            raise

    def auth_trouble(self, rec):
        e = rec["err"].lower()
        return rec["outcome"] == "failed" and ("session" in e or "log in" in e
                                               or "login" in e or "auth" in e)

    def step(self):
        rng = self.rng
        me = rng.choice(self.mine)
        if me in self.need_login:
            rec = self.r.login(me, password_of(me))
            if rec["outcome"] == "ok":
                self.need_login.discard(me)
            return
        x = rng.random()
        if x < 0.42:
            rec = self.r.send(me, rng.choice(self.users), self.token())
        elif x < 0.66:
            rec = self.r.read(me, n=rng.choice([None, None, 1, 3]))
            if rec["outcome"] == "ok":
                self.seen[me].extend(m.get("id") for m in messages_of(rec["result"])
                                     if isinstance(m, dict))
        elif x < 0.71:
            rec = self.r.history_page(me, 0, rng.choice([5, 200]))
        elif x < 0.77 and self.seen[me]:
            k = min(len(self.seen[me]), rng.choice([1, 1, 2]))
            ids = rng.sample(self.seen[me], k)
            rec = self.r.delete(me, ids)
            if rec["outcome"] != "failed":  # an unknown delete may have happened
                for i in ids:
                    self.seen[me].remove(i)
        elif x < 0.84:
            name = rng.choice(CONTESTED)
            pw = "pw-%s-c%d-%d" % (name, self.c, rng.randrange(1 << 30))
            self.contested_pw.setdefault(name, []).append(pw)
            rec = self.r.register(name, pw)
        elif x < 0.90:
            tried = sorted(self.contested_pw)
            if tried and rng.random() < 0.5:
                name = rng.choice(tried)
                pw = rng.choice(self.contested_pw[name])
                rec = self.r.login(name, pw, session_user="contested")
            else:
                rec = self.r.login(me, password_of(me))
        else:
            rec = self.r.users(rng.choice(PATTERNS), user=me)
        if self.auth_trouble(rec):
            self.need_login.add(me)


def retry(fn, deadline, pause=0.5, ok=lambda rec: rec["outcome"] == "ok"):
    """Call fn until its record satisfies ok or the deadline passes; returns the
    last record."""
    while True:
        rec = fn()
        if ok(rec) or time.monotonic() >= deadline:
            return rec
        time.sleep(pause)


def setup_accounts(cluster, history, users, session_dir, deadline):
    """Register and log in every base account before faults begin. Returns a
    list of problems (empty when all is well)."""
    r = Runner(cluster, history, "setup", session_dir)
    problems = []
    for u in users:
        def reg():
            return r.register(u, password_of(u), kind="register")
        # A retried registration may find its own earlier attempt committed:
        # "exists" after an unknown attempt is success, and the login proves it.
        rec = retry(reg, deadline, ok=lambda rec: rec["outcome"] in ("ok", "failed"))
        if rec["outcome"] == "unknown":
            problems.append("could not register %s: %s" % (u, rec["err"]))
    for c_user in users:
        c = int(c_user[1:-1])
        rr = Runner(cluster, history, c, session_dir)
        rec = retry(lambda: rr.login(c_user, password_of(c_user)), deadline)
        if rec["outcome"] != "ok":
            problems.append("could not log in %s: %s" % (c_user, rec["err"]))
    return problems


def final_reads(cluster, history, users, session_dir, deadline):
    """After healing: log in as every base account, read its mailbox, then page
    through its history. Records kinds final-login, final-read, final-history
    and final-list. Returns a list of problems."""
    r = Runner(cluster, history, "final", session_dir)
    problems = []
    for u in users:
        rec = retry(lambda: r.login(u, password_of(u), kind="final-login"), deadline)
        if rec["outcome"] != "ok":
            problems.append("final login of %s: %s" % (u, rec["err"]))
            continue
        while True:  # a read returns at most PAGE_MAX messages
            rec = retry(lambda: r.read(u, kind="final-read"), deadline)
            if rec["outcome"] != "ok" or len(messages_of(rec["result"])) < PAGE_MAX:
                break
        if rec["outcome"] != "ok":
            problems.append("final read of %s: %s" % (u, rec["err"]))
            continue
        offset = 0
        while True:
            rec = retry(lambda: r.history_page(u, offset, 200, kind="final-history"), deadline)
            if rec["outcome"] != "ok":
                problems.append("final history of %s: %s" % (u, rec["err"]))
                break
            page = messages_of(rec["result"])
            more = rec["result"].get("more") if isinstance(rec["result"], dict) else None
            offset += len(page)
            if not page or more is False or (more is None and len(page) < 200):
                break
    rec = retry(lambda: r.users("*", limit=PAGE_MAX, kind="final-list", user=users[0]), deadline)
    if rec["outcome"] != "ok":
        problems.append("final user list: %s" % rec["err"])
    return problems
