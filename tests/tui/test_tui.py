"""The terminal UI end to end: the real `parley` binary (no command = the
full-screen UI) in tmux, against a real parleyd, checked through what tmux
shows (capture-pane) and through the CLI.

Run by meson (suite tui) as:
  test_tui.py PARLEYD PARLEY

Each test gets its own parleyd (tests/e2e/harness.py) and its own tmux
server on a private socket, with fixed 100x30 windows; both are always torn
down. Every wait is "until this text is on the screen" with a deadline,
never a sleep.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import Cluster  # noqa: E402

PARLEYD, PARLEY = None, None
PASSWORD = "correct horse"
WIDTH, HEIGHT = 100, 30
DEADLINE = 15.0


def messages(doc):
    """The message list of a read/history/conversation document."""
    if isinstance(doc, list):
        return doc
    return doc["messages"]


class Tmux:
    """A private tmux server; one session per UI, named after its user."""

    def __init__(self, workdir):
        self.sock = "parley-tui-%d-%s" % (os.getpid(), uuid.uuid4().hex[:8])
        self.workdir = workdir
        self.started = False

    def run(self, *args, check=True):
        r = subprocess.run(["tmux", "-L", self.sock, "-f", "/dev/null"] + list(args),
                           capture_output=True, text=True, timeout=20)
        if check and r.returncode != 0:
            raise AssertionError("tmux %s: exit %d: %s" % (" ".join(args), r.returncode, r.stderr))
        return r

    def start(self, name, config):
        env = ["env", "-u", "PARLEY_CONFIG", "LANG=C.UTF-8", "LC_ALL=C.UTF-8",
               "TERM=tmux-256color", "HOME=" + self.workdir]
        # PARLEY_TUI_WRAPPER (e.g. "valgrind --log-file=/tmp/vg.%p") runs the
        # UI under a checker; the CLI calls of the tests are not wrapped.
        cmd = env + os.environ.get("PARLEY_TUI_WRAPPER", "").split() + [PARLEY, "-c", config]
        # The pane's shell records the exit status in a file: tmux itself may
        # be slow to reap a child, and its pane_dead_status stays empty then.
        self.run("new-session", "-d", "-s", name, "-x", str(WIDTH), "-y", str(HEIGHT),
                 "%s; echo $? > '%s'" % (" ".join("'%s'" % a for a in cmd), self.status_file(name)))
        self.started = True
        # Keep a pane whose program exited, so a crash is seen, not hidden.
        self.run("set-option", "-t", name, "remain-on-exit", "on")

    def keys(self, name, *keys):
        self.run("send-keys", "-t", name, *keys)

    def text(self, name, s):
        self.run("send-keys", "-t", name, "-l", s)

    def screen(self, name):
        return self.run("capture-pane", "-p", "-t", name).stdout

    def pane(self, name, fmt):
        return self.run("display-message", "-p", "-t", name, fmt).stdout.strip()

    def status_file(self, name):
        return os.path.join(self.workdir, "%s.exit" % name)

    def ui_pid(self, name):
        """The parley process: the only child of the pane's shell."""
        sh = self.pane(name, "#{pane_pid}")
        with open("/proc/%s/task/%s/children" % (sh, sh)) as f:
            kids = f.read().split()
        if len(kids) != 1:
            raise AssertionError("the pane of %s runs %r, not one parley process" % (name, kids))
        return int(kids[0])

    def exit_status(self, name, timeout=DEADLINE):
        """The UI's exit status (a shell status: 128+N after signal N)."""
        deadline = time.monotonic() + timeout
        path = self.status_file(name)
        while time.monotonic() < deadline:
            try:
                with open(path) as f:
                    st = f.read().strip()
                if st:
                    return int(st)
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("the UI of %s did not exit:\n%s" % (name, self.screen(name)))

    def wait(self, name, what, timeout=DEADLINE):
        """Wait until `what` (a string, or a predicate on the screen text) holds."""
        pred = what if callable(what) else (lambda s: what in s)
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen(name)
            if pred(screen):
                return screen
            if os.path.exists(self.status_file(name)):
                raise AssertionError("the UI of %s exited (status %s) while waiting for %r:\n%s"
                                     % (name, self.exit_status(name), what, screen))
            time.sleep(0.05)
        raise AssertionError("timed out after %.0fs waiting for %r on %s's screen:\n%s"
                             % (timeout, what, name, screen))

    def resize(self, name, w, h):
        self.run("resize-window", "-t", name, "-x", str(w), "-y", str(h))

    def close(self):
        if self.started:
            self.run("kill-server", check=False)


