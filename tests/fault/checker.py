"""The checker: judges a recorded history (see workload.py for its records)
against parley's invariants (DESIGN.md section 6). It is a pure function of
the records, so it can be run again on a kept history file:

    /usr/bin/python3 tests/fault/checker.py HISTORY.jsonl

Checks, each a violation kind:
  lost              an acknowledged send is missing from its recipient's final
                    mailbox (final read + history) and was never deleted
  duplicate         one send's body shows up under two message ids (executed
                    twice), or two reads returned the same message
  phantom           a message whose body no client ever sent
  failed-visible    a message from a send whose outcome was failed
  corrupt           a message whose sender, recipient or id differs from the
                    send (and its acknowledgement) that made it
  id-reused         one message id carrying two bodies
  order             for one sender>recipient pair, a send acknowledged before
                    another was invoked got the larger id
  id-order          the same across all sends (ids are cluster-wide increasing);
                    checked only when no pair broke the order
  read-order        a read not oldest first / a history page not newest first
  stale-read        a read that began after a send was acknowledged misses it,
                    and no other read of that mailbox (finished or possibly
                    running by then) returned or could have consumed it; or
                    a history page misses a message a finished read returned
  resurrected       a message whose delete was acknowledged is back (in the
                    final mailbox or in a later history page)
  double-register   two acknowledged registrations of one username
  account           a login accepted a password that no successful or
                    possibly-successful registration of that name used, or
                    two passwords both log in to one name
  user-list         a listing names a user twice, names one never registered,
                    or misses one registered before the listing began
  digest            after healing, the servers' state digests differ, or a
                    server gave no status
  unavailable       the healed cluster failed the final reads
  crash             a server exited on its own
  harness           the harness itself failed (a client thread died)
"""
import collections
import fnmatch
import json
import sys

READ_KINDS = ("read", "final-read")
HISTORY_KINDS = ("history", "final-history")
LOGIN_KINDS = ("login", "final-login")
LIST_KINDS = ("list", "final-list")


def messages_of(doc):
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("messages"), list):
        return doc["messages"]
    return []


def msg_id(m):
    v = m.get("id") if isinstance(m, dict) else None
    return v if isinstance(v, int) else None


def send_id(rec):
    r = rec.get("result")
    if rec["outcome"] == "ok" and isinstance(r, dict) and isinstance(r.get("id"), int):
        return r["id"]
    return None


