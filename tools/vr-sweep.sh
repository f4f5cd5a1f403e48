#!/usr/bin/env bash
# tools/vr-sweep.sh — run the VR simulation (tests/unit/test_vr.c) on many
# fresh seeds, spread over every randomized case and every core.
#
#   tools/vr-sweep.sh [-b BUILD_DIR] [-j JOBS] [-s BASE] [-c CHUNK] [-m MIX] TOTAL
#
# TOTAL seeds are split evenly over the cases random3, random5, random-even
# and membership; each case runs seeds BASE .. BASE + TOTAL/4 - 1 (BASE is
# drawn from the clock unless given) with the swarm fault mix (-m classic
# for the old fixed mix), in chunks of CHUNK seeds (default 5000), JOBS
# processes at a time (default: the number of cores). A failing seed is
# reported with the command that replays it and the chunk carries on from
# the next seed. Exit status 1 when any seed failed.
set -euo pipefail

build=build
jobs=$(nproc 2>/dev/null || echo 2)
base=""
chunk=5000
mix=swarm
while getopts b:j:s:c:m: opt; do
    case $opt in
    b) build=$OPTARG ;;
    j) jobs=$OPTARG ;;
    s) base=$OPTARG ;;
    c) chunk=$OPTARG ;;
    m) mix=$OPTARG ;;
    *) echo "usage: $0 [-b BUILD_DIR] [-j JOBS] [-s BASE] [-c CHUNK] [-m MIX] TOTAL" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || { echo "usage: $0 [-b BUILD_DIR] [-j JOBS] [-s BASE] [-c CHUNK] [-m MIX] TOTAL" >&2; exit 2; }
total=$1
bin=$build/tests/unit/test-vr
[ -x "$bin" ] || { echo "$0: $bin not built (meson compile -C $build)" >&2; exit 2; }
if [ -z "$base" ]; then
    base=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
fi
per_case=$((total / 4))
out=$(mktemp -d "${TMPDIR:-/tmp}/vr-sweep.XXXXXX")
trap 'rm -rf "$out"' EXIT

echo "vr-sweep: $total seeds ($per_case per case) from base $base, mix $mix, $jobs jobs, $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
start=$(date +%s)

# One chunk: case, first seed, count. Runs the seeds one after another;
# after a failure, goes on from the seed after it.
run_chunk() {
    c=$1 first=$2 n=$3
    end=$(( (first + n) % 4294967296 ))
    log=$out/$c.$first
    while [ "$n" -gt 0 ]; do
        if VRSIM_SEED=$first VRSIM_SEEDS=$n VRSIM_MIX=$mix CK_RUN_CASE=$c "$bin" >"$log" 2>&1; then
            break
        fi
        line=$(grep -m1 'replay:' "$log" || true)
        msg=$(grep -m1 ':F:\|:E:' "$log" || echo "$c: crashed (no failure message)")
        echo "FAIL $msg" >>"$out/failures"
        if [ -n "$line" ]; then
            echo "     $line" >>"$out/failures"
            bad=$(echo "$line" | sed 's/.*VRSIM_SEED=\([0-9]*\).*/\1/')
        else
            echo "     replay: VRSIM_SEED=$first VRSIM_SEEDS=$n VRSIM_MIX=$mix CK_RUN_CASE=$c $bin" >>"$out/failures"
            break
        fi
        first=$(( (bad + 1) % 4294967296 ))
        n=$(( (end - first + 4294967296) % 4294967296 ))
    done
    echo "$c $3" >>"$out/done"
}

i=0
for c in random3 random5 random-even membership; do
    off=0
    while [ $off -lt $per_case ]; do
        n=$chunk
        [ $((off + n)) -le $per_case ] || n=$((per_case - off))
        echo "$c $(( (base + off) % 4294967296 )) $n"
        off=$((off + n))
    done
done >"$out/jobs"

export out bin mix
export -f run_chunk
# xargs runs the chunks; each line is "case first count"
xargs -P "$jobs" -L 1 bash -c 'run_chunk "$@"' _ <"$out/jobs"

elapsed=$(( $(date +%s) - start ))
ran=$(awk '{s += $2} END {print s + 0}' "$out/done" 2>/dev/null || echo 0)
for c in random3 random5 random-even membership; do
    printf '  %-12s %s seeds\n' "$c" "$(awk -v c="$c" '$1 == c {s += $2} END {print s + 0}' "$out/done")"
done
if [ -s "$out/failures" ]; then
    nf=$(grep -c '^FAIL' "$out/failures")
    cat "$out/failures"
    echo "vr-sweep: $ran seeds from base $base in ${elapsed}s: $nf FAILED"
    exit 1
fi
echo "vr-sweep: $ran seeds from base $base in ${elapsed}s: 0 failures"
