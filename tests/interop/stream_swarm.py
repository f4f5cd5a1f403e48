"""Many live SubscribeToMessages streams from one process, on the official
gRPC Python runtime's asyncio API (one event loop, no thread per stream),
for test_interop.py's scale test and tools/bench.sh's grpcstreams figure.

  python3 stream_swarm.py STUB_DIR PORT PASSWORD STREAMS_PER_CHANNEL USER...

Each USER gets its own channel (its own TCP connection, so its own session,
as the prototype's clients have), logs in on it, and opens
STREAMS_PER_CHANNEL streams on it. Then, on stdout:

  ready STREAMS SECONDS          every stream accepted (response headers in)
  fail setup REASON              a login or a stream failed (then it exits 1)

and on each stdin line "expect K TIMEOUT" it waits until every stream has
received K notifications in all, each "swarm K <user>" from the sender
"swarm-sender" and addressed to the channel's user, and answers

  ok K SECONDS                   all arrived, SECONDS after the line came
  fail K REASON                  a wrong notification, a stream that ended,
                                 or TIMEOUT passed (REASON says which)

"quit" (or end of input) closes every channel and exits (1, after "fail quit
...", if they do not close within 30 s).
"""
import asyncio
import os
import sys
import time

STUB_DIR, PORT, PASSWORD, PER_CHANNEL = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
USERS = sys.argv[5:]
sys.path.insert(0, STUB_DIR)
import grpc  # noqa: E402
import chat_pb2 as pb  # noqa: E402
import chat_pb2_grpc as rpc  # noqa: E402


def say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


class Swarm:
    def __init__(self):
        self.channels = []
        self.counts = []      # notifications per stream
        self.problems = []    # wrong notifications and ended streams
        self.changed = asyncio.Event()

    async def open_user(self, user):
        # A channel of its own: gRPC otherwise shares one connection between
        # channels to the same target, and sessions belong to connections.
        ch = grpc.aio.insecure_channel("127.0.0.1:%d" % PORT,
                                       options=[("grpc.use_local_subchannel_pool", 1)])
        self.channels.append(ch)
        stub = rpc.ChatServiceStub(ch)
        r = await stub.Login(pb.LoginRequest(username=user, password=PASSWORD), timeout=60)
        if r.HasField("error"):
            raise RuntimeError("login %s: %s" % (user, r.error))
        calls = [stub.SubscribeToMessages(pb.SubscribeRequest()) for _ in range(PER_CHANNEL)]
        # The server sends the response headers once it accepted the stream.
        await asyncio.gather(*(c.initial_metadata() for c in calls))
        return [(user, c) for c in calls]

    async def read(self, i, user, call):
        want = "to " + user
        try:
            async for n in call:
                m = n.message
                if m.sender != "swarm-sender" or not m.content.endswith(want):
                    self.problems.append("stream %d of %s got %r from %r" % (i, user, m.content, m.sender))
                self.counts[i] += 1
                self.changed.set()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.problems.append("stream %d of %s ended: %s %s" % (i, user, e.code(), e.details()))
                self.changed.set()

    async def expect(self, k, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.problems:
                return "problem: " + "; ".join(self.problems[:3])
            low = min(self.counts)
            if low >= k:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                lagging = sum(1 for c in self.counts if c < k)
                return "timeout: %d streams below %d (lowest %d)" % (lagging, k, low)
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
            except asyncio.TimeoutError:
                pass


async def main():
    sw = Swarm()
    t0 = time.monotonic()
    # A few logins at a time: each costs an Argon2id check on the server.
    streams = []
    try:
        for i in range(0, len(USERS), 16):
            for got in await asyncio.gather(*(sw.open_user(u) for u in USERS[i:i + 16])):
                streams.extend(got)
    except (grpc.RpcError, RuntimeError) as e:
        # Say why at once; closing channels with calls pending can hang.
        say("fail setup", str(e).replace("\n", " ")[:300])
        os._exit(1)
    sw.counts = [0] * len(streams)
    readers = [asyncio.ensure_future(sw.read(i, u, c)) for i, (u, c) in enumerate(streams)]
    say("ready", len(streams), "%.2f" % (time.monotonic() - t0))

    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        if line[0] == "expect":
            k, timeout = int(line[1]), float(line[2])
            t1 = time.monotonic()
            why = await sw.expect(k, timeout)
            if why:
                say("fail", k, why)
            else:
                say("ok", k, "%.3f" % (time.monotonic() - t1))
    for _, c in streams:
        c.cancel()
    try:
        await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), 30)
        await asyncio.wait_for(asyncio.gather(*(ch.close() for ch in sw.channels)), 30)
    except asyncio.TimeoutError:
        say("fail quit: the streams or channels did not close within 30 s")
        os._exit(1)
    # Every stream and channel is closed: leave without asyncio.run's own
    # shutdown. With many calls just cancelled, the gRPC runtime's poller
    # thread can block writing to its wake-up socket after the loop stopped
    # reading it, and asyncio.run then waits forever to join it (grpc/grpc
    # PR 40989; Debian's python3-grpcio predates the fix). A CI run saw one
    # swarm of four hang there.
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
