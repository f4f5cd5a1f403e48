#!/usr/bin/env bash
# tools/fault-soak.sh — run the fault suite (tests/fault/fault.py) on real
# servers, again and again with random seeds, for a given time.
#
#   tools/fault-soak.sh [-b BUILD_DIR] [-o OUT_DIR] [-d RUN_SECONDS] MINUTES
#
# Each run draws a fresh seed and takes the next of these shapes in turn:
#   3 servers, SQLite,          membership changes, compaction every 40 ops
#   5 servers, SQLite and JSON, membership changes, compaction every 40 ops
#   3 servers, JSON,            300 ms election timeout (pauses race views)
#   5 servers, JSON and SQLite, tcp/json wire format, membership changes
# and RUN_SECONDS (default 90) of faults and workload. A run's report goes to
# OUT_DIR (default ./fault-soak); a violation keeps its servers' logs there
# and its replay command is printed. Exit status 1 when any run found a
# violation.
set -euo pipefail

build=build
out=fault-soak
dur=90
while getopts b:o:d: opt; do
    case $opt in
    b) build=$OPTARG ;;
    o) out=$OPTARG ;;
    d) dur=$OPTARG ;;
    *) echo "usage: $0 [-b BUILD_DIR] [-o OUT_DIR] [-d RUN_SECONDS] MINUTES" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || { echo "usage: $0 [-b BUILD_DIR] [-o OUT_DIR] [-d RUN_SECONDS] MINUTES" >&2; exit 2; }
minutes=$1
here=$(cd "$(dirname "$0")/.." && pwd)
parleyd=$build/core/parleyd
parley=$build/client/parley
[ -x "$parleyd" ] && [ -x "$parley" ] || { echo "$0: build first (meson compile -C $build)" >&2; exit 2; }
mkdir -p "$out"

shapes=(
    "--servers 3 --store sqlite --membership --compact 40"
    "--servers 5 --store sqlite,json --membership --compact 40"
    "--servers 3 --store json --election-ms 300"
    "--servers 5 --store json,sqlite --membership --transport {\"name\":\"tcp\",\"codec\":\"json\"}"
)

commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?')
echo "fault-soak: $minutes min of ${dur}s runs, commit $commit, started $(date -u +%FT%TZ)"
deadline=$(( $(date +%s) + minutes * 60 ))
runs=0 bad=0 i=0
while [ "$(date +%s)" -lt "$deadline" ]; do
    shape=${shapes[$((i % ${#shapes[@]}))]}
    i=$((i + 1))
    seed=$(( $(od -An -N3 -tu4 /dev/urandom | tr -d ' ') ))
    report=$out/run-$i-seed-$seed.txt
    # shellcheck disable=SC2086 # the shape is a list of flags
    if /usr/bin/python3 "$here/tests/fault/fault.py" --parleyd "$parleyd" --parley "$parley" \
        --clients 3 --duration "$dur" --seed "$seed" --out "$out/logs-$i" $shape >"$report" 2>&1; then
        rm -rf "$out/logs-$i"
        result=ok
    else
        result="VIOLATION (exit $?)"
        bad=$((bad + 1))
    fi
    runs=$((runs + 1))
    printf '%s run %d seed %d: %s: %s\n' "$(date -u +%T)" "$i" "$seed" "$shape" "$result"
    if [ "$result" != ok ]; then
        grep -iE 'violation|replay|seed' "$report" | head -20 || true
        echo "  replay: /usr/bin/python3 tests/fault/fault.py --parleyd $parleyd --parley $parley --clients 3 --duration $dur --seed $seed $shape"
    fi
done
echo "fault-soak: $runs runs in $minutes min, $bad with violations, commit $commit, ended $(date -u +%FT%TZ)"
[ "$bad" -eq 0 ]