def measured(what, t0):
    """Report a duration (measurements, not assertions)."""
    sys.stderr.write("measured: %s: %.0f ms\n" % (what, (time.monotonic() - t0) * 1000))


def status_line(screen):
    return screen.splitlines()[0] if screen else ""


def status_has(user, state):
    return lambda s: status_line(s).startswith(" %s │ %s │" % (user, state))


class Base(unittest.TestCase):
    SERVERS = 1

    def setUp(self):
        self.c = Cluster(PARLEYD, PARLEY, n=self.SERVERS)
        self.t = Tmux(self.c.dir)
        try:
            self.c.start_all()
        except BaseException:
            self.c.close()
            raise

    def tearDown(self):
        failed = self._failed()
        if failed:
            for i in range(self.SERVERS):
                sys.stderr.write("---- server %d log ----\n%s\n" % (i, self.c.log(i)))
        self.t.close()
        self.c.close()

    def _failed(self):
        res = getattr(self, "_outcome", None)
        if res is None:
            return False
        errs = getattr(res, "errors", None) or getattr(getattr(res, "result", None), "errors", [])
        return any(e for _, e in errs if e) if errs else False

    # ---- helpers ----
    def open_ui(self, user, register=False, password=PASSWORD):
        """Start a UI for user and log in (or register) through the form."""
        self.t.start(user, self.c.config)
        self.t.wait(user, "Username:")
        self.t.text(user, user)
        self.t.keys(user, "Tab")
        self.t.text(user, password)
        self.t.keys(user, "C-r" if register else "Enter")
        return self.t.wait(user, status_has(user, "connected"))

    def cli_login(self, user):
        self.c.login(user)

    def counts(self, user):
        return self.c.cli_json(user, "unread")

    def wait_counts(self, user, unread=None, read=None):
        deadline = time.monotonic() + DEADLINE
        doc = None
        while time.monotonic() < deadline:
            doc = self.counts(user)
            if (unread is None or doc["unread"] == unread) and (read is None or doc["read"] == read):
                return doc
            time.sleep(0.1)
        raise AssertionError("%s's counts stayed %r (wanted unread=%r read=%r)" % (user, doc, unread, read))


