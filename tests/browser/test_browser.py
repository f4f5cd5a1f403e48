"""The web client in a real browser: Debian's chromium, headless, driven by
chromedriver through python3-selenium, against a real 3-server cluster that
serves tcp to the CLI and ws (port + 3000) to the browsers.

    test_browser.py PARLEYD PARLEY SCREENSHOT_DIR

One cluster and two browser sessions (alice and bob) for the whole run; the
steps build on each other and run in order:
  1. both register in the page, chat live both ways;
  2. a hostile body renders as text (no element, no script);
  3. bob reloads and is still logged in, and gets the next message live once;
  4. a CLI user (tcp) and the browser user chat;
  5. kill -9 of the primary: both pages reconnect to the new primary by
     themselves, and every acknowledged message shows exactly once on both.
Screenshots of the main screens go to SCREENSHOT_DIR (a test artifact).
Each wait has a deadline; nothing sleeps to synchronise.
"""
import os
import shutil
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "e2e"))
from harness import Cluster, test_failed, wait_until  # noqa: E402

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

PARLEYD, PARLEY, SHOTS = sys.argv[1], sys.argv[2], sys.argv[3]
del sys.argv[1:4]
WS_OFFSET = 3000
HOSTILE = "<img src=x onerror=alert(1)>"
PW = "correct horse battery"

# Chromium as root in a closed network: no sandbox, no GPU, and none of the
# background traffic (updates, sync, QUIC probes) it would otherwise try.
CHROME_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1100,820"]


def browser(profile):
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for f in CHROME_FLAGS:
        opts.add_argument(f)
    opts.add_argument("--user-data-dir=" + profile)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


class Page:
    """One user's tab."""

    def __init__(self, name, driver, url):
        self.name, self.d, self.url = name, driver, url

    def el(self, id_):
        return self.d.find_element(By.ID, id_)

    def js(self, code, *args):
        return self.d.execute_script(code, *args)

    def wait(self, pred, what, timeout=20):
        return wait_until(lambda: pred(), timeout, 0.1, "%s: %s" % (self.name, what))

    def bodies(self, list_id):
        """(data-id, body text) of every message in a list."""
        return self.js("return [...document.querySelectorAll('#%s li.msg')].map("
                       "li => [li.dataset.id, li.querySelector('.body').textContent]);" % list_id)

    def shot(self, name):
        os.makedirs(SHOTS, exist_ok=True)
        self.d.save_screenshot(os.path.join(SHOTS, name + ".png"))

    def login(self, user, register):
        self.el("login-user").clear()
        self.el("login-user").send_keys(user)
        self.el("login-pass").send_keys(PW)
        self.el("register-btn" if register else "login-btn").click()
        self.wait(lambda: self.el("main-view").is_displayed() and self.el("me").text == user,
                  "logged in as " + user)

    def open_convo(self, peer):
        self.el("tab-users").click()
        pat = self.el("users-pattern")
        pat.clear()
        pat.send_keys(peer + Keys.ENTER)
        self.wait(lambda: self.d.find_elements(By.CSS_SELECTOR,
                  "#users-list button[aria-label='Conversation with %s']" % peer), "user found")
        self.d.find_element(By.CSS_SELECTOR,
                            "#users-list button[aria-label='Conversation with %s']" % peer).click()
        self.wait(lambda: self.el("convo-panel").is_displayed(), "conversation open")

    def say(self, text):
        """Type text in the open conversation and press Enter; returns the id
        the server acknowledged (the message shows in the list only then)."""
        box = self.el("convo-body")
        box.send_keys(text)
        box.send_keys(Keys.ENTER)
        got = self.wait(lambda: [i for i, b in self.bodies("convo-list") if b == text],
                        "message %r acknowledged" % text, timeout=30)
        return got[0]


