// web/conn.js — the browser's connection to a parley cluster over the ws
// transport: one WebSocket at a time, requests matched to answers by rid,
// pushes handed to the app, and failover handled here.
//
// Where it connects: the server named by a NOT_PRIMARY answer's leader
// first (mapped to its WebSocket URL through /cluster.json), else the
// primary /cluster.json named, else each server in turn, and the page's own
// origin last (behind a reverse proxy that is the only reachable one).
//
// Exactly once, as libparley does it: the page has a random 64-bit client
// id (cid) and numbers its mutating requests (rno). A request is resent
// unchanged — same rid, cid and rno — after a reconnect, a NOT_PRIMARY or an
// UNAVAILABLE, so the cluster's client table answers a retry of something
// already done from its record instead of doing it twice. The table keeps
// one request per client, so mutating requests go one at a time: the next
// leaves only once the previous one has its answer. cid and the last rno
// live in sessionStorage, so a reload goes on numbering where it stopped.

const MUTATING = new Set(["register", "logout", "send", "read", "ack", "delete",
                          "delete_account"]);
const NOT_PRIMARY = 23;
const UNAVAILABLE = 24;
const HEARTBEAT_MS = 5000;      // a ping when nothing else is in flight
const ANSWER_MS = 4000;         // an answer later than this: try another server
const BACKOFF_MS = [100, 250, 500, 1000, 2000];

function randomCid() {
  const a = new BigUint64Array(1);
  // Never 0 (no exactly-once) nor with the top 16 bits set (reserved for
  // imports: servers refuse those ids).
  do { crypto.getRandomValues(a); } while (a[0] === 0n || (a[0] >> 48n) === 0xffffn);
  return a[0].toString();    // above 2^53: a decimal string on the wire
}

export class Conn {
  // onPush(msg), onState({state, server}), onOpen() after every (re)connect.
  constructor({ onPush, onState, onOpen }) {
    this.onPush = onPush;
    this.onState = onState;
    this.onOpen = onOpen;
    this.ws = null;
    this.open = false;
    this.servers = [];          // [{url, address}] from /cluster.json
    this.primaryUrl = null;
    this.leaderUrl = null;      // from the last NOT_PRIMARY
    this.next = 0;              // rotation index
    this.failures = 0;
    this.rid = 1;
    this.pending = new Map();   // rid -> {req, resolve, reject, sentAt}
    this.mutations = [];        // queued mutating requests, one in flight
    this.mutating = null;
    this.cid = sessionStorage.getItem("parley.cid") || randomCid();
    sessionStorage.setItem("parley.cid", this.cid);
    this.rno = Number(sessionStorage.getItem("parley.rno") || "0");
    this.server = "";
    this.timer = setInterval(() => this.tick(), 1000);
    this.lastAnswer = Date.now();
    this.pinging = false;
  }

  async loadCluster() {
    try {
      const r = await fetch("/cluster.json", { cache: "no-store", credentials: "omit" });
      const doc = await r.json();
      this.servers = (doc.servers || []).filter(s => s.url).map(s => ({ url: s.url, address: s.address }));
      const p = doc.primary;
      this.primaryUrl = (p !== null && p !== undefined && doc.servers[p]) ? doc.servers[p].url : null;
    } catch (e) {
      this.servers = [];
    }
  }

  ownUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  }

  candidates() {
    const list = [];
    const add = u => { if (u && !list.includes(u)) list.push(u); };
    add(this.primaryUrl);
    this.servers.forEach(s => add(s.url));
    add(this.ownUrl());
    return list;
  }

  async start() {
    await this.loadCluster();
    this.connect();
  }

  connect() {
    let url;
    if (this.leaderUrl) {
      url = this.leaderUrl;
      this.leaderUrl = null;
    } else {
      const c = this.candidates();
      url = c[this.next % c.length];
    }
    this.server = url;
    this.onState({ state: this.failures ? "reconnecting" : "connecting", server: url });
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.open = true;
      this.failures = 0;
      this.lastAnswer = Date.now();
      this.onState({ state: "connected", server: url });
      // Everything still owed an answer goes again, unchanged.
      for (const p of this.pending.values()) this.transmit(p);
      this.onOpen();
    };
    ws.onmessage = ev => { if (ws === this.ws) this.receive(ev.data); };
    ws.onclose = () => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.open = false;
      this.next++;
      this.scheduleReconnect();
    };
    ws.onerror = () => {};
  }

  scheduleReconnect() {
    const d = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)];
    this.failures++;
    this.onState({ state: "reconnecting", server: this.server });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(), d);
  }

  // Drop this server and try another (a silent one, or a backup).
  switchServer() {
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      this.open = false;
      ws.onclose = null;
      ws.close();
      this.next++;
      this.scheduleReconnect();
    }
  }

  transmit(p) {
    if (!this.open || !this.ws) return;
    p.sentAt = Date.now();
    this.ws.send(JSON.stringify(p.req));
  }

  receive(text) {
    let m;
    try { m = JSON.parse(text); } catch (e) { return; }
    this.lastAnswer = Date.now();
    if (m.m === "push") {
      if (m.msg) this.onPush(m.msg);
      return;
    }
    const p = this.pending.get(m.rid);
    if (!p) {
      if (m.m === "none" && m.error) this.onState({ state: "error", server: this.server, error: m.error });
      return;
    }
    if (m.status === NOT_PRIMARY) {
      const s = this.servers.find(x => x.address === m.leader);
      this.leaderUrl = s ? s.url : null;
      this.switchServer();
      return;
    }
    if (m.status === UNAVAILABLE) {
      setTimeout(() => this.transmit(p), 300);
      return;
    }
    this.pending.delete(m.rid);
    p.resolve(m);
  }

  tick() {
    const now = Date.now();
    if (this.open) {
      // An answer overdue: this server is stuck (or a deposed primary); go on.
      for (const p of this.pending.values())
        if (p.sentAt && now - p.sentAt > ANSWER_MS) { this.switchServer(); return; }
      if (!this.pinging && now - this.lastAnswer > HEARTBEAT_MS) {
        this.pinging = true;
        this.call("ping", {}).finally(() => { this.pinging = false; });
      }
    }
  }

  // A request; resolves with the answer object (any status).
  call(method, fields) {
    if (MUTATING.has(method)) {
      return new Promise((resolve, reject) => {
        this.mutations.push({ method, fields, resolve, reject });
        this.pumpMutations();
      });
    }
    return this.issue({ m: method, rid: this.rid++, ...fields });
  }

  issue(req) {
    return new Promise((resolve, reject) => {
      const p = { req, resolve, reject, sentAt: 0 };
      this.pending.set(req.rid, p);
      this.transmit(p);
    });
  }

  pumpMutations() {
    if (this.mutating || this.mutations.length === 0) return;
    const q = this.mutations.shift();
    this.mutating = q;
    this.rno++;
    sessionStorage.setItem("parley.rno", String(this.rno));
    const req = { m: q.method, rid: this.rid++, cid: this.cid, rno: this.rno, ...q.fields };
    this.issue(req).then(r => {
      this.mutating = null;
      q.resolve(r);
      this.pumpMutations();
    });
  }
}
