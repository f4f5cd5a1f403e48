#!/usr/bin/env bash
# Runs every fuzz target (tests/fuzz/) under libFuzzer with ASan and UBSan
# for a bounded time, two at a time, starting from the committed seed
# corpora. Any crash, leak, sanitizer report, timeout or broken property
# fails the script, which fails CI; the input that did it is kept under
# $FUZZ_OUT/artifacts/TARGET/ and printed in hex, ready to commit as
# tests/fuzz/regress/TARGET/NAME (the fuzz-regress suite then replays it on
# every run).
#
# Environment (all optional):
#   FUZZ_SECONDS   seconds per target (default 25: 15 targets on 2 cores in ~3 min)
#   FUZZ_JOBS      targets run at once (default: number of cores)
#   FUZZ_BUILD     build directory (default build-fuzz-ci)
#   FUZZ_OUT       where corpora, logs and crash inputs go (default $FUZZ_BUILD/fuzz-out)
#   FUZZ_TARGETS   space-separated subset of targets (default: all)
# Extra arguments are passed to every libFuzzer run (e.g. -dict=..., -jobs=...).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${FUZZ_SECONDS:-25}
jobs=${FUZZ_JOBS:-$(nproc)}
build=${FUZZ_BUILD:-build-fuzz-ci}
out=${FUZZ_OUT:-$build/fuzz-out}

command -v clang >/dev/null || { echo "ci-fuzz: clang is not installed (apt-get install clang libclang-rt-14-dev)"; exit 1; }

# Coverage instrumentation on every library the targets link, so libFuzzer
# sees into the plugins and core, not just the target files. UBSan findings
# abort instead of printing and carrying on.
if [ ! -d "$build" ]; then
  CC=clang meson setup "$build" -Dbuildtype=debugoptimized \
    -Db_sanitize=address,undefined -Db_lundef=false \
    -Dc_args="-fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined -fno-omit-frame-pointer" >/dev/null
fi
meson compile -C "$build" fuzz >/dev/null

fuzzdir=$build/tests/fuzz
if [ -n "${FUZZ_TARGETS:-}" ]; then
  targets=($FUZZ_TARGETS)
else
  targets=()
  for exe in "$fuzzdir"/fuzz-*; do
    name=${exe##*/fuzz-}
    case $name in replay-*|gen-corpus) continue ;; esac
    [ -f "$exe" ] && [ -x "$exe" ] && targets+=("$name")
  done
fi
((${#targets[@]})) || { echo "ci-fuzz: no fuzz targets were built"; exit 1; }

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
mkdir -p "$out"

run_one() {
  local t=$1 secs=$2 out=$3 fuzzdir=$4; shift 4
  local corpus=$out/corpus/$t arts=$out/artifacts/$t
  mkdir -p "$corpus" "$arts"
  # New finds go to the scratch corpus; the committed seeds and past crash
  # inputs are read only, and run first, so a returning bug fails at once
  # under clang's sanitizers (a target without seeds starts from nothing).
  local seeds=() d
  for d in "tests/fuzz/corpus/$t" "tests/fuzz/regress/$t"; do
    [ -d "$d" ] && seeds+=("$d")
  done
  if "$fuzzdir/fuzz-$t" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2560 \
       -max_len=65536 -print_final_stats=1 -artifact_prefix="$arts/" "$@" \
       "$corpus" "${seeds[@]}" >"$out/$t.log" 2>&1; then
    local execs
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log")
    echo "ci-fuzz: $t: ok, ${execs:-?} runs in ${secs}s, corpus $(ls "$corpus" | wc -l) new inputs"
  else
    echo "ci-fuzz: $t: FAILED (log $out/$t.log)"
    grep -E "ERROR|SUMMARY|property broken|runtime error" "$out/$t.log" | head -20
    for a in "$arts"/*; do
      [ -f "$a" ] || continue
      echo "ci-fuzz: $t: input $a ($(stat -c %s "$a") bytes); commit it as tests/fuzz/regress/$t/<name>:"
      od -An -tx1 -v "$a" | head -40
    done
    return 1
  fi
}
export -f run_one

echo "ci-fuzz: ${#targets[@]} targets, ${secs}s each, $jobs at a time"
status=0
printf '%s\n' "${targets[@]}" |
  xargs -P "$jobs" -I{} bash -c 'run_one "$@"' _ {} "$secs" "$out" "$fuzzdir" "$@" || status=1
if ((status)); then
  echo "ci-fuzz: a fuzz target failed (see above)"
  exit 1
fi
echo "ci-fuzz: all ${#targets[@]} targets ran clean"
