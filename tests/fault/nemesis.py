"""The nemesis: a seeded schedule of faults, and the code that applies and
heals them.

The schedule is a pure function of (seed, servers, duration): the same seed
gives the same kinds, times, hold times and parameters. Which server is "the
primary" is looked up when a fault starts (the cluster decides that, not the
seed); everything else random at that moment comes from a generator seeded
from the seed too, so a replay differs only where the cluster itself did.

Faults (one episode at a time, each healed before the next begins; one
episode in four combines a process fault with a link fault):
  kill           kill -9 one server (the primary half the time), or up to f
                 servers; restarted when healed
  pause          SIGSTOP the same way; SIGCONT when healed
  isolate        cut every link to and from the primary
  split          a random majority/minority split (the primary in the
                 minority half the time)
  bridge         two halves that cannot talk, and one server that talks to both
  ring           (5 servers) each server talks only to its two ring neighbours:
                 everyone sees a majority, no two see the same one
  oneway         the primary can hear but not speak: its outgoing links cut
  slow           a random third or more of the links delay bytes 20-250 ms
  lossy          a random third or more of the links reset connections and
                 stall directions at random
  crashall       kill -9 every server; restart them all, in random order, at heal
  bounce         every 0.7-2 s kill -9 a server (the primary half the time) and
                 restart it 0.1-0.8 s later, faster than an election timeout
  flap           every 0.3-1.5 s a new random partition (isolate, split or
                 none), so view changes race each other
  member         (--membership runs only) a membership change through the
                 operator CLI: remove a random non-primary server
                 (`parley admin remove-server`), stop it, wipe its data
                 directory, start it empty with --join and add it back
                 (`parley admin add-server`); it comes back last in priority
Cut links are reset-style or blackhole-style at random (see proxy.py).
"""
import json
import random
import shutil
import time

KINDS = ["kill", "pause", "isolate", "split", "bridge", "ring", "oneway", "slow", "lossy",
         "crashall", "bounce", "flap"]


PROCESS_KINDS = ("kill", "pause")
SOLO_KINDS = ("crashall", "bounce", "flap", "member")   # never combined with another fault
MEMBER_SHARE = 0.3    # with membership changes on: the share of episodes that are one
MEMBER_TIMEOUT = 90   # seconds `parley admin` waits for one change