class TUI(Base):
    """One server."""

    def test_two_users_chat_live_both_ways(self):
        t = self.t
        self.open_ui("alice", register=True)
        self.open_ui("bob", register=True)
        self.cli_login("bob")

        # alice writes to bob: recipient by completion, UTF-8 and wide
        # characters, long enough to wrap.
        t.keys("alice", "c")
        t.wait("alice", "New message")
        t.text("alice", "bo")
        t.keys("alice", "Tab")
        t.wait("alice", lambda s: re.search(r"To:\s+bob\b", s))
        long_body = ("héllo bob ✓ 日本語 " + "lorem ipsum dolor sit amet " * 5 + "THE-END")
        t.text("alice", long_body)
        t.keys("alice", "Enter")
        t.wait("alice", "sent to bob")

        # bob sees it without pressing a key, wrapped, and it gets acked.
        s = t.wait("bob", lambda s: "héllo bob ✓ 日本語" in s and "THE-END" in s)
        lines = s.splitlines()
        first = next(i for i, l in enumerate(lines) if "héllo" in l)
        last = next(i for i, l in enumerate(lines) if "THE-END" in l)
        self.assertGreater(last, first, "a long message should wrap over several lines:\n" + s)
        # Wrapped at spaces, nothing lost or split: the lines give the text back.
        self.assertEqual(" ".join(l.strip() for l in lines[first:last + 1]), long_body.strip())
        self.wait_counts("bob", unread=0, read=1)

        # bob answers from the conversation; alice, who is in her
        # conversation with bob since sending, sees it live at the bottom.
        t.keys("bob", "Enter")
        t.wait("bob", "Conversation with alice")
        t.keys("bob", "c")
        t.wait("bob", "New message")
        t.text("bob", "hi alice 👋 café")
        t.keys("bob", "Enter")
        t.wait("bob", "sent to alice")
        s = t.wait("alice", "hi alice 👋 café")
        lines = s.splitlines()
        mine = max(i for i, l in enumerate(lines) if "héllo bob" in l)
        theirs = max(i for i, l in enumerate(lines) if "hi alice" in l)
        self.assertLess(mine, theirs, "the newest message should be at the bottom:\n" + s)
        self.assertIn("Conversation with bob", s)
        self.cli_login("alice")
        self.wait_counts("alice", unread=0, read=1)

        # A live message while bob looks at his inbox shows up there too.
        t.keys("bob", "Escape")
        t.wait("bob", "Inbox")
        t0 = time.monotonic()
        self.c.cli("alice", "send", "bob", "third one", check=0)
        t.wait("bob", "third one")
        measured("live: send by the CLI (process start included) -> on the screen", t0)
        self.wait_counts("bob", unread=0, read=2)

        # q quits cleanly.
        t.keys("bob", "q")
        self.assertEqual(t.exit_status("bob"), 0, "q should quit with status 0")

    def test_read_n_and_delete_selected(self):
        t = self.t
        c = self.c
        for u in ("alice", "bob"):
            c.register(u)
        self.cli_login("alice")
        self.cli_login("bob")
        for i in (1, 2, 3):
            c.cli("alice", "send", "bob", "msg-%d" % i, check=0)

        s = self.open_ui("bob")
        self.assertIn("unread 3", status_line(t.wait("bob", lambda s: "unread 3" in status_line(s))))
        self.assertNotIn("msg-1", s, "unread backlog must wait for 'read N', not show as live")

        # read 2: the two oldest, then one stays unread.
        t.keys("bob", "r")
        t.wait("bob", "Read how many")
        t.text("bob", "2")
        t.keys("bob", "Enter")
        t.wait("bob", lambda s: "Read 2 messages" in s and "msg-1" in s and "msg-2" in s
               and "msg-3" not in s)
        t.wait("bob", lambda s: "unread 1 · read 2" in status_line(s))
        self.wait_counts("bob", unread=1, read=2)

        # Back to the inbox (newest first: msg-2, msg-1); select msg-1 and
        # delete it.
        t.keys("bob", "Escape")
        s = t.wait("bob", lambda s: "Inbox" in s and "msg-1" in s and "msg-2" in s)
        t.keys("bob", "Down")
        t.keys("bob", "Space")
        t.wait("bob", lambda s: any("[x]" in l for l in s.splitlines()))
        t.keys("bob", "d")
        t.wait("bob", "Delete 1 message from your view? y/n")
        t.keys("bob", "y")
        t.wait("bob", "deleted 1 message")
        s = t.wait("bob", lambda s: "msg-1" not in s and "msg-2" in s)
        hist = [m["body"] for m in messages(c.cli_json("bob", "history"))]
        self.assertEqual(hist, ["msg-2"])

        # Multi-select: read the rest, select both on the page, delete both.
        t.keys("bob", "r")
        t.wait("bob", "Read how many")
        t.keys("bob", "Enter")
        t.wait("bob", "Read 1 message")
        t.keys("bob", "i")
        t.wait("bob", lambda s: "Inbox" in s and "msg-3" in s and "msg-2" in s)
        t.keys("bob", "Space")
        t.keys("bob", "Space")
        t.wait("bob", lambda s: sum("[x]" in l for l in s.splitlines()) == 2)
        t.keys("bob", "d")
        t.wait("bob", "Delete 2 messages from your view? y/n")
        t.keys("bob", "y")
        t.wait("bob", "deleted 2 messages")
        self.assertEqual(messages(c.cli_json("bob", "history")), [])
        self.wait_counts("bob", unread=0, read=0)

    def test_inbox_paging(self):
        t = self.t
        c = self.c
        for u in ("alice", "bob"):
            c.register(u)
        self.cli_login("alice")
        self.cli_login("bob")
        for i in range(1, 26):
            c.cli("alice", "send", "bob", "paged-%02d" % i, check=0)
        c.cli_json("bob", "read")
        self.open_ui("bob")
        # 20 per page, newest first: page 1 is 25..06, page 2 is 05..01.
        t.wait("bob", lambda s: "Inbox · page 1 · PgDn older" in s and "paged-25" in s)
        t.keys("bob", "NPage")
        t.wait("bob", lambda s: "Inbox · page 2 · PgUp newer" in s and "paged-05" in s
               and "paged-01" in s and "paged-06" not in s and "paged-25" not in s)
        t.keys("bob", "NPage")
        t.wait("bob", "this is the last page")
        t.keys("bob", "PPage")
        t.wait("bob", lambda s: "Inbox · page 1" in s and "paged-25" in s and "paged-01" not in s)

    def test_long_message_and_message_view(self):
        t = self.t
        c = self.c
        for u in ("alice", "bob"):
            c.register(u)
        self.cli_login("alice")
        self.open_ui("bob")
        words = " ".join("wörd%05d" % i for i in range(5800))   # about 64 KB
        body = "BIG-START " + words + " BIG-END"
        self.assertLess(len(body.encode()), 64 * 1024)
        c.cli("alice", "send", "bob", body, check=0)
        t.wait("bob", lambda s: "BIG-START wörd00000" in s and "new message from alice" in s)
        t.keys("bob", "v")
        t.wait("bob", lambda s: "Message" in s and "BIG-START" in s)
        t.keys("bob", "End")
        t.wait("bob", lambda s: "BIG-END" in s and "wörd05799" in s and "BIG-START" not in s)
        t.keys("bob", "Escape")
        t.wait("bob", lambda s: "Inbox" in s and "BIG-START" in s)
        self.cli_login("bob")
        self.wait_counts("bob", unread=0, read=1)

    def test_user_search_with_pattern_and_paging(self):
        t = self.t
        c = self.c
        for i in range(25):
            c.register("user%02d" % i)
        c.register("zed")
        self.open_ui("zed")
        t.keys("zed", "u")
        t.wait("zed", "Find users")
        t.text("zed", "user")
        t.wait("zed", lambda s: "matching user* · users 1–20 · PgDn more" in s and "user00" in s
               and "user19" in s and "user20" not in s)
        t.keys("zed", "NPage")
        t.wait("zed", lambda s: "users 21–25" in s and "user20" in s and "user24" in s
               and "user00" not in s and "user19" not in s)
        # A glob: '?' is one character.
        t.keys("zed", "C-u")
        t.text("zed", "user1?")
        t.wait("zed", lambda s: "matching user1? · users 1–10" in s and "user10" in s
               and "user19" in s and "user20" not in s and "user01" not in s)
        # Enter opens the conversation with the highlighted user.
        t.keys("zed", "Enter")
        t.wait("zed", "Conversation with user10")

    def test_logout_and_delete_account(self):
        t = self.t
        self.open_ui("carol", register=True)
        t.keys("carol", "L")
        t.wait("carol", "logged out")
        t.wait("carol", "Username:")
        # Log in again (the username is kept, the cursor is on the password).
        t.text("carol", PASSWORD)
        t.keys("carol", "Enter")
        t.wait("carol", status_has("carol", "connected"))
        # Delete the account: a wrong password is refused, the right one works.
        t.keys("carol", "X")
        t.wait("carol", "Delete account")
        t.text("carol", "not the password")
        t.keys("carol", "Enter")
        s = t.wait("carol", "delete account:")
        self.assertIn("Delete account", s)
        self.assertNotIn("not the password", s, "the password must not be shown")
        t.text("carol", PASSWORD)
        t.keys("carol", "Enter")
        t.wait("carol", "account carol deleted")
        t.wait("carol", "Username:")
        r = self.c.cli("carol", "login", "carol", "--password-stdin", stdin=PASSWORD + "\n")
        self.assertEqual(r.returncode, 1, "the deleted account could still log in: %s" % r.stdout)

    def test_password_is_hidden_on_the_form(self):
        t = self.t
        t.start("dave", self.c.config)
        t.wait("dave", "Username:")
        t.text("dave", "dave")
        t.keys("dave", "Tab")
        t.text("dave", "secret-pw-123")
        s = t.wait("dave", "*************")
        self.assertNotIn("secret-pw-123", s)

    def test_reconnect_after_server_restart(self):
        t = self.t
        c = self.c
        c.register("bob")
        self.cli_login("bob")
        self.open_ui("alice", register=True)
        c.kill(0)
        t.wait("alice", lambda s: status_has("alice", "reconnecting")(s) or status_has("alice", "offline")(s))
        c.start(0)
        t0 = time.monotonic()
        t.wait("alice", status_has("alice", "connected"))
        measured("restart: server listening again -> status bar connected", t0)
        # Live messages flow again without any key.
        c.cli("bob", "send", "alice", "after the restart", check=0)
        t.wait("alice", "after the restart")
        self.cli_login("alice")
        self.wait_counts("alice", unread=0, read=1)
        # Nothing is shown twice.
        self.assertEqual(t.screen("alice").count("after the restart"), 1)

        # A message sent while the UI is cut off (its process stopped across a
        # server restart) arrives once the UI runs again: the re-subscription
        # resumes from the last id it saw.
        pid = t.ui_pid("alice")
        os.kill(pid, signal.SIGSTOP)
        try:
            c.kill(0)
            c.start(0)
            c.cli("bob", "send", "alice", "sent during the gap", check=0)
        finally:
            os.kill(pid, signal.SIGCONT)
        s = t.wait("alice", "sent during the gap")
        self.assertEqual(s.count("sent during the gap"), 1)
        self.assertEqual(s.count("after the restart"), 1)
        self.wait_counts("alice", unread=0, read=2)

    def test_slow_server_never_freezes_the_ui(self):
        t = self.t
        c = self.c
        self.open_ui("erin", register=True)
        c.kill(0, signal.SIGSTOP)
        try:
            t.keys("erin", "u")
            t.wait("erin", "Find users")
            # The search is stuck on the paused server: busy marker on...
            t.wait("erin", lambda s: status_line(s).rstrip().endswith("…"))
            # ...and the UI still answers keys.
            t.keys("erin", "F1")
            t.wait("erin", "Keys (any key closes this help)")
            t.keys("erin", "Escape")
            t.wait("erin", lambda s: "Keys (any key" not in s)
            t.text("erin", "er")
            t.wait("erin", lambda s: re.search(r"Pattern:\s+er", s))
        finally:
            c.kill(0, signal.SIGCONT)
        t.wait("erin", lambda s: "matching er*" in s and "erin" in s)
        t.wait("erin", lambda s: not status_line(s).rstrip().endswith("…"))

    def test_help_resize_and_tiny_terminal(self):
        t = self.t
        self.open_ui("fay", register=True)
        t.keys("fay", "?")
        keys = ("Keys (any key closes this help)", "read N unread", "delete selection",
                "find users", "delete account", "log out", "register + log in",
                "complete recipient", "delete a word")
        t.wait("fay", lambda s: all(k in s for k in keys))
        t.keys("fay", "Space")
        t.wait("fay", lambda s: "Keys (any key" not in s)
        t.resize("fay", 30, 8)
        t.wait("fay", "terminal too small")
        # Drawn again for the new size: the key hints are on the last row.
        t.resize("fay", 60, 15)
        t.wait("fay", lambda s: status_has("fay", "connected")(s) and len(s.splitlines()) == 15
               and s.splitlines()[-1].startswith("? help"))
        t.resize("fay", WIDTH, HEIGHT)
        t.wait("fay", lambda s: "Inbox" in s and len(s.splitlines()) == HEIGHT
               and s.splitlines()[-1].startswith("? help") and "q quit" in s.splitlines()[-1])


