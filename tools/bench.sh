#!/usr/bin/env bash
# tools/bench.sh — reproduce the figures in docs/performance.md, one command each.
#
#   tools/bench.sh [-B BUILD_DIR] [-r RUNS] [-d SECONDS] [-g DELAY_US] [-n] FIGURE...
#
# FIGURE is one of
#   fsync      the disk's durable append rate (tools/fsync-rate.py)
#   redis      the reference: Redis with appendonly yes, appendfsync always
#              (it fsyncs before it answers), redis-benchmark -t set -d 100
#              with 64 connections, one request in flight each, then 32
#              (pipelined): the same load shape as send1 (needs
#              redis-server and redis-tools)
#   send1      1 server, 64 connections, acknowledged sends (body 100 bytes):
#              one request in flight per connection, then 32 (pipelined)
#   send3      the same against 3 servers
#   deliver3   3 servers, offered 10,000 sends/s, send -> push latency
#   deliver1   the same against 1 server
#   listen10k  1 server, 10,000 logged-in listening connections, then send1
#              (1 and 32 in flight) and a 10,000 sends/s deliver run with them
#              connected; parleyd RSS
#   restart    1 server with 1,000,000 stored messages: restart until it answers
#   json       send1 and deliver1 with the JSON-file store
#   wire       bytes per frame in every wire format
#   wires      send1 in each wire format: tcp/binary, tcp/json, grpcish, grpc
#              (runs interleaved, so machine load drifts over all alike); then
#              the same on the JSON-file store, where the disk weighs less
#   grpc10k    listen10k over the grpc transport (parley-bench's own gRPC
#              client), then 10,000 SubscribeToMessages streams of the
#              official gRPC Python runtime on 10,000 connections
#              (tests/interop ManyStreams; needs python3-grpcio, protoc)
#   redis1     redis, then send1, run by run (redis r, send1 r, redis r+1,
#              ...), so both see the same machine; parley/Redis ratios
#   redis3     the same with send3
#   all        every figure above
# Each throughput figure runs RUNS times (default 3) on fresh servers and
# prints every run and the median. Output: one "FIGURE: ..." summary line per
# figure on stdout; every JSON document is kept in $OUT (default
# ./bench-results).
#
# -g DELAY_US runs the servers with "group_commit": {"delay_us": DELAY_US}
# (docs/operations.md; without -g, parleyd's default: 1000; -g 0 turns the
# delay off). -n runs them with "store": {"sync": false}: nothing is
# durable, so it is never a figure to quote, only the bound with the disk
# taken out (docs/performance.md, round 9).
#
# Servers run the SQLite store with syncs on, tcp/binary, Argon2id at its
# minimum cost (only bench setup logs in) and the per-address and
# per-connection limits off (the bench is one address with many connections).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build="$here/build"
runs=3
dur=10
group_commit=""
store_sync=true
while getopts "B:r:d:g:nh" o; do
    case $o in
    B) build=$(cd "$OPTARG" && pwd) ;;
    r) runs=$OPTARG ;;
    d) dur=$OPTARG ;;
    g) group_commit=",\"group_commit\":{\"delay_us\":$OPTARG}" ;;
    n) store_sync=false ;;
    *) sed -n '2,48p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { sed -n '2,48p' "$0"; exit 2; }
parleyd="$build/core/parleyd"
bench="$build/client/parley-bench"
for f in "$parleyd" "$bench"; do
    [ -x "$f" ] || { echo "bench.sh: $f missing: meson compile -C $build" >&2; exit 1; }
done
out=${OUT:-$PWD/bench-results}
mkdir -p "$out"
work=$(mktemp -d /tmp/parley-bench.XXXXXX)
pids=()
pid_args=()   # --pid for every server: the bench reports each one's RSS and CPU
# parleyd and the bench each need a descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cleanup() {
    for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Below Linux's ephemeral range (32768-60999 by default), with room for the
# peer ports (port + 1000): a client socket of any process on the machine
# could otherwise hold a port a server is about to listen on.
base_port=$((20000 + RANDOM % 10000))
# The "transport" value of the configs written (JSON); the wires and grpc10k
# figures change it.
transport='"tcp"'