def make_schedule(seed, n, duration, quiet=3.0, membership=False):
    """[(at_seconds, [kinds], hold_seconds, params)] for a run of `duration` s.
    An episode is one fault, or (one time in four) a process fault and a
    link fault together, such as a crash during a partition. membership:
    about MEMBER_SHARE of the episodes are a "member" change instead (the
    schedule without it is unchanged, so old seeds replay as before)."""
    rng = random.Random("%d/schedule/%d" % (seed, n))
    mrng = random.Random("%d/member/%d" % (seed, n))
    kinds = [k for k in KINDS if not (k == "ring" and n < 5)]
    links = [k for k in kinds if k not in PROCESS_KINDS + SOLO_KINDS]
    out = []
    t = quiet
    while True:
        hold = round(rng.uniform(2.5, 7.0), 2)
        if t + hold > duration:
            break
        kind = rng.choice(kinds)
        if rng.random() < 0.25:
            ks = [rng.choice(PROCESS_KINDS), rng.choice(links)]
        else:
            ks = [kind]
        if membership and n >= 2 and mrng.random() < MEMBER_SHARE:
            ks = ["member"]
        params = {"style": rng.choice(["reset", "blackhole"]),
                  "on_primary": rng.random() < 0.5,
                  "count": rng.randint(1, max(1, (n - 1) // 2)),
                  "rand": rng.randrange(1 << 30)}
        out.append((round(t, 2), ks, hold, params))
        t += hold + rng.uniform(1.5, 4.0)
    return out


class Nemesis:
    def __init__(self, cluster, history, seed):
        self.c = cluster
        self.h = history
        self.seed = seed
        self.n = cluster.n
        self.counts = {}
        self.cut = set()        # directed links not "up"
        self.killed = set()
        self.paused = set()
        self.ticker = None          # a generator stepped during a hold (bounce, flap)
        self.restart_order = None
        self.outside = None         # a server removed by "member" and not yet added back

    def links(self):
        return ["%d>%d" % (i, j) for i in range(self.n) for j in range(self.n) if i != j]

    def record(self, kind, what, start, **extra):
        rec = {"client": "nemesis", "kind": kind, "user": "-", "args": extra,
               "start": round(start, 4), "end": round(self.h.now(), 4), "outcome": "ok",
               "result": None, "exit": None, "err": what}
        self.h.add(rec)

    def primary_or_random(self, rng, on_primary):
        p = self.c.primary() if on_primary else None
        return p if p is not None else rng.randrange(self.n)

    def cut_between(self, groups):
        """Links between servers of different groups (both directions)."""
        where = {s: g for g, members in enumerate(groups) for s in members}
        return {"%d>%d" % (i, j) for i in range(self.n) for j in range(self.n)
                if i != j and i in where and j in where and where[i] != where[j]}

    def apply(self, kind, params):
        """Start one fault; returns a description."""
        rng = random.Random("%d/%s/%d" % (self.seed, kind, params["rand"]))
        n, f = self.n, (self.n - 1) // 2
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind in ("kill", "pause"):
            first = self.primary_or_random(rng, params["on_primary"])
            others = [s for s in range(n) if s != first]
            rng.shuffle(others)
            victims = [first] + others[:max(1, min(params["count"], f)) - 1]
            for v in victims:
                if kind == "kill":
                    self.c.kill(v)
                    self.killed.add(v)
                else:
                    self.c.pause(v)
                    self.paused.add(v)
            return "%s servers %s" % (kind, victims)
        if kind == "member":
            return self.member_change(rng)
        if kind == "crashall":
            order = list(range(n))
            rng.shuffle(order)
            for v in order:
                self.c.kill(v)
                self.killed.add(v)
            self.restart_order = order
            return "kill -9 all servers %s" % order
        if kind == "bounce":
            self.ticker = self.bounce_tick(rng, params)
            return "bounce servers"
        if kind == "flap":
            self.ticker = self.flap_tick(rng, params)
            return "flapping partitions (%s)" % params["style"]
        if kind in ("slow", "lossy"):
            links = self.links()
            rng.shuffle(links)
            chosen = links[:max(1, rng.randint(len(links) // 3, len(links)))]
            if kind == "slow":
                mode = {"state": "slow", "delay_ms": rng.randint(20, 250),
                        "jitter_ms": rng.randint(0, 50)}
            else:
                mode = {"state": "lossy", "reset_p": rng.uniform(0.01, 0.08),
                        "stall_p": rng.uniform(0.02, 0.1), "stall_ms": rng.randint(100, 900)}
            self.c.proxy.set(chosen, **mode)
            self.cut |= set(chosen)
            return "%s links %s %s" % (kind, sorted(chosen), mode)
        if kind == "isolate":
            p = self.primary_or_random(rng, True)
            cut = self.cut_between([[p], [s for s in range(n) if s != p]])
            what = "isolate server %d" % p
        elif kind == "split":
            order = list(range(n))
            rng.shuffle(order)
            if params["on_primary"]:
                p = self.primary_or_random(rng, True)
                order.remove(p)
                order.insert(0, p)
            minority, majority = order[:f], order[f:]
            cut = self.cut_between([minority, majority])
            what = "split %s | %s" % (sorted(minority), sorted(majority))
        elif kind == "bridge":
            order = list(range(n))
            rng.shuffle(order)
            half = (n - 1) // 2
            a, bridge, b = order[:half], order[half], order[half + 1:]
            cut = self.cut_between([a, b])
            what = "bridge %s <-%d-> %s" % (sorted(a), bridge, sorted(b))
        elif kind == "ring":
            order = list(range(n))
            rng.shuffle(order)
            pos = {s: k for k, s in enumerate(order)}
            cut = {"%d>%d" % (i, j) for i in range(n) for j in range(n)
                   if i != j and (pos[i] - pos[j]) % n not in (1, n - 1)}
            what = "ring %s" % order
        elif kind == "oneway":
            p = self.primary_or_random(rng, True)
            cut = {"%d>%d" % (p, j) for j in range(n) if j != p}
            what = "server %d cannot speak (its outgoing links cut)" % p
        else:
            raise ValueError("unknown fault " + kind)
        self.c.proxy.set(cut, state="down", style=params["style"])
        self.cut |= cut
        return "%s (%s links %s)" % (what, params["style"], sorted(cut))

    def member_change(self, rng):
        """Remove a random running non-primary server, wipe it, start it
        empty with --join and add it back, as an operator would (the steps
        of docs/operations.md). A step that fails leaves the server outside;
        heal() tries to add it back, and the run's end checks the
        membership."""
        p = self.c.primary()
        cands = [s for s in range(self.n) if s != p and self.c.running(s)]
        if p is None or not cands:
            return "member change skipped (primary %s, candidates %s)" % (p, cands)
        v = rng.choice(cands)
        rc, out, err = self.c.admin(["remove-server", self.c.address(v)], MEMBER_TIMEOUT)
        if rc != 0:
            return "remove-server %d refused or failed (exit %s): %s" % (v, rc, err.strip()[-300:])
        self.outside = v
        self.c.kill(v)
        shutil.rmtree(self.c.data_dir(v), ignore_errors=True)
        self.c.start(v, join=True)
        return "removed server %d, wiped it, restarted it with --join; %s" % (v, self.add_back())

    def add_back(self):
        v = self.outside
        deadline = time.monotonic() + 15
        while not self.c.listening(v) and self.c.alive(v) and time.monotonic() < deadline:
            time.sleep(0.1)
        rc, out, err = self.c.admin(["add-server", self.c.address(v)], MEMBER_TIMEOUT)
        if rc != 0:
            return "add-server %d failed (exit %s): %s" % (v, rc, err.strip()[-300:])
        self.outside = None
        try:
            doc = json.loads(out)
            return "added back: epoch %s, order %s" % (doc.get("epoch"), [
                self.c.ports.index(sv["port"]) if sv.get("port") in self.c.ports else sv
                for sv in doc.get("servers", [])])
        except ValueError:
            return "added back"

    def bounce_tick(self, rng, params):
        """A generator stepped every 0.1 s during the hold."""
        while True:
            wait = rng.uniform(0.7, 2.0)
            t = time.monotonic() + wait
            while time.monotonic() < t:
                yield
            v = self.primary_or_random(rng, rng.random() < 0.5)
            start = self.h.now()
            self.c.kill(v)
            time.sleep(rng.uniform(0.1, 0.8))
            self.c.start(v)
            self.record("fault", "bounce server %d" % v, start, fault="bounce-one")

    def flap_tick(self, rng, params):
        while True:
            t = time.monotonic() + rng.uniform(0.3, 1.5)
            while time.monotonic() < t:
                yield
            if self.cut:
                self.c.proxy.set(self.cut, state="up")
                self.cut = set()
            shape = rng.choice(["isolate", "split", "none"])
            order = list(range(self.n))
            rng.shuffle(order)
            k = 1 if shape == "isolate" else (self.n - 1) // 2
            if shape == "none" or k == 0:
                cut = set()
            else:
                cut = self.cut_between([order[:k], order[k:]])
            self.c.proxy.set(cut, state="down", style=params["style"])
            self.cut |= cut
            self.record("fault", "flap: %s %s" % (shape, sorted(order[:k]) if cut else ""),
                        self.h.now(), fault="flap-one")

    def heal(self):
        """Undo every fault: links up, paused servers continued, killed ones restarted."""
        self.ticker = None
        if self.cut:
            self.c.proxy.set(self.cut, state="up")
            self.cut = set()
        for s in sorted(self.paused):
            self.c.resume(s)
        self.paused = set()
        order = self.restart_order or sorted(self.killed)
        for s in order:
            if s in self.killed:
                self.c.start(s)
        self.killed = set()
        self.restart_order = None
        if self.outside is not None:
            start = self.h.now()
            if not self.c.alive(self.outside):
                self.c.start(self.outside, join=True)
            self.record("fault", "retry adding server %d: %s" % (self.outside, self.add_back()),
                        start, fault="member-retry")

    def run(self, schedule, t_end, stop=None):
        """Apply the schedule against the history clock; returns at t_end
        (run-relative seconds) with everything healed."""
        try:
            for at, kinds, hold, params in schedule:
                if not self.sleep_until(at, stop) or at >= t_end:
                    break
                for kind in kinds:
                    start = self.h.now()
                    what = self.apply(kind, params)
                    self.record("fault", what, start, fault=kind)
                self.sleep_until(min(self.h.now() + hold, t_end), stop)
                start = self.h.now()
                self.heal()
                self.record("heal", "heal after " + "+".join(kinds), start, fault="+".join(kinds))
            self.sleep_until(t_end, stop)
        finally:
            self.heal()

    def sleep_until(self, t, stop=None):
        while self.h.now() < t:
            if stop is not None and stop():
                return False
            if self.ticker is not None:
                next(self.ticker)
            time.sleep(min(0.1, max(0.0, t - self.h.now())))
        return True