class Browser(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = Cluster(PARLEYD, PARLEY, n=3, transport={"name": "tcp"},
                        extra={"transports": [{"name": "ws", "port_offset": WS_OFFSET}],
                               "log_level": "debug"})
        cls.c.start_all()
        cls.url = "http://127.0.0.1:%d/" % (cls.c.ports[0] + WS_OFFSET)
        cls.profiles = [tempfile.mkdtemp(prefix="parley-chromium-") for _ in range(2)]
        cls.drivers = []
        cls.alice = cls.bob = None
        try:
            cls.drivers = [browser(p) for p in cls.profiles]
        except Exception:
            cls.tearDownClass()
            raise
        cls.alice = Page("alice", cls.drivers[0], cls.url)
        cls.bob = Page("bob", cls.drivers[1], cls.url)
        cls.failed = False

    @classmethod
    def tearDownClass(cls):
        for d in cls.drivers:
            try:
                d.quit()
            except Exception:
                pass
        for p in cls.profiles:
            shutil.rmtree(p, ignore_errors=True)
        if cls.failed:
            for i in range(cls.c.n):
                sys.stderr.write("---- server %d log ----\n%s\n" % (i, cls.c.log(i)))
        cls.c.close()

    def tearDown(self):
        if test_failed(self):
            type(self).failed = True
            for p in (self.alice, self.bob):
                if p:
                    p.shot("failure-" + p.name + "-" + self._testMethodName)

    def test_1_register_and_chat(self):
        a, b = self.alice, self.bob
        for p in (a, b):
            p.d.get(p.url)
            p.wait(lambda: p.el("login-view").is_displayed(), "login form")
        a.shot("01-login")
        a.login("alice", register=True)
        b.login("bob", register=True)
        a.open_convo("bob")
        a.say("Hi bob, lunch at noon?")
        b.wait(lambda: any(t == "Hi bob, lunch at noon?" for _, t in b.bodies("inbox-list")),
               "alice's message live in the inbox")
        b.wait(lambda: "unread" in b.el("badge").text, "badge")
        b.shot("02-inbox")
        b.open_convo("alice")
        b.say("Sure — the ramen place on Rue Oberkampf?")
        a.wait(lambda: any(t.startswith("Sure — the ramen") for _, t in a.bodies("convo-list")),
               "bob's reply live in the conversation")
        a.shot("03-conversation")

    def test_2_hostile_body_is_inert(self):
        a, b = self.alice, self.bob
        a.say(HOSTILE)
        b.wait(lambda: any(t == HOSTILE for _, t in b.bodies("convo-list")),
               "the hostile body shown as text")
        imgs = b.d.find_elements(By.CSS_SELECTOR, "#convo-list img, #inbox-list img")
        self.assertEqual(imgs, [], "a message body became an <img> element")
        for p in (a, b):
            with self.assertRaises(NoAlertPresentException, msg="an alert() ran in " + p.name):
                p.d.switch_to.alert.text
        b.shot("04-hostile-body")

    def test_3_reload_keeps_session(self):
        a, b = self.alice, self.bob
        b.d.refresh()
        b.wait(lambda: b.el("main-view").is_displayed() and b.el("me").text == "bob",
               "still logged in after a reload")
        b.wait(lambda: b.js("return document.getElementById('conn').dataset.state") == "connected",
               "connected again")
        token_in_url = "token" in b.d.current_url
        self.assertFalse(token_in_url, "the session token is in the URL: " + b.d.current_url)
        self.assertEqual(b.d.get_cookies(), [], "the page set cookies")
        a.say("Did the reload work?")
        b.wait(lambda: [t for _, t in b.bodies("inbox-list")].count("Did the reload work?") == 1,
               "the message after the reload live, once")

    def test_4_cli_user(self):
        a = self.alice
        self.c.register("carol")
        self.c.login("carol")
        self.c.cli_json("carol", "send", "alice", "hello from the terminal")
        a.el("tab-inbox").click()
        a.wait(lambda: any(t == "hello from the terminal" for _, t in a.bodies("inbox-list")),
               "the CLI user's message in the browser")
        a.open_convo("carol")
        a.say("hello from the browser")
        r = self.c.cli_json("carol", "read")
        self.assertIn("hello from the browser", [m["body"] for m in r["messages"]])
        # and the inbox at phone width
        a.d.set_window_size(390, 844)
        a.el("tab-inbox").click()
        a.shot("05-phone-width")
        a.d.set_window_size(1100, 820)

    def test_5_failover_loses_and_duplicates_nothing(self):
        a, b = self.alice, self.bob
        a.open_convo("bob")
        b.el("tab-inbox").click()
        acked = {}
        for i in range(3):
            text = "before failover %d" % i
            acked[a.say(text)] = text
        # The primary is server 0, which also served both pages.
        self.c.kill(0)
        for i in range(4):
            text = "after failover %d" % i
            acked[a.say(text)] = text
        a.wait(lambda: a.js("return document.getElementById('conn').dataset.state") == "connected",
               "alice connected to the new primary")
        b.wait(lambda: b.js("return document.getElementById('conn').dataset.state") == "connected",
               "bob connected to the new primary")
        a.shot("06-after-failover")
        # Bob's inbox (live pushes, resubscribed after the failover) and a
        # fresh look at the conversation from the server: each once.
        b.wait(lambda: set(acked) <= {i for i, _ in b.bodies("inbox-list")},
               "every acknowledged message in bob's inbox", timeout=40)
        b.open_convo("alice")
        b.wait(lambda: set(acked) <= {i for i, _ in b.bodies("convo-list")},
               "every acknowledged message in bob's conversation", timeout=30)
        for page, lst in ((b, "inbox-list"), (b, "convo-list"), (a, "convo-list")):
            rows = page.bodies(lst)
            for mid, text in acked.items():
                self.assertEqual(sum(1 for i, _ in rows if i == mid), 1,
                                 "%s %s: message #%s shown %d times" %
                                 (page.name, lst, mid, sum(1 for i, _ in rows if i == mid)))
                self.assertEqual(sum(1 for _, t in rows if t == text), 1,
                                 "%s %s: %r shown other than once" % (page.name, lst, text))
        b.shot("07-failover-bob")


if __name__ == "__main__":
    unittest.main(verbosity=2)