# write_config N STORE FILE: N servers on consecutive ports.
write_config() {
    local n=$1 store=$2 file=$3 servers="" i
    for ((i = 0; i < n; i++)); do
        servers+="${servers:+,}{\"host\":\"127.0.0.1\",\"port\":$((base_port + i))}"
    done
    cat >"$file" <<EOF
{"servers":[${servers}],
 "transport":${transport},
 "store":{"name":"${store}","sync":${store_sync}},
 "password_hash":{"opslimit":1,"memlimit":8192},
 "limits":{"conns_per_address":0,"requests_per_second":0},
 "log_level":"warn"${group_commit}}
EOF
}

# start_servers N STORE: fresh data directories; sets $cfg and pids.
start_servers() {
    local n=$1 store=$2 i
    stop_servers
    base_port=$((base_port + 10))
    cfg="$work/parley-$n-$store.json"
    write_config "$n" "$store" "$cfg"
    rm -rf "$work/data"
    for ((i = 0; i < n; i++)); do
        "$parleyd" "$cfg" "$i" "$work/data/s$i" 2>>"$work/s$i.log" &
        pids+=($!)
    done
    pid_args=()
    for ((i = 0; i < n; i++)); do pid_args+=(--pid "${pids[i]}"); done
    for ((i = 0; i < n; i++)); do
        local t=0
        until (exec 3<>/dev/tcp/127.0.0.1/$((base_port + i))) 2>/dev/null; do
            sleep 0.05
            t=$((t + 1))
            [ $t -lt 400 ] || { echo "bench.sh: server $i did not start:" >&2; tail "$work/s$i.log" >&2; exit 1; }
        done
    done
}

stop_servers() {
    for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
    pids=()
    pid_args=()
}

# median FIELD FILES...: the median of a dotted JSON field over the files.
median() {
    python3 - "$@" <<'EOF'
import json, statistics, sys
field, files = sys.argv[1], sys.argv[2:]
vals = []
for f in files:
    d = json.load(open(f))
    for k in field.split("/"):
        d = d[k]
    vals.append(d)
print("%.3f" % statistics.median(vals), " ".join("%.3f" % v for v in vals))
EOF
}

# run_figure NAME SERVERS STORE BENCH_ARGS...: RUNS runs on fresh servers.
run_figure() {
    local name=$1 n=$2 store=$3 r files=()
    shift 3
    for ((r = 1; r <= runs; r++)); do
        start_servers "$n" "$store"
        "$bench" -c "$cfg" -d "$dur" --warmup 2 -q "${pid_args[@]}" "$@" >"$out/$name-$r.json"
        files+=("$out/$name-$r.json")
        stop_servers
    done
    local ops p99 push
    ops=$(median throughput/ops_per_s "${files[@]}")
    p99=$(median latency_ms/request/p99 "${files[@]}")
    echo "$name: ops/s median ${ops%% *} (runs: ${ops#* }); request p99 ms median ${p99%% *} (runs: ${p99#* })$(cpu_note "${files[@]}")"
    if grep -q send_to_push "${files[0]}"; then
        push=$(median latency_ms/send_to_push/p99 "${files[@]}")
        echo "$name: send->push p99 ms median ${push%% *} (runs: ${push#* })"
    fi
}

