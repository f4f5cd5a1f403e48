"""The Python prototype's client logic (chat_system/client/client.py of the
prototype, GUI aside), as issue 18 describes it, for tests/interop:

  - discovery: close the current channel, then call Health (no deadline)
    on every configured server in config order except the current leader,
    and take the first that answers OK; re-login there as the user who was
    logged in. If none answers OK it says "Failed to discover leader" and
    leaves the stub of the closed channel in place;
  - every call is tried three times; UNAVAILABLE or PERMISSION_DENIED
    "Not leader ..." runs discovery before the next try, and the next try
    uses self.stub whatever discovery did (after a failed discovery that is
    the closed channel's: ValueError "Cannot invoke RPC on closed channel!",
    the crash issue 18 reports);
  - a subscribe thread that re-runs discovery whenever its stream ends with
    an error, and subscribes again on self.stub.

Two departures, both so that a test process can stand in for several
prototype processes, and neither hiding a server's fault:
  - channels use their own TCP connection (grpc.use_local_subchannel_pool):
    gRPC Python otherwise shares one connection between channels to the
    same address in one process, and parley binds a session to a
    connection, as the prototype bound it to a peer address;
  - discovery is serialised by a lock that a call also takes to pick up
    the current stub (so no call starts on the channel a discovery in the
    other thread has just closed), and a thread whose failed channel was
    already replaced by the other thread's discovery uses the new one
    instead of discovering again; a call cancelled because that discovery
    closed its channel is tried again (the prototype's two threads raced
    there).

Anything raised inside the subscribe thread is kept in self.errors; a call
that fails three times raises to its caller. A test asserts neither happens.
"""
import threading
import time

import grpc


def retryable(e):
    return e.code() == grpc.StatusCode.UNAVAILABLE or (
        e.code() == grpc.StatusCode.PERMISSION_DENIED and (e.details() or "").startswith("Not leader"))


class PrototypeClient:
    TRIES = 3

    def __init__(self, pb, rpc, ports, name="client"):
        self.pb, self.rpc = pb, rpc
        self.servers = [("127.0.0.1", p) for p in ports]
        self.name = name
        self.leader = None
        self.channel = None
        self.stub = None
        self.gen = 0                # bumped by every successful discovery
        self.lock = threading.Lock()
        self.username = self.password = None
        self.got = []               # MessageNotification.message, in order
        self.errors = []            # what escaped the subscribe thread
        self.discoveries = []       # (seconds taken, leader or None, [(server, seconds, outcome)])
        self.stopped = False
        self.sub_call = None
        self.sub_thread = None

    # ---- discovery ----
    def _channel(self, addr):
        return grpc.insecure_channel("%s:%d" % addr, options=[("grpc.use_local_subchannel_pool", 1)])

    def discover_leader(self, failed_gen=None):
        with self.lock:
            if failed_gen is not None and failed_gen != self.gen:
                return True  # the other thread found the leader meanwhile
            t0 = time.monotonic()
            tries = []
            if self.channel is not None:
                self.channel.close()
            for addr in self.servers:
                if addr == self.leader:
                    continue
                ch = self._channel(addr)
                stub = self.rpc.ChatServiceStub(ch)
                t1 = time.monotonic()
                try:
                    stub.Health(self.pb.Empty())  # no deadline, as the prototype
                except grpc.RpcError as e:
                    tries.append((addr[1], time.monotonic() - t1, "%s %s" % (e.code().name, e.details())))
                    ch.close()
                    continue
                tries.append((addr[1], time.monotonic() - t1, "OK"))
                self.channel, self.stub, self.leader = ch, stub, addr
                self.gen += 1
                if self.username is not None:
                    r = self.stub.Login(self.pb.LoginRequest(username=self.username,
                                                             password=self.password))
                    if r.error:
                        raise AssertionError("%s: re-login failed: %s" % (self.name, r.error))
                self.discoveries.append((time.monotonic() - t0, addr[1], tries))
                return True
            self.discoveries.append((time.monotonic() - t0, None, tries))
            print("%s: Failed to discover leader" % self.name, flush=True)
            return False

    def start(self):
        """Connect (discovery over every server) and start the subscribe thread."""
        if not self.discover_leader():
            raise AssertionError("%s: no leader at start" % self.name)
        self.sub_thread = threading.Thread(target=self._receive_messages, daemon=True)
        self.sub_thread.start()
        return self

    # ---- calls: three tries each ----
    def call(self, method, req):
        for attempt in range(self.TRIES):
            with self.lock:  # not in the middle of the other thread's discovery
                stub, gen = self.stub, self.gen
            try:
                return getattr(stub, method)(req)
            except grpc.RpcError as e:
                if attempt == self.TRIES - 1:
                    raise
                if e.code() == grpc.StatusCode.CANCELLED:
                    # "Channel closed!": the other thread's discovery closed
                    # this channel under the call; wait for its new one.
                    with self.lock:
                        if gen != self.gen:
                            continue
                    raise
                if not retryable(e):
                    raise
                self.discover_leader(gen)

    def create_account(self, username, password):
        return self.call("CreateAccount", self.pb.CreateAccountRequest(username=username, password=password))

    def login(self, username, password):
        r = self.call("Login", self.pb.LoginRequest(username=username, password=password))
        if not r.error:
            self.username, self.password = username, password
        return r

    def send(self, to, body):
        return self.call("SendMessage", self.pb.SendMessageRequest(receiver=to, content=body))

    def pop_unread(self):
        return list(self.call("PopUnreadMessages", self.pb.PopUnreadMessagesRequest(num_messages=0)).messages)

    def read_messages(self):
        return list(self.call("GetReadMessages",
                              self.pb.GetReadMessagesRequest(offset=0, num_messages=1000)).messages)

    # ---- the subscribe loop ----
    def _receive_messages(self):
        while not self.stopped:
            with self.lock:
                stub, gen = self.stub, self.gen
            try:
                self.sub_call = stub.SubscribeToMessages(self.pb.SubscribeRequest())
                for n in self.sub_call:
                    self.got.append(n.message)
            except grpc.RpcError:
                if self.stopped:
                    break
                try:
                    self.discover_leader(gen)
                except Exception as x:  # noqa: BLE001 - the test reports whatever it was
                    self.errors.append(x)
                    return
            except Exception as x:  # noqa: BLE001 - e.g. ValueError on a closed channel
                self.errors.append(x)
                return

    def close(self):
        self.stopped = True
        if self.sub_call is not None:
            self.sub_call.cancel()
        if self.sub_thread is not None:
            self.sub_thread.join(10)
        if self.channel is not None:
            self.channel.close()
