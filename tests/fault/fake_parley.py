"""A stand-in for parleyd and the parley CLI, used only to test the fault
harness itself (fault.py --fake, and the meson test fault-selftest).

`fake_parley.py server CONFIG ID DATA` listens on the server's client port
and peer port, keeps a heartbeat connection to every other server's
peer_port, dialled where PARLEY_PEER_DIAL says as parleyd does (so through
the fault proxy), and executes
client requests on one SQLite file shared by all servers: a "perfectly
replicated" cluster. Killed or paused servers make clients fail over or time
out as with the real thing, but no acknowledged data is ever lost.
`fake_parley.py cli -c CONFIG [--server H:P] --json COMMAND ...` speaks the
CLI's command line, JSON output and exit codes.

FAKE_PARLEY_BUG=lose|dup|phantom|reorder|failed makes the server misbehave now
and then, so a self-test can prove the checker notices.
"""
import fnmatch
import hashlib
import json
import os
import random
import socket
import sqlite3
import sys
import threading
import time

BUG = os.environ.get("FAKE_PARLEY_BUG", "")


def db_path(config):
    return os.path.join(os.path.dirname(os.path.abspath(config)), "fake.db")


def open_db(config):
    db = sqlite3.connect(db_path(config), timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript("""
        CREATE TABLE IF NOT EXISTS users(name TEXT PRIMARY KEY, pw TEXT);
        CREATE TABLE IF NOT EXISTS sessions(token TEXT PRIMARY KEY, name TEXT);
        CREATE TABLE IF NOT EXISTS msgs(id INTEGER PRIMARY KEY, frm TEXT, rcpt TEXT, body TEXT,
                                        state TEXT, gone INTEGER DEFAULT 0);
        CREATE TABLE IF NOT EXISTS requests(rid TEXT PRIMARY KEY, reply TEXT);
    """)
    return db


def bug(p):
    return random.random() < p


def execute(db, req, server_id, n):
    cmd, args = req["cmd"], req["args"]
    me = None
    if req.get("token"):
        row = db.execute("SELECT name FROM sessions WHERE token=?", (req["token"],)).fetchone()
        me = row[0] if row else None

    def need_login():
        if me is None:
            raise Refused("not logged in: run parley login")

    def msg(row):
        return {"id": row[0], "from": row[1], "to": row[2], "body": row[3]}
    if cmd == "register":
        if db.execute("SELECT 1 FROM users WHERE name=?", (args[0],)).fetchone():
            raise Refused("username %s is taken" % args[0])
        db.execute("INSERT INTO users VALUES(?,?)", (args[0], req["stdin"]))
        return {"ok": True}
    if cmd == "login":
        row = db.execute("SELECT pw FROM users WHERE name=?", (args[0],)).fetchone()
        if not row or row[0] != req["stdin"]:
            raise Refused("wrong username or password")
        token = os.urandom(8).hex()
        db.execute("INSERT INTO sessions VALUES(?,?)", (token, args[0]))
        unread = db.execute("SELECT count(*) FROM msgs WHERE rcpt=? AND state='unread' AND gone=0",
                            (args[0],)).fetchone()[0]
        return {"unread": unread, "token": token}
    if cmd == "send":
        need_login()
        to, body = args[0], " ".join(args[1:])
        if not db.execute("SELECT 1 FROM users WHERE name=?", (to,)).fetchone():
            raise Refused("no such user")
        if BUG == "failed" and bug(0.05):
            db.execute("INSERT INTO msgs(frm,rcpt,body,state) VALUES(?,?,?,'unread')", (me, to, body))
            raise Refused("pretend failure")
        if BUG == "reorder" and bug(0.1):
            row = db.execute("SELECT coalesce(min(id), 1000000) FROM msgs WHERE id > 500000").fetchone()
            db.execute("INSERT INTO msgs(id,frm,rcpt,body,state) VALUES(?,?,?,?,'unread')",
                       (row[0] - 1, me, to, body))
            return {"id": row[0] - 1}
        cur = db.execute("INSERT INTO msgs(frm,rcpt,body,state) VALUES(?,?,?,'unread')", (me, to, body))
        mid = cur.lastrowid
        if BUG == "lose" and mid % 5 == 0:
            db.execute("DELETE FROM msgs WHERE id=?", (mid,))
        if BUG == "dup" and bug(0.05):
            db.execute("INSERT INTO msgs(frm,rcpt,body,state) VALUES(?,?,?,'unread')", (me, to, body))
        return {"id": mid}
    if cmd == "read":
        need_login()
        lim = int(args[args.index("-n") + 1]) if "-n" in args else -1
        rows = db.execute("SELECT id,frm,rcpt,body FROM msgs WHERE rcpt=? AND state='unread' AND "
                          "gone=0 ORDER BY id LIMIT ?", (me, lim)).fetchall()
        db.executemany("UPDATE msgs SET state='read' WHERE id=?", [(r[0],) for r in rows])
        out = [msg(r) for r in rows]
        if BUG == "phantom" and bug(0.05):
            out.append({"id": 99999999, "from": "u0a", "to": me, "body": "never sent"})
        return {"messages": out}
    if cmd == "history":
        need_login()
        off = int(args[args.index("--offset") + 1]) if "--offset" in args else 0
        lim = int(args[args.index("--limit") + 1]) if "--limit" in args else 20
        rows = db.execute("SELECT id,frm,rcpt,body FROM msgs WHERE rcpt=? AND state='read' AND gone=0 "
                          "ORDER BY id DESC LIMIT ? OFFSET ?", (me, lim + 1, off)).fetchall()
        return {"messages": [msg(r) for r in rows[:lim]], "more": len(rows) > lim}
    if cmd == "delete":
        need_login()
        ids = [int(x) for x in args]
        for i in ids:
            if not db.execute("SELECT 1 FROM msgs WHERE id=? AND rcpt=? AND gone=0", (i, me)).fetchone():
                raise Refused("no message %d" % i)
        db.executemany("UPDATE msgs SET gone=1 WHERE id=?", [(i,) for i in ids])
        return {"deleted": len(ids)}
    if cmd == "users":
        pat = args[0] if args and not args[0].startswith("--") else "*"
        lim = int(args[args.index("--limit") + 1]) if "--limit" in args else 100
        names = [r[0] for r in db.execute("SELECT name FROM users ORDER BY name")
                 if fnmatch.fnmatchcase(r[0], pat)]
        return {"users": names[:lim], "more": len(names) > lim}
    if cmd == "status":
        h = hashlib.sha256()
        for t in ("users", "msgs"):
            for r in db.execute("SELECT * FROM %s ORDER BY 1" % t):
                h.update(repr(r).encode())
        ops = db.execute("SELECT count(*) FROM msgs").fetchone()[0]
        return {"servers": [{"id": server_id, "address": "fake", "reachable": True,
                             "role": "primary" if server_id == 0 else "backup", "view": 0,
                             "op": ops, "commit": ops, "applied": ops, "store": "fake",
                             "transport": "fake", "digest": h.hexdigest()[:16]}]}
    raise Refused("unknown command " + cmd)


class Refused(Exception):
    pass


def serve_client(conn, config, server_id, n, lock):
    try:
        f = conn.makefile("rwb")
        line = f.readline()
        if not line:
            return
        req = json.loads(line)
        db = open_db(config)
        try:
            with lock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    # The client table: a retried request gets the first reply.
                    row = db.execute("SELECT reply FROM requests WHERE rid=?", (req["rid"],)).fetchone()
                    if row:
                        out = json.loads(row[0])
                    else:
                        out = {"rc": 0, "out": execute(db, req, server_id, n)}
                        if req["cmd"] != "status":
                            db.execute("INSERT INTO requests VALUES(?,?)", (req["rid"], json.dumps(out)))
                    db.execute("COMMIT")
                except Refused as e:
                    if BUG == "failed":
                        db.execute("COMMIT")
                    else:
                        db.execute("ROLLBACK")
                    out = {"rc": 1, "err": str(e)}
        finally:
            db.close()
        f.write((json.dumps(out) + "\n").encode())
        f.flush()
    except (OSError, ValueError):
        pass
    finally:
        conn.close()


def server(config, sid, data):
    sid = int(sid)
    os.makedirs(data, exist_ok=True)
    with open(config) as fh:
        cfg = json.load(fh)
    servers = cfg["servers"]
    me = servers[sid]
    lock = threading.Lock()
    open_db(config).close()

    def listen(port):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        return s
    cs = listen(me["port"])
    ps = listen(me["peer_port"])

    def peer_accept():
        while True:
            c, _ = ps.accept()
            threading.Thread(target=lambda c=c: [None for _ in iter(lambda: c.recv(4096), b"")],
                             daemon=True).start()

    via = {}
    for entry in filter(None, os.environ.get("PARLEY_PEER_DIAL", "").split(",")):
        addr, dial = entry.split("=")
        via[addr] = dial

    def peer_dial(j):
        addr = "%s:%d" % (servers[j]["host"], servers[j]["peer_port"])
        host, port = via.get(addr, addr).rsplit(":", 1)
        while True:
            try:
                s = socket.create_connection((host, int(port)), timeout=1)
                while True:
                    s.sendall(b"heartbeat from %d\n" % sid)
                    time.sleep(0.1)
            except OSError:
                time.sleep(0.2)
    threading.Thread(target=peer_accept, daemon=True).start()
    for j in range(len(servers)):
        if j != sid:
            threading.Thread(target=peer_dial, args=(j,), daemon=True).start()
    print("fake server %d listening on %d, peers on %d" % (sid, me["port"], me["peer_port"]), flush=True)
    while True:
        c, _ = cs.accept()
        threading.Thread(target=serve_client, args=(c, config, sid, len(servers), lock),
                         daemon=True).start()


def cli(argv):
    config = server_addr = None
    rest = []
    i = 0
    while i < len(argv):
        if argv[i] == "-c":
            config = argv[i + 1]
            i += 2
        elif argv[i] == "--server":
            server_addr = argv[i + 1]
            i += 2
        elif argv[i] == "--json":
            i += 1
        else:
            rest = argv[i:]
            break
    if not config or not rest:
        print("usage: parley -c CONFIG --json COMMAND", file=sys.stderr)
        return 2
    cmd, args = rest[0], [a for a in rest[1:] if a != "--password-stdin"]
    with open(config) as fh:
        servers = json.load(fh)["servers"]
    sess = os.environ.get("PARLEY_SESSION", "")
    token = None
    if os.path.exists(sess):
        with open(sess) as fh:
            token = fh.read().strip() or None
    stdin = sys.stdin.readline().rstrip("\n") if "--password-stdin" in rest else None
    req = {"cmd": cmd, "args": args, "token": token, "stdin": stdin, "rid": os.urandom(8).hex()}
    if server_addr:
        targets = [int(server_addr.rsplit(":", 1)[1])]
    else:
        targets = [s["port"] for s in servers]
    for port in targets:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(3)
                s.sendall((json.dumps(req) + "\n").encode())
                buf = b""
                while not buf.endswith(b"\n"):
                    d = s.recv(65536)
                    if not d:
                        break
                    buf += d
            rep = json.loads(buf)
        except (OSError, ValueError):
            continue
        if rep["rc"] != 0:
            print("parley: " + rep["err"], file=sys.stderr)
            return rep["rc"]
        out = rep["out"]
        if cmd == "login":
            with open(sess, "w") as fh:
                fh.write(out.pop("token"))
        print(json.dumps(out))
        return 0
    print("parley: no server reachable", file=sys.stderr)
    return 3


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(*sys.argv[2:5])
    else:
        sys.exit(cli(sys.argv[2:]))
