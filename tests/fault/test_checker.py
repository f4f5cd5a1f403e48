"""Unit test of the fault checker on hand-made histories: each broken history
must be judged broken for exactly its one reason, and clean ones (including
the legal outcomes of unknown and failed operations) must pass.

Run by meson (suite fault) as: test_checker.py
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checker import check  # noqa: E402


class H:
    """A history builder; times are given explicitly so the order is clear."""

    def __init__(self):
        self.recs = []

    def op(self, kind, user, start, end, outcome="ok", result=None, client=0, **args):
        self.recs.append({"i": len(self.recs), "client": client, "kind": kind, "user": user,
                          "args": args, "start": start, "end": end, "outcome": outcome,
                          "result": result, "exit": {"ok": 0, "failed": 1}.get(outcome),
                          "err": "" if outcome == "ok" else "boom"})
        return self

    def accounts(self, *names):
        for n in names:
            self.op("register", n, 0.0, 0.1, password="pw-" + n, client="setup")
            self.op("login", n, 0.1, 0.2, password="pw-" + n, result={"unread": 0})
        return self

    def send(self, frm, to, body, start, end, id=None, outcome="ok"):
        return self.op("send", frm, start, end, outcome,
                       result={"id": id} if outcome == "ok" else None, to=to, body=body)

    def read(self, user, start, end, msgs, kind="read", n=None, outcome="ok"):
        return self.op(kind, user, start, end, outcome,
                       result={"messages": [m(*x) for x in msgs]} if outcome == "ok" else None, n=n)

    def final(self, user, unread, history, t=100.0):
        self.op("final-login", user, t, t + 0.1, password="pw-" + user, result={"unread": len(unread)})
        self.read(user, t + 0.1, t + 0.2, unread, kind="final-read")
        return self.op("final-history", user, t + 0.2, t + 0.3, offset=0, limit=200,
                       result={"messages": [m(*x) for x in history], "more": False})

    def digests(self, *ds):
        return self.op("digests", "-", 200.0, 200.5, client="final",
                       result={"rows": [{"id": i, "digest": d, "view": 1, "op": 9, "commit": 9,
                                         "applied": 9} if d else None for i, d in enumerate(ds)]})


def m(id, frm, to, body):
    return {"id": id, "from": frm, "to": to, "body": body}


def kinds(h):
    return sorted(set(v["kind"] for v in check(h.recs)))


def clean():
    """alice sends bob two messages; bob reads one, then the other at the end."""
    return (H().accounts("alice", "bob")
            .send("alice", "bob", "t1", 1.0, 1.5, id=1)
            .send("alice", "bob", "t2", 2.0, 2.5, id=2)
            .read("bob", 3.0, 3.2, [(1, "alice", "bob", "t1")], n=1)
            .final("bob", [(2, "alice", "bob", "t2")], [(2, "alice", "bob", "t2"), (1, "alice", "bob", "t1")])
            .final("alice", [], [])
            .digests("abc", "abc", "abc"))


class CheckerTest(unittest.TestCase):
    def test_clean_history_passes(self):
        self.assertEqual(check(clean().recs), [])

    def test_lost_ack(self):
        h = (H().accounts("alice", "bob")
             .send("alice", "bob", "t1", 1.0, 1.5, id=1)
             .send("alice", "bob", "t2", 2.0, 2.5, id=2)
             .final("bob", [(1, "alice", "bob", "t1")], [(1, "alice", "bob", "t1")])
             .digests("abc", "abc", "abc"))
        vs = check(h.recs)
        self.assertEqual([v["kind"] for v in vs], ["lost"], vs)
        self.assertIn("t2", vs[0]["msg"])
        self.assertIn(4 + 1, vs[0]["ops"], "the lost send is named")

    def test_duplicate_delivery(self):
        h = (H().accounts("alice", "bob")
             .send("alice", "bob", "t1", 1.0, 1.5, id=1)
             .final("bob", [(1, "alice", "bob", "t1"), (2, "alice", "bob", "t1")],
                    [(2, "alice", "bob", "t1"), (1, "alice", "bob", "t1")])
             .digests("abc", "abc", "abc"))
        # the second copy also carries an id the acknowledgement did not give
        self.assertEqual(kinds(h), ["corrupt", "duplicate"])

    def test_message_returned_by_two_reads(self):
        h = (H().accounts("alice", "bob")
             .send("alice", "bob", "t1", 1.0, 1.5, id=1)
             .read("bob", 2.0, 2.1, [(1, "alice", "bob", "t1")])
             .read("bob", 3.0, 3.1, [(1, "alice", "bob", "t1")])
             .final("bob", [], [(1, "alice", "bob", "t1")])
             .digests("abc", "abc", "abc"))
        self.assertEqual(kinds(h), ["duplicate"])

    def test_phantom_message(self):
        h = (H().accounts("alice", "bob")
             .read("bob", 2.0, 2.1, [(7, "alice", "bob", "never-sent")])
             .final("bob", [], [])
             .digests("abc", "abc", "abc"))
        self.assertEqual(kinds(h), ["phantom"])

    def test_reorder(self):
        """t1 was acknowledged before t2 was invoked, yet got the larger id."""
        h = (H().accounts("alice", "bob")
             .send("alice", "bob", "t1", 1.0, 1.5, id=5)
             .send("alice", "bob", "t2", 2.0, 2.5, id=4)
             .final("bob", [(4, "alice", "bob", "t2"), (5, "alice", "bob", "t1")],
                    [(5, "alice", "bob", "t1"), (4, "alice", "bob", "t2")])
             .digests("abc", "abc", "abc"))
        vs = check(h.recs)
        self.assertEqual([v["kind"] for v in vs], ["order"], vs)

    def test_ids_increase_across_senders(self):
        h = (H().accounts("alice", "bob", "carol")
             .send("alice", "bob", "t1", 1.0, 1.5, id=5)
             .send("carol", "bob", "t2", 2.0, 2.5, id=4)
             .final("bob", [(4, "carol", "bob", "t2"), (5, "alice", "bob", "t1")],
                    [(5, "alice", "bob", "t1"), (4, "carol", "bob", "t2")])
             .digests("abc", "abc", "abc"))
        self.assertEqual(kinds(h), ["id-order"])

    def test_concurrent_sends_may_take_either_order(self):
        h = (H().accounts("alice", "bob")
             .send("alice", "bob", "t1", 1.0, 2.5, id=5)
             .send("alice", "bob", "t2", 2.0, 2.6, id=4)
             .final("bob", [(4, "alice", "bob", "t2"), (5, "alice", "bob", "t1")],
                    [(5, "alice", "bob", "t1"), (4, "alice", "bob", "t2")])
             .digests("abc", "abc", "abc"))
        self.assertEqual(check(h.recs), [])

    def test_failed_send_must_not_appear(self):
        h = (H().accounts("alice", "bob")
             .send("alice", "bob", "t1", 1.0, 1.5, outcome="failed")
             .final("bob", [(1, "alice", "bob", "t1")], [(1, "alice", "bob", "t1")])
             .digests("abc", "abc", "abc"))
        self.assertEqual(kinds(h), ["failed-visible"])

    def test_unknown_send_may_or_may_not_appear(self):
        h = (H().accounts("alice", "bob")
             .send("alice", "bob", "t1", 1.0, 9.0, outcome="unknown")
             .send("alice", "bob", "t2", 1.0, 9.0, outcome="unknown")
             .final("bob", [(1, "alice", "bob", "t1")], [(1, "alice", "bob", "t1")])
             .digests("abc", "abc", "abc"))
        self.assertEqual(check(h.recs), [])

    def test_stale_read(self):
        h = (H().accounts("alice", "bob")
             .send("alice", "bob", "t1", 1.0, 1.5, id=1)
             .read("bob", 2.0, 2.1, [])
             .final("bob", [(1, "alice", "bob", "t1")], [(1, "alice", "bob", "t1")])
             .digests("abc", "abc", "abc"))
        self.assertEqual(kinds(h), ["stale-read"])

    def test_read_that_may_have_been_consumed_is_not_stale(self):
        """An unknown read that began before may have taken the message, and a
        read limited to n that came back full need not reach it."""
        h = (H().accounts("alice", "bob")
             .send("alice", "bob", "t1", 1.0, 1.5, id=1)
             .send("alice", "bob", "t2", 1.0, 1.5, id=2)
             .read("bob", 1.8, 9.0, [], outcome="unknown")
             .read("bob", 2.0, 2.1, [])
             .final("bob", [], [(2, "alice", "bob", "t2"), (1, "alice", "bob", "t1")])
             .digests("abc", "abc", "abc"))
        self.assertEqual(check(h.recs), [])
        h = (H().accounts("alice", "bob")
             .send("alice", "bob", "t1", 1.0, 1.5, id=1)
             .send("alice", "bob", "t2", 1.0, 1.5, id=2)
             .read("bob", 2.0, 2.1, [(1, "alice", "bob", "t1")], n=1)
             .final("bob", [(2, "alice", "bob", "t2")], [(2, "alice", "bob", "t2"), (1, "alice", "bob", "t1")])
             .digests("abc", "abc", "abc"))
        self.assertEqual(check(h.recs), [])

    def test_history_must_show_what_was_read(self):
        base = (H().accounts("alice", "bob")
                .send("alice", "bob", "t1", 1.0, 1.5, id=1)
                .read("bob", 2.0, 2.1, [(1, "alice", "bob", "t1")]))
        h = (base.op("history", "bob", 3.0, 3.1, offset=0, limit=5,
                     result={"messages": [], "more": False})
             .final("bob", [], [(1, "alice", "bob", "t1")]).digests("abc", "abc", "abc"))
        self.assertEqual(kinds(h), ["stale-read"])
        base.recs = base.recs[:-5]
        h = (base.op("history", "bob", 3.0, 3.1, offset=0, limit=5,
                     result={"messages": [m(1, "alice", "bob", "t1")], "more": False})
             .final("bob", [], [(1, "alice", "bob", "t1")]).digests("abc", "abc", "abc"))
        self.assertEqual(check(h.recs), [])

    def test_deleted_message_is_not_lost_but_must_stay_deleted(self):
        base = (H().accounts("alice", "bob")
                .send("alice", "bob", "t1", 1.0, 1.5, id=1)
                .read("bob", 2.0, 2.1, [(1, "alice", "bob", "t1")])
                .op("delete", "bob", 3.0, 3.1, ids=[1]))
        h = base.final("bob", [], []).digests("abc", "abc", "abc")
        self.assertEqual(check(h.recs), [])
        base.recs = base.recs[:-4]  # drop the final reads and digests again
        h = base.final("bob", [], [(1, "alice", "bob", "t1")]).digests("abc", "abc", "abc")
        self.assertEqual(kinds(h), ["resurrected"])

    def test_username_registered_twice(self):
        h = (H().accounts("alice")
             .op("register", "x1", 1.0, 1.2, password="p1")
             .op("register", "x1", 1.1, 1.3, password="p2")
             .digests("abc", "abc", "abc"))
        self.assertEqual(kinds(h), ["double-register"])

    def test_login_with_the_losing_password(self):
        h = (H().accounts("alice")
             .op("register", "x1", 1.0, 1.2, password="p1")
             .op("register", "x1", 1.1, 1.3, password="p2", outcome="failed")
             .op("login", "x1", 2.0, 2.1, password="p2", result={"unread": 0})
             .digests("abc", "abc", "abc"))
        self.assertEqual(kinds(h), ["account"])

    def test_user_list(self):
        h = (H().accounts("alice", "bob")
             .op("list", "alice", 1.0, 1.1, pattern="*", limit=100,
                 result={"users": ["alice", "bob", "bob", "mallory"], "more": False})
             .op("list", "alice", 1.0, 1.1, pattern="b*", limit=100,
                 result={"users": [], "more": False})
             .digests("abc", "abc", "abc"))
        vs = check(h.recs)
        self.assertEqual([v["kind"] for v in vs], ["user-list"] * 3, vs)

    def test_digests_must_agree(self):
        h = clean()
        h.recs.pop()
        h.digests("abc", "abd", "abc")
        self.assertEqual(kinds(h), ["digest"])
        h.recs.pop()
        h.digests("abc", None, "abc")
        self.assertEqual(kinds(h), ["digest"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