class Checker:
    def __init__(self, records):
        self.records = records
        self.ops = [r for r in records if r.get("client") != "nemesis"]
        self.violations = []

    def flag(self, kind, msg, ops):
        self.violations.append({"kind": kind, "msg": msg,
                                "ops": sorted(set(o["i"] for o in ops if o is not None))})

    def of(self, kinds, outcome=None):
        return [r for r in self.ops if r["kind"] in kinds
                and (outcome is None or r["outcome"] == outcome)]

    def run(self):
        self.index_sends()
        self.observations()
        self.final_mailboxes()
        self.check_order()
        self.check_freshness()
        self.check_history_freshness()
        self.check_accounts()
        self.check_lists()
        self.check_end_state()
        return self.violations

    # ---- sends and what was seen of them ----
    def index_sends(self):
        self.sends = {}
        for s in self.of(("send",)):
            body = s["args"]["body"]
            if body in self.sends:
                self.flag("harness", "body %r sent twice by the workload" % body,
                          [self.sends[body], s])
            self.sends[body] = s

    def observations(self):
        """Every message any successful read or history page returned."""
        self.seen_by_body = collections.defaultdict(list)   # body -> [(rec, msg)]
        self.reads_of_body = collections.defaultdict(list)  # body -> [read rec]
        ids_of_body = collections.defaultdict(set)
        bodies_of_id = collections.defaultdict(set)
        for rec in self.of(READ_KINDS + HISTORY_KINDS, "ok"):
            msgs = messages_of(rec["result"])
            ids = [msg_id(m) for m in msgs]
            is_read = rec["kind"] in READ_KINDS
            want = sorted(i for i in ids if i is not None)
            if not is_read:
                want.reverse()
            if [i for i in ids if i is not None] != want or len(set(want)) != len(want):
                self.flag("read-order", "%s returned ids %s, not %s" %
                          (rec["kind"], ids, "oldest first" if is_read else "newest first"), [rec])
            for m in msgs:
                if not isinstance(m, dict):
                    continue
                body = m.get("body")
                to = m.get("to", rec["user"])
                if not is_read and to != rec["user"]:
                    continue  # a history that also lists sent messages
                s = self.sends.get(body)
                if s is None:
                    self.flag("phantom", "%s of %s returned message %s %r from %s that no "
                              "client sent" % (rec["kind"], rec["user"], m.get("id"), body,
                                               m.get("from")), [rec])
                    continue
                if s["outcome"] == "failed":
                    self.flag("failed-visible", "message %s %r is visible but its send failed "
                              "(%s)" % (m.get("id"), body, s["err"]), [s, rec])
                if m.get("from") != s["user"] or to != s["args"]["to"]:
                    self.flag("corrupt", "message %s %r reads %s>%s but was sent %s>%s" %
                              (m.get("id"), body, m.get("from"), to, s["user"], s["args"]["to"]),
                              [s, rec])
                sid = send_id(s)
                if sid is not None and msg_id(m) is not None and msg_id(m) != sid:
                    self.flag("corrupt", "message %r was acknowledged as id %d but read as id %d"
                              % (body, sid, msg_id(m)), [s, rec])
                self.seen_by_body[body].append((rec, m))
                if msg_id(m) is not None:
                    ids_of_body[body].add(msg_id(m))
                    bodies_of_id[msg_id(m)].add(body)
                if is_read:
                    self.reads_of_body[body].append(rec)
        for body, ids in sorted(ids_of_body.items()):
            if len(ids) > 1:
                self.flag("duplicate", "send %r was delivered as %d messages, ids %s" %
                          (body, len(ids), sorted(ids)),
                          [self.sends.get(body)] + [r for r, _ in self.seen_by_body[body]])
        for i, bodies in sorted(bodies_of_id.items()):
            if len(bodies) > 1:
                self.flag("id-reused", "message id %d carries %d bodies %s" %
                          (i, len(bodies), sorted(bodies)),
                          [r for b in bodies for r, _ in self.seen_by_body[b]])
        reads_of_id = collections.defaultdict(list)
        for body, recs in self.reads_of_body.items():
            for rec in recs:
                for m in messages_of(rec["result"]):
                    if isinstance(m, dict) and m.get("body") == body and msg_id(m) is not None:
                        reads_of_id[(rec["user"], msg_id(m))].append(rec)
        for (user, i), recs in sorted(reads_of_id.items()):
            if len(recs) > 1:
                body = next(m.get("body") for m in messages_of(recs[0]["result"])
                            if isinstance(m, dict) and msg_id(m) == i)
                self.flag("duplicate", "message %d %r was returned by %d reads of %s (a read "
                          "marks what it returns as read)" % (i, body, len(recs), user),
                          [self.sends.get(body)] + recs)

    def final_mailboxes(self):
        self.mailbox = {}   # user -> {body: msg}, for users whose final read succeeded
        for rec in self.of(("final-read",), "ok"):
            self.mailbox.setdefault(rec["user"], {})
        for rec in self.of(("final-read", "final-history"), "ok"):
            if rec["user"] not in self.mailbox:
                continue
            for m in messages_of(rec["result"]):
                if isinstance(m, dict) and m.get("to", rec["user"]) == rec["user"]:
                    self.mailbox[rec["user"]][m.get("body")] = m
        self.lost = set()
        deleted = collections.defaultdict(dict)     # user -> id -> delete rec (ok/unknown)
        for d in self.of(("delete",)):
            if d["outcome"] in ("ok", "unknown"):
                for i in d["args"]["ids"]:
                    deleted[d["user"]][i] = d
        for s in self.of(("send",), "ok"):
            to = s["args"]["to"]
            if to not in self.mailbox:
                continue
            body = s["args"]["body"]
            if body in self.mailbox[to]:
                continue
            sid = send_id(s)
            if sid is not None and sid in deleted[to]:
                continue
            seen = [r for r, _ in self.seen_by_body.get(body, [])]
            self.lost.add(body)
            self.flag("lost", "acknowledged send id %s %s>%s %r is missing from the final "
                      "mailbox%s" % (sid, s["user"], to, body,
                                     " (it was returned by %d earlier reads)" % len(seen)
                                     if seen else " and no read ever returned it"),
                      [s] + seen)
        for user, box in self.mailbox.items():
            for body, m in box.items():
                d = deleted[user].get(msg_id(m))
                if d is not None and d["outcome"] == "ok":
                    self.flag("resurrected", "message %s %r of %s is back after its delete was "
                              "acknowledged" % (msg_id(m), body, user),
                              [d, self.sends.get(body)])

    def check_history_freshness(self):
        """History is a query (served by the primary under its lease, not
        replicated): a page that starts after a read returned a message must
        list it, unless it was deleted, and must not list a message whose
        delete was acknowledged before the page began."""
        reads = collections.defaultdict(list)
        for r in self.of(READ_KINDS, "ok"):
            reads[r["user"]].append(r)
        deletes = collections.defaultdict(list)
        for d in self.of(("delete",)):
            deletes[d["user"]].append(d)
        for h in self.of(HISTORY_KINDS, "ok"):
            if h["args"].get("offset"):
                continue
            user = h["user"]
            page = [m for m in messages_of(h["result"]) if isinstance(m, dict)]
            ids = set(msg_id(m) for m in page)
            more = h["result"].get("more") if isinstance(h["result"], dict) else None
            full = bool(more) or len(page) >= h["args"].get("limit", 0)
            low = min([i for i in ids if i is not None] or [0])
            for d in deletes[user]:
                if d["outcome"] == "ok" and d["end"] < h["start"]:
                    for i in d["args"]["ids"]:
                        if i in ids:
                            self.flag("resurrected", "history of %s at %.3fs lists message %d "
                                      "whose delete was acknowledged at %.3fs" %
                                      (user, h["start"], i, d["end"]), [d, h])
            for r in reads[user]:
                if r["end"] >= h["start"]:
                    continue
                for m in messages_of(r["result"]):
                    i = msg_id(m) if isinstance(m, dict) else None
                    if i is None or i in ids or (full and i < low):
                        continue
                    if m.get("body") not in self.sends or m.get("to", user) != user:
                        continue  # phantoms are reported as such
                    if any(i in d["args"]["ids"] and d["outcome"] != "failed"
                           and d["start"] < h["end"] for d in deletes[user]):
                        continue
                    self.flag("stale-read", "history of %s at %.3fs misses message %d %r that a "
                              "read returned at %.3fs" % (user, h["start"], i, m.get("body"),
                                                          r["end"]), [r, h])

    def check_order(self):
        pairs = collections.defaultdict(list)
        everyone = []
        for s in self.of(("send",), "ok"):
            if send_id(s) is not None:
                pairs[(s["user"], s["args"]["to"])].append(s)
                everyone.append(s)
        flagged = len(self.violations)
        self.check_order_of(pairs, "order")
        if len(self.violations) == flagged:
            # Ids are cluster-wide increasing (DESIGN.md section 1), so the same
            # holds across pairs; only worth a report when no pair broke it.
            self.check_order_of({("*", "*"): everyone}, "id-order")

    def check_order_of(self, pairs, kind):
        for (frm, to), sends in sorted(pairs.items()):
            by_end = sorted(sends, key=lambda s: s["end"])
            k = 0
            best = None  # the send with the largest id among those acknowledged so far
            for b in sorted(sends, key=lambda s: s["start"]):
                while k < len(by_end) and by_end[k]["end"] < b["start"]:
                    a = by_end[k]
                    if best is None or send_id(a) > send_id(best):
                        best = a
                    k += 1
                if best is not None and send_id(best) >= send_id(b):
                    self.flag(kind, "%s>%s: send %r acknowledged at %.3fs got id %d, but "
                              "send %r invoked later at %.3fs got id %d" %
                              (frm, to, best["args"]["body"], best["end"], send_id(best),
                               b["args"]["body"], b["start"], send_id(b)), [best, b])

    def check_freshness(self):
        acked = collections.defaultdict(list)
        for s in self.of(("send",), "ok"):
            if send_id(s) is not None:
                acked[s["args"]["to"]].append(s)
        reads = collections.defaultdict(list)
        for r in self.of(READ_KINDS):
            reads[r["user"]].append(r)
        for user, rs in reads.items():
            unknown = [r for r in rs if r["outcome"] == "unknown"]
            for rd in rs:
                if rd["outcome"] != "ok":
                    continue
                msgs = messages_of(rd["result"])
                got = set(m.get("body") for m in msgs if isinstance(m, dict))
                limit = rd["args"].get("n")
                full = bool(limit) and len(msgs) >= limit
                top = max([msg_id(m) or 0 for m in msgs
                           if isinstance(m, dict) and m.get("body") in self.sends] or [0])
                for s in acked[user]:
                    if s["end"] >= rd["start"] or s["args"]["body"] in got:
                        continue
                    if s["args"]["body"] in self.lost:
                        continue  # reported as lost already
                    if full and send_id(s) > top:
                        continue
                    if any(o is not rd and o["start"] < rd["end"]
                           for o in self.reads_of_body.get(s["args"]["body"], [])):
                        continue
                    if any(o["start"] < rd["end"] for o in unknown):
                        continue
                    self.flag("stale-read", "read of %s at %.3fs misses id %d %r acknowledged at "
                              "%.3fs, and no earlier read returned it" %
                              (user, rd["start"], send_id(s), s["args"]["body"], s["end"]),
                              [s, rd])

    # ---- accounts ----
    def check_accounts(self):
        regs = collections.defaultdict(list)
        for r in self.of(("register",)):
            regs[r["user"]].append(r)
        self.regs = regs
        for name, rs in sorted(regs.items()):
            ok = [r for r in rs if r["outcome"] == "ok"]
            if len(ok) > 1:
                self.flag("double-register", "username %s was registered %d times" %
                          (name, len(ok)), ok)
        logins = collections.defaultdict(list)
        for r in self.of(LOGIN_KINDS, "ok"):
            logins[r["user"]].append(r)
        for name, ls in sorted(logins.items()):
            rs = regs.get(name, [])
            maybe = {r["args"]["password"]: r for r in rs if r["outcome"] in ("ok", "unknown")}
            failed = {r["args"]["password"]: r for r in rs if r["outcome"] == "failed"}
            ok_pw = [r["args"]["password"] for r in rs if r["outcome"] == "ok"]
            for lg in ls:
                pw = lg["args"]["password"]
                if pw in maybe and (not ok_pw or pw in ok_pw):
                    continue
                if ok_pw and pw not in ok_pw:
                    why = "but the acknowledged registration used another password"
                elif pw in failed:
                    why = "whose registration failed"
                else:
                    why = "that no registration used"
                self.flag("account", "login to %s succeeded with a password %s" % (name, why),
                          [lg] + [r for r in rs if r["args"]["password"] == pw or r["outcome"] == "ok"])
            pws = sorted(set(lg["args"]["password"] for lg in ls))
            if len(pws) > 1:
                self.flag("account", "%s accepted %d different passwords: two live accounts"
                          % (name, len(pws)), ls[:4])

    def check_lists(self):
        for rec in self.of(LIST_KINDS, "ok"):
            res = rec["result"]
            names = res.get("users", [])
            dups = sorted(n for n, c in collections.Counter(names).items() if c > 1)
            if dups:
                self.flag("user-list", "listing %r names %s more than once" %
                          (rec["args"]["pattern"], dups), [rec])
            for n in sorted(set(names)):
                rs = self.regs.get(n, [])
                if not any(r["outcome"] in ("ok", "unknown") for r in rs):
                    self.flag("user-list", "listing %r names %s, which %s" %
                              (rec["args"]["pattern"], n,
                               "only failed registrations tried" if rs else "nobody registered"),
                              [rec] + rs[:3])
            if res.get("more"):
                continue
            listed = set(names)
            for name, rs in sorted(self.regs.items()):
                ok = [r for r in rs if r["outcome"] == "ok" and r["end"] < rec["start"]]
                if ok and name not in listed and fnmatch.fnmatchcase(name, rec["args"]["pattern"]):
                    self.flag("user-list", "listing %r at %.3fs misses %s, registered at %.3fs" %
                              (rec["args"]["pattern"], rec["start"], name, ok[0]["end"]),
                              [rec, ok[0]])

    # ---- the end state ----
    def check_end_state(self):
        for rec in self.ops:
            k = rec["kind"]
            if k == "final-problem":
                self.flag("unavailable", rec["err"], [rec])
            elif k == "server-crash":
                self.flag("crash", rec["err"], [rec])
            elif k == "harness-error":
                self.flag("harness", rec["err"], [rec])
            elif k == "digests":
                rows = rec["result"]["rows"]
                missing = [i for i, row in enumerate(rows) if not row]
                if missing:
                    self.flag("digest", "servers %s gave no status after healing" % missing, [rec])
                digests = collections.defaultdict(list)
                for i, row in enumerate(rows):
                    if row:
                        digests[row.get("digest")].append(i)
                if len(digests) > 1:
                    desc = "; ".join("server %d view %s op %s commit %s applied %s digest %s" % (
                        i, row.get("view"), row.get("op"), row.get("commit"), row.get("applied"),
                        row.get("digest")) for i, row in enumerate(rows) if row)
                    self.flag("digest", "state digests differ after healing: " + desc, [rec])


