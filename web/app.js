// web/app.js — the parley web client: what the terminal UI does, in a
// page. Served by the ws transport (plugins/transport-ws) with a
// Content-Security-Policy that allows no inline script; every message body
// is put on the page as text (textContent), never as HTML.
//
// Live messages work as in the terminal UI (client/tui.c): after login the
// page subscribes from id 0; the first `unread` pushes are the backlog from
// before login and are only counted (the badge's "Read" lists them); every
// later push is live, shown at once in the inbox and in an open
// conversation with its sender, and acked (marked read) once it is on the
// screen. The last id seen is kept, so a reconnect or a reload subscribes
// after it: nothing twice, nothing missed.
//
// The session token lives in sessionStorage (this tab only, gone with it),
// never in a URL or a cookie.

import { Conn } from "./conn.js";

const PAGE = 20;
const ERR_NOT_LOGGED_IN = 15;

const $ = id => document.getElementById(id);
const st = {
  user: sessionStorage.getItem("parley.user") || "",
  token: sessionStorage.getItem("parley.token") || "",
  lastId: Number(sessionStorage.getItem("parley.lastId") || "0"),
  backlog: 0,
  unread: 0,
  view: "inbox",
  inboxOffset: 0, inboxMore: false, inboxMode: "history",
  inbox: new Map(),       // id -> msg shown in the inbox list
  live: new Map(),        // pushed, not acked yet
  peer: "", convoOffset: 0, convoMore: false,
  convo: new Map(),
  usersPattern: "", usersOffset: 0, usersMore: false,
  subscribed: false,
};

const conn = new Conn({ onPush, onState, onOpen });

// ---------------------------------------------------------------- helpers

function notice(text, isError) {
  const n = $("notice");
  n.textContent = text;
  n.classList.toggle("error", !!isError);
}

function save() {
  sessionStorage.setItem("parley.user", st.user);
  sessionStorage.setItem("parley.token", st.token);
  sessionStorage.setItem("parley.lastId", String(st.lastId));
}

function clearSession() {
  st.user = ""; st.token = ""; st.lastId = 0; st.backlog = 0; st.unread = 0;
  st.inbox.clear(); st.live.clear(); st.convo.clear(); st.subscribed = false;
  sessionStorage.removeItem("parley.user");
  sessionStorage.removeItem("parley.token");
  sessionStorage.removeItem("parley.lastId");
}

// One request with the session token; a lost session sends the page back
// to the login form. Resolves with the answer, or null after an error
// (already shown).
async function req(method, fields, what) {
  const r = await conn.call(method, { token: st.token, ...fields });
  if (r.status === 0) return r;
  if (r.status === ERR_NOT_LOGGED_IN && st.token) {
    clearSession();
    showLogin();
    notice("Your session ended: " + r.error + ". Log in again.", true);
    return null;
  }
  notice((what ? what + ": " : "") + (r.error || "error " + r.status), true);
  return null;
}