fig_fsync() { python3 "$here/tools/fsync-rate.py" "$work" | tee "$out/fsync.json" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print("fsync: %s small appends+fdatasync/s (p50 %s ms), %s 64 KiB appends/s" % (d["small"]["syncs_per_s"], d["small"]["p50_ms"], d["batch_64k"]["syncs_per_s"]))'; }
# redis_run NAME PIPELINE: one redis-benchmark run on a fresh Redis.
redis_run() {
    local name=$1 pipe=$2 port dir n
    port=$((base_port + 500))
    base_port=$((base_port + 10))
    dir="$work/redis"
    rm -rf "$dir"
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
        --appendfsync always --save "" --logfile "$work/redis.log" &
    local rpid=$!
    local t=0
    until redis-cli -p "$port" ping >/dev/null 2>&1; do
        sleep 0.05
        t=$((t + 1))
        [ $t -lt 200 ] || { echo "bench.sh: redis-server did not start" >&2; tail "$work/redis.log" >&2; exit 1; }
    done
    # about $dur seconds of requests at the rates seen here (55k/s, 500k/s)
    n=$((dur * (pipe > 1 ? 400000 : 55000)))
    # redis-benchmark runs under python, which reads the CPU time both
    # processes used (redis-server's from /proc, over the run).
    python3 - "$port" "$pipe" "$n" "$rpid" >"$out/$name.json" <<'EOF'
import csv, io, json, os, resource, subprocess, sys, time
port, pipe, n, rpid = sys.argv[1:]
hz = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    f = open("/proc/%s/stat" % pid).read()
    v = f[f.rindex(")") + 2:].split()
    return (int(v[11]) + int(v[12])) / hz
c0, t0 = cpu(rpid), time.monotonic()
out = subprocess.run(["redis-benchmark", "-p", port, "-t", "set", "-c", "64", "-d", "100",
                      "-P", pipe, "-n", n, "--csv"], stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True, check=True).stdout
c1, t1 = cpu(rpid), time.monotonic()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
r = list(csv.DictReader(io.StringIO(out)))[-1]
ops = float(r["rps"])
def entry(name, secs):
    return {"process": name, "cores": secs / (t1 - t0), "us_per_op": secs * 1e6 / int(n)}
print(json.dumps({"tool": "redis-benchmark", "throughput": {"ops_per_s": ops},
                  "latency_ms": {"request": {"p50": float(r["p50_latency_ms"]),
                                             "p99": float(r["p99_latency_ms"])}},
                  "cpu": [entry("redis-benchmark", ru.ru_utime + ru.ru_stime),
                          dict(entry("redis-server", c1 - c0), pid=int(rpid))]}))
EOF
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || kill "$rpid" 2>/dev/null || true
    wait "$rpid" 2>/dev/null || true
}

need_redis() {
    command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null ||
        { echo "bench.sh: the redis figures need redis-server and redis-benchmark (apt-get install redis-server)" >&2; exit 1; }
}

# summary NAME FILES...: ops/s, p50 and p99 medians of a figure's runs.
summary() {
    local name=$1 ops p50 p99
    shift
    ops=$(median throughput/ops_per_s "$@")
    p50=$(median latency_ms/request/p50 "$@")
    p99=$(median latency_ms/request/p99 "$@")
    echo "$name: ops/s median ${ops%% *} (runs: ${ops#* }); request p50 ms median ${p50%% *}; p99 ms median ${p99%% *}$(cpu_note "$@")"
}

# cpu_note FILES...: "; server CPU us/op median X (runs: ...)": the CPU
# time of every server process (parleyd or redis-server) over the window,
# per operation; empty when the files have no CPU figures.
cpu_note() {
    python3 - "$@" <<'EOF'
import json, statistics, sys
v = []
for f in sys.argv[1:]:
    c = [e["us_per_op"] for e in json.load(open(f)).get("cpu", []) if "pid" in e]
    if c:
        v.append(sum(c))
if v:
    print("; server CPU us/op median %.1f (runs: %s)" % (statistics.median(v), " ".join("%.1f" % x for x in v)), end="")
EOF
}

# ratio A_FILES... B_FILES...: the median of the per-run ratios of ops/s
# (A run r over B run r; both lists equally long).
ratio() {
    python3 -c '
import json, statistics, sys
f = sys.argv[1:]
h = len(f) // 2
r = [json.load(open(a))["throughput"]["ops_per_s"] / json.load(open(b))["throughput"]["ops_per_s"]
     for a, b in zip(f[:h], f[h:])]
print("%.2f" % statistics.median(r), " ".join("%.2f" % v for v in r))' "$@"
}

fig_redis() {
    need_redis
    local r f1=() f32=()
    for ((r = 1; r <= runs; r++)); do
        redis_run "redis-$r" 1
        redis_run "redis-p32-$r" 32
        f1+=("$out/redis-$r.json")
        f32+=("$out/redis-p32-$r.json")
    done
    summary redis "${f1[@]}"
    summary redis-p32 "${f32[@]}"
}

# redis_vs N: Redis and parley on N servers, alternating run by run.
redis_vs() {
    need_redis
    local n=$1 r q q32 rf=() pf=() rf32=() pf32=()
    for ((r = 1; r <= runs; r++)); do
        redis_run "redis-$r" 1
        start_servers "$n" sqlite
        "$bench" -c "$cfg" -d "$dur" --warmup 2 -q -n 64 -w send "${pid_args[@]}" >"$out/vs-send$n-$r.json"
        stop_servers
        redis_run "redis-p32-$r" 32
        start_servers "$n" sqlite
        "$bench" -c "$cfg" -d "$dur" --warmup 2 -q -n 64 -p 32 -w send "${pid_args[@]}" \
            >"$out/vs-send$n-p32-$r.json"
        stop_servers
        rf+=("$out/redis-$r.json")
        pf+=("$out/vs-send$n-$r.json")
        rf32+=("$out/redis-p32-$r.json")
        pf32+=("$out/vs-send$n-p32-$r.json")
    done
    summary redis "${rf[@]}"
    summary "send$n" "${pf[@]}"
    q=$(ratio "${pf[@]}" "${rf[@]}")
    echo "send$n/redis: ratio median ${q%% *} (runs: ${q#* })"
    summary redis-p32 "${rf32[@]}"
    summary "send$n-p32" "${pf32[@]}"
    q32=$(ratio "${pf32[@]}" "${rf32[@]}")
    echo "send$n-p32/redis-p32: ratio median ${q32%% *} (runs: ${q32#* })"
}
fig_redis1() { redis_vs 1; }
fig_redis3() { redis_vs 3; }

fig_send1() {
    run_figure send1 1 sqlite -n 64 -w send
    run_figure send1-p32 1 sqlite -n 64 -p 32 -w send
}
fig_send3() {
    run_figure send3 3 sqlite -n 64 -w send
    run_figure send3-p32 3 sqlite -n 64 -p 32 -w send
}
fig_deliver3() { run_figure deliver3 3 sqlite -n 64 -w deliver --rate 10000; }
fig_deliver1() { run_figure deliver1 1 sqlite -n 64 -w deliver --rate 10000; }
fig_json() {
    run_figure json-send1 1 json -n 64 -w send
    run_figure json-deliver1 1 json -n 64 -w deliver --rate 5000
}
# wires_on STORE: send1 per wire format, run r of every format before run r+1.
wires_on() {
    local store=$1 r w names=(tcp-binary tcp-json grpcish grpc)
    local -A tj=([tcp-binary]='{"name":"tcp","codec":"binary"}' [tcp-json]='{"name":"tcp","codec":"json"}'
                 [grpcish]='"grpcish"' [grpc]='"grpc"')
    for ((r = 1; r <= runs; r++)); do
        for w in "${names[@]}"; do
            transport=${tj[$w]}
            start_servers 1 "$store"
            "$bench" -c "$cfg" -d "$dur" --warmup 2 -q -n 64 -w send "${pid_args[@]}" \
                >"$out/wires-$store-$w-$r.json"
            stop_servers
        done
    done
    transport='"tcp"'
    for w in "${names[@]}"; do
        local files=() ops p50 p99 load
        for ((r = 1; r <= runs; r++)); do files+=("$out/wires-$store-$w-$r.json"); done
        ops=$(median throughput/ops_per_s "${files[@]}")
        p50=$(median latency_ms/request/p50 "${files[@]}")
        p99=$(median latency_ms/request/p99 "${files[@]}")
        load=$(python3 -c 'import json,sys; print(" ".join("%.1f" % json.load(open(f))["host"]["loadavg"][0] for f in sys.argv[1:]))' "${files[@]}")
        echo "wires $store $w: ops/s median ${ops%% *} (runs: ${ops#* }); request p50 ms median ${p50%% *}; p99 ms median ${p99%% *}; 1-min load average: $load"
    done
}
fig_wires() { wires_on sqlite; wires_on json; }

fig_grpc10k() {
    transport='"grpc"'
    fig_listen10k grpc10k
    transport='"tcp"'
    # The interop test starts its own server; its figure line is on stderr.
    PARLEY_INTEROP_CHANNELS=2500 PARLEY_INTEROP_STREAMS=10000 /usr/bin/python3 \
        "$here/tests/interop/test_interop.py" "$parleyd" "$build/client/parley" \
        "$here/proto/chat.proto" ManyStreams >"$out/grpcstreams.txt" 2>&1 ||
        { cat "$out/grpcstreams.txt" >&2; exit 1; }
    grep -o 'grpcstreams: .*' "$out/grpcstreams.txt"
}

fig_wire() { "$bench" --wire-sizes | tee "$out/wire-sizes.txt"; }

fig_listen10k() {
    local r files=() pfiles=() dfiles=() l10k=${1:-listen10k}
    for ((r = 1; r <= runs; r++)); do
        start_servers 1 sqlite
        # 10,064 users: listener j is user j, so a send pushes to one listener.
        "$bench" -c "$cfg" -d "$dur" --warmup 2 -q -n 64 -u 10064 -L 10000 -w send \
            "${pid_args[@]}" >"$out/$l10k-$r.json"
        "$bench" -c "$cfg" -d "$dur" --warmup 2 -q -n 64 -p 32 -u 10064 -L 10000 -w send \
            "${pid_args[@]}" >"$out/$l10k-p32-$r.json"
        "$bench" -c "$cfg" -d "$dur" --warmup 2 -q -n 64 -u 10064 -L 10000 -w deliver \
            --rate 10000 "${pid_args[@]}" >"$out/$l10k-deliver-$r.json"
        files+=("$out/$l10k-$r.json")
        pfiles+=("$out/$l10k-p32-$r.json")
        dfiles+=("$out/$l10k-deliver-$r.json")
        stop_servers
    done
    local ops pops rss push
    ops=$(median throughput/ops_per_s "${files[@]}")
    pops=$(median throughput/ops_per_s "${pfiles[@]}")
    push=$(median latency_ms/send_to_push/p99 "${dfiles[@]}")
    rss=$(python3 -c 'import json,sys; print(max(json.load(open(f))["rss_kib"][1]["peak"] for f in sys.argv[1:]) // 1024)' "${files[@]}" "${pfiles[@]}" "${dfiles[@]}")
    echo "$l10k: 10,000 listeners + 64 senders: ops/s median ${ops%% *} (runs: ${ops#* }); 32 in flight each: median ${pops%% *} (runs: ${pops#* }); parleyd peak RSS ${rss} MiB"
    echo "$l10k: with them connected, offered 10,000/s deliver: send->push p99 ms median ${push%% *} (runs: ${push#* })"
}

fig_restart() {
    local target=${RESTART_MESSAGES:-1000000}
    start_servers 1 sqlite
    # Load with many connections and deep pipelines (group commit does the rest).
    echo "restart: storing $target messages (this takes a while)..." >&2
    python3 - "$bench" "$cfg" "$target" "$out" <<'EOF'
import json, subprocess, sys
bench, cfg, target, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
stored = 0
while stored < target:
    p = subprocess.run([bench, "-c", cfg, "-n", "256", "-p", "8", "-u", "256", "-w", "send",
                        "-d", "10", "--warmup", "0", "-q"], stdout=subprocess.PIPE, check=True)
    d = json.loads(p.stdout)
    stored += d["throughput"]["ops"] + d["errors"]["unfinished"]
    print("restart: %d messages stored" % stored, file=sys.stderr)
EOF
    local size
    size=$(du -sm "$work/data/s0" | cut -f1)
    stop_servers
    local r times=()
    for ((r = 1; r <= runs; r++)); do
        local t0 t1
        t0=$(date +%s.%N)
        "$parleyd" "$cfg" 0 "$work/data/s0" 2>>"$work/s0.log" &
        pids+=($!)
        # Answered = a login and a list_users went through.
        "$bench" -c "$cfg" -n 1 -u 1 -w list -d 0.1 --warmup 0 -q --setup-timeout 120 >/dev/null
        t1=$(date +%s.%N)
        times+=("$(python3 -c "print('%.3f' % ($t1 - $t0))")")
        stop_servers
    done
    local med
    med=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (${#times[@]} + 1) / 2 ))p")
    echo "restart: ${target}+ messages (${size} MiB): start to first answer median ${med} s (runs: ${times[*]})"
}

for f in "$@"; do
    case $f in
    all) for g in fsync wire redis1 redis3 send1 send3 deliver3 deliver1 listen10k json restart wires grpc10k; do "fig_$g"; done ;;
    fsync | redis | redis1 | redis3 | send1 | send3 | deliver3 | deliver1 | listen10k | restart | json | wire | wires | grpc10k) "fig_$f" ;;
    *) echo "bench.sh: unknown figure \"$f\"" >&2; exit 2 ;;
    esac
done