class Failover(Base):
    SERVERS = 3

    def test_failover_to_another_server(self):
        """Three servers; the primary dies: the status bar follows the new
        primary by itself and live messages keep coming, none twice."""
        c, t = self.c, self.t
        first = "127.0.0.1:%d" % c.ports[0]
        c.register("bob")
        self.cli_login("bob")
        self.open_ui("alice", register=True)
        t.wait("alice", lambda s: ("server %s (primary)" % first) in status_line(s))
        c.cli("bob", "send", "alice", "before the failover", check=0)
        t.wait("alice", "before the failover")
        t0 = time.monotonic()
        c.kill(0)
        # Sent while the UI is still finding the new primary: it reaches the
        # screen through the re-subscription, without a key. The CLI may
        # give up during the view change (exit 3); each try has its own text
        # so a try that did commit is not mistaken for a duplicate.
        body, attempt = None, 0
        deadline = time.monotonic() + 60
        while body is None and time.monotonic() < deadline:
            attempt += 1
            r = c.cli("bob", "send", "alice", "after the failover %d" % attempt, timeout=60)
            if r.returncode == 0:
                body = "after the failover %d" % attempt
            else:
                self.assertEqual(r.returncode, 3, "send refused: %s" % r.stderr)
                time.sleep(0.1)  # pacing the retries, not waiting for anything
        self.assertIsNotNone(body, "no send went through within 60 s of the failover")
        measured("failover: primary killed -> a CLI send committed", t0)
        t.wait("alice", body, timeout=30)
        measured("failover: primary killed -> that message on the screen", t0)
        s = t.wait("alice", lambda s: status_has("alice", "connected")(s) and "(primary)" in status_line(s)
                   and first not in status_line(s), timeout=30)
        measured("failover: primary killed -> status bar names the new primary", t0)
        self.assertEqual(s.count("before the failover"), 1)
        self.assertEqual(s.count(body), 1)
        shown = re.findall(r"after the failover \d+", s)
        self.assertEqual(len(shown), len(set(shown)), "a message is shown twice:\n" + s)
        self.cli_login("alice")
        self.wait_counts("alice", unread=0, read=1 + len(shown))


def main():
    global PARLEYD, PARLEY
    if len(sys.argv) < 3:
        sys.stderr.write("usage: test_tui.py PARLEYD PARLEY [unittest args]\n")
        return 2
    PARLEYD, PARLEY = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    if not shutil.which("tmux"):
        sys.stderr.write("tmux is not installed: the terminal UI tests need it\n")
        return 77  # meson: skipped
    argv = [sys.argv[0]] + sys.argv[3:]
    prog = unittest.main(argv=argv, exit=False, verbosity=2)
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