function fmtTime(ms) {
  const d = new Date(ms);
  return d.toLocaleDateString(undefined, { month: "short", day: "numeric" }) + " " +
         d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

// One message as a list item. The body goes in as text: a body of
// "<img src=x onerror=alert(1)>" shows exactly those characters.
function msgItem(m, live) {
  const li = document.createElement("li");
  li.className = "msg" + (m.from === st.user ? " mine" : "") + (live ? " live" : "");
  li.dataset.id = String(m.id);
  const head = document.createElement("div");
  head.className = "head";
  const box = document.createElement("input");
  box.type = "checkbox";
  box.className = "sel";
  box.value = String(m.id);
  box.setAttribute("aria-label", "Select message " + m.id + " from " + m.from);
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = (m.from === st.user ? "me" : m.from) + " → " + (m.to === st.user ? "me" : m.to);
  const when = document.createElement("time");
  when.dateTime = new Date(m.time).toISOString();
  when.textContent = fmtTime(m.time);
  const id = document.createElement("span");
  id.className = "id";
  id.textContent = "#" + m.id;
  head.append(box, who, when, id);
  if (live) {
    const dot = document.createElement("span");
    dot.className = "dot";
    dot.textContent = "new";
    head.append(dot);
  }
  if (m.from !== st.user && m.from) {
    const talk = document.createElement("button");
    talk.type = "button";
    talk.className = "link";
    talk.textContent = "Conversation";
    talk.setAttribute("aria-label", "Conversation with " + m.from);
    talk.addEventListener("click", () => openConvo(m.from));
    head.append(talk);
  }
  const body = document.createElement("p");
  body.className = "body";
  body.textContent = m.body;
  li.append(head, body);
  return li;
}

function renderList(ul, msgs, newestFirst) {
  const sorted = [...msgs].sort((a, b) => newestFirst ? b.id - a.id : a.id - b.id);
  ul.replaceChildren(...sorted.map(m => msgItem(m, st.live.has(m.id))));
}

function selected(ul) {
  return [...ul.querySelectorAll("input.sel:checked")].map(b => Number(b.value));
}

// ---------------------------------------------------------------- views

function showLogin() {
  $("login-view").hidden = false;
  $("main-view").hidden = true;
  $("who").hidden = true;
  $("login-user").focus();
}

function showMain() {
  $("login-view").hidden = true;
  $("main-view").hidden = false;
  $("who").hidden = false;
  $("me").textContent = st.user;
  show(st.view === "convo" && st.peer ? "convo" : "inbox");
}

function show(view) {
  st.view = view;
  for (const v of ["inbox", "users", "compose", "convo"]) {
    $(v + "-panel").hidden = v !== view;
    const tab = $("tab-" + v);
    if (tab) tab.setAttribute("aria-current", v === view ? "page" : "false");
  }
  ackVisible();
}

function setBadge() {
  $("unread").textContent = String(st.unread);
  $("badge").classList.toggle("has", st.unread > 0);
}

// ---------------------------------------------------------------- live

function onState(s) {
  const host = s.server ? s.server.replace(/^wss?:\/\//, "").replace(/\/ws$/, "") : "";
  const text = s.state === "connected" ? "connected to " + host
             : s.state === "error" ? "server: " + s.error
             : s.state + (host ? " (" + host + ")" : "") + "…";
  $("conn").textContent = text;
  $("conn").dataset.state = s.state;
}

async function onOpen() {
  if (!st.token) return;
  const first = !st.subscribed;
  const r = await req("subscribe", { after: st.lastId }, "live messages");
  if (!r) return;
  st.subscribed = true;
  refreshCounts();
  if (!first) {
    // Back after a reconnect: what changed meanwhile.
    if (st.view === "inbox" && st.inboxMode === "history") loadInbox(st.inboxOffset);
    if (st.view === "convo") loadConvo(0);
  }
}

function onPush(m) {
  if (!st.token || m.id <= st.lastId) return; // a replay after a reconnect
  st.lastId = m.id;
  save();
  if (st.backlog > 0) {
    st.backlog--;            // unread before login: for "Read"
    return;
  }
  st.live.set(m.id, m);
  if (m.state === 0) st.unread++;
  setBadge();
  if (st.inboxMode === "history" && st.inboxOffset === 0) {
    st.inbox.set(m.id, m);
    renderList($("inbox-list"), st.inbox.values(), true);
  }
  if (st.peer && (m.from === st.peer || m.to === st.peer)) {
    st.convo.set(m.id, m);
    renderList($("convo-list"), st.convo.values(), false);
  }
  notice("New message from " + m.from + " (#" + m.id + ")");
  ackVisible();
}

// Live messages on the screen are read: ack them (the TUI does the same
// once a message is drawn). A tab in the background acks nothing.
let acking = false;
async function ackVisible() {
  if (acking || document.visibilityState !== "visible" || !st.token) return;
  const ids = [];
  for (const m of st.live.values()) {
    const shown = (st.view === "inbox" && st.inbox.has(m.id)) ||
                  (st.view === "convo" && st.convo.has(m.id));
    if (shown) ids.push(m.id);
  }
  if (ids.length === 0) return;
  acking = true;
  const r = await req("ack", { ids }, "mark read");
  acking = false;
  if (r) {
    ids.forEach(id => st.live.delete(id));
    refreshCounts();
  }
}
document.addEventListener("visibilitychange", ackVisible);

async function refreshCounts() {
  const r = await req("counts", {}, "counts");
  if (r) {
    st.unread = r.unread || 0;
    setBadge();
  }
}

// ---------------------------------------------------------------- inbox

async function loadInbox(offset) {
  const r = await req("history", { offset, limit: PAGE }, "inbox");
  if (!r) return;
  st.inboxMode = "history";
  st.inboxOffset = offset;
  st.inboxMore = !!r.more;
  st.inbox.clear();
  (r.msgs || []).forEach(m => st.inbox.set(m.id, m));
  // Live messages not acked yet are unread, so history leaves them out:
  // the first page shows them on top.
  if (offset === 0) st.live.forEach((m, id) => st.inbox.set(id, m));
  $("inbox-page").textContent = "· page " + (offset / PAGE + 1) + " · newest first";
  $("inbox-older").disabled = !st.inboxMore;
  $("inbox-newer").disabled = offset === 0;
  renderList($("inbox-list"), st.inbox.values(), true);
  ackVisible();
}

async function readUnread(n) {
  const r = await req("read", { n }, "read");
  if (!r) return;
  const msgs = r.msgs || [];
  st.backlog = Math.max(0, st.backlog - msgs.length);
  st.inboxMode = "read";
  st.inbox.clear();
  msgs.forEach(m => st.inbox.set(m.id, m));
  $("inbox-page").textContent = "· " + msgs.length + " read now" + (r.more ? ", more unread" : "");
  $("inbox-newer").disabled = false;
  $("inbox-older").disabled = true;
  renderList($("inbox-list"), st.inbox.values(), false);
  show("inbox");
  notice(msgs.length ? "Read " + msgs.length + " message(s)" : "No unread messages");
  refreshCounts();
}

async function deleteIds(ids) {
  if (ids.length === 0) {
    notice("Select messages to delete first", true);
    return;
  }
  if (!confirm("Delete " + ids.length + " message(s)?")) return;
  const r = await req("delete", { ids }, "delete");
  if (!r) return;
  ids.forEach(id => { st.inbox.delete(id); st.convo.delete(id); st.live.delete(id); });
  renderList($("inbox-list"), st.inbox.values(), st.inboxMode === "history");
  renderList($("convo-list"), st.convo.values(), false);
  notice("Deleted " + ids.length + " message(s)");
  refreshCounts();
}

// ---------------------------------------------------------------- users

async function loadUsers(offset) {
  let pattern = st.usersPattern;
  if (pattern && !/[*?]/.test(pattern)) pattern += "*";   // plain text: a prefix
  const r = await req("list_users", { pattern, offset, limit: PAGE }, "users");
  if (!r) return;
  st.usersOffset = offset;
  st.usersMore = !!r.more;
  const ul = $("users-list");
  ul.replaceChildren(...(r.users || []).map(u => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = u;
    b.setAttribute("aria-label", "Conversation with " + u);
    b.addEventListener("click", () => openConvo(u));
    li.append(b);
    return li;
  }));
  if ((r.users || []).length === 0) {
    const li = document.createElement("li");
    li.textContent = "No users match.";
    ul.append(li);
  }
  $("users-prev").disabled = offset === 0;
  $("users-next").disabled = !st.usersMore;
}

// ---------------------------------------------------------------- conversation

function openConvo(peer) {
  st.peer = peer;
  st.convo.clear();
  $("convo-title").textContent = "Conversation with " + peer;
  show("convo");
  loadConvo(0);
  $("convo-body").focus();
}

async function loadConvo(offset) {
  const peer = st.peer;
  const r = await req("conversation", { peer, offset, limit: PAGE }, "conversation");
  if (!r || peer !== st.peer) return;
  if (offset === 0) st.convo.clear();
  (r.msgs || []).forEach(m => st.convo.set(m.id, m));
  st.live.forEach((m, id) => { if (m.from === peer || m.to === peer) st.convo.set(id, m); });
  st.convoOffset = offset;
  st.convoMore = !!r.more;
  $("convo-older").disabled = !st.convoMore;
  renderList($("convo-list"), st.convo.values(), false);
  ackVisible();
}

async function send(to, body) {
  const r = await req("send", { to, body }, "send");
  if (!r) return false;
  const m = { id: r.id, from: st.user, to, body, time: r.time, state: 1 };
  if (st.peer === to) {
    st.convo.set(m.id, m);
    renderList($("convo-list"), st.convo.values(), false);
  }
  notice("Sent to " + to + " (#" + r.id + ")");
  return true;
}

// ---------------------------------------------------------------- session

async function login(register) {
  const username = $("login-user").value.trim();
  const password = $("login-pass").value;
  if (register) {
    const r = await conn.call("register", { username, password });
    if (r.status !== 0) {
      notice("Register: " + r.error, true);
      return;
    }
  }
  const r = await conn.call("login", { username, password });
  if (r.status !== 0) {
    notice("Log in: " + r.error, true);
    return;
  }
  $("login-pass").value = "";
  st.user = username;
  st.token = r.token;
  st.lastId = 0;
  st.backlog = r.unread || 0;
  st.unread = r.unread || 0;
  st.subscribed = false;
  st.live.clear();
  save();
  setBadge();
  showMain();
  notice("Logged in as " + username + ": " + st.unread + " unread" + (st.unread ? " (Read lists them)" : ""));
  await onOpen();
  loadInbox(0);
}

async function logout() {
  await conn.call("logout", { token: st.token });
  clearSession();
  showLogin();
  notice("Logged out");
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("login-form").addEventListener("submit", e => { e.preventDefault(); login(false); });
  $("register-btn").addEventListener("click", () => {
    if ($("login-form").reportValidity()) login(true);
  });
  $("logout").addEventListener("click", logout);
  $("badge").addEventListener("click", () => readUnread(0));
  $("tab-inbox").addEventListener("click", () => { show("inbox"); loadInbox(0); });
  $("tab-users").addEventListener("click", () => { show("users"); loadUsers(0); $("users-pattern").focus(); });
  $("tab-compose").addEventListener("click", () => { show("compose"); $("compose-to").focus(); });
  $("inbox-newer").addEventListener("click", () => loadInbox(Math.max(0, st.inboxMode === "history" ? st.inboxOffset - PAGE : 0)));
  $("inbox-older").addEventListener("click", () => loadInbox(st.inboxOffset + PAGE));
  $("inbox-delete").addEventListener("click", () => deleteIds(selected($("inbox-list"))));
  $("read-form").addEventListener("submit", e => { e.preventDefault(); readUnread(Number($("read-n").value) || 0); });
  $("users-form").addEventListener("submit", e => {
    e.preventDefault();
    st.usersPattern = $("users-pattern").value.trim();
    loadUsers(0);
  });
  $("users-prev").addEventListener("click", () => loadUsers(Math.max(0, st.usersOffset - PAGE)));
  $("users-next").addEventListener("click", () => loadUsers(st.usersOffset + PAGE));
  $("compose-form").addEventListener("submit", async e => {
    e.preventDefault();
    const to = $("compose-to").value.trim();
    if (await send(to, $("compose-body").value)) {
      $("compose-body").value = "";
      openConvo(to);
    }
  });
  $("convo-form").addEventListener("submit", async e => {
    e.preventDefault();
    const body = $("convo-body").value;
    if (!body) return;
    $("convo-body").value = "";
    if (!(await send(st.peer, body))) $("convo-body").value = body;
  });
  $("convo-body").addEventListener("keydown", e => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("convo-form").requestSubmit();
    }
  });
  $("convo-older").addEventListener("click", () => loadConvo(st.convoOffset + PAGE));
  $("convo-delete").addEventListener("click", () => deleteIds(selected($("convo-list"))));
  $("convo-back").addEventListener("click", () => { show("inbox"); loadInbox(0); });
  document.addEventListener("keydown", e => {
    if (e.key === "Escape" && st.view === "convo") { show("inbox"); loadInbox(0); }
  });
  const dlg = $("delacct-dialog");
  $("delacct").addEventListener("click", () => { $("delacct-pass").value = ""; dlg.showModal(); });
  $("delacct-cancel").addEventListener("click", () => dlg.close());
  $("delacct-form").addEventListener("submit", async e => {
    e.preventDefault();
    const password = $("delacct-pass").value;
    const r = await req("delete_account", { password }, "delete account");
    $("delacct-pass").value = "";
    if (!r) return;
    dlg.close();
    clearSession();
    showLogin();
    notice("Your account was deleted");
  });
}

wire();
if (st.token) {
  // A reload: the session is still this tab's. onOpen subscribes after
  // the last id seen and the inbox reloads.
  showMain();
  conn.start().then(() => loadInbox(0));
} else {
  showLogin();
  conn.start();
}