def check(records):
    return Checker(records).run()


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def describe(rec):
    """One line per operation, for reports."""
    if rec is None:
        return "?"
    a = rec.get("args") or {}
    if rec["kind"] == "send":
        what = "send %s>%s %r" % (rec["user"], a.get("to"), a.get("body"))
    elif rec["kind"] in READ_KINDS + HISTORY_KINDS:
        msgs = messages_of(rec.get("result"))
        what = "%s %s%s -> %d msgs" % (rec["kind"], rec["user"],
                                       " -n %s" % a["n"] if a.get("n") else "", len(msgs))
    elif rec["kind"] in ("register",) + LOGIN_KINDS:
        what = "%s %s pw=%s" % (rec["kind"], rec["user"], a.get("password"))
    else:
        what = "%s %s %s" % (rec["kind"], rec.get("user", ""), json.dumps(a, sort_keys=True))
    res = rec.get("result")
    extra = ""
    if rec["kind"] == "send" and isinstance(res, dict):
        extra = " id=%s" % res.get("id")
    elif rec["outcome"] != "ok" and rec.get("err"):
        extra = " err=%r" % rec["err"][-80:]
    return "#%d [%s %.3f-%.3fs] %s => %s%s" % (rec["i"], rec.get("client"), rec.get("start", 0),
                                              rec.get("end", 0), what, rec["outcome"], extra)


def main():
    records = load(sys.argv[1])
    vs = check(records)
    for v in vs:
        print("%s: %s" % (v["kind"], v["msg"]))
        for i in v["ops"][:6]:
            print("    " + describe(records[i]))
    print("%d violations" % len(vs))
    return 1 if vs else 0


if __name__ == "__main__":
    sys.exit(main())
